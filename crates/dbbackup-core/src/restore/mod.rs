//! `restore pitr`: choose a backup that can reach the target, check that the
//! archive covers the way there, unpack it in parallel, write the recovery
//! settings, and optionally start the server and follow recovery.
//!
//! Nothing is written into the target directory before every check passed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbbackup_format::guc::{edit_auto_conf, read_conf_value};
use dbbackup_format::history::History;
use dbbackup_format::manifest::{BackupStatus, Manifest};
use dbbackup_format::recovery::{format_time, RecoverySettings, Target, RECOVERY_PARAMS};
use dbbackup_format::{Lsn, SegmentSize, TimelineId, WalFileName, WalKind};

use crate::backup;
use crate::backup::chain::Chain;
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::wal::catalog::{timelines, Catalog};

mod run;
pub use run::{run, PlanSummary, Restored, StartOptions};

/// Which timeline recovery follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimelineChoice {
    Latest,
    Current,
    Id(u32),
}

impl TimelineChoice {
    pub fn parse(s: &str) -> std::result::Result<TimelineChoice, String> {
        match s {
            "latest" => Ok(TimelineChoice::Latest),
            "current" => Ok(TimelineChoice::Current),
            n => n
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .map(TimelineChoice::Id)
                .ok_or_else(|| format!("invalid timeline {n:?}: expected latest, current or a timeline number")),
        }
    }

    fn setting(self) -> String {
        match self {
            TimelineChoice::Latest => "latest".into(),
            TimelineChoice::Current => "current".into(),
            TimelineChoice::Id(n) => n.to_string(),
        }
    }
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    pub target_dir: PathBuf,
    /// ID, `latest` or a path to a pg_basebackup directory or tar file.
    pub base_backup: Option<String>,
    pub target: Target,
    pub inclusive: bool,
    /// `None`: the latest timeline, refused when two timelines are alive
    /// (see [`crate::wal::catalog::live_forks`]); `Some`: as the user chose.
    pub timeline: Option<TimelineChoice>,
    pub action: String,
    pub jobs: usize,
    /// Replace the contents of a non-empty target directory (nothing else).
    pub force: bool,
    /// A time or LSN target past the end of the archive recovers to the
    /// end instead of being refused.
    pub past_end: bool,
    pub skip_extraction: bool,
    pub archive_off: bool,
    pub tablespace_map: Vec<(String, String)>,
    /// `restore_command`, already quoted for the shell (without the
    /// prefetch options, which [`run`] adds once it knows the timeline).
    pub restore_command: String,
    pub port: Option<u16>,
    /// `--prefetch N` for restore_command: `None` the default
    /// ([`default_prefetch`]), 0 off.
    pub prefetch: Option<u16>,
    /// `--spool-dir` for restore_command (absolute); `None`: the default,
    /// `dbbackup_spool` in the restored data directory.
    pub spool_dir: Option<PathBuf>,
}

/// Segments `restore pitr` has `wal fetch` keep ahead by default: 8, as many
/// as pgBackRest's default archive-get queue (128 MiB) holds of 16 MiB
/// segments; enough to hide a round trip to an object store behind the
/// replay of the segments before it. Bounded by those 128 MiB of spool for
/// larger segments (at least 1).
pub fn default_prefetch(size: Option<SegmentSize>) -> u16 {
    const SPOOL_BYTES: u64 = 128 << 20;
    let seg = size.map_or(16 << 20, |s| u64::from(s.bytes()));
    (SPOOL_BYTES / seg).clamp(1, 8) as u16
}

impl RestoreOptions {
    /// How many segments restore_command prefetches (0: off).
    pub fn prefetch_depth(&self, size: Option<SegmentSize>) -> u16 {
        self.prefetch.unwrap_or_else(|| default_prefetch(size))
    }

    /// Where restore_command's spool is.
    pub fn spool(&self) -> PathBuf {
        crate::spool::root(self.spool_dir.as_deref(), &self.target_dir)
    }

    /// Adds `--prefetch N --prefetch-timeline T [--spool-dir D]` to
    /// restore_command (nothing when prefetching is off).
    fn add_prefetch(&mut self, size: Option<SegmentSize>, timeline: Option<TimelineId>) {
        let n = self.prefetch_depth(size);
        if n == 0 {
            return;
        }
        let mut w = vec!["--prefetch".to_string(), n.to_string()];
        if let Some(t) = timeline {
            w.extend(["--prefetch-timeline".into(), t.to_string()]);
        }
        if let Some(d) = &self.spool_dir {
            w.extend(["--spool-dir".into(), d.display().to_string()]);
        }
        self.restore_command = format!("{} {}", self.restore_command, dbbackup_format::guc::shell_join(&w));
    }
}

/// Where the restored files come from.
#[derive(Debug, Clone)]
pub enum Source {
    Repo(Box<Manifest>),
    /// A pg_basebackup plain directory or tar file.
    Path {
        path: PathBuf,
        start_lsn: Lsn,
        timeline: TimelineId,
        major: u32,
        system_identifier: u64,
    },
}

/// The checked plan.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    pub source: Source,
    /// What recovery is configured to reach: the requested target, or the
    /// end of the archive when `--target-past-end` overrode a target past it.
    pub target: Target,
    /// Where the last archived segment on the way starts: an end-of-archive
    /// recovery that stops before it stopped early.
    pub archive_end: Option<Lsn>,
    pub target_timeline: TimelineId,
    pub first_segment: String,
    pub last_segment: Option<String>,
    pub segments_checked: u64,
    pub major: u32,
}

impl RestorePlan {
    pub fn source_name(&self) -> String {
        match &self.source {
            Source::Repo(m) => format!("backup {}", m.id),
            Source::Path { path, .. } => path.display().to_string(),
        }
    }
}

/// A timeline on the way to the target: valid from `begin` to `end`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Leg {
    pub(crate) tli: TimelineId,
    pub(crate) begin: Lsn,
    pub(crate) end: Option<Lsn>,
}

/// The timeline whose segment number `segno` is read on the way `legs`:
/// the newest leg that began at or before that segment, as PostgreSQL reads
/// segments (a parent's segments past a branch point are not on the way;
/// the segment holding a branch point is read from the child).
pub(crate) fn segment_owner(legs: &[Leg], size: SegmentSize, segno: u64) -> TimelineId {
    legs.iter().rev().find(|l| size.segment_of(l.begin) <= segno).map_or(legs[0].tli, |l| l.tli)
}

pub(crate) fn path_to(target: TimelineId, histories: &BTreeMap<TimelineId, History>) -> Result<Vec<Leg>> {
    if target.0 == 1 {
        return Ok(vec![Leg { tli: target, begin: Lsn(0), end: None }]);
    }
    // No history file: the timeline is followed alone (a repository whose
    // archiving began on it); a backup on another timeline is refused later.
    let Some(h) = histories.get(&target) else {
        return Ok(vec![Leg { tli: target, begin: Lsn(0), end: None }]);
    };
    let mut legs = Vec::new();
    let mut begin = Lsn(0);
    for e in &h.entries {
        legs.push(Leg { tli: e.parent, begin, end: Some(e.switch_lsn) });
        begin = e.switch_lsn;
    }
    legs.push(Leg { tli: target, begin, end: None });
    Ok(legs)
}

fn ts(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// Why a backup cannot reach the target, or `None` when it can.
pub(crate) fn unreachable_reason(m: &Manifest, legs: &[Leg], target: &Target) -> Option<String> {
    let tli = TimelineId(m.timeline?);
    let stop = m.stop_lsn?;
    let Some(leg) = legs.iter().find(|l| l.tli == tli) else {
        return Some(format!("it is on timeline {tli}, which is not on the way to the target timeline"));
    };
    if let Some(end) = leg.end {
        if stop > end {
            return Some(format!("it ends at {stop}, after timeline {tli} branched off at {end}"));
        }
    }
    match target {
        Target::Time(t) => {
            let stop_time = m.stop_time.as_deref().and_then(ts)?;
            (stop_time > t.timestamp())
                .then(|| format!("it ends at {stop_time}, after the target time {}", format_time(t)))
        }
        Target::Lsn(l) => (stop > *l).then(|| format!("it ends at LSN {stop}, after the target LSN {l}")),
        _ => None,
    }
}

/// Reads `START WAL LOCATION` and `START TIMELINE` from a backup_label.
fn parse_backup_label(text: &str) -> Option<(Lsn, TimelineId)> {
    let mut lsn = None;
    let mut tli = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("START WAL LOCATION: ") {
            lsn = rest.split_whitespace().next().and_then(|s| s.parse().ok());
        } else if let Some(rest) = line.strip_prefix("START TIMELINE: ") {
            tli = rest.trim().parse().ok().map(TimelineId);
        }
    }
    Some((lsn?, tli.unwrap_or(TimelineId(1))))
}

/// Inspects a pg_basebackup directory or tar.
fn inspect_path(path: &Path) -> Result<Source> {
    let shown = path.display();
    let (label, version, control) = if path.is_dir() {
        let read = |f: &str| fs::read(path.join(f));
        let base_tar = ["base.tar", "base.tar.gz"].iter().map(|f| path.join(f)).find(|p| p.exists());
        if let Some(tar) = base_tar {
            read_tar_members(&tar)?
        } else {
            (
                read("backup_label")
                    .map_err(|e| Error::invalid(format!("{shown}/backup_label: {e}: not a pg_basebackup directory")))?,
                read("PG_VERSION").map_err(|e| Error::invalid(format!("{shown}/PG_VERSION: {e}")))?,
                read("global/pg_control").map_err(|e| Error::invalid(format!("{shown}/global/pg_control: {e}")))?,
            )
        }
    } else {
        read_tar_members(path)?
    };
    let label = String::from_utf8_lossy(&label).to_string();
    let (start_lsn, timeline) = parse_backup_label(&label)
        .ok_or_else(|| Error::invalid(format!("{shown}: backup_label has no START WAL LOCATION")))?;
    let major = dbbackup_format::control::parse_pg_version(&String::from_utf8_lossy(&version))
        .ok_or_else(|| Error::invalid(format!("{shown}: unreadable PG_VERSION")))?;
    let control = dbbackup_format::control::parse_control(&control)
        .map_err(|e| Error::integrity(format!("{shown}: global/pg_control: {e}")))?;
    Ok(Source::Path {
        path: path.to_path_buf(),
        start_lsn,
        timeline,
        major,
        system_identifier: control.system_identifier,
    })
}

fn open_tar(path: &Path) -> Result<tar::Archive<Box<dyn std::io::Read>>> {
    let f = File::open(path).map_err(|e| Error::invalid(format!("cannot read {}: {e}", path.display())))?;
    let name = path.to_string_lossy();
    let r: Box<dyn std::io::Read> = if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::MultiGzDecoder::new(std::io::BufReader::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    Ok(tar::Archive::new(r))
}

fn read_tar_members(path: &Path) -> Result<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let mut ar = open_tar(path)?;
    let (mut label, mut version, mut control) = (None, None, None);
    let entries = ar.entries().map_err(|e| Error::invalid(format!("{}: not a tar file: {e}", path.display())))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        let p = entry.path().map(|p| p.to_string_lossy().trim_start_matches("./").to_string()).unwrap_or_default();
        let slot = match p.as_str() {
            "backup_label" => &mut label,
            "PG_VERSION" => &mut version,
            "global/pg_control" => &mut control,
            _ => continue,
        };
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut buf)
            .map_err(|e| Error::invalid(format!("{}: {e}", path.display())))?;
        *slot = Some(buf);
    }
    let missing = |what: &str| Error::invalid(format!("{}: no {what} inside: not a pg_basebackup tar", path.display()));
    Ok((
        label.ok_or_else(|| missing("backup_label"))?,
        version.ok_or_else(|| missing("PG_VERSION"))?,
        control.ok_or_else(|| missing("global/pg_control"))?,
    ))
}

/// A target past the end of the archive: refused, or with
/// `--target-past-end` the end of the archive (PostgreSQL refuses to end
/// recovery before a time target, so the end is what is configured).
fn past_end(why: String, allowed: bool) -> Result<Target> {
    if !allowed {
        return Err(Error::invalid(format!(
            "{why}; to recover to the end of the archive instead, add --target-past-end (nothing was restored)"
        )));
    }
    tracing::warn!("{why}; --target-past-end: recovering to the end of the archive instead");
    Ok(Target::End)
}

/// Refuses to follow the latest timeline through a fork whose parent kept
/// archiving after the child was born: two live histories (a restored copy
/// archiving into this repository, say), where "latest" is a guess.
pub(crate) fn refuse_live_forks(
    repo: &Repository,
    cat: &Catalog,
    histories: &BTreeMap<TimelineId, History>,
    legs: &[Leg],
    size: SegmentSize,
    nothing_done: &str,
) -> Result<()> {
    let forks = crate::wal::catalog::live_forks(cat, histories, size);
    let on_the_way = forks.iter().find(|f| legs.windows(2).any(|w| w[0].tli == f.parent && w[1].tli == f.child));
    let Some(f) = on_the_way else { return Ok(()) };
    Err(Error::invalid(format!(
        "repository {} holds two live histories, and the latest timeline may not be the one you want: {}; choose with --timeline {} (the history that went on from the fork) or --timeline {} ({nothing_done})",
        repo.location(),
        f.describe(),
        f.parent,
        f.child
    )))
}

/// Chooses the backup and checks that the archive covers the way from it to
/// the target. Reads only; writes nothing.
pub fn plan(repo: &Repository, opts: &RestoreOptions) -> Result<RestorePlan> {
    let cat = Catalog::scan(repo)?;
    let (tls, histories) = timelines(repo, &cat)?;
    let size = repo.segment_size().ok_or_else(|| {
        Error::invalid(format!("repository {} holds no WAL yet (not bound to a cluster)", repo.location()))
    })?;
    let (all, unreadable) = backup::list(repo)?;
    let unreadable_note = match unreadable.first() {
        Some(e) => format!(" ({} backup manifest(s) could not be read, e.g. {e})", unreadable.len()),
        None => String::new(),
    };

    // The source, when named.
    let named: Option<Source> = match opts.base_backup.as_deref() {
        None => None,
        Some("latest") => Some(Source::Repo(Box::new(backup::resolve(repo, "latest")?))),
        Some(p) if p.contains('/') || Path::new(p).exists() => {
            let src = inspect_path(Path::new(p))?;
            if let (Source::Path { system_identifier, .. }, Some(own)) = (&src, repo.identity()) {
                if *system_identifier != own.system_identifier {
                    return Err(Error::identity(format!(
                        "{p} is a backup of another cluster (system identifier {system_identifier}); repository {} belongs to {}",
                        repo.location(),
                        own.system_identifier
                    )));
                }
            }
            Some(src)
        }
        Some(id) => Some(Source::Repo(Box::new(backup::read_manifest(repo, id)?))),
    };
    if let Some(Source::Repo(m)) = &named {
        // Before anything is written (--force would empty the target first).
        if let Err(e) = Chain::from_list(&all, m) {
            let other = all.iter().rev().find(|b| crate::backup::chain::restorable(&all, b));
            return Err(Error::new(
                e.kind(),
                format!(
                    "{e}{}",
                    match other {
                        Some(b) => format!("; backup {} can be restored (use --base-backup {})", b.id, b.id),
                        None => "; no backup in the repository has its whole chain".to_string(),
                    }
                ),
            ));
        }
        if m.status != BackupStatus::Complete {
            return Err(Error::invalid(format!(
                "backup {} is {}, not complete: it cannot be restored{}",
                m.id,
                backup::shown_status(m, backup::backup_running(repo)),
                m.error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
            )));
        }
    }

    // The target timeline.
    let newest_tl = tls.iter().map(|t| t.timeline).max().unwrap_or(TimelineId(1));
    let source_tli = |s: &Source| match s {
        Source::Repo(m) => TimelineId(m.timeline.unwrap_or(1)),
        Source::Path { timeline, .. } => *timeline,
    };
    let target_tl = match opts.timeline.unwrap_or(TimelineChoice::Latest) {
        TimelineChoice::Latest => newest_tl,
        TimelineChoice::Id(n) => TimelineId(n),
        TimelineChoice::Current => match &named {
            Some(s) => source_tli(s),
            None => all
                .iter()
                .rev()
                .find(|m| m.status == BackupStatus::Complete)
                .map(|m| TimelineId(m.timeline.unwrap_or(1)))
                .unwrap_or(TimelineId(1)),
        },
    };
    let legs = path_to(target_tl, &histories)?;
    if opts.timeline.is_none() {
        refuse_live_forks(repo, &cat, &histories, &legs, size, "nothing was restored")?;
    }
    let backup_on_target = match &named {
        Some(src) => source_tli(src) == target_tl,
        None => all.iter().any(|m| m.status == BackupStatus::Complete && m.timeline == Some(target_tl.0)),
    };
    if target_tl.0 > 1 && !histories.contains_key(&target_tl) && !backup_on_target {
        // Without its history file, recovery cannot switch to this timeline
        // from an older one's WAL (a backup taken on it needs none).
        let older = cat.objects.iter().map(|o| o.wal.timeline()).filter(|t| *t < target_tl).max();
        if let Some(older) = older {
            return Err(Error::not_found(format!(
                "timeline {target_tl} has no history file ({}) in the archive, so recovery cannot follow it from timeline {older}: archive it from the server's pg_wal with `dbbackup wal archive`, or choose --timeline {older}",
                WalFileName::history(target_tl)
            )));
        }
    }
    let owner = |p: u64| segment_owner(&legs, size, p);
    let on_the_way = |w: &WalFileName| w.segment_no(size).is_some_and(|q| owner(q) == w.timeline());

    // Time targets must lie inside the archive.
    let mut target = opts.target.clone();
    if let Target::Time(t) = &opts.target {
        let now = jiff::Timestamp::now();
        let newest = cat
            .objects
            .iter()
            .filter(|o| o.wal.kind() == WalKind::Segment && on_the_way(&o.wal))
            .filter_map(|o| o.archived_at)
            .max()
            .and_then(|t| jiff::Timestamp::try_from(t).ok());
        let past = if t.timestamp() > now {
            Some(format!(
                "target time {} is in the future: recovery would replay the whole archive and stop at its end",
                format_time(t)
            ))
        } else {
            newest.filter(|n| t.timestamp() > *n).map(|n| format!(
                "target time {} is past the end of the archive on timeline {target_tl} (its newest segment was archived at {n}): recovery would stop short; if the source server still runs, archive its current WAL first (SELECT pg_switch_wal(), then wait until `dbbackup pitr status` shows it archived)",
                format_time(t)
            ))
        };
        if let Some(why) = past {
            target = past_end(why, opts.past_end)?;
        }
    }

    // The backup: named, or the newest complete one that can reach the target.
    let source = match named {
        Some(Source::Repo(m)) => {
            if let Some(why) = unreachable_reason(&m, &legs, &target) {
                let other = all
                    .iter()
                    .rev()
                    .filter(|b| b.status == BackupStatus::Complete)
                    .find(|b| unreachable_reason(b, &legs, &target).is_none());
                return Err(Error::invalid(format!(
                    "backup {} cannot reach {}: {why}; {}",
                    m.id,
                    target,
                    match other {
                        Some(b) => format!("backup {} can (use --base-backup {})", b.id, b.id),
                        None => "no backup in the repository can".to_string(),
                    }
                )));
            }
            Source::Repo(m)
        }
        Some(p) => p,
        None => {
            let complete: Vec<&Manifest> = all.iter().filter(|m| m.status == BackupStatus::Complete).collect();
            if complete.is_empty() {
                return Err(Error::not_found(format!(
                    "repository {} has no complete backup{unreadable_note}: take one with `dbbackup backup base`, or give --base-backup PATH",
                    repo.location()
                )));
            }
            // A chained backup whose ancestors are not all there is passed
            // over, and said so.
            let pick = complete.iter().rev().find(|m| {
                unreachable_reason(m, &legs, &target).is_none()
                    && match Chain::from_list(&all, m) {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!("passing over backup {}: {e}", m.id);
                            false
                        }
                    }
            });
            match pick {
                Some(m) => Source::Repo(Box::new((*m).clone())),
                None => {
                    let oldest = complete[0];
                    return Err(Error::invalid(format!(
                        "no complete backup can reach {} on timeline {target_tl}: not even the oldest, {}: {}",
                        target,
                        oldest.id,
                        unreachable_reason(oldest, &legs, &target).unwrap_or_default()
                    )));
                }
            }
        }
    };
    let (start_lsn, src_tli, major) = match &source {
        Source::Repo(m) => (m.start_lsn.unwrap_or(Lsn(0)), TimelineId(m.timeline.unwrap_or(1)), m.pg_version_major),
        Source::Path { start_lsn, timeline, major, .. } => (*start_lsn, *timeline, *major),
    };
    if !legs.iter().any(|l| l.tli == src_tli) {
        return Err(Error::invalid(format!(
            "the backup is on timeline {src_tli}, which is not an ancestor of timeline {target_tl}: choose --timeline {src_tli} or a later backup"
        )));
    }

    // Coverage: every segment from the backup's start to the target (or the
    // end of the archive) on the timeline that owns that position.
    let present: std::collections::HashSet<(u32, u64)> = cat
        .objects
        .iter()
        .filter(|o| o.wal.kind() == WalKind::Segment)
        .filter_map(|o| Some((o.wal.timeline().0, o.wal.segment_no(size)?)))
        .collect();
    let first = size.segment_of(start_lsn);
    // The end of the archive: the last position held by the timeline that
    // owns it on the way to the target.
    let end_of_archive = present.iter().filter(|(t, q)| *q >= first && owner(*q).0 == *t).map(|(_, q)| *q).max();
    if let Target::Lsn(l) = &target {
        let want = size.segment_of(*l);
        if end_of_archive.is_none_or(|end| want > end) && want >= first {
            let end = end_of_archive.map(|e| WalFileName::segment(owner(e), e, size).to_string());
            target = past_end(
                format!(
                    "target LSN {l} is past the end of the archive on timeline {target_tl} (its last segment on the way is {}): recovery would stop short; if the source server still runs, archive its current WAL first (SELECT pg_switch_wal(), then wait until `dbbackup pitr status` shows it archived)",
                    end.as_deref().unwrap_or("none")
                ),
                opts.past_end,
            )?;
        }
    }
    let last = match &target {
        Target::Lsn(l) => Some(size.segment_of(*l)),
        Target::Immediate => match &source {
            Source::Repo(m) => m.stop_lsn.map(|s| size.segment_of(Lsn(s.0.saturating_sub(1)))),
            Source::Path { .. } => Some(first),
        },
        // Recovery that runs to the end of the archive (or to a time,
        // transaction or name somewhere in it) reaches every branch point
        // on the way: the child's segment holding it must be there, or
        // PostgreSQL would read on down the parent timeline past the fork.
        _ => {
            let branch = legs.last().filter(|l| l.begin.0 > 0).map(|l| size.segment_of(l.begin));
            end_of_archive.max(branch)
        }
    };
    let last = last.unwrap_or(first);
    for p in first..=last {
        let t = owner(p);
        if !present.contains(&(t.0, p)) {
            let none_on_timeline = !present.iter().any(|(tl, _)| *tl == t.0);
            let hint = match legs.iter().position(|l| l.tli == t) {
                Some(i) if i > 0 && none_on_timeline => format!(
                    ": timeline {t} branched off timeline {} at {} but none of its WAL is archived; restore timeline {} with --timeline {}, or archive timeline {t}'s WAL",
                    legs[i - 1].tli,
                    legs[i].begin,
                    legs[i - 1].tli,
                    legs[i - 1].tli
                ),
                _ => " (see `dbbackup wal verify`)".to_string(),
            };
            return Err(Error::not_found(format!(
                "the archive does not cover the way from {} to {}: {} is missing{hint}",
                match &source {
                    Source::Repo(m) => format!("backup {}", m.id),
                    Source::Path { path, .. } => path.display().to_string(),
                },
                target,
                WalFileName::segment(t, p, size)
            )));
        }
    }
    let archive_end = matches!(target, Target::End).then(|| size.segment_start(last));
    Ok(RestorePlan {
        source,
        target,
        archive_end,
        target_timeline: target_tl,
        first_segment: WalFileName::segment(owner(first), first, size).to_string(),
        last_segment: Some(WalFileName::segment(owner(last), last, size).to_string()),
        segments_checked: last - first + 1,
        major,
    })
}

/// What `--force` may replace: an old restore or data directory, never
/// something a slip of the path would destroy. Refused: a directory inside
/// a data directory (its `pg_wal`, say), one holding another data
/// directory, a running server or a dbbackup repository anywhere below it,
/// and the repository being restored from, or any directory around it.
fn check_replaceable(dir: &Path, repo_root: Option<&Path>) -> Result<()> {
    let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
    let target = canon(dir);
    let refuse = |why: String| {
        Err(Error::invalid(format!(
            "--force refuses to replace the contents of {}: {why}; choose another --target-dir (nothing was changed)",
            dir.display()
        )))
    };
    if let Some(repo) = repo_root.map(canon) {
        if repo.starts_with(&target) || target.starts_with(&repo) {
            return refuse(format!("the repository {} is there", repo.display()));
        }
    }
    let is_data_dir = |d: &Path| d.join("PG_VERSION").is_file() && d.join("global").is_dir();
    if let Some(outer) = target.ancestors().skip(1).find(|a| is_data_dir(a)) {
        return refuse(format!("it is inside the data directory {}", outer.display()));
    }
    let mut stack = vec![target.clone()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            // Symlinks are removed, never followed.
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                if e.file_name() == META_FILE_NAME {
                    return refuse(format!("it holds a dbbackup repository at {}", d.display()));
                }
                continue;
            }
            if crate::pitr::read_postmaster_pid(&p).is_some() {
                return refuse(format!("a server is running in {}", p.display()));
            }
            if is_data_dir(&p) {
                return refuse(format!("it holds another data directory, {}", p.display()));
            }
            stack.push(p);
        }
    }
    Ok(())
}

const META_FILE_NAME: &str = dbbackup_format::meta::META_FILE;

/// Prepares the target directory: absent or empty, unless `force`.
fn prepare_dir(dir: &Path, force: bool, repo_root: Option<&Path>) -> Result<()> {
    match fs::read_dir(dir) {
        Ok(rd) => {
            let names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
            if !names.is_empty() {
                if !force {
                    return Err(Error::invalid(format!(
                        "target directory {} is not empty (it holds {}): choose an empty or new directory, or use --force to replace its contents",
                        dir.display(),
                        names.iter().take(3).cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
                if crate::pitr::read_postmaster_pid(dir).is_some() {
                    return Err(Error::invalid(format!("a server is running in {}: stop it first", dir.display())));
                }
                check_replaceable(dir, repo_root)?;
                for n in names {
                    let p = dir.join(n);
                    let r = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                    r.map_err(|e| Error::io(format!("cannot clear {}: {e}", p.display())))?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::create_dir_all(dir).map_err(|e| Error::io(format!("cannot create {}: {e}", dir.display())))?;
        }
        Err(e) => return Err(Error::io(format!("cannot read {}: {e}", dir.display()))),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(|e| Error::io(format!("cannot set mode 0700 on {}: {e}", dir.display())))
}

/// Where each tablespace of a backup goes (after `--tablespace-map`),
/// checked empty: `--force` replaces the contents of the target directory
/// only, never a tablespace location, which on the source's host is the
/// live cluster's own tablespace.
fn tablespace_dirs(m: &Manifest, opts: &RestoreOptions) -> Result<BTreeMap<String, PathBuf>> {
    let mut out = BTreeMap::new();
    for t in &m.tablespaces {
        let loc = PathBuf::from(map_location(&t.location, &opts.tablespace_map));
        let inside_target = loc.starts_with(&opts.target_dir);
        if !inside_target && fs::read_dir(&loc).map(|mut r| r.next().is_some()).unwrap_or(false) {
            return Err(Error::invalid(format!(
                "tablespace {} location {} is not empty (is it the tablespace of the cluster this backup came from?): relocate it with --tablespace-map {}=NEWDIR (--force never replaces a tablespace location)",
                t.oid,
                loc.display(),
                t.location
            )));
        }
        out.insert(format!("pg_tblspc/{}", t.oid), loc);
    }
    Ok(out)
}

/// Removes what a failed extraction wrote: the target directory's
/// contents (or the directory, when it did not exist before) and the
/// tablespace locations' contents (checked empty before).
fn remove_partial(dir: &Path, created: bool, spc_dirs: &BTreeMap<String, PathBuf>) -> std::io::Result<()> {
    let clear = |d: &Path| -> std::io::Result<()> {
        for e in fs::read_dir(d)? {
            let p = e?.path();
            if p.is_dir() && !p.is_symlink() {
                fs::remove_dir_all(&p)?;
            } else {
                fs::remove_file(&p)?;
            }
        }
        Ok(())
    };
    for loc in spc_dirs.values() {
        match clear(loc) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    if created {
        fs::remove_dir_all(dir)
    } else {
        clear(dir)
    }
}

/// Unpacks the chosen source into the target directory. On failure it
/// removes what it wrote, so no half-restored directory is left to be
/// started by mistake.
pub fn extract(repo: &Repository, plan: &RestorePlan, opts: &RestoreOptions) -> Result<()> {
    let dir = &opts.target_dir;
    let spc_dirs = match &plan.source {
        Source::Repo(m) => tablespace_dirs(m, opts)?,
        Source::Path { .. } => BTreeMap::new(),
    };
    let created = !dir.exists();
    let repo_location = repo.location();
    let repo_root = Path::new(&repo_location);
    prepare_dir(dir, opts.force, repo_root.is_absolute().then_some(repo_root))?;
    let done = match &plan.source {
        Source::Repo(m) => extract_repo(repo, m, opts, &spc_dirs),
        Source::Path { path, .. } => extract_path(path, dir),
    }
    .and_then(|()| {
        let roots: Vec<&Path> = std::iter::once(dir.as_path()).chain(spc_dirs.values().map(PathBuf::as_path)).collect();
        sync_tree(&roots, opts.jobs)
    });
    done.map_err(|e| {
        let cleanup = match remove_partial(dir, created, &spc_dirs) {
            Ok(()) => "what was written is removed".to_string(),
            Err(c) => format!("removing what was written failed ({c}): remove {} yourself", dir.display()),
        };
        e.context(format!("restore into {} failed; {cleanup}", dir.display()))
    })
}

/// A restored file that asks the kernel to start writing its pages back
/// every few MiB (as PostgreSQL's `pg_flush_data` does): the fsync before
/// exit 0 then waits for little, instead of for the whole cluster, which
/// would otherwise sit in the page cache until that moment.
struct WritebackFile {
    file: File,
    written: u64,
    started: u64,
}

const WRITEBACK_EVERY: u64 = 8 << 20;

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITEBACK_EVERY {
            start_writeback(&self.file, self.started, self.written - self.started);
            self.started = self.written;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: starts writeback, waits for
/// nothing. Advisory: durability comes from the fsync in [`sync_tree`].
#[allow(unsafe_code)]
fn start_writeback(f: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else { return };
    // SAFETY: the descriptor is open for as long as `f` is borrowed, and
    // the call reads nothing from our memory.
    unsafe {
        libc::sync_file_range(f.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE);
    }
}

/// Makes everything under `roots` durable before a restore reports
/// success: every file fsynced (`jobs` at a time), then every directory,
/// deepest first, then each root's parent. A crash between exit 0 and the
/// server's start must not leave torn files that recovery would trust.
pub fn sync_tree(roots: &[&Path], jobs: usize) -> Result<()> {
    let io = |what: &str, p: &Path, e: std::io::Error| Error::io(format!("cannot {what} {}: {e}", p.display()));
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    let mut stack: Vec<PathBuf> = roots.iter().map(|p| p.to_path_buf()).collect();
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).map_err(|e| io("read", &d, e))? {
            let e = e.map_err(|e| io("read", &d, e))?;
            // A symlink (a tablespace link) is durable with its directory.
            match e.file_type().map_err(|err| io("stat", &e.path(), err))? {
                t if t.is_dir() => stack.push(e.path()),
                t if t.is_file() => files.push(e.path()),
                _ => {}
            }
        }
        dirs.push(d);
    }
    crate::par::try_for_each(&files, jobs, |f| {
        File::open(f).and_then(|f| f.sync_all()).map_err(|e| io("fsync", f, e))
    })?;
    // Children were pushed after their parents: reversed, deepest first.
    for d in dirs.iter().rev().map(PathBuf::as_path).chain(roots.iter().filter_map(|r| r.parent())) {
        crate::storage::sync_dir(d).map_err(|e| io("fsync", d, e))?;
    }
    Ok(())
}

fn map_location(loc: &str, map: &[(String, String)]) -> String {
    map.iter().find(|(old, _)| old == loc).map(|(_, new)| new.clone()).unwrap_or_else(|| loc.to_string())
}

fn extract_repo(
    repo: &Repository,
    m: &Manifest,
    opts: &RestoreOptions,
    spc_dirs: &BTreeMap<String, PathBuf>,
) -> Result<()> {
    let dir = &opts.target_dir;
    for loc in spc_dirs.values() {
        fs::create_dir_all(loc).map_err(|e| Error::io(format!("cannot create {}: {e}", loc.display())))?;
        let _ = fs::set_permissions(loc, fs::Permissions::from_mode(0o700));
    }
    let resolve = |rel: &str| -> PathBuf {
        for (prefix, loc) in spc_dirs {
            if let Some(rest) = rel.strip_prefix(prefix.as_str()) {
                return loc.join(rest.trim_start_matches('/'));
            }
        }
        dir.join(rel)
    };
    for d in &m.directories {
        if let Some(loc) = spc_dirs.get(&d.path) {
            fs::create_dir_all(dir.join("pg_tblspc"))
                .map_err(|e| Error::io(format!("cannot create pg_tblspc: {e}")))?;
            std::os::unix::fs::symlink(loc, dir.join(&d.path))
                .map_err(|e| Error::io(format!("cannot link {} to {}: {e}", d.path, loc.display())))?;
            continue;
        }
        let p = resolve(&d.path);
        fs::create_dir_all(&p).map_err(|e| Error::io(format!("cannot create {}: {e}", p.display())))?;
        let _ = fs::set_permissions(&p, fs::Permissions::from_mode(d.mode & 0o7777));
    }
    // Largest first, so a big relation file does not finish last alone.
    let mut order: Vec<&dbbackup_format::manifest::FileEntry> = m.files.iter().collect();
    order.sort_by_key(|f| std::cmp::Reverse(f.size));
    let workers = opts.jobs.max(1) * repo.storage().requests_per_worker();
    let chain = Chain::load(repo, m.clone())?;
    crate::par::try_for_each(&order, workers, |f| {
        let path = resolve(&f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|e| Error::io(format!("cannot create {}: {e}", parent.display())))?;
        }
        let out = File::create(&path).map_err(|e| Error::io(format!("cannot create {}: {e}", path.display())))?;
        let mut out = BufWriter::with_capacity(1 << 20, WritebackFile { file: out, written: 0, started: 0 });
        chain.read_file(repo, f, &mut out)?;
        out.flush().map_err(|e| Error::io(format!("cannot write {}: {e}", path.display())))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode & 0o7777))
            .map_err(|e| Error::io(format!("cannot set mode of {}: {e}", path.display())))
    })?;
    // tablespace_map names the new locations, so PostgreSQL links them there.
    let map_path = dir.join("tablespace_map");
    if let Ok(text) = fs::read_to_string(&map_path) {
        let mapped: String = text
            .lines()
            .map(|l| match l.split_once(' ') {
                Some((oid, loc)) => format!("{oid} {}\n", map_location(loc, &opts.tablespace_map)),
                None => format!("{l}\n"),
            })
            .collect();
        fs::write(&map_path, mapped).map_err(|e| Error::io(format!("cannot write {}: {e}", map_path.display())))?;
        // PostgreSQL recreates the links from tablespace_map.
        for oid in m.tablespaces.iter().map(|t| t.oid) {
            let _ = fs::remove_file(dir.join(format!("pg_tblspc/{oid}")));
        }
    }
    for sub in ["pg_wal", "pg_wal/archive_status"] {
        let _ = fs::create_dir_all(dir.join(sub));
    }
    Ok(())
}

fn extract_path(src: &Path, dir: &Path) -> Result<()> {
    let unpack = |tar_path: &Path, into: &Path| -> Result<()> {
        fs::create_dir_all(into).map_err(|e| Error::io(format!("cannot create {}: {e}", into.display())))?;
        open_tar(tar_path)?
            .unpack(into)
            .map_err(|e| Error::io(format!("cannot unpack {} into {}: {e}", tar_path.display(), into.display())))
    };
    if src.is_file() {
        unpack(src, dir)?;
    } else if let Some(base) = ["base.tar", "base.tar.gz"].iter().map(|f| src.join(f)).find(|p| p.exists()) {
        unpack(&base, dir)?;
        if let Some(wal) = ["pg_wal.tar", "pg_wal.tar.gz"].iter().map(|f| src.join(f)).find(|p| p.exists()) {
            unpack(&wal, &dir.join("pg_wal"))?;
        }
    } else {
        copy_tree(src, dir)?;
    }
    for sub in ["pg_wal", "pg_wal/archive_status"] {
        let _ = fs::create_dir_all(dir.join(sub));
    }
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    Ok(())
}

fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    for entry in fs::read_dir(src).map_err(|e| Error::io(format!("cannot read {}: {e}", src.display())))? {
        let entry = entry.map_err(|e| Error::io(format!("cannot read {}: {e}", src.display())))?;
        let from = entry.path();
        let to = dst.join(entry.file_name());
        let ft = entry.file_type().map_err(|e| Error::io(format!("cannot stat {}: {e}", from.display())))?;
        if ft.is_symlink() {
            let target =
                fs::read_link(&from).map_err(|e| Error::io(format!("cannot read link {}: {e}", from.display())))?;
            std::os::unix::fs::symlink(&target, &to)
                .map_err(|e| Error::io(format!("cannot link {}: {e}", to.display())))?;
        } else if ft.is_dir() {
            fs::create_dir_all(&to).map_err(|e| Error::io(format!("cannot create {}: {e}", to.display())))?;
            copy_tree(&from, &to)?;
        } else {
            fs::copy(&from, &to).map_err(|e| Error::io(format!("cannot copy {}: {e}", from.display())))?;
        }
    }
    Ok(())
}

/// Writes the recovery settings (and `archive_mode = off` when asked).
pub fn write_recovery(dir: &Path, major: u32, opts: &RestoreOptions) -> Result<()> {
    let settings = RecoverySettings {
        restore_command: opts.restore_command.clone(),
        target: opts.target.clone(),
        inclusive: opts.inclusive,
        timeline: opts.timeline.unwrap_or(TimelineChoice::Latest).setting(),
        action: opts.action.clone(),
    };
    let auto = dir.join("postgresql.auto.conf");
    let old = fs::read_to_string(&auto).unwrap_or_default();
    let mut changes: Vec<(&str, Option<String>)> = Vec::new();
    if major >= 12 {
        changes.extend(RECOVERY_PARAMS.iter().map(|p| (*p, None)));
        changes.extend(settings.pairs().into_iter().map(|(k, v)| (k, Some(v))));
    }
    if opts.archive_off {
        changes.push(("archive_mode", Some("off".into())));
    }
    if let Some(p) = opts.port {
        changes.push(("port", Some(p.to_string())));
    }
    let new = edit_auto_conf(&old, &changes);
    let write = |p: &Path, text: &str| -> Result<()> {
        let tmp = p.with_extension("dbbackup.tmp");
        let mut f = File::create(&tmp).map_err(|e| Error::io(format!("cannot write {}: {e}", tmp.display())))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(format!("cannot write {}: {e}", tmp.display())))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(format!("{}: {e}", tmp.display())))?;
        fs::rename(&tmp, p).map_err(|e| Error::io(format!("cannot write {}: {e}", p.display())))
    };
    write(&auto, &new)?;
    let _ = fs::remove_file(dir.join("standby.signal"));
    if major >= 12 {
        write(&dir.join("recovery.signal"), "")?;
    } else {
        write(&dir.join("recovery.conf"), &settings.render())?;
    }
    // The renames above are durable only once the directory is.
    crate::storage::sync_dir(dir).map_err(|e| Error::io(format!("cannot fsync {}: {e}", dir.display())))
}

/// Where pg_ctl of `major` is.
pub fn find_pg_ctl(major: u32, hint: Option<&str>) -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::var("DBBACKUP_PG_BIN") {
        candidates.push(PathBuf::from(d).join("pg_ctl"));
    }
    if let Some(h) = hint {
        candidates.push(PathBuf::from(h).join("pg_ctl"));
    }
    candidates.push(PathBuf::from(format!("/usr/lib/postgresql/{major}/bin/pg_ctl")));
    candidates.push(PathBuf::from(format!("/usr/pgsql-{major}/bin/pg_ctl")));
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("pg_ctl")));
    }
    for c in &candidates {
        if !c.is_file() {
            continue;
        }
        let out = std::process::Command::new(c).arg("--version").output();
        let ok = out.is_ok_and(|o| {
            let v = String::from_utf8_lossy(&o.stdout).to_string();
            v.split_whitespace().last().and_then(|v| v.split('.').next()).and_then(|m| m.parse::<u32>().ok())
                == Some(major)
        });
        if ok {
            return Ok(c.clone());
        }
    }
    Err(Error::not_found(format!(
        "cannot find pg_ctl of PostgreSQL {major}: set DBBACKUP_PG_BIN to its bin directory (the restored files are in place; start the server yourself with pg_ctl -D <dir> start)"
    )))
}

/// Whether a server already listens on `port` (TCP, or a socket lock in one
/// of `socket_dirs`).
pub fn port_in_use(port: u16, socket_dirs: &[String]) -> bool {
    socket_dirs.iter().any(|d| Path::new(d).join(format!(".s.PGSQL.{port}.lock")).exists())
        || std::net::TcpListener::bind(("127.0.0.1", port)).is_err()
}

/// The socket directories and port that configuration files (in the
/// order the server reads them) set.
fn socket_settings(texts: &[String]) -> (Vec<String>, u16) {
    let mut dirs = vec!["/var/run/postgresql".to_string(), "/tmp".to_string()];
    let mut port = 5432;
    for text in texts {
        if let Some(v) = read_conf_value(text, "unix_socket_directories") {
            dirs = v.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
        }
        if let Some(p) = read_conf_value(text, "port").and_then(|p| p.parse().ok()) {
            port = p;
        }
    }
    (dirs, port)
}

const CONF_FILES: [&str; 2] = ["postgresql.conf", "postgresql.auto.conf"];

/// The socket directories and port a data directory's configuration uses.
pub fn configured_socket(dir: &Path) -> (Vec<String>, u16) {
    let texts: Vec<String> = CONF_FILES.iter().filter_map(|f| fs::read_to_string(dir.join(f)).ok()).collect();
    socket_settings(&texts)
}

/// The socket directories and port the restored server will use, read from
/// the backup before anything is written (a tar source: the defaults).
pub fn planned_socket(repo: &Repository, plan: &RestorePlan) -> Result<(Vec<String>, u16)> {
    match &plan.source {
        Source::Repo(m) => {
            let mut texts = Vec::new();
            let chain = Chain::load(repo, (**m).clone())?;
            for f in CONF_FILES {
                if let Some(entry) = m.files.iter().find(|e| e.path == f) {
                    let mut buf = Vec::new();
                    chain.read_file(repo, entry, &mut buf)?;
                    texts.push(String::from_utf8_lossy(&buf).into_owned());
                }
            }
            Ok(socket_settings(&texts))
        }
        Source::Path { path, .. } => Ok(configured_socket(path)),
    }
}

/// Where the last archived segment on the way to `timeline` starts (for
/// `--monitor` of an end-of-archive recovery whose files are already in
/// place): `None` when the archive holds none.
pub fn archive_end(repo: &Repository, timeline: TimelineChoice, backup_timeline: TimelineId) -> Result<Option<Lsn>> {
    let cat = Catalog::scan(repo)?;
    let (tls, histories) = timelines(repo, &cat)?;
    let Some(size) = repo.segment_size() else { return Ok(None) };
    let target = match timeline {
        TimelineChoice::Latest => tls.iter().map(|t| t.timeline).max().unwrap_or(backup_timeline),
        TimelineChoice::Current => backup_timeline,
        TimelineChoice::Id(n) => TimelineId(n),
    };
    let legs = path_to(target, &histories)?;
    let last = cat
        .objects
        .iter()
        .filter(|o| o.wal.kind() == WalKind::Segment)
        .filter_map(|o| o.wal.segment_no(size).filter(|q| segment_owner(&legs, size, *q) == o.wal.timeline()))
        .max();
    Ok(last.map(|q| size.segment_start(q)))
}

/// The timeline a data directory's `backup_label` starts on.
pub fn label_timeline(dir: &Path) -> Option<TimelineId> {
    parse_backup_label(&fs::read_to_string(dir.join("backup_label")).ok()?).map(|(_, t)| t)
}

/// Starts the restored server without waiting (recovery may take long).
pub fn start(pg_ctl: &Path, dir: &Path) -> Result<PathBuf> {
    let log = dir.join("restore.log");
    // A log of an earlier recovery (carried in by a backup of a restored
    // cluster, or a --skip-extraction rerun) must not be read as this one's.
    if log.exists() {
        let old = dir.join("restore.log.old");
        fs::rename(&log, &old).map_err(|e| Error::io(format!("cannot move the old {} aside: {e}", log.display())))?;
    }
    crate::pg::run_pg_ctl(pg_ctl, "start", dir, &["-W"], &log)?;
    // `pg_ctl start -W` returns before the postmaster runs: make sure one
    // did start (its shell can fail without pg_ctl noticing).
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if dir.join("postmaster.pid").exists() || log.exists() {
            return Ok(log);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(Error::server(format!(
        "PostgreSQL did not start in {} (no postmaster.pid and no {} after 10 s): start it yourself with `{} start -D {}` to see why",
        dir.display(),
        log.display(),
        pg_ctl.display(),
        dir.display()
    )))
}

/// Where recovery ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoveryOutcome {
    /// `promoted`, `paused`, `shut down`, `failed` or `running`.
    pub state: String,
    pub target_reached: bool,
    pub timeline: Option<u32>,
    pub lsn: Option<String>,
    pub time: Option<String>,
    /// PostgreSQL's own words: the "recovery stopping" line or the error.
    pub detail: Option<String>,
}

fn log_lines(log: &Path) -> Vec<String> {
    fs::read_to_string(log).unwrap_or_default().lines().map(str::to_string).collect()
}

fn find_line<'a>(lines: &'a [String], needles: &[&str]) -> Option<&'a String> {
    lines.iter().rev().find(|l| needles.iter().any(|n| l.contains(n)))
}

/// Errors that mean recovery failed, not the refusals our own probing
/// connections get while the server starts or stops.
fn fatal_line(lines: &[String]) -> Option<String> {
    const NOISE: &[&str] = &[
        "the database system is starting up",
        "the database system is not yet accepting connections",
        "the database system is shutting down",
        "terminating connection",
        "the database system is in recovery mode",
    ];
    lines
        .iter()
        .rev()
        .find(|l| (l.contains("FATAL:") || l.contains("PANIC:")) && !NOISE.iter().any(|n| l.contains(n)))
        .cloned()
}

/// The text after `needle` on the newest log line holding it.
fn after<'a>(lines: &'a [String], needle: &str) -> Option<&'a str> {
    let l = find_line(lines, &[needle])?;
    Some(l[l.find(needle)? + needle.len()..].trim())
}

/// Where replay got to, from the server log, for a server that is gone:
/// (LSN, time of the last replayed transaction, last WAL file restored).
fn replay_end_from_log(lines: &[String]) -> (Option<String>, Option<String>, Option<String>) {
    let lsn = after(lines, "redo done at ").and_then(|r| r.split_whitespace().next()).map(str::to_string);
    let time = after(lines, "last completed transaction was at log time ").map(str::to_string);
    let file = after(lines, "restored log file \"").and_then(|r| r.split('"').next()).map(str::to_string);
    (lsn, time, file)
}

/// Follows recovery until it ends (promoted, paused at the target, shut
/// down) or fails. `archive_end` (end-of-archive targets) is where the last
/// archived segment on the way starts: promoting before it means a segment
/// was missing. `timeout` bounds the whole wait.
pub fn monitor(
    dir: &Path,
    log: &Path,
    target: &Target,
    archive_end: Option<Lsn>,
    timeout: Option<Duration>,
) -> Result<RecoveryOutcome> {
    let started = Instant::now();
    let stop_line = |lines: &[String]| find_line(lines, &["recovery stopping", "recovery has paused"]).cloned();
    loop {
        let lines = log_lines(log);
        let pm = crate::pitr::read_postmaster_pid(dir);
        if pm.is_none() && started.elapsed() > Duration::from_secs(2) {
            // The server is gone: shut down at the target, or failed.
            let fatal = fatal_line(&lines);
            let stopped = stop_line(&lines);
            let shut = find_line(&lines, &["database system is shut down"]).is_some();
            let reached = stopped.is_some() && fatal.is_none();
            let (lsn, time, file) = replay_end_from_log(&lines);
            // restore_command's own words say why it stopped recovery.
            let cause = find_line(&lines, &["dbbackup: "]).map(|l| l[l.find("dbbackup: ").unwrap_or(0)..].to_string());
            let detail = match (fatal, file) {
                (Some(f), Some(file)) => Some(format!("{f} (the last WAL file restored was {file})")),
                (f, _) => f.or(stopped),
            }
            .map(|d| match &cause {
                Some(c) if !reached => format!("{d}; {c}"),
                _ => d,
            });
            return Ok(RecoveryOutcome {
                state: if reached && shut { "shut down".into() } else { "failed".into() },
                target_reached: reached,
                timeline: None,
                lsn,
                time,
                detail,
            });
        }
        if let Some(pm) = &pm {
            if let Some(mut out) = probe(pm, &lines, target)? {
                // An end-of-archive recovery that promoted before the last
                // archived segment stopped early: a segment was missing or
                // could not be read.
                let early = archive_end.zip(out.lsn.as_deref().and_then(|l| l.parse::<Lsn>().ok()));
                if let Some((end, at)) = early.filter(|(end, at)| out.state == "promoted" && at < end) {
                    out.target_reached = false;
                    let (_, _, file) = replay_end_from_log(&lines);
                    out.detail = Some(format!(
                        "recovery ended at {at}, before the last archived segment (which starts at {end}): a WAL file was missing or unreadable{}",
                        file.map(|f| format!("; the last one restored was {f}")).unwrap_or_default()
                    ));
                }
                return Ok(out);
            }
        }
        if timeout.is_some_and(|t| started.elapsed() > t) {
            return Ok(RecoveryOutcome {
                state: "running".into(),
                target_reached: false,
                timeline: None,
                lsn: None,
                time: None,
                detail: Some("still recovering when the wait ended".into()),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// One look at the running server: `Some` when recovery is over.
fn probe(pm: &crate::pitr::Postmaster, lines: &[String], target: &Target) -> Result<Option<RecoveryOutcome>> {
    let conn = crate::pg::ConnOptions {
        host: pm.socket_dir.clone(),
        port: pm.port,
        user: None,
        dbname: Some("postgres".into()),
        password: None,
        passfile: None,
        connect_timeout: Some(Duration::from_secs(2)),
    };
    // Connect as the bootstrap superuser the data directory was created with.
    let Ok(mut client) =
        conn.connect().or_else(|_| crate::pg::ConnOptions { user: Some("postgres".into()), ..conn.clone() }.connect())
    else {
        return Ok(None);
    };
    let row = match client.query_one(
        "SELECT pg_is_in_recovery(), \
                CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()::text ELSE pg_current_wal_lsn()::text END, \
                to_char(pg_last_xact_replay_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US+00'), \
                CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END",
        &[],
    ) {
        Ok(r) => r,
        Err(_) => return Ok(None),
    };
    let in_recovery: bool = row.get(0);
    let lsn: Option<String> = row.get(1);
    let time: Option<String> = row.get(2);
    let tl_hex: Option<String> = row.get(3);
    let stopped = find_line(lines, &["recovery stopping"]).cloned();
    let no_target = matches!(target, Target::End);
    if !in_recovery {
        return Ok(Some(RecoveryOutcome {
            state: "promoted".into(),
            target_reached: no_target || stopped.is_some(),
            timeline: tl_hex.and_then(|h| u32::from_str_radix(&h, 16).ok()),
            lsn,
            time,
            detail: stopped
                .or_else(|| find_line(lines, &["archive recovery complete", "selected new timeline ID"]).cloned()),
        }));
    }
    let paused: bool = client
        .query_one(
            "SELECT CASE WHEN current_setting('server_version_num')::int >= 140000 \
                    THEN pg_get_wal_replay_pause_state() = 'paused' ELSE pg_is_wal_replay_paused() END",
            &[],
        )
        .map(|r| r.get(0))
        .unwrap_or(false);
    if paused && stopped.is_some() {
        let tl: Option<i32> =
            client.query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[]).ok().map(|r| r.get(0));
        return Ok(Some(RecoveryOutcome {
            state: "paused".into(),
            target_reached: true,
            timeline: tl.map(|t| t as u32),
            lsn,
            time,
            detail: stopped,
        }));
    }
    Ok(None)
}

/// The segment size of a repository, for callers that print plans.
pub fn segment_size(repo: &Repository) -> Option<SegmentSize> {
    repo.segment_size()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefetch_is_8_segments_within_128_mib() {
        let n = |mb: u32| default_prefetch(SegmentSize::new(mb << 20));
        assert_eq!([n(1), n(16), n(32), n(64), n(256), n(1024)], [8, 8, 4, 2, 1, 1]);
        assert_eq!(default_prefetch(None), 8);
    }
}
