//! The harness itself: real clusters of both versions start, answer SQL,
//! switch WAL; commands run as the postgres user with the environment given.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use dbbackup_testkit::*;

fn is_wal_name(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
}

fn basics(v: PgVersion) {
    assert!(v.available(), "PostgreSQL {v} missing: run scripts/setup.sh");
    let c = Cluster::new(ClusterOptions::new(v));
    assert!(c.is_running());
    assert_eq!(c.version(), v);
    assert_eq!(c.sql("SELECT 1"), "1");
    assert!(c.sql("SHOW server_version").starts_with(&format!("{v}.")), "{}", c.sql("SHOW server_version"));
    assert_eq!(c.sql("SHOW fsync"), "on");
    assert_eq!(c.sql("SHOW port"), c.port().to_string());
    let sysid = c.system_identifier();
    assert_ne!(sysid, 0);

    let a = c.switch_wal();
    let b = c.switch_wal();
    assert!(is_wal_name(&a) && is_wal_name(&b), "{a} {b}");
    assert!(b > a, "{a} then {b}");
    assert!(c.data_dir().join("pg_wal").join(&b).exists() || c.sql("SHOW archive_mode") == "off");

    // The client library and the libpq environment reach the same server.
    let mut client = c.client();
    let row = client.query_one("SELECT system_identifier::text FROM pg_control_system()", &[]).unwrap();
    assert_eq!(row.get::<_, String>(0), sysid.to_string());
    let out = Cmd::new(c.bindir().join("psql")).envs(c.env()).args(["-XAtc", "SELECT current_user"]).assert_success();
    assert_eq!(out.stdout.trim(), "postgres");
    let out = c.bin_cmd("pg_controldata").arg(c.data_dir()).assert_success();
    assert!(out.stdout.contains(&sysid.to_string()), "{}", out.stdout);
    drop(client);

    c.restart();
    assert_eq!(c.sql("SELECT 2"), "2");
    c.stop();
    assert!(!c.is_running());
    assert!(c.sql_ok("SELECT 1").is_err());
    c.start();
    assert!(c.log_tail(50).contains("database system is ready"), "{}", c.log_tail(50));
}

#[test]
fn pg15_cluster_basics() {
    basics(PgVersion::V15);
}

#[test]
fn pg18_cluster_basics() {
    basics(PgVersion::V18);
}

fn one_megabyte_segments(v: PgVersion) {
    let mut o = ClusterOptions::new(v);
    o.wal_segsize_mb = Some(1);
    let c = Cluster::new(o);
    assert_eq!(c.sql("SHOW wal_segment_size"), "1MB");
    let name = c.switch_wal();
    let seg = c.data_dir().join("pg_wal").join(c.switch_wal());
    assert!(is_wal_name(&name));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), 1 << 20);
}

#[test]
fn pg15_one_megabyte_segments() {
    one_megabyte_segments(PgVersion::V15);
}

#[test]
fn pg18_one_megabyte_segments() {
    one_megabyte_segments(PgVersion::V18);
}

#[test]
fn archiving_is_observed() {
    let repo = TestDir::new();
    let archive = repo.mkdir("archive");
    let mut o = ClusterOptions::new(PgVersion::V15);
    o.set("archive_mode", "on").set("archive_command", format!("'cp %p {}/%f'", archive.display()));
    let c = Cluster::new(o);
    let name = c.switch_wal();
    c.wait_archived(&name, Duration::from_secs(60));
    assert!(archive.join(&name).exists());

    // Archiving failures are reported with the log.
    c.append_conf("archive_command = 'false'");
    c.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    let next = c.switch_wal();
    let err = std::panic::catch_unwind(|| c.wait_archived(&next, Duration::from_secs(3))).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("not archived") && msg.contains("failures"), "{msg}");
}

#[test]
fn cluster_is_stopped_and_removed_on_panic() {
    let (dir, pid_file) = {
        let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
        (c.dir().path().to_path_buf(), c.data_dir().join("postmaster.pid"))
    };
    assert!(!pid_file.exists());
    assert!(!dir.exists());

    let mut seen = None;
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
        let pid: u32 = std::fs::read_to_string(c.data_dir().join("postmaster.pid"))
            .unwrap()
            .lines()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        seen = Some((c.dir().path().to_path_buf(), pid));
        panic!("test failure");
    }));
    assert!(r.is_err());
    let (dir, pid) = seen.unwrap();
    assert!(!dir.exists(), "{} left behind", dir.display());
    // The pid file goes just before the process does (then init reaps it).
    let alive = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
    };
    let start = Instant::now();
    while alive() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(), "postmaster {pid} still running");
}

#[test]
fn commands_run_as_postgres_with_their_environment() {
    let out = Cmd::new("id").arg("-un").assert_success();
    if run_as_user().is_some() {
        assert_eq!(out.stdout.trim(), "postgres");
        assert_eq!(Cmd::new("id").arg("-u").as_root().assert_success().stdout.trim(), "0");
        // The test's own directory may be unreachable for postgres.
        assert_eq!(Cmd::new("pwd").assert_success().stdout.trim(), "/");
    }
    let out = Cmd::new("sh")
        .args(["-c", "echo \"$FOO|${PGHOST-unset}|$SPACED\""])
        .env("FOO", "bar")
        .env("PGHOST", "x")
        .env_remove("PGHOST")
        .env("SPACED", "a b=c")
        .assert_success();
    assert_eq!(out.stdout.trim(), "bar|unset|a b=c");

    let d = TestDir::new();
    let out = Cmd::new("pwd").current_dir(d.path()).assert_success();
    assert_eq!(Path::new(out.stdout.trim()), d.path());
}

#[test]
fn exit_codes_signals_stdin_and_timeouts() {
    assert_eq!(Cmd::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]).assert_code(3).stderr, "err\n");
    assert_eq!(Cmd::new("sh").args(["-c", "kill -9 $$"]).output().status, 137);

    // Large stdin and stdout at once do not deadlock.
    let big = vec![b'x'; 4 << 20];
    let out = Cmd::new("cat").stdin(big.clone()).assert_success();
    assert_eq!(out.stdout.len(), big.len());

    let err = std::panic::catch_unwind(|| Cmd::new("false").assert_success()).unwrap_err();
    let msg = err.downcast_ref::<String>().unwrap();
    assert!(msg.contains("false") && msg.contains("expected exit 0, got 1"), "{msg}");

    let start = Instant::now();
    let err = std::panic::catch_unwind(|| Cmd::new("sleep").arg("30").timeout(Duration::from_millis(300)).output())
        .unwrap_err();
    assert!(err.downcast_ref::<String>().unwrap().contains("timed out"));
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn test_dirs_belong_to_the_run_as_user_and_vanish() {
    let path;
    {
        let d = TestDir::new();
        path = d.path().to_path_buf();
        assert!(path.starts_with("/tmp"));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o755);
        let nested = d.mkdir("a/b/c");
        let file = d.write("x/y.txt", "hello");
        let expect_uid = if run_as_user().is_some() {
            Cmd::new("id").arg("-u").assert_success().stdout.trim().parse::<u32>().unwrap()
        } else {
            std::fs::metadata("/proc/self").unwrap().uid()
        };
        for p in [d.path(), &d.join("a"), &d.join("a/b"), &nested, &d.join("x"), &file] {
            assert_eq!(std::fs::metadata(p).unwrap().uid(), expect_uid, "{}", p.display());
        }
        // The run-as user can write there, and read-only leftovers go too.
        Cmd::new("sh")
            .arg("-c")
            .arg(format!("echo hi > {0}/a/b/c/f && chmod 0500 {0}/a/b/c && chmod 0400 {0}/a/b/c/f", d.path().display()))
            .assert_success();
    }
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn installed_binary_is_shared_and_runnable() {
    let src = TestDir::new();
    let bin = src.write("tool", "#!/bin/sh\necho tool $1\n");
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let a = install_bin(&bin);
    assert!(a.to_string_lossy().starts_with("/tmp/dbbackup-testbin-"), "{}", a.display());
    assert_eq!(install_bin(&bin), a);
    assert_eq!(Cmd::new(&a).arg("ok").assert_success().stdout, "tool ok\n");
    assert_eq!(std::fs::metadata(a.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o755);
    drop(src);
    assert!(a.exists(), "the installed copy outlives its source directory");
    let _ = std::fs::remove_dir_all(a.parent().unwrap());
}
