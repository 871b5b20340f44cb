//! Decoders for the WAL records of the resource managers `wal search` needs:
//! transaction commit/abort/prepare (which relation files a transaction
//! drops), storage create/truncate, database create/drop, relation map
//! updates, and the heap records that change catalog rows.
//!
//! Pure and total: every function takes the bytes the record reader
//! (`walread.rs`) hands out and returns a value or a [`DecodeError`] saying
//! which field of which record does not fit; none panics on any input.
//!
//! Layouts are those of PostgreSQL 12 to 18 on the little-endian 64-bit
//! platforms dbbackup runs on (MAXALIGN 8). Each version difference is named
//! where it is handled. Verified against the sources of each version:
//! 12.5, 13.1, 14.13, 16.2, 17.4 (release source trees), 15 (installed server
//! headers plus the 15.15 source) and 18 (installed server headers plus the
//! 18.3 source): `access/xact.h`, `access/rmgrdesc/xactdesc.c`,
//! `access/transam/twophase.c`, `access/heapam_xlog.h`, `access/heap/heapam.c`,
//! `catalog/storage_xlog.h`, `commands/dbcommands_xlog.h`, `utils/relmapper.h`,
//! `access/rmgrlist.h`, `storage/sinval.h`.

use std::fmt;

use crate::heap;
use crate::relfile::{Oid, RelFileLocator, LOCATOR_LEN};

/// Resource manager ids (`access/rmgrlist.h`, the same list in 12 to 18).
pub const RM_XLOG: u8 = 0;
pub const RM_XACT: u8 = 1;
pub const RM_SMGR: u8 = 2;
pub const RM_CLOG: u8 = 3;
pub const RM_DBASE: u8 = 4;
pub const RM_TBLSPC: u8 = 5;
pub const RM_MULTIXACT: u8 = 6;
pub const RM_RELMAP: u8 = 7;
pub const RM_STANDBY: u8 = 8;
pub const RM_HEAP2: u8 = 9;
pub const RM_HEAP: u8 = 10;

/// The lowest and highest PostgreSQL major version these decoders know.
pub const MIN_MAJOR: u32 = 12;
pub const MAX_MAJOR: u32 = 18;

const RMGR_NAMES: [&str; 22] = [
    "XLOG",
    "Transaction",
    "Storage",
    "CLOG",
    "Database",
    "Tablespace",
    "MultiXact",
    "RelMap",
    "Standby",
    "Heap2",
    "Heap",
    "Btree",
    "Hash",
    "Gin",
    "Gist",
    "Sequence",
    "SPGist",
    "BRIN",
    "CommitTs",
    "ReplicationOrigin",
    "Generic",
    "LogicalMessage",
];

/// The resource manager's name as `pg_waldump` prints it. Ids 128 to 255 are
/// custom resource managers (PostgreSQL 15+, loaded by extensions; their names
/// are not in the WAL); 22 to 127 are unused.
pub fn rmgr_name(rmid: u8) -> &'static str {
    match RMGR_NAMES.get(rmid as usize) {
        Some(n) => n,
        None if rmid >= 128 => "Custom",
        None => "Unknown",
    }
}

/// Why bytes are not the record they were said to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub reason: String,
}

impl DecodeError {
    pub(crate) fn new(reason: impl Into<String>) -> DecodeError {
        DecodeError { reason: reason.into() }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// Refuses versions whose layouts were not checked.
pub(crate) fn check_major(major: u32) -> Result<(), DecodeError> {
    if (MIN_MAJOR..=MAX_MAJOR).contains(&major) {
        Ok(())
    } else {
        Err(DecodeError::new(format!(
            "PostgreSQL {major} is not a version whose record layouts this dbbackup knows ({MIN_MAJOR} to {MAX_MAJOR})"
        )))
    }
}

/// Reads little-endian fields front to back; every read names what it reads
/// so a short record says which field is missing.
pub(crate) struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { bytes, pos: 0, what }
    }
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }
    pub(crate) fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos.min(self.bytes.len())..]
    }
    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.bytes.len()).ok_or_else(|| {
            DecodeError::new(format!(
                "{} is truncated: {} needs {} bytes at offset {}, but the record has {} bytes",
                self.what,
                field,
                n,
                self.pos,
                self.bytes.len()
            ))
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    /// Moves to offset `to` (forward only), e.g. past alignment padding.
    pub(crate) fn seek(&mut self, to: usize, field: &str) -> Result<(), DecodeError> {
        let n = to.saturating_sub(self.pos);
        self.take(n, field).map(|_| ())
    }
    pub(crate) fn u8(&mut self, field: &str) -> Result<u8, DecodeError> {
        Ok(self.take(1, field)?[0])
    }
    pub(crate) fn u16(&mut self, field: &str) -> Result<u16, DecodeError> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    pub(crate) fn u32(&mut self, field: &str) -> Result<u32, DecodeError> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(crate) fn i64(&mut self, field: &str) -> Result<i64, DecodeError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_le_bytes(a))
    }
    /// A C `int` count: negative or absurd values are corruption.
    pub(crate) fn count(&mut self, field: &str, item_size: usize) -> Result<usize, DecodeError> {
        let at = self.pos;
        let n = self.u32(field)? as i32;
        let left = self.bytes.len().saturating_sub(self.pos);
        if n < 0 || (n as usize).saturating_mul(item_size) > left {
            return Err(DecodeError::new(format!(
                "{}: {} is {} at offset {}, but only {} bytes follow",
                self.what, field, n, at, left
            )));
        }
        Ok(n as usize)
    }
    pub(crate) fn locator(&mut self, field: &str) -> Result<RelFileLocator, DecodeError> {
        let b = self.take(LOCATOR_LEN, field)?;
        // take() returned exactly LOCATOR_LEN bytes, so parse cannot fail.
        RelFileLocator::parse(b).ok_or_else(|| DecodeError::new(format!("{}: {} unreadable", self.what, field)))
    }
    fn u32s(&mut self, n: usize, field: &str) -> Result<Vec<u32>, DecodeError> {
        let b = self.take(n * 4, field)?;
        Ok(b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
    }
    fn locators(&mut self, n: usize, field: &str) -> Result<Vec<RelFileLocator>, DecodeError> {
        (0..n).map(|_| self.locator(field)).collect()
    }
}

/// MAXALIGN on the 64-bit platforms PostgreSQL WAL comes from here.
const MAXALIGN: usize = 8;
fn maxalign(n: usize) -> usize {
    n.div_ceil(MAXALIGN) * MAXALIGN
}

// ---------------------------------------------------------------------------
// Transaction (RM_XACT)

/// `XLOG_XACT_*` opcodes (xl_info & `XLOG_XACT_OPMASK` 0x70), 12 to 18.
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_PREPARE: u8 = 0x10;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLOG_XACT_ASSIGNMENT: u8 = 0x50;
/// PostgreSQL 14+ (free opcode in 12 and 13).
const XLOG_XACT_INVALIDATIONS: u8 = 0x60;
const XLOG_XACT_OPMASK: u8 = 0x70;
/// The record carries an `xl_xact_xinfo` after the timestamp.
const XLOG_XACT_HAS_INFO: u8 = 0x80;

pub const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
pub const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
/// `_HAS_RELFILENODES` in 12-15, `_HAS_RELFILELOCATORS` in 16+: same bit, same 12-byte items.
pub const XACT_XINFO_HAS_RELFILELOCATORS: u32 = 1 << 2;
pub const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
pub const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
pub const XACT_XINFO_HAS_ORIGIN: u32 = 1 << 5;
pub const XACT_XINFO_HAS_AE_LOCKS: u32 = 1 << 6;
pub const XACT_XINFO_HAS_GID: u32 = 1 << 7;
/// PostgreSQL 15+ (stats are dropped transactionally since the shared-memory stats of 15).
pub const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

/// `sizeof(SharedInvalidationMessage)`: a union whose largest member is the
/// 16-byte `SharedInvalSmgrMsg`, 12 to 18 (18's new RelSync message is 12).
const INVAL_MSG_LEN: usize = 16;
/// `TWOPHASE_MAGIC`, twophase.c, 12 to 18.
const TWOPHASE_MAGIC: u32 = 0x57F9_4534;

/// `sizeof(xl_xact_stats_item)`: `{int kind; Oid dboid; Oid objoid}` = 12 in
/// 15-17; 18 made the object id 64-bit (`objid_lo`, `objid_hi`) = 16.
fn stats_item_len(major: u32) -> usize {
    if major >= 18 {
        16
    } else {
        12
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XactKind {
    Commit,
    Abort,
    CommitPrepared,
    AbortPrepared,
    Prepare,
    Assignment,
    Invalidations,
    Other(u8),
}

/// A decoded transaction record. Fields a kind does not carry are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XactRecord {
    pub kind: XactKind,
    /// `xact_time` (commit/abort) or `prepared_at` (prepare): µs since 2000-01-01 UTC.
    pub time: i64,
    pub xinfo: u32,
    pub db: Option<Oid>,
    pub tablespace: Option<Oid>,
    pub subxacts: Vec<u32>,
    /// Relation files removed when this record is replayed; for `Prepare`,
    /// those the transaction removes if it commits.
    pub dropped: Vec<RelFileLocator>,
    /// For `Prepare`, the files removed if the prepared transaction aborts.
    pub abort_dropped: Vec<RelFileLocator>,
    /// The prepared transaction's xid (COMMIT/ABORT PREPARED, PREPARE).
    pub twophase_xid: Option<u32>,
    pub gid: Option<String>,
    /// ASSIGNMENT: the top-level xid the subxacts belong to.
    pub top: Option<u32>,
}

impl XactRecord {
    fn empty(kind: XactKind) -> XactRecord {
        XactRecord {
            kind,
            time: 0,
            xinfo: 0,
            db: None,
            tablespace: None,
            subxacts: Vec::new(),
            dropped: Vec::new(),
            abort_dropped: Vec::new(),
            twophase_xid: None,
            gid: None,
            top: None,
        }
    }
}

/// Decodes a transaction record; `info` is the record's `xl_info`.
///
/// COMMIT/ABORT and their PREPARED forms are parsed completely in the order of
/// `ParseCommitRecord`/`ParseAbortRecord`; PREPARE's main data is the two-phase
/// state file (`ParsePrepareRecord`); ASSIGNMENT gives `top` and `subxacts`;
/// INVALIDATIONS (14+) only its kind. Other opcodes give `Other(opcode)`.
pub fn decode_xact(major: u32, info: u8, main_data: &[u8]) -> Result<XactRecord, DecodeError> {
    check_major(major)?;
    let op = info & XLOG_XACT_OPMASK;
    match op {
        XLOG_XACT_COMMIT => decode_commit_abort(major, info, XactKind::Commit, main_data),
        XLOG_XACT_COMMIT_PREPARED => decode_commit_abort(major, info, XactKind::CommitPrepared, main_data),
        XLOG_XACT_ABORT => decode_commit_abort(major, info, XactKind::Abort, main_data),
        XLOG_XACT_ABORT_PREPARED => decode_commit_abort(major, info, XactKind::AbortPrepared, main_data),
        XLOG_XACT_PREPARE => decode_prepare(major, main_data),
        XLOG_XACT_ASSIGNMENT => {
            // xl_xact_assignment { TransactionId xtop; int nsubxacts; TransactionId xsub[]; }
            let mut c = Cursor::new(main_data, "transaction assignment record");
            let top = c.u32("xtop")?;
            let n = c.count("nsubxacts", 4)?;
            let mut r = XactRecord::empty(XactKind::Assignment);
            r.top = Some(top);
            r.subxacts = c.u32s(n, "xsub")?;
            Ok(r)
        }
        // 0x60 is XLOG_XACT_INVALIDATIONS from 14 on; in 12 and 13 it is unused.
        XLOG_XACT_INVALIDATIONS if major >= 14 => Ok(XactRecord::empty(XactKind::Invalidations)),
        _ => Ok(XactRecord::empty(XactKind::Other(op))),
    }
}

fn decode_commit_abort(major: u32, info: u8, kind: XactKind, data: &[u8]) -> Result<XactRecord, DecodeError> {
    let is_commit = matches!(kind, XactKind::Commit | XactKind::CommitPrepared);
    let what = if is_commit { "transaction commit record" } else { "transaction abort record" };
    let mut c = Cursor::new(data, what);
    let mut r = XactRecord::empty(kind);
    r.time = c.i64("xact_time")?;
    if info & XLOG_XACT_HAS_INFO != 0 {
        r.xinfo = c.u32("xinfo")?;
    }
    let x = r.xinfo;
    if x & XACT_XINFO_HAS_DBINFO != 0 {
        r.db = Some(c.u32("dbinfo.dbId")?);
        r.tablespace = Some(c.u32("dbinfo.tsId")?);
    }
    if x & XACT_XINFO_HAS_SUBXACTS != 0 {
        let n = c.count("nsubxacts", 4)?;
        r.subxacts = c.u32s(n, "subxacts")?;
    }
    if x & XACT_XINFO_HAS_RELFILELOCATORS != 0 {
        let n = c.count("nrels", LOCATOR_LEN)?;
        r.dropped = c.locators(n, "dropped relation file")?;
    }
    // Dropped stats items exist from 15 on; their size changed in 18.
    if major >= 15 && x & XACT_XINFO_HAS_DROPPED_STATS != 0 {
        let size = stats_item_len(major);
        let n = c.count("dropped stats nitems", size)?;
        c.take(n * size, "dropped stats items")?;
    }
    // Abort records never carry invalidation messages (xl_xact_abort, 12 to 18).
    if is_commit && x & XACT_XINFO_HAS_INVALS != 0 {
        let n = c.count("invalidation nmsgs", INVAL_MSG_LEN)?;
        c.take(n * INVAL_MSG_LEN, "invalidation messages")?;
    }
    if x & XACT_XINFO_HAS_TWOPHASE != 0 {
        r.twophase_xid = Some(c.u32("twophase xid")?);
        if x & XACT_XINFO_HAS_GID != 0 {
            r.gid = Some(c_string(&mut c, "gid")?);
        }
    }
    if x & XACT_XINFO_HAS_ORIGIN != 0 {
        // xl_xact_origin { XLogRecPtr origin_lsn; TimestampTz origin_timestamp; }, stored unaligned.
        c.take(16, "replication origin")?;
    }
    Ok(r)
}

/// A NUL-terminated string starting at the cursor.
fn c_string(c: &mut Cursor<'_>, field: &str) -> Result<String, DecodeError> {
    let rest = c.rest();
    let Some(len) = rest.iter().position(|b| *b == 0) else {
        return Err(DecodeError::new(format!(
            "{}: {} at offset {} has no terminating NUL byte",
            c.what,
            field,
            c.pos()
        )));
    };
    let s = String::from_utf8_lossy(&rest[..len]).into_owned();
    c.take(len + 1, field)?;
    Ok(s)
}

/// PREPARE: the two-phase state file, `xl_xact_prepare` (TwoPhaseFileHeader
/// in 12) then MAXALIGNed parts: gid, subxacts, commit rels, abort rels,
/// (15+) commit stats, abort stats, then invalidations and resource-manager
/// state we do not need.
fn decode_prepare(major: u32, data: &[u8]) -> Result<XactRecord, DecodeError> {
    let mut c = Cursor::new(data, "transaction prepare record");
    let magic = c.u32("magic")?;
    if magic != TWOPHASE_MAGIC {
        return Err(DecodeError::new(format!(
            "transaction prepare record: magic 0x{magic:08X} is not the two-phase state magic 0x{TWOPHASE_MAGIC:08X}"
        )));
    }
    let _total_len = c.u32("total_len")?;
    let xid = c.u32("xid")?;
    let db = c.u32("database")?;
    let prepared_at = c.i64("prepared_at")?;
    let _owner = c.u32("owner")?;
    let nsub = c.u32("nsubxacts")? as i32;
    let ncommit = c.u32("ncommitrels")? as i32;
    let nabort = c.u32("nabortrels")? as i32;
    // ncommitstats/nabortstats were added in 15 (before ninvalmsgs): the header
    // is 72 bytes from 15 on, 64 bytes in 12 to 14.
    if major >= 15 {
        c.u32("ncommitstats")?;
        c.u32("nabortstats")?;
    }
    let _ninval = c.u32("ninvalmsgs")?;
    let _initfileinval = c.u8("initfileinval")?;
    c.u8("padding")?;
    let gidlen = c.u16("gidlen")? as usize;
    c.i64("origin_lsn")?;
    c.i64("origin_timestamp")?;
    let header_len = if major >= 15 { 72 } else { 64 };
    debug_assert_eq!(c.pos(), header_len);
    for (n, name) in [(nsub, "nsubxacts"), (ncommit, "ncommitrels"), (nabort, "nabortrels")] {
        if n < 0 {
            return Err(DecodeError::new(format!("transaction prepare record: {name} is negative ({n})")));
        }
    }
    let mut r = XactRecord::empty(XactKind::Prepare);
    r.time = prepared_at;
    r.db = Some(db);
    r.twophase_xid = Some(xid);
    // gid: gidlen bytes including the NUL.
    let gid = c.take(gidlen, "gid")?;
    let gid = &gid[..gid.iter().position(|b| *b == 0).unwrap_or(gid.len())];
    r.gid = Some(String::from_utf8_lossy(gid).into_owned());
    c.seek(header_len + maxalign(gidlen), "gid padding")?;
    let at = c.pos();
    r.subxacts = c.u32s(nsub as usize, "subxacts")?;
    c.seek(at + maxalign(nsub as usize * 4), "subxacts padding")?;
    let at = c.pos();
    r.dropped = c.locators(ncommit as usize, "commit relation file")?;
    c.seek(at + maxalign(ncommit as usize * LOCATOR_LEN), "commit rels padding")?;
    r.abort_dropped = c.locators(nabort as usize, "abort relation file")?;
    Ok(r)
}

// ---------------------------------------------------------------------------
// Storage (RM_SMGR)

const XLOG_SMGR_CREATE: u8 = 0x10;
const XLOG_SMGR_TRUNCATE: u8 = 0x20;
/// `XLR_INFO_MASK`: the low bits of xl_info belong to the record reader.
const XLR_INFO_MASK: u8 = 0x0F;

/// `SMGR_TRUNCATE_*` flags (storage_xlog.h, 12 to 18).
pub const SMGR_TRUNCATE_HEAP: u32 = 0x1;
pub const SMGR_TRUNCATE_VM: u32 = 0x2;
pub const SMGR_TRUNCATE_FSM: u32 = 0x4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Smgr {
    /// A relation file (fork) was created.
    Create {
        locator: RelFileLocator,
        fork: u32,
    },
    /// The relation's forks named by `flags` were cut to `block` blocks.
    Truncate {
        locator: RelFileLocator,
        block: u32,
        flags: u32,
    },
    Other(u8),
}

/// `xl_smgr_create { RelFileNode/RelFileLocator; ForkNumber }` and
/// `xl_smgr_truncate { BlockNumber blkno; RelFileNode/Locator; int flags }`,
/// the same in 12 to 18 (16 renamed RelFileNode to RelFileLocator).
pub fn decode_smgr(info: u8, main_data: &[u8]) -> Result<Smgr, DecodeError> {
    match info & !XLR_INFO_MASK {
        XLOG_SMGR_CREATE => {
            let mut c = Cursor::new(main_data, "storage create record");
            let locator = c.locator("relation file")?;
            let fork = c.u32("fork number")?;
            Ok(Smgr::Create { locator, fork })
        }
        XLOG_SMGR_TRUNCATE => {
            let mut c = Cursor::new(main_data, "storage truncate record");
            let block = c.u32("block number")?;
            let locator = c.locator("relation file")?;
            let flags = c.u32("flags")?;
            Ok(Smgr::Truncate { locator, block, flags })
        }
        op => Ok(Smgr::Other(op)),
    }
}

// ---------------------------------------------------------------------------
// Database (RM_DBASE)

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dbase {
    /// CREATE DATABASE. `wal_log` (15+ default strategy): the new database's
    /// files follow as ordinary WAL records, and the record does not name the
    /// template (`src_db`, `src_tablespace` are 0). Otherwise (FILE_COPY, the
    /// only strategy before 15) the template's directory was copied.
    Create {
        db: Oid,
        tablespace: Oid,
        src_db: Oid,
        src_tablespace: Oid,
        wal_log: bool,
    },
    /// DROP DATABASE: the database's directories in these tablespaces were removed.
    Drop {
        db: Oid,
        tablespaces: Vec<Oid>,
    },
    Other(u8),
}

/// Database records. Opcodes differ by version: 12-14 have CREATE 0x00 and
/// DROP 0x10; 15+ have CREATE_FILE_COPY 0x00, CREATE_WAL_LOG 0x10, DROP 0x20.
/// The drop record names one tablespace in 12 (`{db_id, tablespace_id}`) and
/// a counted list from 13 on (`{db_id, int ntablespaces, tablespace_ids[]}`).
pub fn decode_dbase(major: u32, info: u8, main_data: &[u8]) -> Result<Dbase, DecodeError> {
    check_major(major)?;
    let op = info & !XLR_INFO_MASK;
    let create_copy = |d: &[u8]| -> Result<Dbase, DecodeError> {
        let mut c = Cursor::new(d, "database create record");
        Ok(Dbase::Create {
            db: c.u32("db_id")?,
            tablespace: c.u32("tablespace_id")?,
            src_db: c.u32("src_db_id")?,
            src_tablespace: c.u32("src_tablespace_id")?,
            wal_log: false,
        })
    };
    let drop = |d: &[u8]| -> Result<Dbase, DecodeError> {
        let mut c = Cursor::new(d, "database drop record");
        let db = c.u32("db_id")?;
        let tablespaces = if major == 12 {
            vec![c.u32("tablespace_id")?]
        } else {
            let n = c.count("ntablespaces", 4)?;
            c.u32s(n, "tablespace_ids")?
        };
        Ok(Dbase::Drop { db, tablespaces })
    };
    if major >= 15 {
        match op {
            0x00 => create_copy(main_data),
            0x10 => {
                let mut c = Cursor::new(main_data, "database create (wal_log) record");
                Ok(Dbase::Create {
                    db: c.u32("db_id")?,
                    tablespace: c.u32("tablespace_id")?,
                    src_db: 0,
                    src_tablespace: 0,
                    wal_log: true,
                })
            }
            0x20 => drop(main_data),
            op => Ok(Dbase::Other(op)),
        }
    } else {
        match op {
            0x00 => create_copy(main_data),
            0x10 => drop(main_data),
            op => Ok(Dbase::Other(op)),
        }
    }
}

// ---------------------------------------------------------------------------
// Relation map (RM_RELMAP)

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelmapUpdate {
    /// 0 for the shared map (`global/pg_filenode.map`).
    pub db: Oid,
    pub tablespace: Oid,
    /// (relation oid, file number) of every mapped catalog.
    pub map: Vec<(Oid, Oid)>,
}

/// `xl_relmap_update { Oid dbid; Oid tsid; int32 nbytes; char data[] }` (12 to
/// 18) with a whole `pg_filenode.map` as data; see [`heap::parse_relmap`].
pub fn decode_relmap(info: u8, main_data: &[u8]) -> Result<RelmapUpdate, DecodeError> {
    let op = info & !XLR_INFO_MASK;
    if op != 0x00 {
        return Err(DecodeError::new(format!(
            "relation map record: opcode 0x{op:02X} is not XLOG_RELMAP_UPDATE (0x00), the only one PostgreSQL 12 to 18 write"
        )));
    }
    let mut c = Cursor::new(main_data, "relation map update record");
    let db = c.u32("dbid")?;
    let tablespace = c.u32("tsid")?;
    let n = c.count("nbytes", 1)?;
    let map = heap::parse_relmap(c.take(n, "map data")?)
        .map_err(|e| DecodeError::new(format!("relation map update record: {}", e.reason)))?;
    Ok(RelmapUpdate { db, tablespace, map })
}

// ---------------------------------------------------------------------------
// Heap (RM_HEAP, RM_HEAP2)

/// `XLOG_HEAP_*` opcodes (xl_info & `XLOG_HEAP_OPMASK` 0x70), 12 to 18.
const XLOG_HEAP_INSERT: u8 = 0x00;
const XLOG_HEAP_DELETE: u8 = 0x10;
const XLOG_HEAP_UPDATE: u8 = 0x20;
const XLOG_HEAP_TRUNCATE: u8 = 0x30;
const XLOG_HEAP_HOT_UPDATE: u8 = 0x40;
const XLOG_HEAP_INPLACE: u8 = 0x70;
const XLOG_HEAP_OPMASK: u8 = 0x70;
/// The page was (re)initialised by this record: for MULTI_INSERT the
/// offsets are then implicit (1, 2, ...).
pub const XLOG_HEAP_INIT_PAGE: u8 = 0x80;
/// `XLOG_HEAP2_MULTI_INSERT`, 12 to 18.
const XLOG_HEAP2_MULTI_INSERT: u8 = 0x50;

/// `XLH_UPDATE_*` flags (heapam_xlog.h, 12 to 18).
pub const XLH_UPDATE_CONTAINS_OLD_TUPLE: u8 = 1 << 2;
pub const XLH_UPDATE_CONTAINS_OLD_KEY: u8 = 1 << 3;
pub const XLH_UPDATE_CONTAINS_NEW_TUPLE: u8 = 1 << 4;
pub const XLH_UPDATE_PREFIX_FROM_OLD: u8 = 1 << 5;
pub const XLH_UPDATE_SUFFIX_FROM_OLD: u8 = 1 << 6;
/// `XLH_TRUNCATE_*` flags.
pub const XLH_TRUNCATE_CASCADE: u8 = 1 << 0;
pub const XLH_TRUNCATE_RESTART_SEQS: u8 = 1 << 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeapOp {
    Insert {
        offnum: u16,
        flags: u8,
    },
    Update {
        hot: bool,
        old_offnum: u16,
        new_offnum: u16,
        flags: u8,
        old_xmax: u32,
        new_xmax: u32,
    },
    Delete {
        offnum: u16,
        xmax: u32,
    },
    /// In-place update (`pg_class` statistics, `relfrozenxid`, ...): the
    /// tuple's user data is overwritten, same length.
    Inplace {
        offnum: u16,
    },
    /// TRUNCATE of these relations (written only with `wal_level=logical`;
    /// the files themselves are replaced through storage records).
    Truncate {
        db: Oid,
        flags: u8,
        relids: Vec<Oid>,
    },
    Other(u8),
}

/// Decodes the main data of a heap record. Layouts (12 to 18):
/// `xl_heap_insert {offnum u16; flags u8}`,
/// `xl_heap_delete {xmax u32; offnum u16; infobits u8; flags u8}`,
/// `xl_heap_update {old_xmax u32; old_offnum u16; old_infobits u8; flags u8; new_xmax u32; new_offnum u16}`,
/// `xl_heap_truncate {dbId u32; nrelids u32; flags u8; (pad) relids u32[] @12}`,
/// `xl_heap_inplace {offnum u16}` (18 appends dbId, tsId, invalidations: not needed).
pub fn decode_heap(major: u32, info: u8, main_data: &[u8]) -> Result<HeapOp, DecodeError> {
    check_major(major)?;
    let op = info & XLOG_HEAP_OPMASK;
    match op {
        XLOG_HEAP_INSERT => {
            let mut c = Cursor::new(main_data, "heap insert record");
            Ok(HeapOp::Insert { offnum: c.u16("offnum")?, flags: c.u8("flags")? })
        }
        XLOG_HEAP_DELETE => {
            let mut c = Cursor::new(main_data, "heap delete record");
            let xmax = c.u32("xmax")?;
            let offnum = c.u16("offnum")?;
            Ok(HeapOp::Delete { offnum, xmax })
        }
        XLOG_HEAP_UPDATE | XLOG_HEAP_HOT_UPDATE => {
            let mut c = Cursor::new(main_data, "heap update record");
            let old_xmax = c.u32("old_xmax")?;
            let old_offnum = c.u16("old_offnum")?;
            c.u8("old_infobits_set")?;
            let flags = c.u8("flags")?;
            let new_xmax = c.u32("new_xmax")?;
            let new_offnum = c.u16("new_offnum")?;
            Ok(HeapOp::Update { hot: op == XLOG_HEAP_HOT_UPDATE, old_offnum, new_offnum, flags, old_xmax, new_xmax })
        }
        XLOG_HEAP_TRUNCATE => {
            let mut c = Cursor::new(main_data, "heap truncate record");
            let db = c.u32("dbId")?;
            let n = c.u32("nrelids")? as usize;
            let flags = c.u8("flags")?;
            c.seek(12, "padding before relids")?;
            if n.saturating_mul(4) > c.rest().len() {
                return Err(DecodeError::new(format!(
                    "heap truncate record: nrelids is {n}, but only {} bytes follow",
                    c.rest().len()
                )));
            }
            Ok(HeapOp::Truncate { db, flags, relids: c.u32s(n, "relids")? })
        }
        XLOG_HEAP_INPLACE => {
            let mut c = Cursor::new(main_data, "heap inplace record");
            Ok(HeapOp::Inplace { offnum: c.u16("offnum")? })
        }
        op => Ok(HeapOp::Other(op)),
    }
}

/// A heap tuple as a record logs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoggedTuple<'a> {
    pub offnum: u16,
    pub infomask2: u16,
    pub infomask: u16,
    /// `t_hoff`; 0 for INPLACE, which logs only the user data (the header and
    /// null bitmap on the page stay as they are).
    pub hoff: u8,
    /// The null bitmap and padding between the 23-byte header and `t_hoff`.
    pub bitmap: &'a [u8],
    /// UPDATE: how many leading / trailing bytes of the user data are the
    /// old tuple's (not logged).
    pub prefix_len: u16,
    pub suffix_len: u16,
    /// The logged user data (after `t_hoff`; without prefix and suffix).
    pub data: &'a [u8],
}

/// `SizeofHeapTupleHeader`.
const TUPLE_HEADER_LEN: usize = heap::TUPLE_HEADER_LEN;

/// Splits "bitmap [+ padding] + data" (what follows the 23-byte header).
fn split_bitmap<'a>(what: &str, hoff: u8, body: &'a [u8]) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let hoff = hoff as usize;
    if hoff < TUPLE_HEADER_LEN {
        return Err(DecodeError::new(format!(
            "{what}: t_hoff {hoff} is smaller than the {TUPLE_HEADER_LEN}-byte tuple header"
        )));
    }
    let bm = hoff - TUPLE_HEADER_LEN;
    if bm > body.len() {
        return Err(DecodeError::new(format!(
            "{what}: t_hoff {hoff} puts the null bitmap past the {} logged tuple bytes",
            body.len()
        )));
    }
    Ok(body.split_at(bm))
}

/// The new tuple an INSERT, UPDATE/HOT_UPDATE or INPLACE record carries in
/// block 0's data. `Ok(None)` when block 0 has no data (its full-page image
/// holds the tuple) or the operation logs no tuple (DELETE, TRUNCATE, ...).
///
/// INSERT (log_heap_insert): `xl_heap_header {infomask2 u16; infomask u16;
/// hoff u8}` then the tuple from byte 23 on. UPDATE (log_heap_update): a u16
/// prefix length if PREFIX_FROM_OLD, a u16 suffix length if SUFFIX_FROM_OLD,
/// `xl_heap_header`, the bitmap, then the user data between prefix and
/// suffix. INPLACE: the user data only. The same in 12 to 18.
pub fn heap_logged_tuple<'a>(op: &HeapOp, block0_data: &'a [u8]) -> Result<Option<LoggedTuple<'a>>, DecodeError> {
    if block0_data.is_empty() {
        return Ok(None);
    }
    match *op {
        HeapOp::Insert { offnum, .. } => {
            let what = "heap insert record";
            let mut c = Cursor::new(block0_data, what);
            let infomask2 = c.u16("t_infomask2")?;
            let infomask = c.u16("t_infomask")?;
            let hoff = c.u8("t_hoff")?;
            let (bitmap, data) = split_bitmap(what, hoff, c.rest())?;
            Ok(Some(LoggedTuple { offnum, infomask2, infomask, hoff, bitmap, prefix_len: 0, suffix_len: 0, data }))
        }
        HeapOp::Update { new_offnum, flags, .. } => {
            let what = "heap update record";
            let mut c = Cursor::new(block0_data, what);
            let prefix_len = if flags & XLH_UPDATE_PREFIX_FROM_OLD != 0 { c.u16("prefix length")? } else { 0 };
            let suffix_len = if flags & XLH_UPDATE_SUFFIX_FROM_OLD != 0 { c.u16("suffix length")? } else { 0 };
            let infomask2 = c.u16("t_infomask2")?;
            let infomask = c.u16("t_infomask")?;
            let hoff = c.u8("t_hoff")?;
            let (bitmap, data) = split_bitmap(what, hoff, c.rest())?;
            Ok(Some(LoggedTuple {
                offnum: new_offnum,
                infomask2,
                infomask,
                hoff,
                bitmap,
                prefix_len,
                suffix_len,
                data,
            }))
        }
        HeapOp::Inplace { offnum } => Ok(Some(LoggedTuple {
            offnum,
            infomask2: 0,
            infomask: 0,
            hoff: 0,
            bitmap: &[],
            prefix_len: 0,
            suffix_len: 0,
            data: block0_data,
        })),
        HeapOp::Delete { .. } | HeapOp::Truncate { .. } | HeapOp::Other(_) => Ok(None),
    }
}

/// HEAP2 MULTI_INSERT (COPY, and from 14 catalog inserts into pg_attribute,
/// pg_depend, ...): every tuple with its offset. `Ok(None)` if `info` is not
/// MULTI_INSERT, or if block 0 has no data (its full-page image holds the
/// tuples).
///
/// Main data `xl_heap_multi_insert {flags u8; ntuples u16 @2; offsets u16[]
/// @4}`, offsets absent with XLOG_HEAP_INIT_PAGE (then 1..=ntuples). Block 0
/// data: per tuple, at a 2-byte boundary, `xl_multi_insert_tuple {datalen
/// u16; infomask2 u16; infomask u16; hoff u8}` then `datalen` bytes from byte
/// 23 of the tuple on. The same in 12 to 18.
pub fn decode_heap2_multi_insert<'a>(
    major: u32,
    info: u8,
    main_data: &[u8],
    block0_data: &'a [u8],
) -> Result<Option<Vec<LoggedTuple<'a>>>, DecodeError> {
    check_major(major)?;
    if info & XLOG_HEAP_OPMASK != XLOG_HEAP2_MULTI_INSERT || block0_data.is_empty() {
        return Ok(None);
    }
    let what = "heap multi-insert record";
    let mut m = Cursor::new(main_data, what);
    let _flags = m.u8("flags")?;
    m.u8("padding")?;
    let ntuples = m.u16("ntuples")? as usize;
    let offsets: Vec<u16> = if info & XLOG_HEAP_INIT_PAGE != 0 {
        (1..=ntuples as u16).collect()
    } else {
        let b = m.take(ntuples * 2, "offsets")?;
        b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect()
    };
    let mut c = Cursor::new(block0_data, what);
    let mut out = Vec::with_capacity(ntuples.min(block0_data.len() / 7 + 1));
    for offnum in offsets {
        // The block data starts at an even offset of PostgreSQL's aligned
        // buffer, so SHORTALIGN of the pointer is SHORTALIGN of our offset.
        let at = c.pos();
        c.seek(at + (at & 1), "tuple alignment padding")?;
        let datalen = c.u16("tuple datalen")? as usize;
        let infomask2 = c.u16("t_infomask2")?;
        let infomask = c.u16("t_infomask")?;
        let hoff = c.u8("t_hoff")?;
        let body = c.take(datalen, "tuple data")?;
        let (bitmap, data) = split_bitmap(what, hoff, body)?;
        out.push(LoggedTuple { offnum, infomask2, infomask, hoff, bitmap, prefix_len: 0, suffix_len: 0, data });
    }
    Ok(Some(out))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Builds little-endian records field by field, as the C structs lay them out.
    #[derive(Default)]
    struct B(Vec<u8>);
    impl B {
        fn u8(mut self, v: u8) -> B {
            self.0.push(v);
            self
        }
        fn u16(mut self, v: u16) -> B {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn u32(mut self, v: u32) -> B {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn i64(mut self, v: i64) -> B {
            self.0.extend_from_slice(&v.to_le_bytes());
            self
        }
        fn loc(self, l: RelFileLocator) -> B {
            self.u32(l.spc).u32(l.db).u32(l.rel)
        }
        fn bytes(mut self, b: &[u8]) -> B {
            self.0.extend_from_slice(b);
            self
        }
        fn pad_to(mut self, align: usize) -> B {
            while !self.0.len().is_multiple_of(align) {
                self.0.push(0);
            }
            self
        }
    }

    const T: i64 = 800_000_000_000_000;
    fn loc(rel: u32) -> RelFileLocator {
        RelFileLocator { spc: 1663, db: 5, rel }
    }

    /// Every strictly shorter prefix of a complete record must be refused.
    fn every_prefix_fails(full: &[u8], f: impl Fn(&[u8]) -> Result<(), DecodeError>) {
        for n in 0..full.len() {
            let e = f(&full[..n]).expect_err(&format!("prefix of {n} of {} bytes accepted", full.len()));
            assert!(["truncated", "follow", "NUL"].iter().any(|w| e.reason.contains(w)), "{n}: {}", e.reason);
        }
    }

    #[test]
    fn rmgr_names_as_pg_waldump() {
        assert_eq!(rmgr_name(RM_XLOG), "XLOG");
        assert_eq!(rmgr_name(RM_XACT), "Transaction");
        assert_eq!(rmgr_name(RM_SMGR), "Storage");
        assert_eq!(rmgr_name(RM_DBASE), "Database");
        assert_eq!(rmgr_name(RM_RELMAP), "RelMap");
        assert_eq!(rmgr_name(RM_HEAP2), "Heap2");
        assert_eq!(rmgr_name(RM_HEAP), "Heap");
        assert_eq!(rmgr_name(21), "LogicalMessage");
        assert_eq!(rmgr_name(22), "Unknown");
        assert_eq!(rmgr_name(200), "Custom");
    }

    /// A commit with every optional part, in ParseCommitRecord's order.
    fn full_commit(major: u32) -> Vec<u8> {
        let mut xinfo = XACT_XINFO_HAS_DBINFO
            | XACT_XINFO_HAS_SUBXACTS
            | XACT_XINFO_HAS_RELFILELOCATORS
            | XACT_XINFO_HAS_INVALS
            | XACT_XINFO_HAS_TWOPHASE
            | XACT_XINFO_HAS_GID
            | XACT_XINFO_HAS_ORIGIN
            | XACT_XINFO_HAS_AE_LOCKS;
        if major >= 15 {
            xinfo |= XACT_XINFO_HAS_DROPPED_STATS;
        }
        let mut b = B::default().i64(T).u32(xinfo).u32(5).u32(1663); // time, xinfo, dbinfo
        b = b.u32(2).u32(801).u32(802); // subxacts
        b = b.u32(2).loc(loc(16384)).loc(loc(16387)); // relfilenodes / relfilelocators
        if major >= 15 {
            // xl_xact_stats_items: nitems, then {kind, dboid, objoid} (15-17) or {kind, dboid, objid_lo, objid_hi} (18)
            b = b.u32(2);
            for _ in 0..2 {
                b = b.u32(2).u32(5).u32(16384);
                if major >= 18 {
                    b = b.u32(0);
                }
            }
        }
        b = b.u32(1).bytes(&[0xEE; 16]); // invalidations
        b = b.u32(777).bytes(b"my gid\0"); // twophase xid, gid
        b = b.i64(0x1_0000_0000).i64(T); // origin, unaligned
        b.0
    }

    #[test]
    fn commit_with_every_part_per_version() {
        for major in MIN_MAJOR..=MAX_MAJOR {
            let data = full_commit(major);
            let r = decode_xact(major, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, &data).unwrap();
            assert_eq!(r.kind, XactKind::CommitPrepared);
            assert_eq!(r.time, T);
            assert_eq!((r.db, r.tablespace), (Some(5), Some(1663)));
            assert_eq!(r.subxacts, vec![801, 802]);
            assert_eq!(r.dropped, vec![loc(16384), loc(16387)]);
            assert_eq!(r.twophase_xid, Some(777));
            assert_eq!(r.gid.as_deref(), Some("my gid"));
            every_prefix_fails(&data, |d| decode_xact(major, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, d).map(|_| ()));
        }
    }

    #[test]
    fn stats_items_are_12_bytes_until_17_and_16_in_18() {
        // A PG17 record read as PG18 runs past its end (and vice versa misreads): the size matters.
        let data = full_commit(17);
        assert!(decode_xact(18, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, &data).is_err());
        let data18 = full_commit(18);
        assert_eq!(
            decode_xact(18, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, &data18).unwrap().gid.as_deref(),
            Some("my gid")
        );
        assert_ne!(
            decode_xact(17, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, &data18).ok().and_then(|r| r.gid),
            Some("my gid".into())
        );
    }

    #[test]
    fn dropped_stats_bit_means_nothing_before_15() {
        // Bit 8 was unused in 12-14: nothing is skipped for it.
        let data =
            B::default().i64(T).u32(XACT_XINFO_HAS_DROPPED_STATS | XACT_XINFO_HAS_RELFILELOCATORS).u32(1).loc(loc(9)).0;
        let r = decode_xact(14, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, &data).unwrap();
        assert_eq!(r.dropped, vec![loc(9)]);
        assert!(decode_xact(15, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, &data).is_err());
    }

    #[test]
    fn minimal_commit_and_abort() {
        let data = B::default().i64(T).0;
        let r = decode_xact(16, XLOG_XACT_COMMIT, &data).unwrap();
        assert_eq!((r.kind, r.time, r.xinfo, r.db), (XactKind::Commit, T, 0, None));
        assert!(r.dropped.is_empty() && r.gid.is_none());
        assert_eq!(decode_xact(16, XLOG_XACT_ABORT, &data).unwrap().kind, XactKind::Abort);
        assert!(decode_xact(16, XLOG_XACT_COMMIT, &data[..7]).is_err());
        // Without XLOG_XACT_HAS_INFO, trailing bytes are not an xinfo.
        let r = decode_xact(16, XLOG_XACT_COMMIT, &B::default().i64(T).u32(0xFFFF_FFFF).0).unwrap();
        assert_eq!(r.xinfo, 0);
    }

    #[test]
    fn abort_skips_no_invalidations() {
        // xl_xact_abort has no invalidation messages even if the bit is set.
        let xinfo = XACT_XINFO_HAS_RELFILELOCATORS | XACT_XINFO_HAS_INVALS | XACT_XINFO_HAS_TWOPHASE;
        let data = B::default().i64(T).u32(xinfo).u32(1).loc(loc(16400)).u32(900).0;
        for major in [12, 15, 18] {
            let r = decode_xact(major, XLOG_XACT_ABORT_PREPARED | XLOG_XACT_HAS_INFO, &data).unwrap();
            assert_eq!(r.kind, XactKind::AbortPrepared);
            assert_eq!(r.dropped, vec![loc(16400)]);
            assert_eq!(r.twophase_xid, Some(900));
            assert!(decode_xact(major, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, &data).is_err());
        }
    }

    #[test]
    fn gid_without_nul_is_an_error() {
        let data = B::default().i64(T).u32(XACT_XINFO_HAS_TWOPHASE | XACT_XINFO_HAS_GID).u32(1).bytes(b"abc").0;
        let e = decode_xact(15, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, &data).unwrap_err();
        assert!(e.reason.contains("gid") && e.reason.contains("NUL"), "{e}");
    }

    #[test]
    fn absurd_counts_are_errors() {
        for n in [u32::MAX, 0x8000_0000, 1_000_000] {
            let data = B::default().i64(T).u32(XACT_XINFO_HAS_SUBXACTS).u32(n).0;
            let e = decode_xact(15, XLOG_XACT_COMMIT | XLOG_XACT_HAS_INFO, &data).unwrap_err();
            assert!(e.reason.contains("nsubxacts"), "{e}");
        }
    }

    /// The two-phase state file as StartPrepare writes it.
    fn prepare(major: u32) -> Vec<u8> {
        let gid = b"tx-drop\0"; // 8 bytes with the NUL
        let mut b = B::default().u32(TWOPHASE_MAGIC).u32(0).u32(742).u32(5).i64(T).u32(10);
        b = b.u32(3).u32(1).u32(1); // nsubxacts, ncommitrels, nabortrels
        if major >= 15 {
            b = b.u32(4).u32(0); // ncommitstats, nabortstats
        }
        b = b.u32(2).u8(1).u8(0).u16(gid.len() as u16).i64(0).i64(0); // ninvalmsgs, initfileinval, pad, gidlen, origin
        assert_eq!(b.0.len(), if major >= 15 { 72 } else { 64 });
        b = b.bytes(gid).pad_to(8);
        b = b.u32(743).u32(744).u32(745).pad_to(8); // 12 bytes of subxacts, padded to 16
        b = b.loc(loc(16500)).pad_to(8);
        b = b.loc(loc(16600)).pad_to(8);
        b = b.bytes(&[0xAB; 64]); // stats, invals, rmgr records: not read
        b.0
    }

    #[test]
    fn prepare_per_version() {
        for major in MIN_MAJOR..=MAX_MAJOR {
            let data = prepare(major);
            let r = decode_xact(major, XLOG_XACT_PREPARE, &data).unwrap();
            assert_eq!(r.kind, XactKind::Prepare);
            assert_eq!((r.time, r.db, r.twophase_xid), (T, Some(5), Some(742)));
            assert_eq!(r.gid.as_deref(), Some("tx-drop"));
            assert_eq!(r.subxacts, vec![743, 744, 745]);
            assert_eq!(r.dropped, vec![loc(16500)]);
            assert_eq!(r.abort_dropped, vec![loc(16600)]);
            let end = data.len() - 64 - 4; // the abort rel's last byte is needed
            every_prefix_fails(&data[..end], |d| decode_xact(major, XLOG_XACT_PREPARE, d).map(|_| ()));
        }
        // The 15 header is 8 bytes longer: a 14 state file read as 15 is misread, not silently right.
        let r = decode_xact(15, XLOG_XACT_PREPARE, &prepare(14));
        assert!(r.map(|r| r.gid != Some("tx-drop".into())).unwrap_or(true));
        let mut bad = prepare(15);
        bad[0] ^= 1;
        assert!(decode_xact(15, XLOG_XACT_PREPARE, &bad).unwrap_err().reason.contains("magic"));
    }

    #[test]
    fn assignment_and_invalidations() {
        let data = B::default().u32(600).u32(2).u32(601).u32(602).0;
        let r = decode_xact(13, XLOG_XACT_ASSIGNMENT, &data).unwrap();
        assert_eq!(
            (r.kind, r.top, r.subxacts.clone(), r.twophase_xid),
            (XactKind::Assignment, Some(600), vec![601, 602], None)
        );
        every_prefix_fails(&data, |d| decode_xact(13, XLOG_XACT_ASSIGNMENT, d).map(|_| ()));
        assert_eq!(decode_xact(14, 0x60, &[]).unwrap().kind, XactKind::Invalidations);
        assert_eq!(decode_xact(13, 0x60, &[]).unwrap().kind, XactKind::Other(0x60));
        assert_eq!(decode_xact(18, 0x70, &[]).unwrap().kind, XactKind::Other(0x70));
    }

    #[test]
    fn unknown_versions_are_refused() {
        for major in [0, 11, 19] {
            let e = decode_xact(major, 0, &B::default().i64(T).0).unwrap_err();
            assert!(e.reason.contains(&format!("PostgreSQL {major} ")), "{e}");
            assert!(decode_heap(major, 0, &[0; 3]).is_err());
            assert!(decode_dbase(major, 0, &[0; 16]).is_err());
        }
    }

    #[test]
    fn smgr_create_and_truncate() {
        let create = B::default().loc(loc(16384)).u32(0).0;
        assert_eq!(decode_smgr(0x10, &create).unwrap(), Smgr::Create { locator: loc(16384), fork: 0 });
        every_prefix_fails(&create, |d| decode_smgr(0x10, d).map(|_| ()));
        let trunc = B::default().u32(0).loc(loc(16384)).u32(SMGR_TRUNCATE_HEAP | SMGR_TRUNCATE_FSM).0;
        assert_eq!(
            decode_smgr(0x20 | 0x01, &trunc).unwrap(),
            Smgr::Truncate { locator: loc(16384), block: 0, flags: 5 }
        );
        every_prefix_fails(&trunc, |d| decode_smgr(0x20, d).map(|_| ()));
        assert_eq!(decode_smgr(0x30, &[]).unwrap(), Smgr::Other(0x30));
    }

    #[test]
    fn dbase_opcodes_and_drop_layouts_per_version() {
        let copy = B::default().u32(16390).u32(1663).u32(1).u32(1663).0;
        let created = Dbase::Create { db: 16390, tablespace: 1663, src_db: 1, src_tablespace: 1663, wal_log: false };
        for major in MIN_MAJOR..=MAX_MAJOR {
            assert_eq!(decode_dbase(major, 0x00, &copy).unwrap(), created);
        }
        // 12: one tablespace per drop record.
        let drop12 = B::default().u32(16390).u32(1663).0;
        assert_eq!(decode_dbase(12, 0x10, &drop12).unwrap(), Dbase::Drop { db: 16390, tablespaces: vec![1663] });
        // 13+: a counted list; 0x10 in 13-14, 0x20 in 15+.
        let drop = B::default().u32(16390).u32(2).u32(1663).u32(16400).0;
        let dropped = Dbase::Drop { db: 16390, tablespaces: vec![1663, 16400] };
        assert_eq!(decode_dbase(13, 0x10, &drop).unwrap(), dropped);
        assert_eq!(decode_dbase(14, 0x10, &drop).unwrap(), dropped);
        assert_eq!(decode_dbase(15, 0x20, &drop).unwrap(), dropped);
        assert_eq!(decode_dbase(18, 0x20, &drop).unwrap(), dropped);
        assert_eq!(decode_dbase(14, 0x20, &drop).unwrap(), Dbase::Other(0x20));
        every_prefix_fails(&drop, |d| decode_dbase(17, 0x20, d).map(|_| ()));
        // 15+: 0x10 is CREATE with the WAL_LOG strategy.
        let wal_log = B::default().u32(16390).u32(1663).0;
        assert_eq!(
            decode_dbase(15, 0x10, &wal_log).unwrap(),
            Dbase::Create { db: 16390, tablespace: 1663, src_db: 0, src_tablespace: 0, wal_log: true }
        );
        let e = decode_dbase(16, 0x20, &B::default().u32(1).u32(u32::MAX).0).unwrap_err();
        assert!(e.reason.contains("ntablespaces"), "{e}");
    }

    pub(crate) fn relmap_bytes(size: usize, maps: &[(u32, u32)]) -> Vec<u8> {
        let max = if size == 512 { 62 } else { 64 };
        let mut b = B::default().u32(0x592717).u32(maps.len() as u32);
        for i in 0..max {
            let (o, f) = maps.get(i).copied().unwrap_or((0, 0));
            b = b.u32(o).u32(f);
        }
        let crc = crc32c::crc32c(&b.0);
        b = b.u32(crc);
        b.0.resize(size, 0);
        b.0
    }

    #[test]
    fn relmap_update_record() {
        for size in [512, 524] {
            let map = relmap_bytes(size, &[(1259, 1259), (1249, 16500)]);
            let data = B::default().u32(5).u32(1663).u32(size as u32).bytes(&map).0;
            let r = decode_relmap(0x00, &data).unwrap();
            assert_eq!(r, RelmapUpdate { db: 5, tablespace: 1663, map: vec![(1259, 1259), (1249, 16500)] });
            every_prefix_fails(&data, |d| decode_relmap(0, d).map(|_| ()));
        }
        assert!(decode_relmap(0x10, &[]).unwrap_err().reason.contains("XLOG_RELMAP_UPDATE"));
    }

    fn insert_block(hoff: u8, bitmap: &[u8], user: &[u8]) -> Vec<u8> {
        B::default().u16(3).u16(0x0802).u8(hoff).bytes(bitmap).bytes(user).0
    }

    #[test]
    fn heap_insert_and_its_tuple() {
        let main = B::default().u16(7).u8(0).0;
        let op = decode_heap(15, XLOG_HEAP_INIT_PAGE, &main).unwrap();
        assert_eq!(op, HeapOp::Insert { offnum: 7, flags: 0 });
        every_prefix_fails(&main, |d| decode_heap(15, 0, d).map(|_| ()));
        let block = insert_block(24, &[0b011], b"user data");
        let t = heap_logged_tuple(&op, &block).unwrap().unwrap();
        assert_eq!((t.offnum, t.infomask2, t.infomask, t.hoff), (7, 3, 0x0802, 24));
        assert_eq!((t.bitmap, t.data, t.prefix_len, t.suffix_len), (&[3u8][..], &b"user data"[..], 0, 0));
        // A full-page image without data: the tuple is in the image.
        assert_eq!(heap_logged_tuple(&op, &[]).unwrap(), None);
        // t_hoff smaller than the header, or past the logged bytes.
        assert!(heap_logged_tuple(&op, &insert_block(22, &[], b"x")).unwrap_err().reason.contains("t_hoff"));
        assert!(heap_logged_tuple(&op, &insert_block(40, &[], b"x")).unwrap_err().reason.contains("t_hoff"));
        assert!(heap_logged_tuple(&op, &block[..4]).is_err());
    }

    #[test]
    fn heap_update_with_prefix_and_suffix() {
        let main = B::default()
            .u32(700)
            .u16(3)
            .u8(0)
            .u8(XLH_UPDATE_PREFIX_FROM_OLD | XLH_UPDATE_SUFFIX_FROM_OLD)
            .u32(0)
            .u16(9)
            .0;
        let op = decode_heap(16, XLOG_HEAP_HOT_UPDATE, &main).unwrap();
        assert_eq!(
            op,
            HeapOp::Update { hot: true, old_offnum: 3, new_offnum: 9, flags: 0x60, old_xmax: 700, new_xmax: 0 }
        );
        every_prefix_fails(&main, |d| decode_heap(16, XLOG_HEAP_UPDATE, d).map(|_| ()));
        let block = B::default().u16(70).u16(40).bytes(&insert_block(24, &[0], b"middle")).0;
        let t = heap_logged_tuple(&op, &block).unwrap().unwrap();
        assert_eq!((t.offnum, t.prefix_len, t.suffix_len, t.hoff, t.data), (9, 70, 40, 24, &b"middle"[..]));
        // Only a suffix: one u16.
        let op = HeapOp::Update {
            hot: false,
            old_offnum: 3,
            new_offnum: 4,
            flags: XLH_UPDATE_SUFFIX_FROM_OLD,
            old_xmax: 1,
            new_xmax: 0,
        };
        let block = B::default().u16(12).bytes(&insert_block(24, &[0], b"head")).0;
        let t = heap_logged_tuple(&op, &block).unwrap().unwrap();
        assert_eq!((t.prefix_len, t.suffix_len, t.data), (0, 12, &b"head"[..]));
        assert_eq!(
            decode_heap(16, XLOG_HEAP_UPDATE, &main).unwrap(),
            HeapOp::Update { hot: false, old_offnum: 3, new_offnum: 9, flags: 0x60, old_xmax: 700, new_xmax: 0 }
        );
    }

    #[test]
    fn heap_delete_truncate_inplace() {
        let del = B::default().u32(800).u16(5).u8(0).u8(0).0;
        assert_eq!(decode_heap(12, 0x10, &del).unwrap(), HeapOp::Delete { offnum: 5, xmax: 800 });
        assert_eq!(heap_logged_tuple(&HeapOp::Delete { offnum: 5, xmax: 800 }, b"x").unwrap(), None);
        let tr = B::default().u32(5).u32(2).u8(XLH_TRUNCATE_CASCADE).pad_to(4).u32(16384).u32(16390).0;
        assert_eq!(
            decode_heap(15, 0x30, &tr).unwrap(),
            HeapOp::Truncate { db: 5, flags: 1, relids: vec![16384, 16390] }
        );
        every_prefix_fails(&tr, |d| decode_heap(15, 0x30, d).map(|_| ()));
        // 18 appends dbId, tsId, relcacheInitFileInval and invalidations after offnum.
        let inplace18 = B::default().u16(11).u16(0).u32(5).u32(1663).u8(0).pad_to(4).u32(0).0;
        let op = decode_heap(18, 0x70, &inplace18).unwrap();
        assert_eq!(op, HeapOp::Inplace { offnum: 11 });
        assert_eq!(decode_heap(12, 0x70, &[11, 0]).unwrap(), op);
        let t = heap_logged_tuple(&op, b"new user data").unwrap().unwrap();
        assert_eq!((t.offnum, t.hoff, t.data), (11, 0, &b"new user data"[..]));
        assert_eq!(decode_heap(15, 0x60, &[]).unwrap(), HeapOp::Other(0x60));
    }

    fn multi_block(tuples: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = B::default();
        for (hoff, body) in tuples {
            b = b.pad_to(2).u16(body.len() as u16).u16(2).u16(0x0800).u8(*hoff).bytes(body);
        }
        b.0
    }

    #[test]
    fn heap2_multi_insert() {
        // An odd datalen forces padding before the next xl_multi_insert_tuple.
        let block = multi_block(&[(24, b"\x00abcd"), (24, b"\x00ef")]);
        let main = B::default().u8(0).u8(0).u16(2).u16(4).u16(6).0;
        let ts = decode_heap2_multi_insert(14, 0x50, &main, &block).unwrap().unwrap();
        assert_eq!(ts.len(), 2);
        assert_eq!((ts[0].offnum, ts[0].hoff, ts[0].bitmap, ts[0].data), (4, 24, &[0u8][..], &b"abcd"[..]));
        assert_eq!((ts[1].offnum, ts[1].data, ts[1].infomask), (6, &b"ef"[..], 0x0800));
        // INIT_PAGE: no offsets in the main data, tuples from offset 1.
        let main_init = B::default().u8(0).u8(0).u16(2).0;
        let ts = decode_heap2_multi_insert(18, 0x50 | XLOG_HEAP_INIT_PAGE, &main_init, &block).unwrap().unwrap();
        assert_eq!((ts[0].offnum, ts[1].offnum), (1, 2));
        every_prefix_fails(&block, |d| {
            if d.is_empty() {
                return Err(DecodeError::new("truncated"));
            }
            decode_heap2_multi_insert(14, 0x50, &main, d).map(|_| ())
        });
        every_prefix_fails(&main, |d| decode_heap2_multi_insert(14, 0x50, d, &block).map(|_| ()));
        assert_eq!(decode_heap2_multi_insert(14, 0x10, &main, &block).unwrap(), None);
        assert_eq!(decode_heap2_multi_insert(14, 0x50, &main, &[]).unwrap(), None);
    }

    proptest! {
        #[test]
        fn no_decoder_panics(major in 10u32..20, info: u8, main in proptest::collection::vec(any::<u8>(), 0..200),
                             block in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_xact(major, info, &main);
            let _ = decode_smgr(info, &main);
            let _ = decode_dbase(major, info, &main);
            let _ = decode_relmap(info, &main);
            if let Ok(op) = decode_heap(major, info, &main) {
                let _ = heap_logged_tuple(&op, &block);
            }
            let _ = decode_heap2_multi_insert(major, info, &main, &block);
            let _ = rmgr_name(info);
        }

        /// Valid-looking headers with random counts and bodies.
        #[test]
        fn no_panic_on_plausible_records(major in 12u32..=18, xinfo in 0u32..512, counts in proptest::collection::vec(0u32..40, 4),
                                        tail in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut b = B::default().i64(T).u32(xinfo);
            for c in &counts { b = b.u32(*c); }
            let data = b.bytes(&tail).0;
            for info in [0x80u8, 0xA0, 0xB0, 0xC0] {
                let _ = decode_xact(major, info, &data);
            }
            let mut p = prepare(major);
            let n = p.len().min(tail.len());
            p[8..8 + n.min(60)].copy_from_slice(&tail[..n.min(60)]);
            let _ = decode_xact(major, 0x10, &p);
        }
    }
}
