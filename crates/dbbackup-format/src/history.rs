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
            if let Some(prev) = entries.last() {
                if tli <= prev.parent.0 || switch_lsn < prev.switch_lsn {
                    return Err(err("timelines or switch points go backwards".into()));
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

    /// The timeline that was current at `lsn` on the way to this one.
    pub fn timeline_at(&self, lsn: Lsn) -> TimelineId {
        self.entries.iter().find(|e| lsn < e.switch_lsn).map(|e| e.parent).unwrap_or(self.timeline)
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
    fn rejects_corrupt_files() {
        assert_eq!(History::parse(TimelineId(2), "# only a comment\n"), Err(HistoryError::Empty));
        let e = History::parse(TimelineId(2), "1\tnot-an-lsn\treason\n").unwrap_err();
        assert!(matches!(e, HistoryError::Line { line: 1, .. }), "{e}");
        assert!(History::parse(TimelineId(2), "2\t0/1\tx\n").is_err());
        assert!(History::parse(TimelineId(4), "2\t0/5\tx\n1\t0/6\ty\n").is_err());
        assert!(History::parse(TimelineId(2), "\u{0}\u{1}garbage").is_err());
    }
}
