//! Names and places of stored objects.
//!
//! A stored WAL object is named `<original>.<checksum>{codec suffix}[.enc]`:
//! the WAL file name, the BLAKE3 checksum of its plaintext as 64 hex digits, then
//! `.zst`/`.lz4`/`.gz` (nothing for no compression) and `.enc` when
//! encrypted. The checksum in the name makes duplicate detection and listing
//! free (no object is opened), and the suffixes tell standard tools what the
//! bytes are. Objects live under `wal/<first 16 hex digits>/` (timeline and
//! log id), history files under `wal/history/`.

use std::fmt;

use crate::codec::Codec;
use crate::wal::{WalFileName, WalKind};

/// Suffix of an encrypted object.
pub const ENC_SUFFIX: &str = ".enc";

/// A parsed stored-object name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectName {
    /// The name PostgreSQL knows the file by.
    pub original: String,
    /// BLAKE3 of the plaintext, lower-case hex.
    pub checksum: String,
    pub codec: Codec,
    pub encrypted: bool,
}

impl fmt::Display for ObjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}{}{}",
            self.original,
            self.checksum,
            self.codec.suffix(),
            if self.encrypted { ENC_SUFFIX } else { "" }
        )
    }
}

fn is_checksum(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ObjectName {
    /// Parses a stored name; `None` when it is not one (a stray file, a
    /// temporary file).
    pub fn parse(stored: &str) -> Option<ObjectName> {
        let (rest, encrypted) = match stored.strip_suffix(ENC_SUFFIX) {
            Some(r) => (r, true),
            None => (stored, false),
        };
        let (rest, codec) = [Codec::Zstd, Codec::Lz4, Codec::Gzip]
            .into_iter()
            .find_map(|c| rest.strip_suffix(c.suffix()).map(|r| (r, c)))
            .unwrap_or((rest, Codec::None));
        let (original, checksum) = rest.rsplit_once('.')?;
        if !is_checksum(checksum) || original.is_empty() {
            return None;
        }
        Some(ObjectName { original: original.to_string(), checksum: checksum.to_string(), codec, encrypted })
    }

    /// The WAL file this object holds, when it is a WAL object.
    pub fn wal_name(&self) -> Option<WalFileName> {
        WalFileName::parse(&self.original).ok()
    }
}

/// Directory of the repository holding WAL objects.
pub const WAL_DIR: &str = "wal";

/// The directory (relative to the repository root) that holds `name`.
pub fn wal_dir_for(name: &WalFileName) -> String {
    match name.kind() {
        WalKind::History => format!("{WAL_DIR}/history"),
        _ => format!("{WAL_DIR}/{}", &name.segment_part()[..16]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUM: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn round_trips() {
        for codec in Codec::ALL {
            for encrypted in [false, true] {
                for original in [
                    "000000010000000000000001",
                    "00000002.history",
                    "000000010000000000000002.00000028.backup",
                    "000000010000000000000003.partial",
                ] {
                    let n = ObjectName { original: original.into(), checksum: SUM.into(), codec, encrypted };
                    assert_eq!(ObjectName::parse(&n.to_string()), Some(n.clone()));
                    assert!(n.wal_name().is_some());
                }
            }
        }
    }

    #[test]
    fn strays_are_not_objects() {
        for s in [
            "README",
            "000000010000000000000001",
            "000000010000000000000001.zst",
            ".tmp.000000010000000000000001",
            &format!("x.{}", &SUM[1..]),
            &format!(".{SUM}"),
        ] {
            assert_eq!(ObjectName::parse(s), None, "{s}");
        }
    }

    #[test]
    fn directories() {
        assert_eq!(wal_dir_for(&WalFileName::parse("00000002000000A1000000FF").unwrap()), "wal/00000002000000A1");
        assert_eq!(wal_dir_for(&WalFileName::parse("00000002.history").unwrap()), "wal/history");
        assert_eq!(
            wal_dir_for(&WalFileName::parse("000000020000000100000003.00000028.backup").unwrap()),
            "wal/0000000200000001"
        );
    }
}
