//! `wal archive`: PostgreSQL's `archive_command`.
//!
//! read → validate the segment header → checksum (the object's name holds
//! it) → compress → encrypt → write the object under its final key, never
//! replacing (on a local disk: temporary file, fsync, link, fsync of the
//! directory; on an object store: the acknowledged upload). Success is
//! returned only after all of it; any doubt is an error so PostgreSQL
//! retries.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::object::read_full;
use std::path::Path;

use dbbackup_format::meta::ClusterIdentity;
use dbbackup_format::object::{wal_dir_for, ObjectName};
use dbbackup_format::pagehdr::{self, Expected};
use dbbackup_format::{SegmentSize, WalFileName, WalKind};

use crate::checksum::Checksum;
use crate::codec::CodecSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::object::{encode, encode_unhashed};
use crate::repo::{now_rfc3339, Repository};
use crate::storage::{Commit, ObjectWriter, StorageError};
use crate::wal::{decode_verified, find, StoredWal, WAL_LOCK};

/// Largest non-segment file (history, backup label) we accept.
const MAX_SMALL_FILE: u64 = 64 << 20;
const BUF: usize = 1 << 20;

/// What `archive` did.
#[derive(Debug, Clone)]
pub enum Archived {
    /// A new object was stored.
    Stored { path: String, checksum: String, original_size: u64, stored_size: u64 },
    /// The same content was already archived; nothing was written.
    AlreadyArchived { path: String, checksum: String },
    /// The same content was archived but the stored copy was damaged; it
    /// was replaced by this good copy.
    Repaired { path: String, checksum: String, damage: String },
}

/// Archives the file at `source` under WAL name `name`.
/// In a live `pg_wal` (one with `archive_status/`), PostgreSQL marks a file
/// `.ready` once it is finished, before it calls archive_command, and
/// `.done` after. A file with neither is still being written: archived by
/// hand now, its unfinished content would be stored under the name and
/// the finished segment refused as a differing duplicate for ever. A copy
/// of an unfinished segment goes under a `.partial` name.
///
/// Checked only where PostgreSQL archives (some file is marked): with
/// archive_mode = off no file ever is.
///
/// Returns whether PostgreSQL marked the file finished (then it is never
/// written again).
fn check_finished(source: &Path, wal: &WalFileName) -> Result<bool> {
    if wal.kind() == WalKind::Partial {
        return Ok(false);
    }
    let (Some(dir), Some(base)) = (source.parent(), source.file_name()) else { return Ok(false) };
    let status = dir.join("archive_status");
    if !status.is_dir() {
        return Ok(false);
    }
    let base = base.to_string_lossy();
    let marked = |ext: &str| status.join(format!("{base}.{ext}")).exists();
    if marked("ready") || marked("done") {
        return Ok(true);
    }
    // Without any mark PostgreSQL is not archiving here (archive_mode =
    // off): nothing tells finished from unfinished, so nothing is refused.
    let archiving = std::fs::read_dir(&status).map(|d| {
        d.flatten().any(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".ready") || n.ends_with(".done")))
    });
    if !archiving.unwrap_or(false) {
        return Ok(false);
    }
    Err(Error::invalid(format!(
        "{} is not finished: PostgreSQL has not marked it ready for archiving ({}/{base}.ready is missing), so it is still being written; archiving it now would store unfinished WAL under {wal} and refuse the finished segment later. PostgreSQL archives it by itself once it is finished (SELECT pg_switch_wal() finishes it now); to keep a copy of it as it is, archive it as {wal}.partial",
        source.display(),
        status.display()
    )))
}

pub fn archive(repo: &mut Repository, source: &Path, name: &str, codec: Option<CodecSettings>) -> Result<Archived> {
    archive_with_threads(repo, source, name, codec, 2)
}

/// [`archive`] with `threads` zstd workers for this one file (0: one
/// thread compresses). The asynchronous worker pushes several segments at
/// once and takes its parallelism from them instead.
pub fn archive_with_threads(
    repo: &mut Repository,
    source: &Path,
    name: &str,
    codec: Option<CodecSettings>,
    threads: u32,
) -> Result<Archived> {
    let wal = WalFileName::parse(name).map_err(|e| Error::invalid(e.to_string()))?;
    // Opening a FIFO would block for ever; a directory is a mistake.
    let meta =
        std::fs::metadata(source).map_err(|e| Error::io(format!("cannot read WAL file {}: {e}", source.display())))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!("{} is not a regular file: nothing to archive", source.display())));
    }
    // A finished segment is the same file from before the first read to
    // after the second exactly when nothing about it changed: the second
    // read then need not checksum it again.
    let unchanged = if check_finished(source, &wal)? { FileId::of(source) } else { None };
    let mut file =
        File::open(source).map_err(|e| Error::io(format!("cannot read WAL file {}: {e}", source.display())))?;
    let size = file.metadata().map_err(|e| Error::io(format!("cannot stat {}: {e}", source.display())))?.len();

    // Validate before anything is stored: size, then the first page header.
    let is_segment = matches!(wal.kind(), WalKind::Segment | WalKind::Partial);
    let mut first = vec![0u8; BUF];
    let first_len =
        read_full(&mut file, &mut first).map_err(|e| Error::io(format!("cannot read {}: {e}", source.display())))?;
    first.truncate(first_len);
    if is_segment {
        check_segment(repo, &wal, source, size, &first)?;
    } else if size > MAX_SMALL_FILE {
        return Err(Error::invalid(format!(
            "{} is {size} bytes: too large for a {} file",
            source.display(),
            wal.kind()
        )));
    } else if first_len as u64 == size {
        dbbackup_format::history::check_content(&wal, &first, repo.segment_size()).map_err(|e| {
            Error::invalid(format!("{} (archived as {wal}): {e}; refusing to archive it", source.display()))
        })?;
    }

    // The object's name holds the checksum, so it is known before a byte
    // is stored (an object store has no rename). A retry of an already
    // archived file stops here, without compressing anything.
    let mut h = Checksum::new();
    h.update(&first);
    hash_rest(&mut file, &mut h).map_err(|e| Error::io(format!("cannot read {}: {e}", source.display())))?;
    let checksum = h.hex();
    let existing = find(repo, &wal)?;
    if !existing.is_empty() {
        return settle_duplicate(repo, &wal, &existing, &checksum, source, codec);
    }
    file.seek(SeekFrom::Start(first.len() as u64))
        .map_err(|e| Error::io(format!("cannot read {}: {e}", source.display())))?;

    // Workers compress zstd frames while this thread reads and checksums
    // (see `object::encode`).
    let settings = CodecSettings { threads, ..codec.unwrap_or_else(|| repo.codec_settings()) };
    store(repo, &wal, source, &first, &mut file, size, &checksum, settings, unchanged.as_ref())
}

/// Which file was read. PostgreSQL never writes a segment again once it is
/// marked finished, so the same inode with the same size and times is the
/// same content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileId {
    /// The file at `path` now.
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        let ns = |s: i64, n: i64| i128::from(s) * 1_000_000_000 + i128::from(n);
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: ns(m.mtime(), m.mtime_nsec()),
            ctime_ns: ns(m.ctime(), m.ctime_nsec()),
        })
    }
}

fn hash_rest(r: &mut impl Read, h: &mut Checksum) -> io::Result<u64> {
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = read_full(r, &mut buf)?;
        if n == 0 {
            return Ok(total);
        }
        h.update(&buf[..n]);
        total += n as u64;
    }
}

/// Checks a segment's size and header against its name and the repository,
/// binding an unbound repository to the segment's cluster.
fn check_segment(repo: &mut Repository, wal: &WalFileName, source: &Path, size: u64, first: &[u8]) -> Result<()> {
    let shown = source.display();
    if size == 0 {
        return Err(Error::invalid(format!("WAL file {shown} is empty (0 bytes): not a complete segment")));
    }
    if let Some(seg) = repo.segment_size() {
        if size != u64::from(seg.bytes()) {
            return Err(Error::invalid(format!(
                "WAL file {shown} is {size} bytes, but segments of this repository's cluster are {} bytes: the file is truncated or oversized, or comes from a cluster with another WAL segment size",
                seg.bytes()
            )));
        }
    }
    let header = pagehdr::parse_long_header(first).map_err(|e| Error::invalid(format!("WAL file {shown}: {e}")))?;
    let expected = Expected {
        system_identifier: repo.identity().map(|c| c.system_identifier),
        major_version: repo.identity().map(|c| c.pg_version_major),
        segment_size: repo.segment_size(),
    };
    header.check(wal, &expected).map_err(|e| {
        let kind = match e {
            pagehdr::HeaderError::SystemIdMismatch { .. } | pagehdr::HeaderError::VersionMismatch { .. } => {
                ErrorKind::Identity
            }
            _ => ErrorKind::Invalid,
        };
        Error::new(kind, format!("WAL file {shown} (archived as {wal}): {e}; repository {}", repo.location()))
    })?;
    if repo.identity().is_none() {
        let seg = SegmentSize::new(header.segment_size).ok_or_else(|| {
            Error::invalid(format!("WAL file {shown}: impossible segment size {}", header.segment_size))
        })?;
        if size != u64::from(seg.bytes()) {
            return Err(Error::invalid(format!(
                "WAL file {shown} is {size} bytes, but its header says segments are {} bytes: the file is truncated or oversized",
                seg.bytes()
            )));
        }
        let version = pagehdr::major_version_for_magic(header.magic).expect("checked by parse_long_header");
        repo.bind(ClusterIdentity {
            system_identifier: header.system_identifier,
            pg_version_major: version,
            wal_segment_size: header.segment_size,
            bound_at: now_rfc3339(),
            bound_from: format!("wal {wal}"),
        })?;
        // Re-check against what is now bound (another process may have won).
        let expected = Expected {
            system_identifier: repo.identity().map(|c| c.system_identifier),
            major_version: repo.identity().map(|c| c.pg_version_major),
            segment_size: repo.segment_size(),
        };
        header.check(wal, &expected).map_err(|e| {
            Error::identity(format!("WAL file {shown} (archived as {wal}): {e}; repository {}", repo.location()))
        })?;
    }
    Ok(())
}

/// Decides what an archive of already-stored content means.
fn settle_duplicate(
    repo: &Repository,
    wal: &WalFileName,
    existing: &[StoredWal],
    checksum: &str,
    source: &Path,
    codec: Option<CodecSettings>,
) -> Result<Archived> {
    let same = existing.iter().find(|s| s.object.checksum == checksum);
    let Some(same) = same else {
        let theirs = &existing[0];
        return Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "{wal} is already archived with different content: the repository's copy {} has checksum {}, the file {} has checksum {checksum} (BLAKE3); refusing to overwrite archived WAL (is another cluster archiving into repository {}, or was this segment archived by hand before PostgreSQL finished it?)",
                theirs.path,
                theirs.object.checksum,
                source.display(),
                repo.location()
            ),
        ));
    };
    // Identical name and checksum: make sure the stored copy is really good
    // before telling PostgreSQL it may recycle its own.
    match verify_object(repo, same) {
        Ok(()) => Ok(Archived::AlreadyArchived { path: same.path.clone(), checksum: checksum.to_string() }),
        Err(e) if e.kind() == ErrorKind::Integrity => {
            let mut f =
                File::open(source).map_err(|e| Error::io(format!("cannot read WAL file {}: {e}", source.display())))?;
            let size = f.metadata().map_err(|e| Error::io(format!("cannot stat {}: {e}", source.display())))?.len();
            let settings = CodecSettings { codec: same.object.codec, ..codec.unwrap_or_else(|| repo.codec_settings()) };
            let pending =
                write_object(repo, wal, source, &[], &mut f, size, checksum, settings, Commit::Replace, None)?;
            pending.writer.commit().map_err(Error::from)?;
            Ok(Archived::Repaired { path: same.path.clone(), checksum: checksum.to_string(), damage: e.to_string() })
        }
        Err(e) => Err(e),
    }
}

/// Decodes a stored object completely and checks it.
pub fn verify_object(repo: &Repository, stored: &StoredWal) -> Result<()> {
    decode_verified(repo, stored, &mut io::sink()).map(|_| ())
}

/// A written, not yet committed object.
struct Pending {
    writer: Box<dyn ObjectWriter>,
    path: String,
    original_size: u64,
    stored_size: u64,
}

/// Streams `first` + the rest of `file` through the codec pipeline into
/// the object named after `checksum` (not yet committed). The file must
/// still have that checksum and `expected_size`: it may not change while
/// it is archived. `unchanged`: a finished segment as it was before the
/// checksum was taken; still that file afterwards, it is not hashed again.
#[allow(clippy::too_many_arguments)]
fn write_object(
    repo: &Repository,
    wal: &WalFileName,
    source: &Path,
    first: &[u8],
    file: &mut File,
    expected_size: u64,
    checksum: &str,
    settings: CodecSettings,
    mode: Commit,
    unchanged: Option<&FileId>,
) -> Result<Pending> {
    let name = wal.to_string();
    let object = ObjectName {
        original: name.clone(),
        checksum: checksum.to_string(),
        codec: settings.codec,
        encrypted: repo.key().is_some(),
    };
    let path = format!("{}/{object}", wal_dir_for(wal));
    let mut writer = repo
        .storage()
        .create(&path, mode)
        .map_err(|e| Error::from(e).context(format!("cannot write to repository {}", repo.location())))?;
    let shown = source.display().to_string();
    let enc = match unchanged {
        Some(_) => encode_unhashed(repo, writer.as_mut(), &name, settings, first, file, &shown)?,
        None => encode(repo, writer.as_mut(), &name, settings, first, file, &shown)?,
    };
    let changed = match unchanged {
        Some(id) => FileId::of(source).as_ref() != Some(id),
        None => enc.checksum.as_deref() != Some(checksum),
    };
    if enc.plain_size != expected_size || changed {
        return Err(Error::io(format!(
            "{shown} changed while it was being archived ({expected_size} bytes with checksum {checksum}, then {} bytes{})",
            enc.plain_size,
            enc.checksum.map(|c| format!(" with checksum {c}")).unwrap_or_else(|| ", another file or modified".into())
        )));
    }
    Ok(Pending { writer, path, original_size: enc.plain_size, stored_size: enc.stored_size })
}

#[allow(clippy::too_many_arguments)]
fn store(
    repo: &Repository,
    wal: &WalFileName,
    source: &Path,
    first: &[u8],
    file: &mut File,
    size: u64,
    checksum: &str,
    settings: CodecSettings,
    unchanged: Option<&FileId>,
) -> Result<Archived> {
    let pending = write_object(repo, wal, source, first, file, size, checksum, settings, Commit::NoReplace, unchanged)?;
    let checksum = checksum.to_string();
    // The duplicate check and the link happen under one lock, so two
    // archivers of one name (even with different codecs) store one object;
    // on an object store the lock is the name's, so that segments pushed
    // at once do not queue behind each other's round trips.
    let lock = if repo.storage().per_name_locks() { format!("locks/wal-{wal}.lock") } else { WAL_LOCK.to_string() };
    let _lock = repo
        .storage()
        .lock(&lock)
        .map_err(|e| Error::io(format!("cannot lock repository {}: {e}", repo.location())))?;
    let existing = find(repo, wal)?;
    if !existing.is_empty() {
        drop(pending);
        return settle_duplicate(repo, wal, &existing, &checksum, source, Some(settings));
    }
    let path = pending.path.clone();
    let pending_dir = wal_dir_for(wal);
    let (original_size, stored_size) = (pending.original_size, pending.stored_size);
    let committed = pending.writer.commit();
    // Temporary objects of archivers killed mid-write, an hour idle.
    let _ = repo.storage().remove_stale_temps(&pending_dir, std::time::Duration::from_secs(3600));
    match committed {
        Ok(()) => Ok(Archived::Stored { path, checksum, original_size, stored_size }),
        Err(StorageError::AlreadyExists { .. }) => Ok(Archived::AlreadyArchived { path, checksum }),
        Err(e) => Err(Error::from(e).context(format!("cannot store {wal} in repository {}", repo.location()))),
    }
}
