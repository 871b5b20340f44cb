//! The command-line contract (../shared/CLI.md) as clap definitions.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand};
use dbbackup_format::manifest::BackupType;
use dbbackup_format::Codec;

#[derive(Debug, Parser)]
#[command(
    name = "dbbackup",
    version,
    about = "Continuous WAL archiving and point-in-time recovery for PostgreSQL",
    long_about = "Continuous WAL archiving and point-in-time recovery for PostgreSQL.\n\n\
        dbbackup keeps every WAL segment of a cluster in a repository (compressed, optionally \
        encrypted, checksummed) so the cluster can be restored to any moment.",
    after_help = "The main job:\n  \
        dbbackup pitr enable --repo /backups/pg --restart          # archiving on (ALTER SYSTEM, restart)\n  \
        dbbackup backup base --repo /backups/pg                    # nightly, from cron\n  \
        dbbackup backup expire --repo /backups/pg --keep-days 14   # retention\n  \
        dbbackup pitr status --repo /backups/pg                    # ok, warning or error\n  \
        dbbackup restore pitr --repo /backups/pg --target-time '2026-11-25 09:59:00' \\\n      \
        --target-dir /var/lib/postgresql/15/restored --archive-mode off --auto-start --port 5433 --monitor\n\n\
        PostgreSQL calls `dbbackup wal archive %p %f` and `dbbackup wal fetch %f %p`.\n\
        -h is --host, as in psql; use --help for help.",
    disable_help_flag = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts (under their own heading in every
/// command's help, apart from the command's own options).
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// The repository: a directory, or s3://BUCKET[/PREFIX], gs://BUCKET[/PREFIX], az://CONTAINER[/PREFIX]
    #[arg(
        long,
        global = true,
        env = "DBBACKUP_REPO",
        value_name = "PATH",
        visible_aliases = ["archive-dir", "wal-archive"]
    )]
    pub repo: Option<PathBuf>,
    /// TOML file holding any of these options (flags win over env, env over file)
    #[arg(long, global = true, env = "DBBACKUP_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Server host name, or socket directory when it starts with '/'
    #[arg(short = 'h', long, global = true, env = "PGHOST", value_name = "HOST")]
    pub host: Option<String>,
    /// Server port
    #[arg(short = 'p', long, global = true, env = "PGPORT", value_name = "PORT")]
    pub port: Option<u16>,
    /// Database user
    #[arg(short = 'U', long, global = true, env = "PGUSER", value_name = "USER")]
    pub user: Option<String>,
    /// Database to connect to
    #[arg(short = 'd', long, global = true, env = "PGDATABASE", value_name = "DBNAME")]
    pub dbname: Option<String>,
    /// The data directory
    #[arg(short = 'D', long, global = true, env = "PGDATA", value_name = "DIR")]
    pub pgdata: Option<PathBuf>,
    /// File holding the 32-byte encryption key as hex or base64 (mode 0600); refused for a repository that is not encrypted by commands that write into it
    #[arg(long, global = true, value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Environment variable holding the key [default: DBBACKUP_ENCRYPTION_KEY]
    #[arg(long, global = true, value_name = "VAR")]
    pub encryption_key_env: Option<String>,
    /// Accept a key file that group or others can read (a read-only secret mount); else it must be mode 0600
    #[arg(long, global = true)]
    pub allow_shared_key_file: bool,
    /// Machine-readable JSON output
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output (repeat for more)
    #[arg(short = 'v', long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// Print help
    #[arg(long, global = true, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Object-store settings (the config file's `[s3]`, `[gcs]`, `[azure]`).
    #[arg(skip)]
    pub stores: dbbackup_core::storage::location::StoreSettings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and inspect the repository
    #[command(
        subcommand,
        after_help = "Examples:\n  dbbackup repo init --repo /backups/pg --pgdata /var/lib/postgresql/15/main\n  dbbackup repo info --repo /backups/pg"
    )]
    Repo(RepoCommand),
    /// Encryption keys
    #[command(subcommand, after_help = "Example:\n  dbbackup key generate --output /etc/dbbackup/key")]
    Key(KeyCommand),
    /// Archive and fetch WAL (PostgreSQL's archive_command and restore_command)
    #[command(
        subcommand,
        after_help = "Examples:\n  archive_command = '/usr/local/bin/dbbackup wal archive %p %f --repo /backups/pg'\n  \
        restore_command = '/usr/local/bin/dbbackup wal fetch %f %p --repo /backups/pg'\n  dbbackup wal verify --repo /backups/pg"
    )]
    Wal(WalCommand),
    /// Turn archiving on or off and check that PITR is healthy
    #[command(
        subcommand,
        after_help = "Examples:\n  dbbackup pitr enable --repo /backups/pg --restart\n  dbbackup pitr status --repo /backups/pg"
    )]
    Pitr(PitrCommand),
    /// Take, list, check and expire base backups
    #[command(
        subcommand,
        after_help = "Examples:\n  dbbackup backup base --repo /backups/pg\n  dbbackup backup expire --repo /backups/pg --keep-days 14"
    )]
    Backup(BackupCommand),
    /// Restore a copy of the cluster to a point in time
    #[command(
        subcommand,
        after_help = "Example:\n  dbbackup restore pitr --repo /backups/pg --target-time '2026-11-25 09:59:00' --target-dir /srv/pg/copy --archive-mode off --auto-start --port 5433 --monitor"
    )]
    Restore(RestoreCommand),
    /// Serve Prometheus metrics and the pitr status document, checked on a timer
    #[command(
        long_about = "Checks the server and the repository every --interval (the checks of `pitr status`) and \
        serves the last result: Prometheus metrics at /metrics and the `pitr status --json` document at /status. \
        A scrape never waits for a check; a check that takes longer than --check-timeout counts as failed. \
        The server being down, the repository being unreachable and slow checks are reported in the metrics \
        (dbbackup_server_up, dbbackup_repository_up, dbbackup_check_errors_total, dbbackup_check_age_seconds), \
        never by stopping. Run it as the PostgreSQL OS user (a systemd unit is in docs/monitoring/). \
        SIGTERM or SIGINT stops it.",
        after_help = "Examples:\n  dbbackup monitor --listen 127.0.0.1:9863 --pgdata /var/lib/postgresql/15/main\n  \
        dbbackup monitor --listen :9863 --interval 30 --repo /backups/pg --pgdata /var/lib/postgresql/15/main\n  \
        curl -s localhost:9863/metrics\n\nFor node_exporter's textfile collector without a service, see \
        `pitr status --prometheus`."
    )]
    Monitor(MonitorArgs),
}

#[derive(Debug, Args)]
pub struct MonitorArgs {
    /// Address to serve on: HOST:PORT, [IPv6]:PORT, or :PORT for every IPv4 interface ([::]:PORT for IPv6 too)
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub listen: std::net::SocketAddr,
    /// Seconds between the starts of two checks (fractions allowed, at least 0.01; 30s, 5m, 1h too)
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub interval: f64,
    /// Seconds a check may take before it counts as failed [default: the interval, at least 10]
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, allow_negative_numbers = true)]
    pub check_timeout: Option<f64>,
    /// Archive lag (in segments) above which the verdict is a warning
    #[arg(long, value_name = "SEGMENTS", default_value_t = 16, allow_negative_numbers = true)]
    pub lag_warning: u64,
    /// The ID the repository must have (`repo info` shows it); without it, the ID the first check finds
    #[arg(long, value_name = "ID")]
    pub repo_id: Option<String>,
}

/// `:9863` listens on every interface, as other exporters accept.
fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let full = if s.starts_with(':') { format!("0.0.0.0{s}") } else { s.to_string() };
    let mut addrs = full.to_socket_addrs().map_err(|e| {
        format!("{e}: give HOST:PORT (127.0.0.1:9863, [::1]:9863, localhost:9863) or :PORT for every IPv4 interface")
    })?;
    addrs.next().ok_or_else(|| format!("{s} resolves to no address"))
}

/// A positive number of seconds; `30s`, `5m` and `1h` are understood too.
fn parse_seconds(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, unit) = match t.char_indices().last() {
        Some((i, 's')) => (&t[..i], 1.0),
        Some((i, 'm')) => (&t[..i], 60.0),
        Some((i, 'h')) => (&t[..i], 3600.0),
        _ => (t, 1.0),
    };
    let v: f64 = num
        .trim()
        .parse::<f64>()
        .map(|v| v * unit)
        .map_err(|_| format!("'{s}' is not a number of seconds (e.g. 60, 0.5, 30s, 5m)"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("must be more than 0 seconds, not {s}"));
    }
    if v < 0.01 {
        return Err(format!(
            "{s} is too short: at least 0.01 seconds (each check connects to the server and writes a probe object)"
        ));
    }
    if v > 86_400.0 * 7.0 {
        return Err(format!("{s} seconds is more than a week"));
    }
    Ok(v)
}

#[derive(Debug, Subcommand)]
pub enum RestoreCommand {
    /// Restore to a time, transaction, LSN, restore point, or the end of the archive
    #[command(after_help = "Chooses the newest complete backup that can reach the target (or --base-backup), \
        checks that the archive covers the way from it to the target before writing anything, unpacks it in \
        parallel into --target-dir (absent or empty, mode 0700), fsyncs every file, and writes recovery.signal \
        and the recovery settings (restore_command = this binary's `wal fetch`, with the repository's ID, and \
        --prefetch 8 with the timeline followed: a background worker keeps the next segments fetched and \
        verified in a spool beside pg_wal; --prefetch 0 turns it off). --auto-start starts the restored \
        server (--port P to choose its port) and --monitor follows recovery to its end, reports where it \
        stopped, and removes the prefetch spool once recovery has ended.\n\n\
        The restored copy does not archive (archive_mode = off) unless --archive-mode preserve: a copy archiving \
        into the repository it came from starts a second live history there. Without --timeline, a repository \
        whose older timeline kept archiving after a newer one was born is refused: choose with --timeline. A \
        target time or LSN after the end of the archive is refused unless --target-past-end; --force only \
        replaces a non-empty target directory.\n\n\
        Target times: YYYY-MM-DD HH:MM:SS[.ffffff][+-HH[:MM]] (local time without an offset) or RFC 3339.\n\n\
        Examples:\n  \
        dbbackup restore pitr --repo /backups/pg --target-time '2026-11-25 09:59:00' --target-dir /var/lib/postgresql/15/restored --archive-mode off --auto-start --port 5433 --monitor\n  \
        dbbackup restore pitr --repo /backups/pg --target-name before_upgrade --target-dir /srv/pg/copy --archive-mode off\n  \
        dbbackup restore pitr --repo /backups/pg --base-backup /backups/basebackup-2026-11-24 --target-dir /srv/pg/copy")]
    Pitr(RestoreArgs),
}

fn parse_target_time(s: &str) -> Result<jiff::Zoned, String> {
    dbbackup_format::recovery::parse_time(s, &jiff::tz::TimeZone::system())
}

fn parse_xid(s: &str) -> Result<u64, String> {
    s.trim().parse::<u64>().ok().filter(|x| *x >= 3).ok_or_else(|| {
        format!("invalid transaction ID {s:?}: expected a number such as 742 (normal transaction IDs start at 3)")
    })
}

fn parse_lsn(s: &str) -> Result<dbbackup_format::Lsn, String> {
    s.parse().map_err(|e: dbbackup_format::lsn::LsnParseError| e.to_string())
}

fn parse_nonempty(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("an empty name matches nothing: give a table name".into());
    }
    dbbackup_core::wal::search::TableName::parse(s)?;
    Ok(s.to_string())
}

fn parse_search_timeline(s: &str) -> Result<dbbackup_core::restore::TimelineChoice, String> {
    match dbbackup_core::restore::TimelineChoice::parse(s) {
        Ok(dbbackup_core::restore::TimelineChoice::Current) | Err(_) => {
            Err(format!("invalid timeline {s:?}: expected latest or a timeline number"))
        }
        Ok(t) => Ok(t),
    }
}

fn parse_timeline(s: &str) -> Result<dbbackup_core::restore::TimelineChoice, String> {
    dbbackup_core::restore::TimelineChoice::parse(s)
}

fn parse_map(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(a, b)| a.starts_with('/') && b.starts_with('/'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .ok_or_else(|| format!("invalid tablespace mapping {s:?}: expected OLDDIR=NEWDIR with absolute paths"))
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").multiple(false).args(["target_time", "target_xid", "target_lsn", "target_name", "target_immediate", "before_accident"])))]
pub struct RestoreArgs {
    /// Where to restore (absent or empty unless --force)
    #[arg(long, value_name = "DIR")]
    pub target_dir: PathBuf,
    /// Backup ID, `latest`, or a pg_basebackup directory or .tar/.tar.gz [default: newest that can reach the target]
    #[arg(long, value_name = "ID|latest|PATH")]
    pub base_backup: Option<String>,
    /// Recover to this time
    #[arg(long, value_name = "TIME", value_parser = parse_target_time)]
    pub target_time: Option<jiff::Zoned>,
    /// Recover to this transaction
    #[arg(long, value_name = "XID", value_parser = parse_xid)]
    pub target_xid: Option<u64>,
    /// Recover to this WAL location
    #[arg(long, value_name = "LSN", value_parser = parse_lsn)]
    pub target_lsn: Option<dbbackup_format::Lsn>,
    /// Recover to this named restore point (pg_create_restore_point)
    #[arg(long, value_name = "NAME")]
    pub target_name: Option<String>,
    /// Stop as soon as the backup is consistent
    #[arg(long)]
    pub target_immediate: bool,
    /// Find the transaction that dropped or truncated this table (`wal search --table`; a dropped database's name
    /// works too) and stop just before it; when several match, they are listed and nothing is restored
    #[arg(long, value_name = "TABLE", value_parser = parse_nonempty, conflicts_with = "inclusive")]
    pub before_accident: Option<String>,
    /// What the server does at the target
    #[arg(long, value_name = "ACTION", default_value = "promote", value_parser = ["promote", "pause", "shutdown"])]
    pub target_action: String,
    /// Timeline to follow: latest, current (the backup's) or a number [default: the latest; when two
    /// timelines are both alive, left out it is refused, while an explicit `latest` follows the newest]
    #[arg(long, value_name = "TIMELINE", value_parser = parse_timeline)]
    pub timeline: Option<dbbackup_core::restore::TimelineChoice>,
    /// Stop just after the target (default) or, with =false, just before it
    #[arg(long, value_name = "BOOL", num_args = 0..=1, require_equals = true, default_missing_value = "true", conflicts_with = "exclusive")]
    pub inclusive: Option<bool>,
    /// Stop just before the target
    #[arg(long)]
    pub exclusive: bool,
    /// Files restored in parallel
    #[arg(long, allow_negative_numbers = true, short = 'j', value_name = "N", default_value_t = 2)]
    pub jobs: usize,
    /// Start the restored server (the global --port chooses its port)
    #[arg(long)]
    pub auto_start: bool,
    /// With --auto-start: follow recovery to its end and report where it stopped
    #[arg(long, requires = "auto_start")]
    pub monitor: bool,
    /// Only write the recovery settings into an existing data directory
    #[arg(long)]
    pub skip_extraction: bool,
    /// Replace the contents of a non-empty target directory (nothing else)
    #[arg(long)]
    pub force: bool,
    /// A --target-time or --target-lsn after the end of the archive: recover to the end instead of refusing
    #[arg(long)]
    pub target_past_end: bool,
    /// `off` (default): an inspection copy that never archives into the repository; `preserve`: keep the
    /// source's archiving, for a restore that becomes the new primary
    #[arg(long, value_name = "MODE", default_value = "off", value_parser = ["off", "preserve"])]
    pub archive_mode: String,
    /// Restore a tablespace elsewhere
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_map)]
    pub tablespace_map: Vec<(String, String)>,
    /// Segments restore_command keeps fetched ahead of replay (`wal fetch --prefetch`); 0: off, at most 256 [default: 8,
    /// fewer for segments above 16 MiB: at most 128 MiB of spool]
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = clap::value_parser!(u16).range(0..=256))]
    pub prefetch: Option<u16>,
    /// Where restore_command's prefetch spool is, outside pg_wal [default: dbbackup_spool in the target directory]
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take an online physical base backup (run on the database host as the PostgreSQL OS user)
    #[command(after_help = "pg_backup_start on one held connection, then the data directory and tablespaces are \
        copied in parallel through the repository's compression and encryption, then pg_backup_stop; the \
        backup is marked complete once every WAL segment from its start to its stop is archived. Prints the \
        backup ID as the last line of stdout.\n\nTypes: full (every file), incr (the 8 KiB blocks changed since the \
        newest complete backup, found by comparing block hashes with its block maps), diff (since the newest \
        complete full backup). Without --type: full for a repository's first backup and when the newest backup's \
        chain already holds 7 backups, else incr. Restore, verify, list, delete and expire follow chains.\n\nRefused first: a server whose archive_command does not archive into \
        this repository, or can exit 0 when dbbackup fails (`... || true`, `; cmd`, `| cmd`, `&`). When \
        archive_command's text does not show the repository (a wrapper script, DBBACKUP_REPO from the server's \
        environment), a real segment proves it: pg_switch_wal(), then the segment must arrive in this repository \
        within --archive-check-timeout seconds.\n\n\
        Needs a superuser, or a role granted EXECUTE on pg_backup_start(text, boolean) and \
        pg_backup_stop(boolean) and pg_read_all_settings; a role without them is refused before anything is \
        written, naming the GRANTs. A key given for an unencrypted repository is refused (the backup would be \
        stored unencrypted).\n\nExamples:\n  dbbackup backup base --repo /backups/pg --jobs 4 --fast\n  \
        dbbackup backup base --repo /backups/pg --type diff\n  \
        0 1 * * *  postgres  dbbackup backup base --config /etc/dbbackup/dbbackup.toml --quiet")]
    Base(BaseArgs),
    /// List backups: ID, type, parent, status, times, LSNs, timeline, sizes, what a restore reads (CHAIN)
    #[command(after_help = "Status: complete (restorable), pending (WAL not yet confirmed), running, \
        interrupted (killed while running), failed, expired (outside a `wal cleanup` window, its WAL removed).\n\nExample:\n  dbbackup backup list --repo /backups/pg --json")]
    List,
    /// Show one backup's manifest summary
    #[command(after_help = "Example:\n  dbbackup backup show latest --repo /backups/pg")]
    Show {
        /// Backup ID, or `latest` (the newest complete backup)
        id: String,
    },
    /// Check that every file of a backup decodes and matches its checksum, and its WAL is archived and intact
    #[command(after_help = "Exit status 0 when everything verifies, 1 naming each bad file or segment. A pending \
        backup whose WAL has arrived is marked complete.\n\nExample:\n  dbbackup backup verify latest --repo /backups/pg --jobs 4")]
    Verify {
        /// Backup ID or `latest`
        id: String,
        /// Parallel workers
        #[arg(long, allow_negative_numbers = true, short = 'j', value_name = "N", default_value_t = 2)]
        jobs: usize,
    },
    /// Delete one backup (not the only complete one, unless --force)
    #[command(after_help = "The WAL it needed stays until `backup expire` or `wal cleanup` finds it unneeded. A \
        backup that incremental or differential backups are built on is refused while they exist (they cannot be \
        restored without it), unless --with-dependents deletes them too (newest first).\n\n\
        Example:\n  dbbackup backup delete 20261124T013000Z --repo /backups/pg")]
    Delete {
        /// Backup ID
        id: String,
        /// Delete even the only complete backup
        #[arg(long)]
        force: bool,
        /// Also delete the incremental and differential backups built on it
        #[arg(long)]
        with_dependents: bool,
    },
    /// Remove backups beyond the retention policy and the WAL only they needed
    #[command(after_help = "Keeps the newest N complete full backups and every incremental or differential \
        backup built on them (--keep) and/or every point of the last D days recoverable (--keep-days: the backups \
        inside the window plus the newest one before it). A kept backup keeps the backups it is built on; \
        removed ones go newest first, so none is ever left without its parent. WAL from the \
        oldest kept backup's start onward stays, on every timeline, and every history file. Failed, \
        interrupted and expired backups are removed.\n\n\
        Prints one line per backup and the WAL summed up: how many objects, their stored size, and the \
        segment range per timeline (-v also lists every object; --json has the full list).\n\nExample:\n  dbbackup backup expire --repo /backups/pg --keep 7 --dry-run")]
    Expire {
        /// Keep this many newest complete full backups (and the backups built on them)
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// Keep every point of the last D days recoverable
        #[arg(long, value_name = "D")]
        keep_days: Option<u64>,
        /// Print what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct BaseArgs {
    /// full: every file; incr: the blocks changed since the newest backup; diff: since the newest full
    /// backup [default: full for the first backup and when the newest backup's chain holds 7 backups, else incr]
    #[arg(long = "type", value_name = "TYPE", value_parser = parse_backup_type)]
    pub backup_type: Option<BackupType>,
    /// Label (pg_backup_start's label; default: dbbackup <ID>)
    #[arg(long, value_name = "TEXT", value_parser = parse_label)]
    pub label: Option<String>,
    /// Files copied in parallel
    #[arg(long, allow_negative_numbers = true, short = 'j', value_name = "N", default_value_t = 2)]
    pub jobs: usize,
    /// Compression for this backup instead of the repository default
    #[arg(long, value_name = "ALG", value_parser = parse_codec)]
    pub compress: Option<Codec>,
    /// Compression level
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub compress_level: Option<i32>,
    /// Create the repository encrypted if it does not exist
    #[arg(long)]
    pub encrypt: bool,
    /// Start with an immediate checkpoint instead of a spread one
    #[arg(long)]
    pub fast: bool,
    /// Do not wait for the WAL to be archived: the backup stays `pending` until `backup verify` finds its WAL
    #[arg(long)]
    pub no_wait_archive: bool,
    /// How long to wait for the WAL to be archived
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    pub archive_wait_timeout: u64,
    /// When archive_command's text does not show that it archives into this repository (a wrapper
    /// script): how long to wait for the segment that proves it
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub archive_check_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum PitrCommand {
    /// Turn WAL archiving into the repository on
    #[command(after_help = "Sets wal_level (replica; logical is kept), archive_mode = on, archive_command (this \
        binary's absolute path with the repository and codec options, quoted for the shell and the server) and \
        archive_timeout when given. With the server running it uses ALTER SYSTEM and reloads; with --pgdata and \
        the server stopped it edits postgresql.auto.conf (keeping a copy of the old file). Creates or binds the \
        repository. When archiving is active, checks one real round trip (pg_switch_wal and pg_stat_archiver). \
        Refuses to replace another tool's archive_command (or a wrapper script) unless --force; replaces a dbbackup \
        command in a shape that swallows its failures (`... || true`) and says so. --restart runs pg_ctl restart \
        with -l pointing where the server logged before (its stderr file), so the log does not move into the data \
        directory. --async [--jobs N] [--spool-dir DIR] goes into archive_command: a background worker then pushes \
        ready segments ahead of PostgreSQL's calls, which still exit 0 only once their own segment is durable \
        (see `wal archive --help`); `pitr status` shows its queue.\n\n\
        Examples:\n  dbbackup pitr enable --repo /backups/pg --restart\n  \
        dbbackup pitr enable --config /etc/dbbackup/main.toml --async --jobs 4 --restart\n  \
        dbbackup pitr enable --repo /backups/pg --pgdata /var/lib/postgresql/15/main   # server stopped")]
    Enable(EnableArgs),
    /// Turn WAL archiving off (archive_mode = off, archive_command reset)
    #[command(
        after_help = "Resets archive_command with ALTER SYSTEM and reloads; archive_mode = off takes effect at \
        the next restart (--restart does it). Then reads back from the server what is in effect and says so: an \
        archive_command also set in postgresql.conf (or an included file, or on the server's command line) stays \
        in effect, and the message names the file and line. Refuses to turn off archiving that another tool's \
        archive_command (or archive_library) does, unless --force.\n\nExit status: 0 when nothing is archived any \
        more (or archive_mode = off waits only for the restart), 1 when archiving goes on.\n\n\
        Example:\n  dbbackup pitr disable --restart"
    )]
    Disable {
        /// Restart the server with pg_ctl so the change takes effect
        #[arg(long)]
        restart: bool,
        /// Turn archiving off even when another tool's archive_command or archive_library does it
        #[arg(long)]
        force: bool,
    },
    /// Is PITR healthy? Settings in effect, archiver, lag, repository; verdict ok, warning or error
    #[command(after_help = "Everything comes from the live server (pg_settings, pg_stat_archiver) and the \
        repository, never from configuration file text. The repository is --repo, else the one archive_command \
        names (--repo, DBBACKUP_REPO= or the --config file's repo). Whatever archive_command looks like, the file \
        pg_stat_archiver reports last archived must be in the repository, else WAL is being lost (error). An \
        archive_command that can exit 0 when dbbackup fails (`|| true`, `; cmd`, `| cmd`, `&`) is an error; one \
        whose text does not show where it archives (a wrapper script, another tool) is a warning, which \
        --prove-archiving settles with a real segment.\n\nExit status: 0 for ok and warning, 1 for error.\n\n\
        Examples:\n  dbbackup pitr status\n  dbbackup pitr status --json\n  dbbackup pitr status --watch 10\n  \
        dbbackup pitr status --repo /backups/pg --prove-archiving\n  \
        dbbackup pitr status --prometheus > /var/lib/node_exporter/dbbackup.prom.tmp && mv /var/lib/node_exporter/dbbackup.prom.tmp /var/lib/node_exporter/dbbackup.prom")]
    Status {
        /// Repeat every SECONDS (at least 1) until interrupted
        #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
        watch: Option<u64>,
        /// Archive lag (in segments) above which the verdict is a warning
        #[arg(long, value_name = "SEGMENTS", default_value_t = 16, allow_negative_numbers = true)]
        lag_warning: u64,
        /// Switch WAL once and check that the segment arrives in the repository (writes WAL; not with --watch)
        #[arg(long, conflicts_with = "watch")]
        prove_archiving: bool,
        /// With --prove-archiving: how long to wait for the segment
        #[arg(long, value_name = "SECONDS", default_value_t = 60)]
        archive_check_timeout: u64,
        /// Print the monitor's Prometheus metrics once (for node_exporter's textfile collector);
        /// exits 0 whenever the metrics were printed, whatever the verdict: the verdict is in them
        #[arg(long, conflicts_with_all = ["watch", "json"])]
        prometheus: bool,
        /// The ID the repository must have (`repo info` shows it): another ID is an error (a repository
        /// re-created where it was, e.g. on an unmounted file system)
        #[arg(long, value_name = "ID")]
        repo_id: Option<String>,
        /// With --prometheus: seconds the check may take; past it the metrics say it failed (30s, 5m too)
        #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds, allow_negative_numbers = true, requires = "prometheus")]
        check_timeout: f64,
    },
}

#[derive(Debug, Args)]
pub struct EnableArgs {
    /// Also set archive_timeout (seconds): bounds how old the newest archived WAL can be
    #[arg(long, value_name = "SECONDS")]
    pub archive_timeout: Option<u32>,
    /// Compression for a new repository, and passed to archive_command
    #[arg(long, value_name = "ALG", value_parser = parse_codec)]
    pub compress: Option<Codec>,
    /// Compression level, passed to archive_command
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub compress_level: Option<i32>,
    /// Create the repository encrypted (needs --encryption-key-file, which archive_command then uses)
    #[arg(long)]
    pub encrypt: bool,
    /// Restart the server with pg_ctl when a setting needs it (the server log stays where it was)
    #[arg(long)]
    pub restart: bool,
    /// Replace an archive_command set by another tool
    #[arg(long)]
    pub force: bool,
    /// Write `--async` into archive_command: a background worker pushes ready segments ahead of
    /// PostgreSQL's calls (see `wal archive --help`)
    #[arg(long = "async")]
    pub async_archive: bool,
    /// With --async: segments pushed at once, 1 to 64 [default: 4]
    #[arg(long, allow_negative_numbers = true, short = 'j', value_name = "N", requires = "async_archive", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,
    /// With --async: the spool directory [default: dbbackup_spool in the data directory]
    #[arg(long, value_name = "DIR", requires = "async_archive")]
    pub spool_dir: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum RepoCommand {
    /// Create a repository
    #[command(after_help = "The repository is bound to one cluster (system identifier, major version, WAL segment \
        size): read from --pgdata's pg_control, or asked from the server when connection options are given, \
        else taken from the first archived segment.\n\nExamples:\n  \
        dbbackup repo init --repo /backups/pg --pgdata /var/lib/postgresql/15/main\n  \
        dbbackup repo init --repo /backups/pg --encrypt --encryption-key-file /etc/dbbackup/key")]
    Init(InitArgs),
    /// Show the repository's format, cluster identity, codec, encryption, WAL and backups
    #[command(after_help = "Reads names and metadata only: no key is needed.\n\nExamples:\n  \
        dbbackup repo info --repo /backups/pg\n  dbbackup repo info --repo /backups/pg --json")]
    Info,
}

#[derive(Debug, Args, Clone, Default)]
pub struct CodecArgs {
    /// Default compression for stored objects
    #[arg(long, value_name = "ALG", value_parser = parse_codec)]
    pub compress: Option<Codec>,
    /// Compression level (zstd -7..19, gzip 1..9)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub compress_level: Option<i32>,
    /// Encrypt every object (AES-256-GCM) with the key from --encryption-key-file or the key variable
    #[arg(long)]
    pub encrypt: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub codec: CodecArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Write a new random 32-byte key as hex (file mode 0600)
    #[command(after_help = "Key files must be readable by their owner only: use --output (mode 0600) rather \
        than a shell redirection, which makes a 0644 file that dbbackup refuses until `chmod 600`.\n\n\
        Example:\n  dbbackup key generate --output /etc/dbbackup/key")]
    Generate {
        /// Write the key here (refuses to overwrite) instead of stdout
        #[arg(long, short = 'o', value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Archive one WAL file (archive_command = 'dbbackup wal archive %p %f ...')
    #[command(after_help = "Exits 0 only when the file is durable in the repository. Archiving a file that is \
        already archived with identical content succeeds without rewriting it; with different content it \
        fails, naming both checksums.\n\n\
        --async: the first call starts a background worker (one per spool, exiting after 30 s without work) that \
        pushes the segments PostgreSQL has marked ready in pg_wal/archive_status, --jobs at a time, oldest first, \
        and acknowledges each in the spool once it is durable. A call exits 0 when the acknowledgement of its \
        segment matches the file's content (BLAKE3); it reports the worker's failure for its segment (non-zero, \
        with the cause), and archives the segment itself when no acknowledgement comes within 60 s. History, \
        backup and partial files are archived in the call. A spool left by another cluster or repository is \
        refused. Nothing in archive_status is changed, and WAL is never dropped.\n\nExamples:\n  \
        archive_command = '/usr/local/bin/dbbackup wal archive %p %f --repo /backups/pg'\n  \
        archive_command = '/usr/local/bin/dbbackup wal archive %p %f --config /etc/dbbackup/main.toml --async --jobs 4'")]
    Archive(ArchiveArgs),
    /// List archived WAL: name, timeline, kind, sizes, codec, encryption, time
    #[command(
        after_help = "Reads only directory listings (no object is opened), so it is fast on large archives.\n\n\
        Examples:\n  dbbackup wal list --repo /backups/pg\n  dbbackup wal list --timeline 2 --json"
    )]
    List {
        /// Only this timeline
        #[arg(long, value_name = "N")]
        timeline: Option<u32>,
    },
    /// Show the timeline tree from the archived history files
    #[command(after_help = "For each timeline: its parent, the LSN where it branched off, PostgreSQL's reason, \
        and the first and last archived segment.\n\nExample:\n  dbbackup wal timeline --repo /backups/pg --json")]
    Timeline,
    /// Decode and check every archived object and report gaps; non-zero exit on any problem
    #[command(
        after_help = "Every object is decrypted, decompressed and compared with the checksum (BLAKE3) recorded at \
        archive time; segment headers are checked. Gaps are missing segments between archived ones on a \
        timeline (from its switch point, for a child timeline). Files that are not WAL objects are reported as \
        unknown.\n\nExit status: 0 all good, 1 any problem.\n\nExample:\n  dbbackup wal verify --repo /backups/pg --jobs 4"
    )]
    Verify {
        /// Parallel workers
        #[arg(long, allow_negative_numbers = true, short = 'j', value_name = "N", default_value_t = 2)]
        jobs: usize,
    },
    /// Remove WAL older than N days, except what any kept base backup needs
    #[command(after_help = "Uses the same rule as `backup expire --keep-days N`: every point of the last N days \
        stays recoverable, so WAL from the start of the newest backup older than the window onward is kept, \
        on every timeline, and every history file. Backups older than that stay listed but are marked expired (their \
        WAL is gone, restore never uses them) until `backup expire` removes them. With no complete backup nothing \
        is removed. The WAL removed is summed up as for `backup expire` (-v lists every object).\n\n\
        Example:\n  dbbackup wal cleanup --repo /backups/pg --retention-days 14 --dry-run")]
    Cleanup {
        /// Keep every point of the last N days recoverable
        #[arg(long, value_name = "N")]
        retention_days: u64,
        /// Print what would be removed, remove nothing
        #[arg(long)]
        dry_run: bool,
    },
    /// Find the accident: the transactions that dropped or truncated tables, with the restore that undoes each
    #[command(
        after_help = "Reads the archived WAL on the way to the latest timeline (or --timeline), from the start \
        of a base backup to the end of the archive, through the same verified decode path as `wal fetch` \
        (encrypted repositories too; segments are streamed, never loaded whole), and prints, oldest first, every \
        committed transaction that removed data: DROP TABLE, DROP SCHEMA ... CASCADE, a dropped partition, \
        TRUNCATE, DROP DATABASE. For each: commit time, transaction ID, LSN, timeline, database, the tables, and \
        the `restore pitr` command that recovers to just before it (--target-xid X --exclusive).\n\n\
        Tables are named from the base backup's own catalog (pg_class, pg_namespace, pg_database) and the catalog \
        changes in the WAL after it, so tables created after the backup are named too; no running server is \
        needed. A name that cannot be known is shown as its file number and database OID, with the reason. \
        The backup is the newest complete one that ended before --since, else the oldest; WAL before it is not \
        searched. As for restore, when two timelines are both alive (a restored copy archiving beside the \
        primary) --timeline must say which one to search.\n\n\
        Only WAL in the archive is searched: run SELECT pg_switch_wal() on the server first. When the server is \
        reachable (-h/-p, PGHOST/PGPORT) and has written WAL past the end of the archive, a warning says so.\n\nNot shown: rolled-back transactions, tables created and dropped by one transaction, \
        rewrites that keep the data (VACUUM FULL, CLUSTER, ALTER TABLE ... TYPE), and row deletions: a DELETE \
        without WHERE is one row deletion per row, not one event (see docs/restore.md).\n\n\
        Exit status: 0 the search read the whole archive (also when nothing matched: the output says so), \
        non-zero when it could not (a missing or damaged segment, no backup).\n\nExamples:\n  \
        dbbackup wal search --repo /backups/pg\n  \
        dbbackup wal search --repo /backups/pg --table orders --since '2026-11-27 09:00'\n  \
        dbbackup restore pitr --repo /backups/pg --before-accident orders --target-dir /srv/pg/copy"
    )]
    Search(SearchArgs),
    /// Fetch one WAL file (restore_command = 'dbbackup wal fetch %f %p ...')
    #[command(after_help = "Exit codes: 0 delivered and verified; 1 not in the archive; 128 any other failure \
        (corrupt, wrong or missing key, unreadable repository), which makes PostgreSQL stop recovery instead \
        of finishing early at the wrong point.\n\nA repository that cannot be the archive this recovery needs is \
        such a failure too: a missing one (an unmounted file system), one bound to no cluster or to another \
        cluster than the recovering data directory's, and, with --repo-id (which `restore pitr` writes), one \
        with another ID (re-created at the same path).\n\n\
        --prefetch N (which `restore pitr` writes, N = 8 by default): a background worker keeps the next N \
        segments on the timeline recovery follows fetched, decoded and verified in the spool (--spool-dir, \
        default dbbackup_spool in the data directory, never inside pg_wal), so a call for one of them is a \
        rename. A segment not in the spool is fetched from the repository as without --prefetch: exit 1 only \
        when the repository does not have it, never from the spool. The spool holds at most N segments, is \
        owned by one cluster and repository (one left by another is emptied and taken over), and is emptied \
        by the worker after 30 s without a call.\n\nExamples:\n  \
        restore_command = '/usr/local/bin/dbbackup wal fetch %f %p --repo /backups/pg'\n  \
        restore_command = '/usr/local/bin/dbbackup wal fetch %f %p --repo /backups/pg --prefetch 8'")]
    Fetch(FetchArgs),
    /// The background worker of `wal archive --async` (started by it; not for direct use)
    #[command(hide = true)]
    ArchiveWorker(ArchiveWorkerArgs),
    /// The background worker of `wal fetch --prefetch` (started by it)
    #[command(hide = true, name = "fetch-worker")]
    FetchWorker(FetchWorkerArgs),
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Only events that removed this table: `name` or `schema.name`, as in SQL (an unquoted name also matches
    /// in lower case; `'"MixedCase"'` only exactly); also any name it had before a rename, and a dropped database's name
    #[arg(long, value_name = "NAME", value_parser = parse_nonempty)]
    pub table: Option<String>,
    /// Only events in this database (or that dropped it)
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Only events committed at or after this time (also picks the newest backup before it to start from)
    #[arg(long, value_name = "TIME", value_parser = parse_target_time)]
    pub since: Option<jiff::Zoned>,
    /// Only events committed at or before this time
    #[arg(long, value_name = "TIME", value_parser = parse_target_time)]
    pub until: Option<jiff::Zoned>,
    /// Timeline whose way is searched: latest or a number [default: the latest; when two timelines are both
    /// alive, left out it is refused]
    #[arg(long, value_name = "TIMELINE", value_parser = parse_search_timeline)]
    pub timeline: Option<dbbackup_core::restore::TimelineChoice>,
    /// The backup whose catalog names tables, where the search starts [default: the newest before --since, else the oldest]
    #[arg(long, value_name = "ID|latest")]
    pub base_backup: Option<String>,
}

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Path of the WAL file (%p)
    pub path: PathBuf,
    /// Its WAL file name (%f) [default: PATH's base name]
    pub filename: Option<String>,
    /// Compress with ALG instead of the repository default (zstd when no ALG)
    #[arg(long, value_name = "ALG", num_args = 0..=1, require_equals = true, default_missing_value = "zstd", value_parser = parse_codec)]
    pub compress: Option<Codec>,
    /// Compression level
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub compress_level: Option<i32>,
    /// Create the repository encrypted if it does not exist (an existing repository's setting always applies)
    #[arg(long)]
    pub encrypt: bool,
    /// A background worker pushes the segments PostgreSQL marked ready, --jobs at a time; this call still
    /// exits 0 only once its own segment is durable in the repository
    #[arg(long = "async")]
    pub async_: bool,
    /// With --async: where the acknowledgements are kept [default: dbbackup_spool in the data directory]
    #[arg(long, value_name = "DIR", requires = "async_")]
    pub spool_dir: Option<PathBuf>,
    /// With --async: segments the worker pushes at once, 1 to 64 [default: 4]
    #[arg(long, allow_negative_numbers = true, short = 'j', value_name = "N", requires = "async_", value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: Option<u16>,
}

/// The asynchronous archiver's worker, started by `wal archive --async`.
#[derive(Debug, Args)]
pub struct ArchiveWorkerArgs {
    /// The cluster's pg_wal directory
    #[arg(long, value_name = "DIR")]
    pub pg_wal: PathBuf,
    /// The spool (its archive/ part is used)
    #[arg(long, value_name = "DIR")]
    pub spool_dir: PathBuf,
    /// The cluster's system identifier, as the calls read it from their segments
    #[arg(long, value_name = "ID")]
    pub system_identifier: String,
    /// Segments pushed at once
    #[arg(long, allow_negative_numbers = true, short = 'j', value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub jobs: u16,
    /// As `wal archive --compress`
    #[arg(long, value_name = "ALG", num_args = 0..=1, require_equals = true, default_missing_value = "zstd", value_parser = parse_codec)]
    pub compress: Option<Codec>,
    /// As `wal archive --compress-level`
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub compress_level: Option<i32>,
    /// Exit after this many seconds without ready segments
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub idle_exit: u64,
}

#[derive(Debug, Args)]
pub struct FetchArgs {
    /// WAL file name (%f)
    pub filename: String,
    /// Where to write it (%p)
    pub destination: PathBuf,
    /// Refuse (exit 128) unless the repository has this ID (`repo info` shows it)
    #[arg(long, value_name = "ID")]
    pub repo_id: Option<String>,
    /// Keep the next N segments fetched, decoded and verified ahead of recovery in the spool (a
    /// background worker); 0: off, at most 256
    #[arg(long, allow_negative_numbers = true, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=256))]
    pub prefetch: u16,
    /// With --prefetch: the spool directory, outside pg_wal [default: dbbackup_spool in the data directory]
    #[arg(long, value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// With --prefetch: the timeline recovery follows (`restore pitr` writes it) [default: the newest
    /// whose history holds the requested segment's timeline]
    #[arg(long, allow_negative_numbers = true, value_name = "TIMELINE", value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch_timeline: Option<u32>,
}

/// The prefetch worker `wal fetch --prefetch` starts (not for users).
#[derive(Debug, Args)]
pub struct FetchWorkerArgs {
    /// The spool directory
    #[arg(long, value_name = "DIR")]
    pub spool_dir: PathBuf,
    /// Segments to keep ahead
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    pub prefetch: u16,
    /// The timeline recovery follows
    #[arg(long, allow_negative_numbers = true, value_name = "TIMELINE", value_parser = clap::value_parser!(u32).range(1..))]
    pub prefetch_timeline: Option<u32>,
    /// The repository ID the calling command was given
    #[arg(long, value_name = "ID")]
    pub repo_id: Option<String>,
    /// Seconds without a call before the worker removes what it spooled and exits
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub idle_exit: u64,
}

/// A label goes into `backup_label` as one line: a control character
/// (a newline) would forge or break the lines PostgreSQL reads back.
fn parse_label(s: &str) -> Result<String, String> {
    if s.chars().any(char::is_control) {
        return Err("a label cannot hold control characters such as a newline".into());
    }
    if s.len() > 1023 {
        return Err(format!("a label is at most 1023 bytes (PostgreSQL's limit), this one is {}", s.len()));
    }
    Ok(s.to_string())
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    s.parse()
}

fn parse_backup_type(s: &str) -> Result<BackupType, String> {
    match s {
        "full" => Ok(BackupType::Full),
        "incr" | "incremental" => Ok(BackupType::Incr),
        "diff" | "differential" => Ok(BackupType::Diff),
        _ => Err(format!("{s:?} is not a backup type: full, incr or diff")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seconds_take_a_unit_or_none() {
        assert_eq!(parse_seconds("60"), Ok(60.0));
        assert_eq!(parse_seconds("0.5"), Ok(0.5));
        assert_eq!(parse_seconds("30s"), Ok(30.0));
        assert_eq!(parse_seconds("5m"), Ok(300.0));
        assert_eq!(parse_seconds("1h"), Ok(3600.0));
        assert!(parse_seconds("0").unwrap_err().contains("more than 0"));
        assert!(parse_seconds("0s").unwrap_err().contains("more than 0"));
        assert!(parse_seconds("-1").unwrap_err().contains("more than 0"));
        assert!(parse_seconds("soon").unwrap_err().contains("not a number of seconds"));
        assert!(parse_seconds("1d").unwrap_err().contains("not a number of seconds"));
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("0.0001").unwrap_err().contains("at least 0.01 seconds"));
        assert_eq!(parse_seconds("0.01"), Ok(0.01));
    }

    #[test]
    fn listen_takes_an_address_or_a_port() {
        assert_eq!(parse_listen(":9863").unwrap(), "0.0.0.0:9863".parse().unwrap());
        assert_eq!(parse_listen("127.0.0.1:9863").unwrap(), "127.0.0.1:9863".parse().unwrap());
        assert_eq!(parse_listen("[::1]:9863").unwrap(), "[::1]:9863".parse().unwrap());
        assert!(parse_listen("9863").unwrap_err().contains("give HOST:PORT"));
    }
}
