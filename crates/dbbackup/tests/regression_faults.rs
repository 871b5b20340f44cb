//! Regression tests for faults found by the third black-box audit: changed
//! manifests, a repository recreated in an unmounted mount point, forged
//! labels, passing archive failures during a backup, gaps in the
//! recoverable range, unreadable backup directories, paths PostgreSQL or
//! pg_ctl cannot take, backups whose WAL is gone, concurrent retention and
//! WAL inputs that are not regular files. Each test fails if its bug comes
//! back. Real PostgreSQL 15 servers wherever WAL is needed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `backup list --json`: the output and the parsed list.
fn list(repo: &Path) -> (Output, Vec<Value>) {
    let out = dbb(["backup", "list", "--json", "--repo"]).arg(repo).assert_success();
    let v = json(&out).as_array().unwrap_or_else(|| panic!("not an array: {}", out.stdout)).clone();
    (out, v)
}

/// `backup show ID --json`.
fn show(repo: &Path, id: &str) -> Value {
    json(&dbb(["backup", "show", id, "--json", "--repo"]).arg(repo).assert_success())
}

/// `restore pitr --repo R --target-dir D <args>` (nothing started).
fn restore_cmd(repo: &Path, dir: &Path, args: &[&str]) -> Cmd {
    let mut cmd = dbb(["restore", "pitr", "--repo"]);
    cmd.arg(repo).arg("--target-dir").arg(dir).args(args);
    cmd
}

/// The stored object of segment `name` (not a `.backup` file starting
/// with the same name).
fn segment_object(repo: &Path, name: &str) -> PathBuf {
    let found: Vec<PathBuf> = wal_objects(repo)
        .into_iter()
        .filter(|p| {
            let f = p.file_name().unwrap().to_string_lossy().to_string();
            f.starts_with(&format!("{name}.")) && !f.contains(".backup")
        })
        .collect();
    assert_eq!(found.len(), 1, "one object for {name}: {found:?}");
    found[0].clone()
}

/// `failed_count` and `last_failed_wal` of `pg_stat_archiver`.
fn archiver_failures(c: &Cluster) -> (u64, String) {
    let row = c.sql("SELECT failed_count || ' ' || coalesce(last_failed_wal, '-') FROM pg_stat_archiver");
    let (n, w) = row.split_once(' ').unwrap();
    (n.parse().unwrap(), w.to_string())
}

/// Polls `f` every 50 ms until it holds, or panics with `what`.
fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Points archive_command at `repo` (ALTER SYSTEM, reload) and waits until
/// the server uses it.
fn set_archive_repo(c: &Cluster, repo: &Path) {
    let command = format!("{} wal archive %p %f --repo {}", bin().display(), repo.display());
    c.sql(&format!("ALTER SYSTEM SET archive_command = '{command}'"));
    c.sql("SELECT pg_reload_conf()");
    // A new session sees the new value once the postmaster has reloaded
    // and signalled the archiver.
    c.wait_for("SHOW archive_command", &command, Duration::from_secs(10));
}

/// The start (`end = false`) or end of segment `name` (16 MB segments) as
/// PostgreSQL prints an LSN.
fn segment_lsn(name: &str, end: bool) -> String {
    let log = u64::from_str_radix(&name[8..16], 16).unwrap();
    let seg = u64::from_str_radix(&name[16..24], 16).unwrap() + u64::from(end);
    let pos = (log << 32) + seg * 0x100_0000;
    format!("{:X}/{:X}", pos >> 32, pos & 0xFFFF_FFFF)
}

fn dir_entries(d: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(d).unwrap().flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect();
    v.sort();
    v
}

// ---------------------------------------------------------------------------
// 1. A changed manifest is never trusted.

#[test]
fn a_changed_manifest_is_refused_by_list_verify_and_restore() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    c.sql("CREATE TABLE a AS SELECT g FROM generate_series(1, 5000) g");
    c.sql("CREATE TABLE b AS SELECT md5(g::text) AS t FROM generate_series(1, 5000) g");
    make_archived_segment(&c);
    let id = backup(&c, &repo, &[]);
    finish_wal(&c);
    dbb(["backup", "verify", &id, "--repo"]).arg(&repo).assert_success();

    let manifest = repo.join(format!("backups/{id}/manifest.json"));
    let original = std::fs::read_to_string(&manifest).unwrap();
    let m: Value = serde_json::from_str(&original).unwrap();
    let files = m["files"].as_array().unwrap();
    // Two relation files of database postgres with different contents.
    let rel = |p: &str| c.sql(&format!("SELECT pg_relation_filepath('{p}')"));
    let (a, b) = (rel("a"), rel("b"));
    let at = |p: &str| files.iter().position(|f| f["path"] == p).unwrap_or_else(|| panic!("{p} not in the manifest"));
    let (ia, ib) = (at(&a), at(&b));
    assert!(a.starts_with("base/5/") && b.starts_with("base/5/"), "{a} {b}");
    assert_ne!(files[ia]["checksum"], files[ib]["checksum"]);

    let variants: Vec<(&str, Value, String)> = {
        let mut renamed = m.clone();
        renamed["files"][ia]["path"] = "base/5/99999".into();
        let mut swapped = m.clone();
        swapped["files"][ia]["path"] = b.as_str().into();
        swapped["files"][ib]["path"] = a.as_str().into();
        let mut duplicated = m.clone();
        let copy = duplicated["files"][ia].clone();
        duplicated["files"].as_array_mut().unwrap().push(copy);
        let mut escape = m.clone();
        escape["files"][ia]["path"] = "base/../../escape".into();
        vec![
            ("renamed", renamed, "file base/5/99999 points at object".to_string()),
            ("swapped", swapped, format!("file {b} points at object")),
            ("duplicated", duplicated, format!("file {a} is listed twice")),
            ("escape", escape, "\"base/../../escape\" is not a plain relative path".to_string()),
        ]
    };
    let named = format!("backups/{id}/manifest.json");
    for (what, changed, why) in variants {
        std::fs::write(&manifest, serde_json::to_string_pretty(&changed).unwrap()).unwrap();
        let says = |text: &str| text.contains(&named) && text.contains(&why) && text.contains("damaged or was changed");

        let (out, all) = list(&repo);
        assert!(all.iter().all(|b| b["id"] != id.as_str()), "{what}: listed: {}", out.stdout);
        assert!(out.stderr.contains("dbbackup: warning:") && says(&out.stderr), "{what}: {}", out.stderr);

        let out = dbb(["backup", "verify", &id, "--repo"]).arg(&repo).assert_code(1);
        assert!(says(&out.stderr), "{what}: {}", out.stderr);

        let target = d.join(format!("restored-{what}"));
        let out = restore_cmd(&repo, &target, &["--base-backup", &id]).assert_code(1);
        assert!(says(&out.stderr), "{what}: {}", out.stderr);
        assert!(!target.exists(), "{what}: {} was written", target.display());
        // Nor is it picked as the newest complete backup.
        let out = restore_cmd(&repo, &target, &[]).assert_code(1);
        assert!(out.stderr.contains("has no complete backup") && says(&out.stderr), "{what}: {}", out.stderr);
        assert!(!target.exists(), "{what}: {} was written", target.display());
    }

    // The manifest as it was: complete, verified, restored.
    std::fs::write(&manifest, &original).unwrap();
    let (out, all) = list(&repo);
    assert_eq!(all.len(), 1, "{}", out.stdout);
    assert_eq!((all[0]["id"].as_str(), all[0]["status"].as_str()), (Some(id.as_str()), Some("complete")));
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    dbb(["backup", "verify", &id, "--repo"]).arg(&repo).assert_success();
    let target = d.join("restored");
    restore_cmd(&repo, &target, &["--base-backup", &id]).assert_success();
    let restored = |rel: &str| b3_file(&target.join(rel));
    assert_eq!(restored(&a), files[ia]["checksum"].as_str().unwrap());
    assert_eq!(restored(&b), files[ib]["checksum"].as_str().unwrap());
}

// ---------------------------------------------------------------------------
// 2. No new repository in an empty directory for a cluster that archived before.

#[test]
fn archive_refuses_to_create_a_repository_in_an_empty_directory_after_archiving_elsewhere() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let done: Vec<String> = dir_entries(&c.data_dir().join("pg_wal/archive_status"));
    assert!(done.iter().any(|n| n.ends_with(".done")), "{done:?}");

    // A bare mount point: an empty directory the postgres user owns.
    let mnt = d.mkdir("mnt");
    set_archive_repo(&c, &mnt);
    let (failed_before, _) = archiver_failures(&c);
    let seg = c.switch_wal();
    wait_until("the archiver to fail", Duration::from_secs(15), || archiver_failures(&c).0 > failed_before);
    assert_eq!(archiver_failures(&c).1, seg);
    assert!(dir_entries(&mnt).is_empty(), "written into the empty directory: {:?}", dir_entries(&mnt));
    let log = c.log_tail(200);
    assert!(log.contains("empty directory") && log.contains("repo init"), "{log}");

    // The same command, run by hand.
    let wal = c.data_dir().join("pg_wal").join(&seg);
    for r in [mnt.clone(), mnt.join("repo")] {
        let out = archive_cmd(&wal, Some(&seg), &r).output();
        assert_ne!(out.status, 0, "{out:?}");
        assert!(
            out.stderr.contains("empty directory")
                && out.stderr.contains(&format!("repo init --repo {}", r.display()))
                && out.stderr.contains("archive_status"),
            "{}",
            out.stderr
        );
        assert!(dir_entries(&mnt).is_empty(), "written into the empty directory: {:?}", dir_entries(&mnt));
    }

    // Created on purpose, it is archived into.
    dbb(["repo", "init", "--repo"]).arg(&mnt).assert_success();
    let next = c.switch_wal(); // wakes the archiver, which waits after failing
    c.wait_archived(&next, WAIT);
    segment_object(&mnt, &seg);
    segment_object(&mnt, &next);
    assert!(mnt.join("dbbackup.json").is_file());

    // A new path beside other files is created by the first archive, as documented.
    let new = d.join("new-repo");
    assert!(!dir_entries(d.path()).is_empty());
    set_archive_repo(&c, &new);
    let seg = finish_wal(&c);
    assert!(new.join("dbbackup.json").is_file());
    segment_object(&new, &seg);
}

// ---------------------------------------------------------------------------
// 3. A label is one line.

#[test]
fn a_label_with_a_newline_is_a_usage_error_and_takes_no_backup() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    for label in ["nightly\nSTART TIMELINE: 2", "nightly\rx"] {
        let out =
            dbb(["backup", "base", "--fast", "--label", label, "--repo"]).arg(&repo).args(c.conn_args()).assert_code(2);
        assert!(out.stderr.contains("--label") && out.stderr.contains("control characters"), "{}", out.stderr);
        let (out, all) = list(&repo);
        assert!(all.is_empty(), "{}", out.stdout);
    }
    let backups = repo.join("backups");
    assert!(!backups.exists() || dir_entries(&backups).is_empty(), "{:?}", dir_entries(&backups));

    // A one-line label is taken as given.
    let out = dbb(["backup", "base", "--fast", "--label", "nightly: START TIMELINE 2", "--repo"])
        .arg(&repo)
        .args(c.conn_args())
        .assert_success();
    let id = out.stdout.lines().last().unwrap().trim().to_string();
    let (_, all) = list(&repo);
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0]["id"].as_str(), all[0]["label"].as_str()),
        (Some(id.as_str()), Some("nightly: START TIMELINE 2"))
    );
    assert_eq!(all[0]["status"], "complete");
}

// ---------------------------------------------------------------------------
// 4. A failing archive_command does not fail the backup before the timeout.

#[test]
fn a_passing_archive_failure_does_not_fail_backup_base_and_a_timeout_leaves_it_pending() {
    if run_as_user().is_none() {
        eprintln!("not root: the repository owner can always write, nothing to test");
        return;
    }
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    let seg = make_archived_segment(&c);
    // Where the backup's WAL goes: the directory of the current log id.
    let wal_dir = repo.join("wal").join(&seg[..16]);
    let mode = std::fs::metadata(&wal_dir).unwrap().permissions().mode() & 0o7777;
    let lock = || std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    let unlock = || std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(mode)).unwrap();
    // After three failures in a row the archiver sleeps up to 60 s unless
    // woken: a reload wakes it, as a new segment would.
    let wake_archiver = || c.sql("SELECT pg_reload_conf()");

    // a. The directory is unwritable while the backup waits for its WAL,
    // then writable again: the backup completes.
    lock();
    let mut cmd = dbb(["backup", "base", "--fast", "--repo"]);
    cmd.arg(&repo).args(c.conn_args()).timeout(Duration::from_secs(120));
    let running = std::thread::spawn(move || cmd.output());
    // Its manifest names the stop segment once pg_backup_stop returned and
    // the wait begins.
    let backups = repo.join("backups");
    let mut id = String::new();
    wait_until("the backup to reach its WAL wait", Duration::from_secs(60), || {
        let Some(dir) = std::fs::read_dir(&backups).ok().and_then(|r| r.flatten().next()) else { return false };
        let text = std::fs::read_to_string(dir.path().join("manifest.json")).unwrap_or_default();
        let stopped = serde_json::from_str::<Value>(&text).is_ok_and(|m| m["stop_wal"].is_string());
        id = dir.file_name().to_string_lossy().to_string();
        stopped || running.is_finished()
    });
    // Failures while it waits (the old code gave up at the first one).
    let (failed, _) = archiver_failures(&c);
    wait_until("archive failures during the wait", Duration::from_secs(15), || {
        archiver_failures(&c).0 >= failed + 2 || running.is_finished()
    });
    unlock();
    wake_archiver();
    let out = running.join().unwrap();
    assert_eq!(out.status, 0, "backup base failed:\n{}\n{}\n{}", out.stdout, out.stderr, c.log_tail(20));
    assert!(
        out.stderr.contains("PostgreSQL fails to archive") && out.stderr.contains("it retries"),
        "no warning about the failing archiver: {}",
        out.stderr
    );
    assert_eq!(out.stdout.lines().last().unwrap().trim(), id);
    assert_eq!(show(&repo, &id)["status"], "complete");
    dbb(["backup", "verify", &id, "--repo"]).arg(&repo).assert_success();

    // b. Still unwritable when --archive-wait-timeout ends: pending, exit 1.
    std::thread::sleep(Duration::from_millis(1100)); // a new backup ID
    lock();
    let out = dbb(["backup", "base", "--fast", "--archive-wait-timeout", "2", "--repo"])
        .arg(&repo)
        .args(c.conn_args())
        .timeout(Duration::from_secs(120))
        .output();
    let pending = out.stdout.lines().last().unwrap_or_default().trim().to_string();
    let v = show(&repo, &pending);
    assert_eq!(out.status, 1, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("dbbackup: error: backup {pending} is pending, not complete")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("not archived within 2s"), "{}", out.stderr);
    assert_eq!(v["status"], "pending", "{v:#}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("not archived within 2s") && error.contains(&format!("dbbackup backup verify {pending}")),
        "{v:#}"
    );
    let (_, all) = list(&repo);
    let statuses: Vec<(&str, &str)> =
        all.iter().map(|b| (b["id"].as_str().unwrap(), b["status"].as_str().unwrap())).collect();
    assert_eq!(statuses, vec![(id.as_str(), "complete"), (pending.as_str(), "pending")]);
    // Its WAL is not there yet.
    dbb(["backup", "verify", &pending, "--repo"]).arg(&repo).assert_code(1);
    assert_eq!(show(&repo, &pending)["status"], "pending");

    // PostgreSQL's retry archives it; verify completes the backup.
    unlock();
    wake_archiver();
    c.wait_archived(v["stop_wal"].as_str().unwrap(), WAIT);
    let out = dbb(["backup", "verify", &pending, "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("backup {pending} is complete")), "{}", out.stdout);
    assert_eq!(show(&repo, &pending)["status"], "complete");
}

// ---------------------------------------------------------------------------
// 5. The recoverable range ends at a gap.

#[test]
fn repo_info_ends_the_newest_recoverable_point_at_a_gap() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    backup(&c, &repo, &[]);
    let segs: Vec<String> = (0..3).map(|_| make_archived_segment(&c)).collect();

    let info = |repo: &Path| json(&dbb(["repo", "info", "--json", "--repo"]).arg(repo).assert_success());
    let v = info(&repo);
    let newest = &v["backups"]["newest_recoverable_point"];
    assert_eq!(newest["segment"], segs[2].as_str(), "{v:#}");
    assert_eq!(newest["lsn"], segment_lsn(&segs[2], true).as_str(), "{v:#}");
    assert!(newest["archived_at"].is_string(), "{v:#}");
    assert!(newest.get("gap").is_none(), "{v:#}");

    std::fs::remove_file(segment_object(&repo, &segs[1])).unwrap();
    let v = info(&repo);
    let newest = &v["backups"]["newest_recoverable_point"];
    assert_eq!(newest["gap"], true, "{v:#}");
    assert_eq!(newest["segment"], segs[1].as_str(), "{v:#}");
    assert_eq!(newest["lsn"], segment_lsn(&segs[1], false).as_str(), "{v:#}");
    assert!(newest["archived_at"].is_null(), "{v:#}");
    let out = dbb(["repo", "info", "--repo"]).arg(&repo).assert_success();
    assert!(
        out.stdout.contains(&format!("{} only: {} is missing", segment_lsn(&segs[1], false), segs[1])),
        "{}",
        out.stdout
    );
}

// ---------------------------------------------------------------------------
// 6. A backup directory without its manifest can be deleted with --force.

#[test]
fn backup_delete_without_a_manifest_needs_force_and_removes_the_directory() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let id = backup(&c, &repo, &[]);
    let dir = repo.join(format!("backups/{id}"));
    let manifest = dir.join("manifest.json");

    // Damaged, then gone.
    std::fs::write(&manifest, "{\"id\": ").unwrap();
    let out = dbb(["backup", "delete", &id, "--repo"]).arg(&repo).assert_code(1);
    assert!(
        out.stderr.contains("manifest.json") && out.stderr.contains(&format!("dbbackup backup delete {id} --force")),
        "{}",
        out.stderr
    );
    std::fs::remove_file(&manifest).unwrap();
    let out = dbb(["backup", "delete", &id, "--repo"]).arg(&repo).assert_code(1);
    assert!(
        out.stderr.contains(&format!("no backups/{id}/manifest.json"))
            && out.stderr.contains(&format!("dbbackup backup delete {id} --force")),
        "{}",
        out.stderr
    );
    assert!(dir.join("data").is_dir(), "removed without --force");

    let out = dbb(["backup", "delete", &id, "--force", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("deleted backup directory {id}")), "{}", out.stdout);
    assert!(!dir.exists(), "{:?}", dir_entries(&dir));
    let (out, all) = list(&repo);
    assert!(all.is_empty() && out.stderr.is_empty(), "{}\n{}", out.stdout, out.stderr);
    // A backup that never was is still just "no such backup".
    let out = dbb(["backup", "delete", "20000101T000000Z", "--force", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("no backup 20000101T000000Z"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// 7. Paths pg_ctl or PostgreSQL's configuration cannot take.

#[test]
fn paths_that_break_pg_ctl_or_the_configuration_are_refused_before_writing() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    backup(&c, &repo, &[]);
    finish_wal(&c);

    // pg_ctl hands the data directory to a shell in double quotes.
    let quoted = d.join("re\"stored");
    let port = free_port().to_string();
    let out = restore_cmd(&repo, &quoted, &["--auto-start", "--archive-mode", "off", "--port", &port]).assert_code(1);
    assert!(out.stderr.contains("pg_ctl") && out.stderr.contains("'\"'"), "{}", out.stderr);
    assert!(!quoted.exists(), "written before refusing: {:?}", dir_entries(&quoted));
    // Without --auto-start the same directory is fine.
    restore_cmd(&repo, &quoted, &["--archive-mode", "off"]).assert_success();
    assert!(quoted.join("PG_VERSION").is_file());

    // A repository path with a newline (here a link to the real one)
    // cannot go into restore_command.
    let linked = d.join("re\npo");
    std::os::unix::fs::symlink(&repo, &linked).unwrap();
    let target = d.join("restored");
    let out = restore_cmd(&linked, &target, &["--archive-mode", "off"]).assert_code(1);
    assert!(out.stderr.contains("control character"), "{}", out.stderr);
    assert!(!target.exists(), "written before refusing: {:?}", dir_entries(&target));

    // Nor into archive_command.
    let command = c.sql("SHOW archive_command");
    let auto = std::fs::read_to_string(c.data_dir().join("postgresql.auto.conf")).unwrap();
    let new = d.join("new\nrepo");
    for r in [&new, &linked] {
        let out = pitr(&c, &["enable", "--repo", &r.display().to_string()]).assert_code(1);
        assert!(out.stderr.contains("control character"), "{}", out.stderr);
    }
    assert!(!new.exists(), "repository created despite the refusal");
    assert_eq!(c.sql("SHOW archive_command"), command);
    assert_eq!(std::fs::read_to_string(c.data_dir().join("postgresql.auto.conf")).unwrap(), auto);
}

// ---------------------------------------------------------------------------
// 8. `wal verify` reports a complete backup whose WAL is gone.

#[test]
fn wal_verify_reports_a_complete_backup_whose_wal_is_not_archived() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    let before = make_archived_segment(&c);
    let id = backup(&c, &repo, &[]);
    finish_wal(&c);
    dbb(["wal", "verify", "--repo"]).arg(&repo).assert_success();

    // Everything up to and including the backup's first segment goes: no
    // gap, the archive just starts later, and the backup cannot be restored.
    let start = show(&repo, &id)["start_wal"].as_str().unwrap().to_string();
    assert!(start > before, "{start} {before}");
    for p in wal_objects(&repo) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        if name.len() > 24 && !name.contains(".backup") && name[..24] <= *start {
            std::fs::remove_file(&p).unwrap();
        }
    }
    let out = dbb(["wal", "verify", "--json", "--repo"]).arg(&repo).assert_code(1);
    let v = json(&out);
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(v["gaps"], serde_json::json!([]), "{v:#}");
    let missing = v["backups_missing_wal"].as_array().unwrap();
    assert_eq!(missing.len(), 1, "{v:#}");
    assert_eq!(missing[0]["path"], format!("backups/{id}"), "{v:#}");
    let error = missing[0]["error"].as_str().unwrap();
    assert!(error.contains(&format!("backup {id} needs {start}")) && error.contains("cannot be restored"), "{v:#}");
    let out = dbb(["wal", "verify", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stdout.contains(&format!("BAD      backup {id} needs {start}")), "{}", out.stdout);
}

// ---------------------------------------------------------------------------
// 9. Concurrent `backup expire` runs take turns.

#[test]
fn concurrent_expire_runs_keep_exactly_one_backup_and_a_valid_archive() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let mut ids = Vec::new();
    for _ in 0..3 {
        if !ids.is_empty() {
            std::thread::sleep(Duration::from_millis(1100)); // a new backup ID
        }
        ids.push(backup(&c, &repo, &[]));
        make_archived_segment(&c);
    }
    let (_, all) = list(&repo);
    assert_eq!(all.len(), 3);
    assert!(all.iter().all(|b| b["status"] == "complete"), "{all:?}");

    let runs: Vec<_> = (0..4)
        .map(|_| {
            let mut cmd = dbb(["backup", "expire", "--keep", "1", "--repo"]);
            cmd.arg(&repo).timeout(Duration::from_secs(60));
            std::thread::spawn(move || cmd.output())
        })
        .collect();
    let outs: Vec<Output> = runs.into_iter().map(|h| h.join().unwrap()).collect();
    for o in &outs {
        assert_eq!(o.status, 0, "{}\n{}", o.stdout, o.stderr);
    }
    let all_stdout: String = outs.iter().map(|o| o.stdout.as_str()).collect::<Vec<_>>().join("\n");
    for old in &ids[..2] {
        let n = all_stdout.matches(&format!("removing backup {old}")).count();
        assert_eq!(n, 1, "{old} removed {n} times:\n{all_stdout}");
    }
    let (_, all) = list(&repo);
    let left: Vec<&str> = all.iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(left, vec![ids[2].as_str()]);
    dbb(["wal", "verify", "--repo"]).arg(&repo).assert_success();
    dbb(["backup", "verify", &ids[2], "--repo"]).arg(&repo).assert_success();
}

// ---------------------------------------------------------------------------
// 10. A FIFO or a directory is no WAL file.

#[test]
fn wal_archive_refuses_a_fifo_or_a_directory_at_once() {
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).assert_success();
    let fifo = d.join("000000010000000000000001");
    Cmd::new("mkfifo").arg(&fifo).assert_success();
    let dir = d.mkdir("000000010000000000000002");
    for p in [&fifo, &dir] {
        let started = Instant::now();
        let out = archive_cmd(p, None, &repo).timeout(Duration::from_secs(5)).output();
        assert_ne!(out.status, 0, "{out:?}");
        assert!(
            out.stderr.contains(&format!("{} is not a regular file", p.display())),
            "{}: {}",
            p.display(),
            out.stderr
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(wal_objects(&repo).is_empty(), "{:?}", wal_objects(&repo));
}
