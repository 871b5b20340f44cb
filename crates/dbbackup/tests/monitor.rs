//! `dbbackup monitor` and `pitr status --prometheus` on real servers: the
//! service runs as a process, is scraped over HTTP, and its output is read
//! by Prometheus' own parsers (Python prometheus-client, promtool) and by a
//! real Prometheus server evaluating docs/monitoring/alerts.yml.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use dbbackup_testkit::stores::Garage;

/// The venv's Python, which has prometheus-client (scripts/setup.sh).
fn python() -> PathBuf {
    cache_dir().join("venv/bin/python")
}

/// One sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parses an exposition with prometheus-client's parser (panics on a
/// parse error, quoting it).
fn parse(text: &str, openmetrics: bool) -> Vec<Sample> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/parse_metrics.py");
    let mut cmd = Cmd::new(python());
    cmd.arg(&script).as_root().stdin(text.as_bytes().to_vec());
    if openmetrics {
        cmd.arg("--openmetrics");
    }
    let out = cmd.output();
    assert_eq!(out.status, 0, "prometheus-client cannot parse the metrics: {}\n{text}", out.stderr);
    let v: Vec<(String, BTreeMap<String, String>, f64)> = serde_json::from_str(&out.stdout).unwrap();
    v
}

/// The value of `name` whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.2)
}

/// `curl` GET: (HTTP status, body).
fn http_get(port: u16, path: &str, accept: Option<&str>) -> (u16, String) {
    let mut c = Command::new("curl");
    c.args(["-s", "--max-time", "5", "-w", "\n%{http_code}"]);
    if let Some(a) = accept {
        c.args(["-H", &format!("Accept: {a}")]);
    }
    let out = c.arg(format!("http://127.0.0.1:{port}{path}")).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A running `dbbackup monitor` (as the PostgreSQL OS user).
struct Monitor {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Monitor {
    fn start(dir: &TestDir, args: &[&str]) -> Monitor {
        let port = free_port();
        let log = dir.join(format!("monitor-{port}.log"));
        let listen = format!("127.0.0.1:{port}");
        let child = dbb(["monitor", "--listen", &listen]).args(args).spawn_logged(&log);
        let m = Monitor { child, port, log };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(port, "/", None).0 != 200 {
            assert!(Instant::now() < deadline, "the monitor does not answer on {listen}: {}", m.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
        m
    }

    /// The monitor's own PID: as root the child is runuser, which answers
    /// SIGTERM by killing its session rather than passing the signal on.
    fn pid(&self) -> u32 {
        let id = self.child.id();
        std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse().ok())
            .unwrap_or(id)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// /metrics, parsed (classic format, or OpenMetrics when asked).
    fn metrics(&self, openmetrics: bool) -> Vec<Sample> {
        let accept = openmetrics.then_some("application/openmetrics-text; version=1.0.0");
        let (code, body) = http_get(self.port, "/metrics", accept);
        assert_eq!(code, 200, "/metrics: {body}\n{}", self.log_text());
        parse(&body, openmetrics)
    }

    fn status(&self) -> serde_json::Value {
        let (code, body) = http_get(self.port, "/status", None);
        assert_eq!(code, 200, "/status: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Waits until `pred` holds for the scraped metrics; returns them.
    fn wait(&self, what: &str, timeout: Duration, pred: impl Fn(&[Sample]) -> bool) -> Vec<Sample> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics(false);
            if pred(&m) {
                return m;
            }
            assert!(
                Instant::now() < deadline,
                "within {timeout:?}: {what}\nmetrics: {m:?}\nstatus: {}\nlog: {}",
                self.status(),
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM; the exit status and how long it took.
    fn terminate(mut self) -> (std::process::ExitStatus, Duration, String) {
        let start = Instant::now();
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st, start.elapsed(), self.log_text());
            }
            assert!(Instant::now() < deadline, "the monitor ignores SIGTERM: {}", self.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-KILL", &self.pid().to_string()]).stderr(Stdio::null()).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Makes every directory of the repository read-only (or writable again)
/// for the PostgreSQL OS user.
fn set_repo_writable(repo: &Path, writable: bool) {
    let mode = if writable { "u+w" } else { "a-w" };
    let st = Command::new("chmod").args(["-R", mode]).arg(repo).status().unwrap();
    assert!(st.success());
}

fn archiver_failures(c: &Cluster) -> i64 {
    c.sql("SELECT failed_count FROM pg_stat_archiver").trim().parse().unwrap()
}

const OK: &[(&str, &str)] = &[("state", "ok")];
const ERROR: &[(&str, &str)] = &[("state", "error")];

/// The story of the issue: healthy, archiving broken (an unwritable
/// repository), fixed; each change is in the metrics within two intervals
/// of PostgreSQL seeing it.
fn archiving_breaks_and_recovers(version: PgVersion) {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let c = archiving_cluster(version, None, &repo, "");
    make_archived_segment(&c);
    backup(&c, &repo, &[]);
    let data = c.data_dir();
    let interval = 1.0;
    let m = Monitor::start(
        &dir,
        &["--interval", "1", "--repo", repo.to_str().unwrap(), "--pgdata", data.to_str().unwrap()],
    );
    let sysid = c.system_identifier().to_string();
    let healthy = m.wait("verdict ok", Duration::from_secs(20), |s| value(s, "dbbackup_verdict", OK) == Some(1.0));
    let own = [("system_identifier", sysid.as_str()), ("repository", repo.to_str().unwrap())];
    assert_eq!(value(&healthy, "dbbackup_server_up", &own), Some(1.0), "{healthy:?}");
    assert_eq!(value(&healthy, "dbbackup_repository_up", &own), Some(1.0));
    assert_eq!(value(&healthy, "dbbackup_archiving_failing", &[]), Some(0.0));
    assert_eq!(value(&healthy, "dbbackup_backups", &[("status", "complete")]), Some(1.0));
    assert_eq!(value(&healthy, "dbbackup_repository_gaps", &[]), Some(0.0));
    assert!(value(&healthy, "dbbackup_wal_archived_total", &[]).unwrap() >= 2.0);
    assert!(value(&healthy, "dbbackup_repository_size_bytes", &[("kind", "wal")]).unwrap() > 0.0);
    assert!(value(&healthy, "dbbackup_repository_size_bytes", &[("kind", "backup")]).unwrap() > 0.0);
    assert!(value(&healthy, "dbbackup_backup_newest_size_bytes", &[]).unwrap() > 1e6);
    let age = value(&healthy, "dbbackup_backup_newest_age_seconds", &[]).unwrap();
    assert!((0.0..600.0).contains(&age), "{age}");
    assert!(value(&healthy, "dbbackup_recoverable_oldest_timestamp_seconds", &[]).is_some());
    assert!(value(&healthy, "dbbackup_recoverable_newest_timestamp_seconds", &[]).is_some());
    assert_eq!(value(&healthy, "dbbackup_check_interval_seconds", &[]), Some(interval));
    assert!(value(&healthy, "dbbackup_check_age_seconds", &[]).unwrap() < 5.0);
    // The same through the strict OpenMetrics parser.
    let om = m.metrics(true);
    assert_eq!(value(&om, "dbbackup_verdict", OK), Some(1.0));
    assert!(value(&om, "dbbackup_checks_total", &[]).unwrap() >= 1.0, "{om:?}");
    let st = m.status();
    assert_eq!(st["verdict"], "ok", "{st}");
    assert_eq!(st["system_identifier"], sysid.as_str());
    assert!(st["check"]["checks"].as_u64().unwrap() >= 1);

    // Break: the repository is not writable for the server's OS user.
    set_repo_writable(&repo, false);
    let before = archiver_failures(&c);
    c.sql("INSERT INTO filler SELECT g, 'x' FROM generate_series(1, 100) g");
    c.switch_wal();
    let deadline = Instant::now() + Duration::from_secs(30);
    while archiver_failures(&c) == before {
        assert!(Instant::now() < deadline, "archiving did not fail: {}", c.log_tail(20));
        std::thread::sleep(Duration::from_millis(100));
    }
    let broken = m.wait("archiving failing, verdict error", Duration::from_secs_f64(2.0 * interval + 1.0), |s| {
        value(s, "dbbackup_archiving_failing", &[]) == Some(1.0)
            && value(s, "dbbackup_verdict", ERROR) == Some(1.0)
            && value(s, "dbbackup_verdict", OK) == Some(0.0)
            && value(s, "dbbackup_wal_failed_total", &[]).is_some_and(|f| f >= 1.0)
    });
    assert!(value(&broken, "dbbackup_wal_last_failed_timestamp_seconds", &[]).is_some());
    assert!(value(&broken, "dbbackup_archive_lag_segments", &[]).unwrap() >= 1.0, "{broken:?}");
    assert!(value(&broken, "dbbackup_archive_lag_seconds", &[]).unwrap() > 0.0, "{broken:?}");
    assert_eq!(value(&broken, "dbbackup_repository_writable", &[]), Some(0.0));
    let st = m.status();
    assert!(findings(&st).contains("archiving is failing"), "{st}");
    assert!(m.log_text().contains("monitor: verdict error"), "{}", m.log_text());

    // Fixed: PostgreSQL retries; the next segment wakes the archiver.
    set_repo_writable(&repo, true);
    let seg = c.switch_wal();
    c.wait_archived(&seg, Duration::from_secs(90));
    m.wait("archiving recovered", Duration::from_secs_f64(2.0 * interval + 1.0), |s| {
        value(s, "dbbackup_archiving_failing", &[]) == Some(0.0)
            && value(s, "dbbackup_verdict", ERROR) == Some(0.0)
            && value(s, "dbbackup_repository_writable", &[]) == Some(1.0)
    });
    let (status, took, log) = m.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(log.contains("monitor: stopped"), "{log}");
}

#[test]
fn archiving_breaks_and_recovers_pg15() {
    archiving_breaks_and_recovers(PgVersion::V15);
}

#[test]
fn archiving_breaks_and_recovers_pg18() {
    archiving_breaks_and_recovers(PgVersion::V18);
}

/// The server stops, the store stops, a check hangs past its deadline:
/// the service keeps answering and says so; all comes back with them.
#[test]
fn the_monitor_survives_the_server_and_the_store_going_away() {
    let dir = TestDir::new();
    let mut garage = Garage::single();
    let cfg = private_file(&dir, "s3.toml", garage.config_toml("mon") + "request-timeout = 2\n");
    let c = cluster_on(PgVersion::V18, &cfg);
    make_archived_segment(&c);
    with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    let data = c.data_dir();
    let m = Monitor::start(
        &dir,
        &[
            "--interval",
            "1",
            "--check-timeout",
            "3",
            "--config",
            cfg.to_str().unwrap(),
            "--pgdata",
            data.to_str().unwrap(),
        ],
    );
    let ok = m.wait("verdict ok", Duration::from_secs(30), |s| value(s, "dbbackup_verdict", OK) == Some(1.0));
    let repo_label = format!("s3://{}/mon", garage.bucket());
    assert_eq!(value(&ok, "dbbackup_repository_up", &[("repository", &repo_label)]), Some(1.0), "{ok:?}");

    // The store goes away: the repository is down (or the check overruns
    // its deadline), the verdict is error, scrapes still answer.
    let errors = value(&ok, "dbbackup_check_errors_total", &[]).unwrap();
    let sysid = c.system_identifier().to_string();
    garage.stop_node(0);
    let down = m.wait("store down", Duration::from_secs(90), |s| {
        value(s, "dbbackup_verdict", ERROR) == Some(1.0)
            && (value(s, "dbbackup_repository_up", &[]) == Some(0.0)
                || value(s, "dbbackup_check_errors_total", &[]).is_some_and(|e| e > errors))
    });
    eprintln!(
        "store down: repository_up {:?}, check errors {:?}",
        value(&down, "dbbackup_repository_up", &[]),
        value(&down, "dbbackup_check_errors_total", &[])
    );
    assert!(value(&down, "dbbackup_check_age_seconds", &[]).is_some());
    let text = m.status().to_string();
    assert!(text.contains("error"), "{text}");

    // A server that accepts no connection (frozen): the check overruns its
    // deadline, which is a failed check; scrapes still answer at once.
    garage.start_node(0);
    m.wait("store back", Duration::from_secs(60), |s| value(s, "dbbackup_repository_up", &[]) == Some(1.0));
    let postmaster = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let postmaster = postmaster.lines().next().unwrap().trim().to_string();
    Command::new("kill").args(["-STOP", &postmaster]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let st = m.status();
        if st["check"]["error"].as_str().is_some_and(|e| e.contains("did not finish within 3 s")) {
            assert_eq!(st["verdict"], "error", "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "no deadline failure: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let frozen = m.metrics(false);
    assert_eq!(value(&frozen, "dbbackup_verdict", ERROR), Some(1.0));
    let failed = value(&frozen, "dbbackup_check_errors_total", &[]).unwrap();
    assert!(failed > errors);
    // While the check hangs, each interval is one more failed check: the
    // time of the last check moves on (the monitor is not the stale one).
    m.wait("failed checks while frozen", Duration::from_secs(15), |s| {
        value(s, "dbbackup_check_errors_total", &[]).is_some_and(|e| e >= failed + 2.0)
    });
    let st = m.status();
    assert!(st["check"]["error"].as_str().unwrap().contains("without an answer"), "{st}");
    Command::new("kill").args(["-CONT", &postmaster]).status().unwrap();
    m.wait("thawed", Duration::from_secs(60), |s| {
        value(s, "dbbackup_server_up", &[]) == Some(1.0) && value(s, "dbbackup_verdict", ERROR) == Some(0.0)
    });
    garage.stop_node(0);

    // The server stops too.
    c.stop();
    m.wait("server down", Duration::from_secs(120), |s| value(s, "dbbackup_server_up", &[]) == Some(0.0));
    let st = m.status();
    assert_eq!(st["verdict"], "error");
    assert!(findings(&st).contains("cannot connect to PostgreSQL"), "{st}");
    // Named from the configuration, not libpq's defaults (no postmaster.pid).
    assert!(findings(&st).contains(&format!("port {}", c.port())), "{st}");
    // Labels survive the outage: still this cluster's series.
    let s = m.metrics(false);
    assert_eq!(value(&s, "dbbackup_server_up", &[("system_identifier", &sysid)]), Some(0.0), "{s:?}");

    // Both back: healthy again, the same service.
    garage.start_node(0);
    c.start();
    m.wait("recovered", Duration::from_secs(120), |s| {
        value(s, "dbbackup_server_up", &[]) == Some(1.0)
            && value(s, "dbbackup_repository_up", &[]) == Some(1.0)
            && value(s, "dbbackup_verdict", ERROR) == Some(0.0)
    });
    let (status, _, log) = m.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert!(log.contains("monitor: verdict error"), "{log}");
}

/// Every rule of docs/monitoring/alerts.yml is valid (promtool), and a real
/// Prometheus scraping the monitor evaluates each expression to a firing
/// series in the state the rule names, and none while all is healthy.
#[test]
fn alert_rules_fire_on_the_states_they_name() {
    let rules_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/monitoring/alerts.yml");
    let out = Command::new("promtool").arg("check").arg("rules").arg(&rules_file).output().expect("promtool");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let rules = alert_exprs(&rules_file);
    let names: Vec<&str> = rules.iter().map(|(n, _)| n.as_str()).collect();
    for want in [
        "DbbackupArchivingFailing",
        "DbbackupArchiveLagHigh",
        "DbbackupNoRecentBackup",
        "DbbackupArchiveGap",
        "DbbackupStatusError",
        "DbbackupServerUnreachable",
        "DbbackupRepositoryUnreachable",
        "DbbackupMonitorStale",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }

    let dir = TestDir::new();
    let repo = dir.join("repo");
    let c = archiving_cluster(PgVersion::V15, Some(1), &repo, "");
    make_archived_segment(&c);
    let data = c.data_dir();
    let m = Monitor::start(
        &dir,
        &["--interval", "1", "--repo", repo.to_str().unwrap(), "--pgdata", data.to_str().unwrap()],
    );
    let prom = Prometheus::start(&dir, m.port);
    let mport = m.port;
    let status_text = move || http_get(mport, "/status", None).1;
    let expr = |name: &str| rules.iter().find(|(n, _)| n == name).unwrap().1.clone();
    // Fires: the expression has a result within the timeout.
    let fires = |name: &str, timeout: Duration| {
        let deadline = Instant::now() + timeout;
        loop {
            if !prom.query(&expr(name)).is_empty() {
                return;
            }
            assert!(Instant::now() < deadline, "{name} does not fire: {}\nstatus: {}", expr(name), status_text());
            std::thread::sleep(Duration::from_millis(250));
        }
    };
    let quiet = |names: &[&str]| {
        for n in names {
            let r = prom.query(&expr(n));
            assert!(r.is_empty(), "{n} fires while it should not: {} -> {r:?}\nstatus: {}", expr(n), status_text());
        }
    };

    // No backup yet: only that.
    fires("DbbackupNoRecentBackup", Duration::from_secs(30));
    quiet(&[
        "DbbackupArchivingFailing",
        "DbbackupArchiveLagHigh",
        "DbbackupArchiveGap",
        "DbbackupStatusError",
        "DbbackupServerUnreachable",
        "DbbackupRepositoryUnreachable",
        "DbbackupMonitorStale",
    ]);
    // Healthy: nothing fires.
    backup(&c, &repo, &[]);
    m.wait("a backup", Duration::from_secs(10), |s| {
        value(s, "dbbackup_backups", &[("status", "complete")]) == Some(1.0)
    });
    std::thread::sleep(Duration::from_secs(3)); // two scrapes
    quiet(&names);

    // Archiving broken, 20 segments waiting: failing, lag, status error.
    set_repo_writable(&repo, false);
    for i in 0..20 {
        c.sql(&format!("INSERT INTO filler SELECT g, 'lag{i}' FROM generate_series(1, 10) g"));
        c.switch_wal();
    }
    fires("DbbackupArchivingFailing", Duration::from_secs(30));
    fires("DbbackupArchiveLagHigh", Duration::from_secs(30));
    fires("DbbackupStatusError", Duration::from_secs(30));
    set_repo_writable(&repo, true);
    let seg = c.switch_wal();
    c.wait_archived(&seg, Duration::from_secs(120));
    m.wait("archiving recovered", Duration::from_secs(10), |s| {
        value(s, "dbbackup_archiving_failing", &[]) == Some(0.0) && value(s, "dbbackup_verdict", ERROR) == Some(0.0)
    });
    std::thread::sleep(Duration::from_secs(3));
    quiet(&["DbbackupArchivingFailing", "DbbackupArchiveLagHigh", "DbbackupStatusError"]);

    // A segment after the backup goes missing from the archive: a gap.
    let lost = make_archived_segment(&c);
    make_archived_segment(&c);
    let lost = object_for(&repo, &lost);
    std::fs::remove_file(&lost).unwrap();
    fires("DbbackupArchiveGap", Duration::from_secs(30));

    // The repository cannot be read.
    let moved = dir.join("repo-away");
    std::fs::rename(&repo, &moved).unwrap();
    fires("DbbackupRepositoryUnreachable", Duration::from_secs(30));
    std::fs::rename(&moved, &repo).unwrap();

    // The server stops.
    c.stop();
    fires("DbbackupServerUnreachable", Duration::from_secs(30));

    // The monitor stops: Prometheus' own `up` says so.
    let (status, _, log) = m.terminate();
    assert!(status.success(), "{log}");
    fires("DbbackupMonitorStale", Duration::from_secs(30));
}

/// `- alert: NAME` and its one-line `expr:` from the rules file.
fn alert_exprs(file: &Path) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("- alert:") {
            name = Some(n.trim().to_string());
        } else if let (Some(e), Some(n)) = (t.strip_prefix("expr:"), name.take()) {
            out.push((n, e.trim().to_string()));
        }
    }
    out
}

/// A Prometheus server scraping one monitor every second (job "dbbackup").
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn start(dir: &TestDir, target: u16) -> Prometheus {
        let port = free_port();
        let cfg = dir.write(
            "prometheus.yml",
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: dbbackup\n    \
                 static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        );
        let data = dir.mkdir("prometheus-data");
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (scripts/setup.sh installs it)");
        let p = Prometheus { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(port, "/-/ready", None).0 != 200 {
            assert!(
                Instant::now() < deadline,
                "prometheus did not start: {:?}",
                std::fs::read_to_string(dir.join("prometheus.log"))
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    /// An instant query's result series.
    fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", "--data-urlencode", &format!("query={expr}")])
            .arg(format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The textfile route: the same metrics once, valid for promtool and the
/// parser, and still printed (exit 0) when the server is down.
#[test]
fn pitr_status_prometheus_prints_the_metrics_once() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    // Asynchronous archiving: its queue is in the metrics too.
    let c = archiving_cluster(PgVersion::V15, None, &repo, "--async");
    make_archived_segment(&c);
    let data = c.data_dir();
    let args = ["pitr", "status", "--prometheus", "--repo", repo.to_str().unwrap(), "--pgdata", data.to_str().unwrap()];
    let out = dbb(args).assert_success();
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    lint.stdin.take().unwrap().write_all(out.stdout.as_bytes()).unwrap();
    let lint = lint.wait_with_output().unwrap();
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    let s = parse(&out.stdout, false);
    // No backup yet: a note, not a warning.
    assert_eq!(value(&s, "dbbackup_verdict", OK), Some(1.0), "{}", out.stdout);
    assert_eq!(value(&s, "dbbackup_backups", &[("status", "complete")]), Some(0.0));
    assert_eq!(value(&s, "dbbackup_server_up", &[]), Some(1.0));
    assert_eq!(value(&s, "dbbackup_checks_total", &[]), Some(1.0));
    assert!(value(&s, "dbbackup_check_interval_seconds", &[]).is_none(), "no interval for a one-shot check");
    assert_eq!(value(&s, "dbbackup_async_queue_ready_segments", &[]), Some(0.0), "{}", out.stdout);
    assert_eq!(value(&s, "dbbackup_async_queue_unacknowledged_segments", &[]), Some(0.0));

    // Archiving broken: still exit 0, the verdict is in the metrics.
    set_repo_writable(&repo, false);
    let out = dbb(args).assert_success();
    let s = parse(&out.stdout, false);
    assert_eq!(value(&s, "dbbackup_verdict", ERROR), Some(1.0), "{}", out.stdout);
    assert_eq!(value(&s, "dbbackup_repository_writable", &[]), Some(0.0));
    set_repo_writable(&repo, true);

    // A server that accepts no connection (frozen): past --check-timeout
    // the metrics say the check failed, and the file is still written.
    let sysid = c.system_identifier().to_string();
    let postmaster = std::fs::read_to_string(data.join("postmaster.pid")).unwrap();
    let postmaster = postmaster.lines().next().unwrap().trim().to_string();
    Command::new("kill").args(["-STOP", &postmaster]).status().unwrap();
    let started = Instant::now();
    let out = dbb(args).args(["--check-timeout", "2"]).output();
    Command::new("kill").args(["-CONT", &postmaster]).status().unwrap();
    assert_eq!(out.status, 0, "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    assert!(out.stderr.contains("did not finish within 2 s"), "{}", out.stderr);
    let s = parse(&out.stdout, false);
    assert_eq!(value(&s, "dbbackup_verdict", ERROR), Some(1.0), "{}", out.stdout);
    assert_eq!(value(&s, "dbbackup_check_errors_total", &[("system_identifier", &sysid)]), Some(1.0));
    let out = dbb(["pitr", "status", "--check-timeout", "2"]).assert_code(2);
    assert!(out.stderr.contains("--prometheus"), "{}", out.stderr);

    // The server is down: the textfile must still be replaced.
    c.stop();
    let out = dbb(args).assert_success();
    let s = parse(&out.stdout, false);
    assert_eq!(value(&s, "dbbackup_server_up", &[("system_identifier", &sysid)]), Some(0.0), "{}", out.stdout);
    assert_eq!(value(&s, "dbbackup_verdict", ERROR), Some(1.0));
    assert!(out.stderr.contains("cannot connect to PostgreSQL"), "{}", out.stderr);
    // A flag that makes no sense with it.
    let out = dbb(["pitr", "status", "--prometheus", "--json"]).assert_code(2);
    assert!(out.stderr.contains("'--prometheus' cannot be used with '--json'"), "{}", out.stderr);
}

/// Bad input: one clear first line, non-zero exit, nothing served.
#[test]
fn the_monitor_refuses_bad_input() {
    let dir = TestDir::new();
    let first = |o: &Output| o.stderr.lines().next().unwrap_or("").to_string();

    let out = dbb(["monitor", "--listen", "nonsense"]).assert_code(2);
    assert!(first(&out).contains("invalid value 'nonsense' for '--listen <ADDR>'"), "{}", out.stderr);
    assert!(first(&out).contains("give HOST:PORT"), "{}", out.stderr);

    let out = dbb(["monitor", "--listen", "127.0.0.1:99999"]).assert_code(2);
    assert!(first(&out).contains("invalid value '127.0.0.1:99999'"), "{}", out.stderr);

    for bad in ["0", "-5", "soon"] {
        let out = dbb(["monitor", "--listen", "127.0.0.1:9", "--interval", bad]).assert_code(2);
        assert!(first(&out).contains(&format!("invalid value '{bad}' for '--interval <SECONDS>'")), "{}", out.stderr);
    }
    let out = dbb(["monitor", "--listen", "127.0.0.1:9", "--check-timeout", "0"]).assert_code(2);
    assert!(first(&out).contains("must be more than 0 seconds"), "{}", out.stderr);

    let out = dbb(["monitor"]).assert_code(2);
    assert!(out.stderr.contains("--listen <ADDR>"), "{}", out.stderr);

    // A port another process holds (a monitor left running).
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let out =
        dbb(["monitor", "--listen", &format!("127.0.0.1:{port}")]).timeout(Duration::from_secs(20)).assert_code(1);
    assert!(first(&out).contains(&format!("cannot listen on 127.0.0.1:{port}")), "{}", out.stderr);
    assert!(first(&out).contains("another process listens there"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    // A config file the service's user cannot read.
    let cfg = dir.write("root-only.toml", "repo = \"/nowhere\"\n");
    Command::new("chown").args(["root:root"]).arg(&cfg).status().unwrap();
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let out = dbb(["monitor", "--listen", "127.0.0.1:9", "--config", cfg.to_str().unwrap()]).assert_code(2);
    assert!(first(&out).contains("root-only.toml"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

/// Started with no server at all: it serves "down", and SIGTERM ends it
/// cleanly.
#[test]
fn the_monitor_serves_a_server_that_is_down_and_stops_on_sigterm() {
    let dir = TestDir::new();
    let nowhere = dir.mkdir("no-server");
    let m = Monitor::start(&dir, &["--interval", "0.5", "--host", nowhere.to_str().unwrap(), "--port", "1"]);
    let s = m.wait("server down", Duration::from_secs(20), |s| value(s, "dbbackup_server_up", &[]) == Some(0.0));
    assert_eq!(value(&s, "dbbackup_verdict", ERROR), Some(1.0));
    assert!(value(&s, "dbbackup_check_errors_total", &[]).unwrap() >= 1.0);
    assert_eq!(http_get(m.port, "/nope", None).0, 404);
    let st = m.status();
    assert!(findings(&st).contains("cannot connect to PostgreSQL"), "{st}");
    // Clients that reset the connection at once, send garbage or half a
    // request, or POST: the service answers the next scrape all the same
    // (tiny_http, tried first, panicked on a reset connection).
    let rude = format!(
        "import socket\nfor i in range(100):\n    s = socket.create_connection(('127.0.0.1', {p}))\n    \
         s.sendall(b'GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n')\n    \
         s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\\x01\\0\\0\\0\\0\\0\\0\\0')\n    s.close()\n    \
         t = socket.create_connection(('127.0.0.1', {p})); t.sendall(b'GARBAGE\\r\\n\\r\\n'); t.close()\n    \
         u = socket.create_connection(('127.0.0.1', {p})); u.sendall(b'GET /metr'); u.close()\n",
        p = m.port
    );
    Cmd::new(python()).as_root().args(["-c", &rude]).assert_success();
    let (code, _) = http_get(m.port, "/metrics", None);
    assert_eq!(code, 200, "{}", m.log_text());
    let post = Command::new("curl")
        .args(["-s", "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://127.0.0.1:{}/metrics", m.port))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&post.stdout), "405");
    // It keeps checking: the counters move.
    let before = value(&s, "dbbackup_checks_total", &[]).unwrap();
    m.wait("more checks", Duration::from_secs(10), |s| value(s, "dbbackup_checks_total", &[]).unwrap() > before + 1.0);
    let (status, took, log) = m.terminate();
    assert!(status.success(), "{status:?}: {log}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert!(log.contains("monitor: stopped"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

/// A monitor follows archive_command; pointed at another repository (a
/// typo makes a new, empty one) or finding its repository re-created (an
/// unmounted file system: the next archive makes a new one there), it says
/// error instead of starting afresh with verdict ok. A program in
/// archive_command that does not exist is an error too (PostgreSQL counts
/// no failure for it).
#[test]
fn another_repository_than_the_one_watched_is_an_error() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    backup(&c, &repo, &[]);
    let data = c.data_dir();
    let m = Monitor::start(&dir, &["--interval", "1", "--pgdata", data.to_str().unwrap()]);
    m.wait("verdict ok", Duration::from_secs(20), |s| value(s, "dbbackup_verdict", OK) == Some(1.0));

    // A typo in archive_command: archiving "works", into a new repository.
    let typo = dir.join("rpeo");
    let set = |cmd: &str| {
        c.sql(&format!("ALTER SYSTEM SET archive_command = '{cmd}'"));
        c.sql("SELECT pg_reload_conf()");
        c.wait_for("SHOW archive_command", cmd, Duration::from_secs(10));
    };
    set(&format!("{} wal archive %p %f --repo {}", bin().display(), typo.display()));
    make_archived_segment(&c);
    m.wait("error for the typo", Duration::from_secs(10), |s| value(s, "dbbackup_verdict", ERROR) == Some(1.0));
    let st = m.status();
    assert!(findings(&st).contains("the repository changed since the monitor started"), "{st}");
    assert!(findings(&st).contains(&typo.display().to_string()), "{st}");

    // Back to the right one: the same repository again, which now misses
    // the segment that went astray (a gap: take a new backup).
    set(&format!("{} wal archive %p %f --repo {}", bin().display(), repo.display()));
    make_archived_segment(&c);
    m.wait("the gap instead", Duration::from_secs(10), |s| value(s, "dbbackup_repository_gaps", &[]) == Some(1.0));
    let st = m.status();
    assert!(!findings(&st).contains("the repository changed"), "{st}");
    backup(&c, &repo, &[]);
    m.wait("no error after a new backup", Duration::from_secs(10), |s| {
        value(s, "dbbackup_verdict", ERROR) == Some(0.0)
    });

    // The repository's file system is not mounted: the next archive creates
    // a new repository at the same path (another ID).
    let info = json(&dbb(["repo", "info", "--json", "--repo", repo.to_str().unwrap()]).assert_success());
    let id = info["id"].as_str().unwrap().to_string();
    std::fs::rename(&repo, dir.join("repo-unmounted")).unwrap();
    make_archived_segment(&c);
    m.wait("error for the re-created repository", Duration::from_secs(10), |s| {
        value(s, "dbbackup_verdict", ERROR) == Some(1.0)
    });
    let st = m.status();
    assert!(findings(&st).contains("the repository changed since the monitor started"), "{st}");
    drop(m);
    // A one-shot check has no memory: --repo-id pins the repository.
    let args = ["pitr", "status", "--json", "--repo", repo.to_str().unwrap(), "--pgdata", data.to_str().unwrap()];
    let v = json(&dbb(args).args(["--repo-id", &id]).assert_code(1));
    assert!(findings(&v).contains(&format!("not {id} (--repo-id): it was re-created")), "{v}");
    let out = dbb(["pitr", "status", "--prometheus", "--repo-id", &id, "--repo", repo.to_str().unwrap()])
        .args(["--pgdata", data.to_str().unwrap()])
        .assert_success();
    assert_eq!(value(&parse(&out.stdout, false), "dbbackup_verdict", ERROR), Some(1.0), "{}", out.stdout);

    // A program that does not exist (exit 127: no failure in pg_stat_archiver).
    let missing = dir.join("bin/dbbackupp");
    set(&format!("{} wal archive %p %f --repo {}", missing.display(), repo.display()));
    let out = dbb(["pitr", "status", "--json", "--pgdata", data.to_str().unwrap()]).assert_code(1);
    let v = json(&out);
    assert!(findings(&v).contains(&format!("archive_command runs {}, which does not exist", missing.display())), "{v}");
    // Another tool's program, as well (its failures are not counted either).
    set(&format!("{} %p %f", missing.display()));
    let v = json(&dbb(["pitr", "status", "--json", "--pgdata", data.to_str().unwrap()]).assert_code(1));
    assert!(findings(&v).contains(&format!("archive_command runs {}, which does not exist", missing.display())), "{v}");
}

/// An archive_command that cannot run (a program name the server's PATH
/// does not have: exit 127) is no failure for pg_stat_archiver; a segment
/// waiting over two minutes with no failure recorded is a warning, in the
/// metrics too.
#[test]
fn a_segment_waiting_without_a_recorded_failure_is_a_warning() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    backup(&c, &repo, &[]);
    let cmd = "no-such-dbbackup-program wal archive %p %f";
    c.sql(&format!("ALTER SYSTEM SET archive_command = '{cmd}'"));
    c.sql("SELECT pg_reload_conf()");
    c.wait_for("SHOW archive_command", cmd, Duration::from_secs(10));
    c.sql("INSERT INTO filler SELECT g, 'x' FROM generate_series(1, 100) g");
    c.switch_wal();
    let data = c.data_dir();
    let args = ["pitr", "status", "--json", "--repo", repo.to_str().unwrap(), "--pgdata", data.to_str().unwrap()];
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let v = json(&dbb(args).output());
        if findings(&v).contains("has waited") {
            assert!(findings(&v).contains("PostgreSQL records no failure"), "{v}");
            assert_eq!(v["archiver"]["failing"], false, "PostgreSQL counted it after all: {v}");
            assert!(v["lag_seconds"].as_f64().unwrap() > 120.0, "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "no warning: {v}");
        std::thread::sleep(Duration::from_secs(5));
    }
    let out =
        dbb(["pitr", "status", "--prometheus", "--repo", repo.to_str().unwrap(), "--pgdata", data.to_str().unwrap()])
            .assert_success();
    let s = parse(&out.stdout, false);
    assert_eq!(value(&s, "dbbackup_verdict", &[("state", "ok")]), Some(0.0), "{}", out.stdout);
    assert!(value(&s, "dbbackup_archive_lag_seconds", &[]).unwrap() > 120.0);
}
