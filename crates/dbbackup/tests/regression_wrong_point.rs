//! Regression tests for issue 11's "wrong point" stories: paths that once
//! ended in a recovery promoting at a point other than the one asked for,
//! or a restore reporting success with its files not durable. Each test
//! replays the DBA's story on real PostgreSQL 15 and 18 servers.

mod common;

use std::path::Path;

use common::*;

/// A cluster archiving into `repo` with `t(i int)`, a backup, and rows 1
/// and 2 written after it and archived.
fn cluster_with_rows(version: PgVersion, repo: &Path) -> Cluster {
    let c = archiving_cluster(version, None, repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    backup(&c, repo, &[]);
    c.sql("INSERT INTO t VALUES (1)");
    c.sql("INSERT INTO t VALUES (2)");
    finish_wal(&c);
    c
}

/// `pg_ctl start -w` on a restored data directory: exit 0 once the server
/// accepts connections, 1 when it exited first (recovery aborted).
fn pg_ctl_start(c: &Cluster, dir: &Path, code: i32) -> String {
    let out = Cmd::new(c.bindir().join("pg_ctl"))
        .arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(dir.join("restore.log"))
        .args(["-w", "-t", "120", "start"])
        .output();
    let log = std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default();
    assert_eq!(out.status, code, "pg_ctl start: {out:?}\n--- restore.log\n{log}");
    log
}

// ---------------------------------------------------------------------------
// 1. A repository that vanished (an unmounted disk) and was "fixed" with
//    `repo init`, as the old message advised, must stop recovery, never
//    read as "no more WAL" (which promotes early, rows missing).

fn vanished_repository_stops_recovery(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = cluster_with_rows(version, &repo);
    let dir = d.join("restored");
    let port = free_port();
    let out = dbb(["restore", "pitr", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&dir)
        .args(["--port", &port.to_string()])
        .assert_success();
    // The default is an inspection copy: no archiving into the repository.
    assert!(out.stderr.contains("archive_mode = off"), "{}", out.stderr);
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    let id = json(&dbb(["repo", "info", "--json", "--repo"]).arg(&repo).assert_success())["id"]
        .as_str()
        .expect("repo info shows the repository ID")
        .to_string();
    assert!(auto.contains(&format!("--repo-id {id}")), "restore_command names the repository ID: {auto}");
    assert!(auto.contains("archive_mode = 'off'"), "{auto}");

    // The repository's file system goes away: an empty mount point is left.
    let real = d.join("repo.real");
    std::fs::rename(&repo, &real).unwrap();
    let _mount_point = d.mkdir("repo");
    let wal = c.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let fetch = |extra: &[&str]| {
        dbb(["wal", "fetch", &wal]).arg(d.join("fetched")).arg("--repo").arg(&repo).args(extra).assert_code(128)
    };
    let out = fetch(&[]);
    assert!(out.stderr.contains("not a dbbackup repository") && out.stderr.contains("mounted"), "{}", out.stderr);
    assert!(!out.stderr.contains("repo init"), "never advise creating a repository: {}", out.stderr);

    // Following the old advice: a new, empty repository there.
    dbb(["repo", "init", "--repo"]).arg(&repo).assert_success();
    let out = fetch(&[]);
    assert!(out.stderr.contains("not bound to any cluster"), "{}", out.stderr);
    // The source keeps archiving into it: bound to the same cluster, but
    // another repository (another ID).
    finish_wal(&c);
    let out = fetch(&["--repo-id", &id]);
    assert!(out.stderr.contains(&format!("not {id}")) && out.stderr.contains("re-created"), "{}", out.stderr);

    // The restored copy starts: recovery stops (the server exits), it never promotes.
    let log = pg_ctl_start(&c, &dir, 1);
    assert!(log.contains("re-created or replaced"), "{log}");
    assert!(!dir.join("postmaster.pid").exists());
    assert!(!log.contains("archive recovery complete") && !log.contains("selected new timeline"), "{log}");

    // The real repository is back: recovery reaches the end, every row there.
    std::fs::remove_dir_all(&repo).unwrap();
    std::fs::rename(&real, &repo).unwrap();
    pg_ctl_start(&c, &dir, 0);
    let r = Restored { out, dir: dir.clone(), sock: c.socket_dir().to_path_buf(), port, bindir: c.bindir() };
    r.wait_for("SELECT pg_is_in_recovery()", "f");
    assert_eq!(r.rows(), "1,2", "{}", r.describe());
    assert_eq!(r.sql("SHOW archive_mode"), "off");
}

#[test]
fn pg15_a_vanished_then_recreated_repository_stops_recovery() {
    vanished_repository_stops_recovery(PgVersion::V15);
}

#[test]
fn pg18_a_vanished_then_recreated_repository_stops_recovery() {
    vanished_repository_stops_recovery(PgVersion::V18);
}

/// A repository bound to another cluster: the recovering data directory's
/// pg_control says which cluster it is, and fetch refuses (exit 128).
#[test]
fn fetch_into_a_data_directory_of_another_cluster_is_refused() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    let name = make_archived_segment(&c);
    let other = Cluster::new(ClusterOptions::new(PgVersion::V15));
    // As PostgreSQL runs restore_command: in the data directory, %p under pg_wal/.
    let out = dbb(["wal", "fetch", &name, "pg_wal/RECOVERYXLOG", "--repo"])
        .arg(&repo)
        .current_dir(other.data_dir())
        .assert_code(128);
    assert!(out.stderr.contains("belongs to the cluster with system identifier"), "{}", out.stderr);
    assert!(out.stderr.contains(&other.system_identifier().to_string()), "{}", out.stderr);
    assert!(!other.data_dir().join("pg_wal/RECOVERYXLOG").exists());
    // The cluster's own data directory gets it.
    dbb(["wal", "fetch", &name, "pg_wal/RECOVERYXLOG", "--repo"]).arg(&repo).current_dir(c.data_dir()).assert_success();
}

// ---------------------------------------------------------------------------
// 2. `--force` reuses a directory; it never turns a mistyped time past the
//    end of the archive into "recover to the end".

fn force_does_not_mean_past_the_end(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = cluster_with_rows(version, &repo);
    let dir = d.mkdir("reused");
    let keep = d.write("reused/old-file", "from the last restore");
    // A typo: next year.
    let typo = c.sql("SELECT to_char(now() + interval '1 year', 'YYYY-MM-DD HH24:MI:SS')");
    let out = dbb(["restore", "pitr", "--force", "--target-time", &typo, "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&dir)
        .assert_code(1);
    assert!(out.stderr.contains("in the future") && out.stderr.contains("--target-past-end"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was restored"), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "from the last restore");
    // Asked for explicitly, the end of the archive is what is configured.
    dbb(["restore", "pitr", "--force", "--target-past-end", "--target-time", &typo, "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&dir)
        .assert_success();
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(!auto.contains("recovery_target_time "), "{auto}");
    assert!(!keep.exists());
}

#[test]
fn pg15_force_does_not_mean_past_the_end() {
    force_does_not_mean_past_the_end(PgVersion::V15);
}

#[test]
fn pg18_force_does_not_mean_past_the_end() {
    force_does_not_mean_past_the_end(PgVersion::V18);
}

// ---------------------------------------------------------------------------
// 5. Exit 0 means the restored files are on disk: every file is fsynced.

#[test]
fn restore_fsyncs_every_restored_file_and_directory() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let _c = cluster_with_rows(PgVersion::V15, &repo);
    let dir = d.join("restored");
    let trace = d.join("fsync.trace");
    Cmd::new("strace")
        .args(["-f", "-qq", "-e", "trace=fsync,fdatasync,syncfs", "-o"])
        .arg(&trace)
        .arg(bin())
        .args(["restore", "pitr", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&dir)
        .assert_success();
    let calls = std::fs::read_to_string(&trace).unwrap();
    // Threads interleave: a call may be split into "fsync(5 <unfinished ...>"
    // and "<... fsync resumed>) = 0"; count completed calls.
    let synced: usize = calls.lines().filter(|l| l.contains("fsync") && l.trim_end().ends_with("= 0")).count();
    let (mut files, mut dirs) = (0usize, 0usize);
    let mut stack = vec![dir.clone()];
    while let Some(p) = stack.pop() {
        dirs += 1;
        for e in std::fs::read_dir(&p).unwrap().flatten() {
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                files += 1;
            }
        }
    }
    assert!(files > 900, "a whole data directory: {files} files");
    assert!(synced >= files + dirs, "{synced} fsync calls for {files} files and {dirs} directories");
}

// ---------------------------------------------------------------------------
// `--force` replaces an old restore, never what a slip of the path would
// destroy: a running cluster, a data directory around or below the target,
// the repository itself.

#[test]
fn force_never_replaces_a_cluster_or_a_repository() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = cluster_with_rows(PgVersion::V15, &repo);
    let stopped = Cluster::new({
        let mut o = ClusterOptions::new(PgVersion::V15);
        o.start = false;
        o
    });
    let force = |target: &Path, why: &str| {
        let out = dbb(["restore", "pitr", "--force", "--target-immediate", "--repo"])
            .arg(&repo)
            .arg("--target-dir")
            .arg(target)
            .assert_code(1);
        assert!(out.stderr.contains("--force refuses to replace the contents of"), "{}", out.stderr);
        assert!(out.stderr.contains(why) && out.stderr.contains("nothing was changed"), "{why}: {}", out.stderr);
    };
    // The directory holding the repository, and the repository itself.
    force(d.path(), "the repository");
    force(&repo, "the repository");
    // Around a running cluster, and inside one.
    force(c.dir().path(), "a server is running in");
    force(&c.data_dir().join("pg_wal"), "inside the data directory");
    // Around a stopped cluster's data directory.
    force(stopped.dir().path(), "holds another data directory");
    assert!(repo.join("dbbackup.json").exists());
    assert_eq!(c.sql("SELECT count(*) FROM t"), "2");
    assert!(stopped.data_dir().join("PG_VERSION").exists());
    // An old restore is what --force is for.
    let old = d.join("old");
    dbb(["restore", "pitr", "--repo"]).arg(&repo).arg("--target-dir").arg(&old).assert_success();
    dbb(["restore", "pitr", "--force", "--target-immediate", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&old)
        .assert_success();
}

// ---------------------------------------------------------------------------
// A restored copy promoted onto the timeline number another copy already
// archived must not start archiving into that repository: the two
// histories would mix under one timeline.

#[test]
fn pitr_enable_refuses_a_copy_onto_a_timeline_another_copy_archived() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = cluster_with_rows(PgVersion::V15, &repo);
    c.stop();
    // An inspection copy (not archiving) promotes to timeline 2 and is written to.
    let r4 = restore(&c, &repo, &d.join("r4"), &[]);
    r4.promoted();
    r4.sql("INSERT INTO t VALUES (200)");
    r4.sql("SELECT pg_switch_wal()");
    // A second copy, archiving, also promotes to timeline 2 and archives it.
    let r5 = restore(&c, &repo, &d.join("r5"), &["--archive-mode", "preserve"]);
    assert_eq!(r5.promoted()["recovery"]["timeline"], 2, "{}", r5.describe());
    r5.sql("INSERT INTO t VALUES (300)");
    let seg = r5.finish_wal();
    assert!(seg.starts_with("00000002"), "{seg}");
    r5.stop();
    // Archiving the first copy into the same repository is refused.
    let out = dbb(["pitr", "enable", "--repo"])
        .arg(&repo)
        .args(["--host", &r4.sock.display().to_string(), "--port", &r4.port.to_string()])
        .assert_code(1);
    assert!(out.stderr.contains("already holds timeline 2 of another history"), "{}", out.stderr);
    assert!(out.stderr.contains("archive it into another repository"), "{}", out.stderr);
    assert_eq!(r4.sql("SHOW archive_mode"), "off", "nothing was changed");
}

// ---------------------------------------------------------------------------
// `pitr enable` run as root with a root-owned key file: archive_command
// (run by the server's OS user) could never read it; refused up front.

#[test]
fn pitr_enable_refuses_a_key_file_the_server_cannot_read() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let key = d.join("root.key");
    std::fs::write(&key, format!("{}\n", "ab".repeat(32))).unwrap();
    // Created by root (the tests run as root in CI), mode 0600.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    if run_as_user().is_none() {
        return; // not root: every file here is the server user's own
    }
    dbb(["repo", "init", "--encrypt", "--encryption-key-file"])
        .arg(&key)
        .arg("--repo")
        .arg(&repo)
        .as_root()
        .assert_success();
    chown_to_run_user(&repo);
    let out = dbb(["pitr", "enable", "--encryption-key-file"])
        .arg(&key)
        .arg("--repo")
        .arg(&repo)
        .args(c.conn_args())
        .as_root()
        .assert_code(1);
    assert!(
        out.stderr.contains("cannot be read by the server's OS user") && out.stderr.contains("chown"),
        "{}",
        out.stderr
    );
    assert_eq!(c.sql("SHOW archive_mode"), "off", "nothing was changed");
}
