//! Storage faults injected through the `Storage` trait: a write that fails
//! half way, a commit that fails, a torn object. Nothing partial may ever be
//! visible, and the error must say what failed.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dbbackup_core::error::ErrorKind;
use dbbackup_core::repo::{InitOptions, Repository};
use dbbackup_core::storage::{
    Commit, Entry, LocalStorage, LockGuard, ObjectWriter, Storage, StorageError, StorageResult,
};
use dbbackup_core::wal::archive::{archive, Archived};
use dbbackup_core::wal::fetch::fetch;
use dbbackup_format::meta::ClusterIdentity;
use dbbackup_format::Codec;

const SYSID: u64 = 7_000_000_000_000_000_042;
const SEG: u32 = 1 << 20;

/// A 1 MiB segment with a valid long header for `segno` on timeline 1.
fn segment(segno: u64) -> Vec<u8> {
    let mut b: Vec<u8> = (0..SEG as usize).map(|i| ((i * 7 + segno as usize) % 251) as u8).collect();
    b[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
    b[2..4].copy_from_slice(&0x0006u16.to_le_bytes());
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    b[8..16].copy_from_slice(&(segno * u64::from(SEG)).to_le_bytes());
    b[16..24].fill(0);
    b[24..32].copy_from_slice(&SYSID.to_le_bytes());
    b[32..36].copy_from_slice(&SEG.to_le_bytes());
    b[36..40].copy_from_slice(&8192u32.to_le_bytes());
    b
}

/// Local storage whose writes fail after `fail_after` bytes (across all
/// objects), or whose commits fail.
#[derive(Debug)]
struct Faulty {
    inner: LocalStorage,
    fail_after: AtomicU64,
    fail_commit: bool,
    /// A file changed (one byte, same size) at a writer's first write.
    meddle_with: Option<std::path::PathBuf>,
}

struct FaultyWriter {
    key: String,
    inner: Box<dyn ObjectWriter>,
    budget: Arc<AtomicU64>,
    fail_commit: bool,
    meddle_with: Option<std::path::PathBuf>,
}

impl Write for FaultyWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(p) = self.meddle_with.take() {
            let mut b = std::fs::read(&p)?;
            let mid = b.len() / 2;
            b[mid] ^= 0xFF;
            std::fs::write(&p, b)?;
        }
        let left = self.budget.load(Ordering::SeqCst);
        if left < buf.len() as u64 {
            return Err(io::Error::new(io::ErrorKind::StorageFull, "injected: no space left on device"));
        }
        self.budget.fetch_sub(buf.len() as u64, Ordering::SeqCst);
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl ObjectWriter for FaultyWriter {
    fn commit(self: Box<Self>) -> StorageResult<()> {
        if self.fail_commit {
            return Err(StorageError::Io {
                path: self.key.clone(),
                source: io::Error::other("injected: fsync failed"),
            });
        }
        self.inner.commit()
    }
}

impl Storage for Faulty {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn root_exists(&self) -> StorageResult<bool> {
        self.inner.root_exists()
    }
    fn open(&self, path: &str) -> StorageResult<Box<dyn Read + Send>> {
        self.inner.open(path)
    }
    fn create(&self, key: &str, mode: Commit) -> StorageResult<Box<dyn ObjectWriter>> {
        let budget = Arc::new(AtomicU64::new(self.fail_after.load(Ordering::SeqCst)));
        Ok(Box::new(FaultyWriter {
            key: key.to_string(),
            inner: self.inner.create(key, mode)?,
            budget,
            fail_commit: self.fail_commit,
            meddle_with: self.meddle_with.clone(),
        }))
    }
    fn list(&self, dir: &str) -> StorageResult<Vec<Entry>> {
        self.inner.list(dir)
    }
    fn remove(&self, path: &str) -> StorageResult<()> {
        self.inner.remove(path)
    }
    fn lock(&self, name: &str) -> StorageResult<Box<dyn LockGuard>> {
        self.inner.lock(name)
    }
    fn try_lock(&self, name: &str) -> StorageResult<Option<Box<dyn LockGuard>>> {
        self.inner.try_lock(name)
    }
    fn remove_tree(&self, dir: &str) -> StorageResult<()> {
        self.inner.remove_tree(dir)
    }
}

fn identity() -> ClusterIdentity {
    ClusterIdentity {
        system_identifier: SYSID,
        pg_version_major: 15,
        wal_segment_size: SEG,
        bound_at: "2026-01-01T00:00:00Z".into(),
        bound_from: "test".into(),
    }
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

fn wal_files(root: &Path) -> Vec<String> {
    let wal = root.join("wal");
    if wal.exists() {
        files_under(&wal)
    } else {
        Vec::new()
    }
}

#[test]
fn write_failure_half_way_leaves_no_object() {
    for codec in [Codec::None, Codec::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let storage = Arc::new(Faulty {
            inner: LocalStorage::new(&root),
            fail_after: AtomicU64::new(u64::MAX),
            fail_commit: false,
            meddle_with: None,
        });
        let mut repo = Repository::init(
            storage.clone(),
            InitOptions { codec, level: None, key: None, identity: Some(identity()) },
        )
        .unwrap();
        let src = dir.path().join("000000010000000000000005");
        std::fs::write(&src, segment(5)).unwrap();
        storage.fail_after.store(100_000, Ordering::SeqCst);
        // Incompressible enough data even for zstd: fill with a pseudo-random pattern.
        let mut data = segment(5);
        let mut x: u64 = 1;
        for b in data[8192..].iter_mut() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            *b = (x >> 56) as u8;
        }
        std::fs::write(&src, &data).unwrap();
        let err = archive(&mut repo, &src, "000000010000000000000005", None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("no space left on device"), "{err}");
        assert!(err.to_string().contains("000000010000000000000005"), "{err}");
        assert!(wal_files(&root).is_empty(), "partial object left: {:?}", wal_files(&root));

        // After the fault clears, the retry succeeds and fetch returns the bytes.
        storage.fail_after.store(u64::MAX, Ordering::SeqCst);
        assert!(matches!(archive(&mut repo, &src, "000000010000000000000005", None).unwrap(), Archived::Stored { .. }));
        let dest = dir.path().join("fetched");
        fetch(&repo, "000000010000000000000005", &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), data);
    }
}

#[test]
fn commit_failure_leaves_no_object() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let storage = Arc::new(Faulty {
        inner: LocalStorage::new(&root),
        fail_after: AtomicU64::new(u64::MAX),
        fail_commit: true,
        meddle_with: None,
    });
    Repository::init(
        Arc::new(LocalStorage::new(&root)),
        InitOptions { codec: Codec::Lz4, level: None, key: None, identity: Some(identity()) },
    )
    .unwrap();
    let mut repo = Repository::open(storage, &Default::default()).unwrap();
    let src = dir.path().join("seg");
    std::fs::write(&src, segment(7)).unwrap();
    let err = archive(&mut repo, &src, "000000010000000000000007", None).unwrap_err();
    assert!(err.to_string().contains("fsync failed"), "{err}");
    assert!(wal_files(&root).is_empty(), "{:?}", wal_files(&root));
}

#[test]
fn torn_object_is_detected_and_repaired_by_a_retry() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let mut repo = Repository::init(
        Arc::new(LocalStorage::new(&root)),
        InitOptions { codec: Codec::Zstd, level: None, key: None, identity: Some(identity()) },
    )
    .unwrap();
    let src = dir.path().join("seg");
    std::fs::write(&src, segment(9)).unwrap();
    archive(&mut repo, &src, "000000010000000000000009", None).unwrap();
    let stored = wal_files(&root).pop().unwrap();
    let bytes = std::fs::read(&stored).unwrap();
    // Tear it: half the object, as a crash of a naive archiver would leave.
    std::fs::write(&stored, &bytes[..bytes.len() / 2]).unwrap();
    let dest = dir.path().join("out");
    let err = fetch(&repo, "000000010000000000000009", &dest).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Integrity, "{err}");
    assert!(!dest.exists());
    // PostgreSQL retrying the same segment repairs the damaged copy.
    let out = archive(&mut repo, &src, "000000010000000000000009", None).unwrap();
    assert!(matches!(out, Archived::Repaired { .. }), "{out:?}");
    fetch(&repo, "000000010000000000000009", &dest).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), segment(9));
}

/// A finished segment (marked ready in a live pg_wal) that changes after
/// its checksum was taken is refused, and nothing is stored: its identity
/// (inode, size, times) is checked instead of hashing it a second time.
/// (Here it changes once it was read whole: a conservative refusal.)
#[test]
fn a_finished_segment_changed_while_archived_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repo");
    let pg_wal = dir.path().join("pg_wal");
    std::fs::create_dir_all(pg_wal.join("archive_status")).unwrap();
    let name = "000000010000000000000007";
    let src = pg_wal.join(name);
    std::fs::write(&src, segment(7)).unwrap();
    // In the past: a change now moves its times whatever the clock's grain.
    let past = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&src).unwrap().set_modified(past).unwrap();
    std::fs::write(pg_wal.join(format!("archive_status/{name}.ready")), "").unwrap();
    let storage = Arc::new(Faulty {
        inner: LocalStorage::new(&root),
        fail_after: AtomicU64::new(u64::MAX),
        fail_commit: false,
        meddle_with: Some(src.clone()),
    });
    Repository::init(
        Arc::new(LocalStorage::new(&root)),
        InitOptions { codec: Codec::Zstd, level: None, key: None, identity: Some(identity()) },
    )
    .unwrap();
    let mut repo = Repository::open(storage, &Default::default()).unwrap();
    let err = archive(&mut repo, &src, name, None).unwrap_err().to_string();
    assert!(err.contains("changed while it was being archived"), "{err}");
    assert!(wal_files(&root).is_empty(), "{:?}", wal_files(&root));
    // Unchanged from now on, it archives.
    let mut repo = Repository::open(Arc::new(LocalStorage::new(&root)), &Default::default()).unwrap();
    assert!(matches!(archive(&mut repo, &src, name, None).unwrap(), Archived::Stored { .. }));
}
