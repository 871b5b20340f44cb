//! `wal archive --async`: a background worker pushes the segments
//! PostgreSQL has marked ready, N at a time, ahead of PostgreSQL's calls,
//! and records an acknowledgement per segment in the spool part `archive/`.
//!
//! The no-lost-WAL invariant is the synchronous one: a call exits 0 only
//! once ITS segment is durable in the repository and is that content. An
//! acknowledgement (`ack/NAME.ok`) is written only after [`archive`]
//! returned for the file, and holds the BLAKE3 checksum of what was
//! stored and which file was read (inode, size, times); the call succeeds
//! only for that very file (else it hashes the file PostgreSQL handed it
//! and compares checksums) and once one HEAD finds the object still in
//! the repository. Anything else (no worker, a worker killed at
//! any moment, no acknowledgement in time, another content) ends in the
//! synchronous path in the call itself, or in an error.
//!
//! The worker only reads `pg_wal/archive_status` (PostgreSQL and other
//! archivers own it) and never writes into `pg_wal`. It is this binary's
//! hidden `wal archive-worker`, started detached by a call, one per spool
//! part (an flock on `archive/worker.lock`), and exits after a quiet
//! period.
//!
//! Spool part layout: `owner.json` (see [`crate::spool`]), `worker.lock`,
//! `worker.pid`, `worker.log`, `ack/NAME.ok`, `ack/NAME.error`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use dbbackup_format::pagehdr::{self, LONG_HEADER_LEN};
use dbbackup_format::{WalFileName, WalKind};

use crate::checksum::Checksum;
use crate::codec::CodecSettings;
use crate::error::{Error, Result};
use crate::repo::{now_rfc3339, Repository};
use crate::spool::{self, SpoolOwner};
use crate::wal::archive::{archive, archive_with_threads, Archived, FileId};

/// The spool part of asynchronous archiving.
pub const PART: &str = "archive";
const ACK_DIR: &str = "ack";
const LOCK_FILE: &str = "worker.lock";
const PID_FILE: &str = "worker.pid";
const LOG_FILE: &str = "worker.log";
/// Default number of segments pushed at once (`--jobs`).
pub const DEFAULT_JOBS: usize = 4;
/// How long a call waits for its acknowledgement before archiving the
/// segment itself (at least; longer when one store request may take longer).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(60);
/// How long a worker stays without ready work before it exits.
pub const DEFAULT_IDLE_EXIT: Duration = Duration::from_secs(30);
/// Workers one call starts at most (each one that dies is replaced).
const MAX_SPAWNS: u32 = 3;
/// An `.error` older than the call is reported after this long without
/// an acknowledgement (a worker that has recovered answers within it).
const ERROR_GRACE: Duration = Duration::from_secs(2);
/// Longest wait between two attempts at a failing segment.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// How often the worker looks at `archive_status`.
const SCAN_EVERY: Duration = Duration::from_millis(50);
/// How often a call looks for its acknowledgement.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// An acknowledgement: the segment is durable in the repository with
/// this content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Ack {
    /// BLAKE3 of the segment, as stored.
    pub checksum: String,
    pub size: u64,
    /// The object holding it.
    pub object: String,
    /// When it was acknowledged (RFC 3339).
    pub at: String,
    /// The file the worker read, when it did not change while it was read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<FileId>,
}

/// The last failure of the worker for one segment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AckError {
    pub error: String,
    pub at: String,
    /// Failed attempts in a row.
    pub attempts: u32,
}

/// How a call starts a worker: this binary, its `wal archive-worker`
/// subcommand and the repository options of the call (the config and
/// key files are paths: no secret goes on a command line). The engine
/// appends `--pg-wal`, `--spool-dir`, `--system-identifier`, `--jobs`.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    pub exe: PathBuf,
    pub args: Vec<OsString>,
    pub jobs: usize,
}

/// What an asynchronous call needs besides the repository.
#[derive(Debug, Clone)]
pub struct AsyncCall<'a> {
    /// `--spool-dir`, else the data directory's `dbbackup_spool`.
    pub spool_dir: Option<&'a Path>,
    pub launch: &'a WorkerLaunch,
    /// How long to wait for the acknowledgement before archiving in the call.
    pub wait: Duration,
}

/// How an asynchronous call ended (successfully).
#[derive(Debug, Clone)]
pub enum AsyncOutcome {
    /// The worker stored this very content.
    Acknowledged { ack: Ack, waited: Duration },
    /// The call archived the file itself, for this reason.
    Synchronous { why: String, archived: Archived },
}

/// `wal archive --async`: succeeds once `name` (the file at `source`) is
/// durable in `repo`, acknowledged by the worker or archived here.
pub fn archive_async(
    repo: &mut Repository,
    source: &Path,
    name: &str,
    codec: Option<CodecSettings>,
    call: &AsyncCall<'_>,
) -> Result<AsyncOutcome> {
    let wal = WalFileName::parse(name).map_err(|e| Error::invalid(e.to_string()))?;
    let sync = |repo: &mut Repository, why: String| {
        archive(repo, source, name, codec).map(|archived| AsyncOutcome::Synchronous { why, archived })
    };
    // History, backup and partial files are small and rare, and must not
    // wait behind a queue of segments.
    if wal.kind() != WalKind::Segment {
        return sync(repo, format!("a {} file is archived in the call", wal.kind()));
    }
    let abs = std::path::absolute(source).unwrap_or_else(|_| source.to_path_buf());
    let pg_wal = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let status_dir = pg_wal.join("archive_status");
    if !status_dir.is_dir() {
        return sync(
            repo,
            format!(
                "--async needs the segment where PostgreSQL keeps it ({} has no archive_status beside it: give %p as PostgreSQL passes it)",
                source.display()
            ),
        );
    }
    // The worker pushes what PostgreSQL marked ready; a file it did not
    // mark (a call by hand) would never be acknowledged.
    if !status_dir.join(format!("{name}.ready")).exists() {
        return sync(repo, format!("{name} is not marked ready in {}", status_dir.display()));
    }
    let Some(system_identifier) = read_system_identifier(&abs) else {
        // The synchronous path says what is wrong with the file.
        return sync(repo, format!("the header of {} cannot be read here", source.display()));
    };
    let owner =
        SpoolOwner { system_identifier: system_identifier.to_string(), repository_id: spool::repository_id(repo) };
    let root = spool::spool_dir(call.spool_dir, source);
    spool::check_dir(&root)?;
    // The cluster was pointed at another repository: the spool follows
    // (its worker for the previous one leaves, its acknowledgements are
    // that repository's and mean nothing here).
    let retargeted = spool::retarget_part(&root, PART, &owner)?;
    let part = spool::open_part(&root, PART, &owner)?;
    let acks = part.join(ACK_DIR);
    if let Some(previous) = retargeted {
        tracing::info!(
            "spool {} was repository {}'s; it is now {}'s (its worker leaves, its acknowledgements are removed)",
            part.display(),
            previous.repository_id,
            owner.repository_id
        );
        let _ = fs::remove_dir_all(&acks);
    }
    fs::create_dir_all(&acks).map_err(|e| Error::io(format!("cannot create {}: {e}", acks.display())))?;

    let start = Instant::now();
    let started_at = SystemTime::now();
    let mut child: Option<Child> = None;
    let mut spawns = 0;
    let mut next_probe = start;
    let mut own: Option<(String, u64)> = None;
    loop {
        if let Some(ack) = read_json::<Ack>(&acks.join(format!("{name}.ok"))) {
            let same_file = ack.file.is_some() && ack.file == FileId::of(&abs);
            if !same_file && own.is_none() {
                own = Some(hash_file(&abs)?);
            }
            let same_content =
                same_file || own.as_ref().is_some_and(|(sum, size)| &ack.checksum == sum && ack.size == *size);
            if same_content {
                // The ack is a note, the repository the truth: an object
                // removed since (a snapshot rolled back, a lifecycle rule,
                // a hand) is stored again, never reported durable.
                // The object's name holds the checksum: being there is
                // holding this content (one HEAD; a directory listing
                // when the call stored it itself and did not note where).
                let stored = if ack.object.is_empty() {
                    crate::wal::find(repo, &wal)?.iter().any(|o| o.object.checksum == ack.checksum)
                } else {
                    repo.storage()
                        .size_of(&ack.object)
                        .map_err(|e| {
                            Error::from(e).context(format!(
                                "cannot check {} in repository {}",
                                ack.object,
                                repo.location()
                            ))
                        })?
                        .is_some()
                };
                if stored {
                    return Ok(AsyncOutcome::Acknowledged { ack, waited: start.elapsed() });
                }
                return sync(repo, format!("{name} was acknowledged but is no longer in the repository"))
                    .inspect(|_| write_ack_after_sync(&acks, name, &abs));
            }
            // Not this content: the repository's duplicate rules decide.
            let (sum, size) = own.as_ref().expect("hashed when the file is not the acknowledged one");
            return sync(
                repo,
                format!(
                    "the acknowledgement of {name} is for other content (checksum {}, {} bytes; the file has {sum}, {size} bytes)",
                    ack.checksum, ack.size
                ),
            )
            .inspect(|_| write_ack_after_sync(&acks, name, &abs));
        }
        let error_file = acks.join(format!("{name}.error"));
        if let Some(err) = read_json::<AckError>(&error_file) {
            let fresh = fs::metadata(&error_file).and_then(|m| m.modified()).is_ok_and(|t| t >= started_at);
            if fresh || start.elapsed() >= ERROR_GRACE {
                return Err(Error::io(format!(
                    "the archive worker could not store it ({}, last at {}): {}; it keeps retrying (worker log: {})",
                    attempts(err.attempts),
                    err.at,
                    err.error,
                    part.join(LOG_FILE).display()
                )));
            }
        }
        if start.elapsed() >= call.wait {
            return sync(repo, format!("no acknowledgement from the archive worker within {} s", call.wait.as_secs()))
                .inspect(|_| write_ack_after_sync(&acks, name, &abs));
        }
        if Instant::now() >= next_probe {
            next_probe = Instant::now() + Duration::from_millis(500);
            if !worker_alive(&part, &mut child) {
                if spawns >= MAX_SPAWNS {
                    return sync(
                        repo,
                        format!(
                            "the archive worker exited {spawns} times without acknowledging {name} (see {})",
                            part.join(LOG_FILE).display()
                        ),
                    )
                    .inspect(|_| write_ack_after_sync(&acks, name, &abs));
                }
                match spawn_worker(call.launch, &part, &pg_wal, &root, &owner.system_identifier) {
                    Ok(c) => child = Some(c),
                    Err(e) => {
                        return sync(
                            repo,
                            format!("cannot start the archive worker {}: {e}", call.launch.exe.display()),
                        )
                    }
                }
                spawns += 1;
            }
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// "1 attempt", "3 attempts".
pub fn attempts(n: u32) -> String {
    if n == 1 {
        "1 attempt".into()
    } else {
        format!("{n} attempts")
    }
}

/// The system identifier in a segment's first page header.
fn read_system_identifier(path: &Path) -> Option<u64> {
    let mut head = [0u8; LONG_HEADER_LEN];
    File::open(path).ok()?.read_exact(&mut head).ok()?;
    pagehdr::parse_long_header(&head).ok().map(|h| h.system_identifier)
}

/// BLAKE3 and size of a file.
fn hash_file(path: &Path) -> Result<(String, u64)> {
    let err = |e: io::Error| Error::io(format!("cannot read WAL file {}: {e}", path.display()));
    let mut f = File::open(path).map_err(err)?;
    let mut h = Checksum::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(err)?;
        if n == 0 {
            return Ok((h.hex(), size));
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
}

/// After the call archived a segment itself: tells a worker that may
/// still look at it (best effort; the ack is a cache of a durable fact).
fn write_ack_after_sync(acks: &Path, name: &str, source: &Path) {
    if let Ok((checksum, size)) = hash_file(source) {
        let ack = Ack { checksum, size, object: String::new(), at: now_rfc3339(), file: None };
        let _ = write_json(acks, &format!("{name}.ok"), &ack);
        let _ = fs::remove_file(acks.join(format!("{name}.error")));
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

/// Writes `dir/name` whole or not at all: a temporary name, then a rename.
/// Not fsynced: an acknowledgement is written after the segment is durable
/// in the repository, so losing it in a crash only costs a second push
/// (which finds the object and stores nothing).
fn write_json(dir: &Path, name: &str, value: &impl serde::Serialize) -> io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(".{name}.{}.{}.tmp", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    let body = serde_json::to_vec(value).expect("serializes");
    fs::write(&tmp, body).and_then(|_| fs::rename(&tmp, dir.join(name))).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Whether a worker runs for this spool part: the one this call started
/// is still running, or someone holds the worker lock.
fn worker_alive(part: &Path, child: &mut Option<Child>) -> bool {
    if let Some(c) = child {
        if matches!(c.try_wait(), Ok(None)) {
            return true;
        }
    }
    worker_running(part).unwrap_or(false)
}

/// Whether someone holds the worker lock of a spool part (`None`: cannot
/// be told from here). The probe holds the lock for an instant; a worker
/// starting at that instant tries again before it gives up.
pub fn worker_running(part: &Path) -> Option<bool> {
    let f = File::open(part.join(LOCK_FILE)).ok()?;
    match f.try_lock() {
        Ok(()) => Some(false),
        Err(fs::TryLockError::WouldBlock) => Some(true),
        Err(fs::TryLockError::Error(_)) => None,
    }
}

/// Starts a worker detached from the caller: its own session (PostgreSQL's
/// signals to the archiver's process group do not reach it), stdin null,
/// stdout and stderr appended to `worker.log` in the spool part.
fn spawn_worker(launch: &WorkerLaunch, part: &Path, pg_wal: &Path, root: &Path, sysid: &str) -> io::Result<Child> {
    let mut args: Vec<std::ffi::OsString> = launch.args.iter().map(Into::into).collect();
    args.extend(["--pg-wal".into(), pg_wal.into(), "--spool-dir".into(), root.into()]);
    args.extend(["--system-identifier".into(), sysid.into(), "--jobs".into(), launch.jobs.to_string().into()]);
    crate::spool::spawn_worker(&launch.exe, &args, &part.join(LOG_FILE))
}

/// What the worker is told.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The cluster's `pg_wal` (absolute).
    pub pg_wal: PathBuf,
    /// The spool (its `archive/` part is used).
    pub spool_root: PathBuf,
    /// The cluster the calls found in their segments' headers.
    pub system_identifier: String,
    pub jobs: usize,
    pub codec: Option<CodecSettings>,
    pub idle_exit: Duration,
}

/// Why a worker ended.
#[derive(Debug, Clone)]
pub enum WorkerEnd {
    /// Another worker holds the lock: this one did nothing.
    AlreadyRunning { lock: PathBuf, pid: Option<String> },
    /// No ready work for the quiet period.
    Idle { pushed: u64 },
    /// `pg_wal` is gone (the cluster was removed).
    PgWalGone { pushed: u64 },
    /// The server stopped: nothing will ask for what is ready.
    ServerGone { pushed: u64 },
    /// The spool part was taken over for another repository (the cluster
    /// archives there now) or removed.
    OwnerChanged { pushed: u64, now: Option<SpoolOwner> },
}

#[derive(Default)]
struct State {
    queue: VecDeque<String>,
    busy: HashSet<String>,
    /// Failing segments: when to try again, and failures in a row.
    retry: HashMap<String, (Instant, u32)>,
    stop: bool,
    pushed: u64,
}

/// The worker: pushes every ready segment without an acknowledgement, N
/// at a time, oldest first, until nothing is ready for the quiet period.
/// `open` opens the repository (each pushing thread keeps its own).
pub fn run_worker(open: &(dyn Fn() -> Result<Repository> + Sync), o: &WorkerOptions) -> Result<WorkerEnd> {
    let repo = open()?;
    let owner =
        SpoolOwner { system_identifier: o.system_identifier.clone(), repository_id: spool::repository_id(&repo) };
    drop(repo);
    let part = spool::open_part(&o.spool_root, PART, &owner)?;
    let acks = part.join(ACK_DIR);
    fs::create_dir_all(&acks).map_err(|e| Error::io(format!("cannot create {}: {e}", acks.display())))?;
    let lock_path = part.join(LOCK_FILE);
    let lock = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(|e| Error::io(format!("cannot open {}: {e}", lock_path.display())))?;
    // A caller probing the lock holds it for an instant: try a few times.
    let mut locked = false;
    for _ in 0..5 {
        match lock.try_lock() {
            Ok(()) => {
                locked = true;
                break;
            }
            Err(fs::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(20)),
            Err(fs::TryLockError::Error(e)) => {
                return Err(Error::io(format!("cannot lock {}: {e}", lock_path.display())))
            }
        }
    }
    if !locked {
        let pid = fs::read_to_string(part.join(PID_FILE)).ok().map(|s| s.trim().to_string());
        return Ok(WorkerEnd::AlreadyRunning { lock: lock_path, pid });
    }
    let _ = fs::write(part.join(PID_FILE), format!("{}\n", std::process::id()));
    tracing::info!(
        "{} archive worker {} started: {} at a time from {} into the repository",
        now_rfc3339(),
        std::process::id(),
        o.jobs,
        o.pg_wal.display()
    );
    // Parallelism comes from several segments at once; a single job
    // compresses with two threads, as a synchronous call does.
    let threads = if o.jobs > 1 { 0 } else { 2 };
    let shared = (Mutex::new(State::default()), Condvar::new());
    let end = std::thread::scope(|s| {
        for _ in 0..o.jobs.max(1) {
            s.spawn(|| pusher(open, o, &part, &owner, threads, &shared));
        }
        let end = scan_loop(o, &part, &owner, &shared);
        let (st, cv) = &shared;
        st.lock().unwrap_or_else(|e| e.into_inner()).stop = true;
        cv.notify_all();
        end
    });
    let pushed = shared.0.lock().unwrap_or_else(|e| e.into_inner()).pushed;
    let end = match end {
        ScanEnd::Idle => WorkerEnd::Idle { pushed },
        ScanEnd::PgWalGone => WorkerEnd::PgWalGone { pushed },
        ScanEnd::ServerGone => WorkerEnd::ServerGone { pushed },
        ScanEnd::OwnerChanged => WorkerEnd::OwnerChanged { pushed, now: spool::part_owner(&part) },
    };
    let _ = fs::remove_file(part.join(PID_FILE));
    drop(lock);
    Ok(end)
}

enum ScanEnd {
    Idle,
    PgWalGone,
    ServerGone,
    OwnerChanged,
}

/// Whether the server of this `pg_wal` runs: its postmaster.pid names a
/// live process. A worker whose server stopped has no one left to serve
/// (a failing segment would otherwise be retried for ever).
fn server_running(pg_wal: &Path) -> bool {
    let Some(data_dir) = pg_wal.parent() else { return true };
    match fs::read_to_string(data_dir.join("postmaster.pid")) {
        Ok(text) => text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
            .is_none_or(|pid| Path::new(&format!("/proc/{pid}")).exists()),
        Err(e) => e.kind() != io::ErrorKind::NotFound,
    }
}

/// Finds ready segments without an acknowledgement and queues them.
fn scan_loop(o: &WorkerOptions, part: &Path, owner: &SpoolOwner, shared: &(Mutex<State>, Condvar)) -> ScanEnd {
    let (st, cv) = shared;
    let acks = &part.join(ACK_DIR);
    let status_dir = o.pg_wal.join("archive_status");
    let mut last_active = Instant::now();
    let mut last_prune = Instant::now() - Duration::from_secs(3600);
    let mut last_server_check = Instant::now();
    loop {
        if !status_dir.is_dir() {
            return ScanEnd::PgWalGone;
        }
        if last_server_check.elapsed() >= Duration::from_secs(1) {
            last_server_check = Instant::now();
            if !server_running(&o.pg_wal) {
                return ScanEnd::ServerGone;
            }
        }
        if spool::part_owner(part).as_ref() != Some(owner) {
            return ScanEnd::OwnerChanged;
        }
        let ready = ready_segments(&status_dir);
        let acked = acknowledged(acks);
        let pending: Vec<String> = ready.into_iter().filter(|n| !acked.contains(n)).collect();
        let now = Instant::now();
        let active = {
            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
            let mut added = false;
            for n in &pending {
                let waiting = s.retry.get(n).is_some_and(|(at, _)| *at > now);
                if !waiting && !s.busy.contains(n) && !s.queue.contains(n) {
                    s.queue.push_back(n.clone());
                    added = true;
                }
            }
            if added {
                // Oldest first: a segment back from its backoff goes first.
                s.queue.make_contiguous().sort();
                cv.notify_all();
            }
            !pending.is_empty() || !s.busy.is_empty() || !s.queue.is_empty()
        };
        if active {
            last_active = now;
        } else if now.duration_since(last_active) >= o.idle_exit {
            return ScanEnd::Idle;
        }
        if now.duration_since(last_prune) >= Duration::from_secs(10) {
            prune(&o.pg_wal, acks);
            last_prune = now;
        }
        std::thread::sleep(SCAN_EVERY);
    }
}

/// Segment names with a `.ready` file, sorted (oldest first).
fn ready_segments(status_dir: &Path) -> Vec<String> {
    let mut out: Vec<String> = fs::read_dir(status_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let stem = n.strip_suffix(".ready")?;
                    WalFileName::parse(stem).ok().filter(|w| w.kind() == WalKind::Segment).map(|_| stem.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

/// Names with an `.ok` acknowledgement.
fn acknowledged(acks: &Path) -> HashSet<String> {
    fs::read_dir(acks)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".ok").map(str::to_string))
                .filter(|n| !n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

/// Removes acknowledgements and errors of segments no longer in `pg_wal`
/// (archived and recycled), and temporary files a killed writer left.
fn prune(pg_wal: &Path, acks: &Path) {
    let Ok(rd) = fs::read_dir(acks) else { return };
    for e in rd.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with('.') {
            let old = e.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
            if old.is_some_and(|d| d > Duration::from_secs(60)) {
                let _ = fs::remove_file(e.path());
            }
            continue;
        }
        let stem = n.strip_suffix(".ok").or_else(|| n.strip_suffix(".error"));
        if let Some(stem) = stem {
            if !pg_wal.join(stem).exists() {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

/// One pushing thread: takes the oldest queued segment, archives it, and
/// acknowledges it only once `archive` returned (durable).
fn pusher(
    open: &(dyn Fn() -> Result<Repository> + Sync),
    o: &WorkerOptions,
    part: &Path,
    owner: &SpoolOwner,
    threads: u32,
    shared: &(Mutex<State>, Condvar),
) {
    let (st, cv) = shared;
    let acks = &part.join(ACK_DIR);
    let mut repo: Option<Repository> = None;
    loop {
        let name = {
            let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if s.stop {
                    return;
                }
                if let Some(n) = s.queue.pop_front() {
                    s.busy.insert(n.clone());
                    break n;
                }
                s = cv.wait(s).unwrap_or_else(|e| e.into_inner());
            }
        };
        let result = push_one(&mut repo, open, o, &name, threads);
        let mut s = st.lock().unwrap_or_else(|e| e.into_inner());
        s.busy.remove(&name);
        match result {
            Ok(ack) => {
                s.retry.remove(&name);
                s.pushed += 1;
                drop(s);
                // Durable in this worker's repository, which may no longer
                // be the part's (the calls check the repository anyway).
                if spool::part_owner(part).as_ref() != Some(owner) {
                    continue;
                }
                if let Err(e) = write_json(acks, &format!("{name}.ok"), &ack) {
                    tracing::warn!("{} cannot write the acknowledgement of {name}: {e}", now_rfc3339());
                }
                let _ = fs::remove_file(acks.join(format!("{name}.error")));
            }
            Err(e) => {
                let attempts = s.retry.get(&name).map(|(_, n)| n + 1).unwrap_or(1);
                let backoff = Duration::from_millis(500 << (attempts - 1).min(5)).min(MAX_BACKOFF);
                s.retry.insert(name.clone(), (Instant::now() + backoff, attempts));
                drop(s);
                // A fresh repository next time (it may have been bound or
                // replaced meanwhile).
                repo = None;
                let msg = crate::error::Error::to_string(&e);
                tracing::warn!("{} cannot archive {name} (attempt {attempts}): {msg}", now_rfc3339());
                // The call archived it itself meanwhile: no error to report.
                if !acks.join(format!("{name}.ok")).exists() {
                    let err = AckError { error: msg, at: now_rfc3339(), attempts };
                    let _ = write_json(acks, &format!("{name}.error"), &err);
                }
            }
        }
    }
}

fn push_one(
    repo: &mut Option<Repository>,
    open: &(dyn Fn() -> Result<Repository> + Sync),
    o: &WorkerOptions,
    name: &str,
    threads: u32,
) -> Result<Ack> {
    if repo.is_none() {
        *repo = Some(open()?);
    }
    let r = repo.as_mut().expect("opened above");
    let source = o.pg_wal.join(name);
    let before = FileId::of(&source);
    let archived = archive_with_threads(r, &source, name, o.codec, threads)?;
    // Unchanged from before the read to after it: the file read is this one.
    let file = before.filter(|b| FileId::of(&source).as_ref() == Some(b));
    let size = r.segment_size().map(|s| u64::from(s.bytes())).unwrap_or(0);
    let (checksum, object) = match archived {
        Archived::Stored { path, checksum, original_size, .. } => {
            tracing::debug!("archived {name} as {path} ({original_size} bytes)");
            (checksum, path)
        }
        Archived::AlreadyArchived { path, checksum } => (checksum, path),
        Archived::Repaired { path, checksum, damage } => {
            tracing::warn!("{name} was archived but the stored copy was damaged ({damage}); replaced it");
            (checksum, path)
        }
    };
    Ok(Ack { checksum, size, object, at: now_rfc3339(), file })
}

/// What `pitr enable --async` checks before it writes archive_command:
/// the spool at `root` is not inside pg_wal, and its archive part, if
/// any, is this cluster's (another repository's is fine: the first call
/// takes it over). The error is the one every call would give.
pub fn check_spool_for(root: &Path, system_identifier: u64) -> Result<()> {
    spool::check_dir(root)?;
    let part = root.join(PART);
    match spool::part_owner(&part) {
        Some(found) if found.system_identifier != system_identifier.to_string() => Err(Error::identity(format!(
            "spool {} belongs to cluster {}, not to this cluster {system_identifier}: every `wal archive --async` call would be refused; give this cluster its own --spool-dir, or, when no `dbbackup wal archive-worker` runs for it any more, remove {}",
            part.display(),
            found.system_identifier,
            part.display()
        ))),
        _ => Ok(()),
    }
}

/// The queue as `pitr status` shows it.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct QueueStatus {
    /// The spool part read.
    pub spool: String,
    /// Segments PostgreSQL has marked ready.
    pub ready: usize,
    /// Ready segments without an acknowledgement (still to push).
    pub unacknowledged: usize,
    /// The oldest of them.
    pub oldest_unacknowledged: Option<String>,
    /// The worker's last failure per ready segment without an acknowledgement.
    pub errors: Vec<QueueError>,
    /// Whether a worker runs now (null: cannot be told from here).
    pub worker_running: Option<bool>,
    /// Whose the spool part says it is.
    pub owner: Option<SpoolOwner>,
    /// Why the queue cannot be read from here.
    pub error: Option<String>,
}

/// One segment the worker failed to push.
#[derive(Debug, Clone, serde::Serialize)]
pub struct QueueError {
    pub wal: String,
    pub error: String,
    pub at: String,
    pub attempts: u32,
}

/// Reads the queue of the cluster whose `pg_wal` is given, from the spool
/// at `spool_root` (read only: nothing is created or changed).
pub fn queue_status(pg_wal: &Path, spool_root: &Path) -> QueueStatus {
    let part = spool_root.join(PART);
    let mut q = QueueStatus { spool: part.display().to_string(), ..Default::default() };
    let status_dir = pg_wal.join("archive_status");
    if let Err(e) = fs::read_dir(&status_dir) {
        q.error = Some(format!("cannot read {}: {e}", status_dir.display()));
        return q;
    }
    let ready = ready_segments(&status_dir);
    let acks = part.join(ACK_DIR);
    let acked = acknowledged(&acks);
    q.ready = ready.len();
    let pending: Vec<&String> = ready.iter().filter(|n| !acked.contains(*n)).collect();
    q.unacknowledged = pending.len();
    q.oldest_unacknowledged = pending.first().map(|s| s.to_string());
    for n in pending {
        if let Some(e) = read_json::<AckError>(&acks.join(format!("{n}.error"))) {
            q.errors.push(QueueError { wal: n.clone(), error: e.error, at: e.at, attempts: e.attempts });
        }
    }
    q.owner = read_json(&part.join("owner.json"));
    q.worker_running = if part.join(LOCK_FILE).exists() { worker_running(&part) } else { Some(false) };
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_segments_are_segments_only_oldest_first() {
        let d = tempfile::tempdir().unwrap();
        for n in [
            "000000010000000000000003.ready",
            "000000010000000000000002.ready",
            "000000010000000000000001.done",
            "00000002.history.ready",
            "000000010000000000000002.00000028.backup.ready",
            "junk.ready",
        ] {
            fs::write(d.path().join(n), "").unwrap();
        }
        assert_eq!(ready_segments(d.path()), ["000000010000000000000002", "000000010000000000000003"]);
    }

    #[test]
    fn acks_are_whole_files_and_pruned_with_their_segments() {
        let d = tempfile::tempdir().unwrap();
        let (pg_wal, acks) = (d.path().join("pg_wal"), d.path().join("ack"));
        fs::create_dir_all(&pg_wal).unwrap();
        fs::create_dir_all(&acks).unwrap();
        let ack = Ack { checksum: "ab".into(), size: 16, object: "o".into(), at: "t".into(), file: None };
        write_json(&acks, "000000010000000000000001.ok", &ack).unwrap();
        write_json(&acks, "000000010000000000000002.ok", &ack).unwrap();
        fs::write(pg_wal.join("000000010000000000000002"), "x").unwrap();
        assert_eq!(read_json::<Ack>(&acks.join("000000010000000000000001.ok")), Some(ack));
        // A torn or foreign file is no acknowledgement.
        fs::write(acks.join("000000010000000000000003.ok"), "{\"checks").unwrap();
        assert_eq!(read_json::<Ack>(&acks.join("000000010000000000000003.ok")), None);
        prune(&pg_wal, &acks);
        let left = acknowledged(&acks);
        assert!(left.contains("000000010000000000000002") && !left.contains("000000010000000000000001"), "{left:?}");
    }

    #[test]
    fn worker_lock_is_seen_by_probes() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(worker_running(d.path()), None, "no lock file: cannot tell");
        let f = File::create(d.path().join(LOCK_FILE)).unwrap();
        assert_eq!(worker_running(d.path()), Some(false));
        f.lock().unwrap();
        assert_eq!(worker_running(d.path()), Some(true));
    }
}
