//! `dbbackup pitr enable`, `pitr disable`, `pitr status`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use dbbackup_core::pg::server_identity;
use dbbackup_core::pitr::{self, ArchiveCommand, Change, CommandShape, StatusOptions, StatusReport, Verdict};
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
        PitrCommand::Disable { restart, force } => disable(ctx, restart, force),
        PitrCommand::Status {
            watch,
            lag_warning,
            prove_archiving,
            archive_check_timeout,
            prometheus,
            check_timeout,
            repo_id,
        } => {
            let prove = prove_archiving.then(|| Duration::from_secs(archive_check_timeout));
            if prometheus {
                return status_prometheus(ctx, lag_warning, prove, repo_id, Duration::from_secs_f64(check_timeout));
            }
            status(ctx, watch, lag_warning, prove, repo_id)
        }
    }
}

/// The data directory of a stopped server, when the user points at one.
fn offline_pgdata(ctx: &Ctx) -> Option<PathBuf> {
    let pgdata = ctx.g.pgdata.as_ref()?;
    pitr::read_postmaster_pid(pgdata).is_none().then(|| pgdata.clone())
}

fn show_value(v: &Option<String>) -> String {
    match v {
        None => "(reset)".into(),
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
    ctx.config_for_server_commands()?;
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
        async_archive: a.async_archive,
        jobs: a.jobs,
        spool_dir: a.spool_dir.as_ref().map(std::path::absolute).transpose()?,
    }
    .render())
}

/// The config and key files archive_command names must be readable by the
/// server's OS user.
fn check_files_for_server(ctx: &Ctx, data_dir: &Path) -> Result<()> {
    if let Some(c) = &ctx.g.config {
        pitr::check_server_can_read(&std::path::absolute(c)?, data_dir, "config file")?;
    }
    if let Some(k) = &ctx.g.encryption_key_file {
        pitr::check_server_can_read(&std::path::absolute(k)?, data_dir, "key file")?;
    }
    // Files the config file names, which archive_command reads too.
    let st = &ctx.g.stores;
    let named = [
        (&st.s3.secret_access_key_file, "[s3] secret-access-key-file"),
        (&st.s3.ca_file, "[s3] ca-file"),
        (&st.gcs.service_account_file, "[gcs] service-account-file"),
        (&st.gcs.ca_file, "[gcs] ca-file"),
        (&st.azure.access_key_file, "[azure] access-key-file"),
        (&st.azure.sas_token_file, "[azure] sas-token-file"),
        (&st.azure.ca_file, "[azure] ca-file"),
    ];
    for (f, what) in named {
        if let Some(f) = f {
            pitr::check_server_can_read(&std::path::absolute(f)?, data_dir, what)?;
        }
    }
    Ok(())
}

/// Refuses to replace another tool's archive_command (or a wrapper script
/// dbbackup cannot read) without --force; says so when it replaces a
/// dbbackup command that swallows failures.
fn refuse_foreign(
    current: &std::collections::BTreeMap<String, String>,
    force: bool,
    data_dir: Option<&Path>,
) -> Result<()> {
    let cmd = current.get("archive_command").cloned().unwrap_or_default();
    match pitr::analyze_archive_command(&cmd, data_dir) {
        CommandShape::Opaque { reason } if !force => bail!(
            "archive_command is already set by another tool, or a wrapper dbbackup cannot read ({reason}): {cmd}\nrefusing to replace it; run again with --force to archive with dbbackup instead"
        ),
        CommandShape::Swallowing { reason, .. } => println!(
            "note: the current archive_command can report success when dbbackup fails ({reason}); it is replaced by a plain dbbackup command"
        ),
        _ => {}
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
    let current = pitr::values_with_pending(&settings);
    let data_dir = dbbackup_core::pg::data_directory(&mut client)?.display().to_string();
    check_spool(&a, Path::new(&data_dir), identity.system_identifier)?;
    // A wrapper that already archives here is kept, once proven.
    let kept = if a.force {
        None
    } else {
        pitr::keep_proven_wrapper(&mut client, &ctx.storage()?, &current, Path::new(&data_dir))?
    };
    if let Some((reason, seg)) = &kept {
        println!(
            "archive_command is a command dbbackup cannot read ({reason}), and it archives into {}: {seg} arrived after pg_switch_wal(); it is kept",
            ctx.repo_path()?.display()
        );
    }
    let kept = kept.and(current.get("archive_command").cloned());
    if kept.is_none() {
        refuse_foreign(&current, a.force, Some(Path::new(&data_dir)))?;
    }
    let library = current.get("archive_library").cloned().unwrap_or_default();
    if !library.is_empty() && !a.force {
        bail!(
            "archive_library = '{library}' is set, and PostgreSQL uses it instead of archive_command: refusing to change archiving behind it; run again with --force to reset archive_library and archive with dbbackup"
        );
    }
    // What archive_command will read, checked before anything is created.
    if kept.is_none() {
        ctx.config_for_server_commands()?;
        check_files_for_server(ctx, Path::new(&data_dir))?;
    }
    let repo = prepare_repo(ctx, &a, identity)?;
    pitr::check_same_history(&mut client, &repo)?;
    let command = match &kept {
        Some(c) => c.clone(),
        None => {
            let c = archive_command(ctx, &a, &repo)?;
            note_repository_move(&current, &repo);
            c
        }
    };
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
    let mut restarted = false;
    if needs_restart {
        if a.restart {
            println!("restarting PostgreSQL (pg_ctl restart -D {data_dir})");
            let r = pitr::restart(&mut client, Path::new(&data_dir))?;
            println!("restarted; {}", r.note);
            client = conn.connect()?;
            restarted = true;
        } else {
            println!("restart needed: run `pg_ctl restart -D {data_dir}` (or `dbbackup pitr enable --restart`) to start archiving");
        }
    }
    // What the server runs now: a value on its command line outranks
    // ALTER SYSTEM.
    let eff = pitr::read_in_effect(&mut client, &["archive_command"])?;
    if let Some(c) = eff.get("archive_command").filter(|c| c.value != "(disabled)" && c.value != command) {
        bail!(
            "archive_command in effect is still '{}' ({}), not the one just set: remove it there and reload, then run `dbbackup pitr enable` again",
            c.value,
            c.origin()
        );
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
    let Some(shape) = current.get("archive_command").map(|c| pitr::analyze_archive_command(c, None)) else {
        return;
    };
    let here = repo.location();
    let old = shape.invocations().iter().find(|i| i.repo.is_some());
    if let Some(old) = old.filter(|o| !pitr::archives_into(o, Path::new(&here), repo.meta().id.as_deref())) {
        println!(
            "note: archive_command archived into {}; from now on WAL goes to {here} (backups in the old repository cannot reach points after this)",
            old.repo.as_deref().unwrap_or(Path::new("-")).display(),
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
    check_spool(a, pgdata, identity.system_identifier)?;
    let current = pitr::read_offline(pgdata);
    refuse_foreign(&current, a.force, Some(pgdata))?;
    ctx.config_for_server_commands()?;
    check_files_for_server(ctx, pgdata)?;
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

/// With --async: the spool the calls will use is usable by this cluster.
fn check_spool(a: &EnableArgs, data_dir: &Path, system_identifier: u64) -> Result<()> {
    if a.async_archive {
        let root = dbbackup_core::spool::root(a.spool_dir.as_deref(), data_dir);
        dbbackup_core::wal::async_archive::check_spool_for(&root, system_identifier)?;
    }
    Ok(())
}

/// Refuses to turn off archiving that another tool does, without --force.
fn refuse_foreign_disable(
    current: &std::collections::BTreeMap<String, String>,
    force: bool,
    data_dir: &Path,
) -> Result<()> {
    if force {
        return Ok(());
    }
    let cmd = current.get("archive_command").cloned().unwrap_or_default();
    if let CommandShape::Opaque { reason } = pitr::analyze_archive_command(&cmd, Some(data_dir)) {
        bail!(
            "archive_command is not dbbackup's ({reason}): {cmd}\nrefusing to turn off archiving that another tool (or a wrapper script) does; run again with --force to turn it off anyway"
        );
    }
    let library = current.get("archive_library").cloned().unwrap_or_default();
    if !library.is_empty() {
        bail!(
            "PostgreSQL archives through archive_library = '{library}', not dbbackup: refusing to turn that archiving off; run again with --force to turn it off anyway"
        );
    }
    Ok(())
}

fn disable(ctx: &Ctx, restart: bool, force: bool) -> Result<ExitCode> {
    if let Some(pgdata) = offline_pgdata(ctx) {
        let current = pitr::read_offline(&pgdata);
        refuse_foreign_disable(&current, force, &pgdata)?;
        let changes = pitr::disable_changes(&current);
        let backup = pitr::apply_offline(&pgdata, &changes)?;
        print_changes(&changes, &|_| false);
        println!("the server is stopped: edited postgresql.auto.conf ({})", old_copy(&backup));
        // postgresql.auto.conf wins over postgresql.conf: a command left
        // there is unused while archive_mode = off.
        if let Some(cmd) = pitr::read_offline(&pgdata).get("archive_command").filter(|c| !c.is_empty()) {
            println!(
                "note: archive_command is still '{cmd}' in {}: unused while archive_mode = off; remove it there too, or archiving resumes whenever archive_mode is turned on",
                pgdata.join("postgresql.conf").display()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let conn = ctx.conn_for_pgdata();
    let mut client = conn.connect()?;
    pitr::check_privilege(&mut client)?;
    let settings = pitr::read_settings(&mut client)?;
    let current = pitr::values_with_pending(&settings);
    let data_dir = dbbackup_core::pg::data_directory(&mut client)?.display().to_string();
    refuse_foreign_disable(&current, force, Path::new(&data_dir))?;
    let changes = pitr::disable_changes(&current);
    pitr::apply_online(&mut client, &changes)?;
    let after = pitr::read_settings(&mut client)?;
    let pending = |n: &str| after.get(n).is_some_and(|s| s.pending_restart);
    print_changes(&changes, &pending);
    let mut restarted = false;
    if after.values().any(|s| s.pending_restart) && restart {
        let r = pitr::restart(&mut client, Path::new(&data_dir))?;
        println!("restarted; {}", r.note);
        client = conn.connect()?;
        restarted = true;
    }
    // Read back what is in effect: a value in postgresql.conf (or an
    // included file, or the command line) survives ALTER SYSTEM RESET.
    let eff = pitr::read_in_effect(&mut client, &["archive_command", "archive_mode"])?;
    let (Some(mode), Some(cmd)) = (eff.get("archive_mode"), eff.get("archive_command")) else {
        bail!("the server does not report archive_mode and archive_command in pg_settings");
    };
    let mode_on = mode.value != "off";
    let cmd_set = !cmd.value.is_empty() && cmd.value != "(disabled)";
    let archiving = mode_on && cmd_set;
    let mut ok = true;
    if archiving {
        ok = false;
        let restart_note = if mode.pending_restart {
            "; a restart stops it too, as archive_mode = off then takes effect (`dbbackup pitr disable --restart`)"
        } else {
            ""
        };
        println!(
            "archive_command is still '{}' ({}): PostgreSQL keeps archiving until you remove it there and reload (SELECT pg_reload_conf()){restart_note}",
            cmd.value,
            cmd.origin()
        );
    } else if mode_on && mode.pending_restart {
        println!("archive_command is empty now: nothing more is archived; archive_mode = off takes effect at the next restart; until then finished WAL stays in pg_wal, waiting to be archived: restart soon (or `dbbackup pitr disable --restart`)");
    } else if !mode_on {
        println!("archiving is off: archive_mode = off is in effect");
        if cmd.file_value.as_deref().is_some_and(|v| !v.is_empty()) {
            println!(
                "note: archive_command is still '{}' ({}): unused while archive_mode = off; remove it there too, or archiving resumes whenever archive_mode is turned on",
                cmd.file_value.as_deref().unwrap_or_default(),
                cmd.origin()
            );
        }
    }
    if mode_on && !mode.pending_restart {
        ok = false;
        println!(
            "archive_mode stays '{}' after a restart ({}): ALTER SYSTEM cannot override it; remove it there{}",
            mode.value,
            mode.origin(),
            if archiving { "" } else { " (until then, finished WAL piles up in pg_wal: archive_command is empty)" }
        );
    }
    if ctx.g.json {
        print_json(&json!({
            "changes": changes,
            "restarted": restarted,
            "in_effect": eff,
            "archiving": archiving,
        }));
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The options of a status check, from the global options.
pub fn status_options(
    ctx: &Ctx,
    lag_warning: u64,
    prove: Option<Duration>,
    repo_id: Option<String>,
) -> Result<StatusOptions> {
    Ok(StatusOptions {
        repo: ctx.g.repo.as_ref().map(|_| ctx.repo_path()).transpose()?,
        lag_warning,
        keys: ctx.keys(),
        prove,
        stores: ctx.g.stores.clone(),
        config_given: ctx.g.config.is_some(),
        repo_id,
    })
}

/// One check as the monitor runs it: connecting anew each time, with the
/// server's socket and port read from `--pgdata`'s postmaster.pid then (a
/// server restarted on another port is still found).
pub fn checker(ctx: &Ctx, opts: StatusOptions) -> impl Fn() -> dbbackup_core::monitor::Check + Send + Sync + 'static {
    let g = ctx.g.clone();
    move || {
        let ctx = Ctx::new(g.clone(), false);
        dbbackup_core::monitor::check(&|| ctx.conn_for_pgdata().connect(), &opts)
    }
}

/// The metrics' labels until a check says otherwise: the cluster of
/// --pgdata (from pg_control), and the repository given.
pub fn labels_before_check(ctx: &Ctx, opts: &StatusOptions) -> dbbackup_core::monitor::Labels {
    dbbackup_core::monitor::Labels {
        system_identifier: ctx
            .g
            .pgdata
            .as_deref()
            .and_then(|d| dbbackup_core::repo::identity_from_pgdata(d).ok())
            .map(|i| i.system_identifier.to_string())
            .unwrap_or_default(),
        repository: opts.repo.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
    }
}

/// The monitor's metrics once: a server that cannot be reached is a
/// metric (dbbackup_server_up 0), so the textfile is still replaced.
fn status_prometheus(
    ctx: &Ctx,
    lag_warning: u64,
    prove: Option<Duration>,
    repo_id: Option<String>,
    deadline: Duration,
) -> Result<ExitCode> {
    use dbbackup_core::monitor::{self, metrics, Totals};
    let opts = status_options(ctx, lag_warning, prove, repo_id)?;
    let check = monitor::check_within(checker(ctx, opts.clone()), deadline);
    if let Err(e) = &check.outcome {
        eprintln!("dbbackup: warning: {e}");
    }
    let mut labels = labels_before_check(ctx, &opts);
    labels.update(&check);
    let totals = Totals { checks: 1, errors: u64::from(check.outcome.is_err()) };
    let body = metrics::render(&check, &totals, &labels, None);
    print!("{}", metrics::to_prometheus_text(&body));
    Ok(ExitCode::SUCCESS)
}

fn status(
    ctx: &Ctx,
    watch: Option<u64>,
    lag_warning: u64,
    prove: Option<Duration>,
    repo_id: Option<String>,
) -> Result<ExitCode> {
    let opts = status_options(ctx, lag_warning, prove, repo_id)?;
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
    if let Some(q) = &r.async_queue {
        let worker = match q.worker_running {
            Some(true) => "a worker runs",
            Some(false) => "no worker runs",
            None => "worker unknown",
        };
        println!(
            "async queue:     {} ready, {} not yet acknowledged{}; {worker} (spool {})",
            q.ready,
            q.unacknowledged,
            q.oldest_unacknowledged.as_deref().map(|o| format!(" (oldest {o})")).unwrap_or_default(),
            q.spool
        );
    }
    if let Some(repo) = r.repository.as_ref().filter(|r| !r.reachable) {
        // No counts: "0 segments, no gaps" would read as an empty, healthy archive.
        println!("repository:      {}: cannot be read (see the error below)", repo.location);
    }
    if let Some(repo) = r.repository.as_ref().filter(|r| r.reachable) {
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
