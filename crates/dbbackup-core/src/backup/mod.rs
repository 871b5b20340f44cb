//! Base backups in the repository: manifests, listing, taking (`base`),
//! verifying (`verify`) and retention (`retention`).
//!
//! Layout: `backups/<id>/manifest.json`, `backups/<id>/data/<path>` (whole
//! files), `deltas/<path>` (changed blocks) and `maps/<path>` (block maps),
//! plus the codec suffixes. A manifest is rewritten whole (temp + rename) as the
//! backup moves from running to complete or failed.

pub mod base;
pub mod blocks;
pub mod chain;
pub mod retention;
pub mod verify;

use std::io::Write;

use dbbackup_format::manifest::{BackupStatus, Manifest, MANIFEST_VERSION_CHAINED};

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::storage::Commit;

pub const BACKUPS_DIR: &str = "backups";
pub const MANIFEST: &str = "manifest.json";
/// Held by `backup base` for its whole run.
pub const BACKUP_LOCK: &str = "locks/backup.lock";
/// Held by `backup expire`, `backup delete` and `wal cleanup` from reading
/// the backups to removing: two of them at once plan on the same state.
pub const RETENTION_LOCK: &str = "locks/retention.lock";

pub fn backup_dir(id: &str) -> String {
    format!("{BACKUPS_DIR}/{id}")
}

/// Writes (replaces) a backup's manifest durably.
pub fn write_manifest(repo: &Repository, m: &Manifest) -> Result<()> {
    let dir = backup_dir(&m.id);
    let mut w = repo
        .storage()
        .create(&format!("{dir}/{MANIFEST}"), Commit::Replace)
        .map_err(|e| Error::from(e).context("cannot write backup manifest"))?;
    w.write_all(m.to_json().as_bytes()).map_err(|e| Error::io(format!("cannot write manifest of {}: {e}", m.id)))?;
    w.commit().map_err(|e| Error::from(e).context(format!("cannot write manifest of backup {}", m.id)))
}

pub fn read_manifest(repo: &Repository, id: &str) -> Result<Manifest> {
    let path = format!("{}/{MANIFEST}", backup_dir(id));
    let bytes = repo.storage().read_all(&path).map_err(|e| {
        if e.is_not_found() {
            Error::not_found(format!(
                "no backup {id} in repository {} (no {path}; see `dbbackup backup list`)",
                repo.location()
            ))
        } else {
            Error::io(format!("cannot read {path}: {e}"))
        }
    })?;
    let text = String::from_utf8(bytes).map_err(|_| Error::integrity(format!("{path} is not UTF-8")))?;
    let m = Manifest::parse(&text).map_err(|e| Error::integrity(format!("{path} is not a valid manifest: {e}")))?;
    check_manifest(&m, &path, id)?;
    Ok(m)
}

/// Checks what restore trusts a manifest for beyond its JSON: it belongs
/// in its directory, every path is a plain relative path (nothing is
/// written outside the target), listed once, and points at the object its
/// name says (a changed path would otherwise restore one file's bytes
/// under another file's name, silently).
fn check_manifest(m: &Manifest, path: &str, id: &str) -> Result<()> {
    let bad = |what: String| Error::integrity(format!("{path}: {what}: the manifest is damaged or was changed"));
    if m.format_version > MANIFEST_VERSION_CHAINED {
        return Err(Error::invalid(format!(
            "{path}: manifest format version {} is newer than this dbbackup supports ({MANIFEST_VERSION_CHAINED}): upgrade dbbackup",
            m.format_version
        )));
    }
    if m.id != id {
        return Err(bad(format!("it names backup {}, but lies in {}", m.id, backup_dir(id))));
    }
    let plain =
        |p: &str| !p.is_empty() && !p.starts_with('/') && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
    let mut seen = std::collections::HashSet::new();
    for f in &m.files {
        if !plain(&f.path) {
            return Err(bad(format!("file path {:?} is not a plain relative path", f.path)));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(bad(format!("file {} is listed twice", f.path)));
        }
        let held = [f.is_whole(), f.unchanged, f.delta.is_some()].iter().filter(|b| **b).count();
        if held != 1 || (!f.is_whole() && (m.parent.is_none() || !f.object.is_empty())) {
            return Err(bad(format!(
                "file {} is not held exactly one way (whole, unchanged, or as a delta on a parent)",
                f.path
            )));
        }
        let (object, expected) = match &f.delta {
            Some(d) => (&d.object, blocks::delta_rel(&f.path, m.codec, m.encrypted)),
            None if f.unchanged => continue,
            None => (&f.object, base::object_rel(&f.path, m.codec, m.encrypted)),
        };
        if *object != expected {
            return Err(bad(format!("file {} points at object {object}, not {expected}", f.path)));
        }
    }
    if let Some(d) = m.directories.iter().find(|d| !plain(&d.path)) {
        return Err(bad(format!("directory path {:?} is not a plain relative path", d.path)));
    }
    Ok(())
}

/// Every backup, oldest first. Directories without a readable manifest are
/// reported as errors in the second list.
pub fn list(repo: &Repository) -> Result<(Vec<Manifest>, Vec<Error>)> {
    let (out, unreadable) = list_all(repo)?;
    Ok((out, unreadable.into_iter().map(|(_, e)| e).collect()))
}

/// Backup directories whose manifest cannot be read: (name, why).
pub type Unreadable = Vec<(String, Error)>;

/// [`list`], with the directory name of each unreadable manifest.
pub fn list_all(repo: &Repository) -> Result<(Vec<Manifest>, Unreadable)> {
    let entries = repo
        .storage()
        .list(BACKUPS_DIR)
        .map_err(|e| Error::io(format!("cannot list backups in {}: {e}", repo.location())))?;
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for e in entries.into_iter().filter(|e| e.is_dir) {
        match read_manifest(repo, &e.name) {
            Ok(m) => out.push(m),
            Err(err) => errors.push((e.name, err)),
        }
    }
    out.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.id.cmp(&b.id)));
    Ok((out, errors))
}

/// Resolves `latest` (the newest complete backup) or an ID.
pub fn resolve(repo: &Repository, which: &str) -> Result<Manifest> {
    if which == "latest" {
        let (all, unreadable) = list(repo)?;
        // A complete backup whose chain is broken cannot be restored.
        let usable = |m: &&Manifest| {
            m.status == BackupStatus::Complete
                && match chain::Chain::from_list(&all, m) {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!("latest: passing over backup {}: {e}", m.id);
                        false
                    }
                }
        };
        return all.iter().rev().find(usable).cloned().ok_or_else(|| {
            let note = match unreadable.first() {
                Some(e) => format!(" ({} backup manifest(s) could not be read, e.g. {e})", unreadable.len()),
                None => String::new(),
            };
            Error::not_found(format!(
                "repository {} has no complete backup{note}: take one with `dbbackup backup base`",
                repo.location()
            ))
        });
    }
    read_manifest(repo, which)
}

/// Whether a `backup base` is running on this repository right now.
pub fn backup_running(repo: &Repository) -> bool {
    matches!(repo.storage().try_lock(BACKUP_LOCK), Ok(None))
}

/// A status as users see it: a `running` manifest with no running backup
/// process was interrupted.
pub fn shown_status(m: &Manifest, running_now: bool) -> &'static str {
    match m.status {
        BackupStatus::Running if running_now => "running",
        BackupStatus::Running => "interrupted",
        BackupStatus::Pending => "pending",
        BackupStatus::Complete => "complete",
        BackupStatus::Failed => "failed",
        BackupStatus::Expired => "expired",
    }
}
