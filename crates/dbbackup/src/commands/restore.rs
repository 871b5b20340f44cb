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
    let repo = ctx.open_repo()?;
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
    let mut opts = RestoreOptions {
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
    };

    // pg_ctl hands the data directory to a shell in double quotes.
    if let Some(c) = a
        .auto_start
        .then(|| target_dir.to_string_lossy().chars().find(|c| matches!(c, '"' | '$' | '`' | '\\')))
        .flatten()
    {
        bail!(
            "pg_ctl cannot start a server in {} (its path holds {c:?}): restore into another directory, or leave out --auto-start and start it yourself",
            target_dir.display()
        );
    }
    let mut archive_end = None;
    let (major, bindir_hint, plan_json) = if opts.skip_extraction {
        let v = std::fs::read_to_string(target_dir.join("PG_VERSION"))
            .with_context(|| format!("{} is not a data directory (no PG_VERSION)", target_dir.display()))?;
        let major = dbbackup_format::control::parse_pg_version(&v).context("unreadable PG_VERSION")?;
        if matches!(opts.target, Target::End) {
            let tli = restore::label_timeline(&target_dir).unwrap_or(dbbackup_format::TimelineId(1));
            archive_end = restore::archive_end(&repo, opts.timeline.unwrap_or(restore::TimelineChoice::Latest), tli)?;
        }
        (major, None, json!(null))
    } else {
        let plan = restore::plan(&repo, &opts)?;
        opts.target = plan.target.clone();
        archive_end = plan.archive_end;
        ctx.note(format_args!(
            "restoring {} to {} on timeline {}: the archive covers {} to {} ({} segments)",
            plan.source_name(),
            opts.target,
            plan.target_timeline,
            plan.first_segment,
            plan.last_segment.as_deref().unwrap_or("-"),
            plan.segments_checked
        ));
        let hint = match &plan.source {
            restore::Source::Repo(m) => m.pg_bindir.clone(),
            restore::Source::Path { .. } => None,
        };
        // The port the restored server will listen on, checked before
        // anything is written (the backup's own configuration says where).
        if a.auto_start {
            let (sockets, conf_port) = restore::planned_socket(&repo, &plan)?;
            let port = opts.port.unwrap_or(conf_port);
            if restore::port_in_use(port, &sockets) {
                bail!(
                    "port {port} is in use{}: {} (nothing was restored)",
                    if opts.port.is_none() { " (by the server this backup came from?)" } else { "" },
                    if opts.port.is_none() {
                        "give --port P to start the restored server on another port"
                    } else {
                        "choose another with --port P"
                    }
                );
            }
        }
        restore::extract(&repo, &plan, &opts)?;
        let pj = json!({
            "source": plan.source_name(),
            "target_timeline": plan.target_timeline.0,
            "first_segment": plan.first_segment,
            "last_segment": plan.last_segment,
        });
        (plan.major, hint, pj)
    };
    restore::write_recovery(&target_dir, major, &opts)?;
    if opts.skip_extraction {
        ctx.note(format_args!("recovery configured in {} ({})", target_dir.display(), opts.target));
    } else {
        ctx.note(format_args!("restored into {}; recovery configured ({})", target_dir.display(), opts.target));
    }
    if opts.archive_off {
        ctx.note("archive_mode = off in the restored cluster: an inspection copy, it never archives into the repository (--archive-mode preserve keeps archiving, for a restore that becomes the new primary)");
    } else {
        ctx.note(format_args!(
            "--archive-mode preserve: once promoted, the restored cluster archives its new timeline into the archive_command's repository ({}) as the new primary; if this is only a copy, stop it from archiving there (ALTER SYSTEM SET archive_mode = off, restart), or later restores of the primary's history need --timeline",
            ctx.repo_path()?.display()
        ));
    }

    let mut outcome = None;
    let mut log = None;
    if a.auto_start {
        let (sockets, conf_port) = restore::configured_socket(&target_dir);
        let port = opts.port.unwrap_or(conf_port);
        if restore::port_in_use(port, &sockets) {
            bail!(
                "port {port} is in use (by the server this backup came from?): the files are restored in {dir} and recovery is configured; start it on another port with `dbbackup restore pitr --skip-extraction --target-dir {dir} --auto-start --port P` (with the same target options)",
                dir = target_dir.display()
            );
        }
        let pg_ctl = restore::find_pg_ctl(major, bindir_hint.as_deref())?;
        let l = restore::start(&pg_ctl, &target_dir)?;
        ctx.note(format_args!(
            "started PostgreSQL {major} in {} on port {port}; server log {}",
            target_dir.display(),
            l.display()
        ));
        if a.monitor {
            let o = restore::monitor(&target_dir, &l, &opts.target, archive_end, None)?;
            ctx.note(format_args!(
                "recovery {}: timeline {}, LSN {}, last replayed transaction at {}; target {}",
                o.state,
                o.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
                o.lsn.as_deref().unwrap_or("-"),
                o.time.as_deref().unwrap_or("-"),
                if o.target_reached { "reached" } else { "NOT reached" }
            ));
            if let Some(d) = &o.detail {
                ctx.note(format_args!("  {d}"));
            }
            outcome = Some(o);
        }
        log = Some(l);
    }
    if ctx.g.json {
        print_json(&json!({
            "target_dir": target_dir,
            "target": opts.target.to_string(),
            "plan": plan_json,
            "server_log": log,
            "recovery": outcome,
        }));
    } else {
        println!("{}", target_dir.display());
    }
    match outcome {
        Some(o) if o.state == "failed" || !o.target_reached => {
            // PostgreSQL's words when the target lies inside the backup.
            let detail = o.detail.as_deref().unwrap_or("");
            let hint = if detail.contains("before consistent recovery point") {
                "; the target lies before the end of the backup restored: choose an older one with --base-backup ID (see `dbbackup backup list`)"
            } else if detail.contains("ended before configured recovery target was reached") {
                match opts.target {
                    Target::Time(_) => "; no transaction in the archive committed after the target time, so PostgreSQL cannot tell it got there: if nothing was written between the last commit and that time, the end of the archive is the state you want (restore again without a target), else archive the source's current WAL first (SELECT pg_switch_wal())",
                    _ => "; the target is not in the archive after the backup: check it; a restore point or transaction from before the backup restored is never seen (choose an older one with --base-backup ID, see `dbbackup backup list`); or archive the source's current WAL first (SELECT pg_switch_wal())",
                }
            } else {
                ""
            };
            eprintln!(
                "dbbackup: error: recovery did not reach {}{}{hint}: see {}",
                opts.target,
                o.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default(),
                log.map(|l| l.display().to_string()).unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}
