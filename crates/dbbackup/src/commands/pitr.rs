//! `dbbackup pitr enable`, `pitr disable`, `pitr status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dbbackup_core::pg::{error_text, server_identity};
use dbbackup_core::pitr::{self, ArchiveCommand, Change, StatusOptions, StatusReport, Verdict};
use dbbackup_core::repo::{
    check_init_key_intent, check_level, identity_from_pgdata, identity_from_server, InitOptions, Repository,
};
use dbbackup_format::meta::ClusterIdentity;
use serde_json::json;

use crate::cli::{EnableArgs, PitrCommand};
use crate::context::Ctx;
use crate::output::{human_bytes, print_json};

pub fn run(ctx: &Ctx, c: PitrCommand) -> Result<ExitCode> {
    match c {
        PitrCommand::Enable(a) => enable(ctx, a),
        PitrCommand::Disable { restart } => disable(ctx, restart),
        PitrCommand::Status { watch, lag_warning } => status(ctx, watch, lag_warning),
    }
}

/// The data directory of a stopped server, when the user points at one.
fn offline_pgdata(ctx: &Ctx) -> Option<PathBuf> {
    let pgdata = ctx.g.pgdata.as_ref()?;
    pitr::read_postmaster_pid(pgdata).is_none().then(|| pgdata.clone())
}

fn show_value(v: &Option<String>) -> String {
    match v {
        None => "(default)".into(),
        Some(s) if s.is_empty() => "''".into(),
        Some(s) => s.clone(),
    }
}

fn print_changes(changes: &[Change], pending: &dyn Fn(&str) -> bool) {
    for c in changes {
        if c.changed() {
            let note = if c.restart && pending(&c.name) { "  (restart needed)" } else { "" };
            println!("{:16} {} -> {}{note}", format!("{}:", c.name), show_value(&c.old), show_value(&c.new));
        } else {
            println!("{:16} {} (unchanged)", format!("{}:", c.name), show_value(&c.old));
        }
    }
}

/// Opens the repository (creating or binding it) for this cluster.
fn prepare_repo(ctx: &Ctx, a: &EnableArgs, identity: ClusterIdentity) -> Result<Repository> {
    let storage = ctx.storage()?;
    let exists = Repository::read_meta(storage.as_ref()).is_ok();
    if !exists {
        check_init_key_intent(&ctx.keys(), a.encrypt, &storage.location())?;
        let key = ctx.keys().load()?;
        if a.encrypt && (key.is_none() || ctx.g.encryption_key_file.is_none()) {
            bail!("--encrypt needs --encryption-key-file FILE (archive_command reads the key from it: the server does not see your environment variables); create one with `dbbackup key generate --output FILE`");
        }
        ctx.warn_unused_default_key(a.encrypt, &format!("the new repository {}", storage.location()));
        let codec = a.compress.unwrap_or_default();
        check_level(codec, a.compress_level)?;
        let repo = Repository::init(
            storage,
            InitOptions {
                codec,
                level: a.compress_level,
                key: if a.encrypt { key } else { None },
                identity: Some(identity),
            },
        )?;
        println!("created repository {}", repo.location());
        return Ok(repo);
    }
    let mut repo = ctx.open_repo()?;
    if a.encrypt && repo.key().is_none() {
        bail!(
            "--encrypt was given but repository {} is not encrypted: encryption is chosen when a repository is created",
            repo.location()
        );
    }
    repo.check_key_intent(&ctx.keys(), "WAL")?;
    ctx.warn_unused_default_key(repo.key().is_some(), &format!("repository {}", repo.location()));
    repo.check_identity(&identity, "this cluster")?;
    if repo.identity().is_none() {
        repo.bind(identity)?;
        println!("bound repository {} to this cluster", repo.location());
    }
    Ok(repo)
}

fn archive_command(ctx: &Ctx, a: &EnableArgs, repo: &Repository) -> Result<String> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let exe = exe.canonicalize().unwrap_or(exe);
    let key_file = match (&ctx.g.encryption_key_file, repo.key()) {
        (Some(f), Some(_)) => Some(std::path::absolute(f)?),
        (Some(_), None) => bail!(
            "repository {} is not encrypted, but an encryption key was given: WAL would be stored unencrypted; leave out --encryption-key-file, or use a new repository created with --encrypt",
            repo.location()
        ),
        (None, Some(_)) => bail!(
            "repository {} is encrypted: give the key with --encryption-key-file so archive_command can use it (the server does not see your environment variables)",
            repo.location()
        ),
        (None, None) => None,
    };
    let config = ctx.g.config.as_ref().map(std::path::absolute).transpose()?;
    Ok(ArchiveCommand {
        exe,
        repo: ctx.repo_path()?,
        compress: a.compress,
        compress_level: a.compress_level,
        allow_shared_key_file: ctx.g.allow_shared_key_file,
        key_file,
        config,
    }
    .render())
}

fn refuse_foreign(current: &std::collections::BTreeMap<String, String>, force: bool) -> Result<()> {
    let cmd = current.get("archive_command").cloned().unwrap_or_default();
    if !cmd.is_empty() && cmd != "(disabled)" && !pitr::is_dbbackup_command(&cmd) && !force {
        bail!(
            "archive_command is already set by another tool: {cmd}\nrefusing to replace it; run again with --force to archive with dbbackup instead"
        );
    }
    Ok(())
}

fn enable(ctx: &Ctx, a: EnableArgs) -> Result<ExitCode> {
    ctx.check_command_paths()?;
    if let Some(pgdata) = offline_pgdata(ctx) {
        return enable_offline(ctx, &a, &pgdata);
    }
    let conn = ctx.conn_for_pgdata();
    let mut client = conn.connect()?;
    pitr::check_privilege(&mut client)?;
    let identity = identity_from_server(server_identity(&mut client)?);
    let settings = pitr::read_settings(&mut client)?;
    let current = settings.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
    refuse_foreign(&current, a.force)?;
    let library = current.get("archive_library").cloned().unwrap_or_default();
    if !library.is_empty() && !a.force {
        bail!(
            "archive_library = '{library}' is set, and PostgreSQL uses it instead of archive_command: refusing to change archiving behind it; run again with --force to reset archive_library and archive with dbbackup"
        );
    }
    let repo = prepare_repo(ctx, &a, identity)?;
    let command = archive_command(ctx, &a, &repo)?;
    note_repository_move(&current, &repo);
    let mut changes = pitr::enable_changes(&current, &command, a.archive_timeout);
    if !library.is_empty() {
        changes.push(pitr::Change { name: "archive_library".into(), old: Some(library), new: None, restart: false });
    }
    pitr::apply_online(&mut client, &changes)?;
    let after = pitr::read_settings(&mut client)?;
    let pending = |n: &str| after.get(n).is_some_and(|s| s.pending_restart);
    print_changes(&changes, &pending);
    let library = after.get("archive_library").map(|s| s.value.clone()).unwrap_or_default();
    if !library.is_empty() {
        println!("warning: archive_library = '{library}' is set and wins over archive_command: reset it (ALTER SYSTEM RESET archive_library)");
    }
    let needs_restart = after.values().any(|s| s.pending_restart);
    let data_dir: String =
        client.query_one("SHOW data_directory", &[]).map(|r| r.get(0)).map_err(|e| anyhow::anyhow!(error_text(&e)))?;
    let mut restarted = false;
    if needs_restart {
        if a.restart {
            println!("restarting PostgreSQL (pg_ctl restart -D {data_dir})");
            let log = pitr::restart(&mut client, Path::new(&data_dir))?;
            println!("restarted; server log: {}", log.display());
            client = conn.connect()?;
            restarted = true;
        } else {
            println!("restart needed: run `pg_ctl restart -D {data_dir}` (or `dbbackup pitr enable --restart`) to start archiving");
        }
    }
    let archiving = pitr::read_settings(&mut client)?.get("archive_mode").is_some_and(|s| s.value != "off");
    let verified = if archiving {
        let seg = pitr::archive_round_trip(&mut client, Duration::from_secs(60))?;
        println!("archiving works: {seg} was archived into {}", repo.location());
        Some(seg)
    } else {
        None
    };
    if ctx.g.json {
        print_json(&json!({
            "changes": changes,
            "restart_needed": needs_restart && !restarted,
            "restarted": restarted,
            "verified_segment": verified,
            "repository": repo.location(),
        }));
    }
    Ok(ExitCode::SUCCESS)
}

/// Says so when archiving moves from one dbbackup repository to another:
/// the old one keeps what it has, and no longer grows.
fn note_repository_move(current: &std::collections::BTreeMap<String, String>, repo: &Repository) {
    let old = current.get("archive_command").and_then(|c| pitr::repo_of_command(c));
    if let Some(old) = old.filter(|o| o.as_path() != std::path::Path::new(&repo.location())) {
        println!(
            "note: archive_command archived into {}; from now on WAL goes to {} (backups in the old repository cannot reach points after this)",
            old.display(),
            repo.location()
        );
    }
}

fn old_copy(backup: &Option<std::path::PathBuf>) -> String {
    match backup {
        Some(b) => format!("old copy: {}", b.display()),
        None => "it did not exist before".into(),
    }
}

fn enable_offline(ctx: &Ctx, a: &EnableArgs, pgdata: &Path) -> Result<ExitCode> {
    let identity = identity_from_pgdata(pgdata)?;
    let current = pitr::read_offline(pgdata);
    refuse_foreign(&current, a.force)?;
    let repo = prepare_repo(ctx, a, identity)?;
    let command = archive_command(ctx, a, &repo)?;
    note_repository_move(&current, &repo);
    let changes = pitr::enable_changes(&current, &command, a.archive_timeout);
    let backup = pitr::apply_offline(pgdata, &changes)?;
    print_changes(&changes, &|_| false);
    println!("the server is stopped: edited {} ({})", pgdata.join("postgresql.auto.conf").display(), old_copy(&backup));
    println!("archiving starts when the server starts");
    Ok(ExitCode::SUCCESS)
}

fn disable(ctx: &Ctx, restart: bool) -> Result<ExitCode> {
    if let Some(pgdata) = offline_pgdata(ctx) {
        let current = pitr::read_offline(&pgdata);
        let changes = pitr::disable_changes(&current);
        let backup = pitr::apply_offline(&pgdata, &changes)?;
        print_changes(&changes, &|_| false);
        println!("the server is stopped: edited postgresql.auto.conf ({})", old_copy(&backup));
        return Ok(ExitCode::SUCCESS);
    }
    let conn = ctx.conn_for_pgdata();
    let mut client = conn.connect()?;
    pitr::check_privilege(&mut client)?;
    let settings = pitr::read_settings(&mut client)?;
    let current = settings.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect();
    let changes = pitr::disable_changes(&current);
    pitr::apply_online(&mut client, &changes)?;
    let after = pitr::read_settings(&mut client)?;
    let pending = |n: &str| after.get(n).is_some_and(|s| s.pending_restart);
    print_changes(&changes, &pending);
    if after.values().any(|s| s.pending_restart) {
        let data_dir: String = client
            .query_one("SHOW data_directory", &[])
            .map(|r| r.get(0))
            .map_err(|e| anyhow::anyhow!(error_text(&e)))?;
        if restart {
            let log = pitr::restart(&mut client, Path::new(&data_dir))?;
            println!("restarted; server log: {}", log.display());
        } else {
            println!("archive_command is reset now (nothing more is archived); archive_mode = off takes effect at the next restart; until then finished WAL stays in pg_wal, waiting to be archived: restart soon (or `dbbackup pitr disable --restart`)");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(ctx: &Ctx, watch: Option<u64>, lag_warning: u64) -> Result<ExitCode> {
    let opts = StatusOptions {
        repo: ctx.g.repo.as_ref().map(|_| ctx.repo_path()).transpose()?,
        lag_warning,
        keys: ctx.keys(),
    };
    loop {
        let report = ctx.conn_for_pgdata().connect().and_then(|mut c| pitr::status(&mut c, &opts));
        let code = match report {
            Ok(r) => {
                if ctx.g.json {
                    print_json(&serde_json::to_value(&r)?);
                } else {
                    print_status(&r);
                }
                if r.verdict == Verdict::Error {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                }
            }
            Err(e) if watch.is_some() => {
                println!("verdict:     error\n  error: {e}");
                ExitCode::FAILURE
            }
            Err(e) => return Err(e.into()),
        };
        match watch {
            None => return Ok(code),
            Some(s) => {
                std::thread::sleep(Duration::from_secs(s.max(1)));
                println!();
            }
        }
    }
}

fn print_status(r: &StatusReport) {
    let v = |n: &str| r.settings.get(n).map(|s| s.value.clone()).unwrap_or_else(|| "-".into());
    println!("verdict:         {}", serde_json::to_value(r.verdict).unwrap().as_str().unwrap_or("?"));
    println!(
        "settings:        wal_level={} archive_mode={} archive_timeout={}",
        v("wal_level"),
        v("archive_mode"),
        v("archive_timeout")
    );
    println!("archive_command: {}", v("archive_command"));
    let a = &r.archiver;
    println!(
        "archived:        {} (last {} at {})",
        a.archived_count,
        a.last_archived_wal.as_deref().unwrap_or("-"),
        a.last_archived_time.as_deref().unwrap_or("-")
    );
    println!(
        "failed:          {} (last {} at {})",
        a.failed_count,
        a.last_failed_wal.as_deref().unwrap_or("-"),
        a.last_failed_time.as_deref().unwrap_or("-")
    );
    match (&r.current_wal, r.lag_segments, r.lag_bytes) {
        (Some(w), Some(s), Some(b)) => println!("current WAL:     {w}, archive lag {s} segments ({})", human_bytes(b)),
        (Some(w), _, _) => println!("current WAL:     {w}"),
        _ => println!("current WAL:     - (in recovery)"),
    }
    if let Some(repo) = &r.repository {
        let gaps = if repo.gaps.is_empty() { "no gaps".to_string() } else { format!("{} gaps", repo.gaps.len()) };
        println!(
            "repository:      {}: {} segments, newest {}, {gaps}",
            repo.location,
            repo.segments,
            repo.newest_segment.as_deref().unwrap_or("-")
        );
        match &repo.newest_backup {
            Some(b) => println!(
                "newest backup:   {} (finished {}, WAL from {}, timeline {})",
                b.id,
                b.stop_time.as_deref().unwrap_or("-"),
                b.start_wal.as_deref().unwrap_or("-"),
                b.timeline.map(|t| t.to_string()).unwrap_or_else(|| "-".into())
            ),
            None => println!("newest backup:   none"),
        }
    }
    for f in &r.findings {
        let level = match f.level {
            Verdict::Ok => "note".to_string(),
            l => serde_json::to_value(l).unwrap().as_str().unwrap_or("?").to_string(),
        };
        println!("{level}: {}", f.message);
        println!("  fix: {}", f.fix);
    }
}
