//! The long page header at the start of every WAL segment.
//!
//! Layout (little-endian, as on every platform PostgreSQL WAL is archived
//! from here): `xlp_magic u16 @0`, `xlp_info u16 @2`, `xlp_tli u32 @4`,
//! `xlp_pageaddr u64 @8`, `xlp_rem_len u32 @16`, padding to 24, then the long
//! header: `xlp_sysid u64 @24`, `xlp_seg_size u32 @32`, `xlp_xlog_blcksz u32 @36`.

use crate::lsn::Lsn;
use crate::wal::{SegmentSize, WalFileName};

/// Bytes needed to parse the long header.
pub const LONG_HEADER_LEN: usize = 40;
/// `XLP_LONG_HEADER` in `xlp_info`.
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// `XLOG_PAGE_MAGIC` of each PostgreSQL major version this build knows.
pub const PAGE_MAGICS: &[(u16, u32)] =
    &[(0xD101, 12), (0xD106, 13), (0xD10D, 14), (0xD110, 15), (0xD113, 16), (0xD116, 17), (0xD118, 18)];

/// The PostgreSQL major version that writes WAL with this page magic.
pub fn major_version_for_magic(magic: u16) -> Option<u32> {
    PAGE_MAGICS.iter().find(|(m, _)| *m == magic).map(|(_, v)| *v)
}

/// The page magic PostgreSQL `major` writes.
pub fn magic_for_major_version(major: u32) -> Option<u16> {
    PAGE_MAGICS.iter().find(|(_, v)| *v == major).map(|(m, _)| *m)
}

/// The fields of a segment's first page header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LongPageHeader {
    pub magic: u16,
    pub info: u16,
    pub timeline: u32,
    pub page_addr: Lsn,
    pub system_identifier: u64,
    pub segment_size: u32,
    pub block_size: u32,
}

/// Why a segment's header does not belong where it claims to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("too short for a WAL page header ({0} bytes)")]
    TooShort(usize),
    #[error("page magic 0x{0:04X} is not one of a PostgreSQL version this dbbackup knows (12 to 18): not a WAL segment, or from a newer PostgreSQL")]
    UnknownMagic(u16),
    #[error("first page has no long header (xlp_info 0x{0:04X}): not the start of a WAL segment")]
    NotLongHeader(u16),
    #[error("page magic 0x{found:04X} is PostgreSQL {found_version}'s, but the repository holds PostgreSQL {expected_version} WAL")]
    VersionMismatch { found: u16, found_version: u32, expected_version: u32 },
    #[error("header says segment size {found} bytes, expected {expected}")]
    SegmentSizeMismatch { found: u32, expected: u32 },
    #[error("header says page address {found}, but file name {name} starts at {expected}: the content does not belong to this file name")]
    AddressMismatch { found: Lsn, expected: Lsn, name: String },
    #[error("header says timeline {found}, newer than timeline {expected} of file name {name}: the content does not belong to this file name")]
    TimelineMismatch { found: u32, expected: u32, name: String },
    #[error("system identifier {found} in the segment header differs from the repository's {expected}: this segment comes from another cluster")]
    SystemIdMismatch { found: u64, expected: u64 },
    #[error("file name {name} cannot name a segment of {size} bytes (its segment part is too large for that size)")]
    ImpossibleName { name: String, size: u32 },
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Parses the long header from the first bytes of a segment. Checks only
/// that it is a long header of a known version.
pub fn parse_long_header(buf: &[u8]) -> Result<LongPageHeader, HeaderError> {
    if buf.len() < LONG_HEADER_LEN {
        return Err(HeaderError::TooShort(buf.len()));
    }
    let magic = u16_at(buf, 0);
    if major_version_for_magic(magic).is_none() {
        return Err(HeaderError::UnknownMagic(magic));
    }
    let info = u16_at(buf, 2);
    if info & XLP_LONG_HEADER == 0 {
        return Err(HeaderError::NotLongHeader(info));
    }
    Ok(LongPageHeader {
        magic,
        info,
        timeline: u32_at(buf, 4),
        page_addr: Lsn(u64_at(buf, 8)),
        system_identifier: u64_at(buf, 24),
        segment_size: u32_at(buf, 32),
        block_size: u32_at(buf, 36),
    })
}

/// What a segment must match: the repository's identity, when bound.
#[derive(Debug, Clone, Copy)]
pub struct Expected {
    pub system_identifier: Option<u64>,
    pub major_version: Option<u32>,
    pub segment_size: Option<SegmentSize>,
}

impl LongPageHeader {
    /// Checks this header against the file name it was archived under and
    /// the repository's identity.
    ///
    /// The header's timeline may be older than the name's: the first
    /// segment of a new timeline starts as a copy of the old timeline's
    /// segment, page headers included.
    pub fn check(&self, name: &WalFileName, expected: &Expected) -> Result<(), HeaderError> {
        let version = major_version_for_magic(self.magic).ok_or(HeaderError::UnknownMagic(self.magic))?;
        if let Some(v) = expected.major_version {
            if v != version {
                return Err(HeaderError::VersionMismatch {
                    found: self.magic,
                    found_version: version,
                    expected_version: v,
                });
            }
        }
        if let Some(sysid) = expected.system_identifier {
            if sysid != self.system_identifier {
                return Err(HeaderError::SystemIdMismatch { found: self.system_identifier, expected: sysid });
            }
        }
        let size = match expected.segment_size {
            Some(s) if s.bytes() != self.segment_size => {
                return Err(HeaderError::SegmentSizeMismatch { found: self.segment_size, expected: s.bytes() })
            }
            Some(s) => s,
            None => SegmentSize::new(self.segment_size).ok_or(HeaderError::SegmentSizeMismatch {
                found: self.segment_size,
                expected: SegmentSize::DEFAULT.bytes(),
            })?,
        };
        if self.timeline > name.timeline().0 || self.timeline == 0 {
            return Err(HeaderError::TimelineMismatch {
                found: self.timeline,
                expected: name.timeline().0,
                name: name.to_string(),
            });
        }
        let want = name.segment_no(size).map(|n| size.segment_start(n)).ok_or(HeaderError::AddressMismatch {
            found: self.page_addr,
            expected: Lsn(0),
            name: name.to_string(),
        })?;
        if want != self.page_addr {
            return Err(HeaderError::AddressMismatch { found: self.page_addr, expected: want, name: name.to_string() });
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) fn synthetic_header(magic: u16, tli: u32, addr: u64, sysid: u64, seg_size: u32) -> Vec<u8> {
    let mut b = vec![0u8; LONG_HEADER_LEN];
    b[0..2].copy_from_slice(&magic.to_le_bytes());
    b[2..4].copy_from_slice(&(XLP_LONG_HEADER | 0x0004).to_le_bytes());
    b[4..8].copy_from_slice(&tli.to_le_bytes());
    b[8..16].copy_from_slice(&addr.to_le_bytes());
    b[24..32].copy_from_slice(&sysid.to_le_bytes());
    b[32..36].copy_from_slice(&seg_size.to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::TimelineId;

    const SYS: u64 = 7_300_000_000_000_000_001;

    fn expected() -> Expected {
        Expected { system_identifier: Some(SYS), major_version: Some(15), segment_size: Some(SegmentSize::DEFAULT) }
    }

    #[test]
    fn accepts_matching_header() {
        let name = WalFileName::parse("000000010000000000000003").unwrap();
        let h = parse_long_header(&synthetic_header(0xD110, 1, 0x300_0000, SYS, 16 << 20)).unwrap();
        h.check(&name, &expected()).unwrap();
        // First segment of timeline 2 still carries timeline 1 headers.
        let name2 = WalFileName::parse("000000020000000000000003").unwrap();
        h.check(&name2, &expected()).unwrap();
    }

    #[test]
    fn rejects_mismatches() {
        let name = WalFileName::parse("000000010000000000000003").unwrap();
        let check = |hdr: Vec<u8>| parse_long_header(&hdr).and_then(|h| h.check(&name, &expected()));
        assert!(matches!(
            check(synthetic_header(0xD110, 1, 0x400_0000, SYS, 16 << 20)),
            Err(HeaderError::AddressMismatch { .. })
        ));
        assert!(matches!(
            check(synthetic_header(0xD110, 2, 0x300_0000, SYS, 16 << 20)),
            Err(HeaderError::TimelineMismatch { .. })
        ));
        assert!(matches!(
            check(synthetic_header(0xD110, 1, 0x300_0000, SYS + 1, 16 << 20)),
            Err(HeaderError::SystemIdMismatch { .. })
        ));
        assert!(matches!(
            check(synthetic_header(0xD110, 1, 0x300_0000, SYS, 1 << 20)),
            Err(HeaderError::SegmentSizeMismatch { .. })
        ));
        assert!(matches!(
            check(synthetic_header(0xD118, 1, 0x300_0000, SYS, 16 << 20)),
            Err(HeaderError::VersionMismatch { .. })
        ));
        assert!(matches!(
            check(synthetic_header(0x1234, 1, 0x300_0000, SYS, 16 << 20)),
            Err(HeaderError::UnknownMagic(0x1234))
        ));
        assert!(matches!(check(vec![0; 10]), Err(HeaderError::TooShort(10))));
        let mut short = synthetic_header(0xD110, 1, 0x300_0000, SYS, 16 << 20);
        short[2] = 0;
        assert!(matches!(check(short), Err(HeaderError::NotLongHeader(0))));
        let _ = TimelineId(1);
    }
}
