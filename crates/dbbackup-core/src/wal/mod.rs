//! WAL in the repository: archiving (`archive`), fetching (`fetch`) and the
//! lookups they share.

pub mod archive;
pub mod async_archive;
pub mod catalog;
pub mod fetch;
pub mod prefetch;
pub mod search;
pub mod verify;

use std::io::{Read, Write};

use dbbackup_format::object::{wal_dir_for, ObjectName};
use dbbackup_format::pagehdr::{self, Expected, LONG_HEADER_LEN};
use dbbackup_format::{WalFileName, WalKind};

use crate::checksum::Checksum;
use crate::error::{pipeline_error, Error, Result};
use crate::repo::Repository;

/// Lock serializing the final step of archiving (duplicate check + link).
pub const WAL_LOCK: &str = "locks/wal.lock";

/// A stored WAL object: where it is and what its name says.
#[derive(Debug, Clone)]
pub struct StoredWal {
    pub path: String,
    pub object: ObjectName,
    pub stored_size: u64,
}

/// Every stored object holding `name` (normally zero or one).
pub fn find(repo: &Repository, name: &WalFileName) -> Result<Vec<StoredWal>> {
    let dir = wal_dir_for(name);
    let wanted = name.to_string();
    let entries = repo
        .storage()
        .list(&dir)
        .map_err(|e| Error::io(format!("cannot list repository {} directory {dir}: {e}", repo.location())))?;
    Ok(entries
        .into_iter()
        .filter(|e| !e.is_dir && e.name.starts_with(&wanted))
        .filter_map(|e| {
            let object = ObjectName::parse(&e.name)?;
            (object.original == wanted).then(|| StoredWal {
                path: format!("{dir}/{}", e.name),
                object,
                stored_size: e.size,
            })
        })
        .collect())
}

/// Opens a stored WAL object as a stream of its plaintext.
pub fn open_plain(repo: &Repository, stored: &StoredWal) -> Result<Box<dyn Read + Send>> {
    let o = &stored.object;
    crate::object::open_decoded(repo, &stored.path, o.codec, o.encrypted, &o.original)
}

/// Decodes a stored object completely into `out`, checking everything that
/// can be checked: authentication (encrypted), the codec's own framing, the
/// plaintext checksum recorded in the name and, for segments, the page header
/// and the size. Returns the plaintext size. `out` may have received bytes
/// when this fails: write to a temporary place.
pub fn decode_verified(repo: &Repository, stored: &StoredWal, out: &mut (dyn Write + Send)) -> Result<u64> {
    let wal =
        WalFileName::parse(&stored.object.original).map_err(|e| Error::integrity(format!("{}: {e}", stored.path)))?;
    let reader = open_plain(repo, stored)?;
    let mut h = Checksum::new();
    let is_segment = matches!(wal.kind(), WalKind::Segment | WalKind::Partial);
    let mut head = Vec::with_capacity(LONG_HEADER_LEN);
    let mut header_checked = !is_segment;
    let name = &stored.object.original;
    let pumped = crate::object::pump(
        reader,
        |chunk| {
            if !header_checked {
                let need = LONG_HEADER_LEN - head.len();
                head.extend_from_slice(&chunk[..need.min(chunk.len())]);
                if head.len() == LONG_HEADER_LEN {
                    check_header(repo, &wal, &stored.path, &head)?;
                    header_checked = true;
                }
            }
            h.update(chunk);
            Ok(())
        },
        |chunk| out.write_all(chunk).map_err(|e| Error::io(format!("cannot write {name}: {e}"))),
    );
    let total = match pumped {
        Ok(t) => t,
        Err(crate::object::PumpError::Read(e)) => return Err(pipeline_error(&stored.path, e)),
        Err(crate::object::PumpError::Sink(e)) => return Err(e),
    };
    let sum = h.hex();
    if sum != stored.object.checksum {
        return Err(Error::integrity(format!(
            "{}: decoded content has checksum {sum}, but it was archived with checksum {} (BLAKE3): the object is corrupt",
            stored.path, stored.object.checksum
        )));
    }
    if !header_checked {
        return Err(Error::integrity(format!(
            "{}: decoded content is only {total} bytes, too short for a WAL segment",
            stored.path
        )));
    }
    if let (Some(seg), true) = (repo.segment_size(), is_segment) {
        if total != u64::from(seg.bytes()) {
            return Err(Error::integrity(format!(
                "{}: decoded content is {total} bytes, expected a {} byte segment",
                stored.path,
                seg.bytes()
            )));
        }
    }
    Ok(total)
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
