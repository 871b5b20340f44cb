//! `dbbackup backup base|list|show|verify|delete|expire`.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use dbbackup_core::backup::base::{backup, BackupRequest, Progress};
use dbbackup_core::backup::chain::Chain;
use dbbackup_core::backup::retention::{self, Policy};
use dbbackup_core::backup::{self, backup_running, shown_status};
use dbbackup_core::repo::{CreateOptions, Repository};
use dbbackup_format::manifest::{BackupStatus, Manifest};
use serde_json::json;

use crate::cli::{BackupCommand, BaseArgs};
use crate::context::Ctx;
use crate::output::{human_bytes, print_json, Table};

pub fn run(ctx: &Ctx, c: BackupCommand) -> Result<ExitCode> {
    match c {
        BackupCommand::Base(a) => base(ctx, a),
        BackupCommand::List => list(ctx),
        BackupCommand::Show { id } => show(ctx, &id),
        BackupCommand::Verify { id, jobs } => verify(ctx, &id, jobs),
        BackupCommand::Delete { id, force, with_dependents } => delete(ctx, &id, force, with_dependents),
        BackupCommand::Expire { keep, keep_days, dry_run } => expire(ctx, Policy { keep, keep_days }, dry_run),
    }
}

/// A one-screen summary of a manifest (no file list); `all` (every
/// backup) gives its chain.
pub fn summary(m: &Manifest, running_now: bool, all: &[Manifest]) -> serde_json::Value {
    let chain = Chain::from_list(all, m);
    json!({
        "id": m.id,
        "type": m.backup_type.as_str(),
        "parent": m.parent,
        "chain": chain.as_ref().ok().map(|c| c.manifests().iter().map(|b| b.id.clone()).collect::<Vec<_>>()),
        "chain_error": chain.as_ref().err().map(|e| e.to_string()),
        "chain_stored_bytes": chain.as_ref().ok().map(|c| c.stored_bytes()),
        "label": m.label,
        "status": shown_status(m, running_now),
        "error": m.error,
        "start_time": m.start_time,
        "stop_time": m.stop_time,
        "start_lsn": m.start_lsn,
        "stop_lsn": m.stop_lsn,
        "start_wal": m.start_wal,
        "stop_wal": m.stop_wal,
        "timeline": m.timeline,
        "system_identifier": m.system_identifier.to_string(),
        "pg_version": m.pg_version,
        "pg_version_major": m.pg_version_major,
        "codec": m.codec,
        "encrypted": m.encrypted,
        "size_bytes": m.size_bytes,
        "stored_bytes": m.stored_bytes,
        "files": m.files.len(),
        "tablespaces": m.tablespaces,
    })
}

fn base(ctx: &Ctx, a: BaseArgs) -> Result<ExitCode> {
    let mut client = ctx.conn_for_pgdata().connect()?;
    let req = BackupRequest {
        create: CreateOptions {
            codec: a.compress,
            level: a.compress_level,
            encrypt: a.encrypt,
            what: "the backup",
            archived_before: None,
        },
        label: a.label,
        jobs: a.jobs,
        fast: a.fast,
        wait_archive: !a.no_wait_archive,
        archive_timeout: Duration::from_secs(a.archive_wait_timeout),
        archive_check_timeout: Duration::from_secs(a.archive_check_timeout),
        backup_type: a.backup_type,
    };
    let progress = Progress::default();
    let done = std::sync::atomic::AtomicBool::new(false);
    let show = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !ctx.g.quiet;
    let (repo, m) = std::thread::scope(|s| {
        if show {
            s.spawn(|| progress_line(&progress, &done));
        }
        let r = backup(&mut client, ctx.storage()?, &ctx.keys(), &req, &progress, &|l| ctx.note(l));
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        anyhow::Ok(r?)
    })?;
    ctx.warn_unused_default_key(repo.key().is_some(), &format!("repository {}", repo.location()));
    if ctx.g.json {
        let all = backup::list(&repo).map(|(all, _)| all).unwrap_or_default();
        print_json(&summary(&m, false, &all));
    } else {
        ctx.note(format_args!(
            "{} backup {} {}: {} files, {} ({} stored), WAL {} to {}",
            m.backup_type.as_str(),
            m.id,
            shown_status(&m, false),
            m.files.len(),
            human_bytes(m.size_bytes),
            human_bytes(m.stored_bytes),
            m.start_wal.as_deref().unwrap_or("-"),
            m.stop_wal.as_deref().unwrap_or("-")
        ));
        if let Some(e) = &m.error {
            eprintln!("dbbackup: warning: {e}");
        }
        println!("{}", m.id);
    }
    // Waited for the WAL and it did not come: not a usable backup yet.
    if m.status != BackupStatus::Complete && !a.no_wait_archive {
        eprintln!("dbbackup: error: backup {} is {}, not complete", m.id, shown_status(&m, false));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress line on a terminal's stderr, redrawn twice a second.
fn progress_line(p: &Progress, done: &std::sync::atomic::AtomicBool) {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    let started = std::time::Instant::now();
    while !done.load(Ordering::Relaxed) {
        let (d, t) = (p.done_bytes.load(Ordering::Relaxed), p.total_bytes.load(Ordering::Relaxed));
        if t > 0 {
            let pct = (d as f64 / t as f64 * 100.0).min(100.0);
            let rate = d as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprint!(
                "\r\x1b[Kcopying {} of {} ({pct:.0}%), {}/s",
                human_bytes(d),
                human_bytes(t),
                human_bytes(rate as u64)
            );
            let _ = std::io::stderr().flush();
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    eprint!("\r\x1b[K");
}

fn list(ctx: &Ctx) -> Result<ExitCode> {
    let repo = Repository::open_for_listing(ctx.storage()?)?;
    let (all, errors) = backup::list(&repo)?;
    let running = backup_running(&repo);
    for e in &errors {
        eprintln!("dbbackup: warning: {e}");
    }
    if ctx.g.json {
        print_json(&json!(all.iter().map(|m| summary(m, running, &all)).collect::<Vec<_>>()));
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new(&[
        "ID",
        "TYPE",
        "PARENT",
        "STATUS",
        "START",
        "STOP",
        "START LSN",
        "STOP LSN",
        "TL>",
        "SIZE>",
        "STORED>",
        "CHAIN>",
        "LABEL",
    ]);
    for m in &all {
        // CHAIN: what a restore of this backup reads (its stored bytes and
        // every ancestor's); "broken" when an ancestor is missing.
        let chain = match Chain::from_list(&all, m) {
            Ok(c) => human_bytes(c.stored_bytes()),
            Err(_) => "broken".to_string(),
        };
        t.row(vec![
            m.id.clone(),
            m.backup_type.as_str().to_string(),
            m.parent.clone().unwrap_or_else(|| "-".into()),
            shown_status(m, running).to_string(),
            m.start_time.clone(),
            m.stop_time.clone().unwrap_or_else(|| "-".into()),
            m.start_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            m.stop_lsn.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            m.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            human_bytes(m.size_bytes),
            human_bytes(m.stored_bytes),
            chain,
            m.label.clone(),
        ]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

fn show(ctx: &Ctx, id: &str) -> Result<ExitCode> {
    let repo = Repository::open_for_listing(ctx.storage()?)?;
    let m = backup::resolve(&repo, id)?;
    let all = backup::list(&repo).map(|(all, _)| all).unwrap_or_default();
    let v = summary(&m, backup_running(&repo), &all);
    if ctx.g.json {
        print_json(&v);
    } else if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            let text = match val {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            println!("{:18} {text}", format!("{k}:"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(ctx: &Ctx, id: &str, jobs: usize) -> Result<ExitCode> {
    let repo = ctx.open_repo()?;
    let m = if id == "latest" { backup::resolve(&repo, id)? } else { backup::read_manifest(&repo, id)? };
    if matches!(m.status, BackupStatus::Running | BackupStatus::Failed | BackupStatus::Expired) {
        bail!("backup {} is {}: there is nothing usable to verify", m.id, shown_status(&m, backup_running(&repo)));
    }
    let report = dbbackup_core::backup::verify::verify(&repo, &m, jobs)?;
    if ctx.g.json {
        let mut v = serde_json::to_value(&report)?;
        v["ok"] = json!(report.ok());
        print_json(&v);
    } else {
        for p in &report.problems {
            println!("BAD  {}: {}", p.object, p.error);
        }
        println!(
            "backup {}: {} of {} files and {} of {} WAL segments verified: {}",
            report.id,
            report.files_ok,
            report.files,
            report.wal_ok,
            report.wal_segments,
            if report.ok() { "ok" } else { "FAILED" }
        );
        if report.completed {
            println!("its WAL is now archived: backup {} is complete", report.id);
        }
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn delete(ctx: &Ctx, id: &str, force: bool, with_dependents: bool) -> Result<ExitCode> {
    let repo = Repository::open_for_listing(ctx.storage()?)?;
    match retention::delete_backup(&repo, id, force, with_dependents)? {
        retention::Deleted::Backup { id, dependents } => {
            for d in dependents {
                println!("deleted backup {d}");
            }
            println!("deleted backup {id}")
        }
        retention::Deleted::UnreadableDirectory(id) => {
            println!("deleted backup directory {id} (its manifest was unreadable)")
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints and (unless dry-run) carries out a retention plan. WAL is shown
/// as counts, bytes and ranges per timeline (a long archive removes
/// thousands of objects); `-v` and `--json` list every object.
pub fn run_plan(ctx: &Ctx, p: retention::Prepared<'_>, dry_run: bool) -> Result<()> {
    let plan = &p.plan;
    if ctx.g.json {
        let mut v = serde_json::to_value(plan)?;
        v["dry_run"] = json!(dry_run);
        print_json(&v);
        if !dry_run {
            p.apply()?;
        }
        return Ok(());
    }
    let verb = if dry_run { "would remove" } else { "removing" };
    if let Some(n) = &plan.note {
        println!("{n}");
    }
    for r in &plan.remove_backups {
        println!("{verb} backup {} ({})", r.id, r.reason);
    }
    for r in &plan.expire_backups {
        let verb = if dry_run { "would mark" } else { "marking" };
        println!("{verb} backup {} expired ({}); `dbbackup backup expire` removes it", r.id, r.reason);
    }
    if !dry_run {
        p.apply()?;
    }
    if ctx.g.verbose > 0 {
        let verb = if dry_run { "would remove" } else { "removed" };
        for w in &plan.remove_wal {
            println!("{verb} {w}");
        }
    }
    if let Some(line) = wal_removal_line(&plan.wal_summary, dry_run, ctx.g.verbose > 0) {
        println!("{line}");
    }
    if !plan.keep_backups.is_empty() {
        println!("keeping backups {}", plan.keep_backups.join(", "));
    }
    if let Some(from) = &plan.wal_kept_from {
        println!("keeping WAL from {from} onward and every history file");
    }
    Ok(())
}

/// "would remove 40 WAL objects (12.0 MiB stored): timeline 1
/// 000000010000000000000003 to 00000001000000000000002A (40 segments)".
fn wal_removal_line(s: &retention::WalRemoval, dry_run: bool, verbose: bool) -> Option<String> {
    if s.objects == 0 {
        return None;
    }
    let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut parts: Vec<String> = s
        .ranges
        .iter()
        .map(|r| {
            let n = plural(r.segments, "segment", "segments");
            if r.first == r.last {
                format!("timeline {} {} ({n})", r.timeline, r.first)
            } else {
                format!("timeline {} {} to {} ({n})", r.timeline, r.first, r.last)
            }
        })
        .collect();
    if s.backup_files > 0 {
        parts.push(plural(s.backup_files, ".backup file", ".backup files"));
    }
    if s.partial_files > 0 {
        parts.push(plural(s.partial_files, ".partial file", ".partial files"));
    }
    Some(format!(
        "{} {} ({} stored): {}{}",
        if dry_run { "would remove" } else { "removed" },
        plural(s.objects, "WAL object", "WAL objects"),
        human_bytes(s.stored_bytes),
        parts.join("; "),
        if dry_run && !verbose { " (-v lists every object)" } else { "" }
    ))
}

fn expire(ctx: &Ctx, policy: Policy, dry_run: bool) -> Result<ExitCode> {
    // Usage errors (exit 2), before the repository is opened.
    let usage = match (policy.keep, policy.keep_days) {
        (None, None) => Some("give a retention policy: --keep N and/or --keep-days D"),
        (Some(0), _) => Some("--keep 0 would remove every backup: keep at least 1"),
        _ => None,
    };
    if let Some(msg) = usage {
        eprintln!("dbbackup: error: {msg}");
        return Ok(ExitCode::from(2));
    }
    let repo = Repository::open_for_listing(ctx.storage()?)?;
    let p = retention::prepare_expire(&repo, policy, jiff::Timestamp::now())?;
    run_plan(ctx, p, dry_run)?;
    Ok(ExitCode::SUCCESS)
}
