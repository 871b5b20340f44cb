//! WAL in the repository: archiving (`archive`), fetching (`fetch`) and the
//! lookups they share.

pub mod archive;
pub mod fetch;

use std::io::Read;

use dbbackup_format::object::{wal_dir_for, ObjectName};
use dbbackup_format::WalFileName;

use crate::codec::decoder;
use crate::crypto::DecryptReader;
use crate::error::{Error, Result};
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

/// Opens a stored object as a stream of its plaintext. The caller hashes
/// what it reads and compares with `object.checksum`.
pub fn open_plain(repo: &Repository, stored: &StoredWal) -> Result<Box<dyn Read + Send>> {
    let raw = repo.storage().open(&stored.path).map_err(|e| Error::from(e).context("cannot open archived object"))?;
    let raw = std::io::BufReader::with_capacity(256 << 10, raw);
    let inner: Box<dyn Read + Send> = if stored.object.encrypted {
        let key = repo.key().ok_or_else(|| {
            Error::key(format!("{} is encrypted but the repository has no key configured", stored.path))
        })?;
        Box::new(
            DecryptReader::new(key, &stored.object.original, raw)
                .map_err(|e| crate::error::pipeline_error(&stored.path, e))?,
        )
    } else {
        Box::new(raw)
    };
    decoder(stored.object.codec, inner).map_err(|e| crate::error::pipeline_error(&stored.path, e))
}
