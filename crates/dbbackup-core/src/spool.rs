//! The spool: a local directory where asynchronous archiving keeps its
//! acknowledgements and prefetching fetch keeps the segments it fetched
//! ahead. By default `dbbackup_spool` in the data directory (on the same
//! file system as `pg_wal` in the usual layout, so a spooled segment is
//! handed over by a rename); never inside `pg_wal`, whose unknown files
//! break pg_rewind. Base backups keep the directory but not its contents.
//!
//! Each part (`archive/`, `fetch/`) records whose it is: the cluster's
//! system identifier and the repository's ID. A spool left by another
//! cluster or repository (a data directory copied with it, a repository
//! re-created) is refused, never used: its acknowledgements and segments
//! would be another history's.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

pub use dbbackup_format::manifest::SPOOL_DIR_NAME;

/// The data directory a WAL path given by PostgreSQL (`%p`) belongs to.
/// PostgreSQL runs archive_command and restore_command in the data
/// directory and passes `pg_wal/NAME` relative to it.
pub fn data_dir_of(wal_path: &Path) -> PathBuf {
    let abs = std::path::absolute(wal_path).unwrap_or_else(|_| wal_path.to_path_buf());
    // .../DATA/pg_wal/NAME -> .../DATA
    abs.parent().and_then(Path::parent).map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// `--spool-dir`, or `dbbackup_spool` in the data directory of `wal_path`.
pub fn spool_dir(given: Option<&Path>, wal_path: &Path) -> PathBuf {
    match given {
        Some(d) => std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf()),
        None => data_dir_of(wal_path).join(SPOOL_DIR_NAME),
    }
}

/// Whose a spool part is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SpoolOwner {
    /// The cluster's system identifier (as text: JSON numbers lose u64s).
    pub system_identifier: String,
    /// The repository's ID (its metadata `id`).
    pub repository_id: String,
}

const OWNER_FILE: &str = "owner.json";

/// Opens (creating, mode 0700) the `part` directory (`archive`, `fetch`)
/// of the spool at `dir`, owned by `owner`; refuses one another cluster or
/// repository left there, naming both and the fix.
pub fn open_part(dir: &Path, part: &str, owner: &SpoolOwner) -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let p = dir.join(part);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&p)
        .map_err(|e| Error::io(format!("cannot create spool directory {}: {e}", p.display())))?;
    let f = p.join(OWNER_FILE);
    match std::fs::read_to_string(&f) {
        Ok(text) => {
            let found: SpoolOwner = serde_json::from_str(&text).map_err(|e| {
                Error::integrity(format!(
                    "spool {} has an unreadable {OWNER_FILE} ({e}): remove {}",
                    p.display(),
                    p.display()
                ))
            })?;
            if &found != owner {
                return Err(Error::identity(format!(
                    "spool {} belongs to cluster {} and repository {}, not to this cluster {} and repository {}: it was left by another cluster or repository (a copied data directory?); remove {} (nothing in it is needed here) or give another --spool-dir",
                    p.display(),
                    found.system_identifier,
                    found.repository_id,
                    owner.system_identifier,
                    owner.repository_id,
                    p.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let tmp = p.join(format!(".{OWNER_FILE}.{}", std::process::id()));
            let body = serde_json::to_string(owner).expect("owner serializes");
            std::fs::write(&tmp, body)
                .and_then(|_| std::fs::rename(&tmp, &f))
                .map_err(|e| Error::io(format!("cannot write {}: {e}", f.display())))?;
        }
        Err(e) => return Err(Error::io(format!("cannot read {}: {e}", f.display()))),
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spool_is_beside_pg_wal_in_the_data_directory() {
        assert_eq!(spool_dir(None, Path::new("/d/pg_wal/000000010000000000000001")), Path::new("/d/dbbackup_spool"));
        assert_eq!(spool_dir(Some(Path::new("/s")), Path::new("pg_wal/x")), Path::new("/s"));
    }

    #[test]
    fn another_owners_spool_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let a = SpoolOwner { system_identifier: "1".into(), repository_id: "r1".into() };
        let b = SpoolOwner { system_identifier: "1".into(), repository_id: "r2".into() };
        let p = open_part(d.path(), "archive", &a).unwrap();
        assert_eq!(open_part(d.path(), "archive", &a).unwrap(), p);
        let e = open_part(d.path(), "archive", &b).unwrap_err().to_string();
        assert!(e.contains("belongs to cluster 1 and repository r1") && e.contains("remove"), "{e}");
    }
}
