//! Prefetching fetch (`wal fetch --prefetch N`, what `restore pitr` writes
//! into restore_command by default), on real PostgreSQL 15 and 18: a
//! recovery through it over 200+ segments and two timelines reaches the same
//! rows as one without it; a corrupt object ahead stops recovery (>125)
//! without promoting; the spool holds at most N segments, is a rename away
//! from pg_wal, is never another repository's or cluster's, survives a
//! worker killed with -9, and is gone when recovery ends; on S3 (Garage) too.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A table whose rows change in every segment, and a checksum of them.
const SUM: &str =
    "SELECT count(*) || ':' || md5(coalesce(string_agg(i::text || ':' || pad, ',' ORDER BY i), '')) FROM t";

fn is_segment(n: &str) -> bool {
    n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The segments in a spool part, sorted.
fn spooled(part: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(part)
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.retain(|n| is_segment(n));
    v.sort();
    v
}

/// Watches a spool part while recovery runs: the most segments it held at
/// once, and every name seen there.
struct SpoolWatch {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(usize, BTreeSet<String>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SpoolWatch {
    fn new(part: PathBuf) -> SpoolWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new((0, BTreeSet::new())));
        let (s, v) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let names: Vec<String> = std::fs::read_dir(&part)
                    .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
                    .unwrap_or_default();
                let n = names.iter().filter(|n| is_segment(n)).count();
                let mut g = v.lock().unwrap();
                g.0 = g.0.max(n);
                g.1.extend(names);
                drop(g);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        SpoolWatch { stop, seen, thread: Some(thread) }
    }

    /// (most segments at once, every name seen).
    fn finish(mut self) -> (usize, BTreeSet<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.seen.lock().unwrap().clone()
    }
}

/// `n` segments, each with a few new rows, archived; returns their names.
fn fill(sql: &dyn Fn(&str) -> String, n: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..n {
        sql("INSERT INTO t(pad) SELECT md5(random()::text) FROM generate_series(1, 3)");
        names.push(sql("SELECT pg_walfile_name(pg_switch_wal())"));
    }
    names
}

/// A cluster with 1 MiB segments archiving into `repo`, a table `t` and a
/// complete backup.
fn small_segment_cluster(version: PgVersion, repo: &Path) -> Cluster {
    let c = archiving_cluster(version, Some(1), repo, "");
    c.sql("CREATE TABLE t(i serial PRIMARY KEY, pad text)");
    make_archived_segment(&c);
    backup(&c, repo, &[]);
    c
}

fn auto_conf(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap()
}

// ---------------------------------------------------------------------------
// 1. The central story: 200+ segments, two timelines, same rows.

fn recovery_over_two_timelines(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = small_segment_cluster(version, &repo);
    let sql = |q: &str| c.sql(q);
    fill(&sql, 60);
    c.sql("SELECT pg_create_restore_point('branch')");
    let at_branch = c.sql(SUM);
    // Timeline 1 goes on past the branch point: not on the way to timeline 2.
    let tl1 = fill(&sql, 50);
    c.wait_archived(tl1.last().unwrap(), WAIT);
    c.stop();

    // A restore to the restore point, through prefetch (the default),
    // promoted and archiving as the new primary: timeline 2.
    let r1 = restore(&c, &repo, &d.join("r1"), &["--target-name", "branch", "--archive-mode", "preserve"]);
    let v = r1.promoted();
    assert_eq!(v["recovery"]["timeline"], 2, "{}", r1.describe());
    assert_eq!(r1.sql(SUM), at_branch, "{}", r1.describe());
    let sql1 = |q: &str| r1.sql(q);
    let tl2 = fill(&sql1, 150);
    assert!(tl2[0].starts_with("00000002"), "{tl2:?}");
    r1.finish_wal();
    let rows = r1.sql(SUM);
    r1.stop();
    drop(r1);

    // To the end of timeline 2 with prefetch: more than 200 segments.
    let dir = d.join("prefetch");
    let watch = SpoolWatch::new(dir.join("dbbackup_spool/fetch"));
    let r = restore(&c, &repo, &dir, &["--archive-mode", "off"]);
    let (most, seen) = watch.finish();
    eprintln!("the spool held at most {most} segments; {} names seen", seen.len());
    let v = r.promoted();
    assert_eq!(v["plan"]["target_timeline"], 2, "{}", r.describe());
    let conf = auto_conf(&dir);
    assert!(conf.contains("--prefetch 8 --prefetch-timeline 2"), "{conf}");
    assert_eq!(r.sql(SUM), rows, "{}", r.describe());
    let restored = std::fs::read_to_string(dir.join("restore.log")).unwrap().matches("restored log file").count();
    assert!(restored > 200, "only {restored} WAL files restored");
    // The worker ran ahead, within its bound, on the timeline recovery
    // followed: timeline 1's segments after the branch were never fetched.
    assert!(most >= 1, "nothing was ever prefetched: {}", r.describe());
    assert!(most <= 8, "the spool held {most} segments, more than --prefetch 8");
    let beyond_branch: Vec<_> = seen.iter().filter(|n| tl1[2..].contains(n)).collect();
    assert!(beyond_branch.is_empty(), "prefetched timeline 1 past the branch: {beyond_branch:?}");
    assert!(seen.iter().any(|n| n.starts_with("00000002")), "{seen:?}");
    // Recovery over: the spool part is gone.
    assert!(r.out.stderr.contains("removed the prefetch spool"), "{}", r.describe());
    assert!(!dir.join("dbbackup_spool/fetch").exists(), "{}", r.describe());
    r.stop();
    drop(r);

    // By hand, without --prefetch-timeline (as a restore_command written by
    // hand): from timeline 1 just before the branch, the worker follows the
    // newest timeline whose history holds timeline 1, switching to timeline 2
    // at the segment holding the branch point.
    let tl = json(&dbb(["wal", "timeline", "--json", "--repo"]).arg(&repo).assert_success());
    let first2 = tl["timelines"][1]["first_segment"].as_str().unwrap().to_string();
    assert!(first2.starts_with("00000002"), "{tl}");
    let on = |tli: &str, delta: i64| {
        let seg = u32::from_str_radix(&first2[16..], 16).unwrap() as i64 + delta;
        format!("{tli}{}{:08X}", &first2[8..16], seg)
    };
    let data = data_dir(&d, "by-hand");
    let repo_arg = repo.display().to_string();
    let out = fetch_in(&data, &["--repo", &repo_arg], &on("00000001", -2), &["--prefetch", "3"]);
    assert_eq!(out.status, 0, "{out:?}");
    let part = data.join("dbbackup_spool/fetch");
    let mut want = vec![on("00000001", -1), on("00000002", 0), on("00000002", 1)];
    want.sort();
    wait_until("the worker followed timeline 2", || spooled(&part) == want);

    // The same without prefetch: the same rows.
    let dir = d.join("plain");
    let r = restore(&c, &repo, &dir, &["--archive-mode", "off", "--prefetch", "0"]);
    r.promoted();
    assert!(!auto_conf(&dir).contains("--prefetch"), "{}", auto_conf(&dir));
    assert_eq!(r.sql(SUM), rows, "{}", r.describe());
    assert!(!dir.join("dbbackup_spool/fetch").exists());
}

#[test]
fn pg15_recovery_through_prefetch_over_two_timelines_reaches_the_same_rows() {
    recovery_over_two_timelines(PgVersion::V15);
}

#[test]
fn pg18_recovery_through_prefetch_over_two_timelines_reaches_the_same_rows() {
    recovery_over_two_timelines(PgVersion::V18);
}

// ---------------------------------------------------------------------------
// 2. A corrupt object ahead: recovery stops, it does not promote.

fn corrupt_object_ahead(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = small_segment_cluster(version, &repo);
    let sql = |q: &str| c.sql(q);
    let segs = fill(&sql, 30);
    c.wait_archived(segs.last().unwrap(), WAIT);
    let victim = segs[20].clone();
    let obj = object_for(&repo, &victim);
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&obj, &bytes).unwrap();

    let dir = d.join("restored");
    let watch = SpoolWatch::new(dir.join("dbbackup_spool/fetch"));
    let r = restore(&c, &repo, &dir, &["--archive-mode", "off"]);
    let (_, seen) = watch.finish();
    assert_eq!(r.out.status, 1, "{}", r.describe());
    let v: serde_json::Value = serde_json::from_str(&r.out.stdout).unwrap();
    assert_eq!(v["recovery"]["state"], "failed", "{}", r.describe());
    assert!(r.out.stderr.contains("NOT reached"), "{}", r.describe());
    // PostgreSQL's words: restore_command exited above 125, with ours naming the object.
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap();
    assert!(log.contains("exit code 128"), "{log}");
    assert!(log.contains(&format!("dbbackup: wal fetch {victim}")), "{log}");
    assert!(log.contains("repairs the stored copy") && log.contains("wal verify"), "{log}");
    assert!(!log.contains("selected new timeline ID"), "promoted: {log}");
    assert!(!dir.join("postmaster.pid").exists(), "{}", r.describe());
    // The corrupt segment never sat in the spool under its name; the
    // segments before it did.
    assert!(!seen.contains(&victim), "{victim} was spooled: {seen:?}");
    assert!(seen.iter().any(|n| n < &victim && is_segment(n)), "{seen:?}");
}

#[test]
fn pg15_a_corrupt_object_ahead_stops_recovery_without_promoting() {
    corrupt_object_ahead(PgVersion::V15);
}

#[test]
fn pg18_a_corrupt_object_ahead_stops_recovery_without_promoting() {
    corrupt_object_ahead(PgVersion::V18);
}

// ---------------------------------------------------------------------------
// 3. Calls by hand, as PostgreSQL makes them: in the data directory, %p =
// pg_wal/RECOVERYXLOG.

/// A data directory as restore_command sees it (only pg_wal).
fn data_dir(d: &TestDir, name: &str) -> PathBuf {
    d.mkdir(format!("{name}/pg_wal"));
    d.join(name)
}

/// `wal fetch NAME pg_wal/RECOVERYXLOG --repo REPO ARGS`, run in `data`.
fn fetch_in(data: &Path, repo_args: &[&str], name: &str, args: &[&str]) -> Output {
    dbb(["wal", "fetch", name, "pg_wal/RECOVERYXLOG"]).args(repo_args).args(args).current_dir(data).output()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The segment a plain fetch delivers, to compare with.
fn plain_fetch(d: &TestDir, repo_args: &[&str], name: &str) -> String {
    let data = data_dir(d, &format!("plain-{name}"));
    let out = fetch_in(&data, repo_args, name, &[]);
    assert_eq!(out.status, 0, "{out:?}");
    sha256_file(&data.join("pg_wal/RECOVERYXLOG"))
}

fn worker_pid(part: &Path) -> Option<String> {
    let pid = std::fs::read_to_string(part.join("worker.lock")).ok()?.trim().to_string();
    (!pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
}

/// Follows recovery's calls by hand: the worker keeps the next N segments
/// (no more), a call for one of them is a rename of a verified copy, the
/// end of the archive is answered 1 by the repository, a worker killed
/// with -9 leaves nothing trusted and the next call starts a new one.
fn calls_by_hand(repo_args: &[&str], segs: &[String], d: &TestDir) {
    let data = data_dir(d, "data");
    let part = data.join("dbbackup_spool/fetch");
    let n = 3;
    let prefetch = ["--prefetch", "3"];

    let out = fetch_in(&data, repo_args, &segs[0], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(d, repo_args, &segs[0]));
    wait_until("the worker spooled the next 3", || spooled(&part) == segs[1..=n]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(spooled(&part), segs[1..=n], "no more than --prefetch 3");
    // Nothing in pg_wal but the destination.
    let in_pg_wal: Vec<_> = std::fs::read_dir(data.join("pg_wal")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(in_pg_wal, ["RECOVERYXLOG"]);

    // A call for a spooled segment: handed over, the window moves on.
    let out = fetch_in(&data, repo_args, &segs[1], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(d, repo_args, &segs[1]));
    wait_until("the window moved on", || spooled(&part) == segs[2..=n + 1]);

    // kill -9 of the worker: the next call hands over what is there and
    // starts a new worker, which goes on.
    let pid = worker_pid(&part).expect("a running worker");
    Cmd::new("kill").args(["-9", &pid]).as_root().assert_success();
    wait_until("the worker is gone", || !Path::new(&format!("/proc/{pid}")).exists());
    let out = fetch_in(&data, repo_args, &segs[2], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(d, repo_args, &segs[2]));
    wait_until("a new worker moved the window", || spooled(&part) == segs[3..=n + 2]);
    let new_pid = worker_pid(&part).expect("a new worker");
    assert_ne!(new_pid, pid);
    // Its peak memory so far (the issue's bound for the worker: 64 MiB).
    let status = std::fs::read_to_string(format!("/proc/{new_pid}/status")).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kb <= 64 << 10, "the worker's peak RSS is {peak_kb} kB");

    // The end of the archive: the worker stops there without an error note,
    // and the call past it is answered 1 by the repository.
    let last = segs.len() - 1;
    let out = fetch_in(&data, repo_args, &segs[last - 1], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    wait_until("the last segment is spooled", || spooled(&part) == segs[last..]);
    let out = fetch_in(&data, repo_args, &segs[last], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    let after = next_segment(&segs[last]);
    let out = fetch_in(&data, repo_args, &after, &prefetch);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(!out.stderr.contains("error"), "{}", out.stderr);
    std::thread::sleep(Duration::from_millis(300));
    let notes: Vec<_> = std::fs::read_dir(&part)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".error"))
        .collect();
    assert!(notes.is_empty(), "{notes:?}");
    let log = std::fs::read_to_string(part.join("worker.log")).unwrap();
    assert!(log.contains("prefetch worker") && log.contains("started"), "{log}");
    assert!(!log.contains("error"), "{log}");
}

/// The name of the segment after `name` (1 MiB and 16 MiB segments alike
/// stay within one log id here).
fn next_segment(name: &str) -> String {
    let seg = u32::from_str_radix(&name[16..], 16).unwrap();
    format!("{}{:08X}", &name[..16], seg + 1)
}

#[test]
fn pg15_prefetch_calls_by_hand_spool_bound_rename_end_of_archive_and_kill_9() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = small_segment_cluster(PgVersion::V15, &repo);
    let sql = |q: &str| c.sql(q);
    let segs = fill(&sql, 8);
    c.wait_archived(segs.last().unwrap(), WAIT);
    let repo_arg = repo.display().to_string();
    calls_by_hand(&["--repo", &repo_arg], &segs, &d);
}

/// The worker reads an encrypted repository with the key file the call was
/// given (a path on its command line, never the key).
#[test]
fn pg15_prefetch_calls_by_hand_on_an_encrypted_repository() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let key = key_file(&d, "key", 0x33);
    let c = archiving_cluster(
        PgVersion::V15,
        Some(1),
        &repo,
        &format!("--encrypt --encryption-key-file {}", key.display()),
    );
    c.sql("CREATE TABLE t(i serial PRIMARY KEY, pad text)");
    let sql = |q: &str| c.sql(q);
    let segs = fill(&sql, 8);
    c.wait_archived(segs.last().unwrap(), WAIT);
    let (repo_arg, key_arg) = (repo.display().to_string(), key.display().to_string());
    calls_by_hand(&["--repo", &repo_arg, "--encryption-key-file", &key_arg], &segs, &d);
    // No secret on the worker's command line: only the key file's path.
    let cmdlines: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .filter(|l| l.contains("fetch-worker") && l.contains(&repo_arg))
        .collect();
    assert!(!cmdlines.is_empty());
    for l in cmdlines {
        assert!(l.contains(&format!("--encryption-key-file {key_arg}")), "{l}");
        assert!(!l.contains(&"33".repeat(32)), "{l}");
    }
}

// ---------------------------------------------------------------------------
// 4. Spools that are not this recovery's, and mistakes.

/// A spool left by another repository or another cluster (a data directory
/// copied with it, a repository re-created) is never used: the call empties
/// it, says so, and takes it over; what it hands over is this repository's.
#[test]
fn pg15_a_stale_spool_of_another_repository_or_cluster_is_emptied_and_taken_over() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = small_segment_cluster(PgVersion::V15, &repo);
    let sql = |q: &str| c.sql(q);
    let segs = fill(&sql, 4);
    c.wait_archived(segs.last().unwrap(), WAIT);
    let repo_arg = repo.display().to_string();
    let repo_args = ["--repo", repo_arg.as_str()];
    let info = json(&dbb(["repo", "info", "--json", "--repo"]).arg(&repo).assert_success());
    let id = info["id"].as_str().unwrap().to_string();
    let sysid = c.system_identifier().to_string();
    let owners = [
        ("another repository", sysid.clone(), "0123456789abcdef0123456789abcdef".to_string()),
        ("another cluster", "6999999999999999999".to_string(), id.clone()),
    ];
    for (what, system_identifier, repository_id) in owners {
        let data = data_dir(&d, &what.replace(' ', "-"));
        let part = data.join("dbbackup_spool/fetch");
        // Their "segments", of the right size, under this recovery's names.
        for s in &segs[..3] {
            d.write(part.join(s).strip_prefix(d.path()).unwrap(), vec![0u8; 1 << 20]);
        }
        d.write(
            part.join("owner.json").strip_prefix(d.path()).unwrap(),
            format!(r#"{{"system_identifier":"{system_identifier}","repository_id":"{repository_id}"}}"#),
        );
        let out = fetch_in(&data, &repo_args, &segs[0], &["--prefetch", "2"]);
        assert_eq!(out.status, 0, "{what}: {out:?}");
        assert!(out.stderr.contains("emptied it and took it over"), "{what}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!("cluster {system_identifier} and repository {repository_id}")),
            "{}",
            out.stderr
        );
        assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(&d, &repo_args, &segs[0]), "{what}");
        // The worker refills it from this repository.
        wait_until("the worker spooled the next 2", || spooled(&part) == segs[1..3]);
        let out = fetch_in(&data, &repo_args, &segs[1], &["--prefetch", "2"]);
        assert_eq!(out.status, 0, "{what}: {out:?}");
        assert!(!out.stderr.contains("took it over"), "once is enough: {}", out.stderr);
        assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(&d, &repo_args, &segs[1]), "{what}");
    }
}

/// Mistakes, and the rule that "not archived" (1) and "corrupt" (128) come
/// only from the repository: a spool inside pg_wal and an out-of-range
/// --prefetch stop recovery (128) naming the fix, and restore pitr refuses
/// such a --spool-dir before writing; an unusable spool or a wrong-sized
/// spooled file only costs the prefetching; an error note in the spool is
/// never an answer; a corrupt object gets a note, never a spooled file;
/// a worker leaves nothing after its idle time, and refuses another
/// repository.
#[test]
fn pg15_prefetch_mistakes_and_answers_only_from_the_repository() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = small_segment_cluster(PgVersion::V15, &repo);
    let sql = |q: &str| c.sql(q);
    let segs = fill(&sql, 6);
    c.wait_archived(segs.last().unwrap(), WAIT);
    let repo_arg = repo.display().to_string();
    let repo_args = ["--repo", repo_arg.as_str()];
    let data = data_dir(&d, "data");

    let out = fetch_in(&data, &repo_args, &segs[0], &["--prefetch", "2", "--spool-dir", "pg_wal/spool"]);
    assert_eq!(out.status, 128, "{out:?}");
    let first = format!("dbbackup: wal fetch {}", segs[0]);
    for want in [first.as_str(), "is inside pg_wal", "give a --spool-dir outside pg_wal"] {
        assert!(out.stderr.contains(want), "{want:?}: {}", out.stderr);
    }
    assert!(!data.join("pg_wal/spool").exists() && !data.join("pg_wal/RECOVERYXLOG").exists());
    let out = fetch_in(&data, &repo_args, &segs[0], &["--prefetch", "1000"]);
    assert_eq!(out.status, 128, "{out:?}");
    assert!(out.stderr.contains("--prefetch"), "{}", out.stderr);
    let target = d.join("restored");
    let out = dbb(["restore", "pitr", "--repo", &repo_arg, "--target-dir"])
        .arg(&target)
        .arg("--spool-dir")
        .arg(target.join("pg_wal/spool"))
        .assert_code(1);
    assert!(out.stderr.contains("is inside pg_wal") && out.stderr.contains("--spool-dir"), "{}", out.stderr);
    assert!(!target.exists());

    // By hand into a directory that is no pg_wal, without --spool-dir: no
    // data directory for the spool; fetched without prefetching, said so.
    let by_hand = d.mkdir("by-hand");
    let out = dbb(["wal", "fetch", &segs[0]])
        .arg(by_hand.join("seg"))
        .args(repo_args)
        .args(["--prefetch", "4"])
        .assert_success();
    assert!(
        out.stderr.contains("--prefetch without --spool-dir needs a destination in pg_wal")
            && out.stderr.contains("fetched without prefetching"),
        "{}",
        out.stderr
    );
    assert_eq!(sha256_file(&by_hand.join("seg")), plain_fetch(&d, &repo_args, &segs[0]));
    assert!(!d.path().join("dbbackup_spool").exists() && !by_hand.join("dbbackup_spool").exists());

    // A spool that cannot be made: fetched without prefetching, said so.
    let file = d.write("a-file", "");
    let out = fetch_in(
        &data,
        &repo_args,
        &segs[0],
        &["--prefetch", "2", "--spool-dir", &format!("{}/spool", file.display())],
    );
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stderr.contains(&format!("fetching {} without prefetching", segs[0])), "{}", out.stderr);
    assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(&d, &repo_args, &segs[0]));

    let spool = d.mkdir("spool");
    let part = spool.join("fetch");
    let spool_arg = spool.display().to_string();
    let prefetch = ["--prefetch", "2", "--spool-dir", spool_arg.as_str()];
    let out = fetch_in(&data, &repo_args, &segs[0], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    wait_until("the worker spooled the next 2", || spooled(&part) == segs[1..3]);

    // Notes in the spool do not answer: a segment the repository has is
    // delivered, one it has not is 1.
    let after = next_segment(&segs[5]);
    for name in [&after, &segs[5]] {
        d.write(part.join(format!("{name}.error")).strip_prefix(d.path()).unwrap(), "corrupt, says a stale note\n");
    }
    let out = fetch_in(&data, &repo_args, &segs[5], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(&d, &repo_args, &segs[5]));
    assert!(part.join(format!("{after}.error")).exists());
    let out = fetch_in(&data, &repo_args, &after, &prefetch);
    assert_eq!(out.status, 1, "{out:?}");

    // A corrupt object ahead: the worker writes a note, never the segment;
    // the call for it fails as without prefetching (128, the object named).
    let obj = object_for(&repo, &segs[4]);
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&obj, &bytes).unwrap();
    let out = fetch_in(&data, &repo_args, &segs[2], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    let note = part.join(format!("{}.error", segs[4]));
    wait_until("the worker noted the corrupt object", || note.exists() && spooled(&part) == segs[3..4]);
    assert!(std::fs::read_to_string(&note).unwrap().contains("corrupt"), "{}", std::fs::read_to_string(&note).unwrap());
    let out = fetch_in(&data, &repo_args, &segs[4], &prefetch);
    assert_eq!(out.status, 128, "{out:?}");
    assert!(
        out.stderr.contains(&format!("dbbackup: wal fetch {}", segs[4])) && out.stderr.contains("corrupt"),
        "{}",
        out.stderr
    );
    assert!(!part.join(&segs[4]).exists());
    let log = std::fs::read_to_string(part.join("worker.log")).unwrap();
    assert!(log.contains(&format!("cannot prefetch {}", segs[4])), "{log}");
    std::fs::write(&obj, {
        bytes[mid] ^= 0x01;
        &bytes
    })
    .unwrap();

    // The worker leaves by itself when no call comes, removing what it
    // spooled (30 s for the one a call starts; 1 s here, by hand).
    let pid = worker_pid(&part).expect("a running worker");
    Cmd::new("kill").args(["-9", &pid]).as_root().assert_success();
    wait_until("the worker is gone", || !Path::new(&format!("/proc/{pid}")).exists());
    std::fs::write(part.join("want"), format!("{}\t0\t0\n", segs[0])).unwrap();
    let worker = |extra: &[&str]| {
        dbb(["wal", "fetch-worker", "--prefetch", "2", "--idle-exit", "1", "--spool-dir"])
            .arg(&spool)
            .args(repo_args)
            .args(extra)
            .timeout(Duration::from_secs(60))
            .output()
    };
    let out = worker(&[]);
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stderr.contains("exits: no call for a while"), "{}", out.stderr);
    assert_eq!(spooled(&part), Vec::<String>::new());
    // Told another repository ID than the one it finds: it refuses.
    let out = worker(&["--repo-id", "0123456789abcdef0123456789abcdef"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("not 0123456789abcdef0123456789abcdef"), "{}", out.stderr);

    // A spooled file that is not a whole segment (not ours to write, but
    // found): removed, said, and the segment fetched from the repository.
    d.write(part.join(&segs[1]).strip_prefix(d.path()).unwrap(), "short");
    let out = fetch_in(&data, &repo_args, &segs[1], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stderr.contains("is not a 1048576 byte segment (5 bytes): removed it"), "{}", out.stderr);
    assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(&d, &repo_args, &segs[1]));
}

// ---------------------------------------------------------------------------
// 5. On S3 (Garage): the worker reads the repository through the config
// file the call was given.

#[test]
fn pg15_prefetch_on_s3_by_hand_and_through_restore() {
    let g = dbbackup_testkit::stores::Garage::single();
    let d = TestDir::new();
    let cfg = private_file(&d, "dbbackup.toml", g.config_toml("pg/prefetch"));
    let c = cluster_on(PgVersion::V15, &cfg);
    c.sql("CREATE TABLE t(i serial PRIMARY KEY, pad text)");
    make_archived_segment(&c);
    with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    let sql = |q: &str| c.sql(q);
    let segs = fill(&sql, 12);
    c.wait_archived(segs.last().unwrap(), WAIT);
    let want = c.sql(SUM);
    let cfg_arg = cfg.display().to_string();
    calls_by_hand(&["--config", &cfg_arg], &segs, &d);

    let dir = d.join("restored");
    let r = restore_on(&cfg, &c, &dir, &["--archive-mode", "off"]);
    r.promoted();
    assert_eq!(r.sql(SUM), want, "{}", r.describe());
    let conf = auto_conf(&dir);
    assert!(conf.contains("--prefetch 8 --prefetch-timeline 1") && conf.contains("--config"), "{conf}");
    assert!(!conf.contains("secret"), "{conf}");
    assert!(!dir.join("dbbackup_spool/fetch").exists(), "{}", r.describe());
}

/// Recovery catching up with the worker on a slow store: the call for the
/// segment the worker is fetching waits for it rather than fetching it a
/// second time.
#[test]
fn pg15_on_a_slow_store_a_call_waits_for_the_workers_fetch_instead_of_fetching_twice() {
    use dbbackup_testkit::fault_proxy::{FaultProxy, Match};
    let g = dbbackup_testkit::stores::Garage::single();
    let proxy = FaultProxy::start(&g.endpoint());
    let d = TestDir::new();
    let direct = g.config_toml("pg/slow");
    let cfg = private_file(&d, "dbbackup.toml", &direct);
    let proxied = private_file(&d, "proxied.toml", direct.replace(&g.endpoint(), &proxy.endpoint()));
    let c = cluster_on(PgVersion::V15, &cfg);
    c.sql("CREATE TABLE t(i serial PRIMARY KEY, pad text)");
    let sql = |q: &str| c.sql(q);
    let segs = fill(&sql, 3);
    c.wait_archived(segs.last().unwrap(), WAIT);
    let proxied_arg = proxied.display().to_string();
    let args = ["--config", proxied_arg.as_str()];
    let data = data_dir(&d, "data");
    let part = data.join("dbbackup_spool/fetch");

    proxy.delay(Duration::from_secs(3), Match::method("GET").contains(&segs[1]));
    let out = fetch_in(&data, &args, &segs[0], &["--prefetch", "1"]);
    assert_eq!(out.status, 0, "{out:?}");
    let temp = format!(".prefetch.{}.", segs[1]);
    wait_until("the worker is fetching the next segment", || {
        std::fs::read_dir(&part).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(&temp))
    });
    let out = fetch_in(&data, &args, &segs[1], &["--prefetch", "1"]);
    assert_eq!(out.status, 0, "{out:?}");
    let gets = proxy.seen().iter().filter(|s| s.method == "GET" && s.target.contains(&segs[1])).count();
    assert_eq!(gets, 1, "{}", proxy.describe(20));
    proxy.delay(Duration::ZERO, Match::any());
    let cfg_arg = cfg.display().to_string();
    assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(&d, &["--config", &cfg_arg], &segs[1]));
}

/// A spool on another file system than pg_wal (here tmpfs): the hand-over
/// is a copy beside the destination, renamed into place, and the spooled
/// file is removed; nothing else is left in pg_wal.
#[test]
fn pg15_a_spool_on_another_file_system_hands_over_by_copy() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = small_segment_cluster(PgVersion::V15, &repo);
    let sql = |q: &str| c.sql(q);
    let segs = fill(&sql, 3);
    c.wait_archived(segs.last().unwrap(), WAIT);
    let shm = tempfile::Builder::new().prefix("dbb-spool-").tempdir_in("/dev/shm").unwrap();
    chown_to_run_user(shm.path());
    let spool_arg = shm.path().display().to_string();
    let repo_arg = repo.display().to_string();
    let repo_args = ["--repo", repo_arg.as_str()];
    let data = data_dir(&d, "data");
    let part = shm.path().join("fetch");
    let prefetch = ["--prefetch", "2", "--spool-dir", spool_arg.as_str()];

    let out = fetch_in(&data, &repo_args, &segs[0], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    wait_until("the worker spooled the next 2", || spooled(&part) == segs[1..3]);
    let out = fetch_in(&data, &repo_args, &segs[1], &prefetch);
    assert_eq!(out.status, 0, "{out:?}");
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    assert!(!part.join(&segs[1]).exists());
    assert_eq!(sha256_file(&data.join("pg_wal/RECOVERYXLOG")), plain_fetch(&d, &repo_args, &segs[1]));
    let in_pg_wal: Vec<_> = std::fs::read_dir(data.join("pg_wal")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(in_pg_wal, ["RECOVERYXLOG"]);
}
