//! Retention: one rule shared by `backup expire` and `wal cleanup`.
//!
//! Every point inside the retention window stays recoverable: the backups
//! inside it are kept, and so is the newest backup older than the window
//! (it is the one that reaches the window's first moments). All WAL from the
//! oldest kept backup's start position onward is kept, on every timeline,
//! with every history file. Ages come from the backups' recorded times and
//! positions, never from file modification times.

use dbbackup_format::manifest::{BackupStatus, Manifest};
use dbbackup_format::{SegmentSize, WalFileName, WalKind};

use crate::error::{Error, Result};
use crate::wal::catalog::Catalog;

/// What to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// Keep this many newest complete backups.
    pub keep: Option<usize>,
    /// Keep every point of the last this many days recoverable.
    pub keep_days: Option<u64>,
}

/// What retention would remove, and why the rest stays.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    pub keep_backups: Vec<String>,
    pub remove_backups: Vec<Removal>,
    /// WAL objects (repository paths) to remove.
    pub remove_wal: Vec<String>,
    /// WAL before this segment position is no longer needed.
    pub wal_kept_from: Option<String>,
    /// Why nothing (or less than asked) is removed.
    pub note: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Removal {
    pub id: String,
    pub reason: String,
}

fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// Plans retention. `remove_backups_too` is false for `wal cleanup`.
/// `running_now` says whether a backup process holds the lock (its
/// `running` manifest is not stale).
pub fn plan(
    backups: &[Manifest],
    cat: &Catalog,
    size: Option<SegmentSize>,
    policy: Policy,
    now: jiff::Timestamp,
    remove_backups_too: bool,
    running_now: bool,
) -> Result<Plan> {
    if policy.keep.is_none() && policy.keep_days.is_none() {
        return Err(Error::invalid("give a retention policy: --keep N and/or --keep-days D"));
    }
    if policy.keep == Some(0) {
        return Err(Error::invalid("--keep 0 would remove every backup: keep at least 1"));
    }
    let complete: Vec<&Manifest> = backups.iter().filter(|m| m.status == BackupStatus::Complete).collect();
    let mut plan = Plan::default();
    if complete.is_empty() {
        plan.note = Some(
            "the repository has no complete backup: nothing is removed (WAL is all that can restore anything)".into(),
        );
        return Ok(plan);
    }
    let mut keep = vec![false; complete.len()];
    if let Some(n) = policy.keep {
        for k in keep.iter_mut().rev().take(n) {
            *k = true;
        }
    }
    if let Some(days) = policy.keep_days {
        let cutoff = now - jiff::SignedDuration::from_hours(24 * days as i64);
        let mut newest_older: Option<usize> = None;
        for (i, m) in complete.iter().enumerate() {
            let t = m.stop_time.as_deref().and_then(parse_time).or_else(|| parse_time(&m.start_time));
            match t {
                Some(t) if t >= cutoff => keep[i] = true,
                _ => newest_older = Some(i),
            }
        }
        if let Some(i) = newest_older {
            keep[i] = true;
        }
    }
    let oldest_kept = keep.iter().position(|k| *k).expect("at least one backup is kept");
    let oldest = complete[oldest_kept];
    for (i, m) in complete.iter().enumerate() {
        if keep[i] {
            plan.keep_backups.push(m.id.clone());
        } else if remove_backups_too {
            plan.remove_backups.push(Removal { id: m.id.clone(), reason: "outside the retention policy".into() });
        }
    }
    if remove_backups_too {
        for m in backups.iter().filter(|m| m.status != BackupStatus::Complete) {
            let reason = match m.status {
                BackupStatus::Failed => Some("failed".to_string()),
                BackupStatus::Running if !running_now => Some("interrupted".to_string()),
                BackupStatus::Pending if m.start_time < oldest.start_time => {
                    Some("pending and older than every kept backup".to_string())
                }
                _ => None,
            };
            if let Some(reason) = reason {
                plan.remove_backups.push(Removal { id: m.id.clone(), reason });
            }
        }
    }
    let (Some(size), Some(start_wal)) = (size, oldest.start_wal.as_deref()) else {
        plan.note = Some("the repository is not bound to a cluster: no WAL is removed".into());
        return Ok(plan);
    };
    let start = WalFileName::parse(start_wal)
        .ok()
        .and_then(|w| w.segment_no(size))
        .ok_or_else(|| Error::integrity(format!("backup {}: bad start WAL {start_wal}", oldest.id)))?;
    plan.wal_kept_from = Some(start_wal.to_string());
    for o in &cat.objects {
        if o.wal.kind() == WalKind::History {
            continue;
        }
        if o.wal.segment_no(size).is_some_and(|n| n < start) {
            plan.remove_wal.push(o.stored.path.clone());
        }
    }
    Ok(plan)
}

/// Carries out a plan: backups first (their manifest is marked failed
/// before any file goes, so a half-removed backup is never usable), then
/// WAL.
pub fn apply(repo: &crate::repo::Repository, backups: &[Manifest], plan: &Plan) -> Result<()> {
    for r in &plan.remove_backups {
        remove_backup(repo, backups.iter().find(|m| m.id == r.id))?;
        if backups.iter().all(|m| m.id != r.id) {
            repo.storage().remove_tree(&crate::backup::backup_dir(&r.id))?;
        }
    }
    for path in &plan.remove_wal {
        repo.storage().remove(path).map_err(|e| Error::from(e).context("cannot remove WAL"))?;
    }
    Ok(())
}

/// Removes one backup: marks it failed ("deleted"), then removes its files.
pub fn remove_backup(repo: &crate::repo::Repository, m: Option<&Manifest>) -> Result<()> {
    let Some(m) = m else { return Ok(()) };
    let mut gone = m.clone();
    gone.status = BackupStatus::Failed;
    gone.error = Some("being deleted".into());
    crate::backup::write_manifest(repo, &gone)?;
    repo.storage()
        .remove_tree(&crate::backup::backup_dir(&m.id))
        .map_err(|e| Error::from(e).context(format!("cannot remove backup {}", m.id)))
}
