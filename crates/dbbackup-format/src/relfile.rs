//! Relation file identities shared by the WAL record reader, the record
//! decoders and the catalog model: PostgreSQL's `RelFileNode` (12–15) /
//! `RelFileLocator` (16+), the same 12 bytes in every version.

use std::fmt;

/// A PostgreSQL object identifier.
pub type Oid = u32;

/// `spcOid`, `dbOid`, `relNumber`: where a relation's files live
/// (`base/<db>/<rel>`, `global/<rel>` when `spc` is `pg_global` 1664, or
/// `pg_tblspc/<spc>/.../<db>/<rel>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelFileLocator {
    pub spc: Oid,
    pub db: Oid,
    pub rel: Oid,
}

/// `DEFAULTTABLESPACE_OID` (`pg_default`).
pub const DEFAULT_TABLESPACE: Oid = 1663;
/// `GLOBALTABLESPACE_OID` (`pg_global`, shared catalogs).
pub const GLOBAL_TABLESPACE: Oid = 1664;

/// Bytes of a `RelFileNode`/`RelFileLocator` in WAL.
pub const LOCATOR_LEN: usize = 12;

impl RelFileLocator {
    /// Reads the 12 little-endian bytes at the start of `b` (`None` if shorter).
    pub fn parse(b: &[u8]) -> Option<RelFileLocator> {
        let u = |i: usize| -> Option<u32> { Some(u32::from_le_bytes(b.get(i..i + 4)?.try_into().ok()?)) };
        Some(RelFileLocator { spc: u(0)?, db: u(4)?, rel: u(8)? })
    }
}

impl fmt::Display for RelFileLocator {
    /// The relation's path below the data directory, as `pg_waldump` prints it (`spc/db/rel`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.spc, self.db, self.rel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let mut b = Vec::new();
        for v in [1663u32, 5, 16384] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let l = RelFileLocator::parse(&b).unwrap();
        assert_eq!(l, RelFileLocator { spc: 1663, db: 5, rel: 16384 });
        assert_eq!(l.to_string(), "1663/5/16384");
        assert!(RelFileLocator::parse(&b[..11]).is_none());
    }
}
