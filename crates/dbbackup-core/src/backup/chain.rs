//! Chains of backups: an incremental or differential backup holds only what
//! changed since its parent, so reading one of its files means reading the
//! newest whole copy below it and applying each change on top.
//!
//! A file of a chained backup is held one of three ways (docs/FORMAT.md):
//! whole (its own object), `unchanged` (the parent's bytes) or a `delta`
//! (the parent's bytes resized to the new size, with the changed blocks
//! replaced). [`Chain::read_file`] rebuilds the file in one sequential pass
//! over the whole copy and every delta at once (oldest to newest, a block
//! from the newest layer that holds it) and checks the result against the
//! checksum the backup recorded of the file as it read it; on a mismatch
//! each object is checked on its own, so the error names the damaged one.
//! A reconstruction that differs is never a silent wrong file.

use std::collections::HashMap;
use std::io::{Read, Write};

use dbbackup_format::manifest::{BackupStatus, BackupType, FileEntry, Manifest};

use crate::backup::base::file_aad;
use crate::backup::verify::verify_file;
use crate::backup::{backup_dir, blocks, read_manifest};
use crate::checksum::Checksum;
use crate::error::{pipeline_error, Error, ErrorKind, Result};
use crate::object::open_decoded;
use crate::repo::Repository;

/// Chains longer than this are refused as damaged (a parent loop).
const MAX_CHAIN: usize = 10_000;

/// A backup and every ancestor it needs, the full backup first.
#[derive(Debug, Clone)]
pub struct Chain {
    manifests: Vec<Manifest>,
    /// Per manifest: file path → index in its `files`.
    index: Vec<HashMap<String, usize>>,
}

/// Whether a parent's files can be read for a child: they are stored
/// (complete, pending on WAL, or expired by `wal cleanup`, whose files stay).
fn files_usable(m: &Manifest) -> bool {
    matches!(m.status, BackupStatus::Complete | BackupStatus::Pending | BackupStatus::Expired)
}

/// Whether backup `m` can be restored: complete, with its whole chain
/// among `all`.
pub fn restorable(all: &[Manifest], m: &Manifest) -> bool {
    m.status == BackupStatus::Complete && Chain::from_list(all, m).is_ok()
}

impl Chain {
    /// Loads the ancestors of `target` from the repository.
    pub fn load(repo: &Repository, target: Manifest) -> Result<Chain> {
        Self::build(target, |id| read_manifest(repo, id))
    }

    /// Builds the chain of `target` from manifests already read (`backup
    /// list`'s), without reading the repository again.
    pub fn from_list(all: &[Manifest], target: &Manifest) -> Result<Chain> {
        Self::build(target.clone(), |id| {
            all.iter().find(|m| m.id == id).cloned().ok_or_else(|| Error::not_found(format!("no backup {id}")))
        })
    }

    fn build(target: Manifest, mut get: impl FnMut(&str) -> Result<Manifest>) -> Result<Chain> {
        let mut manifests = vec![target];
        while let Some(parent) = manifests.last().and_then(|m| m.parent.clone()) {
            let child = manifests.last().expect("not empty").id.clone();
            if manifests.len() > MAX_CHAIN || manifests.iter().any(|m| m.id == parent) {
                return Err(Error::integrity(format!(
                    "backup {child} names parent {parent}, which loops back into its own chain: the manifests are damaged"
                )));
            }
            let p = get(&parent).map_err(|e| {
                Error::new(
                    e.kind(),
                    format!("backup {child} needs its parent backup {parent}, which cannot be read ({e}): it cannot be restored"),
                )
            })?;
            if !files_usable(&p) {
                return Err(Error::invalid(format!(
                    "backup {child} needs its parent backup {parent}, which is {} (its files are not all stored): it cannot be restored",
                    crate::backup::shown_status(&p, false)
                )));
            }
            manifests.push(p);
        }
        manifests.reverse();
        if manifests[0].backup_type != BackupType::Full {
            return Err(Error::integrity(format!(
                "backup {} is {} but names no parent: the manifest is damaged",
                manifests[0].id,
                manifests[0].backup_type.as_str()
            )));
        }
        let index =
            manifests.iter().map(|m| m.files.iter().enumerate().map(|(i, f)| (f.path.clone(), i)).collect()).collect();
        Ok(Chain { manifests, index })
    }

    pub fn target(&self) -> &Manifest {
        self.manifests.last().expect("a chain holds its target")
    }

    /// The backups, the full one first.
    pub fn manifests(&self) -> &[Manifest] {
        &self.manifests
    }

    /// IDs from the full backup to the target, as people read them.
    pub fn describe(&self) -> String {
        self.manifests.iter().map(|m| m.id.as_str()).collect::<Vec<_>>().join(" → ")
    }

    /// Bytes stored by every backup of the chain: what a restore reads at most.
    pub fn stored_bytes(&self) -> u64 {
        self.manifests.iter().map(|m| m.stored_bytes).sum()
    }

    /// The target's entry for `path`.
    pub fn target_entry(&self, path: &str) -> Option<&FileEntry> {
        self.entry(self.manifests.len() - 1, path)
    }

    fn entry(&self, level: usize, path: &str) -> Option<&FileEntry> {
        self.index[level].get(path).map(|i| &self.manifests[level].files[*i])
    }

    /// The manifest of backup `id` in this chain.
    pub fn manifest(&self, id: &str) -> Option<&Manifest> {
        self.manifests.iter().find(|m| m.id == id)
    }

    /// The layers that make file `f` of backup `level`: the whole copy,
    /// then each delta (oldest first), skipping `unchanged` levels (each
    /// checked to record the same bytes as the level below).
    fn layers<'a>(&'a self, level: usize, f: &'a FileEntry) -> Result<Layers<'a>> {
        let mut deltas = Vec::new();
        let mut lvl = level;
        let mut e = f;
        loop {
            if e.is_whole() {
                deltas.reverse();
                return Ok(Layers { base_level: lvl, base: e, deltas });
            }
            if e.delta.is_some() {
                deltas.push(lvl);
            }
            let child = &self.manifests[lvl].id;
            if lvl == 0 {
                return Err(Error::integrity(format!(
                    "backup {child} holds {} as a change but is a full backup: the manifest is damaged",
                    e.path
                )));
            }
            let below = self.entry(lvl - 1, &e.path).ok_or_else(|| {
                Error::integrity(format!(
                    "backup {child} holds {} as a change since backup {}, which does not have that file: the manifests are damaged",
                    e.path,
                    self.manifests[lvl - 1].id
                ))
            })?;
            if e.unchanged && (below.size != e.size || below.checksum != e.checksum) {
                return Err(Error::integrity(format!(
                    "backup {child} holds {} as unchanged since backup {}, whose copy differs: the manifests are damaged",
                    e.path,
                    self.manifests[lvl - 1].id
                )));
            }
            lvl -= 1;
            e = below;
        }
    }

    /// Writes the target's file `f` into `out`, verified.
    pub fn read_file(&self, repo: &Repository, f: &FileEntry, out: &mut (dyn Write + Send)) -> Result<()> {
        let level = self.manifests.len() - 1;
        let layers = self.layers(level, f)?;
        if layers.deltas.is_empty() {
            // Whole here or below, through unchanged levels only.
            return verify_file(repo, &self.manifests[layers.base_level], layers.base, out);
        }
        let merged = self.merge(repo, f, &layers, out);
        // The rebuilt file is checked whole, not each object on the way
        // (one BLAKE3 pass instead of two): on a mismatch, find and name
        // the damaged object.
        let merged = match merged {
            Err(e) if e.kind() == ErrorKind::Integrity => Err(self.culprit(repo, f, &layers).unwrap_or(e)),
            other => other,
        };
        merged.map_err(|e| {
            if layers.base_level == level {
                e
            } else {
                e.context(format!("file {} of backup {} (chain {})", f.path, self.target().id, self.describe()))
            }
        })
    }

    /// The first object of file `f`'s layers that does not decode to its
    /// recorded size and checksum.
    fn culprit(&self, repo: &Repository, f: &FileEntry, layers: &Layers<'_>) -> Option<Error> {
        let base_m = &self.manifests[layers.base_level];
        if let Err(e) = verify_file(repo, base_m, layers.base, &mut std::io::sink()) {
            return Some(e);
        }
        for &lvl in &layers.deltas {
            let m = &self.manifests[lvl];
            let d = self.entry(lvl, &f.path)?.delta.as_ref()?;
            let check = Stream::open(repo, m, &d.object, &blocks::delta_aad(&m.id, &f.path), d.size, &d.checksum, true)
                .and_then(Stream::finish);
            if let Err(e) = check {
                return Some(e);
            }
        }
        None
    }

    fn merge(&self, repo: &Repository, f: &FileEntry, layers: &Layers<'_>, out: &mut (dyn Write + Send)) -> Result<()> {
        let Layers { base_level, base, ref deltas } = *layers;
        let bs = self.manifests[deltas[0]].block_size.unwrap_or(8192) as u64;
        let base_m = &self.manifests[base_level];
        let mut base_s = Stream::open(
            repo,
            base_m,
            &base.object,
            &file_aad(&base_m.id, &base.path),
            base.size,
            &base.checksum,
            false,
        )?;
        struct Layer<'a> {
            stream: Stream,
            size: u64,
            blocks: Box<dyn Iterator<Item = u64> + 'a>,
            next: Option<u64>,
        }
        let mut layers = Vec::with_capacity(deltas.len());
        for &lvl in deltas {
            let m = &self.manifests[lvl];
            let e = self.entry(lvl, &f.path).expect("layers found it");
            let d = e.delta.as_ref().expect("a delta layer");
            if m.block_size.unwrap_or(8192) as u64 != bs {
                return Err(Error::integrity(format!(
                    "backups {} and {} of one chain record different block sizes",
                    self.manifests[deltas[0]].id, m.id
                )));
            }
            let stream =
                Stream::open(repo, m, &d.object, &blocks::delta_aad(&m.id, &f.path), d.size, &d.checksum, false)?;
            let mut it: Box<dyn Iterator<Item = u64>> = Box::new(d.blocks());
            let next = it.next();
            layers.push(Layer { stream, size: e.size, blocks: it, next });
        }
        let nblocks = |size: u64| size.div_ceil(bs);
        let blen = |size: u64, i: u64| bs.min(size.saturating_sub(i * bs));
        let mut buf = vec![0u8; bs as usize];
        let mut scratch = vec![0u8; bs as usize];
        let mut h = Checksum::new();
        let mut written = 0u64;
        for i in 0..nblocks(f.size) {
            let want = blen(f.size, i) as usize;
            let mut from: Option<usize> = None;
            // Newest first: the newest layer holding block i supplies it;
            // older ones holding it too are read past.
            for j in (0..layers.len()).rev() {
                let l = &mut layers[j];
                if l.next != Some(i) {
                    continue;
                }
                let n = blen(l.size, i) as usize;
                if from.is_none() {
                    if n != want {
                        return Err(Error::integrity(format!(
                            "{}: block {i} holds {n} bytes where {want} belong: the manifests are damaged",
                            l.stream.path
                        )));
                    }
                    l.stream.read_exact(&mut buf[..n])?;
                    from = Some(j);
                } else {
                    l.stream.read_exact(&mut scratch[..n])?;
                }
                l.next = l.blocks.next();
            }
            if i < nblocks(base.size) {
                let n = blen(base.size, i) as usize;
                if from.is_some() {
                    base_s.read_exact(&mut scratch[..n])?;
                } else {
                    if n != want || layers.iter().any(|l| i >= nblocks(l.size)) {
                        return Err(Error::integrity(format!(
                            "block {i} of {} is in no delta and not whole in {}: the manifests are damaged",
                            f.path, base_s.path
                        )));
                    }
                    base_s.read_exact(&mut buf[..n])?;
                }
            } else if from.is_none() {
                return Err(Error::integrity(format!(
                    "block {i} of {} is past the end of {} and in no delta: the manifests are damaged",
                    f.path, base_s.path
                )));
            }
            h.update(&buf[..want]);
            out.write_all(&buf[..want]).map_err(|e| Error::io(format!("cannot write {}: {e}", f.path)))?;
            written += want as u64;
        }
        base_s.finish()?;
        for l in layers {
            l.stream.finish()?;
        }
        let sum = h.hex();
        if sum != f.checksum || written != f.size {
            return Err(Error::integrity(format!(
                "{} rebuilt from chain {}: {written} bytes with checksum {sum}, the manifest records {} bytes with checksum {} (BLAKE3)",
                f.path,
                self.describe(),
                f.size,
                f.checksum
            )));
        }
        Ok(())
    }
}

/// Where one file of a chained backup comes from: the whole copy in backup
/// `base_level` of the chain, then the deltas of these levels, oldest first.
struct Layers<'a> {
    base_level: usize,
    base: &'a FileEntry,
    deltas: Vec<usize>,
}

/// One decoded object read in pieces, checked against its size (and, when
/// asked, its checksum) at the end.
struct Stream {
    r: std::io::BufReader<Box<dyn Read + Send>>,
    path: String,
    h: Option<Checksum>,
    n: u64,
    size: u64,
    checksum: String,
}

impl Stream {
    fn open(
        repo: &Repository,
        m: &Manifest,
        object: &str,
        aad: &str,
        size: u64,
        checksum: &str,
        hash: bool,
    ) -> Result<Stream> {
        let path = format!("{}/{object}", backup_dir(&m.id));
        let r = open_decoded(repo, &path, m.codec, m.encrypted, aad)?;
        Ok(Stream {
            r: std::io::BufReader::with_capacity(256 << 10, r),
            path,
            h: hash.then(Checksum::new),
            n: 0,
            size,
            checksum: checksum.to_string(),
        })
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Error::integrity(format!(
                    "{}: ends after {} bytes, the manifest records {} bytes: the object is damaged",
                    self.path,
                    self.n + buf.len() as u64,
                    self.size
                ))
            } else {
                pipeline_error(&self.path, e)
            }
        })?;
        if let Some(h) = self.h.as_mut() {
            h.update(buf);
        }
        self.n += buf.len() as u64;
        Ok(())
    }

    /// Reads the rest and checks size and checksum.
    fn finish(mut self) -> Result<()> {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match self.r.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    if let Some(h) = self.h.as_mut() {
                        h.update(&buf[..k]);
                    }
                    self.n += k as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(pipeline_error(&self.path, e)),
            }
        }
        let sum = self.h.as_ref().map(Checksum::hex);
        if sum.as_ref().is_some_and(|s| *s != self.checksum) || self.n != self.size {
            let sum = sum.unwrap_or_else(|| "not computed".into());
            return Err(Error::integrity(format!(
                "{}: decoded {} bytes with checksum {sum}, the manifest records {} bytes with checksum {} (BLAKE3)",
                self.path, self.n, self.size, self.checksum
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, parent: Option<&str>, status: &str) -> Manifest {
        let t = if parent.is_some() { "incr" } else { "full" };
        serde_json::from_value(serde_json::json!({
            "format_version": 2, "id": id, "label": id, "status": status, "error": null,
            "start_time": "2026-11-01T00:00:00Z", "stop_time": null, "start_lsn": null, "start_wal": null,
            "stop_lsn": null, "stop_wal": null, "timeline": 1, "system_identifier": "1",
            "pg_version_major": 15, "pg_version": "15.0", "wal_segment_size": 16777216, "codec": "zstd",
            "compress_level": 1, "encrypted": false, "host": "h", "pid": 1, "dbbackup_version": "0",
            "size_bytes": 0, "stored_bytes": 5, "tablespaces": [], "directories": [], "files": [],
            "type": t, "parent": parent
        }))
        .unwrap()
    }

    #[test]
    fn chains_are_followed_to_the_full_backup_and_damage_is_named() {
        let all = vec![m("F", None, "complete"), m("A", Some("F"), "complete"), m("B", Some("A"), "complete")];
        let c = Chain::from_list(&all, &all[2]).unwrap();
        assert_eq!(c.describe(), "F → A → B");
        assert_eq!(c.stored_bytes(), 15);
        let e = Chain::from_list(&[m("B", Some("A"), "complete")], &m("B", Some("A"), "complete")).unwrap_err();
        assert!(e.to_string().contains("backup B needs its parent backup A, which cannot be read"), "{e}");
        let failed = vec![m("F", None, "failed"), m("A", Some("F"), "complete")];
        let e = Chain::from_list(&failed, &failed[1]).unwrap_err();
        assert!(e.to_string().contains("backup A needs its parent backup F, which is failed"), "{e}");
        // An expired parent's files are still there.
        let expired = vec![m("F", None, "expired"), m("A", Some("F"), "complete")];
        assert!(Chain::from_list(&expired, &expired[1]).is_ok());
        let looped = vec![m("A", Some("B"), "complete"), m("B", Some("A"), "complete")];
        let e = Chain::from_list(&looped, &looped[0]).unwrap_err();
        assert!(e.to_string().contains("loops back"), "{e}");
        let mut headless = m("X", None, "complete");
        headless.backup_type = BackupType::Incr;
        assert!(Chain::from_list(&[], &headless).unwrap_err().to_string().contains("names no parent"));
    }
}
