//! The repository metadata file (`dbbackup.json` at the repository root).
//!
//! Parsing first reads only `format_version`, so a repository written by a
//! newer dbbackup is refused before any other field is interpreted.

use serde::{Deserialize, Serialize};

use crate::codec::Codec;

/// The newest repository format this build reads and writes.
///
/// 1: full backups only. 2: may hold incremental and differential backups
/// (manifest version 2), whose files need their parents': a repository
/// becomes version 2 when its first such backup starts, so that older
/// builds (which would read such a backup as a full one) refuse it whole.
pub const FORMAT_VERSION: u32 = 2;
/// The version a new repository gets: it stays readable by older builds
/// until it holds an incremental or differential backup.
pub const CREATE_FORMAT_VERSION: u32 = 1;
/// The version a repository needs to hold incremental backups.
pub const CHAINED_FORMAT_VERSION: u32 = 2;
/// File name of the metadata at the repository root.
pub const META_FILE: &str = "dbbackup.json";

/// Everything the repository says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoMeta {
    pub format_version: u32,
    /// Random ID given at `repo init`: what identifies a repository (never
    /// its path). A restore writes it into `restore_command`, so a repository
    /// re-created at the same path is refused rather than read as "no more
    /// WAL". Absent only in repositories created before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// RFC 3339 time of `repo init`.
    pub created_at: String,
    /// dbbackup version that created the repository.
    pub created_by: String,
    /// The one cluster this repository belongs to; `None` until bound.
    pub cluster: Option<ClusterIdentity>,
    pub compression: Compression,
    /// Present when every object is encrypted.
    pub encryption: Option<Encryption>,
}

/// The identity of the cluster a repository is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterIdentity {
    /// `system_identifier` as a decimal string (JSON numbers lose precision
    /// above 2^53 in many readers).
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    pub pg_version_major: u32,
    pub wal_segment_size: u32,
    pub bound_at: String,
    /// What told us the identity: "server", "pg_control" or "wal <name>".
    pub bound_from: String,
}

/// The repository's default codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compression {
    pub algorithm: Codec,
    pub level: i32,
}

/// How objects are encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    /// Always "aes-256-gcm" in format 1.
    pub algorithm: String,
    pub key_fingerprint: String,
}

/// Why metadata text cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("repository format version {found} is newer than this dbbackup supports ({supported}); upgrade dbbackup")]
    NewerFormat { found: u32, supported: u32 },
    #[error("not valid repository metadata: {0}")]
    Invalid(#[from] serde_json::Error),
}

#[derive(Deserialize)]
struct VersionOnly {
    format_version: u32,
}

impl RepoMeta {
    pub fn parse(text: &str) -> Result<RepoMeta, MetaError> {
        let v: VersionOnly = serde_json::from_str(text)?;
        if v.format_version > FORMAT_VERSION {
            return Err(MetaError::NewerFormat { found: v.format_version, supported: FORMAT_VERSION });
        }
        Ok(serde_json::from_str(text)?)
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("metadata serializes");
        s.push('\n');
        s
    }
}

mod u64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RepoMeta {
        RepoMeta {
            format_version: FORMAT_VERSION,
            id: Some("5f0c6a1e9d2b4c7a8e3f1b2d4c6a8e0f".into()),
            created_at: "2026-11-25T10:00:00Z".into(),
            created_by: "dbbackup 0.1.0".into(),
            cluster: Some(ClusterIdentity {
                system_identifier: 7_712_046_534_938_605_280,
                pg_version_major: 15,
                wal_segment_size: 16 << 20,
                bound_at: "2026-11-25T10:00:00Z".into(),
                bound_from: "server".into(),
            }),
            compression: Compression { algorithm: Codec::Zstd, level: 3 },
            encryption: Some(Encryption { algorithm: "aes-256-gcm".into(), key_fingerprint: "00ff".into() }),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let text = m.to_json();
        assert!(text.contains("\"system_identifier\": \"7712046534938605280\""));
        assert_eq!(RepoMeta::parse(&text).unwrap(), m);
        let mut unbound = sample();
        unbound.cluster = None;
        unbound.encryption = None;
        assert_eq!(RepoMeta::parse(&unbound.to_json()).unwrap(), unbound);
        // Metadata written before repository IDs existed still reads.
        let mut old = sample();
        old.id = None;
        assert!(!old.to_json().contains("\"id\""));
        assert_eq!(RepoMeta::parse(&old.to_json()).unwrap(), old);
    }

    #[test]
    fn newer_format_is_refused_before_anything_else() {
        let e = RepoMeta::parse(r#"{"format_version": 3, "something": "new"}"#).unwrap_err();
        assert!(matches!(e, MetaError::NewerFormat { found: 3, supported: 2 }), "{e}");
        assert!(RepoMeta::parse("{").is_err());
    }
}
