//! `wal archive --async`: a background worker pushes the segments
//! PostgreSQL marked ready, N at a time, and each call of PostgreSQL exits
//! 0 only once its own segment is durable in the repository. Stories on
//! real PostgreSQL 15 and 18 servers under pgbench, on a local repository
//! and on Garage (S3): everything arrives byte-identical, a worker killed
//! with -9 loses nothing, a store that fails for a while makes the calls
//! fail and then catches up, a stale spool is refused, two workers never
//! run.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use dbbackup_testkit::stores::Garage;
use serde_json::Value;

/// How the tests name the repository: `--repo DIR` or `--config FILE`.
#[derive(Clone)]
struct RepoArgs(Vec<String>);

impl RepoArgs {
    fn local(repo: &Path) -> RepoArgs {
        RepoArgs(vec!["--repo".into(), repo.display().to_string()])
    }
    fn config(cfg: &Path) -> RepoArgs {
        RepoArgs(vec!["--config".into(), cfg.display().to_string()])
    }
    fn text(&self) -> String {
        self.0.join(" ")
    }
    /// `dbbackup ARGS <repo args>`.
    fn dbb(&self, args: &[&str]) -> Cmd {
        let mut c = dbb(args);
        c.args(&self.0);
        c
    }
}

/// A started cluster archiving with `wal archive %p %f <repo> --async
/// <extra>`, keeping its WAL in pg_wal (wal_keep_size) so the tests can
/// compare what was archived with what the server wrote.
fn async_cluster(version: PgVersion, repo: &RepoArgs, extra: &str) -> Cluster {
    let mut o = ClusterOptions::new(version);
    o.extra_conf = vec![
        "archive_mode = on".into(),
        format!("archive_command = '{} wal archive %p %f {} --async {extra}'", bin().display(), repo.text()),
        "wal_keep_size = '4GB'".into(),
        "max_wal_size = '1GB'".into(),
    ];
    Cluster::new(o)
}

fn pgbench(c: &Cluster, args: &[&str]) -> Output {
    c.bin_cmd("pgbench")
        .args(["-h", &c.socket_dir().display().to_string(), "-p", &c.port().to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .timeout(Duration::from_secs(300))
        .assert_success()
}

/// pg_stat_archiver: (archived_count, failed_count, last_archived_wal).
fn archiver(c: &Cluster) -> (i64, i64, String) {
    let row = c.sql(
        "SELECT archived_count || ' ' || failed_count || ' ' || coalesce(last_archived_wal, '-') FROM pg_stat_archiver",
    );
    let f: Vec<&str> = row.split(' ').collect();
    (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].to_string())
}

/// Waits (up to a minute) until pg_stat_archiver counts a failed call.
fn wait_for_archive_failure(c: &Cluster) {
    let start = std::time::Instant::now();
    while archiver(c).1 == 0 {
        assert!(start.elapsed() < Duration::from_secs(60), "no failure:\n{}", c.log_tail(20));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The spool part of the cluster's asynchronous archiving.
fn spool_part(c: &Cluster) -> PathBuf {
    c.data_dir().join("dbbackup_spool/archive")
}

/// Every segment name -> BLAKE3 recorded in the repository (`wal list`).
fn archived_checksums(repo: &RepoArgs) -> BTreeMap<String, String> {
    let v = json(&repo.dbb(&["wal", "list", "--json"]).assert_success());
    v.as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "segment")
        .map(|o| (o["name"].as_str().unwrap().to_string(), o["checksum_blake3"].as_str().unwrap().to_string()))
        .collect()
}

/// Segments of `c`'s pg_wal that PostgreSQL calls archived (`.done`).
fn done_segments(c: &Cluster) -> Vec<String> {
    let status = c.data_dir().join("pg_wal/archive_status");
    let mut v: Vec<String> = std::fs::read_dir(&status)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".done").map(str::to_string))
        .filter(|n| n.len() == 24)
        .collect();
    v.sort();
    v
}

/// What every async story ends with: nothing failed (unless allowed),
/// every segment PostgreSQL calls archived is in the repository with the
/// very content the server wrote, `wal verify` finds no gap and no damage,
/// and every acknowledgement in the spool is for an object that is there.
fn assert_all_archived_identical(c: &Cluster, repo: &RepoArgs) -> usize {
    let last = c.switch_wal();
    c.wait_archived(&last, Duration::from_secs(180));
    let archived = archived_checksums(repo);
    let done = done_segments(c);
    assert!(done.len() >= 3, "only {} segments archived", done.len());
    for name in &done {
        let file = c.data_dir().join("pg_wal").join(name);
        let want = archived.get(name).unwrap_or_else(|| panic!("{name} is .done but not in the repository"));
        assert_eq!(&b3_file(&file), want, "{name}: the repository holds other content than the server wrote");
    }
    let out = repo.dbb(&["wal", "verify"]).assert_success();
    assert!(!out.stdout.contains("GAP"), "{}", out.stdout);
    // No acknowledgement for something not durable.
    let acks = spool_part(c).join("ack");
    for e in std::fs::read_dir(&acks).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if let Some(name) = n.strip_suffix(".ok").filter(|n| !n.starts_with('.')) {
            let ack: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            let stored = archived.get(name).unwrap_or_else(|| panic!("ack {n} for a segment not in the repository"));
            assert_eq!(ack["checksum"].as_str().unwrap(), stored, "ack {n}");
        }
    }
    done.len()
}

/// pgbench for `secs` at full speed through `--async --jobs 4`.
fn pgbench_story(version: PgVersion, repo: RepoArgs) {
    let c = async_cluster(version, &repo, "--jobs 4");
    pgbench(&c, &["-i", "-s", "5", "-q"]);
    pgbench(&c, &["-T", "20", "-c", "4", "-j", "2", "-n"]);
    let n = assert_all_archived_identical(&c, &repo);
    let (archived, failed, _) = archiver(&c);
    eprintln!("archived_count {archived}, in the repository {}", archived_checksums(&repo).len());
    assert_eq!(failed, 0, "pg_stat_archiver reports failures:\n{}", c.log_tail(30));
    // The worker did the pushing: it logged its start, and acknowledged.
    let log = std::fs::read_to_string(spool_part(&c).join("worker.log")).unwrap();
    assert!(log.contains("archive worker") && log.contains("started"), "{log}");
    assert!(std::fs::read_dir(spool_part(&c).join("ack")).unwrap().count() > 0);
    // pitr status reads the queue of an async archive_command.
    let v = json(&pitr(&c, &["status", "--json"]).args(&repo.0).assert_success());
    assert_eq!(v["verdict"], "ok", "{}", findings(&v));
    assert_eq!(v["async_queue"]["unacknowledged"], 0, "{}", v["async_queue"]);
    eprintln!("PostgreSQL {version}: {n} segments archived asynchronously");
}

#[test]
fn pgbench_through_async_archiving_arrives_byte_identical_local_pg15() {
    let d = TestDir::new();
    pgbench_story(PgVersion::V15, RepoArgs::local(&d.join("repo")));
}

#[test]
fn pgbench_through_async_archiving_arrives_byte_identical_local_pg18() {
    let d = TestDir::new();
    pgbench_story(PgVersion::V18, RepoArgs::local(&d.join("repo")));
}

fn garage_config(g: &Garage, d: &TestDir, prefix: &str) -> PathBuf {
    private_file(d, "dbbackup.toml", g.config_toml(prefix))
}

#[test]
fn pgbench_through_async_archiving_arrives_byte_identical_garage_pg15() {
    let g = Garage::single();
    let d = TestDir::new();
    pgbench_story(PgVersion::V15, RepoArgs::config(&garage_config(&g, &d, "async/pg15")));
}

#[test]
fn pgbench_through_async_archiving_arrives_byte_identical_garage_pg18() {
    let g = Garage::single();
    let d = TestDir::new();
    pgbench_story(PgVersion::V18, RepoArgs::config(&garage_config(&g, &d, "async/pg18")));
}

/// The pid in the spool's worker.pid, once a worker other than `not` runs.
fn wait_worker_pid(c: &Cluster, not: Option<&str>, timeout: Duration) -> String {
    let start = std::time::Instant::now();
    loop {
        let pid = std::fs::read_to_string(spool_part(c).join("worker.pid")).unwrap_or_default().trim().to_string();
        if !pid.is_empty() && Some(pid.as_str()) != not && Path::new(&format!("/proc/{pid}")).exists() {
            return pid;
        }
        assert!(start.elapsed() < timeout, "no new archive worker within {timeout:?}\n{}", c.log_tail(20));
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether the local repository holds a temporary object (a push under way).
fn pushing(repo: &Path) -> bool {
    let wal = repo.join("wal");
    std::fs::read_dir(&wal).into_iter().flatten().flatten().any(|d| {
        std::fs::read_dir(d.path())
            .into_iter()
            .flatten()
            .flatten()
            .any(|f| f.file_name().to_string_lossy().starts_with(".tmp."))
    })
}

/// kill -9 of the worker, three times while pgbench runs (aimed at a push
/// under way): nothing is lost, nothing is acknowledged that is not
/// durable, and PostgreSQL's calls never fail (a call that sees its worker
/// gone starts another).
fn killed_worker_story(version: PgVersion) {
    let d = TestDir::new();
    let repo_dir = d.join("repo");
    let repo = RepoArgs::local(&repo_dir);
    // A slow codec level keeps pushes long enough to be hit.
    let c = async_cluster(version, &repo, "--jobs 2 --compress-level=12");
    pgbench(&c, &["-i", "-s", "5", "-q"]);
    let mut bench = c.bin_cmd("pgbench");
    bench
        .args(["-h", &c.socket_dir().display().to_string(), "-p", &c.port().to_string(), "-U", "postgres"])
        .args(["-T", "25", "-c", "4", "-j", "2", "-n", "postgres"]);
    let bench = std::thread::spawn(move || bench.timeout(Duration::from_secs(120)).assert_success());
    let mut last: Option<String> = None;
    let mut mid_push = 0;
    for _ in 0..3 {
        let pid = wait_worker_pid(&c, last.as_deref(), Duration::from_secs(60));
        // Aim at a push under way (not more than a few seconds' wait).
        let start = std::time::Instant::now();
        while !pushing(&repo_dir) && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        mid_push += usize::from(pushing(&repo_dir));
        Cmd::new("kill").args(["-9", &pid]).as_root().assert_success();
        last = Some(pid);
        // The next call replaces it.
        c.sql("INSERT INTO pgbench_history SELECT 1, 1, 1, 1, now() FROM generate_series(1, 1000)");
        c.switch_wal();
    }
    bench.join().unwrap();
    wait_worker_pid(&c, last.as_deref(), Duration::from_secs(60));
    let n = assert_all_archived_identical(&c, &repo);
    let (_, failed, _) = archiver(&c);
    assert_eq!(failed, 0, "a killed worker made PostgreSQL's calls fail:\n{}", c.log_tail(30));
    eprintln!("PostgreSQL {version}: {n} segments, 3 workers killed ({mid_push} mid-push)");
}

#[test]
fn killed_worker_loses_nothing_and_acknowledges_nothing_undurable_pg15() {
    killed_worker_story(PgVersion::V15);
}

#[test]
fn killed_worker_loses_nothing_and_acknowledges_nothing_undurable_pg18() {
    killed_worker_story(PgVersion::V18);
}

/// Garage stopped for a minute under a steady stream of segments: nothing can
/// be stored, PostgreSQL's calls fail with the cause (failed_count grows),
/// then once Garage is back everything catches up, with no gap.
fn store_outage_story(version: PgVersion) {
    let mut g = Garage::single();
    let d = TestDir::new();
    let repo = RepoArgs::config(&garage_config(&g, &d, &format!("outage/pg{version}")));
    let c = async_cluster(version, &repo, "--jobs 4");
    make_archived_segment(&c);
    g.stop_node(0);
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        c.sql("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 20000) g");
        c.switch_wal();
        std::thread::sleep(Duration::from_secs(2));
    }
    let (_, failed, _) = archiver(&c);
    let log = c.log_tail(400);
    g.start_node(0);
    assert!(failed > 0, "no archive call failed while the store was down:\n{log}");
    // The call reads the repository's metadata itself (its ID binds the
    // spool), so it fails on the store's error, or on the worker's.
    assert!(
        log.contains("dbbackup: error: wal archive 0000000")
            && (log.contains("cannot reach the store") || log.contains("the archive worker could not store it")),
        "the calls did not report the store's failure:\n{log}"
    );
    assert_all_archived_identical(&c, &repo);
    let (_, failed_after, _) = archiver(&c);
    eprintln!("PostgreSQL {version}: {failed} failed calls during the outage, {failed_after} in all; caught up");
}

#[test]
fn store_outage_fails_the_calls_then_everything_catches_up_pg15() {
    store_outage_story(PgVersion::V15);
}

#[test]
fn store_outage_fails_the_calls_then_everything_catches_up_pg18() {
    store_outage_story(PgVersion::V18);
}

/// The worker's failure reaches PostgreSQL's call for that segment (exit
/// non-zero, the cause in the server log) and `pitr status`; fixed, the
/// worker's retry lets the next call succeed.
#[test]
fn worker_failure_reaches_the_call_and_pitr_status() {
    let d = TestDir::new();
    let repo_dir = d.join("repo");
    let repo = RepoArgs::local(&repo_dir);
    let c = async_cluster(PgVersion::V15, &repo, "--jobs 2");
    make_archived_segment(&c);
    // The repository's WAL directories become read-only for the server's user.
    Cmd::new("chmod").args(["-R", "a-w"]).arg(repo_dir.join("wal")).as_root().assert_success();
    c.sql("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 1000)");
    let name = c.switch_wal();
    wait_for_archive_failure(&c);
    let log = c.log_tail(50);
    assert!(
        log.contains(&format!("dbbackup: error: wal archive {name}: the archive worker could not store it"))
            && log.contains("Permission denied")
            && log.contains("worker log:"),
        "{log}"
    );
    let v = json(&pitr(&c, &["status", "--json"]).args(&repo.0).output());
    let q = &v["async_queue"];
    assert!(q["unacknowledged"].as_u64().unwrap() >= 1, "{q}");
    assert_eq!(q["oldest_unacknowledged"], name.as_str(), "{q}");
    assert!(q["errors"][0]["error"].as_str().unwrap().contains("Permission denied"), "{q}");
    let f = findings(&v);
    assert!(f.contains("the asynchronous archive worker cannot store") && f.contains(&name), "{f}");
    let text = pitr(&c, &["status"]).args(&repo.0).output();
    assert!(
        text.stdout.contains("async queue:") && text.stdout.contains(&format!("(oldest {name})")),
        "{}",
        text.stdout
    );

    Cmd::new("chmod").args(["-R", "u+w"]).arg(repo_dir.join("wal")).as_root().assert_success();
    c.wait_archived(&name, Duration::from_secs(90));
    assert_all_archived_identical(&c, &repo);
}

/// A data directory carrying another cluster's spool (copied along): the
/// call refuses it, naming the fix, and nothing is called archived; once
/// the stale spool is removed, archiving goes on.
#[test]
fn stale_spool_of_another_cluster_is_refused() {
    let d = TestDir::new();
    let repo = RepoArgs::local(&d.join("repo"));
    let c = async_cluster(PgVersion::V15, &repo, "");
    c.dir().write(
        "data/dbbackup_spool/archive/owner.json",
        r#"{"system_identifier":"7000000000000000001","repository_id":"someone-else"}"#,
    );
    c.sql("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 1000)");
    let name = c.switch_wal();
    wait_for_archive_failure(&c);
    let log = c.log_tail(50);
    assert!(
        log.contains(&format!("dbbackup: error: wal archive {name}: spool"))
            && log.contains("belongs to cluster 7000000000000000001 and repository someone-else")
            && log.contains("remove")
            && log.contains("--spool-dir"),
        "{log}"
    );
    let (archived, _, _) = archiver(&c);
    assert_eq!(archived, 0, "a segment was called archived through a stale spool");
    assert!(archived_checksums(&repo).is_empty());
    let v = json(&pitr(&c, &["status", "--json"]).args(&repo.0).output());
    assert_eq!(v["verdict"], "error");
    assert!(findings(&v).contains("belongs to cluster 7000000000000000001"), "{}", findings(&v));

    std::fs::remove_dir_all(c.data_dir().join("dbbackup_spool/archive")).unwrap();
    c.wait_archived(&name, Duration::from_secs(90));
    assert!(archived_checksums(&repo).contains_key(&name));
}

/// Two workers never run for one spool: a second one started by hand
/// exits at once, naming the one that runs.
#[test]
fn a_second_worker_exits_at_once() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).arg("--pgdata").arg(c.data_dir()).assert_success();
    let worker = |idle: &str| {
        let mut w = dbb(["wal", "archive-worker", "--repo"]);
        w.arg(&repo)
            .arg("--pg-wal")
            .arg(c.data_dir().join("pg_wal"))
            .arg("--spool-dir")
            .arg(c.data_dir().join("dbbackup_spool"))
            .args(["--system-identifier", &c.system_identifier().to_string(), "--idle-exit", idle]);
        w
    };
    let mut first = worker("6");
    let first = std::thread::spawn(move || first.assert_success());
    let pid = wait_worker_pid(&c, None, Duration::from_secs(30));
    let start = std::time::Instant::now();
    let out = worker("6").assert_success();
    assert!(start.elapsed() < Duration::from_secs(3), "the second worker took {:?}", start.elapsed());
    assert!(
        out.stderr.contains(&format!("another archive worker (pid {pid}) holds")) && out.stderr.contains("worker.lock"),
        "{}",
        out.stderr
    );
    let out = first.join().unwrap();
    assert!(out.stderr.contains("exits: nothing ready for 6 s"), "{}", out.stderr);
}

/// Small edges: a segment outside pg_wal is archived in the call (with a
/// warning that --async does nothing there); the async options need --async.
#[test]
fn async_outside_pg_wal_archives_in_the_call_and_options_need_async() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let repo = d.join("repo");
    c.sql("CREATE TABLE f(i int); INSERT INTO f SELECT generate_series(1, 1000)");
    let name = c.switch_wal();
    let copy = d.join(&name);
    std::fs::copy(c.data_dir().join("pg_wal").join(&name), &copy).unwrap();
    chown_to_run_user(&copy);
    let out = archive_cmd(&copy, Some(&name), &repo).arg("--async").assert_success();
    assert!(
        out.stderr.contains("--async needs the segment where PostgreSQL keeps it")
            && out.stderr.contains("archived it in the call"),
        "{}",
        out.stderr
    );
    object_for(&repo, &name);
    for extra in [["--jobs", "2"], ["--spool-dir", "/tmp"]] {
        let out = archive_cmd(&copy, Some(&name), &repo).args(extra).assert_code(2);
        assert!(out.stderr.contains("--async"), "{}", out.stderr);
    }
}

/// `pitr enable --async --jobs 2` writes them into archive_command, the
/// round trip works through the worker, and `pitr status` shows the queue.
#[test]
fn pitr_enable_async_writes_the_command_and_status_shows_the_queue() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let repo = d.join("repo");
    let out = pitr(&c, &["enable", "--repo", &repo.display().to_string(), "--async", "--jobs", "2", "--restart"])
        .assert_success();
    assert!(out.stdout.contains("archiving works"), "{}", out.stdout);
    let cmd = c.sql("SHOW archive_command");
    assert!(cmd.contains(" --async --jobs 2"), "{cmd}");
    make_archived_segment(&c);
    assert!(spool_part(&c).join("ack").is_dir(), "the worker did not acknowledge");
    let v = json(&pitr(&c, &["status", "--json"]).assert_success());
    assert_eq!(v["verdict"], "ok", "{}", findings(&v));
    assert_eq!(v["async_queue"]["unacknowledged"], 0, "{v}");
    let text = pitr(&c, &["status"]).assert_success();
    assert!(text.stdout.contains("async queue:     0 ready, 0 not yet acknowledged"), "{}", text.stdout);
}

/// A backlog of ready segments (archiving was broken, now fixed): the
/// worker drains it by itself, 4 at a time, within 64 MiB, and once
/// archive_command is the asynchronous one PostgreSQL's calls find every
/// segment acknowledged.
#[test]
fn worker_drains_a_backlog_within_64_mib() {
    let d = TestDir::new();
    let repo_dir = d.join("repo");
    let mut o = ClusterOptions::new(PgVersion::V15);
    o.extra_conf = vec![
        "archive_mode = on".into(),
        "archive_command = 'false'".into(),
        "wal_keep_size = '4GB'".into(),
        "max_wal_size = '1GB'".into(),
    ];
    let c = Cluster::new(o);
    dbb(["repo", "init", "--repo"]).arg(&repo_dir).arg("--pgdata").arg(c.data_dir()).assert_success();
    c.sql("CREATE TABLE f(i int, t text)");
    for _ in 0..12 {
        c.sql("INSERT INTO f SELECT g, md5(g::text) FROM generate_series(1, 100000) g");
        c.switch_wal();
    }
    let status = c.data_dir().join("pg_wal/archive_status");
    let ready: Vec<String> = std::fs::read_dir(&status)
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().strip_suffix(".ready").map(str::to_string))
        .collect();
    assert!(ready.len() >= 12, "{ready:?}");

    let out = Cmd::new("/usr/bin/time")
        .args(["-f", "maxrss_kb=%M"])
        .arg(bin())
        .args(["wal", "archive-worker", "--repo"])
        .arg(&repo_dir)
        .arg("--pg-wal")
        .arg(c.data_dir().join("pg_wal"))
        .arg("--spool-dir")
        .arg(c.data_dir().join("dbbackup_spool"))
        .args(["--system-identifier", &c.system_identifier().to_string(), "--jobs", "4", "--idle-exit", "1"])
        .assert_success();
    let rss_kb: u64 = out.stderr.rsplit("maxrss_kb=").next().unwrap().trim().parse().unwrap();
    eprintln!("worker drained {} segments, peak RSS {} KiB", ready.len(), rss_kb);
    assert!(rss_kb <= 64 * 1024, "peak RSS {rss_kb} KiB with --jobs 4\n{}", out.stderr);
    for n in &ready {
        assert!(spool_part(&c).join("ack").join(format!("{n}.ok")).is_file(), "{n} not acknowledged");
    }
    // Nothing in archive_status was touched by the worker.
    for n in &ready {
        assert!(status.join(format!("{n}.ready")).is_file(), "{n}.ready was changed");
    }

    c.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{} wal archive %p %f --repo {} --async'",
        bin().display(),
        repo_dir.display()
    ));
    c.sql("SELECT pg_reload_conf()");
    assert_all_archived_identical(&c, &RepoArgs::local(&repo_dir));
}

/// PostgreSQL's archiver stopped (SIGSTOP) while the worker acknowledges
/// a new segment: the state between the worker's ack and the call.
struct PausedArchiver {
    pid: String,
    seg: String,
    ack: PathBuf,
}

impl PausedArchiver {
    /// Pauses the archiver, finishes a segment, waits for its ack.
    fn until_acked(c: &Cluster) -> PausedArchiver {
        let pid = c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'archiver'");
        let p = PausedArchiver { pid, seg: String::new(), ack: PathBuf::new() };
        p.signal("-STOP");
        c.sql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)");
        let seg = c.switch_wal();
        let ack = spool_part(c).join(format!("ack/{seg}.ok"));
        let p = PausedArchiver { seg, ack, ..p };
        let started = std::time::Instant::now();
        while !p.ack.exists() {
            if started.elapsed() > Duration::from_secs(60) {
                p.signal("-CONT");
                panic!("no acknowledgement of {} from the worker", p.seg);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    fn signal(&self, sig: &str) {
        assert!(std::process::Command::new("kill").args([sig, &self.pid]).status().unwrap().success());
    }

    fn resume(&self) {
        self.signal("-CONT");
    }
}

/// An acknowledgement is a note, the repository the truth: the worker acks
/// a segment while PostgreSQL's archiver is paused, the object is removed
/// (a snapshot rolled back, a hand), then the archiver's call comes. It
/// must store the segment again, never report it durable from the ack.
#[test]
fn an_acknowledged_segment_removed_from_the_repository_is_stored_again() {
    let d = TestDir::new();
    let repo_dir = d.join("repo");
    let repo = RepoArgs::local(&repo_dir);
    let c = async_cluster(PgVersion::V15, &repo, "");
    // The first call starts the worker, which stays for its quiet period.
    make_archived_segment(&c);
    let paused = PausedArchiver::until_acked(&c);
    let seg = paused.seg.clone();
    let objects = |dir: &Path| -> Vec<PathBuf> {
        walk(dir).into_iter().filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(&seg)).collect()
    };
    let gone = objects(&repo_dir.join("wal"));
    assert_eq!(gone.len(), 1, "{gone:?}");
    std::fs::remove_file(&gone[0]).unwrap();
    paused.resume();
    c.wait_archived(&seg, Duration::from_secs(60));
    assert_eq!(objects(&repo_dir.join("wal")).len(), 1, "{seg} was not stored again");
    repo.dbb(&["wal", "verify"]).assert_success();
}

/// An acknowledgement whose file identity is not this file's (here: an
/// ack edited to another checksum and no identity) is checked by hashing
/// the file: other content is not trusted, the call archives it itself
/// (the repository's rules find the same content there and succeed).
#[test]
fn an_acknowledgement_for_other_content_is_not_trusted() {
    let d = TestDir::new();
    let repo_dir = d.join("repo");
    let repo = RepoArgs::local(&repo_dir);
    let c = async_cluster(PgVersion::V15, &repo, "");
    make_archived_segment(&c);
    let paused = PausedArchiver::until_acked(&c);
    let (seg, ack) = (paused.seg.clone(), paused.ack.clone());
    let mut v: Value = serde_json::from_slice(&std::fs::read(&ack).unwrap()).unwrap();
    // The worker noted which file it read.
    assert!(v["file"]["ino"].as_u64().is_some(), "{v}");
    v["checksum"] = Value::String("0".repeat(64));
    v.as_object_mut().unwrap().remove("file");
    std::fs::write(&ack, serde_json::to_vec(&v).unwrap()).unwrap();
    paused.resume();
    c.wait_archived(&seg, Duration::from_secs(60));
    let log = c.log_tail(40);
    assert!(log.contains(&format!("the acknowledgement of {seg} is for other content")), "{log}");
    assert_all_archived_identical(&c, &repo);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The worker leaves when its server stops (well before its 30 s quiet
/// period): nothing will ask for what is ready, and a failing segment must
/// not be retried for ever behind a stopped server.
#[test]
fn the_worker_leaves_when_its_server_stops() {
    let d = TestDir::new();
    let repo = RepoArgs::local(&d.join("repo"));
    let c = async_cluster(PgVersion::V15, &repo, "");
    make_archived_segment(&c);
    let pid = wait_worker_pid(&c, None, Duration::from_secs(30));
    c.stop();
    let start = std::time::Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(start.elapsed() < Duration::from_secs(15), "worker {pid} still runs after its server stopped");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::read_to_string(spool_part(&c).join("worker.log")).unwrap_or_default();
    assert!(log.contains("stopped"), "{log}");
}

/// The DBA moves archiving to a new repository (the old one broke) with
/// `pitr enable --repo NEW --async`: the spool follows the cluster. The
/// first call takes the spool over, the worker of the old repository
/// (still retrying there) leaves, a new one pushes into the new
/// repository, and everything waiting arrives there.
#[test]
fn a_cluster_pointed_at_a_new_repository_takes_its_spool_along() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let (old, new) = (d.join("old"), d.join("new"));
    pitr(&c, &["enable", "--repo", &old.display().to_string(), "--async", "--jobs", "2", "--restart"]).assert_success();
    make_archived_segment(&c);
    let old_id =
        json(&dbb(["repo", "info", "--json", "--repo"]).arg(&old).assert_success())["id"].as_str().unwrap().to_string();
    // The old repository breaks: the worker keeps retrying there.
    Cmd::new("chmod").args(["-R", "a-w"]).arg(old.join("wal")).as_root().assert_success();
    c.sql("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
    let stuck = c.switch_wal();
    wait_for_archive_failure(&c);
    let old_worker = wait_worker_pid(&c, None, Duration::from_secs(30));

    let out = pitr(&c, &["enable", "--repo", &new.display().to_string(), "--async", "--jobs", "2"]).assert_success();
    assert!(out.stdout.contains("archiving works"), "{}\n{}", out.stdout, out.stderr);
    c.wait_archived(&stuck, Duration::from_secs(90));
    let start = std::time::Instant::now();
    while Path::new(&format!("/proc/{old_worker}")).exists() {
        assert!(start.elapsed() < Duration::from_secs(15), "the old repository's worker {old_worker} still runs");
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_args = RepoArgs::local(&new);
    let new_id = json(&new_args.dbb(&["repo", "info", "--json"]).assert_success())["id"].as_str().unwrap().to_string();
    let owner: Value = serde_json::from_slice(&std::fs::read(spool_part(&c).join("owner.json")).unwrap()).unwrap();
    assert_eq!(owner["repository_id"], new_id.as_str(), "{owner}");
    let log = std::fs::read_to_string(spool_part(&c).join("worker.log")).unwrap();
    assert!(log.contains(&format!("exits: the spool is repository {new_id}'s now")), "{log}");
    // What waited, and what comes next, is in the new repository as written.
    let next = make_archived_segment(&c);
    let archived = archived_checksums(&new_args);
    for name in [&stuck, &next] {
        let want = archived.get(name).unwrap_or_else(|| panic!("{name} is not in the new repository: {archived:?}"));
        assert_eq!(&b3_file(&c.data_dir().join("pg_wal").join(name)), want, "{name}");
    }
    assert!(!archived_checksums(&RepoArgs::local(&old)).contains_key(&stuck));
    let v = json(&pitr(&c, &["status", "--json"]).assert_success());
    assert_ne!(v["verdict"], "error", "{}", findings(&v));
    assert!(!findings(&v).contains(&old_id), "{}", findings(&v));
    Cmd::new("chmod").args(["-R", "u+w"]).arg(old.join("wal")).as_root().assert_success();
}

/// `pitr enable --async` refuses a spool another cluster left before it
/// changes anything (every call would be refused), naming the fix; and a
/// --spool-dir inside pg_wal.
#[test]
fn pitr_enable_async_refuses_another_clusters_spool_before_changing_anything() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let repo = d.join("repo");
    c.dir().write(
        "data/dbbackup_spool/archive/owner.json",
        r#"{"system_identifier":"7000000000000000001","repository_id":"someone-else"}"#,
    );
    let out = pitr(&c, &["enable", "--repo", &repo.display().to_string(), "--async", "--restart"]).assert_code(1);
    assert!(
        out.stderr.contains("belongs to cluster 7000000000000000001, not to this cluster")
            && out.stderr.contains("give this cluster its own --spool-dir"),
        "{}",
        out.stderr
    );
    assert_eq!(c.sql("SHOW archive_mode"), "off", "pitr enable changed settings before refusing");
    assert!(!repo.exists(), "pitr enable created the repository before refusing");
    let inside = c.data_dir().join("pg_wal/spool").display().to_string();
    let out =
        pitr(&c, &["enable", "--repo", &repo.display().to_string(), "--async", "--spool-dir", &inside]).assert_code(1);
    assert!(out.stderr.contains("is inside pg_wal"), "{}", out.stderr);
    // Without --async the spool does not matter.
    pitr(&c, &["enable", "--repo", &repo.display().to_string(), "--restart"]).assert_success();
}

/// The oldest ready segment keeps failing while newer ones are stored
/// (here: the repository is read-only for the server's user, and root
/// stores the newer ones by hand, as a worker does when the oldest fails
/// alone): `pitr status` reports the failing segment, not a gap with "take
/// a new base backup" (nothing is lost: the segment waits in pg_wal).
#[test]
fn a_failing_oldest_segment_is_a_queue_not_a_gap() {
    let d = TestDir::new();
    let repo_dir = d.join("repo");
    let repo = RepoArgs::local(&repo_dir);
    let c = async_cluster(PgVersion::V15, &repo, "--jobs 2");
    make_archived_segment(&c);
    Cmd::new("chmod").args(["-R", "a-w"]).arg(repo_dir.join("wal")).as_root().assert_success();
    let mut names = Vec::new();
    for _ in 0..3 {
        c.sql("INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
        names.push(c.switch_wal());
    }
    wait_for_archive_failure(&c);
    for n in &names[1..] {
        let mut by_hand = dbb(["wal", "archive"]);
        by_hand.arg(c.data_dir().join("pg_wal").join(n)).arg(n).arg("--repo").arg(&repo_dir).as_root();
        by_hand.assert_success();
    }
    for f in walk(&repo_dir.join("wal")) {
        chown_to_run_user(&f);
    }
    let blocked = &names[0];
    let v = json(&pitr(&c, &["status", "--json"]).args(&repo.0).output());
    let f = findings(&v);
    assert!(!f.contains("gap") && !f.contains("take a new base backup"), "{f}");
    assert_eq!(v["repository"]["gaps"], serde_json::json!([]), "{v}");
    assert!(f.contains("the asynchronous archive worker cannot store") && f.contains(blocked.as_str()), "{f}");
    // Fixed: everything arrives, and nothing was lost.
    Cmd::new("chmod").args(["-R", "u+w"]).arg(repo_dir.join("wal")).as_root().assert_success();
    assert_all_archived_identical(&c, &repo);
}
