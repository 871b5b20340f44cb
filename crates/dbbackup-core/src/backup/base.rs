//! `backup base`: an online physical backup through the repository's
//! codec pipeline.
//!
//! On one held connection: `pg_backup_start` → copy the data directory and
//! tablespaces in parallel (streaming, skipping what pg_basebackup skips,
//! tolerating files that vanish or change) → `pg_backup_stop` → store
//! `backup_label` and `tablespace_map` → wait until every WAL segment from
//! start to stop is archived → mark the manifest complete. Any failure marks
//! it failed and ends the server's backup mode.

use std::fs::{self, File};
use std::io::{self, Cursor};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use dbbackup_format::manifest::{
    excluded_file, BackupStatus, BackupType, Delta, DirEntry, FileEntry, Manifest, MapRef, Tablespace, EMPTY_DIRS,
    MANIFEST_VERSION_CHAINED, MANIFEST_VERSION_FULL,
};
use dbbackup_format::{Lsn, SegmentSize, TimelineId, WalFileName};

use crate::backup::blocks::{self, BlockHasher};
use crate::backup::chain::Chain;
use crate::backup::{backup_dir, write_manifest, BACKUP_LOCK, RETENTION_LOCK};
use crate::codec::CodecSettings;
use crate::error::{Error, ErrorKind, Result};
use crate::object::{encode, encode_unhashed};
use crate::pg::error_text;
use crate::pitr;
use crate::repo::{now_rfc3339, Repository};
use crate::storage::Commit;

/// How to take the backup.
#[derive(Debug, Clone)]
pub struct BaseOptions {
    pub label: Option<String>,
    pub jobs: usize,
    pub codec: Option<CodecSettings>,
    /// Ask for an immediate checkpoint.
    pub fast: bool,
    /// Wait until the WAL from start to stop is archived (else the backup
    /// stays `pending` unless that WAL is already there).
    pub wait_archive: bool,
    pub archive_timeout: Duration,
    /// How long to wait for a segment that proves archiving, when
    /// archive_command's text cannot tell (a wrapper script).
    pub archive_check_timeout: Duration,
    /// The caller already ran [`check_archiving`] (before creating the
    /// repository): do not switch WAL a second time.
    pub archiving_checked: bool,
    /// Full, or only the changes since the newest backup (incr) or the
    /// newest full backup (diff); `None`: incr when a complete backup
    /// exists, else full.
    pub backup_type: Option<BackupType>,
}

/// What `backup base` was asked, before the repository is open.
#[derive(Debug, Clone)]
pub struct BackupRequest {
    /// How a missing repository is created (and the codec asked for).
    pub create: crate::repo::CreateOptions,
    pub label: Option<String>,
    pub jobs: usize,
    pub fast: bool,
    pub wait_archive: bool,
    pub archive_timeout: Duration,
    pub archive_check_timeout: Duration,
    pub backup_type: Option<BackupType>,
}

/// The whole `backup base`: refuses a role that cannot back up and a
/// server that does not archive into this repository before anything is
/// created, opens (or creates and binds) the repository, and takes the
/// backup. `say` receives the lines a user reads while it runs.
pub fn backup(
    client: &mut postgres::Client,
    storage: std::sync::Arc<dyn crate::storage::Storage>,
    keys: &crate::keys::KeySource,
    r: &BackupRequest,
    progress: &Progress,
    say: &dyn Fn(&str),
) -> Result<(Repository, Manifest)> {
    check_privileges(client)?;
    // A missing repository is checked here, before it is created and
    // bound; an existing one by `take`, its cluster identity first.
    let mut archiving_checked = false;
    if Repository::can_init(storage.as_ref()) {
        if let Some(seg) = check_archiving(client, &storage, r.archive_check_timeout)? {
            say(&format!("archiving proven: {seg} arrived in repository {}", storage.location()));
        }
        archiving_checked = true;
    }
    let mut repo = crate::repo::open_or_create(storage, keys, &r.create)?;
    if repo.identity().is_none() {
        let ident = crate::pg::server_identity(client)?;
        repo.bind(crate::repo::identity_from_server(ident))?;
    }
    let opts = BaseOptions {
        label: r.label.clone(),
        jobs: r.jobs.max(1),
        codec: repo.codec_choice(r.create.codec, r.create.level)?,
        fast: r.fast,
        wait_archive: r.wait_archive,
        archive_timeout: r.archive_timeout,
        archive_check_timeout: r.archive_check_timeout,
        archiving_checked,
        backup_type: r.backup_type,
    };
    if !opts.fast {
        say("starting the backup: PostgreSQL first finishes a spread checkpoint, which can take up to checkpoint_timeout (--fast checkpoints at once)");
    }
    let m = take(&mut repo, client, &opts, progress, say)?;
    Ok((repo, m))
}

/// Progress, for a progress bar.
#[derive(Debug, Default)]
pub struct Progress {
    pub total_bytes: AtomicU64,
    pub done_bytes: AtomicU64,
}

struct Job {
    rel: String,
    abs: PathBuf,
    size: u64,
}

/// A new backup ID: the start time in UTC.
fn new_id() -> String {
    jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ").to_string()
}

/// The server's current time as RFC 3339 UTC with microseconds.
fn server_now(client: &mut postgres::Client) -> Result<String> {
    client
        .query_one("SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')", &[])
        .map(|r| r.get(0))
        .map_err(sql_err("cannot read the server's clock"))
}

fn sql_err(what: &str) -> impl Fn(postgres::Error) -> Error + '_ {
    move |e| Error::server(format!("{what}: {}", error_text(&e)))
}

/// Base backups are taken on the primary.
fn refuse_standby(client: &mut postgres::Client) -> Result<()> {
    let in_recovery: bool = client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .map(|r| r.get(0))
        .map_err(sql_err("cannot query the server"))?;
    if in_recovery {
        return Err(Error::invalid("the server is a standby (in recovery): take base backups on the primary"));
    }
    Ok(())
}

/// Checks that the server archives into the repository at `repo` (before
/// a backup creates or binds anything there). An archive_command that
/// names this repository passes by its text; one that can exit 0 when
/// dbbackup fails (`... || true`) or names another repository is refused;
/// one whose text cannot tell (a wrapper script) is proven with a real
/// segment, waiting up to `proof_timeout`. Returns the segment when it
/// was proven.
pub fn check_archiving(
    client: &mut postgres::Client,
    storage: &std::sync::Arc<dyn crate::storage::Storage>,
    proof_timeout: Duration,
) -> Result<Option<String>> {
    let location = storage.location();
    let repo = Path::new(&location);
    refuse_standby(client)?;
    let settings = pitr::read_settings(client)?;
    let mode = settings.get("archive_mode").map(|s| s.value.as_str()).unwrap_or("off");
    let cmd = settings.get("archive_command").map(|s| s.value.clone()).unwrap_or_default();
    let library = settings.get("archive_library").map(|s| s.value.clone()).unwrap_or_default();
    let loc = repo.display().to_string();
    let fix = format!("run `{}` first (and restart if it says so)", pitr::enable_command(&loc));
    if mode == "off" {
        return Err(Error::invalid(format!(
            "PostgreSQL is not archiving WAL (archive_mode = off): a backup without its WAL cannot be restored; {fix}"
        )));
    }
    if !library.is_empty() {
        return Err(Error::invalid(format!(
            "PostgreSQL archives through archive_library = '{library}', not archive_command: dbbackup's repository {loc} does not get the WAL; reset archive_library (ALTER SYSTEM RESET archive_library) and {fix}"
        )));
    }
    let data_dir: Option<PathBuf> = crate::pg::data_directory(client).ok();
    let shown = if cmd.is_empty() { "''".to_string() } else { cmd.clone() };
    match pitr::analyze_archive_command(&cmd, data_dir.as_deref()) {
        pitr::CommandShape::Empty => Err(Error::invalid(format!(
            "PostgreSQL does not archive into repository {loc} (archive_command is empty); {fix}"
        ))),
        pitr::CommandShape::Swallowing { reason, fix: change, .. } => Err(Error::invalid(format!(
            "archive_command can report success when dbbackup fails, so PostgreSQL would remove WAL that never reached repository {loc}: {reason} (archive_command: {shown}); {change} and reload, or run `{}`, which writes a plain dbbackup command", pitr::enable_command(&loc)
        ))),
        pitr::CommandShape::Dbbackup(invs) if invs.iter().any(|i| i.repo.is_some()) => {
            let id = crate::repo::Repository::read_meta(storage.as_ref()).ok().and_then(|m| m.id);
            if invs.iter().any(|i| pitr::archives_into(i, repo, id.as_deref())) {
                Ok(None)
            } else {
                Err(Error::invalid(format!(
                    "PostgreSQL does not archive into repository {loc} (archive_command: {shown}); {fix}"
                )))
            }
        }
        // A wrapper script, another tool, or dbbackup with a repository
        // the text does not show: only a real segment can tell.
        _ => pitr::prove_archiving(client, storage, proof_timeout)
            .map(Some)
            .map_err(|e| {
                Error::invalid(format!(
                    "cannot confirm from its text that archive_command archives into repository {loc} (archive_command: {shown}), and the check with a real segment failed: {e}; fix archive_command (or {fix}), or give the archiver more time with --archive-check-timeout SECONDS"
                ))
            }),
    }
}

/// An SQL identifier as GRANT needs it: plain lower-case names bare, any
/// other quoted.
fn sql_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('"', "\"\""))
    }
}

/// Checks that the connected role may take a backup, before anything is
/// written: a superuser, or a role with EXECUTE on the backup functions and
/// the privileges of pg_read_all_settings (`SHOW data_directory`). A refusal
/// names the role and the GRANTs that fix it.
pub fn check_privileges(client: &mut postgres::Client) -> Result<()> {
    let major: i32 = client
        .query_one("SELECT current_setting('server_version_num')::int / 10000", &[])
        .map(|r| r.get(0))
        .map_err(sql_err("cannot query the server"))?;
    let (start_fn, stop_fn) = if major >= 15 {
        ("pg_backup_start(text, boolean)", "pg_backup_stop(boolean)")
    } else {
        ("pg_start_backup(text, boolean, boolean)", "pg_stop_backup(boolean, boolean)")
    };
    let row = client
        .query_one(
            &format!(
                "SELECT current_user::text, coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false), \
                        has_function_privilege('{start_fn}', 'EXECUTE'), has_function_privilege('{stop_fn}', 'EXECUTE'), \
                        pg_has_role('pg_read_all_settings', 'USAGE')"
            ),
            &[],
        )
        .map_err(sql_err("cannot check the role's privileges"))?;
    let (user, superuser, start, stop, settings): (String, bool, bool, bool, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if superuser || (start && stop && settings) {
        return Ok(());
    }
    let role = sql_ident(&user);
    let mut missing = Vec::new();
    let mut grants = Vec::new();
    for (ok, f) in [(start, start_fn), (stop, stop_fn)] {
        if !ok {
            missing.push(format!("EXECUTE on {f}"));
            grants.push(format!("GRANT EXECUTE ON FUNCTION {f} TO {role};"));
        }
    }
    if !settings {
        missing.push("the privileges of pg_read_all_settings (to read data_directory)".to_string());
        grants.push(format!("GRANT pg_read_all_settings TO {role};"));
    }
    Err(Error::server(format!(
        "role {user} cannot take a base backup: it is not a superuser and lacks {}; nothing was started. \
         As a superuser, run: {} Or connect as a superuser with --user",
        match missing.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
            _ => missing.join(""),
        },
        grants.join(" ")
    )))
}

/// Walks the data directory: directories to recreate, files to copy,
/// tablespaces.
fn walk(pgdata: &Path) -> Result<(Vec<DirEntry>, Vec<Job>, Vec<Tablespace>)> {
    let mut dirs = Vec::new();
    let mut jobs = Vec::new();
    let mut spcs = Vec::new();
    let mut stack: Vec<(String, PathBuf)> = vec![(String::new(), pgdata.to_path_buf())];
    while let Some((rel, abs)) = stack.pop() {
        let rd = match fs::read_dir(&abs) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("cannot read directory {}: {e}", abs.display()))),
        };
        for entry in rd {
            let entry = entry.map_err(|e| Error::io(format!("cannot read directory {}: {e}", abs.display())))?;
            let name = entry.file_name().to_string_lossy().to_string();
            let child_rel = if rel.is_empty() { name.clone() } else { format!("{rel}/{name}") };
            let child_abs = entry.path();
            let lmeta = match fs::symlink_metadata(&child_abs) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("cannot stat {}: {e}", child_abs.display()))),
            };
            if lmeta.file_type().is_symlink() && rel == "pg_tblspc" {
                let target = fs::read_link(&child_abs)
                    .map_err(|e| Error::io(format!("cannot read link {}: {e}", child_abs.display())))?;
                let oid: u32 = name
                    .parse()
                    .map_err(|_| Error::invalid(format!("unexpected entry {} in pg_tblspc", child_abs.display())))?;
                spcs.push(Tablespace { oid, location: target.display().to_string() });
                dirs.push(DirEntry { path: child_rel.clone(), mode: 0o700 });
                stack.push((child_rel, target));
                continue;
            }
            // Follow other symlinks (a pg_wal elsewhere, say) as what they point to.
            let meta = match fs::metadata(&child_abs) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("cannot stat {}: {e}", child_abs.display()))),
            };
            if meta.is_dir() {
                if name.starts_with("pgsql_tmp") {
                    continue;
                }
                dirs.push(DirEntry { path: child_rel.clone(), mode: meta.permissions().mode() & 0o7777 });
                if EMPTY_DIRS.contains(&child_rel.as_str()) {
                    if child_rel == "pg_wal" {
                        dirs.push(DirEntry { path: "pg_wal/archive_status".into(), mode: 0o700 });
                    }
                    continue;
                }
                stack.push((child_rel, child_abs));
            } else if meta.is_file() && !excluded_file(&child_rel) {
                jobs.push(Job { rel: child_rel, abs: child_abs, size: meta.len() });
            }
        }
    }
    dirs.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((dirs, jobs, spcs))
}

/// Where a backed-up file's object lies, relative to the backup directory.
pub fn object_rel(rel: &str, codec: dbbackup_format::Codec, encrypted: bool) -> String {
    format!("data/{rel}{}{}", codec.suffix(), if encrypted { ".enc" } else { "" })
}

/// The name bound into an encrypted backup file.
pub fn file_aad(id: &str, rel: &str) -> String {
    format!("backup/{id}/{rel}")
}

/// What every file copy of one backup shares.
struct Copier<'a> {
    repo: &'a Repository,
    id: &'a str,
    settings: CodecSettings,
    progress: &'a Progress,
    /// The parent's chain, for an incremental or differential backup.
    parent: Option<&'a Chain>,
    block_size: usize,
}

fn mtime_text(mtime: i64) -> String {
    jiff::Timestamp::from_second(mtime).map(|t| t.to_string()).unwrap_or_default()
}

impl Copier<'_> {
    /// Copies one file into the backup: whole, or (with a parent) as
    /// unchanged or as its changed blocks. `Ok(None)` when it vanished.
    fn copy(&self, job: &Job) -> Result<Option<FileEntry>> {
        let Some(mut f) = open_job(job)? else { return Ok(None) };
        let meta = f.metadata().map_err(|e| Error::io(format!("cannot stat {}: {e}", job.abs.display())))?;
        let (mode, mtime) = (meta.permissions().mode() & 0o7777, meta.mtime());
        let parent = self.parent.and_then(|c| c.target_entry(&job.rel).map(|e| (c, e)));
        let Some((chain, pe)) = parent else {
            return self.whole(&job.rel, &mut f, mode, mtime).map(Some);
        };
        if meta.len() < blocks::MAP_MIN && pe.size < blocks::MAP_MIN {
            return self.small(job, &mut f, mode, mtime, pe).map(Some);
        }
        let map = pe.map.as_ref().and_then(|r| {
            let owner = chain.manifest(&r.backup)?;
            blocks::load_map(self.repo, owner, &job.rel, r)
                .inspect_err(|e| tracing::warn!("{e}; {} is compared whole instead", job.rel))
                .ok()
        });
        match map {
            Some(map) => self.delta(job, &mut f, mode, mtime, pe, &map),
            None => self.scan(job, &mut f, mode, mtime, pe),
        }
    }

    /// Stores a whole file (and its block map when it is large enough).
    /// The file's checksum and block hashes come from one pass of
    /// [`BlockHasher`] over what the pipeline reads.
    fn whole(&self, rel: &str, reader: &mut dyn io::Read, mode: u32, mtime: i64) -> Result<FileEntry> {
        let object = object_rel(rel, self.settings.codec, self.repo.key().is_some());
        let full = format!("{}/{object}", backup_dir(self.id));
        let mut w = self
            .repo
            .storage()
            .create(&full, Commit::NoReplace)
            .map_err(|e| Error::from(e).context(format!("cannot store {rel}")))?;
        let mut hashing = blocks::HashingReader { inner: reader, blocks: BlockHasher::new(self.block_size) };
        let enc =
            encode_unhashed(self.repo, w.as_mut(), &file_aad(self.id, rel), self.settings, &[], &mut hashing, rel)?;
        w.commit().map_err(|e| Error::from(e).context(format!("cannot store {rel}")))?;
        self.progress.done_bytes.fetch_add(enc.plain_size, Ordering::Relaxed);
        let (hashes, checksum) = hashing.blocks.finish();
        let mut e = FileEntry {
            path: rel.to_string(),
            size: enc.plain_size,
            mode,
            mtime: mtime_text(mtime),
            checksum,
            stored_size: enc.stored_size,
            object,
            unchanged: false,
            delta: None,
            map: None,
        };
        if e.size >= blocks::MAP_MIN {
            let (r, stored) = self.store_map(rel, &hashes)?;
            e.map = Some(r);
            e.stored_size += stored;
        }
        Ok(e)
    }

    fn store_map(&self, rel: &str, hashes: &[blocks::BlockHash]) -> Result<(MapRef, u64)> {
        let path =
            format!("{}/{}", backup_dir(self.id), blocks::map_rel(rel, self.settings.codec, self.repo.key().is_some()));
        let mut w = self
            .repo
            .storage()
            .create(&path, Commit::NoReplace)
            .map_err(|e| Error::from(e).context(format!("cannot store the block map of {rel}")))?;
        let bytes = blocks::map_bytes(hashes);
        let enc = encode(
            self.repo,
            w.as_mut(),
            &blocks::map_aad(self.id, rel),
            self.settings,
            &[],
            &mut Cursor::new(bytes),
            rel,
        )?;
        w.commit().map_err(|e| Error::from(e).context(format!("cannot store the block map of {rel}")))?;
        Ok((MapRef { backup: self.id.to_string(), checksum: enc.checksum.expect("encode checksums") }, enc.stored_size))
    }

    #[allow(clippy::too_many_arguments)]
    fn unchanged(
        &self,
        rel: &str,
        size: u64,
        mode: u32,
        mtime: i64,
        checksum: String,
        map: Option<MapRef>,
        stored: u64,
    ) -> FileEntry {
        FileEntry {
            path: rel.to_string(),
            size,
            mode,
            mtime: mtime_text(mtime),
            checksum,
            stored_size: stored,
            object: String::new(),
            unchanged: true,
            delta: None,
            map,
        }
    }

    /// A small file: compared by its checksum, stored whole when it changed.
    fn small(&self, job: &Job, f: &mut File, mode: u32, mtime: i64, pe: &FileEntry) -> Result<FileEntry> {
        let mut bytes = Vec::with_capacity(job.size as usize);
        io::Read::read_to_end(f, &mut bytes)
            .map_err(|e| Error::io(format!("cannot read {}: {e}", job.abs.display())))?;
        let sum = crate::checksum::of(&bytes);
        if bytes.len() as u64 == pe.size && sum == pe.checksum {
            self.progress.done_bytes.fetch_add(pe.size, Ordering::Relaxed);
            return Ok(self.unchanged(&job.rel, pe.size, mode, mtime, sum, pe.map.clone(), 0));
        }
        self.whole(&job.rel, &mut Cursor::new(bytes), mode, mtime)
    }

    /// A large file whose parent copy has no block map (taken by an older
    /// dbbackup, or its map unreadable): read once to compare it whole; a
    /// changed file is then stored whole (read again).
    fn scan(&self, job: &Job, f: &mut File, mode: u32, mtime: i64, pe: &FileEntry) -> Result<Option<FileEntry>> {
        let mut hasher = BlockHasher::new(self.block_size);
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = crate::object::read_full(f, &mut buf)
                .map_err(|e| Error::io(format!("cannot read {}: {e}", job.abs.display())))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            total += n as u64;
        }
        let (hashes, sum) = hasher.finish();
        if total == pe.size && sum == pe.checksum {
            self.progress.done_bytes.fetch_add(total, Ordering::Relaxed);
            let (r, stored) = self.store_map(&job.rel, &hashes)?;
            return Ok(Some(self.unchanged(&job.rel, total, mode, mtime, pe.checksum.clone(), Some(r), stored)));
        }
        let Some(mut f) = open_job(job)? else { return Ok(None) };
        self.whole(&job.rel, &mut f, mode, mtime).map(Some)
    }

    /// A large file with the parent's block map: reads it once, stores the
    /// blocks whose hash differs from the map's (and every block past the
    /// parent's end) and the new map.
    fn delta(
        &self,
        job: &Job,
        f: &mut File,
        mode: u32,
        mtime: i64,
        pe: &FileEntry,
        map: &[blocks::BlockHash],
    ) -> Result<Option<FileEntry>> {
        let encrypted = self.repo.key().is_some();
        let object = blocks::delta_rel(&job.rel, self.settings.codec, encrypted);
        let full = format!("{}/{object}", backup_dir(self.id));
        let bs = self.block_size;
        let mut reader = io::BufReader::with_capacity(1 << 20, &mut *f);
        let mut hasher = BlockHasher::new(bs);
        let mut changed: Vec<u64> = Vec::new();
        let mut total = 0u64;
        let mut block = vec![0u8; bs];
        // Changed blocks go to an encoder thread through a bounded channel
        // (a few MiB in flight whatever the file's size); `Err` aborts it so
        // that a read error never commits a short object.
        let stored = std::thread::scope(|s| -> Result<Option<crate::object::Encoded>> {
            let mut tx: Option<std::sync::mpsc::SyncSender<std::result::Result<Vec<u8>, ()>>> = None;
            let mut worker = None;
            let mut batch: Vec<u8> = Vec::new();
            let start = |tx: &mut Option<_>, worker: &mut Option<_>| {
                let (t, rx) = std::sync::mpsc::sync_channel::<std::result::Result<Vec<u8>, ()>>(4);
                *tx = Some(t);
                let full = full.clone();
                let rel = job.rel.clone();
                *worker = Some(s.spawn(move || -> Result<crate::object::Encoded> {
                    let mut w = self
                        .repo
                        .storage()
                        .create(&full, Commit::NoReplace)
                        .map_err(|e| Error::from(e).context(format!("cannot store the changes of {rel}")))?;
                    let mut r = ChannelReader { rx, cur: Vec::new(), pos: 0 };
                    let enc = encode(
                        self.repo,
                        w.as_mut(),
                        &blocks::delta_aad(self.id, &rel),
                        self.settings,
                        &[],
                        &mut r,
                        &rel,
                    )?;
                    w.commit().map_err(|e| Error::from(e).context(format!("cannot store the changes of {rel}")))?;
                    Ok(enc)
                }));
            };
            let read = (|| -> Result<()> {
                loop {
                    let n = crate::object::read_full(&mut reader, &mut block)
                        .map_err(|e| Error::io(format!("cannot read {}: {e}", job.abs.display())))?;
                    if n == 0 {
                        break;
                    }
                    let b = &block[..n];
                    let i = changed_index(total, bs);
                    let h = hasher.add_block(b);
                    if map.get(i) != Some(&h) {
                        changed.push(i as u64);
                        if tx.is_none() {
                            start(&mut tx, &mut worker);
                        }
                        batch.extend_from_slice(b);
                        if batch.len() >= 1 << 20 {
                            let full_batch = std::mem::take(&mut batch);
                            if tx.as_ref().expect("started").send(Ok(full_batch)).is_err() {
                                return Ok(()); // the encoder failed: its error is reported below
                            }
                        }
                    }
                    total += n as u64;
                    if n < bs {
                        break;
                    }
                }
                Ok(())
            })();
            match read {
                Ok(()) => {
                    if tx.is_none() && total != pe.size {
                        // Shorter (truncated) with no changed block: an empty delta.
                        start(&mut tx, &mut worker);
                    }
                    if let Some(t) = tx.take() {
                        if !batch.is_empty() {
                            let _ = t.send(Ok(std::mem::take(&mut batch)));
                        }
                    }
                }
                Err(e) => {
                    if let Some(t) = tx.take() {
                        let _ = t.send(Err(()));
                    }
                    if let Some(w) = worker.take() {
                        let _ = w.join();
                    }
                    return Err(e);
                }
            }
            let enc = match worker {
                Some(w) => {
                    Some(w.join().map_err(|_| Error::io(format!("storing the changes of {} panicked", job.rel)))??)
                }
                None => None,
            };
            Ok(enc)
        })?;
        self.progress.done_bytes.fetch_add(total, Ordering::Relaxed);
        let (hashes, checksum) = hasher.finish();
        let Some(enc) = stored else {
            if checksum == pe.checksum {
                return Ok(Some(self.unchanged(&job.rel, total, mode, mtime, checksum, pe.map.clone(), 0)));
            }
            // Every block matches the map but the file does not match the
            // parent's checksum: the map does not describe the parent's
            // copy. In doubt, store the file whole.
            tracing::warn!("{}: block map of the parent disagrees with its checksum; stored whole", job.rel);
            let Some(mut f) = open_job(job)? else { return Ok(None) };
            return self.whole(&job.rel, &mut f, mode, mtime).map(Some);
        };
        let (r, map_stored) = self.store_map(&job.rel, &hashes)?;
        Ok(Some(FileEntry {
            path: job.rel.clone(),
            size: total,
            mode,
            mtime: mtime_text(mtime),
            checksum,
            stored_size: enc.stored_size + map_stored,
            object: String::new(),
            unchanged: false,
            delta: Some(Delta {
                object,
                runs: blocks::runs(&changed),
                size: enc.plain_size,
                checksum: enc.checksum.expect("encode checksums"),
            }),
            map: Some(r),
        }))
    }
}

/// The number of the block starting at byte `offset`.
fn changed_index(offset: u64, block_size: usize) -> usize {
    (offset / block_size as u64) as usize
}

/// The changed blocks, as the encoder reads them.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<std::result::Result<Vec<u8>, ()>>,
    cur: Vec<u8>,
    pos: usize,
}

impl io::Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(v)) => {
                    self.cur = v;
                    self.pos = 0;
                }
                Ok(Err(())) => return Err(io::Error::other("reading the file failed")),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

fn open_job(job: &Job) -> Result<Option<File>> {
    match File::open(&job.abs) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("cannot read {}: {e}", job.abs.display()))),
    }
}

/// Copies all jobs with `jobs` threads; stops at the first error.
fn copy_parallel(c: &Copier<'_>, work: &[Job], jobs: usize) -> Result<Vec<FileEntry>> {
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let out = Mutex::new(Vec::with_capacity(work.len()));
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| {
                while !abort.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = work.get(i) else { break };
                    match c.copy(job) {
                        Ok(Some(e)) => out.lock().expect("not poisoned").push(e),
                        Ok(None) => tracing::debug!("{} vanished during the backup; skipped", job.rel),
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            first_err.lock().expect("not poisoned").get_or_insert(e);
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().expect("threads joined") {
        return Err(e);
    }
    Ok(out.into_inner().expect("threads joined"))
}

/// Without `--type`, backups are incremental until a chain holds this many
/// (the full backup and six incrementals: a week of nightly backups).
pub const DEFAULT_CHAIN: usize = 7;

/// The parent of a new incremental (newest complete backup) or
/// differential (newest complete full backup) backup, with its chain; `None`
/// for a full backup, which is what the first backup of a repository is
/// whatever was asked (said through `say`).
fn choose_parent(
    repo: &Repository,
    want: Option<BackupType>,
    block_size: u32,
    major: u32,
    say: &dyn Fn(&str),
) -> Result<Option<(BackupType, Chain)>> {
    if want == Some(BackupType::Full) {
        return Ok(None);
    }
    let (all, _) = crate::backup::list(repo)?;
    let complete = all.iter().filter(|m| m.status == BackupStatus::Complete);
    let asked = want.is_some();
    let Some(want) = want.or_else(|| complete.clone().next().map(|_| BackupType::Incr)) else {
        say(&format!("repository {} has no complete backup yet: this backup is full", repo.location()));
        return Ok(None);
    };
    // The newest complete backup (full, for a diff) whose chain is whole:
    // one whose ancestors are gone cannot be built on.
    let candidate =
        complete.rev().filter(|m| want != BackupType::Diff || m.backup_type == BackupType::Full).find_map(|m| {
            match Chain::from_list(&all, m) {
                Ok(c) => Some((m, c)),
                Err(e) => {
                    say(&format!("passing over backup {} as a parent: {e}", m.id));
                    None
                }
            }
        });
    let full_instead = |why: String| {
        let what = if asked { format!("--type {}", want.as_str()) } else { "an incremental".to_string() };
        say(&format!("{why}: this backup is full ({what} needs one to build on)"));
        Ok(None)
    };
    let Some((p, c)) = candidate else {
        let what = if want == BackupType::Diff { "full backup" } else { "backup" };
        return full_instead(format!("repository {} has no complete {what} yet", repo.location()));
    };
    if p.block_size.is_some_and(|b| b != block_size) || p.pg_version_major != major {
        return full_instead(format!(
            "the newest complete backup, {}, was taken of PostgreSQL {} with {}-byte blocks, the server runs {major} with {block_size}-byte blocks",
            p.id,
            p.pg_version_major,
            p.block_size.unwrap_or(8192)
        ));
    }
    // Unasked, a chain stops growing at DEFAULT_CHAIN backups: a nightly
    // `backup base` then makes a full backup once a week, so retention
    // (which expires chains whole) keeps working and a restore reads a
    // bounded number of deltas.
    if !asked && c.manifests().len() >= DEFAULT_CHAIN {
        say(&format!(
            "the chain on backup {} already holds {} backups: this backup is full (--type incr extends the chain anyway)",
            p.id,
            c.manifests().len()
        ));
        return Ok(None);
    }
    say(&format!("{} backup on top of backup {} (chain {})", want.as_str(), p.id, c.describe()));
    Ok(Some((want, c)))
}

/// Takes a base backup. The server connection must be a superuser's (or
/// have the backup functions granted: see [`check_privileges`]). A refusal
/// or a failing `pg_backup_start` leaves no entry; a failure after it
/// records the backup as `failed`.
pub fn take(
    repo: &mut Repository,
    client: &mut postgres::Client,
    opts: &BaseOptions,
    progress: &Progress,
    say: &dyn Fn(&str),
) -> Result<Manifest> {
    let _lock = repo
        .storage()
        .try_lock(BACKUP_LOCK)
        .map_err(|e| Error::io(format!("cannot lock repository {}: {e}", repo.location())))?
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Conflict,
                format!(
                    "another `dbbackup backup base` is running on repository {}: wait for it to finish (on an object store, the lease of one that was killed runs out within 60 s)",
                    repo.location()
                ),
            )
        })?;
    refuse_standby(client)?;
    check_privileges(client)?;
    let ident = crate::pg::server_identity(client)?;
    repo.check_identity(&crate::repo::identity_from_server(ident), "this server")?;
    if !opts.archiving_checked {
        if let Some(seg) = check_archiving(client, repo.storage(), opts.archive_check_timeout)? {
            tracing::info!("archiving proven: {seg} arrived in repository {} after pg_switch_wal()", repo.location());
        }
    }
    let data_dir: String = client
        .query_one("SHOW data_directory", &[])
        .map(|r| r.get(0))
        .map_err(sql_err("cannot read data_directory"))?;
    let pgdata = PathBuf::from(&data_dir);
    if !pgdata.join("PG_VERSION").is_file() {
        return Err(Error::invalid(format!(
            "the server's data directory {data_dir} is not readable here: run `dbbackup backup base` on the database host as the PostgreSQL OS user"
        )));
    }
    let version: String = client
        .query_one("SHOW server_version", &[])
        .map(|r| r.get(0))
        .map_err(sql_err("cannot read server_version"))?;
    let settings = opts.codec.unwrap_or_else(|| repo.codec_settings());
    let size = SegmentSize::new(ident.wal_segment_size)
        .ok_or_else(|| Error::server(format!("impossible wal_segment_size {}", ident.wal_segment_size)))?;
    let host = fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default();
    let block_size: u32 = client
        .query_one("SHOW block_size", &[])
        .map(|r| r.get::<_, String>(0))
        .map_err(sql_err("cannot read block_size"))?
        .parse()
        .map_err(|_| Error::server("the server reports an impossible block_size"))?;

    let mut id = new_id();
    while repo.storage().list(&backup_dir(&id)).map(|l| !l.is_empty()).unwrap_or(false) {
        std::thread::sleep(Duration::from_millis(1100));
        id = new_id();
    }
    let label = opts.label.clone().unwrap_or_else(|| format!("dbbackup {id}"));
    // The parent is chosen, and the new backup recorded as its child, under
    // the retention lock: an expire running meanwhile sees the child and
    // keeps the chain.
    let retention = repo.storage().lock(RETENTION_LOCK)?;
    let parent = choose_parent(repo, opts.backup_type, block_size, ident.major_version, say)?;
    if parent.is_some() {
        // Before anything chained is written: older builds would read an
        // incremental backup as a full one, so they must refuse the
        // repository instead.
        repo.require_format(dbbackup_format::meta::CHAINED_FORMAT_VERSION)?;
    }
    let repo: &Repository = repo;
    let mut m = Manifest {
        format_version: if parent.is_some() { MANIFEST_VERSION_CHAINED } else { MANIFEST_VERSION_FULL },
        id: id.clone(),
        label: label.clone(),
        status: BackupStatus::Running,
        error: None,
        start_time: server_now(client)?,
        stop_time: None,
        start_lsn: None,
        start_wal: None,
        stop_lsn: None,
        stop_wal: None,
        timeline: None,
        system_identifier: ident.system_identifier,
        pg_version_major: ident.major_version,
        pg_version: version,
        pg_bindir: client
            .query_opt("SELECT setting FROM pg_config WHERE name = 'BINDIR'", &[])
            .ok()
            .flatten()
            .map(|r| r.get(0)),
        wal_segment_size: ident.wal_segment_size,
        codec: settings.codec,
        compress_level: settings.level,
        encrypted: repo.key().is_some(),
        host,
        pid: std::process::id(),
        dbbackup_version: env!("CARGO_PKG_VERSION").to_string(),
        size_bytes: 0,
        stored_bytes: 0,
        tablespaces: Vec::new(),
        directories: Vec::new(),
        files: Vec::new(),
        backup_type: parent.as_ref().map(|(t, _)| *t).unwrap_or(BackupType::Full),
        parent: parent.as_ref().map(|(_, c)| c.target().id.clone()),
        block_size: Some(block_size),
    };
    write_manifest(repo, &m)?;
    drop(retention);
    let mut started = false;
    let copier = Copier {
        repo,
        id: &id,
        settings,
        progress,
        parent: parent.as_ref().map(|(_, c)| c),
        block_size: block_size as usize,
    };
    let result = run(repo, client, opts, progress, &mut m, &pgdata, &copier, size, ident.major_version, &mut started);
    if let (Err(e), false) = (&result, started) {
        // pg_backup_start failed: nothing started, so nothing is recorded
        // (a `failed` entry would only clutter `backup list`).
        return match repo.storage().remove_tree(&backup_dir(&m.id)) {
            Ok(()) => Err(Error::new(e.kind(), format!("{e}; no backup was taken"))),
            Err(w) => Err(Error::new(
                e.kind(),
                format!("{e}; removing its entry {} failed too ({w}): `backup expire` removes it", m.id),
            )),
        };
    }
    if let Err(e) = &result {
        // Leave backup mode (a no-op if it already ended), then record the failure.
        let stop = if ident.major_version >= 15 {
            "SELECT pg_backup_stop(false)"
        } else {
            "SELECT pg_stop_backup(false, false)"
        };
        let _ = client.batch_execute(stop);
        m.status = BackupStatus::Failed;
        m.error = Some(e.to_string());
        m.stop_time = Some(now_rfc3339());
        // The copied files of a failed backup are never used: remove them
        // first, which also frees the space a full disk needs for the
        // manifest that records the failure.
        for sub in ["data", "deltas", "maps"] {
            let _ = repo.storage().remove_tree(&format!("{}/{sub}", backup_dir(&m.id)));
        }
        m.files.clear();
        if let Err(w) = write_manifest(repo, &m) {
            return Err(Error::new(
                e.kind(),
                format!("{e}; recording the failure failed too ({w}): the backup shows as interrupted, and `backup expire` removes it"),
            ));
        }
    }
    result.map(|()| m)
}

#[allow(clippy::too_many_arguments)]
fn run(
    repo: &Repository,
    client: &mut postgres::Client,
    opts: &BaseOptions,
    progress: &Progress,
    m: &mut Manifest,
    pgdata: &Path,
    copier: &Copier<'_>,
    size: SegmentSize,
    major: u32,
    started: &mut bool,
) -> Result<()> {
    let start_sql = if major >= 15 {
        "SELECT pg_backup_start($1, $2)::text"
    } else {
        "SELECT pg_start_backup($1, $2, false)::text"
    };
    let start: String = client
        .query_one(start_sql, &[&m.label, &opts.fast])
        .map(|r| r.get(0))
        .map_err(sql_err("cannot start the backup"))?;
    *started = true;
    let start_lsn: Lsn = start.parse().map_err(|e| Error::server(format!("{e}")))?;
    let tli: i32 = client
        .query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[])
        .map(|r| r.get(0))
        .map_err(sql_err("cannot read the timeline"))?;
    let tli = TimelineId(tli as u32);
    m.start_lsn = Some(start_lsn);
    m.start_wal = Some(WalFileName::segment(tli, size.segment_of(start_lsn), size).to_string());
    m.timeline = Some(tli.0);
    write_manifest(repo, m)?;

    let (dirs, mut work, spcs) = walk(pgdata)?;
    // pg_control last, as pg_basebackup does.
    let control_at = work.iter().position(|j| j.rel == "global/pg_control");
    let control = control_at.map(|i| work.remove(i));
    work.sort_by_key(|j| std::cmp::Reverse(j.size));
    progress.total_bytes.store(work.iter().map(|j| j.size).sum::<u64>(), Ordering::Relaxed);
    let workers = opts.jobs.max(1) * repo.storage().requests_per_worker();
    let mut files = copy_parallel(copier, &work, workers)?;
    if let Some(c) = control {
        files.extend(copier.copy(&c)?);
    }

    let stop_sql = if major >= 15 {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)"
    } else {
        "SELECT lsn::text, labelfile, spcmapfile FROM pg_stop_backup(false, false)"
    };
    let row = client.query_one(stop_sql, &[]).map_err(sql_err("cannot stop the backup"))?;
    let stop_lsn: Lsn = row.get::<_, String>(0).parse().map_err(|e| Error::server(format!("{e}")))?;
    let label: String = row.get(1);
    let spcmap: Option<String> = row.get(2);
    let now = jiff::Timestamp::now().as_second();
    files.push(copier.whole("backup_label", &mut Cursor::new(label.into_bytes()), 0o600, now)?);
    if let Some(map) = spcmap.filter(|s| !s.is_empty()) {
        files.push(copier.whole("tablespace_map", &mut Cursor::new(map.into_bytes()), 0o600, now)?);
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    // The last WAL byte the backup needs is just before stop_lsn.
    let stop_seg = size.segment_of(Lsn(stop_lsn.0.saturating_sub(1)));
    m.stop_lsn = Some(stop_lsn);
    m.stop_wal = Some(WalFileName::segment(tli, stop_seg, size).to_string());
    m.size_bytes = files.iter().map(|f| f.size).sum();
    m.stored_bytes = files.iter().map(|f| f.stored_size).sum();
    m.files = files;
    m.directories = dirs;
    m.tablespaces = spcs;
    // The server's clock, to the microsecond, read after pg_backup_stop
    // returned: every commit the backup needs for consistency is older, so
    // a target time at or after it is reachable (recovery_target_time is
    // compared with commit timestamps from the same clock).
    m.stop_time = Some(server_now(client)?);
    write_manifest(repo, m)?;

    let first = size.segment_of(start_lsn);
    let missing = wait_for_wal(repo, client, tli, first, stop_seg, size, opts)?;
    m.status = if missing.is_empty() { BackupStatus::Complete } else { BackupStatus::Pending };
    if !missing.is_empty() {
        let why = if opts.wait_archive {
            let s = pitr::archiver_stats(client)?;
            let failing = if s.failing {
                format!(" (PostgreSQL fails to archive {}: see the server log)", s.last_failed_wal.unwrap_or_default())
            } else {
                String::new()
            };
            format!("not archived within {}s{failing}", opts.archive_timeout.as_secs())
        } else {
            "not yet archived (--no-wait-archive)".to_string()
        };
        m.error = Some(format!(
            "WAL {} to {} {why}: the files are stored; `dbbackup backup verify {}` completes the backup once the WAL is archived",
            missing[0],
            missing[missing.len() - 1],
            m.id
        ));
    }
    write_manifest(repo, m)
}

/// Waits until segments `first..=last` of `tli` are in the repository (or
/// only checks, without `wait_archive`). Returns the missing ones.
fn wait_for_wal(
    repo: &Repository,
    client: &mut postgres::Client,
    tli: TimelineId,
    first: u64,
    last: u64,
    size: SegmentSize,
    opts: &BaseOptions,
) -> Result<Vec<String>> {
    let before = pitr::archiver_stats(client)?;
    let started = Instant::now();
    let mut warned = false;
    let mut missing: Vec<WalFileName> = (first..=last).map(|n| WalFileName::segment(tli, n, size)).collect();
    loop {
        let mut still = Vec::new();
        for w in missing {
            if crate::wal::find(repo, &w)?.is_empty() {
                still.push(w);
            }
        }
        missing = still;
        if missing.is_empty() || !opts.wait_archive {
            return Ok(missing.iter().map(|w| w.to_string()).collect());
        }
        // PostgreSQL retries failed archives by itself: a passing fault
        // (space, permissions) must not cost the backup. Say so once.
        let s = pitr::archiver_stats(client)?;
        if s.failing && s.failed_count > before.failed_count && !warned {
            tracing::warn!(
                "PostgreSQL fails to archive {} (it retries; see the server log): waiting up to {}s for the WAL the backup needs",
                s.last_failed_wal.clone().unwrap_or_default(),
                opts.archive_timeout.as_secs()
            );
            warned = true;
        }
        if started.elapsed() > opts.archive_timeout {
            // The files are stored: the backup stays pending, and `backup
            // verify` completes it once the WAL arrives.
            return Ok(missing.iter().map(|w| w.to_string()).collect());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
