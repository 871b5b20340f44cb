//! `dbbackup restore pitr`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use dbbackup_core::restore::{self, RestoreOptions};
use dbbackup_format::guc::shell_join;
use dbbackup_format::recovery::Target;
use serde_json::json;

use crate::cli::{RestoreArgs, RestoreCommand};
use crate::context::Ctx;
use crate::output::print_json;

pub fn run(ctx: &Ctx, c: RestoreCommand) -> Result<ExitCode> {
    match c {
        RestoreCommand::Pitr(a) => pitr(ctx, a),
    }
}

fn restore_command(ctx: &Ctx, repo: &dbbackup_core::repo::Repository) -> Result<String> {
    ctx.config_for_server_commands()?;
    let encrypted = repo.key().is_some();
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let mut w = vec![
        exe.display().to_string(),
        "wal".into(),
        "fetch".into(),
        "%f".into(),
        "%p".into(),
        "--repo".into(),
        ctx.repo_path()?.display().to_string(),
    ];
    // The repository is identified by its ID, not its path: one re-created
    // at the path (an unmounted disk "fixed" with `repo init`) is refused
    // by `wal fetch` instead of ending recovery early.
    if let Some(id) = &repo.meta().id {
        w.push("--repo-id".into());
        w.push(id.clone());
    }
    match (&ctx.g.encryption_key_file, encrypted) {
        (Some(f), true) => {
            w.push("--encryption-key-file".into());
            w.push(std::path::absolute(f)?.display().to_string());
            if ctx.g.allow_shared_key_file {
                w.push("--allow-shared-key-file".into());
            }
        }
        (None, true) => bail!(
            "the repository is encrypted: give the key with --encryption-key-file so the restored server's restore_command can read WAL (it does not see your environment variables)"
        ),
        _ => {}
    }
    if let Some(c) = &ctx.g.config {
        w.push("--config".into());
        w.push(std::path::absolute(c)?.display().to_string());
    }
    // %f and %p must reach the shell unquoted: shell_join leaves them alone.
    Ok(shell_join(&w))
}

fn pitr(ctx: &Ctx, a: RestoreArgs) -> Result<ExitCode> {
    ctx.check_command_paths()?;
    // Before the store is asked anything: without the config file the
    // restored server could not reach the repository anyway.
    ctx.config_for_server_commands()?;
    if let Some(d) = &a.spool_dir {
        // It goes into restore_command, a line of postgresql.auto.conf.
        if d.to_string_lossy().chars().any(char::is_control) {
            bail!("--spool-dir {d:?} holds a control character (a newline?): it cannot be written into PostgreSQL's configuration; use another path");
        }
        dbbackup_core::spool::check_dir(&std::path::absolute(d)?)?;
    }
    let repo = ctx.open_repo()?;
    let mut a = a;
    if let Some(table) = a.before_accident.take() {
        before_accident(ctx, &repo, &mut a, table)?;
    }
    let target = if let Some(t) = a.target_time {
        Target::Time(t)
    } else if let Some(x) = a.target_xid {
        Target::Xid(x)
    } else if let Some(l) = a.target_lsn {
        Target::Lsn(l)
    } else if let Some(n) = a.target_name {
        Target::Name(n)
    } else if a.target_immediate {
        Target::Immediate
    } else {
        Target::End
    };
    let target_dir = std::path::absolute(&a.target_dir)?;
    let opts = RestoreOptions {
        target_dir: target_dir.clone(),
        base_backup: a.base_backup,
        target,
        inclusive: !a.exclusive && a.inclusive.unwrap_or(true),
        timeline: a.timeline,
        action: a.target_action,
        jobs: a.jobs.max(1),
        force: a.force,
        past_end: a.target_past_end,
        skip_extraction: a.skip_extraction,
        archive_off: a.archive_mode == "off",
        tablespace_map: a.tablespace_map,
        restore_command: restore_command(ctx, &repo)?,
        port: if ctx.port_on_cli { ctx.g.port } else { None },
        prefetch: a.prefetch,
        spool_dir: a.spool_dir.as_deref().map(std::path::absolute).transpose()?,
    };
    let how = restore::StartOptions { auto_start: a.auto_start, monitor: a.monitor };
    let done = restore::run(&repo, opts, how, &|line| ctx.note(line))?;
    if ctx.g.json {
        print_json(&json!({
            "target_dir": done.target_dir,
            "target": done.target.to_string(),
            "plan": done.plan,
            "server_log": done.server_log,
            "recovery": done.recovery,
        }));
    } else {
        println!("{}", done.target_dir.display());
    }
    match done.failure() {
        Some(why) => {
            eprintln!("dbbackup: error: {why}");
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// `--before-accident TABLE`: the one transaction that dropped or truncated
/// TABLE becomes the target (`--target-xid X --exclusive`), with the backup
/// and timeline the search found; several are listed and refused.
fn before_accident(
    ctx: &Ctx,
    repo: &dbbackup_core::repo::Repository,
    a: &mut RestoreArgs,
    table: String,
) -> Result<()> {
    use crate::commands::wal::{command_prefix, end_of_archive_warnings, event_lines, note_search, nothing_found};
    // Before a search that may read the whole archive.
    if !a.force && !a.skip_extraction {
        if let Ok(mut rd) = std::fs::read_dir(&a.target_dir) {
            if rd.next().is_some() {
                bail!(
                    "target directory {} is not empty: choose an empty or new directory, or use --force to replace its contents",
                    a.target_dir.display()
                );
            }
        }
    }
    if a.timeline == Some(dbbackup_core::restore::TimelineChoice::Current) {
        bail!("--before-accident searches the latest timeline or --timeline N, not `current`");
    }
    let opts = dbbackup_core::wal::search::SearchOptions {
        table: Some(table.clone()),
        timeline: a.timeline,
        base_backup: a.base_backup.clone(),
        ..Default::default()
    };
    ctx.note(format!("searching the archived WAL for the transaction that dropped or truncated {table} ..."));
    let report = dbbackup_core::wal::search::search(repo, &opts)?;
    let prefix = command_prefix(ctx, repo.key().is_some())?;
    note_search(ctx, &report, &end_of_archive_warnings(ctx, repo, &report));
    match report.events.as_slice() {
        [] => bail!(
            "{}: nothing was restored; `dbbackup wal search` lists every event (a table is found by the name it had when it was dropped or any earlier one, a partition by its own name)",
            nothing_found(&opts)
        ),
        [one] => {
            if let Some(why) = &one.no_restore {
                bail!("found xid {} at {}, but {why}", one.event.xid, one.event.lsn);
            }
            // The event, without the command this restore is about to run.
            for l in event_lines(one, None) {
                ctx.note(l);
            }
            match one.event.stop_before {
                Some(l) => {
                    ctx.note(format!("restoring to just before {l}, where transaction {} began ...", one.event.xid));
                    a.target_lsn = Some(l);
                }
                None => {
                    ctx.note(format!("restoring to just before transaction {} ...", one.event.xid));
                    a.target_xid = Some(u64::from(one.event.xid));
                }
            }
            a.exclusive = true;
            a.inclusive = None;
            if a.timeline.is_none() {
                a.timeline = Some(dbbackup_core::restore::TimelineChoice::Id(report.timeline.0));
            }
            if a.base_backup.is_none() {
                a.base_backup = one.base_backup.clone();
            }
            Ok(())
        }
        many => {
            eprintln!("{} committed transactions dropped or truncated {table}:\n", many.len());
            for f in many {
                for l in event_lines(f, Some(&prefix)) {
                    eprintln!("{l}");
                }
                eprintln!();
            }
            bail!(
                "{} committed transactions dropped or truncated {table}; nothing was restored. Choose one: its command above restores to just before it (--target-xid X --exclusive)",
                many.len()
            )
        }
    }
}
