//! Block maps: what lets a backup store only the blocks that changed.
//!
//! Every backup records, for each file of at least [`MAP_MIN`] bytes, a
//! 16-byte hash (BLAKE3, truncated) of each block as it read it, in the
//! object `maps/<path>` of the backup. An incremental backup reads each
//! file whole, hashes its blocks and stores those whose hash differs from
//! the parent's map: a change is found by content, whatever wrote it (WAL,
//! hint bits, `CREATE DATABASE` copying files with old page LSNs, a file
//! truncated and re-extended, a relfilenode reused). Page LSNs are not
//! trusted to say "unchanged" for that reason (docs/backups.md).

use std::io::{self, Read};

use dbbackup_format::manifest::{Manifest, MapRef};
use dbbackup_format::Codec;

use crate::backup::backup_dir;
use crate::checksum::Checksum;
use crate::error::{pipeline_error, Error, Result};
use crate::object::open_decoded;
use crate::repo::Repository;

/// Files smaller than this are compared by their whole-file checksum and,
/// when changed, stored whole (a map would cost more than it saves).
pub const MAP_MIN: u64 = 128 << 10;
/// Bytes of a block hash.
pub const HASH_LEN: usize = 16;

pub type BlockHash = [u8; HASH_LEN];

pub fn block_hash(block: &[u8]) -> BlockHash {
    let h = blake3::hash(block);
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&h.as_bytes()[..HASH_LEN]);
    out
}

/// Where a file's changed blocks lie, relative to the backup directory.
pub fn delta_rel(rel: &str, codec: Codec, encrypted: bool) -> String {
    format!("deltas/{rel}{}{}", codec.suffix(), if encrypted { ".enc" } else { "" })
}

/// Where a file's block map lies, relative to the backup directory.
pub fn map_rel(rel: &str, codec: Codec, encrypted: bool) -> String {
    format!("maps/{rel}{}{}", codec.suffix(), if encrypted { ".enc" } else { "" })
}

/// The names bound into encrypted delta and map objects: one cannot be
/// passed off as another, or as a whole file.
pub fn delta_aad(id: &str, rel: &str) -> String {
    format!("backup/{id}/{rel}#delta")
}

pub fn map_aad(id: &str, rel: &str) -> String {
    format!("backup/{id}/{rel}#map")
}

/// Hashes blocks as bytes go by.
#[derive(Debug)]
pub struct BlockHasher {
    block_size: usize,
    partial: Vec<u8>,
    pub hashes: Vec<BlockHash>,
}

impl BlockHasher {
    pub fn new(block_size: usize) -> BlockHasher {
        BlockHasher { block_size, partial: Vec::with_capacity(block_size), hashes: Vec::new() }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        if !self.partial.is_empty() {
            let take = (self.block_size - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() == self.block_size {
                self.hashes.push(block_hash(&self.partial));
                self.partial.clear();
            }
        }
        let mut chunks = bytes.chunks_exact(self.block_size);
        for c in &mut chunks {
            self.hashes.push(block_hash(c));
        }
        self.partial.extend_from_slice(chunks.remainder());
    }

    /// The hashes, the last (short) block included.
    pub fn finish(mut self) -> Vec<BlockHash> {
        if !self.partial.is_empty() {
            self.hashes.push(block_hash(&self.partial));
        }
        self.hashes
    }
}

/// A reader that hashes the blocks it passes on (a whole file on its way
/// into the object pipeline).
pub struct HashingReader<'a> {
    pub inner: &'a mut dyn Read,
    pub blocks: Option<BlockHasher>,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = self.blocks.as_mut() {
            b.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// The map as stored: the hashes, concatenated.
pub fn map_bytes(hashes: &[BlockHash]) -> Vec<u8> {
    hashes.concat()
}

/// Reads and checks the block map `r` of file `rel`; `owner` is the
/// manifest of the backup holding it.
pub fn load_map(repo: &Repository, owner: &Manifest, rel: &str, r: &MapRef) -> Result<Vec<BlockHash>> {
    let path = format!("{}/{}", backup_dir(&owner.id), map_rel(rel, owner.codec, owner.encrypted));
    let mut rd = open_decoded(repo, &path, owner.codec, owner.encrypted, &map_aad(&owner.id, rel))?;
    let mut bytes = Vec::new();
    rd.read_to_end(&mut bytes).map_err(|e| pipeline_error(&path, e))?;
    let mut h = Checksum::new();
    h.update(&bytes);
    if h.hex() != r.checksum || bytes.len() % HASH_LEN != 0 {
        return Err(Error::integrity(format!(
            "{path}: the block map does not match its checksum in the manifest (BLAKE3 {}, recorded {})",
            h.hex(),
            r.checksum
        )));
    }
    Ok(bytes.chunks_exact(HASH_LEN).map(|c| c.try_into().expect("16 bytes")).collect())
}

/// The runs `[first, count]` of ascending block numbers.
pub fn runs(blocks: &[u64]) -> Vec<[u64; 2]> {
    let mut out: Vec<[u64; 2]> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some([first, n]) if *first + *n == b => *n += 1,
            _ => out.push([b, 1]),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_do_not_depend_on_how_bytes_arrive() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut whole = BlockHasher::new(8192);
        whole.update(&data);
        let whole = whole.finish();
        assert_eq!(whole.len(), 100_000usize.div_ceil(8192));
        for step in [1, 100, 8191, 8192, 8193, 65536] {
            let mut h = BlockHasher::new(8192);
            for c in data.chunks(step) {
                h.update(c);
            }
            assert_eq!(h.finish(), whole, "step {step}");
        }
        assert_eq!(whole[12], block_hash(&data[12 * 8192..]));
    }

    #[test]
    fn runs_group_consecutive_blocks() {
        assert_eq!(runs(&[]), Vec::<[u64; 2]>::new());
        assert_eq!(runs(&[0, 1, 2, 5, 7, 8]), vec![[0, 3], [5, 1], [7, 2]]);
    }
}
