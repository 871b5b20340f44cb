//! Regression tests for `restore pitr` (and the retention and logging
//! around it): each test pins down a bug that was once there, on real
//! PostgreSQL 15 servers.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A cluster archiving into `repo` with table `t(i int)`, one archived
/// segment and a backup; returns the cluster and the backup ID.
fn cluster_with_backup(repo: &Path) -> (Cluster, String) {
    let c = archiving_cluster(PgVersion::V15, None, repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let id = backup(&c, repo, &[]);
    (c, id)
}

/// `restore pitr --repo R --target-dir D <args>` (nothing started).
fn restore_cmd(repo: &Path, dir: &Path, args: &[&str]) -> Cmd {
    let mut cmd = dbb(["restore", "pitr", "--repo"]);
    cmd.arg(repo).arg("--target-dir").arg(dir).args(args);
    cmd
}

/// Parses `X/Y` into a 64-bit position.
fn lsn(s: &str) -> u64 {
    let (hi, lo) = s.trim().split_once('/').unwrap_or_else(|| panic!("not an LSN: {s:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// `restore pitr --json --auto-start --monitor --port <free> --repo R
/// --target-dir D <args>` for a backup of `c` (whose socket directory the
/// restored server inherits).
fn restore_started(c: &Cluster, repo: &Path, dir: &Path, args: &[&str]) -> Restored {
    let port = free_port();
    let out = restore_cmd(repo, dir, &["--json", "--auto-start", "--monitor", "--port", &port.to_string()])
        .args(args)
        .timeout(Duration::from_secs(300))
        .output();
    Restored { out, dir: dir.to_path_buf(), sock: c.socket_dir().to_path_buf(), port, bindir: c.bindir() }
}

/// Every file under `dir` with its BLAKE3.
fn tree_hashes(dir: &Path) -> BTreeMap<PathBuf, String> {
    fn walk(d: &Path, out: &mut BTreeMap<PathBuf, String>) {
        for e in std::fs::read_dir(d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())).flatten() {
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(&p, out);
            } else {
                out.insert(p.clone(), blake3::hash(&std::fs::read(&p).unwrap()).to_hex().to_string());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &mut out);
    out
}

// ---------------------------------------------------------------------------
// 1. `--force` never touches a non-empty tablespace location.

#[test]
fn force_never_replaces_a_live_tablespace_and_tablespace_map_relocates_it() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    let ts = d.mkdir("ts");
    c.sql(&format!("CREATE TABLESPACE ts LOCATION '{}'", ts.display()));
    // No autovacuum: the live files must only change when we change them.
    c.sql("CREATE TABLE tt(i int) WITH (autovacuum_enabled = false) TABLESPACE ts");
    c.sql("INSERT INTO tt SELECT generate_series(1, 1000)");
    make_archived_segment(&c);
    backup(&c, &repo, &[]);
    c.sql("INSERT INTO tt SELECT generate_series(1001, 1500)");
    // Set the hint bits now and flush everything, so the files stay as they are.
    assert_eq!(c.sql("SELECT count(*) FROM tt"), "1500");
    c.sql("CHECKPOINT");
    finish_wal(&c);
    let live = tree_hashes(&ts);
    assert!(!live.is_empty(), "the tablespace holds the table's files");

    let target = d.join("restored");
    let out = restore_cmd(&repo, &target, &["--force"]).assert_code(1);
    assert!(out.stderr.contains("dbbackup: error:"), "{}", out.stderr);
    assert!(
        out.stderr.contains("tablespace")
            && out.stderr.contains("not empty")
            && out.stderr.contains(&ts.display().to_string())
            && out.stderr.contains(&format!("--tablespace-map {}=", ts.display())),
        "{}",
        out.stderr
    );
    assert_eq!(tree_hashes(&ts), live, "the live tablespace was written to");
    assert_eq!(c.sql("SELECT count(*) FROM tt"), "1500");
    assert!(!target.exists(), "the target directory was created: {:?}", std::fs::read_dir(&target).ok());

    // Relocated, it restores and starts next to the live cluster.
    let new = d.mkdir("ts-new");
    let map = format!("{}={}", ts.display(), new.display());
    let r = restore_started(&c, &repo, &target, &["--tablespace-map", &map, "--archive-mode", "off", "--force"]);
    r.promoted();
    assert_eq!(r.sql("SELECT count(*) FROM tt"), "1500", "{}", r.describe());
    assert_eq!(
        r.sql("SELECT pg_tablespace_location(oid) FROM pg_tablespace WHERE spcname = 'ts'"),
        new.display().to_string()
    );
    assert!(!tree_hashes(&new).is_empty());
    r.stop();
    assert_eq!(tree_hashes(&ts), live, "the live tablespace was written to");
    assert_eq!(c.sql("SELECT count(*) FROM tt"), "1500");
}

// ---------------------------------------------------------------------------
// 2. A history file whose switch points go backwards.

#[test]
fn history_with_switch_points_going_backwards_is_followed() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let (c, _) = cluster_with_backup(&repo);
    c.sql("INSERT INTO t VALUES (1)");
    let x1 = c.sql("INSERT INTO t VALUES (2) RETURNING txid_current()");
    c.sql("INSERT INTO t VALUES (3)");
    let x2 = c.sql("INSERT INTO t VALUES (4) RETURNING txid_current()");
    c.sql("INSERT INTO t VALUES (5)");
    finish_wal(&c);
    c.stop();

    // Timeline 2 branches off after X2 and archives into the repository.
    let r2 = restore_started(&c, &repo, &d.join("r2"), &["--target-xid", &x2, "--archive-mode", "preserve"]);
    let v = r2.promoted();
    assert_eq!(v["recovery"]["timeline"], 2, "{}", r2.describe());
    assert_eq!(r2.sql(ROWS), "1,2,3,4");
    assert!(r2.finish_wal().starts_with("00000002"));
    r2.wait_object(&repo, "00000002.history");
    r2.stop();
    drop(r2);

    // Back to X1, before timeline 2's branch point, following the latest
    // timeline (2): the new timeline 3 branches from 2 below 2's own branch point.
    let r3 = restore_started(&c, &repo, &d.join("r3"), &["--target-xid", &x1, "--archive-mode", "preserve"]);
    let v = r3.promoted();
    assert_eq!(v["plan"]["target_timeline"], 2, "{}", r3.describe());
    assert_eq!(v["recovery"]["timeline"], 3, "{}", r3.describe());
    assert_eq!(r3.sql(ROWS), "1,2");
    r3.wait_object(&repo, "00000003.history");
    assert!(r3.finish_wal().starts_with("00000003"));
    r3.stop();
    drop(r3);

    // The history file PostgreSQL wrote really goes backwards.
    let fetched = d.join("00000003.history");
    dbb(["wal", "fetch", "00000003.history"]).arg(&fetched).arg("--repo").arg(&repo).assert_success();
    let text = std::fs::read_to_string(&fetched).unwrap();
    let entries: Vec<(u32, u64)> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut f = l.split_whitespace();
            (f.next().unwrap().parse().unwrap(), lsn(f.next().unwrap()))
        })
        .collect();
    assert_eq!(entries.len(), 2, "{text}");
    assert_eq!((entries[0].0, entries[1].0), (1, 2), "{text}");
    assert!(entries[1].1 < entries[0].1, "switch points do not go backwards: {text}");

    let out = dbb(["wal", "timeline", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.lines().any(|l| l.split_whitespace().take(2).eq(["3", "2"])), "{}", out.stdout);
    let tl = json(&dbb(["wal", "timeline", "--json", "--repo"]).arg(&repo).assert_success());
    let t3 = tl["timelines"].as_array().unwrap().iter().find(|t| t["timeline"] == 3).unwrap_or_else(|| panic!("{tl}"));
    assert_eq!(t3["parent"], 2, "{tl}");
    assert_eq!(lsn(t3["switch_lsn"].as_str().unwrap()), entries[1].1, "{tl}");

    // The end of the archive, on timeline 3: exactly the rows of X1.
    let r4 = restore_started(&c, &repo, &d.join("r4"), &["--archive-mode", "off"]);
    let v = r4.promoted();
    assert_eq!(v["plan"]["target_timeline"], 3, "{}", r4.describe());
    assert_eq!(r4.sql(ROWS), "1,2", "{}", r4.describe());
}

// ---------------------------------------------------------------------------
// 3. A timeline with a history file but no segments.

#[test]
fn a_timeline_without_archived_segments_is_refused_naming_its_parent() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let (c, id) = cluster_with_backup(&repo);
    c.sql("INSERT INTO t VALUES (1)");
    c.sql("SELECT pg_create_restore_point('branch')");
    c.sql("INSERT INTO t VALUES (2)");
    finish_wal(&c);

    let r = restore_started(&c, &repo, &d.join("r1"), &["--target-name", "branch", "--archive-mode", "preserve"]);
    assert_eq!(r.promoted()["recovery"]["timeline"], 2, "{}", r.describe());
    r.wait_object(&repo, "00000002.history");
    r.stop();
    drop(r);
    // Whatever timeline 2 archived besides its history file goes.
    for p in wal_objects(&repo) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.starts_with("00000002") && !name.starts_with("00000002.history") {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let tl = json(&dbb(["wal", "timeline", "--json", "--repo"]).arg(&repo).assert_success());
    let t2 = tl["timelines"].as_array().unwrap().iter().find(|t| t["timeline"] == 2).unwrap_or_else(|| panic!("{tl}"));
    assert_eq!(t2["segments"], 0, "{tl}");
    // The timeline-2 segment holding the branch point.
    let switch = t2["switch_lsn"].as_str().unwrap();
    let seg = c.sql(&format!("SELECT file_name FROM pg_walfile_name_offset('{switch}')"));
    let missing = format!("00000002{}", &seg[8..]);

    let nowhere = d.join("nowhere");
    let out = restore_cmd(&repo, &nowhere, &[]).output();
    assert_ne!(out.status, 0, "{out:?}");
    assert!(out.stderr.contains("dbbackup: error:") && out.stderr.contains(&missing), "{missing}: {}", out.stderr);
    assert!(out.stderr.contains("--timeline 1"), "{}", out.stderr);
    assert!(!nowhere.exists(), "written before refusing");
    // The source, still on timeline 1, is told that a copy archived a newer
    // timeline into its repository.
    let v = json(&pitr(&c, &["status", "--json"]).output());
    assert_eq!(v["verdict"], "warning", "{}", findings(&v));
    assert!(findings(&v).contains("timeline 2, newer than this server's timeline 1"), "{}", findings(&v));

    let r = restore_started(&c, &repo, &d.join("tl1"), &["--timeline", "1", "--archive-mode", "off"]);
    let v = r.promoted();
    assert_eq!(v["plan"]["target_timeline"], 1, "{}", r.describe());
    assert_eq!(v["plan"]["source"], format!("backup {id}"));
    assert_eq!(r.sql(ROWS), "1,2");
}

// ---------------------------------------------------------------------------
// 4. `--monitor` reports an end-of-archive recovery that stopped early.

#[test]
fn monitor_reports_an_end_of_archive_recovery_that_stopped_at_a_missing_segment() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let (c, _) = cluster_with_backup(&repo);
    let mut segs = Vec::new();
    for i in 1..=3 {
        c.sql(&format!("INSERT INTO t VALUES ({i})"));
        segs.push(finish_wal(&c));
    }
    let dir = d.join("restored");
    let out = restore_cmd(&repo, &dir, &["--archive-mode", "off"]).assert_success();
    assert_eq!(out.stdout.trim(), dir.display().to_string());
    // Gone after the checks, before the server starts.
    std::fs::remove_file(object_for(&repo, &segs[1])).unwrap();

    let port = free_port();
    let out = dbb(["restore", "pitr", "--skip-extraction", "--auto-start", "--monitor", "--archive-mode", "off"])
        .args(["--port", &port.to_string(), "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&dir)
        .timeout(Duration::from_secs(300))
        .output();
    let r = Restored { out, dir: dir.clone(), sock: c.socket_dir().to_path_buf(), port, bindir: c.bindir() };
    assert_eq!(r.out.status, 1, "{}", r.describe());
    assert!(r.out.stderr.contains("NOT reached"), "{}", r.describe());
    assert!(r.out.stderr.contains("dbbackup: error: recovery did not reach"), "{}", r.describe());
    // It stopped where the archive broke off.
    assert_eq!(r.sql(ROWS), "1", "{}", r.describe());
}

/// The same without `--skip-extraction`: the segment goes after the checks
/// and the extraction, while the restored server starts.
#[test]
fn monitor_reports_a_segment_that_went_missing_after_the_checks() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let (c, _) = cluster_with_backup(&repo);
    let mut segs = Vec::new();
    for i in 1..=4 {
        c.sql(&format!("INSERT INTO t VALUES ({i})"));
        segs.push(finish_wal(&c));
    }
    let victim = object_for(&repo, &segs[2]);
    let dir = d.join("restored");
    let port = free_port();
    let mut cmd = restore_cmd(&repo, &dir, &["--auto-start", "--monitor", "--archive-mode", "off", "--port"]);
    cmd.arg(port.to_string()).timeout(Duration::from_secs(300));
    let running = std::thread::spawn(move || cmd.output());
    // recovery.signal is written after the extraction, just before pg_ctl
    // starts the server: it has yet to start and replay two segments.
    let start = Instant::now();
    while !dir.join("recovery.signal").exists() && !running.is_finished() {
        assert!(start.elapsed() < WAIT, "no recovery.signal in {}", dir.display());
        std::thread::sleep(Duration::from_millis(2));
    }
    std::fs::remove_file(&victim).unwrap();
    let out = running.join().unwrap();
    let r = Restored { out, dir: dir.clone(), sock: c.socket_dir().to_path_buf(), port, bindir: c.bindir() };
    assert_eq!(r.out.status, 1, "{}", r.describe());
    assert!(r.out.stderr.contains("NOT reached"), "{}", r.describe());
    assert!(r.out.stderr.contains("dbbackup: error: recovery did not reach end of archive"), "{}", r.describe());
    assert_eq!(r.sql(ROWS), "1,2", "{}", r.describe());
}

// ---------------------------------------------------------------------------
// 5. A target time in the future.

#[test]
fn a_future_target_time_is_refused_and_with_target_past_end_recovers_to_the_end() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let (c, _) = cluster_with_backup(&repo);
    c.sql("INSERT INTO t VALUES (1)");
    finish_wal(&c);
    c.sql("INSERT INTO t VALUES (2)");
    finish_wal(&c);
    let future = c.sql("SELECT now() + interval '1 hour'");

    let dir = d.join("restored");
    let out = restore_cmd(&repo, &dir, &["--target-time", &future]).assert_code(1);
    assert!(out.stderr.contains("in the future") && out.stderr.contains("--target-past-end"), "{}", out.stderr);
    assert!(!dir.exists());

    let r = restore_started(&c, &repo, &dir, &["--target-time", &future, "--target-past-end", "--archive-mode", "off"]);
    let v = r.promoted();
    assert_eq!(v["recovery"]["timeline"], 2, "{}", r.describe());
    assert!(r.out.stderr.contains("in the future"), "the override is said: {}", r.describe());
    assert_eq!(r.sql("SELECT pg_is_in_recovery()"), "f");
    assert_eq!(r.sql(ROWS), "1,2", "{}", r.describe());
}

// ---------------------------------------------------------------------------
// 6. `wal cleanup` expires the backups it makes unrestorable.

#[test]
fn wal_cleanup_expires_the_older_backup_and_restore_refuses_it() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let (c, old) = cluster_with_backup(&repo);
    c.sql("INSERT INTO t VALUES (1)");
    make_archived_segment(&c);
    std::thread::sleep(Duration::from_millis(1100));
    let new = backup(&c, &repo, &[]);
    assert_ne!(old, new);
    c.sql("INSERT INTO t VALUES (2)");
    finish_wal(&c);

    let out = dbb(["wal", "cleanup", "--retention-days", "0", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("marking backup {old} expired")), "{}", out.stdout);
    let list = json(&dbb(["backup", "list", "--json", "--repo"]).arg(&repo).assert_success());
    let status = |id: &str| {
        list.as_array().unwrap().iter().find(|b| b["id"] == id).unwrap_or_else(|| panic!("{id}: {list}"))["status"]
            .clone()
    };
    assert_eq!(status(&old), "expired", "{list}");
    assert_eq!(status(&new), "complete", "{list}");
    let out = dbb(["backup", "verify", &new, "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(": ok"), "{}", out.stdout);

    let dir = d.join("restored");
    let out = restore_cmd(&repo, &dir, &["--base-backup", &old]).assert_code(1);
    assert!(
        out.stderr.contains(&format!("backup {old} is expired")) && out.stderr.contains("not complete"),
        "{}",
        out.stderr
    );
    assert!(!dir.exists());
    // Without --base-backup, the newer one is taken.
    let out = restore_cmd(&repo, &dir, &["--json"]).assert_success();
    assert_eq!(json(&out)["plan"]["source"], format!("backup {new}"));

    let out = dbb(["backup", "expire", "--keep", "1", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("removing backup {old} (expired by wal cleanup)")), "{}", out.stdout);
    assert!(!repo.join(format!("backups/{old}")).exists());
    let list = json(&dbb(["backup", "list", "--json", "--repo"]).arg(&repo).assert_success());
    let ids: Vec<&str> = list.as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![new.as_str()]);
}

// ---------------------------------------------------------------------------
// 7. `--auto-start --port P` with P taken fails before extracting.

fn refuses_a_busy_port_before_extracting(repo: &Path, d: &TestDir, port: u16) {
    let dir = d.join(format!("busy-{port}"));
    let out = restore_cmd(repo, &dir, &["--auto-start", "--monitor", "--archive-mode", "off", "--port"])
        .arg(port.to_string())
        .assert_code(1);
    assert!(out.stderr.contains(&format!("port {port} is in use")), "{}", out.stderr);
    assert!(
        !dir.exists(),
        "extracted before the port check ({:?} entries in {}):\n{}",
        std::fs::read_dir(&dir).ok().map(|r| r.count()),
        dir.display(),
        out.stderr
    );
}

#[test]
fn a_busy_tcp_port_is_refused_before_extracting() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let (c, _) = cluster_with_backup(&repo);
    finish_wal(&c);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    refuses_a_busy_port_before_extracting(&repo, &d, port);
}

#[test]
fn the_source_clusters_own_port_is_refused_before_extracting() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let (c, _) = cluster_with_backup(&repo);
    finish_wal(&c);
    refuses_a_busy_port_before_extracting(&repo, &d, c.port());
    assert_eq!(c.sql("SELECT 1"), "1");
}

// ---------------------------------------------------------------------------
// 8. A failed extraction leaves nothing behind.

#[test]
fn a_damaged_backup_file_fails_the_restore_and_leaves_nothing_behind() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    c.sql("CREATE TABLE big AS SELECT g, md5(g::text) AS t FROM generate_series(1, 100000) g");
    make_archived_segment(&c);
    let id = backup(&c, &repo, &[]);
    finish_wal(&c);

    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join(format!("backups/{id}/manifest.json"))).unwrap())
            .unwrap();
    let victim = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["object"].as_str().is_some_and(|o| o.starts_with("data/")))
        .max_by_key(|f| f["stored_size"].as_u64().unwrap())
        .unwrap();
    let obj = repo.join(format!("backups/{id}/{}", victim["object"].as_str().unwrap()));
    let mut bytes = std::fs::read(&obj).unwrap();
    assert!(bytes.len() > 10_000, "{obj:?} is small: {}", bytes.len());
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&obj, &bytes).unwrap();

    // A new directory: removed again.
    let dir = d.join("restored");
    let out = restore_cmd(&repo, &dir, &[]).assert_code(1);
    assert!(
        out.stderr.contains(&format!("restore into {} failed", dir.display()))
            && out.stderr.contains("what was written is removed"),
        "{}",
        out.stderr
    );
    assert!(!dir.exists(), "left behind: {:?}", std::fs::read_dir(&dir).ok().map(|r| r.count()));

    // An empty directory that was there before: emptied again.
    let empty = d.mkdir("empty");
    let out = restore_cmd(&repo, &empty, &["--jobs", "4"]).assert_code(1);
    assert!(
        out.stderr.contains(&format!("restore into {} failed", empty.display()))
            && out.stderr.contains("what was written is removed"),
        "{}",
        out.stderr
    );
    let left: Vec<_> = std::fs::read_dir(&empty).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

// ---------------------------------------------------------------------------
// 9. `-q` prints nothing on stderr on success.

#[test]
fn quiet_backup_and_restore_print_nothing_on_stderr() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let out = dbb(["backup", "base", "--fast", "-q", "--repo"]).arg(&repo).args(c.conn_args()).assert_success();
    assert_eq!(out.stderr, "", "backup base -q");
    let id = out.stdout.lines().last().unwrap_or_default().trim().to_string();
    let list = json(&dbb(["backup", "list", "--json", "--repo"]).arg(&repo).assert_success());
    assert_eq!(list[0]["id"], id.as_str(), "stdout: {}", out.stdout);
    c.sql("INSERT INTO t VALUES (1)");
    finish_wal(&c);

    // Without -q the same restore talks on stderr (so the next check means something).
    let loud = d.join("loud");
    let out = restore_cmd(&repo, &loud, &[]).assert_success();
    assert!(out.stderr.contains("restoring backup"), "{}", out.stderr);

    let dir = d.join("restored");
    let out = restore_cmd(&repo, &dir, &["-q"]).assert_success();
    assert_eq!(out.stderr, "", "restore pitr -q");
    assert_eq!(out.stdout.trim(), dir.display().to_string());

    let started = d.join("started");
    let port = free_port();
    let out = restore_cmd(&repo, &started, &["-q", "--auto-start", "--monitor", "--archive-mode", "off", "--port"])
        .arg(port.to_string())
        .timeout(Duration::from_secs(300))
        .output();
    let r = Restored { out, dir: started.clone(), sock: c.socket_dir().to_path_buf(), port, bindir: c.bindir() };
    assert_eq!(r.out.status, 0, "{}", r.describe());
    assert_eq!(r.out.stderr, "", "restore pitr -q --auto-start --monitor:\n{}", r.describe());
    assert_eq!(r.out.stdout.trim(), started.display().to_string());
    assert_eq!(r.sql(ROWS), "1");
}
