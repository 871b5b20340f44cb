//! `global/pg_control` parsing: the cluster's identity.
//!
//! The struct's layout changes between versions, but a few anchors do not:
//! the system identifier is the first field, and `floatFormat` (the double
//! 1234567.0) is followed by `blcksz`, `relseg_size`, `xlog_blcksz` and
//! `xlog_seg_size`. The CRC-32C that ends the struct covers every byte before
//! it, so we find it by trying each aligned offset after those fields; a file
//! whose CRC matches nowhere is rejected as corrupt.

use crate::lsn::Lsn;

/// `FLOATFORMAT_VALUE` in pg_control.h.
const FLOAT_FORMAT: f64 = 1_234_567.0;

/// What dbbackup needs from pg_control.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ControlData {
    pub system_identifier: u64,
    pub pg_control_version: u32,
    pub catalog_version: u32,
    pub checkpoint: Lsn,
    pub block_size: u32,
    pub wal_block_size: u32,
    pub wal_segment_size: u32,
}

/// Why bytes are not a usable pg_control.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("pg_control is too short ({0} bytes)")]
    TooShort(usize),
    #[error(
        "pg_control has no float format marker: not a pg_control file, or from a platform with another byte order"
    )]
    NoFloatFormat,
    #[error("pg_control checksum does not match: the file is corrupt")]
    BadCrc,
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// Parses and CRC-checks the contents of `global/pg_control`.
pub fn parse_control(b: &[u8]) -> Result<ControlData, ControlError> {
    if b.len() < 256 {
        return Err(ControlError::TooShort(b.len()));
    }
    let ff = (40..b.len().min(1024) - 32)
        .step_by(8)
        .find(|&o| f64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes")) == FLOAT_FORMAT)
        .ok_or(ControlError::NoFloatFormat)?;
    let crc_ok = (ff + 24..b.len().min(1024) - 4).step_by(4).any(|k| crc32c::crc32c(&b[..k]) == u32_at(b, k));
    if !crc_ok {
        return Err(ControlError::BadCrc);
    }
    Ok(ControlData {
        system_identifier: u64_at(b, 0),
        pg_control_version: u32_at(b, 8),
        catalog_version: u32_at(b, 12),
        checkpoint: Lsn(u64_at(b, 32)),
        block_size: u32_at(b, ff + 8),
        wal_block_size: u32_at(b, ff + 16),
        wal_segment_size: u32_at(b, ff + 20),
    })
}

impl ControlData {
    /// The PostgreSQL major version, from the control and catalog versions.
    /// Versions 13 to 16 share control version 1300 and are told apart by
    /// the catalog version each release shipped with. Prefer `PG_VERSION`
    /// when the data directory is at hand.
    pub fn major_version(&self) -> Option<u32> {
        match self.pg_control_version {
            1201 => Some(12),
            1300 => Some(match self.catalog_version {
                c if c <= 202_007_201 => 13,
                c if c <= 202_107_181 => 14,
                c if c <= 202_209_061 => 15,
                _ => 16,
            }),
            1700 => Some(17),
            1800 => Some(18),
            _ => None,
        }
    }
}

/// Parses the `PG_VERSION` file of a data directory ("15\n").
pub fn parse_pg_version(text: &str) -> Option<u32> {
    let t = text.trim();
    t.split('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Vec<u8> {
        std::fs::read(format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
    }

    #[test]
    fn real_pg15_and_pg18_control_files() {
        for (file, version, segsize) in [
            ("pg_control.15", 15, 16 << 20),
            ("pg_control.18", 18, 16 << 20),
            ("pg_control.15-1mb", 15, 1 << 20),
            ("pg_control.18-64mb", 18, 64 << 20),
        ] {
            let c = parse_control(&fixture(file)).unwrap();
            assert_eq!(c.major_version(), Some(version), "{file}");
            assert_eq!(c.wal_segment_size, segsize, "{file}");
            assert_eq!(c.block_size, 8192);
            assert_eq!(c.wal_block_size, 8192);
            let expected_sysid: u64 =
                std::fs::read_to_string(format!("{}/tests/fixtures/{file}.sysid", env!("CARGO_MANIFEST_DIR")))
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap();
            assert_eq!(c.system_identifier, expected_sysid);
        }
    }

    #[test]
    fn corrupt_control_is_rejected() {
        let mut b = fixture("pg_control.15");
        b[3] ^= 0x10;
        assert_eq!(parse_control(&b), Err(ControlError::BadCrc));
        assert_eq!(parse_control(&[0; 100]), Err(ControlError::TooShort(100)));
        assert_eq!(parse_control(&[0; 8192]), Err(ControlError::NoFloatFormat));
    }

    #[test]
    fn pg_version_file() {
        assert_eq!(parse_pg_version("15\n"), Some(15));
        assert_eq!(parse_pg_version("9.6\n"), Some(9));
        assert_eq!(parse_pg_version("x"), None);
    }
}
