//! What `repo info` reports, computed once here for every renderer: the
//! archived WAL in a few numbers (from names only) and the recoverable
//! range (from the oldest complete backup to the newest archived segment,
//! cut at a gap after the newest backup's start).

use dbbackup_format::manifest::Manifest;
use dbbackup_format::{WalFileName, WalKind};

use crate::error::Result;
use crate::repo::Repository;
use crate::wal::catalog::{Catalog, Gap};

/// What `repo info` says about archived WAL (from names only).
#[derive(Debug, serde::Serialize)]
pub struct WalSummary {
    pub objects: usize,
    pub segments: usize,
    pub history_files: usize,
    pub backup_files: usize,
    pub partial_files: usize,
    pub original_bytes: u64,
    pub stored_bytes: u64,
    pub compression_ratio: Option<f64>,
    pub timelines: Vec<u32>,
    pub oldest_segment: Option<String>,
    pub newest_segment: Option<String>,
    /// Where the newest archived segment ends, and when it was archived:
    /// the newest point a restore to the end of the archive reaches.
    pub newest_segment_end_lsn: Option<String>,
    pub newest_segment_archived_at: Option<String>,
    /// Runs of missing segments (as `wal verify` finds them, from names).
    pub gaps: Vec<Gap>,
    pub unknown_files: usize,
}

impl WalSummary {
    pub fn of(repo: &Repository) -> Result<WalSummary> {
        let cat = Catalog::scan(repo)?;
        let gaps = match repo.segment_size() {
            Some(size) => {
                // Unreadable history files (encrypted, no key): gaps
                // between archived segments are still found.
                let hist = crate::wal::catalog::timelines(repo, &cat).map(|(_, h)| h).unwrap_or_default();
                crate::wal::catalog::gaps(&cat, &hist, size)
            }
            None => Vec::new(),
        };
        Ok(WalSummary::from_catalog(repo, &cat, gaps))
    }

    /// The summary of a catalog already scanned, with its gaps.
    pub fn from_catalog(repo: &Repository, cat: &Catalog, gaps: Vec<Gap>) -> WalSummary {
        let seg = repo.segment_size().map(|s| u64::from(s.bytes())).unwrap_or(0);
        let count = |k: WalKind| cat.iter_kind(k).count();
        let (segments, partials) = (count(WalKind::Segment), count(WalKind::Partial));
        // Segment-sized objects have a known original size; the small
        // history and backup files are counted at their stored size.
        let original_bytes = (segments + partials) as u64 * seg
            + cat
                .objects
                .iter()
                .filter(|o| matches!(o.wal.kind(), WalKind::History | WalKind::Backup))
                .map(|o| o.stored.stored_size)
                .sum::<u64>();
        let stored_bytes = cat.objects.iter().map(|o| o.stored.stored_size).sum();
        let mut timelines: Vec<u32> = cat.objects.iter().map(|o| o.wal.timeline().0).collect();
        timelines.sort_unstable();
        timelines.dedup();
        let oldest_segment = cat.iter_kind(WalKind::Segment).next().map(|o| o.wal.to_string());
        WalSummary {
            objects: cat.objects.len(),
            segments,
            history_files: count(WalKind::History),
            backup_files: count(WalKind::Backup),
            partial_files: partials,
            original_bytes,
            stored_bytes,
            compression_ratio: (stored_bytes > 0)
                .then(|| (original_bytes as f64 / stored_bytes as f64 * 100.0).round() / 100.0),
            timelines,
            oldest_segment,
            newest_segment: cat.newest_segment().map(|o| o.wal.to_string()),
            newest_segment_end_lsn: cat
                .newest_segment()
                .zip(repo.segment_size())
                .and_then(|(o, size)| o.wal.segment_no(size).map(|n| size.segment_start(n + 1).to_string())),
            newest_segment_archived_at: cat
                .newest_segment()
                .and_then(|o| o.archived_at)
                .and_then(|t| jiff::Timestamp::try_from(t).ok())
                .map(|t| t.to_string()),
            gaps,
            unknown_files: cat.strays.len(),
        }
    }
}

/// The newest point a restore reaches.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewestPoint {
    pub segment: Option<String>,
    pub lsn: Option<String>,
    pub archived_at: Option<String>,
    /// Cut short by a gap (then `segment` is the first missing one).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub gap: bool,
}

/// From where to where the repository can restore.
#[derive(Debug, Clone)]
pub struct Recoverable {
    /// The oldest complete backup: its end is the oldest recoverable point.
    pub oldest: Option<Manifest>,
    pub newest: Option<NewestPoint>,
}

/// The recoverable range of `backups` (all of them, any status) with the
/// archive `wal`.
pub fn recoverable(repo: &Repository, wal: &WalSummary, backups: &[Manifest]) -> Recoverable {
    // Complete backups with their whole chain: what restore can use.
    let complete: Vec<&Manifest> = backups.iter().filter(|m| crate::backup::chain::restorable(backups, m)).collect();
    // A gap after the newest complete backup's start ends what is
    // recoverable from the backups (restore refuses to go through it).
    let size = repo.segment_size();
    let newest_start = complete.last().and_then(|m| m.start_wal.as_deref()).and_then(|w| WalFileName::parse(w).ok());
    let gap_after: Option<&Gap> = wal
        .gaps
        .iter()
        .filter_map(|g| {
            let first = WalFileName::parse(&g.first_missing).ok()?;
            let n = first.segment_no(size?)?;
            (n >= newest_start.as_ref()?.segment_no(size?)?).then_some((n, g))
        })
        .min_by_key(|(n, _)| *n)
        .map(|(_, g)| g);
    let newest = (!complete.is_empty()).then(|| match gap_after {
        Some(g) => NewestPoint {
            segment: Some(g.first_missing.clone()),
            lsn: WalFileName::parse(&g.first_missing)
                .ok()
                .zip(size)
                .and_then(|(w, s)| w.start_lsn(s))
                .map(|l| l.to_string()),
            archived_at: None,
            gap: true,
        },
        None => NewestPoint {
            segment: wal.newest_segment.clone(),
            lsn: wal.newest_segment_end_lsn.clone(),
            archived_at: wal.newest_segment_archived_at.clone(),
            gap: false,
        },
    });
    Recoverable { oldest: complete.first().map(|m| (*m).clone()), newest }
}
