//! PITR setup and health: the archiving settings of a server, changed
//! through `ALTER SYSTEM` (or, with the server stopped, by editing
//! `postgresql.auto.conf` safely), and the archiver's health as the server
//! itself reports it (`pg_settings`, `pg_stat_archiver`), never from
//! configuration file text.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dbbackup_format::guc::{edit_auto_conf, read_conf_value, shell_join, sql_literal};
use dbbackup_format::Codec;

use crate::error::{Error, Result};
use crate::pg::error_text;

pub use crate::archive_command::{analyze_archive_command, archives_into, same_location, CommandShape, Invocation};

/// The settings PITR depends on.
pub const ARCHIVE_SETTINGS: &[&str] =
    &["wal_level", "archive_mode", "archive_command", "archive_timeout", "archive_library"];

/// One setting as the server has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Setting {
    pub name: String,
    pub value: String,
    pub pending_restart: bool,
}

/// The settings' values, as `enable_changes` and `disable_changes` compare
/// them. A value waiting for a restart (`pending_restart`: the file says
/// otherwise) is marked, so it never equals the wanted value: `pitr enable`
/// right after `pitr disable` (no restart between) must write
/// `archive_mode = on` again, or the restart it asks for turns archiving off.
pub fn values_with_pending(settings: &BTreeMap<String, Setting>) -> BTreeMap<String, String> {
    settings
        .iter()
        .map(|(k, v)| {
            let value = if v.pending_restart {
                format!("{} (another value waits for a restart)", v.value)
            } else {
                v.value.clone()
            };
            (k.clone(), value)
        })
        .collect()
}

/// Reads settings from `pg_settings` (missing ones, such as
/// `archive_library` before 15, are absent from the map).
pub fn read_settings(client: &mut postgres::Client) -> Result<BTreeMap<String, Setting>> {
    let rows = client
        .query(
            "SELECT name, setting, pending_restart FROM pg_settings WHERE name = ANY($1)",
            &[&ARCHIVE_SETTINGS.iter().map(|s| s.to_string()).collect::<Vec<_>>()],
        )
        .map_err(|e| Error::server(format!("cannot read pg_settings: {}", error_text(&e))))?;
    let mut out: BTreeMap<String, Setting> = rows
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            (name.clone(), Setting { name, value: r.get(1), pending_restart: r.get(2) })
        })
        .collect();
    // With archive_mode off the server shows archive_command as
    // "(disabled)"; the configured value is in pg_file_settings (readable
    // by superusers, who are the ones changing it).
    if let Some(cmd) = out.get_mut("archive_command").filter(|c| c.value == "(disabled)") {
        let configured = client
            .query_opt(
                "SELECT setting FROM pg_file_settings WHERE name = 'archive_command' AND error IS NULL ORDER BY seqno DESC LIMIT 1",
                &[],
            )
            .ok()
            .flatten()
            .map(|r| r.get::<_, String>(0));
        cmd.value = configured.unwrap_or_default();
    }
    Ok(out)
}

/// A setting as it is in effect, and where its value comes from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InEffect {
    pub name: String,
    /// `(disabled)` for archive_command while archive_mode is off.
    pub value: String,
    /// pg_settings.source: `default`, `configuration file`, `command line`...
    pub source: String,
    pub sourcefile: Option<String>,
    pub sourceline: Option<i32>,
    pub pending_restart: bool,
    /// The value the configuration files give, which a restart applies
    /// (for a setting waiting for one).
    pub file_value: Option<String>,
}

impl InEffect {
    /// Where the value comes from, for messages: `set in FILE:LINE`.
    pub fn origin(&self) -> String {
        match (&self.sourcefile, self.sourceline, self.source.as_str()) {
            (Some(f), Some(l), _) => format!("set in {f}:{l}"),
            (Some(f), None, _) => format!("set in {f}"),
            (None, _, "default") => "the built-in default".into(),
            (None, _, "command line") => {
                "set on the server's command line (postgres -c, pg_ctl -o): it outranks every configuration file".into()
            }
            (None, _, src) => format!("set by {src}"),
        }
    }
}

/// Reads settings as in effect right now, with their source file and line
/// (superusers see those).
pub fn read_in_effect(client: &mut postgres::Client, names: &[&str]) -> Result<BTreeMap<String, InEffect>> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let rows = client
        .query(
            "SELECT s.name, s.setting, s.source, s.sourcefile, s.sourceline, s.pending_restart, \
                    (SELECT f.setting FROM pg_file_settings f WHERE f.name = s.name AND f.error IS NULL ORDER BY f.seqno DESC LIMIT 1) \
             FROM pg_settings s WHERE s.name = ANY($1)",
            &[&names],
        )
        .map_err(|e| Error::server(format!("cannot read pg_settings: {}", error_text(&e))))?;
    Ok(rows
        .iter()
        .map(|r| {
            let e = InEffect {
                name: r.get(0),
                value: r.get(1),
                source: r.get(2),
                sourcefile: r.get(3),
                sourceline: r.get(4),
                pending_restart: r.get(5),
                file_value: r.get(6),
            };
            (e.name.clone(), e)
        })
        .collect())
}

/// What the archive_command should run.
#[derive(Debug, Clone, Default)]
pub struct ArchiveCommand {
    pub exe: PathBuf,
    pub repo: PathBuf,
    pub compress: Option<Codec>,
    pub compress_level: Option<i32>,
    pub key_file: Option<PathBuf>,
    /// Pass --allow-shared-key-file (a key on a read-only secret mount).
    pub allow_shared_key_file: bool,
    pub config: Option<PathBuf>,
    /// `--async`: a background worker pushes ahead, `jobs` at a time.
    pub async_archive: bool,
    pub jobs: Option<u16>,
    pub spool_dir: Option<PathBuf>,
}

impl ArchiveCommand {
    /// The command line, quoted for the shell (the GUC layer is quoted
    /// when it is written).
    pub fn render(&self) -> String {
        let mut w: Vec<String> = vec![
            self.exe.display().to_string(),
            "wal".into(),
            "archive".into(),
            "%p".into(),
            "%f".into(),
            "--repo".into(),
            self.repo.display().to_string(),
        ];
        if let Some(c) = self.compress {
            w.push(format!("--compress={c}"));
        }
        if let Some(l) = self.compress_level {
            w.push(format!("--compress-level={l}"));
        }
        if let Some(k) = &self.key_file {
            w.push("--encryption-key-file".into());
            w.push(k.display().to_string());
            if self.allow_shared_key_file {
                w.push("--allow-shared-key-file".into());
            }
        }
        if let Some(c) = &self.config {
            w.push("--config".into());
            w.push(c.display().to_string());
        }
        if self.async_archive {
            w.push("--async".into());
            if let Some(j) = self.jobs {
                w.push("--jobs".into());
                w.push(j.to_string());
            }
            if let Some(d) = &self.spool_dir {
                w.push("--spool-dir".into());
                w.push(d.display().to_string());
            }
        }
        shell_join(&w)
    }
}

/// One setting change: `new: None` resets it to the default.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Change {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
    /// Takes effect only after a restart.
    pub restart: bool,
}

impl Change {
    pub fn changed(&self) -> bool {
        self.old != self.new
    }
}

/// The changes that turn archiving on, from the current values.
pub fn enable_changes(current: &BTreeMap<String, String>, command: &str, timeout: Option<u32>) -> Vec<Change> {
    let get = |n: &str| current.get(n).cloned();
    let mut out = Vec::new();
    let wal_level = get("wal_level");
    let want_level = match wal_level.as_deref() {
        Some("logical") => "logical",
        _ => "replica",
    };
    out.push(Change { name: "wal_level".into(), old: wal_level, new: Some(want_level.into()), restart: true });
    let mode = get("archive_mode");
    let want_mode = if mode.as_deref() == Some("always") { "always" } else { "on" };
    out.push(Change { name: "archive_mode".into(), old: mode, new: Some(want_mode.into()), restart: true });
    out.push(Change {
        name: "archive_command".into(),
        old: get("archive_command"),
        new: Some(command.to_string()),
        restart: false,
    });
    if let Some(t) = timeout {
        out.push(Change {
            name: "archive_timeout".into(),
            old: get("archive_timeout"),
            new: Some(t.to_string()),
            restart: false,
        });
    }
    out
}

/// The changes that turn archiving off.
pub fn disable_changes(current: &BTreeMap<String, String>) -> Vec<Change> {
    vec![
        Change {
            name: "archive_mode".into(),
            old: current.get("archive_mode").cloned(),
            new: Some("off".into()),
            restart: true,
        },
        Change {
            name: "archive_command".into(),
            old: current.get("archive_command").cloned(),
            new: None,
            restart: false,
        },
    ]
}

/// Checks that the connected role may run ALTER SYSTEM.
pub fn check_privilege(client: &mut postgres::Client) -> Result<()> {
    let row = client
        .query_one("SELECT current_user::text, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)", &[])
        .map_err(|e| Error::server(error_text(&e)))?;
    let (user, superuser): (String, bool) = (row.get(0), row.get(1));
    if !superuser {
        return Err(Error::server(format!(
            "role {user} is not a superuser: changing archive settings needs SUPERUSER (ALTER SYSTEM on wal_level, archive_mode, archive_command and archive_timeout); connect as a superuser with --user"
        )));
    }
    Ok(())
}

/// Applies changes with ALTER SYSTEM and reloads; waits until this session
/// sees the reloaded values.
pub fn apply_online(client: &mut postgres::Client, changes: &[Change]) -> Result<()> {
    for c in changes.iter().filter(|c| c.changed()) {
        let sql = match &c.new {
            Some(v) => format!("ALTER SYSTEM SET {} = {}", c.name, sql_literal(v)),
            None => format!("ALTER SYSTEM RESET {}", c.name),
        };
        client.batch_execute(&sql).map_err(|e| Error::server(format!("{sql} failed: {}", error_text(&e))))?;
    }
    client
        .batch_execute("SELECT pg_reload_conf()")
        .map_err(|e| Error::server(format!("pg_reload_conf() failed: {}", error_text(&e))))?;
    // The reload is asynchronous: wait until every change shows, a
    // restart-only one as pending_restart. (archive_command shows as
    // "(disabled)" while archive_mode is off.) A reset takes the value the
    // configuration files give (pg_file_settings reads them afresh: a
    // postgresql.conf line shows through), else the built-in default;
    // values from the command line outrank both and are not waited for.
    let changed: Vec<&Change> = changes.iter().filter(|c| c.changed()).collect();
    let names: Vec<String> = changed.iter().map(|c| c.name.clone()).collect();
    let resets: Vec<String> = changed.iter().filter(|c| c.new.is_none()).map(|c| c.name.clone()).collect();
    let expected: BTreeMap<String, String> = if resets.is_empty() {
        BTreeMap::new()
    } else {
        client
            .query(
                "SELECT s.name, coalesce((SELECT f.setting FROM pg_file_settings f WHERE f.name = s.name AND f.error IS NULL ORDER BY f.seqno DESC LIMIT 1), s.boot_val, '') \
                 FROM pg_settings s WHERE s.name = ANY($1) AND s.source IN ('default', 'configuration file')",
                &[&resets],
            )
            .map(|rows| rows.iter().map(|r| (r.get(0), r.get(1))).collect())
            .unwrap_or_default()
    };
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let rows = client
            .query("SELECT name, setting, pending_restart FROM pg_settings WHERE name = ANY($1)", &[&names])
            .unwrap_or_default();
        let shows = |c: &Change| {
            rows.iter().any(|r| {
                let (name, setting, pending): (String, String, bool) = (r.get(0), r.get(1), r.get(2));
                name == c.name
                    && match &c.new {
                        Some(v) if c.restart => pending || &setting == v,
                        Some(v) => &setting == v || setting == "(disabled)",
                        None => expected.get(&c.name).is_none_or(|e| &setting == e || setting == "(disabled)"),
                    }
            })
        };
        if changed.iter().all(|c| shows(c)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Reads the archiving settings from configuration files of a stopped
/// cluster.
pub fn read_offline(pgdata: &Path) -> BTreeMap<String, String> {
    read_offline_settings(pgdata, ARCHIVE_SETTINGS)
}

/// Reads current values of `names` from configuration files of a stopped
/// cluster (`postgresql.conf`, then `postgresql.auto.conf`, which wins).
fn read_offline_settings(pgdata: &Path, names: &[&str]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for file in ["postgresql.conf", "postgresql.auto.conf"] {
        if let Ok(text) = std::fs::read_to_string(pgdata.join(file)) {
            for name in names {
                if let Some(v) = read_conf_value(&text, name) {
                    out.insert(name.to_string(), v);
                }
            }
        }
    }
    out
}

/// Edits `postgresql.auto.conf` of a stopped cluster: the old file is kept
/// as a copy, the new one written to a temporary file, fsynced and renamed
/// over it, with the data directory's owner. Returns the copy's path (none
/// when there was no file).
pub fn apply_offline(pgdata: &Path, changes: &[Change]) -> Result<Option<PathBuf>> {
    let path = pgdata.join("postgresql.auto.conf");
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("cannot read {}: {e}", path.display()))),
    };
    let edits: Vec<(&str, Option<String>)> =
        changes.iter().filter(|c| c.changed()).map(|c| (c.name.as_str(), c.new.clone())).collect();
    // A new file starts with the header ALTER SYSTEM writes.
    const HEADER: &str = "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n";
    let new = edit_auto_conf(old.as_deref().unwrap_or(HEADER), &edits);
    // The copy's name has the time to the microsecond and, should two edits
    // share that, a counter: an earlier copy is never overwritten.
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.6fZ").to_string().replace('.', "");
    let mut backup = pgdata.join(format!("postgresql.auto.conf.dbbackup-{stamp}"));
    for n in 1.. {
        if !backup.exists() {
            break;
        }
        backup = pgdata.join(format!("postgresql.auto.conf.dbbackup-{stamp}-{n}"));
    }
    let owner = std::fs::metadata(pgdata).map_err(|e| Error::io(format!("cannot stat {}: {e}", pgdata.display())))?;
    let write = |p: &Path, text: &str| -> std::io::Result<()> {
        use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        // Keep files readable by the server when an administrator runs this as root.
        let _ = std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid()));
        Ok(())
    };
    if let Some(old) = &old {
        write(&backup, old).map_err(|e| Error::io(format!("cannot write {}: {e}", backup.display())))?;
    }
    let temp = pgdata.join(format!(".postgresql.auto.conf.dbbackup-{}.tmp", std::process::id()));
    write(&temp, &new).map_err(|e| Error::io(format!("cannot write {}: {e}", temp.display())))?;
    std::fs::rename(&temp, &path).map_err(|e| {
        let _ = std::fs::remove_file(&temp);
        Error::io(format!("cannot replace {}: {e}", path.display()))
    })?;
    crate::storage::sync_dir(pgdata).map_err(|e| Error::io(format!("cannot fsync {}: {e}", pgdata.display())))?;
    Ok(old.map(|_| backup))
}

/// `postmaster.pid` of a data directory: whether a server runs there and
/// how to reach it.
#[derive(Debug, Clone)]
pub struct Postmaster {
    pub pid: u32,
    pub port: Option<u16>,
    pub socket_dir: Option<String>,
}

pub fn read_postmaster_pid(pgdata: &Path) -> Option<Postmaster> {
    let text = std::fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let lines: Vec<&str> = text.lines().collect();
    let pid: u32 = lines.first()?.trim().parse().ok()?;
    // A stale file after a crash: the process is gone.
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return None;
    }
    Some(Postmaster {
        pid,
        port: lines.get(3).and_then(|l| l.trim().parse().ok()),
        socket_dir: lines.get(4).map(|l| l.trim().to_string()).filter(|s| !s.is_empty()),
    })
}

/// `pg_stat_archiver`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ArchiverStats {
    pub archived_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<String>,
    pub failed_count: i64,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<String>,
    /// Seconds since the last failure, when there was one.
    #[serde(skip)]
    pub failed_ago_s: Option<f64>,
    /// Whether the last failure is newer than the last success.
    pub failing: bool,
}

pub fn archiver_stats(client: &mut postgres::Client) -> Result<ArchiverStats> {
    let row = client
        .query_one(
            "SELECT archived_count, last_archived_wal, to_char(last_archived_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    failed_count, last_failed_wal, to_char(last_failed_time AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), \
                    extract(epoch FROM now() - last_failed_time)::float8, \
                    coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false) \
             FROM pg_stat_archiver",
            &[],
        )
        .map_err(|e| Error::server(format!("cannot read pg_stat_archiver: {}", error_text(&e))))?;
    Ok(ArchiverStats {
        archived_count: row.get(0),
        last_archived_wal: row.get(1),
        last_archived_time: row.get(2),
        failed_count: row.get(3),
        last_failed_wal: row.get(4),
        last_failed_time: row.get(5),
        failed_ago_s: row.get(6),
        failing: row.get(7),
    })
}

/// How long archive_round_trip waits for a success after a failure.
const FAILURE_GRACE: Duration = Duration::from_secs(8);

/// Forces one segment through archive_command and waits for the result.
/// Returns the segment's name.
pub fn archive_round_trip(client: &mut postgres::Client, timeout: Duration) -> Result<String> {
    let before = archiver_stats(client)?;
    let row = client
        .query_one(
            "SELECT pg_walfile_name(pg_create_restore_point('dbbackup_archive_check')), pg_walfile_name(pg_switch_wal())",
            &[],
        )
        .map_err(|e| Error::server(format!("cannot switch WAL: {}", error_text(&e))))?;
    let name: String = row.get(1);
    let start = Instant::now();
    // A failure may be the previous archive_command's, still running when
    // the new one was set (the archiver switches between two calls, and
    // retries at once): only failures that go on for a while count.
    let mut first_failure: Option<Instant> = None;
    loop {
        let s = archiver_stats(client)?;
        if s.last_archived_wal.as_deref().is_some_and(|w| w >= name.as_str()) {
            return Ok(name);
        }
        if s.failed_count > before.failed_count {
            let seen = *first_failure.get_or_insert_with(Instant::now);
            if seen.elapsed() >= FAILURE_GRACE {
                return Err(Error::server(format!(
                    "PostgreSQL could not archive {} through archive_command ({} failures so far, still failing {} s after the first seen here): see the server log for the dbbackup: message",
                    s.last_failed_wal.unwrap_or(name),
                    s.failed_count,
                    FAILURE_GRACE.as_secs()
                )));
            }
        }
        if start.elapsed() > timeout {
            return Err(Error::server(format!(
                "{name} was not archived within {}s: is the archiver running (archive_mode on and the server restarted)?",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `pitr enable` command line that archives into `loc`: an
/// object-store repository is reached through its config file only.
pub fn enable_command(loc: &str) -> String {
    if loc.contains("://") {
        format!("dbbackup pitr enable --config FILE (the config file whose repo is {loc})")
    } else {
        format!("dbbackup pitr enable --repo {loc}")
    }
}

/// An archive_command dbbackup cannot read (a wrapper script) that is
/// proven to archive into this repository, by switching WAL and watching
/// the segment arrive: `pitr enable` keeps the DBA's wrapper rather than
/// refusing or replacing it. Returns why it could not be read and the
/// segment that proved it; `None` when the command is readable or the
/// proof is not possible now (archiving off, a standby). A failed proof
/// is an error naming what was seen.
pub fn keep_proven_wrapper(
    client: &mut postgres::Client,
    storage: &std::sync::Arc<dyn crate::storage::Storage>,
    current: &std::collections::BTreeMap<String, String>,
    data_dir: &Path,
) -> Result<Option<(String, String)>> {
    let cmd = current.get("archive_command").cloned().unwrap_or_default();
    let CommandShape::Opaque { reason } = analyze_archive_command(&cmd, Some(data_dir)) else {
        return Ok(None);
    };
    // The running value (a pending one is marked after it).
    let on = |n: &str, off: &str| current.get(n).is_some_and(|v| v.split(' ').next() != Some(off));
    let recovering: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).map(|r| r.get(0)).unwrap_or(true);
    if !on("archive_mode", "off") || !on("wal_level", "minimal") || recovering {
        return Ok(None);
    }
    match prove_archiving(client, storage, Duration::from_secs(60)) {
        Ok(seg) => Ok(Some((reason, seg))),
        Err(e) => Err(Error::invalid(format!(
            "archive_command is already set by another tool, or a wrapper dbbackup cannot read ({reason}): {cmd}\nit does not archive into {}: {e}\nrefusing to replace it; run again with --force to archive with dbbackup instead",
            storage.location()
        ))),
    }
}

/// Proves that archive_command archives into the repository at `repo`:
/// writes a restore point (so the switch is never a no-op), switches WAL,
/// and waits until that segment is in the repository. Fails at once when
/// PostgreSQL reports the segment archived but the repository lacks it
/// (the command archives elsewhere or swallows a failure), else after
/// `timeout`. Returns the segment's name.
pub fn prove_archiving(
    client: &mut postgres::Client,
    storage: &std::sync::Arc<dyn crate::storage::Storage>,
    timeout: Duration,
) -> Result<String> {
    use dbbackup_format::WalFileName;
    let loc = storage.location();
    // Something must be written first, or the switch is a no-op that
    // names an older, already archived segment. A role allowed to switch
    // WAL may still lack pg_create_restore_point: a commit writes too.
    if client.batch_execute("SELECT pg_create_restore_point('dbbackup_archive_check')").is_err() {
        client
            .batch_execute("SELECT txid_current()")
            .map_err(|e| Error::server(format!("cannot write WAL to check archiving: {}", error_text(&e))))?;
    }
    let row = client.query_one("SELECT pg_walfile_name(pg_switch_wal())", &[]).map_err(|e| {
        Error::server(format!(
            "cannot switch WAL to check archiving (the role needs EXECUTE on pg_switch_wal()): {}",
            error_text(&e)
        ))
    })?;
    let name: String = row.get(0);
    let wal = WalFileName::parse(&name).map_err(|e| Error::server(format!("the server returned {e}")))?;
    // The repository may appear only now (wal archive creates a missing one).
    let present = || {
        crate::repo::Repository::open_for_listing(std::sync::Arc::clone(storage))
            .ok()
            .is_some_and(|r| crate::wal::find(&r, &wal).is_ok_and(|f| !f.is_empty()))
    };
    let archived = |s: &ArchiverStats| {
        s.last_archived_wal
            .as_deref()
            .is_some_and(|w| w == name || (w.len() == 24 && w[..8] == name[..8] && w > name.as_str()))
    };
    let start = Instant::now();
    loop {
        if present() {
            return Ok(name);
        }
        let s = archiver_stats(client)?;
        // archive_command exited 0 for it: had dbbackup stored it here,
        // it would be here by now.
        if archived(&s) && !present() {
            return Err(Error::invalid(format!(
                "PostgreSQL reports {name} archived, but repository {loc} does not hold it: archive_command archives elsewhere, or exits 0 when dbbackup fails"
            )));
        }
        if start.elapsed() > timeout {
            let failing = if s.failing {
                format!(
                    "; PostgreSQL fails to archive {} ({} failures so far: see the server log)",
                    s.last_failed_wal.unwrap_or_default(),
                    s.failed_count
                )
            } else {
                String::new()
            };
            return Err(Error::invalid(format!(
                "{name} did not arrive in repository {loc} within {}s of pg_switch_wal(){failing}: dbbackup cannot tell that archive_command archives into this repository",
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The logging collector process of a postmaster: its child whose
/// command line says `logger`.
fn logger_of(postmaster: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "PID (comm) STATE PPID ...": comm may hold spaces, so split after ')'.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        (ppid == postmaster && String::from_utf8_lossy(&cmdline).contains("logger")).then_some(pid)
    })
}

/// A restarted server, and where its log went.
#[derive(Debug, Clone)]
pub struct Restarted {
    /// The file pg_ctl's `-l` named.
    pub log: PathBuf,
    /// Where the log went, in words (the same file as before, or why not).
    pub note: String,
}

/// Restarts the server with pg_ctl (the server's own bindir first, then
/// PATH), keeping its log where it was: pg_ctl without `-l` would tie the
/// server to our output, and a log in the data directory is copied into
/// every base backup.
pub fn restart(client: &mut postgres::Client, data_dir: &Path) -> Result<Restarted> {
    let bindir: Option<String> =
        client.query_opt("SELECT setting FROM pg_config WHERE name = 'BINDIR'", &[]).ok().flatten().map(|r| r.get(0));
    let pg_ctl =
        bindir.map(|b| Path::new(&b).join("pg_ctl")).filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("pg_ctl"));
    refuse_relative_data_dir(data_dir)?;
    let target = log_target(client, data_dir);
    crate::pg::run_pg_ctl(&pg_ctl, "restart", data_dir, &["-m", "fast", "-w", "-t", "120"], &target.log).map_err(
        |e| {
            Error::server(format!(
                "{e}; the server may be stopped now: read {} and start it with `{} start -D {} -l {}`",
                target.log.display(),
                pg_ctl.display(),
                data_dir.display(),
                target.log.display()
            ))
        },
    )?;
    Ok(target)
}

/// `pg_ctl restart` starts the server again with the arguments saved in
/// `postmaster.opts`: a data directory given there as a relative path was
/// relative to where the server was started, and from here pg_ctl would
/// stop the server and fail to start it. Refused before anything stops.
fn refuse_relative_data_dir(data_dir: &Path) -> Result<()> {
    let Ok(opts) = std::fs::read_to_string(data_dir.join("postmaster.opts")) else { return Ok(()) };
    // `/usr/lib/postgresql/15/bin/postgres "-D" "pg1"`: quoted arguments.
    let args: Vec<&str> = opts.split('"').skip(1).step_by(2).collect();
    let given = args.windows(2).find(|w| w[0] == "-D").map(|w| w[1]).or_else(|| {
        args.iter().find_map(|a| a.strip_prefix("--pgdata=").or_else(|| a.strip_prefix("-D")).filter(|v| !v.is_empty()))
    });
    match given {
        Some(d) if Path::new(d).is_relative() => Err(Error::invalid(format!(
            "the server was started with a relative data directory (-D {d}, saved in {}): `pg_ctl restart` would stop it and fail to start it from here; nothing was restarted: restart it yourself (stop it, then start it with -D {}), the settings are in place",
            data_dir.join("postmaster.opts").display(),
            data_dir.display()
        ))),
        _ => Ok(()),
    }
}

/// Where the restarted server's stderr should go: where the running
/// postmaster's goes (its file descriptor 2), when that is a file.
fn log_target(client: &mut postgres::Client, data_dir: &Path) -> Restarted {
    let show = |client: &mut postgres::Client, name: &str| -> Option<String> {
        client.query_one(&format!("SHOW {name}"), &[]).ok().map(|r| r.get(0))
    };
    let collector = show(client, "logging_collector").is_some_and(|v| v == "on");
    let log_dir = show(client, "log_directory").map(|d| {
        let d = PathBuf::from(d);
        if d.is_relative() {
            data_dir.join(d)
        } else {
            d
        }
    });
    let postmaster = read_postmaster_pid(data_dir).map(|pm| pm.pid);
    let fd2 = |pid: u32| std::fs::read_link(format!("/proc/{pid}/fd/2")).ok();
    // With logging_collector the postmaster's stderr is the collector's
    // pipe; the logger process keeps the original one (pg_ctl -l's file).
    let stderr = postmaster.and_then(fd2).map(|p| {
        if p.is_absolute() {
            return p;
        }
        postmaster.and_then(logger_of).and_then(fd2).filter(|l| l.is_absolute()).unwrap_or(p)
    });
    let inside = |p: &Path| {
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        canon(p).starts_with(canon(data_dir))
    };
    let collector_note = match (&log_dir, collector) {
        (Some(d), true) => format!("; the server logs through logging_collector into {}", d.display()),
        _ => String::new(),
    };
    if let Some(path) = &stderr {
        let text = path.to_string_lossy();
        if path == Path::new("/dev/null") {
            return Restarted {
                log: path.clone(),
                note: format!("the server's output goes to /dev/null, as before{collector_note}"),
            };
        }
        if path.is_absolute() && !text.ends_with(" (deleted)") && std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
            let what = if collector_note.is_empty() {
                "server log"
            } else {
                "server output before the logging collector starts"
            };
            let note = if inside(path) {
                format!("{what}: {}, as before (it is inside the data directory, so every base backup copies it: start the server with a log file outside it){collector_note}", path.display())
            } else {
                format!("{what}: {}, as before{collector_note}", path.display())
            };
            return Restarted { log: path.clone(), note };
        }
    }
    let was = match &stderr {
        Some(p) => format!("the server's output went to {} (not a file)", p.display()),
        None => "where the server's output went cannot be read (/proc/PID/fd/2 of the postmaster)".to_string(),
    };
    // Not a file (a pipe to systemd, a terminal): choose a file outside
    // the data directory where we can write.
    let writable = |p: &Path| std::fs::OpenOptions::new().append(true).create(true).open(p).is_ok();
    let name = format!("{}.postmaster.log", data_dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default());
    let mut candidates = Vec::new();
    if let (Some(d), true) = (&log_dir, collector) {
        candidates.push(d.join("postmaster.log"));
    }
    if let Some(parent) = data_dir.parent() {
        candidates.push(parent.join(name));
    }
    for c in candidates {
        if writable(&c) {
            return Restarted {
                note: format!("{was}; pg_ctl now writes the server's output to {}{collector_note}", c.display()),
                log: c,
            };
        }
    }
    let log = data_dir.join("postmaster.log");
    Restarted {
        note: format!("{was}; pg_ctl now writes the server's output to {} (inside the data directory, so base backups copy it: start the server with -l FILE outside it){collector_note}", log.display()),
        log,
    }
}

/// Refuses to archive a server into a repository that holds another
/// cluster's history on this server's timeline: a restored copy promoted
/// onto the timeline number another copy (or the source) already archived
/// there would mix two histories under one timeline, and a later restore
/// would replay one's segments into the other's. Compared with what this
/// server still has in pg_wal: the timeline's history file and the newest
/// archived segment; a segment archived beyond this server's position is
/// another history by itself.
pub fn check_same_history(client: &mut postgres::Client, repo: &crate::repo::Repository) -> Result<()> {
    use dbbackup_format::{Lsn, WalFileName, WalKind};
    let row = client
        .query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                    (pg_current_wal_lsn() - '0/0')::text, current_setting('data_directory')",
            &[],
        )
        .map_err(|e| Error::server(error_text(&e)))?;
    let (Some(current), Some(pos)) = (row.get::<_, Option<String>>(0), row.get::<_, Option<String>>(1)) else {
        return Ok(());
    };
    let data_dir = PathBuf::from(row.get::<_, String>(2));
    let Some(size) = repo.segment_size() else { return Ok(()) };
    let Ok(current) = WalFileName::parse(&current) else { return Ok(()) };
    let tli = current.timeline();
    let here = size.segment_of(Lsn(pos.split('.').next().and_then(|p| p.parse().ok()).unwrap_or(0)));
    let cat = crate::wal::catalog::Catalog::scan(repo)?;
    let loc = repo.location();
    let other = |what: String| {
        Err(Error::identity(format!(
            "repository {loc} already holds timeline {tli} of another history: {what}; this server is probably a restored copy promoted onto the same timeline number as another cluster that archives there: archive it into another repository (an inspection copy should not archive at all)"
        )))
    };
    let own_checksum =
        |name: &str| std::fs::read(data_dir.join("pg_wal").join(name)).ok().map(|b| crate::checksum::of(&b));
    if tli.0 > 1 {
        let hist = WalFileName::history(tli);
        let stored = crate::wal::find(repo, &hist)?;
        if let (Some(stored), Some(own)) = (stored.first(), own_checksum(&hist.to_string())) {
            if stored.object.checksum != own {
                return other(format!("its {hist} differs from this server's (another fork point)"));
            }
        }
    }
    let newest = cat.iter_kind(WalKind::Segment).filter(|o| o.wal.timeline() == tli).last();
    if let Some(o) = newest {
        let n = o.wal.segment_no(size).unwrap_or(0);
        if n > here {
            return other(format!("it holds {} there, beyond this server's current WAL file {current}", o.wal));
        }
        if let Some(own) = own_checksum(&o.wal.to_string()) {
            if own != o.stored.object.checksum {
                return other(format!("its {} differs from this server's own copy in pg_wal", o.wal));
            }
        }
    }
    Ok(())
}

/// Checks that the server's OS user (the owner of its data directory) can
/// read `file`, which archive_command will name: a config or key file that
/// only root can read makes every archive fail later, in the server log.
pub fn check_server_can_read(file: &Path, data_dir: &Path, what: &str) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let (Ok(f), Ok(d)) = (std::fs::metadata(file), std::fs::metadata(data_dir)) else { return Ok(()) };
    let mode = f.permissions().mode();
    let readable = if f.uid() == d.uid() {
        mode & 0o400 != 0
    } else if f.gid() == d.gid() {
        mode & 0o040 != 0
    } else {
        mode & 0o004 != 0
    };
    if readable {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "{what} {} (owner uid {}, mode {:04o}) cannot be read by the server's OS user (uid {}, the owner of {}), which runs archive_command: `chown {} {}` and keep it mode 0600",
        file.display(),
        f.uid(),
        mode & 0o7777,
        d.uid(),
        data_dir.display(),
        d.uid(),
        file.display()
    )))
}

/// Writes and removes a small object under `wal/`: the next segment must
/// be writable, not only the last one. (A writer that is never committed
/// proves nothing on an object store, which sends bytes only at commit.)
fn probe_writable(storage: &dyn crate::storage::Storage) -> crate::storage::StorageResult<()> {
    // A temporary name: listings skip it, should it be seen mid-probe.
    let key =
        format!("{}/{}probe-{}", dbbackup_format::object::WAL_DIR, crate::storage::TEMP_PREFIX, std::process::id());
    let mut w = storage.create(&key, crate::storage::Commit::Replace)?;
    w.write_all(b"probe").map_err(|e| crate::storage::StorageError::io(&key, e))?;
    w.commit()?;
    storage.remove(&key)
}

/// A segment marked ready is archived within seconds (PostgreSQL wakes its
/// archiver at once): one waiting longer than this, with no failure
/// recorded, means archive_command does not run as it should.
const STUCK_READY_SECS: f64 = 120.0;

/// Seconds the oldest segment marked ready has waited for archiving (0
/// when none waits); `None` without the right to list archive_status
/// (pg_monitor or superuser).
fn oldest_ready_age(client: &mut postgres::Client) -> Option<f64> {
    let row = client
        .query_one(
            "SELECT coalesce(extract(epoch FROM now() - min(modification))::float8, 0) \
             FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'",
            &[],
        )
        .ok()?;
    Some(row.get::<_, f64>(0).max(0.0))
}

/// "1 segment", "2 segments".
fn plural(n: u64, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// The port and first socket directory a stopped cluster's configuration
/// files name (for messages and connections when no postmaster.pid says).
pub fn configured_endpoint(pgdata: &Path) -> (Option<u16>, Option<String>) {
    let set = read_offline_settings(pgdata, &["port", "unix_socket_directories"]);
    let port = set.get("port").and_then(|v| v.trim().parse().ok());
    let dir = set
        .get("unix_socket_directories")
        .and_then(|d| d.split(',').map(str::trim).find(|d| !d.is_empty()).map(String::from));
    (port, dir)
}

/// How healthy PITR is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warning,
    Error,
}

/// One thing `pitr status` found, with what to do about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub level: Verdict,
    pub message: String,
    pub fix: String,
}

/// The repository as `pitr status` sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RepoHealth {
    pub location: String,
    /// The repository's ID (its location for an old repository without one).
    pub id: Option<String>,
    pub reachable: bool,
    pub error: Option<String>,
    pub system_identifier: Option<String>,
    pub newest_segment: Option<String>,
    pub segments: usize,
    pub gaps: Vec<crate::wal::catalog::Gap>,
    /// Why gaps were found without the timelines' switch points (history
    /// files unreadable, e.g. encrypted and no key given).
    pub history_error: Option<String>,
    /// Whether this user could create a file in the repository's WAL
    /// directory, and why not.
    pub writable: Option<String>,
    /// The newest complete base backup.
    pub newest_backup: Option<NewestBackup>,
    /// The highest timeline with archived WAL or a history file.
    pub newest_timeline: Option<u32>,
    /// Forks whose parent kept archiving after the child was born: two
    /// live histories (see [`crate::wal::catalog::live_forks`]).
    pub live_forks: Vec<crate::wal::catalog::LiveFork>,
    /// Whether the repository holds the file pg_stat_archiver calls last
    /// archived (null when unknown).
    pub holds_last_archived: Option<bool>,
    /// Backups whose WAL is not yet confirmed archived (`pending`).
    pub pending_backups: Vec<PendingBackup>,
    /// Complete backups that cannot be restored: an ancestor of their chain
    /// is missing or its files are gone (why, one line each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub broken_chains: Vec<String>,
    /// Backups by status (as stored: `running` includes interrupted ones).
    pub backups: BTreeMap<String, usize>,
    /// Bytes stored, by kind of object.
    pub stored_bytes: Option<StoredBytes>,
    /// From where to where a restore can go.
    pub recoverable: Option<RecoverableRange>,
}

/// What a repository stores, in bytes as stored (compressed, encrypted).
#[derive(Debug, Clone, serde::Serialize)]
pub struct StoredBytes {
    pub wal: u64,
    pub backups: u64,
}

/// The recoverable range: from the end of the oldest complete backup to
/// the end of the newest archived segment (or the first missing one).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RecoverableRange {
    pub oldest_backup: String,
    pub oldest_time: Option<String>,
    pub oldest_lsn: Option<String>,
    /// When the newest segment was archived: a restore to the end of the
    /// archive reaches about this time.
    pub newest_time: Option<String>,
    pub newest_lsn: Option<String>,
    pub newest_segment: Option<String>,
    /// The newest point is cut short by a missing segment.
    pub cut_by_gap: bool,
}

/// A backup whose WAL was not confirmed archived when it finished.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PendingBackup {
    pub id: String,
    pub start_wal: Option<String>,
    pub stop_wal: Option<String>,
    pub error: Option<String>,
}

/// The newest complete base backup, as `pitr status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NewestBackup {
    pub id: String,
    pub start_time: String,
    pub stop_time: Option<String>,
    /// The cluster's size, and what the backup stores.
    pub size_bytes: u64,
    pub stored_bytes: u64,
    pub start_wal: Option<String>,
    pub timeline: Option<u32>,
}

/// Everything `pitr status` reports.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatusReport {
    pub verdict: Verdict,
    /// The server's system identifier (the cluster's).
    pub system_identifier: Option<String>,
    pub findings: Vec<Finding>,
    pub settings: BTreeMap<String, Setting>,
    pub archiver: ArchiverStats,
    pub in_recovery: bool,
    pub current_wal: Option<String>,
    pub lag_segments: Option<u64>,
    pub lag_bytes: Option<u64>,
    /// How long the oldest segment waiting to be archived has waited (0
    /// when none waits).
    pub lag_seconds: Option<f64>,
    pub repository: Option<RepoHealth>,
    /// The queue of asynchronous archiving (`--async` in archive_command).
    pub async_queue: Option<crate::wal::async_archive::QueueStatus>,
}

/// Options of `pitr status`.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// The repository the user named; else the one in archive_command.
    pub repo: Option<PathBuf>,
    /// Archive lag (segments) above which the verdict is a warning.
    pub lag_warning: u64,
    /// The key the user gave; without one, the key file archive_command
    /// names is used (encrypted history files must be read for gaps).
    pub keys: crate::keys::KeySource,
    /// Prove archiving with a real segment (switches WAL): how long to
    /// wait for it. `None` writes no WAL (status still writes and removes
    /// one probe object to check that the repository is writable).
    pub prove: Option<Duration>,
    /// How to reach an object-store repository.
    pub stores: crate::storage::location::StoreSettings,
    /// Whether `stores` came from a config file the user gave; if not, the
    /// config file archive_command names for the repository is read.
    pub config_given: bool,
    /// The ID the repository must have (`--repo-id`): another one means it
    /// was re-created (an unmounted file system) or is another repository.
    pub repo_id: Option<String>,
}

/// Gathers the status from the live server and the repository.
pub fn status(client: &mut postgres::Client, opts: &StatusOptions) -> Result<StatusReport> {
    use dbbackup_format::{SegmentSize, WalFileName};

    let settings = read_settings(client)?;
    let val = |n: &str| settings.get(n).map(|s| s.value.clone()).unwrap_or_default();
    // archive_command runs in the data directory: relative paths there.
    let data_dir: Option<PathBuf> = crate::pg::data_directory(client).ok();
    let command = val("archive_command");
    let shape = analyze_archive_command(&command, data_dir.as_deref());
    let command_repos = shape.repos();
    let repo_path = opts.repo.clone().or_else(|| command_repos.first().cloned());
    // The store settings archiving itself uses for this repository (its
    // `--config`), unless the user gave a config file of their own.
    let command_stores = repo_path.as_ref().filter(|_| !opts.config_given).and_then(|p| {
        shape
            .invocations()
            .iter()
            .find(|i| i.repo.as_ref().is_some_and(|r| crate::archive_command::same_location(r, p)))
            .and_then(crate::archive_command::invocation_stores)
    });
    let stores = command_stores.as_ref().unwrap_or(&opts.stores);
    // The repository's metadata, read once: a store that hangs costs one
    // bounded wait, not one per question asked of it below.
    let meta = repo_path.as_ref().map(|p| {
        crate::storage::location::open_path(p, stores).and_then(|s| crate::repo::Repository::read_meta(s.as_ref()))
    });
    let store_error = match &meta {
        Some(Err(e)) if e.kind() != crate::error::ErrorKind::NotFound => Some(e.to_string()),
        _ => None,
    };
    // The proof comes first, so what follows sees its segment.
    let mut proof: Option<Result<String>> = None;
    if let (Some(timeout), Some(repo), None) = (opts.prove, &repo_path, &store_error) {
        let recovering: bool = client.query_one("SELECT pg_is_in_recovery()", &[]).map(|r| r.get(0)).unwrap_or(true);
        if val("archive_mode") != "off" && shape != CommandShape::Empty && !recovering {
            proof = Some(
                crate::storage::location::open_path(repo, stores)
                    .and_then(|storage| prove_archiving(client, &storage, timeout)),
            );
        }
    }
    let archiver = archiver_stats(client)?;
    let ident = crate::pg::server_identity(client)?;
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_walfile_name(pg_current_wal_lsn()) END, \
                    CASE WHEN pg_is_in_recovery() THEN NULL ELSE (pg_current_wal_lsn() - '0/0')::text END",
            &[],
        )
        .map_err(|e| Error::server(error_text(&e)))?;
    let in_recovery: bool = row.get(0);
    let current_wal: Option<String> = row.get(1);
    let current_lsn: Option<u64> = row.get::<_, Option<String>>(2).and_then(|s| s.split('.').next()?.parse().ok());
    let mut findings = Vec::new();
    let mut add = |level, message: String, fix: &str| findings.push(Finding { level, message, fix: fix.to_string() });
    let pending: Vec<&str> = settings.values().filter(|s| s.pending_restart).map(|s| s.name.as_str()).collect();

    if val("wal_level") == "minimal" {
        add(
            Verdict::Error,
            "wal_level is minimal: WAL cannot be archived".into(),
            "run `dbbackup pitr enable`, then restart PostgreSQL",
        );
    }
    if val("archive_mode") == "off" {
        let restart_pending = pending.contains(&"archive_mode");
        add(
            Verdict::Error,
            format!(
                "archiving is off (archive_mode = off){}",
                if restart_pending { "; a change is waiting for a restart" } else { "" }
            ),
            if restart_pending {
                "restart PostgreSQL (or `dbbackup pitr enable --restart`)"
            } else {
                "run `dbbackup pitr enable`"
            },
        );
    }
    let library = val("archive_library");
    if !library.is_empty() {
        add(
            Verdict::Error,
            format!("archive_library = '{library}' is set, so archive_command is not used"),
            "reset archive_library (ALTER SYSTEM RESET archive_library) and reload",
        );
    }
    let proven = matches!(proof, Some(Ok(_)));
    // archive_command names another repository: that is the finding, and
    // this one lacking the newest WAL follows from it (not WAL lost).
    let mut archives_elsewhere = false;
    match &shape {
        CommandShape::Empty => {
            add(Verdict::Error, "archive_command is empty: nothing is archived".into(), "run `dbbackup pitr enable`")
        }
        CommandShape::Swallowing { reason, fix, .. } => add(
            Verdict::Error,
            format!("archive_command can report success when dbbackup fails, so PostgreSQL removes WAL the repository never got: {reason}"),
            &format!("{fix}, then reload (SELECT pg_reload_conf()); or run `dbbackup pitr enable`, which writes a plain dbbackup command"),
        ),
        CommandShape::Opaque { reason } if !proven => add(
            Verdict::Warning,
            format!("archive_command is not dbbackup's `wal archive` as far as its text shows ({reason}): dbbackup cannot tell from it where WAL goes: {command}"),
            "if it is a wrapper around dbbackup, `dbbackup pitr status --prove-archiving --repo REPO` switches WAL once and checks that the segment arrives in the repository; if another tool archives on purpose, dbbackup cannot verify that tool's archive (`dbbackup pitr enable --force` would REPLACE it)",
        ),
        CommandShape::Dbbackup(invs) => {
            let unknown: Vec<&str> = invs.iter().filter_map(|i| i.repo_unknown.as_deref()).collect();
            if let Some(given) = &opts.repo {
                // Ours by ID when it exists (the command may name it by
                // another path, or name the same URL at another store).
                let id = meta.as_ref().and_then(|m| m.as_ref().ok()).and_then(|m| m.id.clone());
                // Our store does not answer: compare as written rather than
                // wait for it again through the command's settings.
                let ours = |i: &Invocation| match &store_error {
                    Some(_) => i.repo.as_deref().is_some_and(|r| same_location(r, given)),
                    None => archives_into(i, given, id.as_deref()),
                };
                if !command_repos.is_empty() && !invs.iter().any(ours) {
                    archives_elsewhere = true;
                    let named: Vec<String> = invs
                        .iter()
                        .filter_map(|i| {
                            let r = i.repo.as_ref()?;
                            // The same text, another repository: say whose.
                            Some(match (same_location(r, given), crate::archive_command::invocation_repo_id(i)) {
                                (true, Some(theirs)) => format!(
                                    "{} as {} reaches it (repository ID {theirs}; the one reached here has {})",
                                    r.display(),
                                    i.repo_source.as_deref().unwrap_or("the command"),
                                    id.as_deref().map(|x| format!("ID {x}")).unwrap_or_else(|| "none yet".into())
                                ),
                                _ => r.display().to_string(),
                            })
                        })
                        .collect();
                    add(
                        Verdict::Error,
                        format!("archive_command archives into {}, not into {}", named.join(" and "), given.display()),
                        "run `dbbackup pitr enable` with this --repo, or check the repository you meant",
                    );
                } else if command_repos.is_empty() && !proven {
                    add(
                        Verdict::Warning,
                        format!(
                            "archive_command runs dbbackup, but {}: dbbackup cannot tell from the text whether it archives into {}",
                            unknown.join("; "),
                            given.display()
                        ),
                        "name the repository in archive_command (`dbbackup pitr enable --repo REPO`), or check with `dbbackup pitr status --prove-archiving`",
                    );
                }
            }
        }
        CommandShape::Opaque { .. } => {}
    }
    match proof {
        Some(Ok(seg)) => add(
            Verdict::Ok,
            format!(
                "archiving proven: {seg} arrived in repository {} after pg_switch_wal()",
                repo_path.as_deref().map(|p| p.display().to_string()).unwrap_or_default()
            ),
            "nothing to do",
        ),
        Some(Err(e)) => add(
            Verdict::Error,
            e.to_string(),
            "make archive_command archive into this repository (`dbbackup pitr enable --repo REPO`), and read the server log for archive failures",
        ),
        None => {}
    }
    if !pending.is_empty() && val("archive_mode") != "off" {
        add(
            Verdict::Warning,
            format!("changed settings wait for a restart: {}", pending.join(", ")),
            "restart PostgreSQL",
        );
    }
    if archiver.failing {
        add(
            Verdict::Error,
            format!(
                "archiving is failing: {} failed at {} and nothing was archived since ({} in total)",
                archiver.last_failed_wal.clone().unwrap_or_default(),
                archiver.last_failed_time.clone().unwrap_or_default(),
                plural(archiver.failed_count.max(0) as u64, "failed attempt")
            ),
            "read the dbbackup: lines in the server log; fix the cause (repository space, permissions, key); PostgreSQL retries by itself",
        );
    } else if archiver.failed_ago_s.is_some_and(|s| s < 3600.0) {
        // Recovered: worth a note, not a worse verdict.
        add(
            Verdict::Ok,
            format!(
                "archiving failed at {} ({}) but has succeeded since",
                archiver.last_failed_time.clone().unwrap_or_default(),
                archiver.last_failed_wal.clone().unwrap_or_default()
            ),
            "read the server log for the cause, so it does not come back",
        );
    }

    let size = SegmentSize::new(ident.wal_segment_size);
    let (mut lag_segments, mut lag_bytes) = (None, None);
    if let (Some(size), Some(cur), Some(last)) = (size, current_lsn, archiver.last_archived_wal.as_deref()) {
        if let Some(last_no) = WalFileName::parse(last).ok().and_then(|w| w.segment_no(size)) {
            let done = (last_no + 1) * u64::from(size.bytes());
            let cur_seg = size.segment_of(dbbackup_format::Lsn(cur));
            lag_segments = Some(cur_seg.saturating_sub(last_no + 1));
            lag_bytes = Some(cur.saturating_sub(done));
        }
    }
    // A standby archives nothing unless archive_mode = always: no lag to tell.
    let lag_seconds =
        (!in_recovery || val("archive_mode") == "always").then(|| oldest_ready_age(client)).flatten().or_else(|| {
            // Without the right to list archive_status: since the last success,
            // while segments wait.
            match (lag_segments, &archiver.last_archived_time) {
                (Some(0), _) => Some(0.0),
                (Some(_), Some(t)) => t
                    .parse::<jiff::Timestamp>()
                    .ok()
                    .map(|t| (jiff::Timestamp::now().as_millisecond() - t.as_millisecond()).max(0) as f64 / 1000.0),
                _ => None,
            }
        });
    if let Some(l) = lag_segments {
        if l > opts.lag_warning {
            add(
                Verdict::Warning,
                format!("archiving lags {l} segments behind the current WAL"),
                "check that the repository keeps up (disk speed, compression level) and that archiving is not failing",
            );
        }
    }
    // A program that does not exist exits 127, which PostgreSQL treats as
    // fatal for the archiver and does not count in pg_stat_archiver: the
    // counters then look healthy while nothing is archived.
    // dbbackup invocations, and the command's first word (another tool, a
    // wrapper script) when it is an absolute path.
    let mut programs: Vec<String> = shape.invocations().iter().map(|i| i.program.clone()).collect();
    if let Some(first) = command.split_whitespace().next().map(|w| w.trim_matches(['\'', '"'])) {
        if first.starts_with('/') && !first.contains(['$', '`', '*', '?']) && !programs.iter().any(|p| p == first) {
            programs.push(first.to_string());
        }
    }
    for program in &programs {
        let p = Path::new(program);
        if p.is_absolute() {
            // Only what is certain: a file this user cannot see proves nothing.
            let wrong = match std::fs::metadata(p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some("does not exist"),
                Ok(m) if !m.is_file() || std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o111 == 0 => {
                    Some("is not an executable file")
                }
                _ => None,
            };
            if let Some(wrong) = wrong {
                add(
                    Verdict::Error,
                    format!(
                        "archive_command runs {program}, which {wrong}: every archive attempt fails (exit 127 or 126), and PostgreSQL does not count these failures in pg_stat_archiver"
                    ),
                    "correct the path in archive_command (or run `dbbackup pitr enable`, which writes this binary's path), then reload",
                );
            }
        }
    }
    if let (Some(waited), false) = (lag_seconds, archiver.failing) {
        if waited > STUCK_READY_SECS {
            add(
                Verdict::Warning,
                format!(
                    "the oldest WAL segment ready for archiving has waited {} s and PostgreSQL records no failure: archive_command may not run at all (a missing program exits 127, a killed one dies by a signal; PostgreSQL counts neither), or archiving is far too slow",
                    waited.round()
                ),
                "read the server log for \"archive command failed\" or \"terminated by signal\"; `dbbackup pitr status --prove-archiving` checks a segment end to end",
            );
        }
    }
    if archiver.archived_count == 0 && !archiver.failing && val("archive_mode") != "off" && !in_recovery {
        add(
            Verdict::Warning,
            "nothing has been archived since the server started".into(),
            "run SELECT pg_switch_wal() to archive the current segment now",
        );
    }

    let mut repository = repo_path.map(|p| {
        let opened_storage = crate::storage::location::open_path(&p, stores);
        let mut h = RepoHealth {
            location: p.display().to_string(),
            id: None,
            reachable: false,
            error: None,
            system_identifier: None,
            newest_segment: None,
            segments: 0,
            gaps: Vec::new(),
            history_error: None,
            writable: None,
            newest_backup: None,
            newest_timeline: None,
            live_forks: Vec::new(),
            holds_last_archived: None,
            pending_backups: Vec::new(),
            broken_chains: Vec::new(),
            backups: BTreeMap::new(),
            stored_bytes: None,
            recoverable: None,
        };
        let given = opts.keys.file.is_some() || std::env::var_os(opts.keys.env_name()).is_some();
        let keys = match (given, shape.key_file()) {
            (false, Some(file)) => crate::keys::KeySource {
                file: Some(file),
                env: None,
                allow_shared_file: opts.keys.allow_shared_file || shape.allows_shared_key_file(),
            },
            _ => opts.keys.clone(),
        };
        let storage = match opened_storage {
            Ok(s) => s,
            Err(e) => {
                h.error = Some(e.to_string());
                return h;
            }
        };
        if let Some(e) = &store_error {
            h.error = Some(e.clone());
            return h;
        }
        let encrypted = meta.as_ref().and_then(|m| m.as_ref().ok()).is_some_and(|m| m.encryption.is_some());
        let opened = if encrypted && given {
            crate::repo::Repository::open(storage, &keys)
        } else if encrypted && keys.file.is_some() {
            // archive_command's key may not be readable by whoever asks.
            crate::repo::Repository::open(std::sync::Arc::clone(&storage), &keys)
                .or_else(|_| crate::repo::Repository::open_for_listing(storage))
        } else {
            crate::repo::Repository::open_for_listing(storage)
        };
        match opened {
            Err(e) => h.error = Some(e.to_string()),
            Ok(repo) => {
                h.id = Some(crate::spool::repository_id(&repo));
                h.system_identifier = repo.identity().map(|c| c.system_identifier.to_string());
                let found = crate::repo::identity_from_server(ident);
                if let Err(e) = repo.check_identity(&found, "this server") {
                    h.error = Some(e.to_string());
                }
                match crate::wal::catalog::Catalog::scan(&repo) {
                    Err(e) => h.error = Some(e.to_string()),
                    Ok(cat) => {
                        h.reachable = true;
                        h.newest_segment = cat.newest_segment().map(|o| o.wal.to_string());
                        h.segments = cat.iter_kind(dbbackup_format::WalKind::Segment).count();
                        h.newest_timeline = cat.objects.iter().map(|o| o.wal.timeline().0).max();
                        if let Some(size) = repo.segment_size() {
                            // Without readable history files, gaps are still
                            // found between archived segments of a timeline.
                            let hist = match crate::wal::catalog::timelines(&repo, &cat) {
                                Ok((_, hist)) => hist,
                                Err(e) => {
                                    h.history_error = Some(e.to_string());
                                    Default::default()
                                }
                            };
                            h.gaps = crate::wal::catalog::gaps(&cat, &hist, size);
                            h.live_forks = crate::wal::catalog::live_forks(&cat, &hist, size);
                        }
                        let wal = crate::info::WalSummary::from_catalog(&repo, &cat, h.gaps.clone());
                        // The next segment must be writable, not only the
                        // last one: probe with a temporary object.
                        if let Err(e) = probe_writable(repo.storage().as_ref()) {
                            h.writable = Some(e.to_string());
                        }
                        // Whatever the command looks like, what PostgreSQL
                        // calls archived must be here. Only the last file:
                        // retention never removes it.
                        let last = archiver.last_archived_wal.as_deref().and_then(|w| WalFileName::parse(w).ok());
                        if let (Some(last), None) = (last, &h.error) {
                            h.holds_last_archived = crate::wal::find(&repo, &last).ok().map(|f| !f.is_empty());
                        }
                        let mut backup_bytes = None;
                        if let Ok((all, _)) = crate::backup::list(&repo) {
                            for m in &all {
                                let status = serde_json::to_value(m.status).ok();
                                let status = status.as_ref().and_then(|v| v.as_str()).unwrap_or("unknown");
                                *h.backups.entry(status.to_string()).or_default() += 1;
                            }
                            backup_bytes = Some(all.iter().map(|m| m.stored_bytes).sum());
                            let range = crate::info::recoverable(&repo, &wal, &all);
                            h.recoverable = range.oldest.map(|m| {
                                let newest = range.newest.clone();
                                RecoverableRange {
                                    oldest_backup: m.id,
                                    oldest_time: m.stop_time,
                                    oldest_lsn: m.stop_lsn.map(|l| l.to_string()),
                                    newest_time: newest.as_ref().and_then(|n| n.archived_at.clone()),
                                    newest_lsn: newest.as_ref().and_then(|n| n.lsn.clone()),
                                    newest_segment: newest.as_ref().and_then(|n| n.segment.clone()),
                                    cut_by_gap: newest.is_some_and(|n| n.gap),
                                }
                            });
                            h.pending_backups = all
                                .iter()
                                .filter(|m| m.status == dbbackup_format::manifest::BackupStatus::Pending)
                                .map(|m| PendingBackup {
                                    id: m.id.clone(),
                                    start_wal: m.start_wal.clone(),
                                    stop_wal: m.stop_wal.clone(),
                                    error: m.error.clone(),
                                })
                                .collect();
                            // Complete backups: restorable (whole chain) or not.
                            let mut newest = None;
                            for m in
                                all.iter().filter(|m| m.status == dbbackup_format::manifest::BackupStatus::Complete)
                            {
                                match crate::backup::chain::Chain::from_list(&all, m) {
                                    Ok(_) => newest = Some(m),
                                    Err(e) => h.broken_chains.push(e.to_string()),
                                }
                            }
                            h.newest_backup = newest.map(|m| NewestBackup {
                                id: m.id.clone(),
                                start_time: m.start_time.clone(),
                                stop_time: m.stop_time.clone(),
                                size_bytes: m.size_bytes,
                                stored_bytes: m.stored_bytes,
                                start_wal: m.start_wal.clone(),
                                timeline: m.timeline,
                            });
                        }
                        h.stored_bytes = backup_bytes.map(|backups| StoredBytes { wal: wal.stored_bytes, backups });
                    }
                }
            }
        }
        h
    });
    // PostgreSQL archives in order: what is missing after the
    // segment it last archived is still waiting in pg_wal (the
    // asynchronous worker stores several at once, and a failing
    // one lets newer ones pass), not lost.
    let last_archived = archiver
        .last_archived_wal
        .as_deref()
        .and_then(|w| WalFileName::parse(w).ok())
        .filter(|w| w.kind() == dbbackup_format::WalKind::Segment);
    let current = current_wal.as_deref().and_then(|w| WalFileName::parse(w).ok()).map(|w| w.timeline());
    let queued = |g: &crate::wal::catalog::Gap| {
        let first = WalFileName::parse(&g.first_missing).ok();
        match (first, &last_archived, size) {
            (Some(first), Some(last), Some(size)) => {
                // A newer timeline's segments all come after (a promotion
                // whose first segments are still on their way).
                (first.timeline() > last.timeline() && current.is_some_and(|c| first.timeline() <= c))
                    || (first.timeline() == last.timeline()
                        && first.segment_no(size).zip(last.segment_no(size)).is_some_and(|(f, l)| f > l))
            }
            _ => false,
        }
    };
    if let Some(r) = repository.as_mut() {
        r.gaps.retain(|g| !queued(g));
    }
    match &repository {
        None => add(
            Verdict::Error,
            "no repository: archive_command does not name one and --repo was not given".into(),
            "run `dbbackup pitr enable --repo PATH`",
        ),
        Some(r) => {
            if let Some(e) = &r.error {
                add(
                    Verdict::Error,
                    format!("repository {}: {e}", r.location),
                    if r.location.contains("://") {
                        "the error says what failed: a store that is down or unreachable, credentials (status uses the config file archive_command names, or yours with --config), or a missing bucket; archiving resumes by itself once the store answers (PostgreSQL keeps the WAL meanwhile)"
                    } else {
                        "the error says what failed (a missing or unmounted directory, permissions); if the repository is really gone, point archiving at a new one with `dbbackup pitr enable --repo PATH` and take a base backup"
                    },
                );
            } else if !r.reachable {
                add(
                    Verdict::Error,
                    format!("repository {} is unreachable", r.location),
                    "check the path and permissions",
                );
            }
            if let (Some(want), Some(found)) = (&opts.repo_id, &r.id) {
                if r.reachable && want != found {
                    add(
                        Verdict::Error,
                        format!(
                            "repository {} has ID {found}, not {want} (--repo-id): it was re-created (a file system not mounted, so the next archive made a new, empty repository there) or another repository is named; it holds none of the earlier WAL and backups",
                            r.location
                        ),
                        "mount the repository's file system (or point archive_command back at it) and take a new base backup; if the new repository is meant, give its ID (`dbbackup repo info`)",
                    );
                }
            }
            if let Some(e) = &r.writable {
                add(
                    Verdict::Error,
                    format!("cannot write into repository {}: {e}; archiving fails as soon as it must create a file or directory there (at the latest at the next WAL directory or timeline)", r.location),
                    "give the PostgreSQL OS user write access to the repository (or free space)",
                );
            }
            if let Some(e) = &r.history_error {
                add(
                    Verdict::Warning,
                    format!("cannot read the timeline history files ({e}): gaps are checked without switch points"),
                    "give the encryption key (--encryption-key-file) so history files can be read",
                );
            }
            let server_tli = current_wal.as_deref().and_then(|w| u32::from_str_radix(w.get(..8)?, 16).ok());
            // A newer timeline born from this server's, while this server
            // kept archiving: two live histories, and restores following
            // the latest timeline would take the other one.
            let live = server_tli.and_then(|own| r.live_forks.iter().find(|f| f.parent.0 == own));
            // ... and the other side: this server's timeline is the one
            // born from a history that went on (a restored copy archiving
            // into its source's repository).
            let born_here = server_tli.and_then(|own| r.live_forks.iter().find(|f| f.child.0 == own));
            if let Some(f) = born_here {
                add(
                    Verdict::Error,
                    format!("this server archives a second live history into the repository: {}; restores that follow the latest timeline take this server's rows instead of timeline {}'s", f.describe(), f.parent),
                    &format!("if this server is a copy (an inspection copy, a test), stop it archiving here (`dbbackup pitr disable`) and restore timeline {} with --timeline {}; if it is the new primary, stop the cluster still archiving timeline {}", f.parent, f.parent, f.parent),
                );
            }
            if let Some(f) = live {
                add(
                    Verdict::Error,
                    format!("the repository holds two live histories: {}; restores that follow the latest timeline would take timeline {}'s rows, not this server's (`restore pitr` refuses without --timeline)", f.describe(), f.child),
                    &format!("stop the cluster on timeline {} from archiving into this repository (a restored copy? set archive_mode = off there and restart it); restore this server's history with --timeline {}", f.child, f.parent),
                );
            } else if let (Some(own), Some(newest)) = (server_tli, r.newest_timeline) {
                if newest > own {
                    add(
                        Verdict::Warning,
                        format!("the repository holds timeline {newest}, newer than this server's timeline {own}: another cluster restored from it archives into it (or did), and restores following the latest timeline take that branch"),
                        &format!("restore this server's history with --timeline {own}; restore inspection copies with --archive-mode off so they do not archive here"),
                    );
                }
            }
            if r.holds_last_archived == Some(false) && !archives_elsewhere {
                let last = archiver.last_archived_wal.clone().unwrap_or_default();
                let fix = match &shape {
                    CommandShape::Swallowing { fix, .. } => format!(
                        "{fix} (see above); then take a new base backup (`dbbackup backup base`): recovery from older backups cannot pass the lost WAL"
                    ),
                    _ => format!(
                        "make archive_command archive into {} (`{}`), then take a new base backup (`dbbackup backup base`): recovery from older backups cannot pass the lost WAL (if you just pointed archive_command here, run SELECT pg_switch_wal() and check again)",
                        r.location,
                        enable_command(&r.location)
                    ),
                };
                add(
                    Verdict::Error,
                    format!(
                        "PostgreSQL reports {last} archived at {}, but repository {} does not hold it: WAL is being lost (archive_command swallows failures, or archives elsewhere)",
                        archiver.last_archived_time.as_deref().unwrap_or("-"),
                        r.location
                    ),
                    &fix,
                );
            }
            for why in &r.broken_chains {
                add(
                    Verdict::Warning,
                    why.clone(),
                    "`dbbackup backup expire` removes backups whose chain is broken; take a full backup (`dbbackup backup base --type full`)",
                );
            }
            for b in &r.pending_backups {
                add(
                    Verdict::Warning,
                    format!(
                        "backup {} is pending: its WAL ({} to {}) was not confirmed archived when it finished, so it is not restorable yet",
                        b.id,
                        b.start_wal.as_deref().unwrap_or("-"),
                        b.stop_wal.as_deref().unwrap_or("-")
                    ),
                    &format!("`dbbackup backup verify {}` completes it once that WAL is archived", b.id),
                );
            }
            if r.reachable && r.error.is_none() && r.newest_backup.is_none() {
                // A note, not a warning: right after `pitr enable` this is
                // the normal state, and archiving itself is healthy.
                add(
                    Verdict::Ok,
                    "the repository has no complete base backup: nothing can be restored yet".into(),
                    "take one with `dbbackup backup base`",
                );
            }
            // A gap before the newest backup costs older points only.
            let newest_start =
                r.newest_backup.as_ref().and_then(|b| b.start_wal.as_deref()).and_then(|w| WalFileName::parse(w).ok());
            for g in &r.gaps {
                let before_newest = newest_start.as_ref().is_some_and(|start| {
                    WalFileName::parse(&g.last_missing).is_ok_and(|last| {
                        size.is_some_and(|size| {
                            last.segment_no(size).zip(start.segment_no(size)).is_some_and(|(l, s)| l < s)
                        })
                    })
                });
                if before_newest {
                    add(
                        Verdict::Warning,
                        format!(
                            "the archive has a gap on timeline {} before the newest backup: {} to {} ({}) are missing",
                            g.timeline,
                            g.first_missing,
                            g.last_missing,
                            plural(g.count, "segment")
                        ),
                        "points before the gap's end cannot be recovered past it; the newest backup is not affected",
                    );
                } else {
                    add(
                        Verdict::Error,
                        format!("the archive has a gap on timeline {}: {} to {} ({}) are missing", g.timeline, g.first_missing, g.last_missing, plural(g.count, "segment")),
                        "take a new base backup (`dbbackup backup base`): points before it cannot be recovered past the gap",
                    );
                }
            }
        }
    }
    // Asynchronous archiving: the worker's queue and failures, from the
    // spool the command names or defaults to.
    let async_queue = shape.invocations().iter().find(|i| i.async_archive).zip(data_dir.as_deref()).map(|(inv, dd)| {
        crate::wal::async_archive::queue_status(&dd.join("pg_wal"), &crate::spool::root(inv.spool_dir.as_deref(), dd))
    });
    if let Some(q) = &async_queue {
        if let Some(e) = &q.error {
            add(
                Verdict::Warning,
                format!("the queue of asynchronous archiving cannot be read here: {e}"),
                "run `dbbackup pitr status` as the PostgreSQL OS user (or root) on the database host",
            );
        }
        let own = ident.system_identifier.to_string();
        if let Some(o) = q.owner.as_ref().filter(|o| o.system_identifier != own) {
            add(
                Verdict::Error,
                format!(
                    "the spool {} belongs to cluster {}, not to this cluster {own}: every `wal archive --async` call is refused",
                    q.spool, o.system_identifier
                ),
                &format!("remove {} (a copy left by another cluster; nothing in it is needed here)", q.spool),
            );
        }
        let repo_id = repository.as_ref().and_then(|r| r.id.clone());
        if let Some((o, id)) = q
            .owner
            .as_ref()
            .filter(|o| o.system_identifier == own)
            .zip(repo_id)
            .filter(|(o, id)| &o.repository_id != id)
        {
            add(
                Verdict::Ok,
                format!(
                    "the spool {} was last used for repository {}, not this one ({id}): the next `wal archive --async` call takes it over",
                    q.spool, o.repository_id
                ),
                "nothing to do",
            );
        }
        if let Some(first) = q.errors.first() {
            add(
                Verdict::Warning,
                format!(
                    "the asynchronous archive worker cannot store {} segment(s), the oldest {} ({}, last at {}): {}",
                    q.errors.len(),
                    first.wal,
                    crate::wal::async_archive::attempts(first.attempts),
                    first.at,
                    first.error
                ),
                &format!(
                    "fix the cause; the worker retries by itself and PostgreSQL's calls succeed once it has stored them (worker log: {}/worker.log)",
                    q.spool
                ),
            );
        }
    }
    let verdict = findings.iter().map(|f| f.level).max().unwrap_or(Verdict::Ok);
    Ok(StatusReport {
        verdict,
        system_identifier: Some(ident.system_identifier.to_string()),
        findings,
        settings,
        archiver,
        in_recovery,
        current_wal,
        lag_segments,
        lag_bytes,
        lag_seconds,
        repository,
        async_queue,
    })
}
