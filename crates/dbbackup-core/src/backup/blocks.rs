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

use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};
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

/// The chaining value of block `index` (BLAKE3's hash of that subtree of
/// the file: blocks are powers of two of at least 1 KiB, so each one is a
/// subtree of the file's BLAKE3 tree).
fn block_cv(block_size: usize, index: u64, block: &[u8]) -> ChainingValue {
    let mut h = blake3::Hasher::new();
    h.set_input_offset(index * block_size as u64);
    h.update(block);
    h.finalize_non_root()
}

fn short(cv: &ChainingValue) -> BlockHash {
    let mut out = [0u8; HASH_LEN];
    out.copy_from_slice(&cv[..HASH_LEN]);
    out
}

/// Hashes a file's blocks as its bytes go by and, from the same work, the
/// whole file's BLAKE3 hash: each block's chaining value goes into the
/// block map and is merged up BLAKE3's tree (one pass over the bytes, not
/// two).
#[derive(Debug)]
pub struct BlockHasher {
    block_size: usize,
    /// Bytes of a block not yet complete ([`BlockHasher::update`]).
    partial: Vec<u8>,
    /// The first block's bytes while it is the only one: a one-block file's
    /// hash is that block's root hash, not a merge.
    first: Vec<u8>,
    /// The last block's chaining value, not yet merged: whether its merges
    /// are the root's is known only at the end.
    pending: Option<ChainingValue>,
    /// Blocks merged into `stack`.
    merged: u64,
    /// BLAKE3's stack of subtree chaining values.
    stack: Vec<ChainingValue>,
    hashes: Vec<BlockHash>,
}

impl BlockHasher {
    /// `block_size`: a power of two of at least 1 KiB (every PostgreSQL
    /// block size is).
    pub fn new(block_size: usize) -> BlockHasher {
        assert!(block_size.is_power_of_two() && block_size >= blake3::CHUNK_LEN, "block size {block_size}");
        BlockHasher {
            block_size,
            partial: Vec::new(),
            first: Vec::new(),
            pending: None,
            merged: 0,
            stack: Vec::new(),
            hashes: Vec::new(),
        }
    }

    /// Hashes the next block (every block but the file's last is whole)
    /// and returns its hash.
    pub fn add_block(&mut self, block: &[u8]) -> BlockHash {
        debug_assert!(self.pending.is_none() || self.hashes.len() as u64 == self.merged + 1);
        let index = self.hashes.len() as u64;
        let cv = block_cv(self.block_size, index, block);
        if let Some(mut prev) = self.pending.take() {
            // Each trailing zero bit of the count completes a subtree.
            self.merged += 1;
            let mut total = self.merged;
            while total & 1 == 0 {
                let left = self.stack.pop().expect("a completed subtree has a left half");
                prev = merge_subtrees_non_root(&left, &prev, Mode::Hash);
                total >>= 1;
            }
            self.stack.push(prev);
        }
        match index {
            0 => self.first = block.to_vec(),
            1 => self.first = Vec::new(),
            _ => {}
        }
        self.pending = Some(cv);
        let h = short(&cv);
        self.hashes.push(h);
        h
    }

    /// Hashes bytes as they come, in pieces of any size.
    pub fn update(&mut self, mut bytes: &[u8]) {
        let bs = self.block_size;
        if !self.partial.is_empty() {
            let take = (bs - self.partial.len()).min(bytes.len());
            self.partial.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.partial.len() < bs {
                return;
            }
            let block = std::mem::take(&mut self.partial);
            self.add_block(&block);
        }
        let mut blocks = bytes.chunks_exact(bs);
        for b in &mut blocks {
            self.add_block(b);
        }
        self.partial.extend_from_slice(blocks.remainder());
    }

    /// The block hashes (the last, short block included) and the whole
    /// file's BLAKE3 hash as 64 hex digits.
    pub fn finish(mut self) -> (Vec<BlockHash>, String) {
        if !self.partial.is_empty() {
            let block = std::mem::take(&mut self.partial);
            self.add_block(&block);
        }
        if self.hashes.len() <= 1 {
            return (self.hashes, blake3::hash(&self.first).to_hex().to_string());
        }
        let mut cv = self.pending.expect("the last block");
        let mut root = None;
        for (i, left) in self.stack.iter().enumerate().rev() {
            if i == 0 {
                root = Some(merge_subtrees_root(left, &cv, Mode::Hash));
            } else {
                cv = merge_subtrees_non_root(left, &cv, Mode::Hash);
            }
        }
        (self.hashes, root.expect("two blocks or more make a stack").to_hex().to_string())
    }
}

/// A reader that hashes the blocks it passes on (a whole file on its way
/// into the object pipeline).
pub struct HashingReader<'a> {
    pub inner: &'a mut dyn Read,
    pub blocks: BlockHasher,
}

impl Read for HashingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.blocks.update(&buf[..n]);
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
    fn one_pass_gives_the_files_blake3_hash_and_block_hashes_however_bytes_arrive() {
        let data: Vec<u8> = (0..(3u64 << 20) + 4321).map(|i| (i * 7 % 251) as u8).collect();
        let sizes = [
            0usize,
            1,
            1023,
            1024,
            1025,
            8191,
            8192,
            8193,
            16384,
            16385,
            24576 + 5,
            65536,
            100_000,
            131_072,
            (1 << 20) + 17,
            3 << 20,
            data.len(),
        ];
        for bs in [1024usize, 8192, 32768] {
            for &n in &sizes {
                let input = &data[..n];
                let mut whole = BlockHasher::new(bs);
                whole.update(input);
                let (hashes, root) = whole.finish();
                assert_eq!(root, blake3::hash(input).to_hex().to_string(), "size {n}, block {bs}");
                assert_eq!(hashes.len(), n.div_ceil(bs), "size {n}");
                if n > bs {
                    // A block's hash does not depend on the rest of the file.
                    let mut again = BlockHasher::new(bs);
                    again.update(&input[..2 * bs.min(n / 2)]);
                    assert_eq!(again.finish().0[0], hashes[0]);
                }
                for step in [1, 100, bs - 1, bs, bs + 1, 65536] {
                    if n > 200_000 && step < 100 {
                        continue;
                    }
                    let mut h = BlockHasher::new(bs);
                    for c in input.chunks(step) {
                        h.update(c);
                    }
                    assert_eq!(h.finish(), (hashes.clone(), root.clone()), "size {n}, step {step}, block {bs}");
                }
            }
        }
        // A changed byte changes its block's hash only.
        let mut changed = data[..100_000].to_vec();
        changed[50_000] ^= 1;
        let (a, b) = (BlockHasher::new(8192), BlockHasher::new(8192));
        let (mut a, mut b) = (a, b);
        a.update(&data[..100_000]);
        b.update(&changed);
        let (ha, hb) = (a.finish().0, b.finish().0);
        let differ: Vec<usize> = (0..ha.len()).filter(|i| ha[*i] != hb[*i]).collect();
        assert_eq!(differ, [50_000 / 8192]);
    }

    #[test]
    fn runs_group_consecutive_blocks() {
        assert_eq!(runs(&[]), Vec::<[u64; 2]>::new());
        assert_eq!(runs(&[0, 1, 2, 5, 7, 8]), vec![[0, 3], [5, 1], [7, 2]]);
    }
}
