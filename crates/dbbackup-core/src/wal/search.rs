//! `wal search`: find the accident. Streams the archived WAL on one
//! timeline's way from a base backup's start through the verified decode
//! path `wal fetch` uses, decodes its records
//! ([`dbbackup_format::walread`]) and hands them to the catalog-following
//! [`Tracker`], which starts from that backup's own `pg_class`,
//! `pg_namespace` and `pg_database` pages. No running copy of the cluster is
//! needed.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::mpsc;

use dbbackup_format::accident::{pg_time, Event, Tracker};
use dbbackup_format::manifest::{BackupStatus, FileEntry, Manifest};
use dbbackup_format::recovery::Target;
use dbbackup_format::walread::{ReadError, WalReader};
use dbbackup_format::{Lsn, SegmentSize, TimelineId, WalFileName, WalKind};

use crate::backup::{self, chain::Chain};
use crate::error::{Error, Result};
use crate::repo::Repository;
use crate::restore::{path_to, refuse_live_forks, segment_owner, unreachable_reason, Leg, TimelineChoice};
use crate::wal::catalog::{timelines, Catalog};
use crate::wal::{decode_verified, StoredWal};

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct SearchOptions {
    /// A table name, `schema.table`, matched as PostgreSQL folds an
    /// unquoted name (lower case) or exactly.
    pub table: Option<String>,
    pub database: Option<String>,
    pub since: Option<jiff::Timestamp>,
    pub until: Option<jiff::Timestamp>,
    /// `None`: the latest timeline (the one a restore follows by default).
    pub timeline: Option<TimelineChoice>,
    /// The base backup whose catalog names the tables, and where the search
    /// starts; `None`: the newest before `since`, or the oldest.
    pub base_backup: Option<String>,
}

/// One event, placed.
#[derive(Debug, Clone)]
pub struct Found {
    pub event: Event,
    pub timeline: TimelineId,
    pub time: Option<jiff::Timestamp>,
    /// The backup a restore to just before the event starts from.
    pub base_backup: Option<String>,
    /// `restore pitr` arguments that recover to just before the event
    /// (without the repository options and `--target-dir`).
    pub restore_args: Vec<String>,
    /// Why no backup can restore to just before it.
    pub no_restore: Option<String>,
}

/// What `wal search` found and what it read.
#[derive(Debug, Clone)]
pub struct SearchReport {
    pub events: Vec<Found>,
    /// The backup whose catalog named tables; the search started at its start.
    pub backup: String,
    pub from: Lsn,
    /// The end of the last record read.
    pub to: Lsn,
    pub timeline: TimelineId,
    pub segments: u64,
    pub records: u64,
    /// The newest transaction end in the WAL read: the archive ends there.
    pub last_xact: Option<jiff::Timestamp>,
    /// Things to know about the result (names that could not be followed).
    pub notes: Vec<String>,
}

impl SearchOptions {
    /// Whether event `f` is one the user asked for; `table` is
    /// [`SearchOptions::table`] parsed.
    fn matches(&self, table: Option<&TableName>, f: &Found) -> bool {
        if let Some(want) = table {
            let any = f.event.relations.iter().any(|r| match &r.class {
                Some(c) => {
                    std::iter::once(&c.name).chain(&r.former_names).any(|n| want.matches(r.schema.as_deref(), n))
                }
                None => false,
            });
            // A dropped database is found by its name too.
            let db = f.event.dropped_databases.iter().any(|(_, n)| n.as_deref().is_some_and(|n| want.matches(None, n)));
            if !any && !db {
                return false;
            }
        }
        if let Some(d) = &self.database {
            let names: Vec<&str> = std::iter::once(f.event.database.as_deref())
                .chain(f.event.dropped_databases.iter().map(|(_, n)| n.as_deref()))
                .flatten()
                .collect();
            if !names.iter().any(|n| n == d) {
                return false;
            }
        }
        match f.time {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t <= u),
            None => self.since.is_none() && self.until.is_none(),
        }
    }
}

/// A `--table` argument as PostgreSQL reads an identifier: `name`,
/// `schema.name`, either part in double quotes to keep its case and dots;
/// an unquoted part also matches its lower-case form (as `psql` folds it)
/// and itself exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableName {
    schema: Option<(String, bool)>,
    name: (String, bool),
}

impl TableName {
    /// Reads `s`: `name` or `schema.name`, with balanced quotes and no
    /// empty part (else says what is wrong).
    pub fn parse(s: &str) -> std::result::Result<TableName, String> {
        let mut parts: Vec<(String, bool)> = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut in_quotes = false;
        let mut chars = s.chars().peekable();
        let empty = || format!("{s:?} has an empty part: expected name or schema.name");
        while let Some(ch) = chars.next() {
            match ch {
                '"' if in_quotes && chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => {
                    in_quotes = !in_quotes;
                    quoted = true;
                }
                '.' if !in_quotes => {
                    if cur.is_empty() && !quoted {
                        return Err(empty());
                    }
                    parts.push((std::mem::take(&mut cur), quoted));
                    quoted = false;
                }
                c => cur.push(c),
            }
        }
        if in_quotes {
            return Err(format!("{s:?} has an unbalanced double quote: expected name, schema.name or \"Quoted Name\""));
        }
        if (cur.is_empty() && !quoted) || s.trim().is_empty() {
            return Err(empty());
        }
        if parts.len() > 1 {
            return Err(format!(
                "{s:?} has more than two parts: expected name or schema.name (with --database for the database)"
            ));
        }
        Ok(TableName { schema: parts.pop(), name: (cur, quoted) })
    }

    fn part_matches((want, quoted): &(String, bool), have: &str) -> bool {
        have == want || (!quoted && have == want.to_lowercase())
    }

    pub fn matches(&self, schema: Option<&str>, name: &str) -> bool {
        Self::part_matches(&self.name, name)
            && match (&self.schema, schema) {
                (None, _) => true,
                (Some(w), Some(s)) => Self::part_matches(w, s),
                (Some(_), None) => false,
            }
    }
}

/// Searches the archive.
pub fn search(repo: &Repository, opts: &SearchOptions) -> Result<SearchReport> {
    let cat = Catalog::scan(repo)?;
    let (tls, histories) = timelines(repo, &cat)?;
    let size = repo
        .segment_size()
        .ok_or_else(|| Error::not_found(format!("repository {} holds no WAL yet", repo.location())))?;
    let target_tl = match opts.timeline.unwrap_or(TimelineChoice::Latest) {
        TimelineChoice::Id(n) => {
            if !tls.iter().any(|t| t.timeline.0 == n) {
                let known: Vec<String> = tls.iter().map(|t| t.timeline.to_string()).collect();
                return Err(Error::not_found(format!(
                    "timeline {n} is not in the archive of repository {} (it holds timeline(s) {})",
                    repo.location(),
                    known.join(", ")
                )));
            }
            TimelineId(n)
        }
        TimelineChoice::Current => {
            return Err(Error::invalid("--timeline takes latest or a timeline number here".to_string()))
        }
        TimelineChoice::Latest => tls.iter().map(|t| t.timeline).max().unwrap_or(TimelineId(1)),
    };
    let table = opts.table.as_deref().map(TableName::parse).transpose().map_err(Error::invalid)?;
    let legs = path_to(target_tl, &histories)?;
    if opts.timeline.is_none() {
        // As restore: the latest timeline may be a restored copy's while
        // the primary goes on on another; searching one would miss the
        // other's accidents.
        refuse_live_forks(repo, &cat, &histories, &legs, size, "each is searched on its own")?;
    }
    let (all, _) = backup::list(repo)?;
    let on_way = |m: &Manifest| m.timeline.is_some_and(|t| legs.iter().any(|l| l.tli.0 == t));
    let usable: Vec<&Manifest> = all
        .iter()
        .filter(|m| m.status == BackupStatus::Complete && m.start_lsn.is_some() && on_way(m))
        .filter(|m| backup::chain::restorable(&all, m))
        .collect();
    let start_backup: &Manifest = match &opts.base_backup {
        Some(id) => {
            let m = backup::resolve(repo, id)?;
            let found = usable.iter().find(|u| u.id == m.id).copied();
            found.ok_or_else(|| {
                Error::invalid(format!(
                    "backup {} cannot start a search on timeline {target_tl}: it must be complete, with its whole chain, on the way to that timeline",
                    m.id
                ))
            })?
        }
        None => {
            let before_since = opts.since.and_then(|s| {
                usable
                    .iter()
                    .rev()
                    .find(|m| {
                        m.stop_time.as_deref().and_then(|t| t.parse::<jiff::Timestamp>().ok()).is_some_and(|t| t <= s)
                    })
                    .copied()
            });
            match before_since.or_else(|| usable.first().copied()) {
                Some(m) => m,
                None => {
                    return Err(Error::not_found(format!(
                        "repository {} has no complete backup on timeline {target_tl}'s way: wal search names tables from a base backup's catalog and reads the WAL after it; take one with `dbbackup backup base`",
                        repo.location()
                    )))
                }
            }
        }
    };
    let chain = Chain::from_list(&all, start_backup)?;
    let mut tracker = Tracker::new(start_backup.pg_version_major);
    let mut notes = Vec::new();
    load_catalog(repo, &chain, &mut tracker, &mut notes)?;

    let start = start_backup.start_lsn.expect("filtered on start_lsn");
    let segments = segments_on_way(&cat, &legs, size, start);
    if segments.is_empty() {
        return Err(Error::not_found(format!(
            "the archive has no WAL from backup {}'s start ({start}) on timeline {target_tl}'s way",
            start_backup.id
        )));
    }
    let want = size.segment_of(start);
    if segments[0].0.segment_no(size) != Some(want) {
        return Err(Error::not_found(format!(
            "segment {} (holding {start}, the start of backup {}) is missing from the archive: the search starts there; choose a later backup with --base-backup",
            WalFileName::segment(segment_owner(&legs, size, want), want, size),
            start_backup.id
        )));
    }
    let (events, to, records) = scan(repo, &segments, size, start, &mut tracker)?;
    notes.extend(tracker.notes());
    let last_xact = tracker.last_xact_time().and_then(pg_time);

    let placed = events
        .into_iter()
        .map(|e| place(e, &legs, &usable, target_tl))
        .filter(|f| opts.matches(table.as_ref(), f))
        .collect();
    Ok(SearchReport {
        events: placed,
        backup: start_backup.id.clone(),
        from: start,
        to,
        timeline: target_tl,
        segments: segments.len() as u64,
        records,
        last_xact,
        notes,
    })
}

/// Reads the catalogs the tracker starts from out of the backup (through
/// its chain, verified like a restore reads them).
fn load_catalog(repo: &Repository, chain: &Chain, tracker: &mut Tracker, notes: &mut Vec<String>) -> Result<()> {
    let m = chain.target();
    // Database directories: base/<db>/ and pg_tblspc/<spc>/<version>/<db>/.
    let mut dbs: Vec<(u32, String)> = Vec::new();
    for f in &m.files {
        if let Some(dir) = f.path.strip_suffix("/pg_filenode.map") {
            let db = if dir == "global" {
                0
            } else {
                dir.rsplit('/').next().and_then(|d| d.parse().ok()).unwrap_or(u32::MAX)
            };
            if db == u32::MAX {
                continue;
            }
            let bytes = read_all(repo, chain, f)?;
            tracker.load_relmap(db, &bytes).map_err(Error::integrity)?;
            dbs.push((db, dir.to_string()));
        }
    }
    let load =
        |tracker: &mut Tracker, notes: &mut Vec<String>, db: u32, dir: &str, file: u32, what: &str| -> Result<()> {
            let path = format!("{dir}/{file}");
            let Some(e) = chain.target_entry(&path) else {
                notes.push(format!("backup {} has no {path} ({what} of database {db}): its names are unknown", m.id));
                return Ok(());
            };
            let mut pages = PageFeeder { tracker, db, file, block: 0, buf: Vec::with_capacity(8192) };
            chain.read_file(repo, e, &mut pages)?;
            Ok(())
        };
    for (db, dir) in dbs.iter().filter(|(d, _)| *d != 0) {
        if let Some(f) = tracker.class_file(*db) {
            load(tracker, notes, *db, dir, f, "pg_class")?;
        }
        if let Some(f) = tracker.namespace_file(*db) {
            load(tracker, notes, *db, dir, f, "pg_namespace")?;
        }
    }
    if let Some(f) = tracker.database_file() {
        load(tracker, notes, 0, "global", f, "pg_database")?;
    }
    Ok(())
}

fn read_all(repo: &Repository, chain: &Chain, f: &FileEntry) -> Result<Vec<u8>> {
    let mut v = Vec::new();
    chain.read_file(repo, f, &mut v)?;
    Ok(v)
}

/// Feeds a catalog file to the tracker page by page as it is read.
struct PageFeeder<'a> {
    tracker: &'a mut Tracker,
    db: u32,
    file: u32,
    block: u32,
    buf: Vec<u8>,
}

impl Write for PageFeeder<'_> {
    fn write(&mut self, mut b: &[u8]) -> std::io::Result<usize> {
        let n = b.len();
        while !b.is_empty() {
            let take = (8192 - self.buf.len()).min(b.len());
            self.buf.extend_from_slice(&b[..take]);
            b = &b[take..];
            if self.buf.len() == 8192 {
                // A page torn by the online copy is one the WAL after the
                // backup's start rewrites whole (a full-page image): not
                // worth a note.
                if let Err(e) = self.tracker.load_page(self.db, self.file, self.block, &self.buf) {
                    tracing::debug!("backup catalog page not read: {e}");
                }
                self.block += 1;
                self.buf.clear();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The segments from `start` to the end of the archive on the way, each on
/// the timeline recovery reads it from (the newest leg begun at or before it).
fn segments_on_way(cat: &Catalog, legs: &[Leg], size: SegmentSize, start: Lsn) -> Vec<(WalFileName, StoredWal)> {
    let mut by_pos: BTreeMap<u64, &crate::wal::catalog::WalObject> = BTreeMap::new();
    for o in cat.objects.iter().filter(|o| o.wal.kind() == WalKind::Segment) {
        if let Some(q) = o.wal.segment_no(size) {
            if q >= size.segment_of(start) && segment_owner(legs, size, q) == o.wal.timeline() {
                by_pos.insert(q, o);
            }
        }
    }
    by_pos.into_values().map(|o| (o.wal, o.stored.clone())).collect()
}

enum Msg {
    Chunk(Vec<u8>),
    Done(String, Result<()>),
}

/// Sends decoded bytes on in 256 KiB chunks: the parser never holds more
/// than the channel's few chunks of a segment.
struct ChunkWriter<'a> {
    tx: &'a mpsc::SyncSender<Msg>,
    buf: Vec<u8>,
}

const CHUNK: usize = 256 << 10;

impl Write for ChunkWriter<'_> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK + 8192));
            self.tx
                .send(Msg::Chunk(chunk))
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the search stopped"))?;
        }
        Ok(())
    }
}

/// Decodes the segments on one thread and parses on this one. Events of a
/// segment count only once the segment verified.
fn scan(
    repo: &Repository,
    segments: &[(WalFileName, StoredWal)],
    size: SegmentSize,
    start: Lsn,
    tracker: &mut Tracker,
) -> Result<(Vec<Event>, Lsn, u64)> {
    let first = segments[0].0.start_lsn(size).expect("a segment");
    let mut reader = WalReader::new(size, first);
    let mut events = Vec::new();
    let mut end = start;
    let mut records = 0u64;
    std::thread::scope(|s| -> Result<()> {
        let (tx, rx) = mpsc::sync_channel::<Msg>(8);
        s.spawn(move || {
            let mut expected: Option<Lsn> = None;
            for (name, stored) in segments {
                let here = name.start_lsn(size).expect("a segment");
                if let Some(e) = expected {
                    if here != e {
                        let _ = tx.send(Msg::Done(
                            name.to_string(),
                            Err(Error::not_found(format!(
                                "segment {} (holding {e}, before {name}) is missing from the archive: the search cannot go past it",
                                WalFileName::segment(name.timeline(), size.segment_of(e), size)
                            ))),
                        ));
                        return;
                    }
                }
                expected = Some(Lsn(here.0 + u64::from(size.bytes())));
                let mut w = ChunkWriter { tx: &tx, buf: Vec::with_capacity(CHUNK + 8192) };
                let r = decode_verified(repo, stored, &mut w).and_then(|_| {
                    w.flush().map_err(|e| Error::io(e.to_string()))?;
                    Ok(())
                });
                let failed = r.is_err();
                if tx.send(Msg::Done(name.to_string(), r)).is_err() || failed {
                    return;
                }
            }
        });
        let last = segments.last().map(|(n, _)| n.to_string()).unwrap_or_default();
        let mut pending_end = false;
        for msg in rx {
            match msg {
                Msg::Chunk(c) => {
                    if pending_end {
                        continue;
                    }
                    let r = reader.feed(&c, &mut |rec| {
                        if rec.lsn < start {
                            return Ok(());
                        }
                        records += 1;
                        end = rec.end;
                        tracker.record(rec).map_err(Error::integrity)
                    });
                    match r {
                        Ok(()) => {}
                        Err(ReadError::Callback(e)) => return Err(e),
                        Err(ReadError::EndOfWal { lsn }) => {
                            // The written WAL ends here; only the last
                            // segment may end early.
                            pending_end = true;
                            end = end.max(lsn);
                        }
                        Err(ReadError::Corrupt { lsn, reason }) => {
                            return Err(Error::integrity(format!("WAL record at {lsn}: {reason}")))
                        }
                    }
                }
                Msg::Done(name, r) => {
                    r?;
                    events.extend(tracker.take_events());
                    if pending_end && name != last {
                        return Err(Error::integrity(format!(
                            "the WAL in {name} ends before the segment does (zeros at {end}), but later segments follow: the segment is damaged"
                        )));
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok((events, end, records))
}

/// The event's timeline, and the backup (of `usable`: complete, whole
/// chains, on the way) and arguments that restore to just before it.
fn place(event: Event, legs: &[Leg], usable: &[&Manifest], target_tl: TimelineId) -> Found {
    let timeline = legs.iter().rev().find(|l| l.begin <= event.lsn).map_or(target_tl, |l| l.tli);
    let time = pg_time(event.time);
    // DROP DATABASE removes the files before it commits: stop before it
    // began; everything else, before the commit.
    let stop = event.stop_before.unwrap_or(event.lsn);
    let reach = Target::Lsn(stop);
    let backup = usable
        .iter()
        .rev()
        .filter(|m| m.stop_lsn.is_some_and(|s| s <= stop))
        .find(|m| unreachable_reason(m, legs, &reach).is_none());
    let target = match event.stop_before {
        Some(l) => ["--target-lsn".to_string(), l.to_string()],
        None => ["--target-xid".to_string(), event.xid.to_string()],
    };
    let (base_backup, restore_args, no_restore) = match backup {
        Some(m) => (
            Some(m.id.clone()),
            ["--base-backup".to_string(), m.id.clone()]
                .into_iter()
                .chain(target)
                .chain(["--exclusive".to_string(), "--timeline".to_string(), target_tl.0.to_string()])
                .collect(),
            None,
        ),
        None => (
            None,
            Vec::new(),
            Some(format!(
                "no complete backup ends before {stop} on timeline {target_tl}'s way: no restore can stop before it"
            )),
        ),
    };
    Found { event, timeline, time, base_backup, restore_args, no_restore }
}
