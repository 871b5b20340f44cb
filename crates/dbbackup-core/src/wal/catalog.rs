//! What WAL the repository holds: every object, parsed from its name alone
//! (no object is opened), and the timeline tree from the history files.

use std::collections::BTreeMap;
use std::time::SystemTime;

use dbbackup_format::history::History;
use dbbackup_format::object::{wal_dir_for, ObjectName, WAL_DIR};
use dbbackup_format::{Lsn, SegmentSize, TimelineId, WalFileName, WalKind};

use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::wal::{decode_verified, StoredWal};

/// One archived object.
#[derive(Debug, Clone)]
pub struct WalObject {
    pub wal: WalFileName,
    pub stored: StoredWal,
    pub archived_at: Option<SystemTime>,
}

/// Everything under `wal/`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// Sorted by timeline, position, kind.
    pub objects: Vec<WalObject>,
    /// Repository-relative paths of files that are not WAL objects, or that
    /// sit in the wrong directory.
    pub strays: Vec<String>,
}

impl Catalog {
    /// Lists the repository's WAL. Cost: one directory listing per
    /// timeline and log id.
    pub fn scan(repo: &Repository) -> Result<Catalog> {
        let storage = repo.storage();
        let list = |dir: &str| {
            storage
                .list(dir)
                .map_err(|e| Error::io(format!("cannot list {dir} in repository {}: {e}", repo.location())))
        };
        let mut cat = Catalog::default();
        for dir in list(WAL_DIR)? {
            let dir_path = format!("{WAL_DIR}/{}", dir.name);
            if !dir.is_dir {
                cat.strays.push(dir_path);
                continue;
            }
            for e in list(&dir_path)? {
                let path = format!("{dir_path}/{}", e.name);
                let parsed = ObjectName::parse(&e.name).and_then(|o| o.wal_name().map(|w| (o, w)));
                match parsed {
                    Some((object, wal)) if !e.is_dir && wal_dir_for(&wal) == dir_path => {
                        cat.objects.push(WalObject {
                            wal,
                            stored: StoredWal { path, object, stored_size: e.size },
                            archived_at: e.modified,
                        });
                    }
                    _ => cat.strays.push(path),
                }
            }
        }
        cat.objects.sort_by_key(|o| o.wal.sort_key());
        Ok(cat)
    }

    /// The objects of one kind on one timeline (or all timelines).
    pub fn iter_kind(&self, kind: WalKind) -> impl Iterator<Item = &WalObject> {
        self.objects.iter().filter(move |o| o.wal.kind() == kind)
    }

    /// The newest complete segment, by timeline then position.
    pub fn newest_segment(&self) -> Option<&WalObject> {
        self.iter_kind(WalKind::Segment).last()
    }
}

/// A timeline as the repository knows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TimelineInfo {
    pub timeline: TimelineId,
    pub parent: Option<TimelineId>,
    pub switch_lsn: Option<Lsn>,
    pub reason: Option<String>,
    pub first_segment: Option<String>,
    pub last_segment: Option<String>,
    pub segments: u64,
    pub has_partial: bool,
}

/// Reads and parses a history object (small; decoded and verified).
pub fn read_history(repo: &Repository, obj: &WalObject) -> Result<History> {
    let mut buf = Vec::new();
    decode_verified(repo, &obj.stored, &mut buf)?;
    let text = String::from_utf8(buf)
        .map_err(|_| Error::integrity(format!("{}: history file is not text", obj.stored.path)))?;
    History::parse(obj.wal.timeline(), &text)
        .map_err(|e| Error::integrity(format!("history file {} ({}) is corrupt: {e}", obj.wal, obj.stored.path)))
}

/// The timeline tree: every timeline with segments or a history file.
pub fn timelines(repo: &Repository, cat: &Catalog) -> Result<(Vec<TimelineInfo>, BTreeMap<TimelineId, History>)> {
    let mut histories = BTreeMap::new();
    for obj in cat.iter_kind(WalKind::History) {
        histories.insert(obj.wal.timeline(), read_history(repo, obj)?);
    }
    let mut map: BTreeMap<TimelineId, TimelineInfo> = BTreeMap::new();
    let blank = |t: TimelineId| TimelineInfo {
        timeline: t,
        parent: None,
        switch_lsn: None,
        reason: None,
        first_segment: None,
        last_segment: None,
        segments: 0,
        has_partial: false,
    };
    for (t, h) in &histories {
        let p = h.parent();
        let info = map.entry(*t).or_insert_with(|| blank(*t));
        info.parent = Some(p.parent);
        info.switch_lsn = Some(p.switch_lsn);
        info.reason = Some(p.reason.clone());
    }
    for obj in &cat.objects {
        let t = obj.wal.timeline();
        match obj.wal.kind() {
            WalKind::Segment => {
                let info = map.entry(t).or_insert_with(|| blank(t));
                info.first_segment.get_or_insert_with(|| obj.wal.to_string());
                info.last_segment = Some(obj.wal.to_string());
                info.segments += 1;
            }
            WalKind::Partial => map.entry(t).or_insert_with(|| blank(t)).has_partial = true,
            _ => {}
        }
    }
    Ok((map.into_values().collect(), histories))
}

/// A timeline whose parent went on archiving past the fork after the
/// child's history file was archived: two live histories (a restored copy
/// archiving into the repository of the cluster it came from), not a
/// failover, where the parent stops before the child begins.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LiveFork {
    pub parent: TimelineId,
    pub child: TimelineId,
    pub switch_lsn: Lsn,
    /// When the child's history file was archived.
    pub child_born: Option<String>,
    /// The newest segment of each timeline, and when it was archived.
    pub parent_last: Option<(String, Option<String>)>,
    pub child_last: Option<(String, Option<String>)>,
}

impl LiveFork {
    /// One clause for messages: the fork point and the newest segment of each side.
    pub fn describe(&self) -> String {
        let last = |l: &Option<(String, Option<String>)>| match l {
            Some((name, Some(at))) => format!("{name}, archived at {at}"),
            Some((name, None)) => name.clone(),
            None => "none".into(),
        };
        format!(
            "timeline {} branched off timeline {} at {} (its history file archived at {}), and timeline {} went on archiving after that: timeline {}'s newest segment is {}; timeline {}'s newest segment is {}",
            self.child,
            self.parent,
            self.switch_lsn,
            self.child_born.as_deref().unwrap_or("?"),
            self.parent,
            self.parent,
            last(&self.parent_last),
            self.child,
            last(&self.child_last)
        )
    }
}

fn time_text(t: Option<SystemTime>) -> Option<String> {
    let t = jiff::Timestamp::try_from(t?).ok()?;
    Some(t.round(jiff::Unit::Second).unwrap_or(t).to_string())
}

/// Every fork whose parent archived a segment past the fork's segment after
/// the child's history file was archived.
pub fn live_forks(cat: &Catalog, histories: &BTreeMap<TimelineId, History>, size: SegmentSize) -> Vec<LiveFork> {
    let newest = |t: TimelineId| {
        cat.iter_kind(WalKind::Segment)
            .filter(|o| o.wal.timeline() == t)
            .last()
            .map(|o| (o.wal.to_string(), time_text(o.archived_at)))
    };
    let mut out = Vec::new();
    for (&child, h) in histories {
        let fork = h.parent();
        let born = cat.iter_kind(WalKind::History).find(|o| o.wal.timeline() == child).and_then(|o| o.archived_at);
        let Some(born) = born else { continue };
        let fork_seg = size.segment_of(fork.switch_lsn);
        // The segment holding the fork point is excluded: an old primary
        // finishing it (or the new one archiving it as .partial) is part
        // of an ordinary failover. Not when the fork is at its very start:
        // then all of it was written after the fork.
        let at_start = size.segment_start(fork_seg) == fork.switch_lsn;
        let went_on = cat.iter_kind(WalKind::Segment).any(|o| {
            o.wal.timeline() == fork.parent
                && o.wal.segment_no(size).is_some_and(|n| n > fork_seg || (at_start && n == fork_seg))
                && o.archived_at.is_some_and(|t| t > born)
        });
        if went_on {
            out.push(LiveFork {
                parent: fork.parent,
                child,
                switch_lsn: fork.switch_lsn,
                child_born: time_text(Some(born)),
                parent_last: newest(fork.parent),
                child_last: newest(child),
            });
        }
    }
    out
}

/// A run of missing segments on one timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Gap {
    pub timeline: TimelineId,
    pub first_missing: String,
    pub last_missing: String,
    pub count: u64,
}

/// Missing segments: on each timeline, between the first expected segment
/// and the last archived one. For a child timeline the first expected is
/// the one holding its switch point, unless retention removed everything
/// before a later position (no timeline holds a segment that low); else the
/// first archived. A partial segment counts as present for its position.
pub fn gaps(cat: &Catalog, histories: &BTreeMap<TimelineId, History>, size: SegmentSize) -> Vec<Gap> {
    let mut present: BTreeMap<TimelineId, Vec<u64>> = BTreeMap::new();
    for obj in &cat.objects {
        if matches!(obj.wal.kind(), WalKind::Segment | WalKind::Partial) {
            if let Some(n) = obj.wal.segment_no(size) {
                present.entry(obj.wal.timeline()).or_default().push(n);
            }
        }
    }
    let lowest = present.values().flatten().min().copied();
    let mut out = Vec::new();
    for (t, mut segs) in present {
        segs.sort_unstable();
        segs.dedup();
        let first_expected = histories.get(&t).map(|h| size.segment_of(h.parent().switch_lsn).max(lowest.unwrap_or(0)));
        let start = match first_expected {
            Some(f) if f < segs[0] => f,
            _ => segs[0],
        };
        let mut expect = start;
        for &n in &segs {
            if n > expect {
                out.push(Gap {
                    timeline: t,
                    first_missing: WalFileName::segment(t, expect, size).to_string(),
                    last_missing: WalFileName::segment(t, n - 1, size).to_string(),
                    count: n - expect,
                });
            }
            expect = expect.max(n + 1);
        }
    }
    out
}

/// A catalog of the segments `(timeline, segment number)`, for tests.
#[cfg(test)]
pub(crate) fn catalog_of(segments: &[(u32, u64)], size: SegmentSize) -> Catalog {
    let objects = segments
        .iter()
        .map(|&(tli, n)| {
            let wal = WalFileName::segment(TimelineId(tli), n, size);
            let object = ObjectName {
                original: wal.to_string(),
                checksum: "0".repeat(64),
                codec: dbbackup_format::Codec::Zstd,
                encrypted: false,
            };
            WalObject {
                stored: StoredWal { path: format!("wal/{object}"), object, stored_size: 1 },
                wal,
                archived_at: None,
            }
        })
        .collect();
    Catalog { objects, strays: Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cat(segments: &[(u32, u64)], size: SegmentSize) -> Catalog {
        catalog_of(segments, size)
    }

    /// A catalog with archive times: `(timeline, segment, seconds)`, plus
    /// history files `(timeline, seconds)`.
    fn timed(segments: &[(u32, u64, u64)], histories: &[(u32, u64)], size: SegmentSize) -> Catalog {
        let at = |s: u64| Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + s));
        let mut c = catalog_of(&segments.iter().map(|&(t, n, _)| (t, n)).collect::<Vec<_>>(), size);
        for (o, &(_, _, s)) in c.objects.iter_mut().zip(segments) {
            o.archived_at = at(s);
        }
        for &(t, s) in histories {
            let wal = WalFileName::history(TimelineId(t));
            let object = ObjectName {
                original: wal.to_string(),
                checksum: "0".repeat(64),
                codec: dbbackup_format::Codec::Zstd,
                encrypted: false,
            };
            c.objects.push(WalObject {
                stored: StoredWal { path: format!("wal/{object}"), object, stored_size: 1 },
                wal,
                archived_at: at(s),
            });
        }
        c.objects.sort_by_key(|o| o.wal.sort_key());
        c
    }

    #[test]
    fn a_parent_archiving_past_the_fork_after_the_child_was_born_is_a_live_fork() {
        let size = SegmentSize::new(16 << 20).unwrap();
        let histories = BTreeMap::from([(TimelineId(2), History::parse(TimelineId(2), "1\t0/15000100\tx\n").unwrap())]);
        // A failover: timeline 1 stopped (its last segments archived before
        // the promotion, the fork's own segment finished just after).
        let failover = timed(&[(1, 0x14, 10), (1, 0x15, 21), (1, 0x16, 15), (2, 0x15, 30)], &[(2, 20)], size);
        assert!(live_forks(&failover, &histories, size).is_empty());
        // A restored copy: timeline 1 goes on archiving past the fork after
        // timeline 2's history file arrived.
        let copy = timed(&[(1, 0x15, 10), (1, 0x16, 25), (1, 0x17, 40), (2, 0x15, 30)], &[(2, 20)], size);
        let forks = live_forks(&copy, &histories, size);
        assert_eq!(forks.len(), 1);
        let f = &forks[0];
        assert_eq!((f.parent, f.child), (TimelineId(1), TimelineId(2)));
        assert_eq!(f.parent_last.as_ref().unwrap().0, "000000010000000000000017");
        assert_eq!(f.child_last.as_ref().unwrap().0, "000000020000000000000015");
        let text = f.describe();
        assert!(text.contains("timeline 2 branched off timeline 1 at 0/15000100"), "{text}");
        assert!(text.contains("000000010000000000000017, archived at 2023-11-14T22:14:00Z"), "{text}");
    }

    #[test]
    fn a_child_timeline_is_expected_from_its_switch_point_unless_retention_removed_it() {
        let size = SegmentSize::new(16 << 20).unwrap();
        // Timeline 2 branched inside segment 0x15.
        let hist = History::parse(TimelineId(2), "1\t0/15000100\tx\n").unwrap();
        let histories = BTreeMap::from([(TimelineId(2), hist)]);
        // Its switch segment is missing while older WAL is there: a gap.
        let g = gaps(&cat(&[(1, 0x14), (1, 0x15), (2, 0x16), (2, 0x17)], size), &histories, size);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].first_missing, "000000020000000000000015");
        // Retention removed everything below 0x17 on every timeline: no gap.
        let g = gaps(&cat(&[(1, 0x17), (2, 0x17), (2, 0x18)], size), &histories, size);
        assert!(g.is_empty(), "{g:?}");
        // A hole in the middle is a gap either way.
        let g = gaps(&cat(&[(2, 0x17), (2, 0x19)], size), &histories, size);
        assert_eq!(g[0].first_missing, "000000020000000000000018");
    }
}
