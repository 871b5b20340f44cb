//! Timeline history files (`<TLI>.history`).
//!
//! Each line is `<parent timeline>\t<switch LSN>\t<reason>`; the file of
//! timeline N lists every ancestor in order, the last line being N's parent
//! and the point where N branched off. Lines starting with `#` and blank
//! lines are ignored, as PostgreSQL does.

use crate::lsn::Lsn;
use crate::wal::TimelineId;

/// One ancestor of a timeline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HistoryEntry {
    pub parent: TimelineId,
    /// Where `parent` ended and its child began.
    pub switch_lsn: Lsn,
    pub reason: String,
}

/// A parsed history file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct History {
    pub timeline: TimelineId,
    /// Ancestors, oldest first.
    pub entries: Vec<HistoryEntry>,
}

/// Why a history file cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    #[error("line {line}: {message}")]
    Line { line: usize, message: String },
    #[error("it lists no parent timeline")]
    Empty,
}

impl History {
    pub fn parse(timeline: TimelineId, text: &str) -> Result<History, HistoryError> {
        let mut entries: Vec<HistoryEntry> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| HistoryError::Line { line: i + 1, message };
            let mut fields = line.splitn(3, ['\t', ' ']);
            let tli = fields.next().unwrap_or("");
            let tli: u32 = tli.parse().map_err(|_| err(format!("{tli:?} is not a timeline ID")))?;
            let lsn_text = fields.next().ok_or_else(|| err("missing switch LSN".into()))?.trim();
            let switch_lsn: Lsn = lsn_text.parse().map_err(|e| err(format!("{e}")))?;
            let reason = fields.next().unwrap_or("").trim().to_string();
            if tli == 0 || tli >= timeline.0 {
                return Err(err(format!("parent timeline {tli} is not older than timeline {}", timeline.0)));
            }
            // Timeline IDs increase, as PostgreSQL requires. Switch points
            // need not: recovering timeline 2 to a point before its own
            // branch point and promoting writes a timeline 3 that branched
            // from 2 at an LSN below where 2 branched from 1.
            if let Some(prev) = entries.last() {
                if tli <= prev.parent.0 {
                    return Err(err(format!("timeline {tli} does not follow timeline {}", prev.parent.0)));
                }
            }
            entries.push(HistoryEntry { parent: TimelineId(tli), switch_lsn, reason });
        }
        if entries.is_empty() {
            return Err(HistoryError::Empty);
        }
        Ok(History { timeline, entries })
    }

    /// The direct parent and where this timeline branched from it.
    pub fn parent(&self) -> &HistoryEntry {
        self.entries.last().expect("parsed histories are not empty")
    }

    /// The timeline that holds `lsn` on the way to this one, as PostgreSQL's
    /// `tliOfPointInHistory` decides: the newest timeline whose range
    /// `[branch point, next branch point)` contains it (a range can be empty
    /// when switch points go backwards).
    pub fn timeline_at(&self, lsn: Lsn) -> TimelineId {
        if lsn >= self.parent().switch_lsn {
            return self.timeline;
        }
        for (i, e) in self.entries.iter().enumerate().rev() {
            let begin = if i == 0 { Lsn(0) } else { self.entries[i - 1].switch_lsn };
            if lsn >= begin && lsn < e.switch_lsn {
                return e.parent;
            }
        }
        self.entries[0].parent
    }
}

/// The timeline whose file recovery asks for first when it needs segment
/// `segno` on its way to `target` (whose history is `history`; `None` for
/// timeline 1 or a timeline followed alone), as PostgreSQL's
/// `XLogFileReadAnyTLI` decides: the newest timeline on the way whose first
/// segment (the one holding its branch point) is at or before `segno`. The
/// segment holding a branch point is read from the child, which copied
/// the parent's WAL up to that point.
pub fn timeline_of_segment(
    target: TimelineId,
    history: Option<&History>,
    segno: u64,
    size: crate::wal::SegmentSize,
) -> TimelineId {
    let Some(h) = history.filter(|h| h.timeline == target) else { return target };
    if size.segment_of(h.parent().switch_lsn) <= segno {
        return target;
    }
    // Entry i: timeline entries[i].parent began at entries[i - 1].switch_lsn
    // (the first at 0). Newest first.
    for i in (1..h.entries.len()).rev() {
        if size.segment_of(h.entries[i - 1].switch_lsn) <= segno {
            return h.entries[i].parent;
        }
    }
    h.entries[0].parent
}

/// Checks that the content of a history file PostgreSQL hands over for
/// archiving is what its name says: a timeline history file that parses
/// (for timeline 2 or later: timeline 1 has none), or a backup history
/// file whose `START WAL LOCATION` matches the name's position. Archived
/// objects are immutable, so junk stored under such a name would block the
/// real file forever.
pub fn check_content(
    name: &crate::wal::WalFileName,
    content: &[u8],
    size: Option<crate::wal::SegmentSize>,
) -> Result<(), String> {
    use crate::wal::WalKind;
    let text = std::str::from_utf8(content).map_err(|_| "its content is not text".to_string())?;
    match name.kind() {
        WalKind::History => {
            if name.timeline().0 < 2 {
                return Err("timeline 1 has no history file".into());
            }
            History::parse(name.timeline(), text).map(|_| ()).map_err(|e| format!("not a timeline history file: {e}"))
        }
        WalKind::Backup => {
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("START WAL LOCATION: "))
                .ok_or("not a backup history file: no START WAL LOCATION line")?;
            let lsn: Lsn = line
                .split_whitespace()
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|e| format!("not a backup history file: START WAL LOCATION: {e}"))?;
            match size.and_then(|s| name.start_lsn(s)) {
                Some(e) if e != lsn => {
                    Err(format!("its START WAL LOCATION {lsn} is not the position its name says ({e})"))
                }
                Some(_) => Ok(()),
                // Segment size unknown: every size is a power of two of at
                // least 1 MiB, so the offsets agree modulo 1 MiB at least.
                None => {
                    let name_offset =
                        name.start_lsn(crate::wal::SegmentSize::new(1 << 20).expect("1 MiB")).map(|l| l.0 % (1 << 20));
                    if name_offset.is_some_and(|o| o != lsn.0 % (1 << 20)) {
                        Err(format!("its START WAL LOCATION {lsn} does not match the offset in its name"))
                    } else {
                        Ok(())
                    }
                }
            }
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // As PostgreSQL 15 writes it after two promotions.
    const TL3: &str = "1\t0/3000160\tno recovery target specified\n\n2\t0/5000000\tat restore point \"before_drop\"\n";

    #[test]
    fn parses_real_format() {
        let h = History::parse(TimelineId(3), TL3).unwrap();
        assert_eq!(h.entries.len(), 2);
        assert_eq!(h.parent().parent, TimelineId(2));
        assert_eq!(h.parent().switch_lsn, "0/5000000".parse().unwrap());
        assert_eq!(h.parent().reason, "at restore point \"before_drop\"");
        assert_eq!(h.timeline_at("0/1000000".parse().unwrap()), TimelineId(1));
        assert_eq!(h.timeline_at("0/3000160".parse().unwrap()), TimelineId(2));
        assert_eq!(h.timeline_at("0/6000000".parse().unwrap()), TimelineId(3));
    }

    #[test]
    fn switch_points_may_go_backwards() {
        // PostgreSQL 15 after restoring timeline 2 to a point before its
        // own branch point and promoting.
        let text = "1\t0/9945138\tbefore transaction 764\n\n2\t0/9945080\tbefore transaction 750\n";
        let h = History::parse(TimelineId(3), text).unwrap();
        assert_eq!(h.parent().switch_lsn, "0/9945080".parse().unwrap());
        assert_eq!(h.timeline_at("0/9000000".parse().unwrap()), TimelineId(1));
        assert_eq!(h.timeline_at("0/9945100".parse().unwrap()), TimelineId(3));
        assert_eq!(h.timeline_at("0/9945200".parse().unwrap()), TimelineId(3));
    }

    #[test]
    fn segments_map_to_the_timeline_recovery_reads_them_from() {
        use crate::wal::SegmentSize;
        let size = SegmentSize::new(16 << 20).unwrap();
        let h = History::parse(TimelineId(3), TL3).unwrap();
        let tl = |segno| timeline_of_segment(TimelineId(3), Some(&h), segno, size).0;
        // Timeline 2 branched in segment 3 (0/3000160), timeline 3 at the
        // start of segment 5: the branch segment comes from the child.
        assert_eq!([tl(1), tl(2), tl(3), tl(4), tl(5), tl(9)], [1, 1, 2, 2, 3, 3]);
        // No history: the target alone.
        assert_eq!(timeline_of_segment(TimelineId(1), None, 7, size).0, 1);
        assert_eq!(timeline_of_segment(TimelineId(4), Some(&h), 1, size).0, 4);
        // Switch points going backwards within one segment: the newest wins,
        // as PostgreSQL tries the newest timeline first.
        let text = "1\t0/9945138\tbefore transaction 764\n\n2\t0/9945080\tbefore transaction 750\n";
        let h = History::parse(TimelineId(3), text).unwrap();
        let tl = |segno| timeline_of_segment(TimelineId(3), Some(&h), segno, size).0;
        assert_eq!([tl(8), tl(9), tl(10)], [1, 3, 3]);
    }

    #[test]
    fn archived_history_files_are_checked() {
        use crate::wal::{SegmentSize, WalFileName};
        let size = SegmentSize::new(16 << 20);
        let name = |n: &str| WalFileName::parse(n).unwrap();
        assert!(check_content(&name("00000003.history"), TL3.as_bytes(), size).is_ok());
        assert!(check_content(&name("00000003.history"), b"hello junk\n", size).is_err());
        assert!(check_content(&name("00000001.history"), TL3.as_bytes(), size).is_err());
        let label = "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\nSTOP WAL LOCATION: 0/6000100 (file 000000010000000000000006)\n";
        assert!(check_content(&name("000000010000000000000006.00000028.backup"), label.as_bytes(), size).is_ok());
        assert!(check_content(&name("000000010000000000000006.00000030.backup"), label.as_bytes(), size).is_err());
        assert!(check_content(&name("000000010000000000000006.00000028.backup"), b"hello", size).is_err());
        // Unbound repository: the offset is still checked.
        assert!(check_content(&name("000000010000000000000006.00000028.backup"), label.as_bytes(), None).is_ok());
        assert!(check_content(&name("000000010000000000000006.00000030.backup"), label.as_bytes(), None).is_err());
        assert!(check_content(&name("000000010000000000000006.00000028.backup"), &[0xff, 0xfe], size).is_err());
    }

    #[test]
    fn rejects_corrupt_files() {
        assert_eq!(History::parse(TimelineId(2), "# only a comment\n"), Err(HistoryError::Empty));
        let e = History::parse(TimelineId(2), "1\tnot-an-lsn\treason\n").unwrap_err();
        assert!(matches!(e, HistoryError::Line { line: 1, .. }), "{e}");
        assert!(History::parse(TimelineId(2), "2\t0/1\tx\n").is_err());
        assert!(History::parse(TimelineId(4), "2\t0/5\tx\n1\t0/6\ty\n").is_err());
        assert!(History::parse(TimelineId(2), "\u{0}\u{1}garbage").is_err());
    }
}
