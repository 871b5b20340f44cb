//! Heap pages and the few catalog rows `wal search` reads from them:
//! `pg_class`, `pg_namespace`, `pg_database`, and the relation map files
//! (`pg_filenode.map`) that say where the mapped catalogs (pg_class itself,
//! pg_database, ...) live.
//!
//! Pure and total like [`crate::walrmgr`]: bytes in, values or a
//! [`DecodeError`] out, never a panic. Layouts verified against the sources
//! of PostgreSQL 12.5, 13.1, 14.13, 15 (installed headers and 15.15), 16.2,
//! 17.4 and 18 (installed headers and 18.3): `storage/bufpage.h`,
//! `storage/itemid.h`, `access/htup_details.h`, `catalog/pg_class.h`,
//! `catalog/pg_namespace.h`, `catalog/pg_database.h`,
//! `utils/cache/relmapper.c`, `pg_config_manual.h` (NAMEDATALEN 64).

use crate::relfile::Oid;
pub use crate::walrmgr::DecodeError;

/// Catalog relation oids (`CATALOG(pg_class,1259,...)` etc.; 12 to 18).
pub const PG_CLASS_OID: Oid = 1259;
pub const PG_NAMESPACE_OID: Oid = 2615;
/// Shared (`global/`), mapped.
pub const PG_DATABASE_OID: Oid = 1262;

/// `SizeOfPageHeaderData`.
pub const PAGE_HEADER_LEN: usize = 24;
/// `HEAP_XMAX_INVALID` in `t_infomask`: no transaction deleted or replaced the tuple.
pub const HEAP_XMAX_INVALID: u16 = 0x0800;
/// `PG_PAGE_LAYOUT_VERSION` (8.3 and later).
const PAGE_LAYOUT_VERSION: u16 = 4;
/// `SizeofHeapTupleHeader`: `offsetof(HeapTupleHeaderData, t_bits)`.
pub const TUPLE_HEADER_LEN: usize = 23;
/// `LP_NORMAL`: a line pointer to a tuple.
const LP_NORMAL: u32 = 1;
/// `NAMEDATALEN` (compile-time default 64; builds with another value are not supported).
pub const NAMEDATALEN: usize = 64;

/// A tuple on a heap page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTuple<'a> {
    /// 1-based line pointer number.
    pub offnum: u16,
    pub xmin: u32,
    pub xmax: u32,
    pub infomask: u16,
    pub infomask2: u16,
    pub hoff: u8,
    /// Null bitmap and padding between the 23-byte header and `t_hoff`.
    pub bitmap: &'a [u8],
    /// The user data (from `t_hoff` to the end of the tuple).
    pub data: &'a [u8],
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Every tuple of a heap page whose line pointer is LP_NORMAL, dead or alive
/// (visibility is the caller's business). A new page (`pd_upper` 0, as an
/// all-zero page has) has none.
///
/// `PageHeaderData`: pd_lsn u64 @0, pd_checksum u16 @8, pd_flags u16 @10,
/// pd_lower u16 @12, pd_upper u16 @14, pd_special u16 @16,
/// pd_pagesize_version u16 @18, pd_prune_xid u32 @20, line pointers @24.
/// `ItemIdData` bitfields (little-endian): lp_off bits 0-14, lp_flags 15-16,
/// lp_len 17-31. `HeapTupleHeaderData`: t_xmin @0, t_xmax @4, t_cid @8,
/// t_ctid @12, t_infomask2 @18, t_infomask @20, t_hoff @22, t_bits @23.
pub fn page_tuples(page: &[u8]) -> Result<Vec<PageTuple<'_>>, DecodeError> {
    if page.len() < PAGE_HEADER_LEN {
        return Err(DecodeError::new(format!("heap page is {} bytes, shorter than its 24-byte header", page.len())));
    }
    let lower = u16_at(page, 12) as usize;
    let upper = u16_at(page, 14) as usize;
    let special = u16_at(page, 16) as usize;
    let size_version = u16_at(page, 18);
    if upper == 0 {
        // PageIsNew: never initialised (e.g. extended, then crashed before use).
        return Ok(Vec::new());
    }
    // A 32 KiB page stores its size as 0x8000 (the low byte holds the version).
    let size = (size_version & 0xFF00) as usize;
    let version = size_version & 0x00FF;
    if version != PAGE_LAYOUT_VERSION || size != page.len() {
        return Err(DecodeError::new(format!(
            "heap page header says page size {size} and layout version {version}, but the page is {} bytes and PostgreSQL 12 to 18 write version {PAGE_LAYOUT_VERSION}: not a heap page, or corrupt",
            page.len()
        )));
    }
    if lower < PAGE_HEADER_LEN || lower > upper || upper > special || special > page.len() {
        return Err(DecodeError::new(format!(
            "heap page header is inconsistent (pd_lower {lower}, pd_upper {upper}, pd_special {special}, page size {}): corrupt or torn page",
            page.len()
        )));
    }
    let count = (lower - PAGE_HEADER_LEN) / 4;
    let mut out = Vec::new();
    for i in 0..count {
        let offnum = (i + 1) as u16;
        let lp = u32_at(page, PAGE_HEADER_LEN + i * 4);
        let off = (lp & 0x7FFF) as usize;
        let flags = (lp >> 15) & 0x3;
        let len = (lp >> 17) as usize;
        if flags != LP_NORMAL || len == 0 {
            continue;
        }
        if off < upper || off + len > special || len < TUPLE_HEADER_LEN {
            return Err(DecodeError::new(format!(
                "heap page line pointer {offnum} points at {len} bytes at offset {off}, outside the tuple space {upper}..{special}: corrupt or torn page"
            )));
        }
        let t = &page[off..off + len];
        let hoff = t[22];
        if (hoff as usize) < TUPLE_HEADER_LEN || hoff as usize > len {
            return Err(DecodeError::new(format!(
                "heap page tuple {offnum}: t_hoff {hoff} is outside its {len}-byte tuple: corrupt or torn page"
            )));
        }
        out.push(PageTuple {
            offnum,
            xmin: u32_at(t, 0),
            xmax: u32_at(t, 4),
            infomask2: u16_at(t, 18),
            infomask: u16_at(t, 20),
            hoff,
            bitmap: &t[TUPLE_HEADER_LEN..hoff as usize],
            data: &t[hoff as usize..],
        });
    }
    Ok(out)
}

/// A `NameData` column: 64 bytes, NUL-padded. Names are stored in the
/// database's encoding; bytes that are not UTF-8 are shown as U+FFFD.
fn name_at(what: &str, data: &[u8], off: usize) -> Result<String, DecodeError> {
    let b = data.get(off..off + NAMEDATALEN).ok_or_else(|| short(what, data.len(), off + NAMEDATALEN))?;
    let end = b.iter().position(|c| *c == 0).ok_or_else(|| {
        DecodeError::new(format!("{what}: the name at offset {off} has no terminating NUL within {NAMEDATALEN} bytes"))
    })?;
    Ok(String::from_utf8_lossy(&b[..end]).into_owned())
}

fn short(what: &str, len: usize, need: usize) -> DecodeError {
    DecodeError::new(format!("{what} is {len} bytes, too short for its fixed columns ({need} bytes)"))
}

/// The `pg_class` columns `wal search` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgClassRow {
    pub oid: Oid,
    pub relname: String,
    pub relnamespace: Oid,
    /// 0 for mapped catalogs (see [`parse_relmap`]).
    pub relfilenode: Oid,
    /// 0 for the database's default tablespace.
    pub reltablespace: Oid,
    pub reltoastrelid: Oid,
    pub relisshared: bool,
    /// `p` permanent, `u` unlogged, `t` temporary.
    pub relpersistence: u8,
    /// `r` table, `i` index, `S` sequence, `t` toast, `v` view, `m`
    /// materialized view, `c` composite type, `f` foreign, `p` partitioned
    /// table, `I` partitioned index.
    pub relkind: u8,
}

/// Reads the fixed-position `pg_class` columns from a tuple's user data
/// (after `t_hoff`). They are NOT NULL and fixed width up to `relkind`, so
/// their offsets follow the C struct: oid @0, relname @4 (NameData, 64),
/// relnamespace @68, reltype, reloftype, relowner, relam, relfilenode @88,
/// reltablespace @92, relpages, reltuples, relallvisible @104, then
/// reltoastrelid @108, relhasindex, relisshared @113, relpersistence @114,
/// relkind @115. 18 inserted `relallfrozen int32` after relallvisible, moving
/// the last four 4 bytes on. 12 to 17 are identical.
pub fn pg_class_row(major: u32, data: &[u8]) -> Result<PgClassRow, DecodeError> {
    crate::walrmgr::check_major(major)?;
    let what = "pg_class row";
    let shift = if major >= 18 { 4 } else { 0 };
    let toast = 108 + shift;
    let need = toast + 8;
    if data.len() < need {
        return Err(short(what, data.len(), need));
    }
    Ok(PgClassRow {
        oid: u32_at(data, 0),
        relname: name_at(what, data, 4)?,
        relnamespace: u32_at(data, 68),
        relfilenode: u32_at(data, 88),
        reltablespace: u32_at(data, 92),
        reltoastrelid: u32_at(data, toast),
        relisshared: data[toast + 5] != 0,
        relpersistence: data[toast + 6],
        relkind: data[toast + 7],
    })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRow {
    pub oid: Oid,
    pub name: String,
}

/// A catalog row that starts with its oid @0 and its name @4, as
/// `pg_namespace` and `pg_database` rows do (12 to 18).
fn oid_and_name(major: u32, what: &str, data: &[u8]) -> Result<(Oid, String), DecodeError> {
    crate::walrmgr::check_major(major)?;
    if data.len() < 4 + NAMEDATALEN {
        return Err(short(what, data.len(), 4 + NAMEDATALEN));
    }
    Ok((u32_at(data, 0), name_at(what, data, 4)?))
}

/// `pg_namespace`: oid @0, nspname @4 (12 to 18).
pub fn pg_namespace_row(major: u32, data: &[u8]) -> Result<NamespaceRow, DecodeError> {
    let (oid, name) = oid_and_name(major, "pg_namespace row", data)?;
    Ok(NamespaceRow { oid, name })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatabaseRow {
    pub oid: Oid,
    pub name: String,
}

/// `pg_database`: oid @0, datname @4 (12 to 18).
pub fn pg_database_row(major: u32, data: &[u8]) -> Result<DatabaseRow, DecodeError> {
    let (oid, name) = oid_and_name(major, "pg_database row", data)?;
    Ok(DatabaseRow { oid, name })
}

/// `RELMAPPER_FILEMAGIC`, 12 to 18.
const RELMAP_MAGIC: u32 = 0x0059_2717;

/// Parses a `pg_filenode.map` (or the payload of a relation map WAL record):
/// (relation oid, file number) of each mapped catalog.
///
/// `RelMapFile {int32 magic; int32 num_mappings; RelMapping mappings[MAX_MAPPINGS]
/// (each {Oid mapoid; RelFileNumber mapfilenumber}); pg_crc32c crc; ...}`, the
/// CRC-32C covering everything before it. 12 to 15: MAX_MAPPINGS 62 plus an
/// `int32 pad`, 512 bytes; 16 and later: MAX_MAPPINGS 64, no pad, 524 bytes.
/// The size tells the layout, so no version is needed.
pub fn parse_relmap(bytes: &[u8]) -> Result<Vec<(Oid, Oid)>, DecodeError> {
    let max = match bytes.len() {
        512 => 62,
        524 => 64,
        n => {
            return Err(DecodeError::new(format!(
                "relation map is {n} bytes; PostgreSQL 12 to 15 write 512 and 16 to 18 write 524"
            )))
        }
    };
    let magic = u32_at(bytes, 0);
    if magic != RELMAP_MAGIC {
        return Err(DecodeError::new(format!(
            "relation map magic is 0x{magic:X}, not 0x{RELMAP_MAGIC:X}: not a pg_filenode.map, or corrupt"
        )));
    }
    let crc_at = 8 + 8 * max;
    let stored = u32_at(bytes, crc_at);
    let computed = crc32c::crc32c(&bytes[..crc_at]);
    if stored != computed {
        return Err(DecodeError::new(format!(
            "relation map checksum is 0x{stored:08X} but its contents give 0x{computed:08X}: the map is corrupt"
        )));
    }
    let n = u32_at(bytes, 4) as i32;
    if n < 0 || n as usize > max {
        return Err(DecodeError::new(format!("relation map says it holds {n} mappings; it has room for {max}")));
    }
    Ok((0..n as usize).map(|i| (u32_at(bytes, 8 + 8 * i), u32_at(bytes, 12 + 8 * i))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A heap tuple: 23-byte header, bitmap/padding to `hoff`, user data.
    fn tuple(xmin: u32, xmax: u32, bitmap: &[u8], user: &[u8]) -> Vec<u8> {
        let hoff = (TUPLE_HEADER_LEN + bitmap.len()).div_ceil(8) * 8;
        let mut t = vec![0u8; hoff];
        t[0..4].copy_from_slice(&xmin.to_le_bytes());
        t[4..8].copy_from_slice(&xmax.to_le_bytes());
        t[18..20].copy_from_slice(&(17u16).to_le_bytes());
        t[20..22].copy_from_slice(&(0x0902u16).to_le_bytes());
        t[22] = hoff as u8;
        t[23..23 + bitmap.len()].copy_from_slice(bitmap);
        t.extend_from_slice(user);
        t
    }

    /// A page laid out as PageAddItem does: line pointers up from 24, tuples down from pd_special.
    /// `None` entries become LP_UNUSED pointers.
    fn page(size: usize, tuples: &[Option<Vec<u8>>]) -> Vec<u8> {
        let mut p = vec![0u8; size];
        let special = size;
        let mut upper = special;
        for (i, t) in tuples.iter().enumerate() {
            let lp = match t {
                Some(t) => {
                    upper = (upper - t.len()) & !7;
                    p[upper..upper + t.len()].copy_from_slice(t);
                    (upper as u32) | (1 << 15) | ((t.len() as u32) << 17)
                }
                None => 0,
            };
            p[24 + 4 * i..28 + 4 * i].copy_from_slice(&lp.to_le_bytes());
        }
        let lower = 24 + 4 * tuples.len();
        p[12..14].copy_from_slice(&(lower as u16).to_le_bytes());
        p[14..16].copy_from_slice(&(upper as u16).to_le_bytes());
        p[16..18].copy_from_slice(&(special as u16).to_le_bytes());
        p[18..20].copy_from_slice(&((size as u16 & 0xFF00) | 4).to_le_bytes());
        p
    }

    fn name(s: &str) -> Vec<u8> {
        let mut n = s.as_bytes().to_vec();
        n.resize(NAMEDATALEN, 0);
        n
    }

    /// pg_class user data as the C struct (FormData_pg_class) lays it out, up to relminmxid.
    fn pg_class_data(major: u32, oid: u32, relname: &str, relfilenode: u32, toast: u32, kind: u8) -> Vec<u8> {
        let mut d = oid.to_le_bytes().to_vec();
        d.extend(name(relname));
        for v in [2200u32, 16386, 0, 10, 2, relfilenode, 0, 1, 0, 0] {
            // relnamespace, reltype, reloftype, relowner, relam, relfilenode, reltablespace, relpages, reltuples, relallvisible
            d.extend(v.to_le_bytes());
        }
        if major >= 18 {
            d.extend(0u32.to_le_bytes()); // relallfrozen
        }
        d.extend(toast.to_le_bytes());
        d.extend([1, 0, b'p', kind]); // relhasindex, relisshared, relpersistence, relkind
        d.extend([0u8; 24]); // relnatts .. relminmxid
        d
    }

    #[test]
    fn pg_class_rows_per_version() {
        for major in 12..=18 {
            let d = pg_class_data(major, 16384, "orders", 16390, 16387, b'r');
            let r = pg_class_row(major, &d).unwrap();
            assert_eq!(
                r,
                PgClassRow {
                    oid: 16384,
                    relname: "orders".into(),
                    relnamespace: 2200,
                    relfilenode: 16390,
                    reltablespace: 0,
                    reltoastrelid: 16387,
                    relisshared: false,
                    relpersistence: b'p',
                    relkind: b'r'
                },
                "PostgreSQL {major}"
            );
        }
        // The same bytes read with the other layout land elsewhere.
        let d18 = pg_class_data(18, 1, "t", 2, 3, b'r');
        assert_ne!(pg_class_row(17, &d18).unwrap().reltoastrelid, 3);
        let long = "x".repeat(63);
        assert_eq!(pg_class_row(15, &pg_class_data(15, 1, &long, 2, 0, b'm')).unwrap().relname, long);
        assert!(pg_class_row(15, &pg_class_data(15, 1, "t", 2, 0, b'r')[..115])
            .unwrap_err()
            .reason
            .contains("too short"));
        let mut unterminated = pg_class_data(15, 1, "t", 2, 0, b'r');
        unterminated[4..68].fill(b'a');
        assert!(pg_class_row(15, &unterminated).unwrap_err().reason.contains("NUL"));
    }

    #[test]
    fn namespace_and_database_rows() {
        let mut d = 2200u32.to_le_bytes().to_vec();
        d.extend(name("public"));
        d.extend(10u32.to_le_bytes());
        assert_eq!(pg_namespace_row(16, &d).unwrap(), NamespaceRow { oid: 2200, name: "public".into() });
        assert_eq!(pg_database_row(16, &d).unwrap(), DatabaseRow { oid: 2200, name: "public".into() });
        assert!(pg_namespace_row(16, &d[..67]).is_err());
        assert!(pg_database_row(11, &d).is_err());
    }

    #[test]
    fn page_tuples_skips_unused_and_reads_live_and_dead() {
        let a = tuple(700, 0, &[], b"aaaa");
        let b = tuple(701, 702, &[0b1], b"bb");
        let p = page(8192, &[Some(a), None, Some(b)]);
        let ts = page_tuples(&p).unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!((ts[0].offnum, ts[0].xmin, ts[0].xmax, ts[0].hoff, ts[0].data), (1, 700, 0, 24, &b"aaaa"[..]));
        assert_eq!((ts[0].infomask2, ts[0].infomask), (17, 0x0902));
        assert_eq!((ts[1].offnum, ts[1].xmax, ts[1].bitmap[0], ts[1].data), (3, 702, 1, &b"bb"[..]));
        // Other block sizes are read by the size in the header.
        assert_eq!(page_tuples(&page(32768, &[Some(tuple(1, 0, &[], b"z"))])).unwrap().len(), 1);
        assert_eq!(page_tuples(&vec![0u8; 8192]).unwrap(), vec![]);
    }

    #[test]
    fn corrupt_pages_are_errors() {
        let good = page(8192, &[Some(tuple(1, 0, &[], b"abc"))]);
        let mut p = good.clone();
        p[18] = 5; // layout version
        assert!(page_tuples(&p).unwrap_err().reason.contains("layout version"));
        assert!(page_tuples(&good[..4096]).unwrap_err().reason.contains("page size"));
        let mut p = good.clone();
        p[12..14].copy_from_slice(&9000u16.to_le_bytes()); // pd_lower past pd_upper
        assert!(page_tuples(&p).unwrap_err().reason.contains("inconsistent"));
        let mut p = good.clone();
        let lp = 8100u32 | (1 << 15) | (200 << 17); // runs past pd_special
        p[24..28].copy_from_slice(&lp.to_le_bytes());
        assert!(page_tuples(&p).unwrap_err().reason.contains("line pointer 1"));
        let mut p = good.clone();
        let off = (u32::from_le_bytes(p[24..28].try_into().unwrap()) & 0x7FFF) as usize;
        p[off + 22] = 200; // t_hoff past the tuple
        assert!(page_tuples(&p).unwrap_err().reason.contains("t_hoff"));
        assert!(page_tuples(&[0u8; 10]).is_err());
    }

    #[test]
    fn relmaps_of_both_sizes() {
        for size in [512, 524] {
            let maps = [(1259, 1259), (1249, 1249), (2662, 16400)];
            let b = crate::walrmgr::tests::relmap_bytes(size, &maps);
            assert_eq!(parse_relmap(&b).unwrap(), maps.to_vec());
            let mut bad = b.clone();
            bad[20] ^= 1;
            assert!(parse_relmap(&bad).unwrap_err().reason.contains("checksum"));
            let mut bad = b.clone();
            bad[0] = 0;
            assert!(parse_relmap(&bad).unwrap_err().reason.contains("magic"));
        }
        let too_many = crate::walrmgr::tests::relmap_bytes(512, &[(1, 1); 63]);
        assert!(parse_relmap(&too_many).is_err());
        assert!(parse_relmap(&[0u8; 520]).unwrap_err().reason.contains("520 bytes"));
    }

    proptest! {
        #[test]
        fn random_pages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), lower in 24u16..200,
                                    upper in 0u16..600, special in 0u16..600) {
            let _ = page_tuples(&bytes);
            let mut p = vec![0u8; 512];
            p[..bytes.len().min(512)].copy_from_slice(&bytes[..bytes.len().min(512)]);
            p[12..14].copy_from_slice(&lower.to_le_bytes());
            p[14..16].copy_from_slice(&upper.to_le_bytes());
            p[16..18].copy_from_slice(&special.to_le_bytes());
            p[18..20].copy_from_slice(&0x0204u16.to_le_bytes()); // size 512, version 4
            let _ = page_tuples(&p);
            let _ = parse_relmap(&p);
            let _ = parse_relmap(&bytes);
            for major in [11, 12, 17, 18] {
                let _ = pg_class_row(major, &bytes);
                let _ = pg_namespace_row(major, &bytes);
                let _ = pg_database_row(major, &bytes);
            }
        }
    }
}
