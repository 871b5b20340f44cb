//! The base backup manifest (`backups/<id>/manifest.json`).

use serde::{Deserialize, Serialize};

use crate::codec::Codec;
use crate::lsn::Lsn;

/// Where a backup stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupStatus {
    /// Being taken (or interrupted, when no backup process holds the lock).
    Running,
    /// Files stored, but the WAL from start to stop was not yet confirmed in
    /// the archive (`backup base --no-wait-archive`); `backup verify`
    /// completes it once the WAL is there. Never used by restore.
    Pending,
    /// Every file stored and every WAL segment from start to stop archived.
    Complete,
    /// Stopped by an error; never used by restore.
    Failed,
    /// Outside the retention window of a `wal cleanup`, which removed WAL it
    /// needs: never used by restore; the next `backup expire` removes it.
    Expired,
}

/// What a backup holds: every file (`full`), or what changed since its
/// parent: the newest backup of any type (`incr`) or the newest full one
/// (`diff`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupType {
    #[default]
    Full,
    Incr,
    Diff,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Incr => "incr",
            BackupType::Diff => "diff",
        }
    }
}

/// The manifest version of a full backup: version 1 readers restore it
/// (the fields added since are optional and they ignore them).
pub const MANIFEST_VERSION_FULL: u32 = 1;
/// The manifest version of an incremental or differential backup: its
/// files need the parent's, which version 1 readers do not know about.
pub const MANIFEST_VERSION_CHAINED: u32 = 2;

/// The blocks of a file that changed since the parent backup, stored in one
/// object: the blocks of `runs`, in order, concatenated (the last block of
/// the file may be short).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Object path relative to the backup directory.
    pub object: String,
    /// `[first block, count]`, ascending and not overlapping.
    pub runs: Vec<[u64; 2]>,
    /// Plaintext bytes of the object.
    pub size: u64,
    /// BLAKE3 of the object's plaintext.
    pub checksum: String,
}

impl Delta {
    /// The block numbers, ascending.
    pub fn blocks(&self) -> impl Iterator<Item = u64> + '_ {
        self.runs.iter().flat_map(|[first, n]| *first..first + n)
    }

    pub fn block_count(&self) -> u64 {
        self.runs.iter().map(|[_, n]| n).sum()
    }
}

/// Where a file's block map lies: one 16-byte hash (BLAKE3, truncated) per
/// block of the file as this backup holds it, in the object
/// `maps/<path>.map<codec suffix>[.enc]` of backup `backup` (this one or an
/// ancestor whose file is byte-identical). The next incremental backup
/// compares blocks against it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapRef {
    pub backup: String,
    /// BLAKE3 of the map's plaintext.
    pub checksum: String,
}

/// One copied file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the data directory (tablespaces under `pg_tblspc/<oid>/`).
    pub path: String,
    /// Plaintext bytes stored (what was read; a file changing during the
    /// copy is made consistent by WAL replay).
    pub size: u64,
    pub mode: u32,
    /// Modification time, RFC 3339.
    pub mtime: String,
    /// BLAKE3 of the plaintext, 64 lower-case hex digits.
    pub checksum: String,
    /// Bytes this backup stored for the file (objects and block map).
    pub stored_size: u64,
    /// The object holding the whole file, relative to the backup directory;
    /// empty when this backup holds it as `unchanged` or as a `delta`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// Byte-identical to the parent backup's file (no object).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub unchanged: bool,
    /// The parent's file, resized to `size`, with these blocks replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<Delta>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<MapRef>,
}

impl FileEntry {
    /// Whether this backup holds the whole file in its own object.
    pub fn is_whole(&self) -> bool {
        self.delta.is_none() && !self.unchanged
    }
}

/// A directory to recreate (possibly empty, such as `pg_wal`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    pub path: String,
    pub mode: u32,
}

/// A tablespace: `pg_tblspc/<oid>` pointed here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tablespace {
    pub oid: u32,
    pub location: String,
}

/// Everything about one base backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub id: String,
    pub label: String,
    pub status: BackupStatus,
    pub error: Option<String>,
    pub start_time: String,
    pub stop_time: Option<String>,
    pub start_lsn: Option<Lsn>,
    pub start_wal: Option<String>,
    pub stop_lsn: Option<Lsn>,
    pub stop_wal: Option<String>,
    pub timeline: Option<u32>,
    #[serde(with = "u64_string")]
    pub system_identifier: u64,
    pub pg_version_major: u32,
    pub pg_version: String,
    /// The server's BINDIR (pg_ctl for `restore --auto-start`), when known.
    #[serde(default)]
    pub pg_bindir: Option<String>,
    pub wal_segment_size: u32,
    pub codec: Codec,
    pub compress_level: i32,
    pub encrypted: bool,
    pub host: String,
    pub pid: u32,
    pub dbbackup_version: String,
    pub size_bytes: u64,
    pub stored_bytes: u64,
    pub tablespaces: Vec<Tablespace>,
    pub directories: Vec<DirEntry>,
    pub files: Vec<FileEntry>,
    /// Absent in manifests written before incremental backups: full.
    #[serde(default, rename = "type")]
    pub backup_type: BackupType,
    /// The backup this one holds the changes since (`incr`, `diff`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// The block size of the server's files (block maps and deltas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
}

impl Manifest {
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string(self).expect("manifest serializes");
        s.push('\n');
        s
    }

    pub fn parse(text: &str) -> Result<Manifest, serde_json::Error> {
        serde_json::from_str(text)
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

/// Whether a path (relative to PGDATA) is left out of a base backup, as
/// pg_basebackup leaves it out. Directories listed in `EMPTY_DIRS` are kept
/// but their contents skipped.
pub fn excluded_file(rel: &str) -> bool {
    const FILES: &[&str] = &[
        "postmaster.pid",
        "postmaster.opts",
        "backup_label",
        "backup_label.old",
        "tablespace_map",
        "tablespace_map.old",
        "current_logfiles",
        "current_logfiles.tmp",
        "postgresql.auto.conf.tmp",
        "recovery.signal",
        "standby.signal",
        "global/pg_internal.init",
    ];
    let name = rel.rsplit('/').next().unwrap_or(rel);
    FILES.contains(&rel)
        || name == "pg_internal.init"
        || name.starts_with("pgsql_tmp")
        || name.starts_with(".tmp.")
        || name.starts_with("postgresql.auto.conf.dbbackup-")
}

/// Directories whose contents are not backed up (the directory is).
/// dbbackup's spool (asynchronous archiving, prefetching fetch) is local
/// state of one server, never part of its backups.
pub const EMPTY_DIRS: &[&str] = &[
    "pg_wal",
    "pg_replslot",
    "pg_stat_tmp",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
    SPOOL_DIR_NAME,
];

/// The default spool directory's name, in the data directory.
pub const SPOOL_DIR_NAME: &str = "dbbackup_spool";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusions_match_pg_basebackup() {
        for f in [
            "postmaster.pid",
            "postmaster.opts",
            "base/1/pg_internal.init",
            "base/pgsql_tmp/pgsql_tmp1.0",
            "current_logfiles",
        ] {
            assert!(excluded_file(f), "{f}");
        }
        for f in ["base/1/1259", "global/pg_control", "PG_VERSION", "postgresql.auto.conf", "pg_hba.conf"] {
            assert!(!excluded_file(f), "{f}");
        }
    }
}
