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
    root(given, &data_dir_of(wal_path))
}

/// `--spool-dir` (made absolute), or `dbbackup_spool` in `data_dir`.
pub fn root(given: Option<&Path>, data_dir: &Path) -> PathBuf {
    match given {
        Some(d) => std::path::absolute(d).unwrap_or_else(|_| d.to_path_buf()),
        None => data_dir.join(SPOOL_DIR_NAME),
    }
}

/// The repository's ID as a spool records it (a repository of an old
/// format without one is named by its location).
pub fn repository_id(repo: &crate::repo::Repository) -> String {
    repo.meta().id.clone().unwrap_or_else(|| repo.location())
}

/// Refuses a spool inside `pg_wal`: PostgreSQL, pg_rewind and
/// pg_basebackup take every file there for WAL.
pub fn check_dir(dir: &Path) -> Result<()> {
    let in_pg_wal = |p: &Path| p.components().any(|c| c.as_os_str() == "pg_wal" || c.as_os_str() == "pg_xlog");
    // Through symlinks too: the deepest part that exists, resolved.
    let resolved = dir.ancestors().find_map(|a| {
        let real = std::fs::canonicalize(a).ok()?;
        Some(real.join(dir.strip_prefix(a).unwrap_or(Path::new(""))))
    });
    let reached = resolved.filter(|r| in_pg_wal(r) && r.as_path() != dir);
    if in_pg_wal(dir) || reached.is_some() {
        return Err(Error::invalid(format!(
            "spool directory {}{} is inside pg_wal, where PostgreSQL and pg_rewind take every file for WAL: give a --spool-dir outside pg_wal, or leave it out (default: {} in the data directory)",
            dir.display(),
            reached.map(|r| format!(" (that is {})", r.display())).unwrap_or_default(),
            SPOOL_DIR_NAME
        )));
    }
    Ok(())
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
                    "spool {} belongs to cluster {} and repository {}, not to this cluster {} and repository {}: another cluster or repository uses it (a shared --spool-dir?) or left it (a copied data directory, a new repository?); give this cluster its own --spool-dir, or, when no `dbbackup wal archive-worker` runs for it any more, remove {} (nothing in it is needed here)",
                    p.display(),
                    found.system_identifier,
                    found.repository_id,
                    owner.system_identifier,
                    owner.repository_id,
                    p.display()
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_owner(&p, owner)?,
        Err(e) => return Err(Error::io(format!("cannot read {}: {e}", f.display()))),
    }
    Ok(p)
}

/// Opens the `part` of the spool at `dir` as [`open_part`] does, but for a
/// part that is only a cache (prefetched segments, always re-fetchable):
/// one another cluster or repository left there (or whose owner file is
/// unreadable) is emptied and taken over instead of refused. Lock files
/// (`*.lock`) stay, so a worker of the previous owner that still holds one
/// keeps a second worker from starting until it has noticed and left.
/// Returns the part and, when it was taken over, whose it was.
pub fn take_part(dir: &Path, part: &str, owner: &SpoolOwner) -> Result<(PathBuf, Option<TakenOver>)> {
    match open_part(dir, part, owner) {
        Ok(p) => return Ok((p, None)),
        Err(e) if matches!(e.kind(), crate::error::ErrorKind::Identity | crate::error::ErrorKind::Integrity) => {}
        Err(e) => return Err(e),
    }
    let p = dir.join(part);
    let previous = std::fs::read_to_string(p.join(OWNER_FILE)).ok().and_then(|t| serde_json::from_str(&t).ok());
    let entries =
        std::fs::read_dir(&p).map_err(|e| Error::io(format!("cannot read spool directory {}: {e}", p.display())))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("cannot read spool directory {}: {e}", p.display())))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".lock") || name == OWNER_FILE {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(Error::io(format!(
                    "cannot empty spool {}: cannot remove {}: {e}",
                    p.display(),
                    path.display()
                )))
            }
        }
    }
    // Written last: until it names the new owner, nothing in the part is
    // trusted by anyone.
    write_owner(&p, owner)?;
    Ok((p, Some(TakenOver { previous })))
}

/// For the part a cluster keeps while it archives (`archive`): when
/// `dir/part` belongs to this same cluster but another repository (the
/// cluster was pointed at a new one), makes it this repository's and
/// returns whose it was. The owner file is rewritten first, so that a
/// worker of the previous repository notices and leaves; what that
/// worker acknowledged is then removed by the caller. Another cluster's
/// part, or one that does not exist yet, is left as it is (for
/// [`open_part`] to refuse or create).
pub fn retarget_part(dir: &Path, part: &str, owner: &SpoolOwner) -> Result<Option<SpoolOwner>> {
    let p = dir.join(part);
    let Some(found) = part_owner(&p) else { return Ok(None) };
    if found.system_identifier != owner.system_identifier || found.repository_id == owner.repository_id {
        return Ok(None);
    }
    write_owner(&p, owner)?;
    Ok(Some(found))
}

/// Whose the spool part at `part` (a directory [`open_part`] returned) says
/// it is now; `None` when it is gone or its owner file unreadable. For a
/// long-running worker to notice that its part was removed or taken over.
pub fn part_owner(part: &Path) -> Option<SpoolOwner> {
    let text = std::fs::read_to_string(part.join(OWNER_FILE)).ok()?;
    serde_json::from_str(&text).ok()
}

/// A spool part [`take_part`] emptied and took over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TakenOver {
    /// Whose it was; `None`: its owner file was unreadable.
    pub previous: Option<SpoolOwner>,
}

fn write_owner(p: &Path, owner: &SpoolOwner) -> Result<()> {
    let f = p.join(OWNER_FILE);
    let tmp = p.join(format!(".{OWNER_FILE}.{}", std::process::id()));
    let body = serde_json::to_string(owner).expect("owner serializes");
    std::fs::write(&tmp, body)
        .and_then(|_| std::fs::rename(&tmp, &f))
        .map_err(|e| Error::io(format!("cannot write {}: {e}", f.display())))
}

/// A worker's log beyond this many bytes is rotated (one `.old` kept).
const WORKER_LOG_LIMIT: u64 = 4 << 20;

/// Starts a spool worker detached from the PostgreSQL call that needs it:
/// a session of its own (PostgreSQL waits for its command's process group,
/// and signals to that group must not reach the worker), stdin null,
/// stdout and stderr appended to `log` (mode 0600, rotated), and none of
/// the descriptors the server left open (its pipes) held.
pub fn spawn_worker(program: &Path, args: &[std::ffi::OsString], log: &Path) -> std::io::Result<std::process::Child> {
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::process::CommandExt;
    if std::fs::metadata(log).is_ok_and(|m| m.len() > WORKER_LOG_LIMIT) {
        let mut old = log.as_os_str().to_owned();
        old.push(".old");
        let _ = std::fs::rename(log, old);
    }
    let out = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log)?;
    let err = out.try_clone()?;
    let mut c = std::process::Command::new(program);
    c.args(args).stdin(std::process::Stdio::null()).stdout(out).stderr(err);
    #[allow(unsafe_code)]
    // SAFETY: setsid and close_range are async-signal-safe system calls;
    // nothing is allocated between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // Close-on-exec rather than close: std's own error pipe must
            // live until exec. Older kernels without it: nothing leaks
            // that matters, so the result is not checked.
            libc::close_range(3, u32::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int);
            Ok(())
        });
    }
    c.spawn()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_reached_through_a_symlink_into_pg_wal_is_refused() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("data/pg_wal")).unwrap();
        std::os::unix::fs::symlink(d.path().join("data/pg_wal"), d.path().join("wallink")).unwrap();
        let e = check_dir(&d.path().join("wallink/spool")).unwrap_err().to_string();
        assert!(e.contains("(that is ") && e.contains("is inside pg_wal"), "{e}");
        assert!(check_dir(&d.path().join("data/dbbackup_spool")).is_ok());
    }

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

    #[test]
    fn a_cache_part_of_another_owner_is_emptied_and_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let a = SpoolOwner { system_identifier: "1".into(), repository_id: "r1".into() };
        let b = SpoolOwner { system_identifier: "2".into(), repository_id: "r1".into() };
        let (p, taken) = take_part(d.path(), "fetch", &a).unwrap();
        assert!(taken.is_none());
        std::fs::write(p.join("000000010000000000000003"), "x").unwrap();
        std::fs::write(p.join("worker.lock"), "").unwrap();
        assert_eq!(take_part(d.path(), "fetch", &a).unwrap().1, None);
        assert!(p.join("000000010000000000000003").exists());
        let (p2, taken) = take_part(d.path(), "fetch", &b).unwrap();
        assert_eq!(p2, p);
        assert_eq!(taken, Some(TakenOver { previous: Some(a.clone()) }));
        assert!(!p.join("000000010000000000000003").exists());
        assert!(p.join("worker.lock").exists());
        assert_eq!(open_part(d.path(), "fetch", &b).unwrap(), p);
        // An unreadable owner file: taken over too.
        std::fs::write(p.join(OWNER_FILE), "{junk").unwrap();
        assert_eq!(take_part(d.path(), "fetch", &a).unwrap().1, Some(TakenOver { previous: None }));
        assert_eq!(open_part(d.path(), "fetch", &a).unwrap(), p);
    }
}
