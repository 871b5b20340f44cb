//! `wal fetch`: PostgreSQL's `restore_command`.
//!
//! Finds the object under any codec or encryption suffix, decodes it into a
//! temporary file beside the destination, verifies the recorded checksum
//! (and, for segments, the page header), and only then renames it into
//! place. The destination is never touched on failure.

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use dbbackup_format::pagehdr::{self, Expected, LONG_HEADER_LEN};
use dbbackup_format::{WalFileName, WalKind};
use sha2::{Digest, Sha256};

use crate::error::{pipeline_error, Error, Result};
use crate::repo::Repository;
use crate::wal::{find, open_plain};

/// What was delivered.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: String,
    pub size: u64,
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = fs::remove_file(p);
        }
    }
}

/// Fetches WAL file `name` into `dest`.
pub fn fetch(repo: &Repository, name: &str, dest: &Path) -> Result<Fetched> {
    let wal = WalFileName::parse(name).map_err(|e| Error::invalid(e.to_string()))?;
    let found = find(repo, &wal)?;
    let Some(stored) = found.first() else {
        return Err(Error::not_found(format!("{name} is not in the archive {}", repo.location())));
    };
    if let Some(other) = found.iter().find(|s| s.object.checksum != stored.object.checksum) {
        return Err(Error::integrity(format!(
            "{name} is archived twice with different content ({} and {}): refusing to guess",
            stored.path, other.path
        )));
    }

    let file_name = dest
        .file_name()
        .ok_or_else(|| Error::invalid(format!("destination {} has no file name", dest.display())))?
        .to_string_lossy()
        .to_string();
    let temp_path = dest.with_file_name(format!(".{file_name}.dbbackup-{}.tmp", std::process::id()));
    let mut temp = TempFile(Some(temp_path.clone()));
    let out = File::create(&temp_path).map_err(|e| Error::io(format!("cannot create {}: {e}", temp_path.display())))?;
    let mut out = BufWriter::with_capacity(1 << 20, out);

    let mut reader = open_plain(repo, stored)?;
    let mut h = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    let mut header_checked = !matches!(wal.kind(), WalKind::Segment | WalKind::Partial);
    let mut head = Vec::with_capacity(LONG_HEADER_LEN);
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(pipeline_error(&stored.path, e)),
        };
        let chunk = &buf[..n];
        if !header_checked {
            let need = LONG_HEADER_LEN - head.len();
            head.extend_from_slice(&chunk[..need.min(n)]);
            if head.len() == LONG_HEADER_LEN {
                check_header(repo, &wal, &stored.path, &head)?;
                header_checked = true;
            }
        }
        h.update(chunk);
        total += n as u64;
        out.write_all(chunk).map_err(|e| Error::io(format!("cannot write {}: {e}", temp_path.display())))?;
    }
    let sum = hex::encode(h.finalize());
    if sum != stored.object.checksum {
        return Err(Error::integrity(format!(
            "{}: decoded content has SHA-256 {sum}, but it was archived with SHA-256 {}: the object is corrupt",
            stored.path, stored.object.checksum
        )));
    }
    if !header_checked {
        return Err(Error::integrity(format!(
            "{}: decoded content is only {total} bytes, too short for a WAL segment",
            stored.path
        )));
    }
    if let (Some(seg), WalKind::Segment | WalKind::Partial) = (repo.segment_size(), wal.kind()) {
        if total != u64::from(seg.bytes()) {
            return Err(Error::integrity(format!(
                "{}: decoded content is {total} bytes, expected a {} byte segment",
                stored.path,
                seg.bytes()
            )));
        }
    }
    out.flush().map_err(|e| Error::io(format!("cannot write {}: {e}", temp_path.display())))?;
    drop(out);
    fs::rename(&temp_path, dest)
        .map_err(|e| Error::io(format!("cannot move {} to {}: {e}", temp_path.display(), dest.display())))?;
    temp.0 = None;
    Ok(Fetched { path: stored.path.clone(), size: total })
}

fn check_header(repo: &Repository, wal: &WalFileName, path: &str, head: &[u8]) -> Result<()> {
    let expected = Expected {
        system_identifier: repo.identity().map(|c| c.system_identifier),
        major_version: repo.identity().map(|c| c.pg_version_major),
        segment_size: repo.segment_size(),
    };
    pagehdr::parse_long_header(head)
        .and_then(|h| h.check(wal, &expected))
        .map_err(|e| Error::integrity(format!("{path}: decoded segment does not belong here: {e}")))
}
