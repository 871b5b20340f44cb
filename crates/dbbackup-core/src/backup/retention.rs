//! Retention: one rule shared by `backup expire` and `wal cleanup`.
//!
//! Every point inside the retention window stays recoverable: the backups
//! inside it are kept, and so is the newest backup older than the window
//! (it is the one that reaches the window's first moments). All WAL from the
//! oldest kept backup's start position onward is kept, on every timeline,
//! with every history file. Ages come from the backups' recorded times and
//! positions, never from file modification times.
//!
//! Chains: `--keep N` counts full backups and keeps every backup built on a
//! kept one; whatever is kept keeps its ancestors (their files make it), so
//! a backup is never left without its parent. What is removed goes newest
//! first, children before their parents.

use std::collections::HashSet;

use dbbackup_format::manifest::{BackupStatus, BackupType, Manifest};
use dbbackup_format::{SegmentSize, WalFileName, WalKind};

use crate::error::{Error, Result};
use crate::wal::catalog::Catalog;

/// What to keep.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// Keep this many newest complete full backups, and every backup built
    /// on them.
    pub keep: Option<usize>,
    /// Keep every point of the last this many days recoverable.
    pub keep_days: Option<u64>,
}

/// What retention would remove, and why the rest stays.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Plan {
    pub keep_backups: Vec<String>,
    pub remove_backups: Vec<Removal>,
    /// Backups `wal cleanup` leaves in place but marks `expired`: they are
    /// outside the window and the WAL they need is removed.
    pub expire_backups: Vec<Removal>,
    /// WAL objects (repository paths) to remove.
    pub remove_wal: Vec<String>,
    /// `remove_wal` summed up for people: counts, bytes, ranges.
    pub wal_summary: WalRemoval,
    /// WAL before this segment position is no longer needed.
    pub wal_kept_from: Option<String>,
    /// Why nothing (or less than asked) is removed.
    pub note: Option<String>,
}

/// The WAL a plan removes, in a few numbers (a long archive's list runs to
/// thousands of names).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WalRemoval {
    /// Every object removed, of any kind.
    pub objects: usize,
    pub stored_bytes: u64,
    /// The segments, per timeline.
    pub ranges: Vec<WalRange>,
    /// `.backup` files (history files are never removed).
    pub backup_files: usize,
    /// `.partial` segments.
    pub partial_files: usize,
}

/// The removed segments of one timeline: from `first` to `last`, `segments`
/// of them (fewer than the span when the archive has gaps there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WalRange {
    pub timeline: u32,
    pub first: String,
    pub last: String,
    pub segments: usize,
}

impl WalRemoval {
    fn add(&mut self, o: &crate::wal::catalog::WalObject) {
        self.objects += 1;
        self.stored_bytes += o.stored.stored_size;
        match o.wal.kind() {
            WalKind::Segment => {
                let (tli, name) = (o.wal.timeline().0, o.wal.to_string());
                match self.ranges.last_mut().filter(|r| r.timeline == tli) {
                    // The catalog is sorted by timeline and position.
                    Some(r) => {
                        r.last = name;
                        r.segments += 1;
                    }
                    None => self.ranges.push(WalRange { timeline: tli, first: name.clone(), last: name, segments: 1 }),
                }
            }
            WalKind::Backup => self.backup_files += 1,
            WalKind::Partial => self.partial_files += 1,
            WalKind::History => {}
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Removal {
    pub id: String,
    pub reason: String,
}

/// "B (incr on A)".
fn describe(m: &Manifest) -> String {
    format!("{} ({} on {})", m.id, m.backup_type.as_str(), m.parent.as_deref().unwrap_or("-"))
}

/// The backups built on `id`, directly or not (any status), newest first.
pub fn dependents<'a>(backups: &'a [Manifest], id: &str) -> Vec<&'a Manifest> {
    let mut ids: HashSet<&str> = HashSet::from([id]);
    let mut out: Vec<&Manifest> = Vec::new();
    // Passes until nothing is added: a child found late (clocks, IDs out of
    // order) still brings its own children.
    loop {
        let before = out.len();
        for m in backups {
            if m.parent.as_deref().is_some_and(|p| ids.contains(p)) && ids.insert(m.id.as_str()) {
                out.push(m);
            }
        }
        if out.len() == before {
            break;
        }
    }
    out.sort_by(|a, b| b.start_time.cmp(&a.start_time).then(b.id.cmp(&a.id)));
    out
}

fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// Plans retention. `remove_backups_too` is false for `wal cleanup`, which
/// marks the backups it makes unrestorable `expired` instead of removing
/// them. `running_now` says whether a backup process holds the lock (its
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
    plan_with_unreadable(backups, &[], cat, size, policy, now, remove_backups_too, running_now)
}

/// [`plan`], knowing the backup directories whose manifest cannot be read
/// right now (`unreadable`): a backup built on one of them is neither
/// removed nor counted, since the manifest may come back (a permission, a
/// mount); one built on a backup that is gone cannot be restored and goes.
#[allow(clippy::too_many_arguments)]
pub fn plan_with_unreadable(
    backups: &[Manifest],
    unreadable: &[String],
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
    let mut plan = Plan::default();
    // The first ancestor that is not in `backups`.
    let missing_ancestor = |m: &Manifest| -> Option<String> {
        let mut cur = m;
        for _ in 0..=backups.len() {
            let p = cur.parent.as_deref()?;
            match backups.iter().find(|b| b.id == p) {
                Some(b) => cur = b,
                None => return Some(p.to_string()),
            }
        }
        None
    };
    let mut notes: Vec<String> = Vec::new();
    let mut waiting_on_unreadable: Vec<&Manifest> = Vec::new();
    // Complete backups whose chain is whole, the only ones restore can use,
    // with the full backup each chain starts at.
    let mut complete: Vec<&Manifest> = Vec::new();
    let mut roots: Vec<String> = Vec::new();
    for m in backups.iter().filter(|m| m.status == BackupStatus::Complete) {
        let why = match crate::backup::chain::Chain::from_list(backups, m) {
            Ok(c) => {
                complete.push(m);
                roots.push(c.manifests()[0].id.clone());
                continue;
            }
            Err(why) => why,
        };
        match missing_ancestor(m) {
            Some(p) if unreadable.contains(&p) => {
                notes.push(format!(
                    "backup {} is left alone: backup {p}, which it is built on, has a manifest that cannot be read right now (see `dbbackup backup list`); fix it, or remove it with `dbbackup backup delete {p} --force`",
                    m.id
                ));
                waiting_on_unreadable.push(m);
            }
            _ if remove_backups_too => {
                plan.remove_backups.push(Removal { id: m.id.clone(), reason: format!("its chain is broken: {why}") })
            }
            _ => {}
        }
    }
    if complete.is_empty() {
        notes.insert(
            0,
            "the repository has no complete backup that can be restored: nothing is removed (WAL is all that can restore anything)".into(),
        );
        plan.note = Some(notes.join("\n"));
        plan.remove_backups.clear();
        return Ok(plan);
    }
    let mut keep = vec![false; complete.len()];
    if let Some(n) = policy.keep {
        let fulls: HashSet<&str> = complete
            .iter()
            .rev()
            .filter(|m| m.backup_type == BackupType::Full)
            .take(n)
            .map(|m| m.id.as_str())
            .collect();
        for (k, r) in keep.iter_mut().zip(&roots) {
            *k = fulls.contains(r.as_str());
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
    let Some(oldest_kept) = keep.iter().position(|k| *k) else {
        plan.note = Some("no complete backup has its whole chain in the repository: nothing is removed".into());
        plan.remove_backups.clear();
        return Ok(plan);
    };
    let oldest = complete[oldest_kept];
    let outside = |m: &Manifest, reason: &str| Removal { id: m.id.clone(), reason: reason.to_string() };
    // Backups being taken, and pending ones newer than every kept backup,
    // stay (their WAL and their parents too).
    let in_use = |m: &Manifest| match m.status {
        BackupStatus::Running => running_now,
        BackupStatus::Pending => m.start_time >= oldest.start_time,
        _ => false,
    };
    // Everything a kept or in-use backup is built on stays.
    let mut needed: HashSet<&str> = HashSet::new();
    let kept_ids = complete.iter().zip(&keep).filter(|(_, k)| **k).map(|(m, _)| *m);
    for m in kept_ids.chain(backups.iter().filter(|m| in_use(m))) {
        let mut cur = m.parent.as_deref();
        while let Some(id) = cur.filter(|id| needed.insert(id)) {
            cur = backups.iter().find(|b| b.id == id).and_then(|b| b.parent.as_deref());
        }
    }
    let mut held_by_chain = Vec::new();
    for (i, m) in complete.iter().enumerate() {
        if !keep[i] && needed.contains(m.id.as_str()) {
            keep[i] = true;
            held_by_chain.push(m.id.clone());
        }
    }
    if !held_by_chain.is_empty() {
        notes.push(format!(
            "keeping backup{} {} beyond the policy: kept backups (or one being taken) are built on {}; a chain expires only whole, with its full backup",
            if held_by_chain.len() == 1 { "" } else { "s" },
            held_by_chain.join(", "),
            if held_by_chain.len() == 1 { "it" } else { "them" }
        ));
    }
    if !notes.is_empty() {
        plan.note = Some(notes.join("\n"));
    }
    // The backups that stay usable: their WAL stays (and the WAL of those
    // waiting on an unreadable manifest, which may come back).
    let mut holders: Vec<&Manifest> = waiting_on_unreadable;
    for (i, m) in complete.iter().enumerate() {
        if keep[i] {
            plan.keep_backups.push(m.id.clone());
            holders.push(m);
        } else if remove_backups_too {
            plan.remove_backups.push(outside(m, "outside the retention policy"));
        } else {
            plan.expire_backups.push(outside(m, "outside the retention window: the WAL it needs is removed"));
        }
    }
    for m in backups.iter().filter(|m| m.status != BackupStatus::Complete) {
        if needed.contains(m.id.as_str()) {
            // Expired by `wal cleanup` or pending, but a kept backup is
            // built on its files.
            holders.push(m);
            continue;
        }
        let stale = match m.status {
            BackupStatus::Failed => Some("failed"),
            BackupStatus::Expired => Some("expired by wal cleanup"),
            BackupStatus::Running if !running_now => Some("interrupted"),
            BackupStatus::Pending if m.start_time < oldest.start_time => {
                Some("pending and older than every kept backup")
            }
            // A backup being taken, or pending newer ones: their WAL stays.
            _ => None,
        };
        match stale {
            Some(reason) if remove_backups_too => plan.remove_backups.push(outside(m, reason)),
            Some(_) if m.status == BackupStatus::Pending => plan
                .expire_backups
                .push(outside(m, "pending and older than every kept backup: the WAL it needs is removed")),
            Some(_) => {}
            None => holders.push(m),
        }
    }
    // Children before their parents: an interrupted removal never leaves a
    // backup without its parent.
    plan.remove_backups.sort_by(|a, b| {
        let t = |id: &str| backups.iter().find(|m| m.id == id).map(|m| m.start_time.clone()).unwrap_or_default();
        t(&b.id).cmp(&t(&a.id)).then(b.id.cmp(&a.id))
    });
    let Some(size) = size else {
        plan.note = Some("the repository is not bound to a cluster: no WAL is removed".into());
        return Ok(plan);
    };
    // WAL stays from the lowest start position of any backup that stays
    // usable, not the oldest one's: after a restore to an earlier point, a
    // newer backup on the new timeline can start before an older one on the
    // old timeline.
    let mut start: Option<(u64, &str)> = None;
    for m in holders {
        let Some(start_wal) = m.start_wal.as_deref() else {
            if m.status == BackupStatus::Complete {
                return Err(Error::integrity(format!("backup {} has no start WAL: no WAL is removed", m.id)));
            }
            continue; // a backup still starting
        };
        let n = WalFileName::parse(start_wal)
            .ok()
            .and_then(|w| w.segment_no(size))
            .ok_or_else(|| Error::integrity(format!("backup {}: bad start WAL {start_wal}", m.id)))?;
        if start.is_none_or(|(s, _)| n < s) {
            start = Some((n, start_wal));
        }
    }
    let (start, start_wal) = start.expect("the oldest kept backup is complete and has a start WAL");
    plan.wal_kept_from = Some(start_wal.to_string());
    for o in &cat.objects {
        if o.wal.kind() == WalKind::History {
            continue;
        }
        if o.wal.segment_no(size).is_some_and(|n| n < start) {
            plan.remove_wal.push(o.stored.path.clone());
            plan.wal_summary.add(o);
        }
    }
    if plan.remove_wal.is_empty() {
        plan.expire_backups.clear();
    }
    Ok(plan)
}

/// Carries out a plan: backups first (a removed backup's manifest is marked
/// failed before any file goes, an expired one's marked expired, so neither
/// is ever listed as usable without its files or WAL), then WAL.
pub fn apply(repo: &crate::repo::Repository, backups: &[Manifest], plan: &Plan) -> Result<()> {
    // Marked before their WAL goes, so they are never listed as usable
    // without it.
    for r in &plan.expire_backups {
        if let Some(m) = backups.iter().find(|m| m.id == r.id) {
            let mut expired = m.clone();
            expired.status = BackupStatus::Expired;
            expired.error = Some(format!("expired by wal cleanup: {}", r.reason));
            crate::backup::write_manifest(repo, &expired)?;
        }
    }
    for r in &plan.remove_backups {
        remove_backup(repo, backups.iter().find(|m| m.id == r.id))?;
        if backups.iter().all(|m| m.id != r.id) {
            repo.storage().remove_tree(&crate::backup::backup_dir(&r.id))?;
        }
    }
    for path in &plan.remove_wal {
        repo.storage().remove(path).map_err(|e| Error::from(e).context("cannot remove WAL"))?;
    }
    // Temporary objects of writers killed long ago, anywhere under wal/.
    let wal = dbbackup_format::object::WAL_DIR;
    for d in repo.storage().list(wal).unwrap_or_default().into_iter().filter(|d| d.is_dir) {
        let _ = repo.storage().remove_stale_temps(&format!("{wal}/{}", d.name), std::time::Duration::from_secs(3600));
    }
    Ok(())
}

/// A retention plan made under the repository's retention lock, which it
/// holds until it is applied or dropped: what is shown is what is done.
pub struct Prepared<'a> {
    repo: &'a crate::repo::Repository,
    _lock: Box<dyn crate::storage::LockGuard>,
    backups: Vec<Manifest>,
    pub plan: Plan,
}

impl Prepared<'_> {
    /// Carries the plan out ([`apply`]); the lock is held until `self`
    /// is dropped.
    pub fn apply(&self) -> Result<()> {
        apply(self.repo, &self.backups, &self.plan)
    }
}

/// `backup expire`: takes the retention lock, lists the backups and the
/// archive, and plans what `policy` removes (backups and their WAL).
pub fn prepare_expire(repo: &crate::repo::Repository, policy: Policy, now: jiff::Timestamp) -> Result<Prepared<'_>> {
    prepare(repo, policy, now, true)
}

/// `wal cleanup`: like [`prepare_expire`] with a window of `days`, but
/// backups that lose their WAL are marked expired, not removed.
pub fn prepare_cleanup(repo: &crate::repo::Repository, days: u64, now: jiff::Timestamp) -> Result<Prepared<'_>> {
    prepare(repo, Policy { keep: None, keep_days: Some(days) }, now, false)
}

fn prepare(
    repo: &crate::repo::Repository,
    policy: Policy,
    now: jiff::Timestamp,
    remove_backups_too: bool,
) -> Result<Prepared<'_>> {
    let lock = repo.storage().lock(crate::backup::RETENTION_LOCK)?;
    let (backups, unreadable) = crate::backup::list_all(repo)?;
    let unreadable: Vec<String> = unreadable.into_iter().map(|(id, _)| id).collect();
    let cat = Catalog::scan(repo)?;
    let running = crate::backup::backup_running(repo);
    let plan = plan_with_unreadable(
        &backups,
        &unreadable,
        &cat,
        repo.segment_size(),
        policy,
        now,
        remove_backups_too,
        running,
    )?;
    Ok(Prepared { repo, _lock: lock, backups, plan })
}

/// What `backup delete` removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deleted {
    /// The backup, and the backups built on it (newest first, each as
    /// "ID (TYPE on PARENT)").
    Backup { id: String, dependents: Vec<String> },
    /// A backup directory whose manifest was missing or unreadable.
    UnreadableDirectory(String),
}

/// `backup delete ID`, under the retention lock. Refuses a backup being
/// taken, and the only complete backup unless `force`; `force` also removes
/// a backup directory whose manifest is gone or damaged.
pub fn delete_backup(repo: &crate::repo::Repository, id: &str, force: bool, with_dependents: bool) -> Result<Deleted> {
    use crate::backup::{backup_dir, backup_running, read_manifest, BACKUPS_DIR};
    let _lock = repo.storage().lock(crate::backup::RETENTION_LOCK)?;
    let dir_exists = || repo.storage().list(BACKUPS_DIR).is_ok_and(|l| l.iter().any(|e| e.is_dir && e.name == id));
    let m = match read_manifest(repo, id) {
        Ok(m) => m,
        Err(e) if e.kind() != crate::error::ErrorKind::NotFound || dir_exists() => {
            if !force {
                return Err(Error::new(
                    e.kind(),
                    format!("{e}; `dbbackup backup delete {id} --force` removes the backup directory"),
                ));
            }
            repo.storage().remove_tree(&backup_dir(id))?;
            return Ok(Deleted::UnreadableDirectory(id.to_string()));
        }
        Err(e) => return Err(e),
    };
    let running = backup_running(repo);
    if m.status == BackupStatus::Running && running {
        return Err(Error::invalid(format!("backup {id} is being taken right now: wait for it to finish")));
    }
    let (all, _) = crate::backup::list(repo)?;
    let deps = dependents(&all, id);
    if let Some(d) = deps.iter().find(|d| d.status == BackupStatus::Running && running) {
        return Err(Error::invalid(format!(
            "backup {} is being taken right now on top of backup {id}: wait for it to finish",
            d.id
        )));
    }
    if !deps.is_empty() && !with_dependents {
        let names: Vec<String> = deps.iter().rev().map(|d| describe(d)).collect();
        return Err(Error::invalid(format!(
            "backups are built on backup {id}: {}; they cannot be restored without it: delete them first, or use --with-dependents to delete them with it",
            names.join(", ")
        )));
    }
    let gone: HashSet<&str> = deps.iter().map(|d| d.id.as_str()).chain([id]).collect();
    // What can still be restored afterwards: complete backups whose chain
    // stays whole without the deleted ones.
    let left: Vec<Manifest> = all.iter().filter(|b| !gone.contains(b.id.as_str())).cloned().collect();
    let complete_left = left.iter().filter(|b| crate::backup::chain::restorable(&left, b)).count();
    let any_complete_gone = all.iter().any(|b| b.status == BackupStatus::Complete && gone.contains(b.id.as_str()));
    if any_complete_gone && complete_left == 0 && !force {
        let what = if deps.is_empty() {
            format!("backup {id} is the only complete backup that can be restored: without it")
        } else {
            format!("backup {id} and the backups built on it are the only complete backups that can be restored: without them")
        };
        return Err(Error::invalid(format!("{what} nothing can be restored; use --force to delete anyway")));
    }
    // Children first (newest first): an interrupted delete never leaves a
    // backup without its parent.
    for d in &deps {
        remove_backup(repo, Some(d))?;
    }
    remove_backup(repo, Some(&m))?;
    Ok(Deleted::Backup { id: id.to_string(), dependents: deps.iter().map(|d| describe(d)).collect() })
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

#[cfg(test)]
mod tests {
    use super::*;
    use dbbackup_format::TimelineId;

    const SEG: u32 = 16 << 20;

    fn backup(id: &str, tli: u32, start_seg: u64, time: &str) -> Manifest {
        let size = SegmentSize::new(SEG).unwrap();
        let start = WalFileName::segment(TimelineId(tli), start_seg, size).to_string();
        let json = serde_json::json!({
            "format_version": 1, "id": id, "label": id, "status": "complete", "error": null,
            "start_time": time, "stop_time": time, "start_lsn": null, "start_wal": start,
            "stop_lsn": null, "stop_wal": start, "timeline": tli, "system_identifier": "1",
            "pg_version_major": 15, "pg_version": "15.0", "wal_segment_size": SEG, "codec": "zstd",
            "compress_level": 1, "encrypted": false, "host": "h", "pid": 1, "dbbackup_version": "0",
            "size_bytes": 0, "stored_bytes": 0, "tablespaces": [], "directories": [], "files": []
        });
        serde_json::from_value(json).unwrap()
    }

    /// An incremental (or differential) backup on `parent`.
    fn on(id: &str, parent: &str, t: BackupType, start_seg: u64, time: &str) -> Manifest {
        let mut m = backup(id, 1, start_seg, time);
        m.backup_type = t;
        m.parent = Some(parent.to_string());
        m
    }

    fn ids(r: &[Removal]) -> Vec<&str> {
        r.iter().map(|r| r.id.as_str()).collect()
    }

    const I: BackupType = BackupType::Incr;
    const D: BackupType = BackupType::Diff;

    fn day(d: u32) -> String {
        format!("2026-11-{d:02}T00:00:00Z")
    }

    #[test]
    fn keep_counts_full_backups_and_expires_chains_whole_children_first() {
        let now: jiff::Timestamp = "2026-11-20T00:00:00Z".parse().unwrap();
        let cat = catalog(&[(1, 10), (1, 20), (1, 30), (1, 40), (1, 50), (1, 60)]);
        let size = SegmentSize::new(SEG);
        // A chain of 0, 1 and 3 incrementals on full backups F1..F3.
        let backups = vec![
            backup("F1", 1, 10, &day(1)),
            backup("F2", 1, 20, &day(2)),
            on("F2a", "F2", I, 25, &day(3)),
            backup("F3", 1, 30, &day(4)),
            on("F3a", "F3", I, 35, &day(5)),
            on("F3b", "F3a", I, 40, &day(6)),
            on("F3c", "F3", D, 45, &day(7)),
        ];
        let keep = |n| plan(&backups, &cat, size, Policy { keep: Some(n), keep_days: None }, now, true, false).unwrap();
        let p = keep(1);
        assert_eq!(p.keep_backups, ["F3", "F3a", "F3b", "F3c"]);
        assert_eq!(ids(&p.remove_backups), ["F2a", "F2", "F1"], "newest first: a child before its parent");
        assert_eq!(p.wal_kept_from.as_deref(), Some("00000001000000000000001E"));
        let p = keep(2);
        assert_eq!(p.keep_backups, ["F2", "F2a", "F3", "F3a", "F3b", "F3c"]);
        assert_eq!(ids(&p.remove_backups), ["F1"]);
        assert_eq!(keep(3).remove_backups.len(), 0);
    }

    #[test]
    fn a_kept_backup_keeps_what_it_is_built_on() {
        let now: jiff::Timestamp = "2026-11-10T12:00:00Z".parse().unwrap();
        let cat = catalog(&[(1, 10), (1, 20), (1, 30), (1, 40)]);
        let size = SegmentSize::new(SEG);
        // A full backup long ago, daily incrementals since: --keep-days 2
        // keeps the window's backups and, through them, the whole chain.
        let backups = vec![
            backup("F", 1, 10, &day(1)),
            on("A", "F", I, 20, &day(5)),
            on("B", "A", I, 30, &day(9)),
            on("C", "B", I, 40, &day(10)),
        ];
        let days = Policy { keep: None, keep_days: Some(2) };
        let p = plan(&backups, &cat, size, days, now, true, false).unwrap();
        assert_eq!(p.keep_backups, ["F", "A", "B", "C"]);
        assert!(p.remove_backups.is_empty() && p.remove_wal.is_empty());
        let note = p.note.unwrap();
        assert!(note.contains("keeping backup F beyond the policy") && note.contains("expires only whole"), "{note}");
        // wal cleanup marks nothing expired that a kept backup is built on.
        let p = plan(&backups, &cat, size, days, now, false, false).unwrap();
        assert!(p.expire_backups.is_empty(), "{:?}", ids(&p.expire_backups));
        // A diff after an incremental: the diff needs only the full backup.
        let mut with_diff = backups.clone();
        with_diff.push(on("D", "F", D, 40, "2026-11-10T06:00:00Z"));
        let p = plan(&with_diff, &cat, size, Policy { keep: None, keep_days: Some(0) }, now, true, false).unwrap();
        assert_eq!(p.keep_backups, ["F", "D"], "the newest before the window (the diff) and its parent");
        assert_eq!(ids(&p.remove_backups), ["C", "B", "A"]);
    }

    #[test]
    fn backups_in_use_keep_their_parents_and_an_expired_parent_of_a_kept_child_stays() {
        let now: jiff::Timestamp = "2026-11-20T00:00:00Z".parse().unwrap();
        let cat = catalog(&[(1, 10), (1, 20), (1, 30)]);
        let size = SegmentSize::new(SEG);
        // F1's chain is outside --keep 1, but an incremental on it is being taken.
        let mut running = on("R", "F1", I, 30, &day(5));
        running.status = BackupStatus::Running;
        let backups = vec![backup("F1", 1, 10, &day(1)), backup("F2", 1, 20, &day(2)), running];
        let keep1 = Policy { keep: Some(1), keep_days: None };
        let p = plan(&backups, &cat, size, keep1, now, true, true).unwrap();
        assert!(p.remove_backups.is_empty(), "{:?}", ids(&p.remove_backups));
        assert_eq!(p.keep_backups, ["F1", "F2"]);
        // Not running any more: interrupted, it goes, and F1 with it.
        let p = plan(&backups, &cat, size, keep1, now, true, false).unwrap();
        assert_eq!(ids(&p.remove_backups), ["R", "F1"]);
        // A parent marked expired by wal cleanup stays while a kept child needs its files.
        let mut f = backup("F", 1, 10, &day(1));
        f.status = BackupStatus::Expired;
        let backups = vec![f, on("A", "F", I, 20, &day(2))];
        let p = plan(&backups, &cat, size, Policy { keep: None, keep_days: Some(30) }, now, true, false).unwrap();
        assert!(p.remove_backups.is_empty(), "{:?}", ids(&p.remove_backups));
        // A chain whose full backup is gone is not counted by --keep.
        let backups = vec![on("orphan", "gone", I, 20, &day(2)), backup("F2", 1, 30, &day(3))];
        let p = plan(&backups, &cat, size, keep1, now, true, false).unwrap();
        assert_eq!(p.keep_backups, ["F2"]);
        assert_eq!(ids(&p.remove_backups), ["orphan"]);
    }

    #[test]
    fn a_backup_built_on_an_unreadable_manifest_is_left_alone_one_on_a_missing_one_goes() {
        let now: jiff::Timestamp = "2026-11-20T00:00:00Z".parse().unwrap();
        let cat = catalog(&[(1, 10), (1, 20), (1, 30)]);
        let size = SegmentSize::new(SEG);
        // F2's manifest cannot be read right now; F3's directory is gone.
        let backups = vec![
            backup("F1", 1, 10, &day(1)),
            on("A", "F2", I, 20, &day(3)),
            on("B", "F3", I, 25, &day(4)),
            backup("F4", 1, 30, &day(5)),
        ];
        let keep1 = Policy { keep: Some(1), keep_days: None };
        let unreadable = ["F2".to_string()];
        let p = plan_with_unreadable(&backups, &unreadable, &cat, size, keep1, now, true, false).unwrap();
        assert_eq!(ids(&p.remove_backups), ["B", "F1"]);
        assert!(p.remove_backups[0].reason.contains("its chain is broken"), "{:?}", p.remove_backups);
        let note = p.note.unwrap();
        assert!(note.contains("backup A is left alone: backup F2") && note.contains("--force"), "{note}");
        // A's WAL stays, in case F2's manifest comes back.
        assert_eq!(p.wal_kept_from.as_deref(), Some("000000010000000000000014"));
        // wal cleanup removes no backup and lets a broken chain pin no WAL.
        let p = plan_with_unreadable(
            &backups,
            &[],
            &cat,
            size,
            Policy { keep: None, keep_days: Some(0) },
            now,
            false,
            false,
        )
        .unwrap();
        assert!(p.remove_backups.is_empty());
        assert_eq!(p.wal_kept_from.as_deref(), Some("00000001000000000000001E"));
    }

    #[test]
    fn dependents_are_found_through_the_whole_tree_newest_first() {
        let backups = vec![
            backup("F", 1, 10, &day(1)),
            on("A", "F", I, 20, &day(2)),
            on("B", "A", I, 30, &day(3)),
            on("D", "F", D, 40, &day(4)),
            backup("G", 1, 50, &day(5)),
        ];
        let d: Vec<&str> = dependents(&backups, "F").iter().map(|m| m.id.as_str()).collect();
        assert_eq!(d, ["D", "B", "A"]);
        assert!(dependents(&backups, "B").is_empty());
    }

    fn catalog(segments: &[(u32, u64)]) -> Catalog {
        crate::wal::catalog::catalog_of(segments, SegmentSize::new(SEG).unwrap())
    }

    fn removed(plan: &Plan) -> Vec<String> {
        plan.remove_wal.iter().map(|p| p["wal/".len()..][..24].to_string()).collect()
    }

    #[test]
    fn wal_stays_from_the_lowest_start_of_any_kept_backup() {
        // A (tl 1, seg 10), B (tl 1, seg 50); a restore to seg 20 made
        // timeline 2, where C (seg 25) was taken after B.
        let backups = vec![
            backup("A", 1, 10, "2026-11-01T00:00:00Z"),
            backup("B", 1, 50, "2026-11-02T00:00:00Z"),
            backup("C", 2, 25, "2026-11-03T00:00:00Z"),
        ];
        let cat = catalog(&[(1, 9), (1, 10), (1, 30), (1, 50), (2, 20), (2, 25), (2, 26)]);
        let size = SegmentSize::new(SEG);
        let now: jiff::Timestamp = "2026-11-04T00:00:00Z".parse().unwrap();
        let policy = Policy { keep: Some(2), keep_days: None };
        let p = plan(&backups, &cat, size, policy, now, true, false).unwrap();
        assert_eq!(p.keep_backups, ["B", "C"]);
        assert_eq!(p.remove_backups.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["A"]);
        assert_eq!(p.wal_kept_from.as_deref(), Some("000000020000000000000019"));
        assert_eq!(removed(&p), ["000000010000000000000009", "00000001000000000000000A", "000000020000000000000014"]);
        let s = &p.wal_summary;
        assert_eq!((s.objects, s.backup_files, s.partial_files), (3, 0, 0));
        assert_eq!(
            s.ranges,
            [
                WalRange {
                    timeline: 1,
                    first: "000000010000000000000009".into(),
                    last: "00000001000000000000000A".into(),
                    segments: 2
                },
                WalRange {
                    timeline: 2,
                    first: "000000020000000000000014".into(),
                    last: "000000020000000000000014".into(),
                    segments: 1
                },
            ]
        );
    }

    #[test]
    fn wal_cleanup_marks_the_backups_it_makes_unrestorable_expired() {
        // C is inside the one-day window, B the newest before it (it reaches
        // the window's start), A older still.
        let backups = vec![
            backup("A", 1, 10, "2026-11-01T00:00:00Z"),
            backup("B", 1, 50, "2026-11-02T00:00:00Z"),
            backup("C", 1, 60, "2026-11-03T12:00:00Z"),
        ];
        let cat = catalog(&[(1, 10), (1, 30), (1, 50), (1, 60)]);
        let now: jiff::Timestamp = "2026-11-04T00:00:00Z".parse().unwrap();
        let policy = Policy { keep: None, keep_days: Some(1) };
        let p = plan(&backups, &cat, SegmentSize::new(SEG), policy, now, false, false).unwrap();
        assert_eq!(p.keep_backups, ["B", "C"]);
        assert!(p.remove_backups.is_empty());
        assert_eq!(p.expire_backups.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(), ["A"]);
        assert_eq!(removed(&p).len(), 2);
        // A window that removes no WAL expires nothing.
        let policy = Policy { keep: None, keep_days: Some(7) };
        assert_eq!(
            plan(&backups, &cat, SegmentSize::new(SEG), policy, now, false, false).unwrap().keep_backups.len(),
            3
        );
        let p = plan(&backups, &cat, SegmentSize::new(SEG), policy, now, false, false).unwrap();
        assert!(p.expire_backups.is_empty() && p.remove_wal.is_empty());
        // An expired backup is removed by the next expire.
        let mut backups = backups;
        backups[0].status = BackupStatus::Expired;
        let policy = Policy { keep: Some(1), keep_days: None };
        let p = plan(&backups, &cat, SegmentSize::new(SEG), policy, now, true, false).unwrap();
        let a = p.remove_backups.iter().find(|r| r.id == "A").unwrap();
        assert_eq!(a.reason, "expired by wal cleanup");
    }
}
