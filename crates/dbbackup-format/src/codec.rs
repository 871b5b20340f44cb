//! Compression codecs and the file-name suffix each one uses.

use std::fmt;
use std::str::FromStr;

/// How an object's bytes are compressed before (optional) encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    #[default]
    Zstd,
    Lz4,
    Gzip,
    None,
}

impl Codec {
    pub const ALL: [Codec; 4] = [Codec::Zstd, Codec::Lz4, Codec::Gzip, Codec::None];

    /// The suffix of a stored object (with its dot), empty for `none`.
    pub fn suffix(self) -> &'static str {
        match self {
            Codec::Zstd => ".zst",
            Codec::Lz4 => ".lz4",
            Codec::Gzip => ".gz",
            Codec::None => "",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Codec::Zstd => "zstd",
            Codec::Lz4 => "lz4",
            Codec::Gzip => "gzip",
            Codec::None => "none",
        }
    }

    /// The level used when none is configured.
    pub fn default_level(self) -> i32 {
        match self {
            // Level 1: archive latency matters most, and it still stores
            // WAL at well under lz4's size.
            Codec::Zstd => 1,
            Codec::Gzip => 6,
            Codec::Lz4 | Codec::None => 0,
        }
    }

    /// The accepted range of levels, if the codec has levels.
    pub fn level_range(self) -> Option<(i32, i32)> {
        match self {
            Codec::Zstd => Some((-7, 19)),
            Codec::Gzip => Some((1, 9)),
            Codec::Lz4 | Codec::None => None,
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "zstd" | "zst" => Ok(Codec::Zstd),
            "lz4" => Ok(Codec::Lz4),
            "gzip" | "gz" => Ok(Codec::Gzip),
            "none" | "off" => Ok(Codec::None),
            _ => Err(format!("unknown compression {s:?}: expected zstd, lz4, gzip or none")),
        }
    }
}
