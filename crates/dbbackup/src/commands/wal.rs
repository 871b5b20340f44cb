//! `dbbackup wal archive` and `wal fetch`: PostgreSQL's hooks.
//!
//! Their stderr goes to the server log: one line per message, prefixed
//! `dbbackup:`, naming the file and the cause. No progress output.

use std::process::ExitCode;

use anyhow::{anyhow, Result};
use dbbackup_core::error::ErrorKind;
use dbbackup_core::repo::{CreateOptions, Repository};
use dbbackup_core::wal::archive::{archive, Archived};
use dbbackup_core::wal::async_archive::{
    archive_async, run_worker, AsyncCall, AsyncOutcome, WorkerEnd, WorkerLaunch, WorkerOptions, DEFAULT_JOBS,
    DEFAULT_WAIT,
};
use dbbackup_core::wal::catalog::{timelines, Catalog};
use dbbackup_core::wal::decode_verified;
use dbbackup_core::wal::fetch::{check_source, fetch};
use dbbackup_core::wal::prefetch::{self, Delivered, Prefetch, WorkerCommand};
use dbbackup_format::WalKind;
use serde_json::json;
use std::ffi::OsString;

use crate::cli::{ArchiveArgs, ArchiveWorkerArgs, FetchArgs, FetchWorkerArgs, SearchArgs, WalCommand};
use crate::context::Ctx;
use crate::output::{human_bytes, one_line, print_json, time_text, Table};
use crate::EXIT_FETCH_FATAL;
use dbbackup_core::wal::search::{Found, SearchOptions, SearchReport};
use std::collections::BTreeMap;

pub fn run(ctx: &Ctx, c: WalCommand) -> Result<ExitCode> {
    match c {
        WalCommand::Archive(a) => run_archive(ctx, a),
        WalCommand::Fetch(a) => Ok(run_fetch(ctx, a)),
        WalCommand::ArchiveWorker(a) => run_archive_worker(ctx, a),
        WalCommand::FetchWorker(a) => fetch_worker(ctx, a),
        WalCommand::List { timeline } => list(ctx, timeline),
        WalCommand::Timeline => timeline(ctx),
        WalCommand::Verify { jobs } => verify(ctx, jobs),
        WalCommand::Cleanup { retention_days, dry_run } => cleanup(ctx, retention_days, dry_run),
        WalCommand::Search(a) => search(ctx, a),
    }
}

fn list(ctx: &Ctx, only: Option<u32>) -> Result<ExitCode> {
    // Names are enough to list: without a key, encrypted history and
    // backup files just show no original size.
    let repo = match ctx.keys().load()? {
        Some(_) => ctx.open_repo()?,
        None => Repository::open_for_listing(ctx.storage()?)?,
    };
    let cat = Catalog::scan(&repo)?;
    let seg = repo.segment_size().map(|s| u64::from(s.bytes()));
    let mut rows = Vec::new();
    for o in cat.objects.iter().filter(|o| only.is_none_or(|t| o.wal.timeline().0 == t)) {
        let original = match o.wal.kind() {
            WalKind::Segment | WalKind::Partial => seg,
            // History and backup files are small and few: decode them.
            _ => decode_verified(&repo, &o.stored, &mut std::io::sink()).ok(),
        };
        rows.push((o, original));
    }
    if ctx.g.json {
        let v: Vec<_> = rows
            .iter()
            .map(|(o, original)| {
                json!({
                    "name": o.wal.to_string(),
                    "timeline": o.wal.timeline().0,
                    "kind": o.wal.kind(),
                    "original_size": original,
                    "stored_size": o.stored.stored_size,
                    "codec": o.stored.object.codec,
                    "encrypted": o.stored.object.encrypted,
                    "checksum_blake3": o.stored.object.checksum,
                    "archived_at": time_text(o.archived_at),
                    "path": o.stored.path,
                })
            })
            .collect();
        print_json(&json!(v));
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&["NAME", "TL>", "KIND", "ORIGINAL>", "STORED>", "CODEC", "ENCRYPTED", "ARCHIVED"]);
    let (mut orig_total, mut stored_total) = (0u64, 0u64);
    for (o, original) in &rows {
        orig_total += original.unwrap_or(0);
        stored_total += o.stored.stored_size;
        t.row(vec![
            o.wal.to_string(),
            o.wal.timeline().to_string(),
            o.wal.kind().to_string(),
            original.map(human_bytes).unwrap_or_else(|| "?".into()),
            human_bytes(o.stored.stored_size),
            o.stored.object.codec.to_string(),
            if o.stored.object.encrypted { "yes".into() } else { "no".into() },
            time_text(o.archived_at),
        ]);
    }
    t.print();
    println!("{} objects, {} original, {} stored", rows.len(), human_bytes(orig_total), human_bytes(stored_total));
    Ok(ExitCode::SUCCESS)
}

fn timeline(ctx: &Ctx) -> Result<ExitCode> {
    let repo = ctx.open_repo()?;
    let cat = Catalog::scan(&repo)?;
    let (tls, _) = timelines(&repo, &cat)?;
    if ctx.g.json {
        print_json(&json!({ "timelines": tls }));
        return Ok(ExitCode::SUCCESS);
    }
    let mut t =
        Table::new(&["TIMELINE>", "PARENT>", "SWITCH LSN", "FIRST SEGMENT", "LAST SEGMENT", "SEGMENTS>", "REASON"]);
    for tl in &tls {
        t.row(vec![
            tl.timeline.to_string(),
            tl.parent.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            tl.switch_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            tl.first_segment.clone().unwrap_or_else(|| "-".into()),
            tl.last_segment.clone().unwrap_or_else(|| "-".into()),
            tl.segments.to_string(),
            tl.reason.clone().unwrap_or_default(),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

fn verify(ctx: &Ctx, jobs: usize) -> Result<ExitCode> {
    let repo = ctx.open_repo()?;
    let cat = Catalog::scan(&repo)?;
    let report = dbbackup_core::wal::verify::verify(&repo, &cat, jobs)?;
    let code = if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    if ctx.g.json {
        let mut v = serde_json::to_value(&report)?;
        v["ok"] = json!(report.ok());
        print_json(&v);
        return Ok(code);
    }
    for p in &report.problems {
        // Errors usually name their object already.
        if p.error.starts_with(&p.path) {
            println!("BAD      {}", p.error);
        } else {
            println!("BAD      {}: {}", p.path, p.error);
        }
    }
    for p in report.history_errors.iter().chain(&report.backups_missing_wal) {
        println!("BAD      {}", p.error);
    }
    for g in &report.gaps {
        if g.count == 1 {
            println!("GAP      timeline {}: {} is missing", g.timeline, g.first_missing);
        } else {
            println!(
                "GAP      timeline {}: {} to {} are missing ({} segments)",
                g.timeline, g.first_missing, g.last_missing, g.count
            );
        }
    }
    for u in &report.unknown {
        println!("UNKNOWN  {u}: not a WAL object (remove it or move it out of the repository)");
    }
    println!(
        "verified {} of {} objects ({} decoded from {} stored): {}",
        report.verified,
        report.objects,
        human_bytes(report.original_bytes),
        human_bytes(report.stored_bytes),
        if report.ok() {
            "ok".to_string()
        } else {
            format!(
                "{} bad, {} gaps, {} unknown",
                report.problems.len() + report.history_errors.len() + report.backups_missing_wal.len(),
                report.gaps.len(),
                report.unknown.len()
            )
        }
    );
    Ok(code)
}

/// Opens the repository, creating a missing one with the archive's options.
fn open_or_create(ctx: &Ctx, a: &ArchiveArgs) -> Result<Repository> {
    let o = CreateOptions {
        codec: a.compress,
        level: a.compress_level,
        encrypt: a.encrypt,
        what: "WAL",
        archived_before: archived_before(&a.path),
    };
    Ok(dbbackup_core::repo::open_or_create(ctx.storage()?, &ctx.keys(), &o)?)
}

/// A `.done` file beside the segment being archived (PostgreSQL's
/// `pg_wal/archive_status`): this cluster has archived successfully before.
fn archived_before(source: &std::path::Path) -> Option<String> {
    let status = source.parent()?.join("archive_status");
    std::fs::read_dir(&status)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.ends_with(".done"))
        .map(|n| format!("{}/{n}", status.display()))
}

fn run_archive(ctx: &Ctx, a: ArchiveArgs) -> Result<ExitCode> {
    let name = match &a.filename {
        Some(n) => n.clone(),
        None => a
            .path
            .file_name()
            .ok_or_else(|| {
                anyhow!("{} has no file name: give the WAL file name as the second argument", a.path.display())
            })?
            .to_string_lossy()
            .to_string(),
    };
    let mut repo = open_or_create(ctx, &a).map_err(|e| anyhow!("wal archive {name}: {e:#}"))?;
    let codec = repo.codec_choice(a.compress, a.compress_level)?;
    let outcome = if a.async_ {
        let launch = WorkerLaunch {
            exe: std::env::current_exe()
                .map_err(|e| anyhow!("wal archive {name}: cannot find this program's path: {e}"))?,
            args: worker_args(ctx, &a)?,
            jobs: a.jobs.map(usize::from).unwrap_or(DEFAULT_JOBS),
        };
        let call = AsyncCall { spool_dir: a.spool_dir.as_deref(), launch: &launch, wait: async_wait(ctx) };
        match archive_async(&mut repo, &a.path, &name, codec, &call).map_err(|e| anyhow!("wal archive {name}: {e}"))? {
            AsyncOutcome::Acknowledged { ack, waited } => {
                tracing::debug!("{name} acknowledged by the archive worker as {} (waited {waited:?})", ack.object);
                return Ok(ExitCode::SUCCESS);
            }
            AsyncOutcome::Synchronous { why, archived } => {
                // Files that never wait for the worker are routine; any
                // other reason (no worker, a stale or foreign ack) is news.
                let routine = why.contains(" file is archived in the call") || why.contains(" is not marked ready in ");
                if routine {
                    tracing::debug!("archived {name} in the call: {why}");
                } else {
                    tracing::warn!("wal archive {name}: {why}; archived it in the call");
                }
                archived
            }
        }
    } else {
        archive(&mut repo, &a.path, &name, codec).map_err(|e| anyhow!("wal archive {name}: {e}"))?
    };
    match outcome {
        Archived::Stored { path, original_size, stored_size, .. } => {
            tracing::debug!("archived {name} as {path} ({original_size} bytes, {stored_size} stored)");
        }
        Archived::AlreadyArchived { path, .. } => {
            tracing::warn!("{name} was already archived with identical content as {path}: nothing to do");
        }
        Archived::Repaired { path, damage, .. } => {
            tracing::warn!(
                "{name} was archived but the stored copy was damaged ({}); replaced it with this good copy",
                one_line(&damage)
            );
            let _ = path;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How long an asynchronous call waits for its acknowledgement: a minute,
/// or longer when one store request may take longer.
fn async_wait(ctx: &Ctx) -> std::time::Duration {
    let s = &ctx.g.stores;
    let longest = [s.s3.request_timeout, s.gcs.request_timeout, s.azure.request_timeout].into_iter().flatten().max();
    DEFAULT_WAIT.max(std::time::Duration::from_secs(longest.unwrap_or(0) + 10))
}

/// The options a worker needs to reach the repository as this call does:
/// paths only (the config file and key file), never a secret.
fn worker_args(ctx: &Ctx, a: &ArchiveArgs) -> Result<Vec<OsString>> {
    let mut w: Vec<OsString> = vec!["wal".into(), "archive-worker".into()];
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).into_os_string();
    if ctx.g.repo.is_some() {
        w.push("--repo".into());
        w.push(ctx.repo_path()?.into_os_string());
    }
    if let Some(c) = &ctx.g.config {
        w.push("--config".into());
        w.push(abs(c));
    }
    if let Some(k) = &ctx.g.encryption_key_file {
        w.push("--encryption-key-file".into());
        w.push(abs(k));
    }
    if let Some(v) = &ctx.g.encryption_key_env {
        w.push("--encryption-key-env".into());
        w.push(v.into());
    }
    if ctx.g.allow_shared_key_file {
        w.push("--allow-shared-key-file".into());
    }
    if let Some(c) = a.compress {
        w.push(format!("--compress={c}").into());
    }
    if let Some(l) = a.compress_level {
        w.push(format!("--compress-level={l}").into());
    }
    for _ in 0..ctx.g.verbose {
        w.push("-v".into());
    }
    Ok(w)
}

/// `wal archive-worker`: the background half of `wal archive --async`.
fn run_archive_worker(ctx: &Ctx, a: ArchiveWorkerArgs) -> Result<ExitCode> {
    let storage = ctx.storage()?;
    let keys = ctx.keys();
    let open = || -> dbbackup_core::Result<Repository> {
        let repo = Repository::open(std::sync::Arc::clone(&storage), &keys)?;
        repo.check_key_intent(&keys, "WAL")?;
        Ok(repo)
    };
    let codec = open()?.codec_choice(a.compress, a.compress_level)?;
    let opts = WorkerOptions {
        pg_wal: std::path::absolute(&a.pg_wal)?,
        spool_root: std::path::absolute(&a.spool_dir)?,
        system_identifier: a.system_identifier,
        jobs: usize::from(a.jobs),
        codec,
        idle_exit: std::time::Duration::from_secs(a.idle_exit),
    };
    match run_worker(&open, &opts)? {
        WorkerEnd::AlreadyRunning { lock, pid } => {
            eprintln!(
                "dbbackup: another archive worker{} holds {}: this one exits (one worker per spool)",
                pid.map(|p| format!(" (pid {p})")).unwrap_or_default(),
                lock.display()
            );
        }
        WorkerEnd::Idle { pushed } => tracing::info!(
            "{} archive worker {} exits: nothing ready for {} s ({pushed} segments pushed)",
            dbbackup_core::repo::now_rfc3339(),
            std::process::id(),
            a.idle_exit
        ),
        WorkerEnd::ServerGone { pushed } => tracing::info!(
            "{} archive worker {} exits: the server of {} stopped ({pushed} segments pushed)",
            dbbackup_core::repo::now_rfc3339(),
            std::process::id(),
            opts.pg_wal.display()
        ),
        WorkerEnd::PgWalGone { pushed } => tracing::info!(
            "{} archive worker {} exits: {} is gone ({pushed} segments pushed)",
            dbbackup_core::repo::now_rfc3339(),
            std::process::id(),
            opts.pg_wal.display()
        ),
        WorkerEnd::OwnerChanged { pushed, now } => tracing::info!(
            "{} archive worker {} exits: the spool is {} now ({pushed} segments pushed)",
            dbbackup_core::repo::now_rfc3339(),
            std::process::id(),
            now.map(|o| format!("repository {}'s", o.repository_id)).unwrap_or_else(|| "gone".into())
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn run_fetch(ctx: &Ctx, a: FetchArgs) -> ExitCode {
    let fatal = |msg: String| {
        eprintln!("dbbackup: wal fetch {}: {}", a.filename, one_line(&msg));
        ExitCode::from(EXIT_FETCH_FATAL)
    };
    // Any problem with the repository itself is fatal: "not found" must
    // mean only that this file is not archived.
    let repo = match ctx.open_repo() {
        Ok(r) => r,
        Err(e) => return fatal(format!("{e:#}")),
    };
    // PostgreSQL runs restore_command in the data directory and passes a
    // destination under pg_wal/: then the working directory is the cluster
    // that recovers.
    let data_dir = a.destination.starts_with("pg_wal").then(|| std::path::Path::new("."));
    if let Err(e) = check_source(&repo, a.repo_id.as_deref(), data_dir) {
        return fatal(e.to_string());
    }
    // By hand, into some directory: no data directory holds the default
    // spool (it would land beside the destination's parent).
    let in_pg_wal = std::path::absolute(&a.destination)
        .ok()
        .and_then(|d| d.parent().and_then(|p| p.file_name()).map(|n| n == "pg_wal" || n == "pg_xlog"))
        .unwrap_or(false);
    let prefetch_here = a.prefetch > 0 && (a.spool_dir.is_some() || in_pg_wal);
    if a.prefetch > 0 && !prefetch_here {
        eprintln!(
            "dbbackup: warning: wal fetch {}: --prefetch without --spool-dir needs a destination in pg_wal (the spool's default place is the data directory); fetched without prefetching",
            a.filename
        );
    }
    let fetched = if prefetch_here {
        let spool_dir = dbbackup_core::spool::spool_dir(a.spool_dir.as_deref(), &a.destination);
        let worker = match worker_command(ctx, &a, &spool_dir) {
            Ok(w) => w,
            Err(e) => return fatal(format!("{e:#}")),
        };
        prefetch::fetch_prefetching(&repo, &a.filename, &a.destination, &Prefetch { spool_dir, worker })
    } else {
        fetch(&repo, &a.filename, &a.destination).map(Delivered::Repository)
    };
    match fetched {
        Ok(Delivered::Repository(f)) => {
            tracing::debug!("restored {} from {} ({} bytes)", a.filename, f.path, f.size);
            ExitCode::SUCCESS
        }
        Ok(Delivered::Spool { size }) => {
            tracing::debug!("restored {} from the prefetch spool ({size} bytes)", a.filename);
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            tracing::info!("{}", e);
            ExitCode::FAILURE
        }
        Err(e) => fatal(e.to_string()),
    }
}

/// The prefetch worker's command line: this program with the repository
/// options this call was given (paths, never a secret; the environment is
/// inherited) and the prefetch settings.
fn worker_command(ctx: &Ctx, a: &FetchArgs, spool_dir: &std::path::Path) -> Result<WorkerCommand> {
    let exe = std::env::current_exe().map_err(|e| anyhow!("cannot find this program's path: {e}"))?;
    let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).into_os_string();
    let mut args: Vec<std::ffi::OsString> = vec!["wal".into(), "fetch-worker".into()];
    args.extend(["--spool-dir".into(), spool_dir.as_os_str().to_owned()]);
    args.extend(["--prefetch".into(), a.prefetch.to_string().into()]);
    if let Some(t) = a.prefetch_timeline {
        args.extend(["--prefetch-timeline".into(), t.to_string().into()]);
    }
    if let Some(id) = &a.repo_id {
        args.extend(["--repo-id".into(), id.into()]);
    }
    args.extend(["--repo".into(), ctx.repo_path()?.into_os_string()]);
    if let Some(c) = &ctx.g.config {
        args.extend(["--config".into(), abs(c)]);
    }
    if let Some(f) = &ctx.g.encryption_key_file {
        args.extend(["--encryption-key-file".into(), abs(f)]);
    }
    if let Some(v) = &ctx.g.encryption_key_env {
        args.extend(["--encryption-key-env".into(), v.into()]);
    }
    if ctx.g.allow_shared_key_file {
        args.push("--allow-shared-key-file".into());
    }
    for _ in 0..ctx.g.verbose {
        args.push("-v".into());
    }
    Ok(WorkerCommand { program: exe, args })
}

fn fetch_worker(ctx: &Ctx, a: FetchWorkerArgs) -> Result<ExitCode> {
    let repo = ctx.open_repo()?;
    check_source(&repo, a.repo_id.as_deref(), None)?;
    let o = prefetch::WorkerOptions {
        spool_dir: a.spool_dir,
        depth: usize::from(a.prefetch),
        timeline: a.prefetch_timeline.map(dbbackup_format::TimelineId),
        idle_exit: std::time::Duration::from_secs(a.idle_exit),
    };
    prefetch::run_worker(&repo, &o)?;
    Ok(ExitCode::SUCCESS)
}

fn cleanup(ctx: &Ctx, days: u64, dry_run: bool) -> Result<ExitCode> {
    let repo = Repository::open_for_listing(ctx.storage()?)?;
    let p = dbbackup_core::backup::retention::prepare_cleanup(&repo, days, jiff::Timestamp::now())?;
    crate::commands::backup::run_plan(ctx, p, dry_run)?;
    Ok(ExitCode::SUCCESS)
}

/// `dbbackup wal search`.
fn search(ctx: &Ctx, a: SearchArgs) -> Result<ExitCode> {
    if let (Some(s), Some(u)) = (&a.since, &a.until) {
        if s.timestamp() > u.timestamp() {
            eprintln!(
                "dbbackup: error: --since {} is after --until {}: nothing could match",
                show_time(s.timestamp()),
                show_time(u.timestamp())
            );
            return Ok(ExitCode::from(2));
        }
    }
    let repo = ctx.open_repo()?;
    let opts = SearchOptions {
        table: a.table,
        database: a.database,
        since: a.since.map(|z| z.timestamp()),
        until: a.until.map(|z| z.timestamp()),
        timeline: a.timeline,
        base_backup: a.base_backup,
    };
    let report = dbbackup_core::wal::search::search(&repo, &opts)?;
    let prefix = command_prefix(ctx, repo.key().is_some())?;
    let warnings = end_of_archive_warnings(ctx, &repo, &report);
    if ctx.g.json {
        print_json(&json!({
            "searched": {
                "backup": report.backup,
                "from_lsn": report.from.to_string(),
                "to_lsn": report.to.to_string(),
                "timeline": report.timeline.0,
                "segments": report.segments,
                "records": report.records,
                "last_transaction_time": report.last_xact.map(|t| t.to_string()),
            },
            "warnings": warnings,
            "events": report.events.iter().map(|f| event_json(f, &prefix)).collect::<Vec<_>>(),
            "notes": report.notes,
        }));
        return Ok(ExitCode::SUCCESS);
    }
    for f in &report.events {
        for line in event_lines(f, Some(&prefix)) {
            println!("{line}");
        }
        println!();
    }
    if report.events.is_empty() {
        println!("{}", nothing_found(&opts));
    }
    note_search(ctx, &report, &warnings);
    Ok(ExitCode::SUCCESS)
}

/// On stderr: the search's notes, what it read, and the warnings.
pub(crate) fn note_search(ctx: &Ctx, r: &SearchReport, warnings: &[String]) {
    for n in &r.notes {
        ctx.note(format!("note: {n}"));
    }
    ctx.note(searched_line(r));
    for w in warnings {
        ctx.note(w);
    }
}

/// What the search read, and where the archive ends in time.
fn searched_line(r: &SearchReport) -> String {
    format!(
        "searched {} records in {} segments from {} (the start of backup {}) to {} on timeline {}'s way{}",
        r.records,
        r.segments,
        r.from,
        r.backup,
        r.to,
        r.timeline,
        match r.last_xact {
            Some(t) => format!("; the last transaction in the archive ended at {}", show_time(t)),
            None => String::new(),
        }
    )
}

/// When the server (if one is given and it is the repository's cluster)
/// has written WAL past the end of the archive: an accident there is not
/// found, which must be said before anyone restores to an older one.
pub(crate) fn end_of_archive_warnings(ctx: &Ctx, repo: &Repository, r: &SearchReport) -> Vec<String> {
    let mut w = Vec::new();
    if !ctx.conn_given() && ctx.g.pgdata.is_none() {
        return w;
    }
    let mut client = match ctx.conn_for_pgdata().connect() {
        Ok(c) => c,
        Err(e) => {
            w.push(format!("note: could not ask the server whether it wrote WAL past the end of the archive: {e}"));
            return w;
        }
    };
    let q = "SELECT (SELECT system_identifier FROM pg_control_system())::text, \
             (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text";
    let Ok(row) = client.query_one(q, &[]) else { return w };
    let (sysid, lsn): (String, Option<String>) = (row.get(0), row.get(1));
    if repo.identity().is_none_or(|i| i.system_identifier.to_string() != sysid) {
        return w;
    }
    if let Some(at) = lsn.and_then(|l| l.parse::<dbbackup_format::Lsn>().ok()).filter(|at| *at > r.to) {
        w.push(format!(
            "warning: the server has written WAL up to {at}, but the archive ends at {}: a table dropped or truncated after that is not found yet. Run SELECT pg_switch_wal() on the server, wait until `dbbackup pitr status` shows it archived, and search again",
            r.to
        ));
    }
    w
}

/// What was looked for and not found, in a sentence.
pub(crate) fn nothing_found(opts: &SearchOptions) -> String {
    let mut what = String::from("no committed transaction in the searched WAL dropped or truncated");
    match &opts.table {
        Some(t) => what.push_str(&format!(" table {t}")),
        None => what.push_str(" a table or dropped a database"),
    }
    if let Some(d) = &opts.database {
        what.push_str(&format!(" in database {d}"));
    }
    if let Some(s) = opts.since {
        what.push_str(&format!(" since {}", show_time(s)));
    }
    if let Some(u) = opts.until {
        what.push_str(&format!(" until {}", show_time(u)));
    }
    what
}

/// `dbbackup` and the repository options the printed commands need (never a secret).
pub(crate) fn command_prefix(ctx: &Ctx, encrypted: bool) -> Result<Vec<String>> {
    let mut w = vec!["dbbackup".to_string(), "restore".into(), "pitr".into()];
    if let Some(c) = &ctx.g.config {
        w.push("--config".into());
        w.push(std::path::absolute(c)?.display().to_string());
    }
    if ctx.g.repo.is_some() || ctx.g.config.is_none() {
        w.push("--repo".into());
        w.push(ctx.location()?.to_string());
    }
    if let (Some(f), true) = (&ctx.g.encryption_key_file, encrypted) {
        w.push("--encryption-key-file".into());
        w.push(std::path::absolute(f)?.display().to_string());
    }
    w.push("--target-dir".into());
    w.push("DIR".into());
    Ok(w)
}

pub(crate) fn show_time(t: jiff::Timestamp) -> String {
    t.to_zoned(jiff::tz::TimeZone::system()).strftime("%Y-%m-%d %H:%M:%S%.6f%:z").to_string()
}

fn plural(word: &str, n: usize) -> String {
    match n {
        1 => word.to_string(),
        _ if word.ends_with('x') => format!("{word}es"),
        _ => format!("{word}s"),
    }
}

fn relkind_word(k: u8) -> &'static str {
    match k {
        b'r' => "table",
        b'p' => "partitioned table",
        b'm' => "materialized view",
        b'f' => "foreign table",
        b'i' | b'I' => "index",
        b't' => "TOAST table",
        b'S' => "sequence",
        _ => "relation",
    }
}

/// What happened to which relations, tables first; indexes, TOAST tables
/// and sequences counted after their tables.
fn what_lines(f: &Found) -> Vec<String> {
    use dbbackup_format::accident::Action;
    let mut out = Vec::new();
    for (oid, name) in &f.event.dropped_databases {
        out.push(match name {
            Some(n) => format!("dropped database {n} (oid {oid})"),
            None => format!("dropped database with oid {oid} (name unknown: not in the base backup's pg_database)"),
        });
    }
    for action in [Action::Dropped, Action::Truncated] {
        let verb = if action == Action::Dropped { "dropped" } else { "truncated" };
        let rels: Vec<_> = f.event.relations.iter().filter(|r| r.action == action).collect();
        let tables: Vec<_> = rels.iter().filter(|r| r.is_table_like()).collect();
        let others: Vec<_> = rels.iter().filter(|r| !r.is_table_like()).collect();
        for r in &tables {
            match (&r.class, &r.unknown) {
                (Some(c), _) => out.push(format!(
                    "{verb} {} {}{}",
                    relkind_word(c.relkind),
                    r.display_name(),
                    if r.former_names.is_empty() {
                        String::new()
                    } else {
                        format!(" (formerly {})", r.former_names.join(", "))
                    }
                )),
                (None, why) => out.push(format!(
                    "{verb} {} (name unknown: {})",
                    r.display_name(),
                    why.as_deref().unwrap_or("not in the catalog")
                )),
            }
        }
        if !others.is_empty() {
            let mut counts: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for r in &others {
                if let Some(c) = &r.class {
                    counts.entry(relkind_word(c.relkind)).or_default().push(r.display_name());
                }
            }
            let list = counts
                .iter()
                .map(|(k, names)| {
                    if tables.is_empty() {
                        format!("{k} {}", names.join(", "))
                    } else {
                        format!("{} {}", names.len(), plural(k, names.len()))
                    }
                })
                .collect::<Vec<_>>()
                .join(", ");
            if tables.is_empty() {
                out.push(format!("{verb} {list}"));
            } else {
                out.push(format!("  with {list}"));
            }
        }
    }
    out
}

/// The event as a DBA reads it; with the command that restores to just
/// before it when `prefix` (its start, [`command_prefix`]) is given.
pub(crate) fn event_lines(f: &Found, prefix: Option<&[String]>) -> Vec<String> {
    let e = &f.event;
    let mut head = format!(
        "{}  xid {}  LSN {}  timeline {}",
        f.time.map(show_time).unwrap_or_else(|| "(no commit time)".into()),
        e.xid,
        e.lsn,
        f.timeline
    );
    match &e.database {
        Some(d) => head.push_str(&format!("  database {d}")),
        None if e.db != 0 => head.push_str(&format!("  database oid {}", e.db)),
        None => {}
    }
    if let Some(g) = &e.gid {
        head.push_str(&format!("  prepared transaction '{g}'"));
    }
    let mut out = vec![head];
    out.extend(what_lines(f).into_iter().map(|l| format!("  {l}")));
    let Some(prefix) = prefix else { return out };
    match (&f.no_restore, restore_command(f, prefix)) {
        (_, Some(cmd)) => {
            out.push("  restore to just before it:".into());
            out.push(format!("    {cmd}"));
            if let Some(g) = &e.gid {
                out.push(format!(
                    "  (the restored copy keeps transaction '{g}' prepared, holding its locks: ROLLBACK PREPARED '{g}' there)"
                ));
            }
        }
        (Some(why), None) => out.push(format!("  cannot be restored to just before it: {why}")),
        (None, None) => {}
    }
    out
}

pub(crate) fn restore_command(f: &Found, prefix: &[String]) -> Option<String> {
    if f.restore_args.is_empty() {
        return None;
    }
    let mut w = prefix.to_vec();
    w.extend(f.restore_args.iter().cloned());
    Some(dbbackup_format::guc::shell_join(&w))
}

fn event_json(f: &Found, prefix: &[String]) -> serde_json::Value {
    let e = &f.event;
    json!({
        "time": f.time.map(|t| t.to_string()),
        "xid": e.xid,
        "lsn": e.lsn.to_string(),
        "end_lsn": e.end.to_string(),
        "timeline": f.timeline.0,
        "database": e.database,
        "database_oid": e.db,
        "prepared_gid": e.gid,
        "dropped_databases": e.dropped_databases.iter().map(|(oid, name)| json!({"oid": oid, "name": name})).collect::<Vec<_>>(),
        "relations": e.relations.iter().map(|r| json!({
            "action": match r.action { dbbackup_format::accident::Action::Dropped => "dropped", dbbackup_format::accident::Action::Truncated => "truncated" },
            "schema": r.schema,
            "name": r.class.as_ref().map(|c| c.name.clone()),
            "kind": r.class.as_ref().map(|c| relkind_word(c.relkind)),
            "oid": r.class.as_ref().map(|c| c.oid),
            "tablespace_oid": r.locator.spc,
            "database_oid": r.locator.db,
            "relfilenode": r.locator.rel,
            "unknown_reason": r.unknown,
            "former_names": r.former_names,
        })).collect::<Vec<_>>(),
        "base_backup": f.base_backup,
        "restore_target": match e.stop_before {
            Some(l) => json!({"lsn": l.to_string(), "inclusive": false}),
            None => json!({"xid": e.xid, "inclusive": false}),
        },
        "restore_command": restore_command(f, prefix),
        "no_restore": f.no_restore,
    })
}
