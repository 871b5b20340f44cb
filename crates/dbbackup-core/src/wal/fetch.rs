//! `wal fetch`: PostgreSQL's `restore_command`.
//!
//! Finds the object under any codec or encryption suffix, decodes it into a
//! temporary file beside the destination, verifies the recorded checksum
//! (and, for segments, the page header), and only then renames it into
//! place. The destination is never touched on failure.

use std::fs;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use dbbackup_format::WalFileName;

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::wal::{decode_verified, find};

/// What was delivered.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: String,
    pub size: u64,
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Checks that `repo` can be the archive a recovery reads from, before
/// any lookup: a "not archived" answer (exit 1) ends recovery and promotes,
/// so it must only ever come from the right repository.
///
/// - `expected_id`: the repository ID `restore pitr` wrote into
///   restore_command; a repository re-created at the same path differs.
/// - `data_dir`: the recovering data directory (PostgreSQL runs
///   restore_command there); its `global/pg_control` names the cluster,
///   which must be the repository's. An unreadable pg_control skips this
///   check: it is written while the server runs.
pub fn check_source(repo: &Repository, expected_id: Option<&str>, data_dir: Option<&Path>) -> Result<()> {
    let loc = repo.location();
    if let Some(want) = expected_id {
        match repo.meta().id.as_deref() {
            Some(id) if id == want => {}
            found => {
                return Err(Error::identity(format!(
                    "repository {loc} has ID {}, not {want} (the one this restore was made from): it was re-created or replaced at that path, so it cannot hold the WAL this recovery needs; check that the right file system is mounted there",
                    found.unwrap_or("(none)")
                )))
            }
        }
    }
    let Some(own) = repo.identity() else { return Ok(()) };
    let control = data_dir
        .map(|d| d.join("global/pg_control"))
        .and_then(|p| fs::read(p).ok())
        .and_then(|b| dbbackup_format::control::parse_control(&b).ok());
    if let Some(c) = control.filter(|c| c.system_identifier != own.system_identifier) {
        return Err(Error::identity(format!(
            "repository {loc} belongs to the cluster with system identifier {}, but the recovering data directory is of cluster {}: check --repo",
            own.system_identifier, c.system_identifier
        )));
    }
    Ok(())
}

/// Fetches WAL file `name` into `dest`.
///
/// "Not archived" (`NotFound`, exit 1, which ends recovery) comes only
/// from a repository bound to a cluster: one bound to none has never held
/// a segment (a new repository where the real one should be mounted), so
/// its "no" is an identity error.
pub fn fetch(repo: &Repository, name: &str, dest: &Path) -> Result<Fetched> {
    let wal = WalFileName::parse(name).map_err(|e| Error::invalid(e.to_string()))?;
    let found = find(repo, &wal)?;
    let Some(stored) = found.first() else {
        if repo.identity().is_none() {
            return Err(Error::identity(format!(
                "{name} is not in repository {}, which is not bound to any cluster (no segment was ever archived into it; was it just created?): it cannot be the archive this recovery needs; check that --repo is right and that the repository's file system is mounted",
                repo.location()
            )));
        }
        return Err(Error::not_found(format!("{name} is not in the archive {}", repo.location())));
    };
    if let Some(other) = found.iter().find(|s| s.object.checksum != stored.object.checksum) {
        return Err(Error::integrity(format!(
            "{name} is archived twice with different content ({} and {}): refusing to guess",
            stored.path, other.path
        )));
    }

    let file_name = dest
        .file_name()
        .ok_or_else(|| Error::invalid(format!("destination {} has no file name", dest.display())))?
        .to_string_lossy()
        .to_string();
    let temp_path = dest.with_file_name(format!(".{file_name}.dbbackup-{}.tmp", std::process::id()));
    let mut temp = TempFile(Some(temp_path.clone()));
    // 0600, as PostgreSQL's own WAL files: WAL holds the cluster's data.
    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp_path)
        .map_err(|e| Error::io(format!("cannot create {}: {e}", temp_path.display())))?;
    let mut out = BufWriter::with_capacity(1 << 20, out);

    let total = decode_verified(repo, stored, &mut out).map_err(|e| {
        if e.kind() != crate::error::ErrorKind::Integrity {
            return e;
        }
        Error::integrity(format!(
            "{e}; if a server still has {name} in its pg_wal, `dbbackup wal archive pg_wal/{name} {name}` there repairs the stored copy; otherwise recovery cannot pass it: restore to a target before it, or from a base backup that starts after it (`dbbackup wal verify` lists every damaged object)"
        ))
    })?;
    out.flush().map_err(|e| Error::io(format!("cannot write {}: {e}", temp_path.display())))?;
    drop(out);
    fs::rename(&temp_path, dest)
        .map_err(|e| Error::io(format!("cannot move {} to {}: {e}", temp_path.display(), dest.display())))?;
    temp.0 = None;
    Ok(Fetched { path: stored.path.clone(), size: total })
}
