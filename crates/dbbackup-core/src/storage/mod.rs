//! Where repository bytes live: the `Storage` trait, its local filesystem
//! implementation (here), object stores ([`remote`]) and the parsing of
//! `--repo` locations ([`location`]).
//!
//! The trait is shaped by what object stores can promise: keys (not
//! paths; `/`-separated, repository-relative), a write whose key is fixed
//! up front and that becomes visible only when committed, streaming reads,
//! one-level listings, deletes, and named locks. The promise every
//! invariant rests on: an object is visible under its key only after all
//! its bytes are durable, and a no-replace commit never overwrites an
//! existing object.
//!
//! - Local directory: a temporary file beside the key, fsync, `link(2)`
//!   (no-replace: fails on an existing name) or `rename(2)`, fsync of the
//!   directory; locks are `flock`s.
//! - Object stores: see [`remote`] (an acknowledged upload; no-replace by
//!   conditional PUT plus a HEAD; locks are leases).

pub mod location;
pub mod remote;

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// A failed storage operation, with the object it concerned.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: not found")]
    NotFound { path: String },
    #[error("{path}: already exists")]
    AlreadyExists { path: String },
    #[error(
        "{}{source}{}",
        if path.is_empty() { String::new() } else { format!("{path}: ") },
        if is_temporary_kind(source.kind()) { " (a temporary failure: trying again later may succeed)" } else { "" }
    )]
    Io { path: String, source: io::Error },
}

/// See [`StorageError::is_temporary`].
fn is_temporary_kind(kind: io::ErrorKind) -> bool {
    use io::ErrorKind as K;
    matches!(
        kind,
        K::TimedOut
            | K::ConnectionRefused
            | K::ConnectionReset
            | K::ConnectionAborted
            | K::NotConnected
            | K::BrokenPipe
            | K::Interrupted
            | K::WouldBlock
            | K::ResourceBusy
            | K::HostUnreachable
            | K::NetworkUnreachable
            | K::NetworkDown
    )
}

impl StorageError {
    pub fn io(path: impl Into<String>, source: io::Error) -> StorageError {
        let path = path.into();
        match source.kind() {
            io::ErrorKind::NotFound => StorageError::NotFound { path },
            io::ErrorKind::AlreadyExists => StorageError::AlreadyExists { path },
            _ => StorageError::Io { path, source },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// Whether trying again later may succeed: the store did not answer in
    /// time, was unreachable or overloaded, or a transfer broke off. Object
    /// stores have already retried these with backoff within their bounds
    /// (request-timeout, retries) before the error reaches the caller. Not
    /// temporary: a missing object or bucket, refused credentials, a wrong
    /// region or certificate, a full or failing local disk.
    pub fn is_temporary(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => is_temporary_kind(source.kind()),
            _ => false,
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct Entry {
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
    pub is_dir: bool,
}

/// How a commit treats an existing object of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Commit {
    /// Fail with `AlreadyExists`: archived objects are immutable.
    NoReplace,
    /// Atomically replace: only for metadata that is rewritten whole.
    Replace,
}

/// An object being written under a key fixed when it was created. Nothing
/// is visible until `commit`; dropping it uncommitted removes every trace.
pub trait ObjectWriter: Write + Send {
    /// Makes the bytes durable, then visible under the key given to
    /// `create`, as that call's `Commit` mode says.
    fn commit(self: Box<Self>) -> StorageResult<()>;
}

/// A held exclusive lock; released on drop.
pub trait LockGuard: Send {}

/// Repository storage.
pub trait Storage: Send + Sync + fmt::Debug {
    /// Human description of the location (a path, a URL).
    fn location(&self) -> String;
    /// Whether the repository root exists at all.
    fn root_exists(&self) -> StorageResult<bool>;
    /// Opens an object for streaming reads.
    fn open(&self, path: &str) -> StorageResult<Box<dyn Read + Send>>;
    /// Starts writing the object `key` (committed as `mode` says).
    fn create(&self, key: &str, mode: Commit) -> StorageResult<Box<dyn ObjectWriter>>;
    /// Lists a directory; a missing directory lists as empty.
    fn list(&self, dir: &str) -> StorageResult<Vec<Entry>>;
    /// The size of an object, `None` when there is none (one request on
    /// an object store, where listing its directory may return hundreds).
    fn size_of(&self, path: &str) -> StorageResult<Option<u64>> {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        Ok(self.list(dir)?.into_iter().find(|e| !e.is_dir && e.name == name).map(|e| e.size))
    }
    /// Removes an object; a missing object is not an error.
    fn remove(&self, path: &str) -> StorageResult<()>;
    /// Takes the named exclusive lock, waiting for other holders.
    fn lock(&self, name: &str) -> StorageResult<Box<dyn LockGuard>>;
    /// Takes the named exclusive lock if no one holds it.
    fn try_lock(&self, name: &str) -> StorageResult<Option<Box<dyn LockGuard>>>;
    /// Removes a directory and everything under it; missing is fine.
    fn remove_tree(&self, dir: &str) -> StorageResult<()>;

    /// Removes temporary objects in `dir` that nobody has written to for
    /// `idle` (left by a killed writer; a live one keeps writing). Returns
    /// how many went. Storage without such leftovers does nothing.
    fn remove_stale_temps(&self, _dir: &str, _idle: std::time::Duration) -> StorageResult<usize> {
        Ok(0)
    }

    /// Whether a lock costs requests rather than a file of its own: then a
    /// lock per name (per WAL segment) is as cheap as one for all, and lets
    /// writers of different names work at once. Local lock files would
    /// pile up, one per segment, so the local store keeps one.
    fn per_name_locks(&self) -> bool {
        false
    }

    /// How many requests to keep in flight per CPU-bound worker: 1 for a
    /// local disk; more for a store where each object costs a round trip
    /// (a backup or restore of a thousand small files is latency-bound).
    fn requests_per_worker(&self) -> usize {
        1
    }

    /// Reads a whole small object.
    fn read_all(&self, path: &str) -> StorageResult<Vec<u8>> {
        let mut buf = Vec::new();
        self.open(path)?.read_to_end(&mut buf).map_err(|e| StorageError::io(path, e))?;
        Ok(buf)
    }
}

/// A repository in a local directory.
#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Prefix of temporary files; listings skip them.
pub const TEMP_PREFIX: &str = ".tmp.";

impl LocalStorage {
    pub fn new(root: impl Into<PathBuf>) -> LocalStorage {
        LocalStorage { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    /// Creates `dir` and its missing parents, fsyncing each parent whose
    /// entries changed so the new directories survive a crash.
    fn ensure_dir(&self, dir: &Path) -> io::Result<()> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            self.ensure_dir(parent)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => return Ok(()),
            Err(e) => return Err(e),
        }
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

/// fsyncs a directory so renames and links in it are durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

struct LocalWriter {
    temp: PathBuf,
    target: PathBuf,
    key: String,
    mode: Commit,
    file: Option<File>,
}

impl Write for LocalWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.as_mut().expect("open until commit").write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.as_mut().expect("open until commit").write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for LocalWriter {
    fn commit(mut self: Box<Self>) -> StorageResult<()> {
        let (target, rel, mode) = (self.target.clone(), self.key.clone(), self.mode);
        let rel = rel.as_str();
        let file = self.file.take().expect("open until commit");
        file.sync_all().map_err(|e| StorageError::io(rel, e))?;
        drop(file);
        match mode {
            // link(2) fails with EEXIST instead of replacing: the atomic
            // no-clobber step that makes archived objects immutable.
            Commit::NoReplace => {
                fs::hard_link(&self.temp, &target).map_err(|e| StorageError::io(rel, e))?;
                let _ = fs::remove_file(&self.temp);
            }
            Commit::Replace => fs::rename(&self.temp, &target).map_err(|e| StorageError::io(rel, e))?,
        }
        let dir = target.parent().expect("object has a parent");
        sync_dir(dir).map_err(|e| StorageError::io(rel, e))?;
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // Uncommitted (error or panic) or already linked: the temp name goes.
        self.file.take();
        let _ = fs::remove_file(&self.temp);
    }
}

struct LocalLock {
    _file: File,
}
impl LockGuard for LocalLock {}

impl Storage for LocalStorage {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn root_exists(&self) -> StorageResult<bool> {
        match fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => Ok(true),
            Ok(_) => Err(StorageError::Io {
                path: self.location(),
                source: io::Error::new(io::ErrorKind::InvalidInput, "not a directory"),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io(self.location(), e)),
        }
    }

    fn open(&self, path: &str) -> StorageResult<Box<dyn Read + Send>> {
        let f = File::open(self.full(path)).map_err(|e| StorageError::io(path, e))?;
        Ok(Box::new(f))
    }

    fn create(&self, key: &str, mode: Commit) -> StorageResult<Box<dyn ObjectWriter>> {
        let target = self.full(key);
        let dir = key.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
        let full = self.full(dir);
        self.ensure_dir(&full).map_err(|e| StorageError::io(dir, e))?;
        // A killed process with this PID may have left its temporary
        // objects: take the next free name.
        loop {
            let n = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
            let temp = full.join(format!("{TEMP_PREFIX}{}.{n}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp) {
                Ok(file) => {
                    return Ok(Box::new(LocalWriter { temp, target, key: key.to_string(), mode, file: Some(file) }))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && n < 10_000 => continue,
                Err(e) => {
                    return Err(StorageError::io(
                        format!("{dir}/{}", temp.file_name().unwrap_or_default().to_string_lossy()),
                        e,
                    ))
                }
            }
        }
    }

    fn size_of(&self, path: &str) -> StorageResult<Option<u64>> {
        match fs::metadata(self.full(path)) {
            Ok(m) if m.is_file() => Ok(Some(m.len())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    fn list(&self, dir: &str) -> StorageResult<Vec<Entry>> {
        let rd = match fs::read_dir(self.full(dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::io(dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| StorageError::io(dir, e))?;
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with(TEMP_PREFIX) {
                continue;
            }
            let md = match entry.metadata() {
                Ok(m) => m,
                // Removed between readdir and stat: no longer listed.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io(format!("{dir}/{name}"), e)),
            };
            out.push(Entry { name, size: md.len(), modified: md.modified().ok(), is_dir: md.is_dir() });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn remove(&self, path: &str) -> StorageResult<()> {
        match fs::remove_file(self.full(path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    fn try_lock(&self, name: &str) -> StorageResult<Option<Box<dyn LockGuard>>> {
        let file = self.lock_file(name)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Box::new(LocalLock { _file: file }))),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(StorageError::io(name, e)),
        }
    }

    fn remove_tree(&self, dir: &str) -> StorageResult<()> {
        let full = self.full(dir);
        match fs::remove_dir_all(&full) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io(dir, e)),
        }
        if let Some(parent) = full.parent() {
            sync_dir(parent).map_err(|e| StorageError::io(dir, e))?;
        }
        Ok(())
    }

    fn remove_stale_temps(&self, dir: &str, idle: std::time::Duration) -> StorageResult<usize> {
        let rd = match fs::read_dir(self.full(dir)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(StorageError::io(dir, e)),
        };
        let mut removed = 0;
        for entry in rd.flatten() {
            if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                continue;
            }
            let stale =
                entry.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age > idle));
            if stale && fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn lock(&self, name: &str) -> StorageResult<Box<dyn LockGuard>> {
        let file = self.lock_file(name)?;
        file.lock().map_err(|e| StorageError::io(name, e))?;
        Ok(Box::new(LocalLock { _file: file }))
    }
}

impl LocalStorage {
    fn lock_file(&self, name: &str) -> StorageResult<File> {
        let path = self.full(name);
        if let Some(dir) = path.parent() {
            self.ensure_dir(dir).map_err(|e| StorageError::io(name, e))?;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| StorageError::io(name, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commit_no_replace_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let mut w = s.create("a/b/obj", Commit::NoReplace).unwrap();
        w.write_all(b"first").unwrap();
        w.commit().unwrap();
        let mut w = s.create("a/b/obj", Commit::NoReplace).unwrap();
        w.write_all(b"second").unwrap();
        assert!(matches!(w.commit(), Err(StorageError::AlreadyExists { .. })));
        assert_eq!(s.read_all("a/b/obj").unwrap(), b"first");
        // No temporary file is left behind.
        assert_eq!(fs::read_dir(dir.path().join("a/b")).unwrap().count(), 1);
        let mut w = s.create("a/b/obj", Commit::Replace).unwrap();
        w.write_all(b"third").unwrap();
        w.commit().unwrap();
        assert_eq!(s.read_all("a/b/obj").unwrap(), b"third");
    }

    #[test]
    fn a_killed_writers_temporary_object_does_not_block_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        fs::create_dir_all(dir.path().join("w")).unwrap();
        // Whatever this process's counter is at, the next names are taken.
        let from = TEMP_COUNTER.load(Ordering::Relaxed);
        for n in from..from + 50 {
            fs::write(dir.path().join("w").join(format!("{TEMP_PREFIX}{}.{n}", std::process::id())), b"junk").unwrap();
        }
        let mut w = s.create("w/obj", Commit::NoReplace).unwrap();
        w.write_all(b"new").unwrap();
        w.commit().unwrap();
        assert_eq!(s.read_all("w/obj").unwrap(), b"new");
    }

    #[test]
    fn only_idle_temporary_objects_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let mut live = s.create("w/obj2", Commit::NoReplace).unwrap();
        live.write_all(b"still being written").unwrap();
        let killed = dir.path().join("w").join(format!("{TEMP_PREFIX}999999.0"));
        fs::write(&killed, b"left by a killed archiver").unwrap();
        let old = SystemTime::now() - std::time::Duration::from_secs(7200);
        File::options().write(true).open(&killed).unwrap().set_modified(old).unwrap();
        fs::write(dir.path().join("w/obj"), b"an object").unwrap();
        assert_eq!(s.remove_stale_temps("w", std::time::Duration::from_secs(3600)).unwrap(), 1);
        assert!(!killed.exists());
        assert_eq!(fs::read_dir(dir.path().join("w")).unwrap().count(), 2, "the live temp and the object stay");
        live.commit().unwrap();
        assert_eq!(s.remove_stale_temps("missing", std::time::Duration::ZERO).unwrap(), 0);
    }

    #[test]
    fn dropped_writer_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::new(dir.path());
        let mut w = s.create("x/obj", Commit::NoReplace).unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(dir.path().join("x")).unwrap().count(), 0);
        assert!(s.open("x/obj").err().unwrap().is_not_found());
        assert!(s.list("missing").unwrap().is_empty());
    }
}
