//! Finding the accident: destructive transactions in decoded WAL, with the
//! names of what they destroyed.
//!
//! A [`Tracker`] starts from a base backup's catalogs (`pg_filenode.map`,
//! and the heap pages of `pg_class`, `pg_namespace` and `pg_database`, fed
//! with [`Tracker::load_relmap`] and [`Tracker::load_page`]) and follows the
//! WAL from the backup's start: every catalog row a record writes (the tuple
//! it carries, or the full-page image it holds) keeps the map from relation
//! file to table name current, so tables created after the backup are named
//! too. Catalog rows take effect when their transaction commits (subxacts
//! and prepared transactions included) and are dropped when it aborts.
//!
//! Events: a commit whose record lists dropped relation files (`DROP TABLE`,
//! `DROP SCHEMA ... CASCADE`, a dropped partition; `TRUNCATE`, which gives a
//! table a new, empty file and drops the old one), and `DROP DATABASE`.
//! Not events: aborted transactions; files created and dropped by the same
//! transaction; rewrites that fill the new file before committing (`VACUUM
//! FULL`, `CLUSTER`, `ALTER TABLE ... TYPE`, `REFRESH MATERIALIZED VIEW`,
//! and `TRUNCATE` followed by `INSERT` in one transaction, unless the WAL
//! says it was a `TRUNCATE`: `wal_level = logical` logs one).

use std::collections::{HashMap, HashSet};

use crate::heap::{self, PgClassRow, PG_CLASS_OID, PG_DATABASE_OID, PG_NAMESPACE_OID};
use crate::lsn::Lsn;
use crate::relfile::{Oid, RelFileLocator, GLOBAL_TABLESPACE};
use crate::walread::{BlockRef, Record};
use crate::walrmgr::{self, Dbase, HeapOp, Smgr, XactKind};

/// `(database, file number)`; database 0 for shared catalogs.
type FileKey = (Oid, Oid);

/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_UNIX: i64 = 946_684_800;

/// `DATCONNLIMIT_INVALID_DB`: a database `DROP DATABASE` began to remove
/// (PostgreSQL 16.1, 15.5, 14.10, 13.13, 12.17 and later).
const DATCONNLIMIT_INVALID_DB: i32 = -2;

/// `pg_database.datconnlimit` from a row's user data: after `datcollate` and
/// `datctype` (two `NameData`) in 12-14; after the one-byte
/// `datlocprovider`, `datistemplate`, `datallowconn` (and, 17+,
/// `dathasloginevt`) from 15 on, where the names became text at the end.
fn datconnlimit(major: u32, data: &[u8]) -> Option<i32> {
    let off = if major <= 14 { 208 } else { 80 };
    Some(i32::from_le_bytes(data.get(off..off + 4)?.try_into().ok()?))
}

/// A PostgreSQL `TimestampTz` (microseconds since 2000-01-01 UTC) as a time.
pub fn pg_time(us: i64) -> Option<jiff::Timestamp> {
    let unix_us = us.checked_add(PG_EPOCH_UNIX * 1_000_000)?;
    jiff::Timestamp::from_microsecond(unix_us).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CatalogKind {
    Class,
    Namespace,
    Database,
}

/// What the catalog said about a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassInfo {
    pub oid: Oid,
    pub name: String,
    pub namespace: Oid,
    pub relfilenode: Oid,
    /// `pg_class.relkind`: `r` table, `p` partitioned table, `i` index, `t`
    /// TOAST table, `S` sequence, `m` materialized view, ...
    pub relkind: u8,
}

/// `name` as SQL needs it written: in double quotes unless it is a plain
/// lower-case identifier (as PostgreSQL's `quote_ident`, keywords aside).
pub fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// What happened to one relation file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Dropped,
    Truncated,
}

/// One relation file an event removed, named when the catalog knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub locator: RelFileLocator,
    pub action: Action,
    pub class: Option<ClassInfo>,
    pub schema: Option<String>,
    /// Why the name is unknown (when `class` is `None`).
    pub unknown: Option<String>,
    /// Other names the relation had since the search started (renamed).
    pub former_names: Vec<String>,
}

impl Relation {
    /// `schema.name`, or the file when the name is unknown.
    pub fn display_name(&self) -> String {
        match (&self.class, &self.schema) {
            (Some(c), Some(s)) => format!("{}.{}", quote_ident(s), quote_ident(&c.name)),
            (Some(c), None) => format!("{} (schema oid {})", quote_ident(&c.name), c.namespace),
            (None, _) => format!("relation file {} (database oid {})", self.locator.rel, self.locator.db),
        }
    }

    /// Tables, partitions, materialized views and foreign tables: what a
    /// DBA calls "the table". Indexes, TOAST tables and sequences follow
    /// their table.
    pub fn is_table_like(&self) -> bool {
        self.class.as_ref().is_none_or(|c| matches!(c.relkind, b'r' | b'p' | b'm' | b'f'))
    }
}

/// A committed transaction that destroyed data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The commit record's LSN: recovery with `--target-xid xid --exclusive`
    /// stops just before it.
    pub lsn: Lsn,
    /// The record's end: `--target-lsn` here is just after the event.
    pub end: Lsn,
    pub xid: u32,
    /// Commit time, µs since 2000-01-01 UTC ([`pg_time`]).
    pub time: i64,
    /// The database the transaction ran in (0 when the record does not say).
    pub db: Oid,
    pub database: Option<String>,
    /// The GID of a prepared transaction (`COMMIT PREPARED`).
    pub gid: Option<String>,
    pub relations: Vec<Relation>,
    /// `DROP DATABASE`: the database's OID and name.
    pub dropped_databases: Vec<(Oid, Option<String>)>,
    /// Where recovery must stop (exclusive) to undo the event, when that is
    /// before the commit: `DROP DATABASE` removes the files before it commits.
    pub stop_before: Option<Lsn>,
}

/// A catalog row written by a transaction, applied when it commits.
#[derive(Debug, Clone)]
enum Row {
    Class(Oid, ClassInfo),
    Namespace(Oid, Oid, String),
    Database(Oid, String),
}

/// Follows the catalog through the WAL and collects [`Event`]s.
#[derive(Debug)]
pub struct Tracker {
    major: u32,
    /// `pg_filenode.map` per database (0: global): relation OID to file.
    relmaps: HashMap<Oid, HashMap<Oid, Oid>>,
    catalog_files: HashMap<FileKey, CatalogKind>,
    /// The user data of every catalog tuple seen, by place, so an UPDATE
    /// that logs only the changed middle of a row can be completed.
    tuples: HashMap<(Oid, Oid, u32, u16), Vec<u8>>,
    by_file: HashMap<FileKey, ClassInfo>,
    by_oid: HashMap<(Oid, Oid), ClassInfo>,
    namespaces: HashMap<(Oid, Oid), String>,
    databases: HashMap<Oid, String>,
    /// Every name a relation had (renames), by (database, OID).
    names: HashMap<(Oid, Oid), Vec<String>>,
    /// Catalog rows of transactions not yet committed, with a sequence
    /// number so subtransactions' rows apply in WAL order.
    pending: HashMap<u32, Vec<(u64, Row)>>,
    /// Relations a transaction created (inserted their `pg_class` row):
    /// (database, file at creation, OID).
    born: HashMap<u32, Vec<(Oid, Oid, Oid)>>,
    seq: u64,
    /// Main-fork files created since the start, and those of them that got
    /// data pages (a rewrite, not a `TRUNCATE`).
    created: HashSet<FileKey>,
    filled: HashSet<FileKey>,
    /// `XLOG_HEAP_TRUNCATE` (wal_level = logical): (database, table OIDs).
    truncates: HashMap<u32, Vec<(Oid, Vec<Oid>)>>,
    dropped_dbs: HashMap<u32, Vec<Oid>>,
    /// Where `DROP DATABASE` marked a database invalid (`datconnlimit = -2`,
    /// an in-place update without a transaction ID, before its files go).
    invalid_db: HashMap<Oid, Lsn>,
    /// The first record of each transaction still open.
    first_lsn: HashMap<u32, Lsn>,
    /// GIDs of prepared transactions, from their PREPARE records.
    gids: HashMap<u32, String>,
    events: Vec<Event>,
    notes: Vec<String>,
    unfollowed: u64,
    /// The newest commit or abort time seen: where the archive ends, in time.
    last_xact_time: Option<i64>,
}

impl Tracker {
    /// A tracker for WAL of PostgreSQL `major`.
    pub fn new(major: u32) -> Tracker {
        Tracker {
            major,
            relmaps: HashMap::new(),
            catalog_files: HashMap::new(),
            tuples: HashMap::new(),
            by_file: HashMap::new(),
            by_oid: HashMap::new(),
            namespaces: HashMap::new(),
            databases: HashMap::new(),
            names: HashMap::new(),
            pending: HashMap::new(),
            born: HashMap::new(),
            seq: 0,
            created: HashSet::new(),
            filled: HashSet::new(),
            truncates: HashMap::new(),
            dropped_dbs: HashMap::new(),
            gids: HashMap::new(),
            invalid_db: HashMap::new(),
            first_lsn: HashMap::new(),
            events: Vec::new(),
            notes: Vec::new(),
            unfollowed: 0,
            last_xact_time: None,
        }
    }

    /// A database's (0: global) `pg_filenode.map` from the base backup.
    pub fn load_relmap(&mut self, db: Oid, bytes: &[u8]) -> Result<(), String> {
        let map = heap::parse_relmap(bytes).map_err(|e| format!("pg_filenode.map of database {db}: {e}"))?;
        self.set_relmap(db, map);
        Ok(())
    }

    fn set_relmap(&mut self, db: Oid, map: Vec<(Oid, Oid)>) {
        let map: HashMap<Oid, Oid> = map.into_iter().collect();
        if db == 0 {
            if let Some(f) = map.get(&PG_DATABASE_OID) {
                self.catalog_files.insert((0, *f), CatalogKind::Database);
            }
        } else if let Some(f) = map.get(&PG_CLASS_OID) {
            self.catalog_files.insert((db, *f), CatalogKind::Class);
        }
        self.relmaps.insert(db, map);
    }

    /// The file number of `pg_class` in database `db` (from its map).
    pub fn class_file(&self, db: Oid) -> Option<Oid> {
        self.relmaps.get(&db)?.get(&PG_CLASS_OID).copied()
    }

    /// The file number of `pg_namespace` in `db`, once its `pg_class` pages
    /// are loaded.
    pub fn namespace_file(&self, db: Oid) -> Option<Oid> {
        self.by_oid.get(&(db, PG_NAMESPACE_OID)).map(|c| c.relfilenode).filter(|f| *f != 0)
    }

    /// The file number of the shared `pg_database` (global map, or any
    /// database's `pg_class` where it is not mapped).
    pub fn database_file(&self) -> Option<Oid> {
        if let Some(f) = self.relmaps.get(&0).and_then(|m| m.get(&PG_DATABASE_OID)) {
            return Some(*f);
        }
        self.by_oid
            .iter()
            .find(|((_, oid), c)| *oid == PG_DATABASE_OID && c.relfilenode != 0)
            .map(|(_, c)| c.relfilenode)
    }

    /// One 8 KiB page of a catalog file from the base backup (`db` 0 for
    /// the global `pg_database`). The backup is fuzzy: every row on the
    /// page counts, live rows first; the WAL replayed after fixes the rest.
    pub fn load_page(&mut self, db: Oid, file: Oid, block: u32, page: &[u8]) -> Result<(), String> {
        let Some(kind) = self.kind_of(db, file) else {
            return Err(format!("file {file} of database {db} is not a catalog this search reads"));
        };
        self.take_page(kind, (db, file), block, page, true)
            .map_err(|e| format!("block {block} of catalog file {file}: {e}"))
    }

    /// Every row of a catalog page: kept by place, and made known. From the
    /// backup (`from_backup`) a live row replaces what was known (a row some
    /// transaction deleted or replaced only fills a gap); from a full-page
    /// image every row only fills gaps (the record's own row is applied as
    /// its transaction's).
    fn take_page(
        &mut self,
        kind: CatalogKind,
        (db, file): FileKey,
        block: u32,
        page: &[u8],
        from_backup: bool,
    ) -> Result<(), heap::DecodeError> {
        for t in heap::page_tuples(page)? {
            self.tuples.insert((db, file, block, t.offnum), t.data.to_vec());
            let live = t.xmax == 0 || t.infomask & heap::HEAP_XMAX_INVALID != 0;
            if let Some(row) = self.parse_row(kind, db, t.data) {
                self.apply(row, from_backup && live);
            }
        }
        Ok(())
    }

    fn kind_of(&self, db: Oid, file: Oid) -> Option<CatalogKind> {
        self.catalog_files.get(&(db, file)).copied()
    }

    fn parse_row(&mut self, kind: CatalogKind, db: Oid, data: &[u8]) -> Option<Row> {
        match kind {
            CatalogKind::Class => {
                let r: PgClassRow = heap::pg_class_row(self.major, data).ok()?;
                let mut relfilenode = r.relfilenode;
                if relfilenode == 0 {
                    let map_db = if r.relisshared { 0 } else { db };
                    relfilenode = self.relmaps.get(&map_db).and_then(|m| m.get(&r.oid)).copied().unwrap_or(0);
                }
                if r.oid == PG_NAMESPACE_OID && relfilenode != 0 {
                    self.catalog_files.insert((db, relfilenode), CatalogKind::Namespace);
                }
                if r.oid == PG_DATABASE_OID && relfilenode != 0 {
                    self.catalog_files.insert((0, relfilenode), CatalogKind::Database);
                }
                Some(Row::Class(
                    db,
                    ClassInfo {
                        oid: r.oid,
                        name: r.relname,
                        namespace: r.relnamespace,
                        relfilenode,
                        relkind: r.relkind,
                    },
                ))
            }
            CatalogKind::Namespace => {
                let r = heap::pg_namespace_row(self.major, data).ok()?;
                Some(Row::Namespace(db, r.oid, r.name))
            }
            CatalogKind::Database => {
                let r = heap::pg_database_row(self.major, data).ok()?;
                Some(Row::Database(r.oid, r.name))
            }
        }
    }

    /// Makes a row known; `strong` replaces what was known, else it only
    /// fills a gap.
    fn apply(&mut self, row: Row, strong: bool) {
        match row {
            Row::Class(db, c) => {
                let names = self.names.entry((db, c.oid)).or_default();
                if !names.contains(&c.name) {
                    names.push(c.name.clone());
                }
                if c.relfilenode != 0 && (strong || !self.by_file.contains_key(&(db, c.relfilenode))) {
                    self.by_file.insert((db, c.relfilenode), c.clone());
                }
                if strong || !self.by_oid.contains_key(&(db, c.oid)) {
                    self.by_oid.insert((db, c.oid), c);
                }
            }
            Row::Namespace(db, oid, name) => {
                if strong || !self.namespaces.contains_key(&(db, oid)) {
                    self.namespaces.insert((db, oid), name);
                }
            }
            Row::Database(oid, name) => {
                if strong || !self.databases.contains_key(&oid) {
                    self.databases.insert(oid, name);
                }
            }
        }
    }

    /// Events found so far (oldest first), leaving none behind.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Things the search could not follow, once each (for the report).
    pub fn notes(&self) -> Vec<String> {
        let mut n = self.notes.clone();
        if self.unfollowed > 0 {
            n.push(format!(
                "{} catalog row update(s) in the WAL could not be followed (the row they changed was not seen): a table renamed or truncated there may be shown by an older name, or as dropped",
                self.unfollowed
            ));
        }
        n
    }

    /// Follows one record.
    pub fn record(&mut self, rec: &Record<'_>) -> Result<(), String> {
        let at = |e: walrmgr::DecodeError| format!("record at {}: {}", rec.lsn, e.reason);
        if rec.xid != 0 {
            self.first_lsn.entry(rec.xid).or_insert(rec.lsn);
        }
        // Full-page images of catalog pages first: the record's own change
        // is already in the image.
        for b in rec.blocks {
            if b.fork != 0 {
                continue;
            }
            let key = (b.locator.db, b.locator.rel);
            if self.created.contains(&key) && rec.rmid != walrmgr::RM_SMGR {
                self.filled.insert(key);
            }
            if let (Some(img), Some(kind)) = (&b.image, self.kind_of(key.0, key.1)) {
                let page = img.page().map_err(|e| format!("full-page image in record at {}: {e}", rec.lsn))?;
                self.image(kind, key, b.block, &page);
            }
        }
        match rec.rmid {
            walrmgr::RM_XACT => {
                let x = walrmgr::decode_xact(self.major, rec.info, rec.main_data).map_err(at)?;
                self.xact(rec, x);
            }
            walrmgr::RM_SMGR => {
                if let Smgr::Create { locator, fork: 0 } = walrmgr::decode_smgr(rec.info, rec.main_data).map_err(at)? {
                    self.created.insert((locator.db, locator.rel));
                }
            }
            walrmgr::RM_DBASE => match walrmgr::decode_dbase(self.major, rec.info, rec.main_data).map_err(at)? {
                Dbase::Create { db, src_db, .. } => self.copy_database(src_db, db),
                Dbase::Drop { db, .. } => self.dropped_dbs.entry(rec.xid).or_default().push(db),
                Dbase::Other(_) => {}
            },
            walrmgr::RM_RELMAP => {
                let u = walrmgr::decode_relmap(rec.info, rec.main_data).map_err(at)?;
                let db = if u.tablespace == GLOBAL_TABLESPACE { 0 } else { u.db };
                self.set_relmap(db, u.map);
            }
            walrmgr::RM_HEAP => {
                let op = walrmgr::decode_heap(self.major, rec.info, rec.main_data).map_err(at)?;
                if let HeapOp::Truncate { db, relids, .. } = op {
                    self.truncates.entry(rec.xid).or_default().push((db, relids));
                } else if let Some(b0) = rec.blocks.iter().find(|b| b.id == 0) {
                    if let Some(kind) = self.kind_of(b0.locator.db, b0.locator.rel).filter(|_| b0.fork == 0) {
                        self.catalog_write(rec, kind, b0, &op).map_err(at)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn image(&mut self, kind: CatalogKind, (db, file): FileKey, block: u32, page: &[u8]) {
        if self.take_page(kind, (db, file), block, page, false).is_err() {
            self.note(format!(
                "a full-page image of catalog file {file} (database {db}) block {block} could not be read"
            ));
        }
    }

    fn note(&mut self, n: String) {
        if !self.notes.contains(&n) {
            self.notes.push(n);
        }
    }

    /// An INSERT, UPDATE or in-place update of a catalog row.
    fn catalog_write(
        &mut self,
        rec: &Record<'_>,
        kind: CatalogKind,
        b0: &BlockRef<'_>,
        op: &HeapOp,
    ) -> Result<(), walrmgr::DecodeError> {
        let (db, file) = (b0.locator.db, b0.locator.rel);
        let (new_off, old) = match op {
            HeapOp::Insert { offnum, .. } => (*offnum, None),
            HeapOp::Update { old_offnum, new_offnum, .. } => {
                let old_block = rec.blocks.iter().find(|b| b.id == 1).map_or(b0.block, |b| b.block);
                (*new_offnum, Some((old_block, *old_offnum)))
            }
            HeapOp::Inplace { offnum } => (*offnum, None),
            _ => return Ok(()),
        };
        let logged = walrmgr::heap_logged_tuple(op, b0.data)?;
        let data: Vec<u8> = match logged {
            // Only a full-page image: the row is on the page `image` read.
            None => match self.tuples.get(&(db, file, b0.block, new_off)) {
                Some(d) => d.clone(),
                None => {
                    self.unfollowed += 1;
                    return Ok(());
                }
            },
            Some(t) if t.prefix_len == 0 && t.suffix_len == 0 => t.data.to_vec(),
            Some(t) => {
                let Some(old) = old.and_then(|(blk, off)| self.tuples.get(&(db, file, blk, off))) else {
                    self.unfollowed += 1;
                    return Ok(());
                };
                let (p, s) = (usize::from(t.prefix_len), usize::from(t.suffix_len));
                if p + s > old.len() {
                    self.unfollowed += 1;
                    return Ok(());
                }
                let mut d = Vec::with_capacity(p + t.data.len() + s);
                d.extend_from_slice(&old[..p]);
                d.extend_from_slice(t.data);
                d.extend_from_slice(&old[old.len() - s..]);
                d
            }
        };
        self.tuples.insert((db, file, b0.block, new_off), data.clone());
        let Some(row) = self.parse_row(kind, db, &data) else { return Ok(()) };
        if matches!(op, HeapOp::Inplace { .. }) {
            if let (CatalogKind::Database, Row::Database(oid, _)) = (kind, &row) {
                if datconnlimit(self.major, &data) == Some(DATCONNLIMIT_INVALID_DB) {
                    self.invalid_db.insert(*oid, rec.lsn);
                }
            }
            // Not transactional: it is the row as of now.
            self.apply(row, true);
            return Ok(());
        }
        if let (HeapOp::Insert { .. }, Row::Class(db, c)) = (op, &row) {
            self.born.entry(rec.xid).or_default().push((*db, c.relfilenode, c.oid));
        }
        self.seq += 1;
        self.pending.entry(rec.xid).or_default().push((self.seq, row));
        Ok(())
    }

    /// `CREATE DATABASE`: the new database starts as a copy of its
    /// template's catalog (file-copy strategy; the WAL-log strategy then
    /// also logs every page).
    fn copy_database(&mut self, src: Oid, dst: Oid) {
        if let Some(m) = self.relmaps.get(&src).cloned() {
            self.set_relmap(dst, m.into_iter().collect());
        }
        let files: Vec<_> =
            self.catalog_files.iter().filter(|((d, _), _)| *d == src).map(|((_, f), k)| (*f, *k)).collect();
        for (f, k) in files {
            self.catalog_files.insert((dst, f), k);
        }
        let tuples: Vec<_> = self
            .tuples
            .iter()
            .filter(|((d, ..), _)| *d == src)
            .map(|((_, f, b, o), v)| ((dst, *f, *b, *o), v.clone()))
            .collect();
        self.tuples.extend(tuples);
        let classes: Vec<_> = self.by_oid.iter().filter(|((d, _), _)| *d == src).map(|(_, c)| c.clone()).collect();
        for c in classes {
            self.apply(Row::Class(dst, c), false);
        }
        let ns: Vec<_> =
            self.namespaces.iter().filter(|((d, _), _)| *d == src).map(|((_, o), n)| (*o, n.clone())).collect();
        for (o, n) in ns {
            self.apply(Row::Namespace(dst, o, n), false);
        }
    }

    /// The newest transaction end (commit or abort) seen, µs since 2000.
    pub fn last_xact_time(&self) -> Option<i64> {
        self.last_xact_time
    }

    fn xact(&mut self, rec: &Record<'_>, x: walrmgr::XactRecord) {
        if matches!(x.kind, XactKind::Commit | XactKind::Abort | XactKind::CommitPrepared | XactKind::AbortPrepared) {
            self.last_xact_time = Some(x.time);
        }
        let top = match x.kind {
            XactKind::CommitPrepared | XactKind::AbortPrepared => x.twophase_xid.unwrap_or(rec.xid),
            XactKind::Commit | XactKind::Abort => rec.xid,
            // PREPARE keeps everything pending until COMMIT/ROLLBACK
            // PREPARED, whose record names the GID only with wal_level =
            // logical: remember it.
            XactKind::Prepare => {
                if let (Some(xid), Some(gid)) = (x.twophase_xid, x.gid) {
                    self.gids.insert(xid, gid);
                }
                return;
            }
            _ => return,
        };
        let mut xids = vec![top];
        xids.extend(x.subxacts.iter().copied());
        let committed = matches!(x.kind, XactKind::Commit | XactKind::CommitPrepared);
        let gid = x.gid.clone().or_else(|| self.gids.remove(&top));

        let mut rows: Vec<(u64, Row)> = xids.iter().filter_map(|x| self.pending.remove(x)).flatten().collect();
        let born: Vec<(Oid, Oid, Oid)> = xids.iter().filter_map(|x| self.born.remove(x)).flatten().collect();
        let born_file = |k: FileKey| born.iter().any(|(d, f, _)| (*d, *f) == k);
        let born_oid = |db: Oid, oid: Oid| born.iter().any(|(d, _, o)| (*d, *o) == (db, oid));
        let truncates: Vec<(Oid, Vec<Oid>)> = xids.iter().filter_map(|x| self.truncates.remove(x)).flatten().collect();
        let dropped_dbs: Vec<Oid> = xids.iter().filter_map(|x| self.dropped_dbs.remove(x)).flatten().collect();
        let first = xids.iter().filter_map(|x| self.first_lsn.remove(x)).min();
        if !committed {
            return;
        }
        rows.sort_by_key(|(s, _)| *s);
        for (_, row) in rows {
            self.apply(row, true);
        }

        let mut relations = Vec::new();
        // Files of indexes and TOAST tables that got a new one: truncated
        // with their table, or rebuilt by a rewrite; decided below.
        let mut renewed = Vec::new();
        for l in &x.dropped {
            let key = (l.db, l.rel);
            // Created by this very transaction: nothing committed is lost.
            if born_file(key) {
                continue;
            }
            let class = self.by_file.get(&key).cloned();
            // So for a file whose relation this transaction created: the
            // transient table of VACUUM FULL and CLUSTER ends up holding the
            // old file, and is dropped with it.
            if class.as_ref().is_some_and(|c| born_oid(l.db, c.oid)) {
                continue;
            }
            let Some(c) = class else {
                relations.push(Relation {
                    locator: *l,
                    action: Action::Dropped,
                    class: None,
                    schema: None,
                    unknown: Some(self.why_unknown(l)),
                    former_names: Vec::new(),
                });
                continue;
            };
            let logged_truncate = truncates.iter().any(|(db, oids)| *db == l.db && oids.contains(&c.oid));
            // Mapped catalogs (pg_class itself...) get new files through the
            // relation map, not their row.
            let mapped = self.relmaps.get(&l.db).or(self.relmaps.get(&0)).and_then(|m| m.get(&c.oid)).copied();
            let now = mapped.or_else(|| self.by_oid.get(&(l.db, c.oid)).map(|n| n.relfilenode));
            let schema = self.namespaces.get(&(l.db, c.namespace)).cloned();
            let former_names = self
                .names
                .get(&(l.db, c.oid))
                .map(|n| n.iter().filter(|n| **n != c.name).cloned().collect())
                .unwrap_or_default();
            let heap = matches!(c.relkind, b'r' | b'm' | b'p' | b'f');
            let rel = |action| Relation {
                locator: *l,
                action,
                class: Some(c.clone()),
                schema: schema.clone(),
                unknown: None,
                former_names,
            };
            match now {
                Some(new) if new != l.rel && new != 0 => {
                    if logged_truncate {
                        relations.push(rel(Action::Truncated));
                    } else if !heap {
                        renewed.push(rel(Action::Truncated));
                    } else if !self.filled.contains(&(l.db, new)) {
                        relations.push(rel(Action::Truncated));
                    }
                    // else a rewrite: the table got a new file with its data.
                }
                _ if logged_truncate => relations.push(rel(Action::Truncated)),
                _ => relations.push(rel(Action::Dropped)),
            }
        }
        // An index or TOAST table gets a new file both when its table is
        // truncated and when it is rewritten: it counts with a truncated one.
        if relations.iter().any(|r| r.action == Action::Truncated) {
            relations.extend(renewed);
        }
        relations.sort_by_key(|r| (r.action as u8, r.display_name()));
        for l in &x.dropped {
            self.created.remove(&(l.db, l.rel));
            self.filled.remove(&(l.db, l.rel));
        }
        if relations.is_empty() && dropped_dbs.is_empty() {
            return;
        }
        let db = x.db.or_else(|| x.dropped.first().map(|l| l.db)).unwrap_or(0);
        let dropped_databases = dropped_dbs.iter().map(|d| (*d, self.databases.get(d).cloned())).collect();
        // Before the database was marked invalid, else before the
        // transaction's first record.
        let stop_before = if dropped_dbs.is_empty() {
            None
        } else {
            dropped_dbs.iter().filter_map(|d| self.invalid_db.remove(d)).chain(first).min()
        };
        self.events.push(Event {
            lsn: rec.lsn,
            end: rec.end,
            xid: top,
            time: x.time,
            db,
            database: self.databases.get(&db).cloned(),
            gid,
            relations,
            dropped_databases,
            stop_before,
        });
    }

    fn why_unknown(&self, l: &RelFileLocator) -> String {
        if l.db != 0 && !self.relmaps.contains_key(&l.db) {
            format!("database {} is not in the base backup and its creation was not seen in the WAL searched", l.db)
        } else {
            "no catalog row in the base backup or the WAL searched names this file".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_time_is_microseconds_since_2000() {
        assert_eq!(pg_time(0).unwrap().to_string(), "2000-01-01T00:00:00Z");
        assert_eq!(pg_time(1_500_000).unwrap().to_string(), "2000-01-01T00:00:01.5Z");
        assert_eq!(pg_time(-1_000_000).unwrap().to_string(), "1999-12-31T23:59:59Z");
        assert!(pg_time(i64::MAX).is_none());
    }

    #[test]
    fn datconnlimit_by_version() {
        let mut row = vec![0u8; 240];
        row[208..212].copy_from_slice(&(-2i32).to_le_bytes());
        row[80..84].copy_from_slice(&7i32.to_le_bytes());
        for v in 12..=14 {
            assert_eq!(datconnlimit(v, &row), Some(DATCONNLIMIT_INVALID_DB));
        }
        for v in 15..=18 {
            assert_eq!(datconnlimit(v, &row), Some(7));
        }
        assert_eq!(datconnlimit(14, &row[..100]), None);
    }

    #[test]
    fn names_say_what_is_known() {
        let locator = RelFileLocator { spc: 1663, db: 5, rel: 16390 };
        let class = ClassInfo { oid: 16385, name: "orders".into(), namespace: 2200, relfilenode: 16390, relkind: b'r' };
        let known = Relation {
            locator,
            action: Action::Dropped,
            class: Some(class.clone()),
            schema: Some("public".into()),
            unknown: None,
            former_names: vec![],
        };
        assert_eq!(known.display_name(), "public.orders");
        let mixed =
            Relation { class: Some(ClassInfo { name: "Mixed\"Case".into(), ..class.clone() }), ..known.clone() };
        assert_eq!(mixed.display_name(), "public.\"Mixed\"\"Case\"");
        assert!(known.is_table_like());
        let no_schema = Relation { schema: None, ..known.clone() };
        assert_eq!(no_schema.display_name(), "orders (schema oid 2200)");
        let unknown = Relation { class: None, schema: None, unknown: Some("why".into()), ..known };
        assert_eq!(unknown.display_name(), "relation file 16390 (database oid 5)");
        let index = Relation { class: Some(ClassInfo { relkind: b'i', ..class }), ..unknown };
        assert!(!index.is_table_like());
    }

    #[test]
    fn an_empty_tracker_knows_nothing_and_records_nothing() {
        let mut t = Tracker::new(15);
        assert_eq!(t.class_file(5), None);
        assert!(t.load_page(5, 1259, 0, &[0u8; 8192]).is_err(), "not a catalog file it was told about");
        assert!(t.take_events().is_empty());
        assert!(t.notes().is_empty());
    }
}
