//! Prefetching fetch: `wal fetch --prefetch N` and its background worker.
//!
//! A call for segment NAME hands over `fetch/NAME` from the spool when the
//! worker has it there (a rename: it was fetched, decoded, verified and
//! fsynced before it got that name), else fetches NAME from the repository
//! exactly as `wal fetch` does, so "not archived" (exit 1) only ever comes
//! from the repository itself. Either way it then tells the worker where
//! recovery is (`fetch/want`) and starts one when none runs.
//!
//! The worker (`wal fetch-worker`, this same binary, detached) keeps the N
//! segments after `want` in the spool, on the timeline recovery follows
//! (the target timeline's history, as PostgreSQL picks a segment's
//! timeline), a few at a time. It stops at the first segment the
//! repository does not have (the end of the archive) and waits for the
//! next call. A segment it cannot fetch or verify gets a `NAME.error` file,
//! never a file under NAME: the call then fetches NAME itself and fails
//! with the repository's own error. It removes what recovery has passed,
//! and everything it spooled after [`IDLE_EXIT`] without a call.
//!
//! Never: a file under a segment's name that is not that segment, verified;
//! anything written into `pg_wal` but the destination PostgreSQL gave; a
//! spooled segment of another cluster or repository handed over (the part
//! is owned, see [`crate::spool`]; a call takes over a part left by
//! another owner, emptying it first).

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::BufWriter;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dbbackup_format::history::{timeline_of_segment, History};
use dbbackup_format::object::{wal_dir_for, ObjectName};
use dbbackup_format::{SegmentSize, TimelineId, WalFileName, WalKind};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::spool::{self, SpoolOwner};
use crate::wal::fetch::{fetch, Fetched};
use crate::wal::{decode_verified, find, StoredWal};

/// The spool part prefetched segments wait in.
pub const PART: &str = "fetch";
/// Where recovery is: the name of the segment PostgreSQL asked for last.
const WANT: &str = "want";
/// Held (flock) by the running worker for its whole life.
const LOCK: &str = "worker.lock";
/// The worker's stdout and stderr.
pub const LOG: &str = "worker.log";
/// Segments being written; never handed over, removed by the next worker.
const TEMP_PREFIX: &str = ".prefetch.";
const ERROR_SUFFIX: &str = ".error";
/// A worker without a call for this long removes what it spooled and exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(30);
/// How often the worker looks at `want` while nothing completes.
const POLL: Duration = Duration::from_millis(20);
/// Segments fetched at once: round trips to an object store overlap; more
/// would only compete with recovery for the CPU on decoding.
pub const MAX_JOBS: usize = 4;

/// The worker's command line: this program, with the calling command's
/// repository options (paths only: never a secret) and the prefetch settings.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    pub program: PathBuf,
    pub args: Vec<OsString>,
}

/// How a call prefetches.
#[derive(Debug, Clone)]
pub struct Prefetch {
    /// The spool directory (`--spool-dir`, or `dbbackup_spool` in the data
    /// directory); its `fetch/` part is used.
    pub spool_dir: PathBuf,
    pub worker: WorkerCommand,
}

/// Where a delivered segment came from.
#[derive(Debug, Clone)]
pub enum Delivered {
    /// Handed over from the spool (a rename).
    Spool { size: u64 },
    /// Fetched from the repository by this call.
    Repository(Fetched),
}

/// Whose spool part this repository's segments belong in: the cluster
/// the repository is bound to and the repository's ID. `None` for a
/// repository bound to no cluster (it holds no segment to prefetch).
pub fn owner_of(repo: &Repository) -> Option<SpoolOwner> {
    let id = repo.identity()?;
    Some(SpoolOwner { system_identifier: id.system_identifier.to_string(), repository_id: spool::repository_id(repo) })
}

/// `wal fetch NAME DEST --prefetch N`: NAME from the spool when the worker
/// has it, else from the repository as [`fetch`] does (same errors, same
/// "not found"); then the worker is told where recovery is and started
/// when none runs. Problems of the spool itself (it is only a cache) are
/// logged and fetching goes on without it.
pub fn fetch_prefetching(repo: &Repository, name: &str, dest: &Path, p: &Prefetch) -> Result<Delivered> {
    let wal = WalFileName::parse(name).map_err(|e| Error::invalid(e.to_string()))?;
    spool::check_dir(&p.spool_dir)?;
    // History files are small and asked for once; an unbound repository
    // has no segment (fetch says why).
    let (Some(size), Some(owner), WalKind::Segment) = (repo.segment_size(), owner_of(repo), wal.kind()) else {
        return fetch(repo, name, dest).map(Delivered::Repository);
    };
    let part = match spool::take_part(&p.spool_dir, PART, &owner) {
        Ok((part, None)) => part,
        Ok((part, Some(spool::TakenOver { previous }))) => {
            tracing::warn!(
                "spool {} held segments of {}: emptied it and took it over for cluster {} and repository {} (it is only a cache)",
                part.display(),
                match previous {
                    Some(o) => format!("cluster {} and repository {}", o.system_identifier, o.repository_id),
                    None => "an unknown owner (unreadable owner file)".into(),
                },
                owner.system_identifier,
                owner.repository_id
            );
            part
        }
        Err(e) => {
            tracing::warn!("{e}; fetching {name} without prefetching");
            return fetch(repo, name, dest).map(Delivered::Repository);
        }
    };
    match hand_over(&part, name, dest, size) {
        Ok(Some(size)) => {
            // After the hand-over: the worker removes what is before `want`.
            tell_worker(&part, name, &p.worker);
            return Ok(Delivered::Spool { size });
        }
        Ok(None) => {}
        Err(e) => tracing::warn!("{e}"),
    }
    // Recovery caught up with the worker: its fetch of NAME is under way,
    // and waiting for it costs less than fetching NAME a second time.
    if wait_for_worker(&part, name) {
        match hand_over(&part, name, dest, size) {
            Ok(Some(size)) => {
                tracing::debug!("waited for the prefetch worker's fetch of {name}");
                tell_worker(&part, name, &p.worker);
                return Ok(Delivered::Spool { size });
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("{e}"),
        }
    }
    if let Ok(why) = fs::read_to_string(part.join(format!("{name}{ERROR_SUFFIX}"))) {
        tracing::info!("the prefetch worker could not fetch {name} ({}); fetching it from the repository", why.trim());
    }
    // Before fetching: the worker gets the next ones meanwhile.
    tell_worker(&part, name, &p.worker);
    fetch(repo, name, dest).map(Delivered::Repository)
}

/// Moves `part/NAME` to `dest`; `None` when it is not there.
fn hand_over(part: &Path, name: &str, dest: &Path, size: SegmentSize) -> Result<Option<u64>> {
    let src = part.join(name);
    let md = match fs::symlink_metadata(&src) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot read spooled {}: {e}", src.display()))),
    };
    let want = u64::from(size.bytes());
    if !md.is_file() || md.len() != want {
        let _ = fs::remove_file(&src);
        return Err(Error::integrity(format!(
            "spooled {} is not a {want} byte segment ({} bytes): removed it; fetching {name} from the repository",
            src.display(),
            md.len()
        )));
    }
    match fs::rename(&src, dest) {
        Ok(()) => Ok(Some(want)),
        // The worker removed it meanwhile (recovery had passed it).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_over(&src, dest).map(|c| c.then_some(want)),
        Err(e) => Err(Error::io(format!("cannot move spooled {} to {}: {e}", src.display(), dest.display()))),
    }
}

/// Waits while a live worker is writing NAME (its temporary file exists,
/// was written to in the last few seconds, and the worker holds its lock);
/// true when NAME then is in the spool. Bounded: a stuck fetch costs at
/// most a minute before the call fetches NAME itself.
fn wait_for_worker(part: &Path, name: &str) -> bool {
    let prefix = format!("{TEMP_PREFIX}{name}.");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut checked_lock = false;
    loop {
        if part.join(name).exists() {
            return true;
        }
        let temp = spool_entries(part).into_iter().find(|n| n.starts_with(&prefix));
        let Some(temp) = temp else { return part.join(name).exists() };
        let fresh = fs::metadata(part.join(&temp))
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < Duration::from_secs(5)));
        if !fresh || Instant::now() > deadline {
            return false;
        }
        // A temporary file without a worker holding the lock is a killed
        // worker's leftover.
        if !checked_lock {
            match open_lock(part).map(|l| l.try_lock()) {
                Ok(Err(std::fs::TryLockError::WouldBlock)) => checked_lock = true,
                _ => return false,
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The spool is on another file system than pg_wal: copy beside `dest`,
/// rename into place, then remove the spooled file. `false` when it vanished.
fn copy_over(src: &Path, dest: &Path) -> Result<bool> {
    let file_name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.with_file_name(format!(".{file_name}.dbbackup-{}.tmp", std::process::id()));
    let copied = fs::copy(src, &tmp).and_then(|_| fs::rename(&tmp, dest));
    match copied {
        Ok(()) => {
            let _ = fs::remove_file(src);
            Ok(true)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            if e.kind() == std::io::ErrorKind::NotFound && !src.exists() {
                return Ok(false);
            }
            Err(Error::io(format!("cannot copy spooled {} to {}: {e}", src.display(), dest.display())))
        }
    }
}

/// Writes `want` and starts a worker when none runs; failures are logged
/// (prefetching is only an optimization).
fn tell_worker(part: &Path, name: &str, worker: &WorkerCommand) {
    if let Err(e) = announce(part, name) {
        tracing::warn!("{e}; the prefetch worker does not know where recovery is");
        return;
    }
    if let Err(e) = ensure_worker(part, worker) {
        tracing::warn!("cannot start the prefetch worker: {e}");
    }
}

/// `want` = NAME, atomically. Each call writes a new content (its process
/// ID and the time), so the worker sees a repeated call for the same name.
fn announce(part: &Path, name: &str) -> Result<()> {
    let f = part.join(WANT);
    let tmp = part.join(format!(".{WANT}.{}", std::process::id()));
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    fs::write(&tmp, format!("{name}\t{}\t{nanos}\n", std::process::id()))
        .and_then(|_| fs::rename(&tmp, &f))
        .map_err(|e| Error::io(format!("cannot write {}: {e}", f.display())))
}

fn open_lock(part: &Path) -> Result<File> {
    let p = part.join(LOCK);
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&p)
        .map_err(|e| Error::io(format!("cannot open {}: {e}", p.display())))
}

/// Starts the worker unless one holds the lock. Returns whether it started one.
pub fn ensure_worker(part: &Path, worker: &WorkerCommand) -> Result<bool> {
    let lock = open_lock(part)?;
    match lock.try_lock() {
        Ok(()) => drop(lock),
        Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io(format!("cannot lock {}: {e}", part.join(LOCK).display())))
        }
    }
    // Two calls racing here start two workers; the second finds the lock
    // taken and leaves at once.
    spawn_detached(part, worker)?;
    Ok(true)
}

fn spawn_detached(part: &Path, worker: &WorkerCommand) -> Result<()> {
    let args: Vec<std::ffi::OsString> = worker.args.iter().map(Into::into).collect();
    crate::spool::spawn_worker(&worker.program, &args, &part.join(LOG))
        .map_err(|e| Error::io(format!("cannot start {}: {e}", worker.program.display())))?;
    Ok(())
}

/// Removes the `fetch/` part of the spool at `spool_dir` (recovery is
/// over). A worker still running finds it gone and leaves. Returns whether
/// there was one.
pub fn remove_part(spool_dir: &Path) -> Result<bool> {
    let p = spool_dir.join(PART);
    if !p.exists() {
        return Ok(false);
    }
    // Renamed first, so a worker never writes into a half-removed part.
    let gone = spool_dir.join(format!(".{PART}.removed.{}", std::process::id()));
    fs::rename(&p, &gone).map_err(|e| Error::io(format!("cannot remove spool {}: {e}", p.display())))?;
    fs::remove_dir_all(&gone).map_err(|e| Error::io(format!("cannot remove spool {}: {e}", gone.display())))?;
    Ok(true)
}

// ---------------------------------------------------------------------------
// The worker.

/// What the worker is told.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub spool_dir: PathBuf,
    /// N: segments kept ahead of recovery.
    pub depth: usize,
    /// The timeline recovery follows (`restore pitr` knows it); `None`:
    /// the newest whose history holds the wanted segment's timeline.
    pub timeline: Option<TimelineId>,
    pub idle_exit: Duration,
}

/// Why the worker left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Another worker holds the lock.
    AnotherRuns,
    /// No call for `idle_exit`: what it spooled is removed.
    Idle,
    /// The part was removed (recovery over) or taken over by another owner.
    PartGone,
}

/// The timeline recovery follows and its history.
#[derive(Debug, Clone)]
struct Route {
    target: TimelineId,
    history: Option<History>,
}

impl Route {
    fn covers(&self, tl: TimelineId) -> bool {
        tl == self.target || self.history.as_ref().is_some_and(|h| h.entries.iter().any(|e| e.parent == tl))
    }

    fn segment(&self, segno: u64, size: SegmentSize) -> WalFileName {
        WalFileName::segment(timeline_of_segment(self.target, self.history.as_ref(), segno, size), segno, size)
    }
}

/// What a fetch thread reports.
enum Done {
    Spooled,
    /// Not in the repository: the end of the archive.
    Missing,
    Failed(Error),
}

/// Repository directory listings, kept: a segment listed once does not
/// change (archived objects are immutable), so only a name not seen yet
/// costs a new listing.
#[derive(Default)]
struct Listings {
    dirs: HashMap<String, Vec<StoredWal>>,
}

impl Listings {
    fn lookup(&mut self, repo: &Repository, wal: &WalFileName) -> Result<Vec<StoredWal>> {
        let dir = wal_dir_for(wal);
        let name = wal.to_string();
        let hits = |v: &Vec<StoredWal>| v.iter().filter(|s| s.object.original == name).cloned().collect::<Vec<_>>();
        if let Some(found) = self.dirs.get(&dir).map(hits).filter(|f| !f.is_empty()) {
            return Ok(found);
        }
        let entries = repo
            .storage()
            .list(&dir)
            .map_err(|e| Error::io(format!("cannot list repository {} directory {dir}: {e}", repo.location())))?;
        let all: Vec<StoredWal> = entries
            .into_iter()
            .filter(|e| !e.is_dir)
            .filter_map(|e| {
                let object = ObjectName::parse(&e.name)?;
                Some(StoredWal { path: format!("{dir}/{}", e.name), object, stored_size: e.size })
            })
            .collect();
        let found = hits(&all);
        self.dirs.insert(dir, all);
        Ok(found)
    }

    /// Forgets directories no segment of `window` is in: recovery has
    /// passed them (a long recovery must not keep every listing).
    fn keep_only(&mut self, window: &[(u64, WalFileName)]) {
        let dirs: HashSet<String> = window.iter().map(|(_, w)| wal_dir_for(w)).collect();
        self.dirs.retain(|d, _| dirs.contains(d));
    }
}

/// The history of timeline `tl` from the repository; `None` for timeline 1
/// or when it is not archived.
fn load_history(repo: &Repository, tl: TimelineId) -> Result<Option<History>> {
    if tl.0 == 1 {
        return Ok(None);
    }
    let name = WalFileName::history(tl);
    let Some(stored) = find(repo, &name)?.into_iter().next() else { return Ok(None) };
    let mut buf = Vec::new();
    decode_verified(repo, &stored, &mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    History::parse(tl, &text).map(Some).map_err(|e| Error::integrity(format!("{}: {e}", stored.path)))
}

/// The timeline recovery follows from a segment on `from`: `fixed` when it
/// leads through `from`, else the newest archived timeline whose history
/// holds `from`, else `from` alone.
fn resolve_route(repo: &Repository, from: TimelineId, fixed: Option<TimelineId>) -> Result<Route> {
    if let Some(t) = fixed.filter(|t| *t >= from) {
        let r = Route { target: t, history: load_history(repo, t)? };
        if r.covers(from) {
            return Ok(r);
        }
    }
    let dir = wal_dir_for(&WalFileName::history(TimelineId(2)));
    let entries = repo
        .storage()
        .list(&dir)
        .map_err(|e| Error::io(format!("cannot list repository {} directory {dir}: {e}", repo.location())))?;
    let mut newer: Vec<TimelineId> = entries
        .iter()
        .filter_map(|e| ObjectName::parse(&e.name))
        .filter_map(|o| WalFileName::parse(&o.original).ok())
        .filter(|w| w.kind() == WalKind::History && w.timeline() > from)
        .map(|w| w.timeline())
        .collect();
    newer.sort();
    newer.dedup();
    for t in newer.into_iter().rev() {
        let r = Route { target: t, history: load_history(repo, t)? };
        if r.covers(from) {
            return Ok(r);
        }
    }
    Ok(Route { target: from, history: load_history(repo, from)? })
}

/// `want`'s segment name and its whole content (new for every call).
fn read_want(part: &Path) -> Option<(WalFileName, String)> {
    let text = fs::read_to_string(part.join(WANT)).ok()?;
    let name = text.split('\t').next()?.trim();
    let wal = WalFileName::parse(name).ok().filter(|w| w.kind() == WalKind::Segment)?;
    Some((wal, text))
}

fn owner_unchanged(part: &Path, owner: &SpoolOwner) -> bool {
    spool::part_owner(part).is_some_and(|o| &o == owner)
}

/// The spool entries the worker manages: segments, their error notes and
/// its temporary files.
fn spool_entries(part: &Path) -> Vec<String> {
    fs::read_dir(part)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

fn is_segment_name(n: &str) -> bool {
    WalFileName::parse(n).is_ok_and(|w| w.kind() == WalKind::Segment)
}

/// Removes segments and error notes not in `keep` (all with an empty
/// `keep`); with `temps`, also temporary files (no fetch in flight).
fn sweep(part: &Path, keep: &HashSet<String>, temps: bool) {
    for n in spool_entries(part) {
        let base = n.strip_suffix(ERROR_SUFFIX).unwrap_or(&n);
        let ours = (is_segment_name(base) && !keep.contains(base)) || (temps && n.starts_with(TEMP_PREFIX));
        if ours {
            let _ = fs::remove_file(part.join(&n));
        }
    }
}

/// Runs the worker until it is idle for `o.idle_exit`, its part is gone,
/// or another worker holds the lock.
pub fn run_worker(repo: &Repository, o: &WorkerOptions) -> Result<WorkerExit> {
    let (Some(size), Some(owner)) = (repo.segment_size(), owner_of(repo)) else {
        return Err(Error::invalid(format!(
            "repository {} is not bound to a cluster: it holds no segment to prefetch",
            repo.location()
        )));
    };
    spool::check_dir(&o.spool_dir)?;
    // Never takes over: the call that started it did, for this owner; a
    // mismatch means the repository changed under it.
    let part = spool::open_part(&o.spool_dir, PART, &owner)?;
    let mut lock = open_lock(&part)?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => return Ok(WorkerExit::AnotherRuns),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(Error::io(format!("cannot lock {}: {e}", part.join(LOCK).display())))
        }
    }
    // Who holds it, for a DBA looking (the lock, not this number, decides).
    let _ = lock
        .set_len(0)
        .and_then(|_| std::io::Write::write_all(&mut lock, format!("{}\n", std::process::id()).as_bytes()));
    // A killed worker's leftovers: its temporary files are not trusted, and
    // its error notes are retried.
    for n in spool_entries(&part) {
        if n.starts_with(TEMP_PREFIX) || n.ends_with(ERROR_SUFFIX) {
            let _ = fs::remove_file(part.join(n));
        }
    }
    let depth = o.depth.max(1);
    let jobs = depth.min(MAX_JOBS);
    tracing::info!(
        "prefetch worker {} started: spool {}, {depth} segments ahead, {jobs} at a time, repository {}",
        std::process::id(),
        part.display(),
        repo.location()
    );
    let exit = std::thread::scope(|s| -> Result<WorkerExit> {
        let (tx, rx) = mpsc::channel::<(String, u64, Done)>();
        let mut listings = Listings::default();
        let mut in_flight: HashSet<String> = HashSet::new();
        let mut failed: HashSet<String> = HashSet::new();
        // The first segment number the repository does not have, since the last call.
        let mut end: Option<u64> = None;
        let mut route: Option<Route> = None;
        let mut last_call = Instant::now();
        let mut want: Option<(WalFileName, String)> = None;
        let mut window: Vec<(u64, WalFileName)> = Vec::new();
        loop {
            let mut changed = false;
            // Completions.
            let first = rx.recv_timeout(POLL).ok();
            for (name, segno, done) in first.into_iter().chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                in_flight.remove(&name);
                changed = true;
                match done {
                    Done::Spooled => tracing::debug!("prefetched {name}"),
                    Done::Missing => {
                        tracing::debug!("{name} is not in the repository: the end of the archive for now");
                        end = Some(end.map_or(segno, |e| e.min(segno)));
                    }
                    Done::Failed(e) if e.kind() == ErrorKind::NotFound && !part.exists() => {
                        return Ok(WorkerExit::PartGone);
                    }
                    Done::Failed(e) => {
                        tracing::warn!("cannot prefetch {name}: {e}");
                        failed.insert(name.clone());
                        // Written aside and renamed: `wal fetch` reads it, and
                        // must never find it empty.
                        let note = part.join(format!("{name}{ERROR_SUFFIX}"));
                        let tmp = part.join(format!("{TEMP_PREFIX}{name}{ERROR_SUFFIX}"));
                        if fs::write(&tmp, format!("{}\n", e.message())).is_ok() {
                            let _ = fs::rename(&tmp, &note);
                        }
                    }
                }
            }
            if !part.is_dir() || !owner_unchanged(&part, &owner) {
                return Ok(WorkerExit::PartGone);
            }
            // A call.
            if let Some((wal, text)) = read_want(&part) {
                if want.as_ref().is_none_or(|(_, t)| *t != text) {
                    last_call = Instant::now();
                    changed = true;
                    // Following `latest`, a new timeline may have appeared
                    // where the archive ended.
                    let stale = route.as_ref().is_none_or(|r| !r.covers(wal.timeline()))
                        || (end.is_some() && o.timeline.is_none());
                    // The archive may have grown (a standby polling).
                    end = None;
                    if stale {
                        route = Some(match resolve_route(repo, wal.timeline(), o.timeline) {
                            Ok(r) => r,
                            Err(e) => {
                                tracing::warn!(
                                    "cannot read the timeline history ({e}); prefetching on timeline {} only",
                                    wal.timeline()
                                );
                                Route { target: wal.timeline(), history: None }
                            }
                        });
                    }
                    want = Some((wal, text));
                }
            }
            if last_call.elapsed() > o.idle_exit {
                if in_flight.is_empty() {
                    sweep(&part, &HashSet::new(), true);
                    // A call during the sweep: go on.
                    if read_want(&part).is_none_or(|(_, t)| want.as_ref().is_some_and(|(_, w)| *w == t)) {
                        return Ok(WorkerExit::Idle);
                    }
                }
                continue;
            }
            let (Some((wal, _)), Some(r)) = (&want, &route) else { continue };
            if changed {
                let Some(base) = wal.segment_no(size) else { continue };
                window = (base + 1..=base + depth as u64).map(|q| (q, r.segment(q, size))).collect();
                let keep: HashSet<String> = window.iter().map(|(_, w)| w.to_string()).collect();
                sweep(&part, &keep, false);
                listings.keep_only(&window);
            }
            for (segno, w) in &window {
                if in_flight.len() >= jobs || end.is_some_and(|e| *segno >= e) {
                    break;
                }
                let name = w.to_string();
                if in_flight.contains(&name) || failed.contains(&name) || part.join(&name).exists() {
                    continue;
                }
                let found = match listings.lookup(repo, w) {
                    Ok(f) => f,
                    Err(e) => {
                        let _ = tx.send((name, *segno, Done::Failed(e)));
                        continue;
                    }
                };
                in_flight.insert(name.clone());
                let Some(stored) = found.first().cloned() else {
                    let _ = tx.send((name, *segno, Done::Missing));
                    // Nothing past the end: wait for the next call.
                    break;
                };
                if let Some(other) = found.iter().find(|x| x.object.checksum != stored.object.checksum) {
                    let e = Error::integrity(format!(
                        "{name} is archived twice with different content ({} and {})",
                        stored.path, other.path
                    ));
                    let _ = tx.send((name, *segno, Done::Failed(e)));
                    continue;
                }
                let (tx, part, owner, segno) = (tx.clone(), part.clone(), owner.clone(), *segno);
                s.spawn(move || {
                    let done = match spool_segment(repo, &stored, &part, &name, &owner, segno, size) {
                        Ok(()) => Done::Spooled,
                        Err(e) => Done::Failed(e),
                    };
                    let _ = tx.send((name, segno, done));
                });
            }
        }
    });
    let exit = exit?;
    tracing::info!(
        "prefetch worker {} exits: {}",
        std::process::id(),
        match exit {
            WorkerExit::AnotherRuns => "another worker runs",
            WorkerExit::Idle => "no call for a while; its spooled segments are removed",
            WorkerExit::PartGone => "its spool was removed or taken over",
        }
    );
    drop(lock);
    Ok(exit)
}

/// Removes a temporary file unless it was renamed into place.
struct Temp(Option<PathBuf>);

impl Drop for Temp {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Fetches, decodes and verifies `stored` into a temporary file, fsyncs
/// it (a torn file under a segment's name would be handed to recovery
/// after a crash), and renames it to `part/name`, unless recovery has
/// passed it meanwhile or the part is no longer this owner's.
fn spool_segment(
    repo: &Repository,
    stored: &StoredWal,
    part: &Path,
    name: &str,
    owner: &SpoolOwner,
    segno: u64,
    size: SegmentSize,
) -> Result<()> {
    let tmp_path = part.join(format!("{TEMP_PREFIX}{name}.{}", std::process::id()));
    let out =
        OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp_path).map_err(|e| match e
            .kind()
        {
            std::io::ErrorKind::NotFound => Error::not_found(format!("spool {} is gone", part.display())),
            _ => Error::io(format!("cannot create {}: {e}", tmp_path.display())),
        })?;
    let mut tmp = Temp(Some(tmp_path.clone()));
    let mut out = BufWriter::with_capacity(1 << 20, out);
    decode_verified(repo, stored, &mut out)?;
    let file =
        out.into_inner().map_err(|e| Error::io(format!("cannot write {}: {}", tmp_path.display(), e.error())))?;
    file.sync_all().map_err(|e| Error::io(format!("cannot fsync {}: {e}", tmp_path.display())))?;
    drop(file);
    let passed = read_want(part).and_then(|(w, _)| w.segment_no(size)).is_some_and(|q| q >= segno);
    if passed || !owner_unchanged(part, owner) {
        return Ok(());
    }
    fs::rename(&tmp_path, part.join(name))
        .map_err(|e| Error::io(format!("cannot rename {} into the spool: {e}", tmp_path.display())))?;
    tmp.0 = None;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spool_inside_pg_wal_is_refused() {
        assert!(spool::check_dir(Path::new("/d/pg_wal/spool")).is_err());
        assert!(spool::check_dir(Path::new("/d/pg_xlog")).is_err());
        let e = spool::check_dir(Path::new("/d/pg_wal")).unwrap_err().to_string();
        assert!(e.contains("outside pg_wal"), "{e}");
        assert!(spool::check_dir(Path::new("/d/dbbackup_spool")).is_ok());
        assert!(spool::check_dir(Path::new("/srv/pg_wal_spool")).is_ok());
    }

    #[test]
    fn the_route_names_each_segment_on_the_timeline_recovery_reads() {
        let size = SegmentSize::new(1 << 20).unwrap();
        // Timeline 2 branched off 1 inside segment 0x10.
        let h = History::parse(TimelineId(2), "1\t0/10000A0\tno recovery target specified\n").unwrap();
        let r = Route { target: TimelineId(2), history: Some(h) };
        assert!(r.covers(TimelineId(1)) && r.covers(TimelineId(2)) && !r.covers(TimelineId(3)));
        assert_eq!(r.segment(0x0F, size).to_string(), "00000001000000000000000F");
        assert_eq!(r.segment(0x10, size).to_string(), "000000020000000000000010");
        assert_eq!(r.segment(0x11, size).to_string(), "000000020000000000000011");
        let alone = Route { target: TimelineId(1), history: None };
        assert_eq!(alone.segment(0x1000, size).to_string(), "000000010000000100000000");
    }

    #[test]
    fn want_and_sweep() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        assert!(read_want(p).is_none());
        announce(p, "000000010000000000000005").unwrap();
        let (w, text) = read_want(p).unwrap();
        assert_eq!(w.to_string(), "000000010000000000000005");
        std::thread::sleep(Duration::from_millis(2));
        announce(p, "000000010000000000000005").unwrap();
        assert_ne!(read_want(p).unwrap().1, text, "a repeated call is a new call");
        // History files are never where recovery is.
        fs::write(p.join(WANT), "00000002.history\t1\t1\n").unwrap();
        assert!(read_want(p).is_none());

        for n in [
            "000000010000000000000006",
            "000000010000000000000007",
            "000000010000000000000004.error",
            ".prefetch.x.1",
            "worker.log",
        ] {
            fs::write(p.join(n), "").unwrap();
        }
        let keep: HashSet<String> = ["000000010000000000000007".to_string()].into();
        sweep(p, &keep, false);
        let mut left = spool_entries(p);
        left.sort();
        assert_eq!(left, [".prefetch.x.1", "000000010000000000000007", "want", "worker.log"]);
        sweep(p, &HashSet::new(), true);
        let mut left = spool_entries(p);
        left.sort();
        assert_eq!(left, ["want", "worker.log"]);
    }
}
