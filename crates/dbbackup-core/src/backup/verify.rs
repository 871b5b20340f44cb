//! `backup verify`: every file decodes and matches its checksum, and the WAL
//! from start to stop is in the archive and verifies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::checksum::Checksum;
use dbbackup_format::manifest::{BackupStatus, FileEntry, Manifest};
use dbbackup_format::{SegmentSize, TimelineId, WalFileName};

use crate::backup::base::file_aad;
use crate::backup::chain::Chain;
use crate::backup::{backup_dir, write_manifest};
use crate::error::{pipeline_error, Error, Result};
use crate::object::open_decoded;
use crate::repo::Repository;
use crate::wal::{decode_verified, find};

/// One thing wrong with a backup.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Problem {
    pub object: String,
    pub error: String,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupVerifyReport {
    pub id: String,
    pub files: usize,
    pub files_ok: usize,
    pub wal_segments: usize,
    pub wal_ok: usize,
    pub problems: Vec<Problem>,
    /// A pending backup whose WAL is now archived was marked complete.
    pub completed: bool,
}

impl BackupVerifyReport {
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Decodes one backup file and checks size and checksum.
pub fn verify_file(
    repo: &Repository,
    m: &Manifest,
    f: &FileEntry,
    out: &mut (dyn std::io::Write + Send),
) -> Result<()> {
    let path = format!("{}/{}", backup_dir(&m.id), f.object);
    let r = open_decoded(repo, &path, m.codec, m.encrypted, &file_aad(&m.id, &f.path))?;
    let mut h = Checksum::new();
    // Small files: one thread. Large ones: decode on a second thread while
    // this one hashes and writes.
    let total = if f.stored_size < (4 << 20) {
        let mut r = r;
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(pipeline_error(&path, e)),
            };
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|e| Error::io(format!("cannot write {}: {e}", f.path)))?;
            total += n as u64;
        }
        total
    } else {
        let pumped = crate::object::pump(
            r,
            |chunk| {
                h.update(chunk);
                Ok(())
            },
            |chunk| out.write_all(chunk).map_err(|e| Error::io(format!("cannot write {}: {e}", f.path))),
        );
        match pumped {
            Ok(t) => t,
            Err(crate::object::PumpError::Read(e)) => return Err(pipeline_error(&path, e)),
            Err(crate::object::PumpError::Sink(e)) => return Err(e),
        }
    };
    let sum = h.hex();
    if sum != f.checksum || total != f.size {
        return Err(Error::integrity(format!(
            "{path}: decoded {total} bytes with checksum {sum}, the manifest records {} bytes with checksum {} (BLAKE3)",
            f.size, f.checksum
        )));
    }
    Ok(())
}

use std::io::Read as _;

/// The WAL segments a backup needs to become consistent.
pub fn needed_wal(m: &Manifest) -> Result<Vec<WalFileName>> {
    let size = SegmentSize::new(m.wal_segment_size)
        .ok_or_else(|| Error::integrity(format!("backup {}: bad wal_segment_size", m.id)))?;
    let (Some(start), Some(stop), Some(tli)) = (&m.start_wal, &m.stop_wal, m.timeline) else {
        return Err(Error::invalid(format!("backup {} has no start and stop WAL (status {:?})", m.id, m.status)));
    };
    let seg = |n: &str| {
        WalFileName::parse(n)
            .ok()
            .and_then(|w| w.segment_no(size))
            .ok_or_else(|| Error::integrity(format!("backup {}: bad WAL name {n}", m.id)))
    };
    Ok((seg(start)?..=seg(stop)?).map(|n| WalFileName::segment(TimelineId(tli), n, size)).collect())
}

/// Verifies backup `m`: each file as a restore would write it (through
/// its chain: a damaged object of a parent is a problem of the child), and
/// the WAL from its start to its stop.
pub fn verify(repo: &Repository, m: &Manifest, jobs: usize) -> Result<BackupVerifyReport> {
    let next = AtomicUsize::new(0);
    let problems = Mutex::new(Vec::new());
    let ok = AtomicUsize::new(0);
    let chain = match Chain::load(repo, m.clone()) {
        Ok(c) => Some(c),
        Err(e) => {
            problems.lock().expect("not poisoned").push(Problem { object: "chain".into(), error: e.to_string() });
            None
        }
    };
    std::thread::scope(|s| {
        let Some(chain) = chain.as_ref() else { return };
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(f) = m.files.get(i) else { break };
                match chain.read_file(repo, f, &mut std::io::sink()) {
                    Ok(()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => problems
                        .lock()
                        .expect("not poisoned")
                        .push(Problem { object: f.path.clone(), error: e.to_string() }),
                }
            });
        }
    });
    let mut problems = problems.into_inner().expect("threads joined");
    // The block maps this backup stored: the next incremental relies on
    // them (a bad one costs space, not data, but should not go unnoticed).
    let bs = m.block_size.unwrap_or(8192) as u64;
    for f in &m.files {
        let Some(r) = f.map.as_ref().filter(|r| r.backup == m.id) else { continue };
        let problem = match crate::backup::blocks::load_map(repo, m, &f.path, r) {
            Ok(h) if h.len() as u64 == f.size.div_ceil(bs) => None,
            Ok(h) => Some(format!(
                "the block map holds {} blocks, the file has {}: the next incremental backup compares it whole",
                h.len(),
                f.size.div_ceil(bs)
            )),
            Err(e) => Some(format!("{e}: the next incremental backup compares the file whole")),
        };
        if let Some(error) = problem {
            problems.push(Problem { object: format!("{} (block map)", f.path), error });
        }
    }
    let wal = needed_wal(m)?;
    let mut wal_ok = 0;
    for w in &wal {
        let found = find(repo, w)?;
        match found.first() {
            None => problems.push(Problem { object: w.to_string(), error: "not in the archive".into() }),
            Some(stored) => match decode_verified(repo, stored, &mut std::io::sink()) {
                Ok(_) => wal_ok += 1,
                Err(e) => problems.push(Problem { object: w.to_string(), error: e.to_string() }),
            },
        }
    }
    problems.sort_by(|a, b| a.object.cmp(&b.object));
    let mut completed = false;
    if problems.is_empty() && m.status == BackupStatus::Pending {
        let mut done = m.clone();
        done.status = BackupStatus::Complete;
        done.error = None;
        write_manifest(repo, &done)?;
        completed = true;
    }
    Ok(BackupVerifyReport {
        id: m.id.clone(),
        files: m.files.len(),
        files_ok: ok.into_inner(),
        wal_segments: wal.len(),
        wal_ok,
        problems,
        completed,
    })
}
