//! WAL file names and segment arithmetic for any `wal_segment_size`.
//!
//! PostgreSQL names a segment `TTTTTTTTLLLLLLLLSSSSSSSS`: timeline, then the
//! segment number split into a "log id" and a segment within that log id.
//! How many segments one log id holds depends on the segment size
//! (`0x1_0000_0000 / size`), so nothing here assumes 16 MiB.

use std::fmt;

use crate::lsn::Lsn;

/// A timeline ID. Timeline 0 does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct TimelineId(pub u32);

impl fmt::Display for TimelineId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A WAL segment size: a power of two from 1 MiB to 1 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SegmentSize(u32);

/// Smallest and largest segment size PostgreSQL accepts.
pub const MIN_SEGMENT_SIZE: u32 = 1 << 20;
pub const MAX_SEGMENT_SIZE: u32 = 1 << 30;

impl SegmentSize {
    /// 16 MiB, PostgreSQL's default.
    pub const DEFAULT: SegmentSize = SegmentSize(16 << 20);

    pub fn new(bytes: u32) -> Option<SegmentSize> {
        (bytes.is_power_of_two() && (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&bytes))
            .then_some(SegmentSize(bytes))
    }

    pub fn bytes(self) -> u32 {
        self.0
    }

    /// Segments per log id (the middle 8 hex digits of a name).
    pub fn segments_per_log(self) -> u64 {
        0x1_0000_0000u64 / u64::from(self.0)
    }

    /// The segment number holding `lsn`.
    pub fn segment_of(self, lsn: Lsn) -> u64 {
        lsn.0 / u64::from(self.0)
    }

    /// The first LSN of segment `segno`.
    pub fn segment_start(self, segno: u64) -> Lsn {
        Lsn(segno * u64::from(self.0))
    }
}

/// What kind of file PostgreSQL handed us.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WalKind {
    /// A complete WAL segment.
    Segment,
    /// The last, incomplete segment of a timeline that a promotion ended.
    Partial,
    /// A backup history file (`<segment>.<offset>.backup`).
    Backup,
    /// A timeline history file (`<timeline>.history`).
    History,
}

impl fmt::Display for WalKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WalKind::Segment => "segment",
            WalKind::Partial => "partial",
            WalKind::Backup => "backup",
            WalKind::History => "history",
        })
    }
}

/// A parsed WAL archive file name of any kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WalFileName {
    kind: WalKind,
    timeline: TimelineId,
    log: u32,
    seg: u32,
    /// Offset of the backup start within its segment (backup files only).
    backup_offset: u32,
}

/// Why a string is not a WAL file name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a WAL file name: expected 24 upper-case hex digits (a segment), optionally followed by .partial or .XXXXXXXX.backup, or 8 hex digits followed by .history")]
pub struct WalNameError {
    pub name: String,
}

fn hex8(s: &str) -> Option<u32> {
    if s.len() == 8 && s.bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b)) {
        u32::from_str_radix(s, 16).ok()
    } else {
        None
    }
}

impl WalFileName {
    /// Parses any archivable file name. Hex digits must be upper case, as
    /// PostgreSQL writes them, so one file never has two spellings.
    pub fn parse(name: &str) -> Result<WalFileName, WalNameError> {
        let err = || WalNameError { name: name.to_string() };
        if let Some(tli) = name.strip_suffix(".history") {
            let tli = hex8(tli).ok_or_else(err)?;
            if tli == 0 {
                return Err(err());
            }
            return Ok(WalFileName {
                kind: WalKind::History,
                timeline: TimelineId(tli),
                log: 0,
                seg: 0,
                backup_offset: 0,
            });
        }
        let (base, kind, backup_offset) = if let Some(b) = name.strip_suffix(".partial") {
            (b, WalKind::Partial, 0)
        } else if let Some(b) = name.strip_suffix(".backup") {
            let (seg, off) = b.rsplit_once('.').ok_or_else(err)?;
            (seg, WalKind::Backup, hex8(off).ok_or_else(err)?)
        } else {
            (name, WalKind::Segment, 0)
        };
        if base.len() != 24 {
            return Err(err());
        }
        let tli = hex8(&base[0..8]).ok_or_else(err)?;
        let log = hex8(&base[8..16]).ok_or_else(err)?;
        let seg = hex8(&base[16..24]).ok_or_else(err)?;
        if tli == 0 {
            return Err(err());
        }
        Ok(WalFileName { kind, timeline: TimelineId(tli), log, seg, backup_offset })
    }

    /// The segment `segno` on `timeline`.
    pub fn segment(timeline: TimelineId, segno: u64, size: SegmentSize) -> WalFileName {
        let per = size.segments_per_log();
        WalFileName {
            kind: WalKind::Segment,
            timeline,
            log: (segno / per) as u32,
            seg: (segno % per) as u32,
            backup_offset: 0,
        }
    }

    /// The history file of `timeline`.
    pub fn history(timeline: TimelineId) -> WalFileName {
        WalFileName { kind: WalKind::History, timeline, log: 0, seg: 0, backup_offset: 0 }
    }

    pub fn kind(&self) -> WalKind {
        self.kind
    }

    pub fn timeline(&self) -> TimelineId {
        self.timeline
    }

    /// The segment number for `size`, or `None` for a history file or when
    /// the name's segment part is impossible for that size (a file name
    /// made for another segment size).
    pub fn segment_no(&self, size: SegmentSize) -> Option<u64> {
        if self.kind == WalKind::History || u64::from(self.seg) >= size.segments_per_log() {
            return None;
        }
        Some(u64::from(self.log) * size.segments_per_log() + u64::from(self.seg))
    }

    /// The first LSN the file covers (for a backup file: the backup's start).
    pub fn start_lsn(&self, size: SegmentSize) -> Option<Lsn> {
        let start = size.segment_start(self.segment_no(size)?);
        Some(Lsn(start.0 + u64::from(self.backup_offset)))
    }

    /// The 24-digit segment part (`TTTTTTTTLLLLLLLLSSSSSSSS`); for a history
    /// file, just its 8-digit timeline.
    pub fn segment_part(&self) -> String {
        if self.kind == WalKind::History {
            format!("{:08X}", self.timeline.0)
        } else {
            format!("{:08X}{:08X}{:08X}", self.timeline.0, self.log, self.seg)
        }
    }

    /// Sort key: timeline, then position, then kind.
    pub fn sort_key(&self) -> (u32, u32, u32, WalKind, u32) {
        (self.timeline.0, self.log, self.seg, self.kind, self.backup_offset)
    }
}

impl fmt::Display for WalFileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            WalKind::History => write!(f, "{:08X}.history", self.timeline.0),
            WalKind::Segment => f.write_str(&self.segment_part()),
            WalKind::Partial => write!(f, "{}.partial", self.segment_part()),
            WalKind::Backup => write!(f, "{}.{:08X}.backup", self.segment_part(), self.backup_offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_every_kind() {
        let s = WalFileName::parse("000000010000000000000003").unwrap();
        assert_eq!(s.kind(), WalKind::Segment);
        assert_eq!(s.segment_no(SegmentSize::DEFAULT), Some(3));
        let p = WalFileName::parse("00000002000000010000000A.partial").unwrap();
        assert_eq!(p.kind(), WalKind::Partial);
        assert_eq!(p.timeline(), TimelineId(2));
        assert_eq!(p.segment_no(SegmentSize::DEFAULT), Some(256 + 10));
        let b = WalFileName::parse("000000010000000000000002.00000028.backup").unwrap();
        assert_eq!(b.kind(), WalKind::Backup);
        assert_eq!(b.start_lsn(SegmentSize::DEFAULT), Some(Lsn(0x200_0028)));
        let h = WalFileName::parse("0000000A.history").unwrap();
        assert_eq!(h.kind(), WalKind::History);
        assert_eq!(h.timeline(), TimelineId(10));
        for n in [
            "000000010000000000000003",
            "00000002000000010000000A.partial",
            "000000010000000000000002.00000028.backup",
            "0000000A.history",
        ] {
            assert_eq!(WalFileName::parse(n).unwrap().to_string(), n);
        }
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "",
            "00000001000000000000003",
            "0000000100000000000000033",
            "00000001000000000000000g",
            "00000001000000000000000a",
            "000000000000000000000001",
            "00000000.history",
            "000000010000000000000002.backup",
            "000000010000000000000002.0000028.backup",
            "000000010000000000000002.partial.zst",
            "../00000001.history",
        ] {
            assert!(WalFileName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn segment_sizes() {
        assert!(SegmentSize::new(1 << 19).is_none());
        assert!(SegmentSize::new(3 << 20).is_none());
        assert!(SegmentSize::new(2 << 30).is_none());
        let one_mb = SegmentSize::new(1 << 20).unwrap();
        assert_eq!(one_mb.segments_per_log(), 4096);
        // With 1 MiB segments, segment 0xFFF of log 0 is followed by log 1 segment 0.
        let last = WalFileName::parse("000000010000000000000FFF").unwrap();
        assert_eq!(last.segment_no(one_mb), Some(4095));
        assert_eq!(WalFileName::segment(TimelineId(1), 4096, one_mb).to_string(), "000000010000000100000000");
        // A name impossible for 16 MiB segments (seg part >= 256).
        assert_eq!(last.segment_no(SegmentSize::DEFAULT), None);
        let one_gb = SegmentSize::new(1 << 30).unwrap();
        assert_eq!(one_gb.segments_per_log(), 4);
        assert_eq!(WalFileName::segment(TimelineId(3), 9, one_gb).to_string(), "000000030000000200000001");
    }

    proptest! {
        #[test]
        fn segment_round_trip(tli in 1u32.., segno in 0u64..(1u64 << 40), shift in 20u32..=30) {
            let size = SegmentSize::new(1 << shift).unwrap();
            let segno = segno % (0xFFFF_FFFFu64 * size.segments_per_log());
            let n = WalFileName::segment(TimelineId(tli), segno, size);
            let p = WalFileName::parse(&n.to_string()).unwrap();
            prop_assert_eq!(p, n);
            prop_assert_eq!(p.segment_no(size), Some(segno));
            let start = p.start_lsn(size).unwrap();
            prop_assert_eq!(size.segment_of(start), segno);
            prop_assert_eq!(size.segment_of(Lsn(start.0 + u64::from(size.bytes()) - 1)), segno);
        }
    }
}
