//! The harness itself: real clusters of both versions start, answer SQL,
//! switch WAL; commands run as the postgres user with the environment given.

use std::path::Path;
use std::time::Duration;

use dbbackup_testkit::*;

fn is_wal_name(s: &str) -> bool {
    s.len() == 24 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[test]
fn clusters_of_both_versions_start_and_switch_wal() {
    for v in PgVersion::all() {
        let c = Cluster::new(ClusterOptions::new(v));
        assert_eq!(c.version(), v);
        assert_eq!(c.sql("SELECT 1"), "1");
        assert!(c.sql("SHOW server_version").starts_with(&v.to_string()));
        assert_ne!(c.system_identifier(), 0);
        let a = c.switch_wal();
        let b = c.switch_wal();
        assert!(is_wal_name(&a) && is_wal_name(&b), "{a:?} {b:?}");
        assert!(b > a, "{a} then {b}");
    }
}

#[test]
fn one_megabyte_segments() {
    let mut o = ClusterOptions::new(PgVersion::V15);
    o.wal_segsize_mb = Some(1);
    let c = Cluster::new(o);
    assert_eq!(c.sql("SHOW wal_segment_size"), "1MB");
}

#[test]
fn stop_start_restart_and_archiving() {
    let mut o = ClusterOptions::new(PgVersion::V18);
    o.start = false;
    let c = Cluster::new(o);
    assert!(!c.is_running());
    let arch = c.dir().mkdir("arch");
    c.append_conf("archive_mode = on");
    c.append_conf(&format!("archive_command = 'cp %p {}/%f'", arch.display()));
    c.start();
    assert!(c.is_running());
    let seg = c.switch_wal();
    c.wait_archived(&seg, Duration::from_secs(30));
    assert!(arch.join(&seg).exists());
    c.restart();
    assert!(c.is_running());
    assert_eq!(c.sql_ok("SELECT 2").unwrap(), "2");
    assert!(c.sql_ok("SELECT nope").is_err());
    c.stop();
    assert!(!c.is_running());
    let args = c.conn_args();
    assert_eq!(args[0], "--host");
    assert!(args[1].len() < 90, "socket dir too long: {}", args[1]);
}

#[test]
fn commands_run_as_postgres_with_their_environment() {
    let out = Cmd::new("id").arg("-un").assert_success();
    if run_as_user().is_some() {
        assert_eq!(out.stdout.trim(), "postgres");
        assert_eq!(Cmd::new("id").arg("-u").as_root().assert_success().stdout.trim(), "0");
    }
    let out = Cmd::new("sh").args(["-c", "echo $FOO-${PGHOST:-unset}"]).env("FOO", "bar").assert_success();
    assert_eq!(out.stdout.trim(), "bar-unset");
    let out = Cmd::new("cat").stdin("piped").assert_success();
    assert_eq!(out.stdout, "piped");
    Cmd::new("sh").args(["-c", "exit 3"]).assert_code(3);
}

#[test]
fn installed_binary_is_runnable_by_the_run_as_user() {
    let d = TestDir::new();
    let script = d.write("hello", "#!/bin/sh\necho hi\n");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let bin = install_bin(&script);
    assert!(bin.starts_with(format!("/tmp/dbbackup-testbin-{}", std::process::id())));
    assert_eq!(install_bin(Path::new("/nonexistent")), bin, "installed once per process");
    assert_eq!(Cmd::new(&bin).assert_success().stdout, "hi\n");
}

#[test]
fn cluster_is_shareable_across_threads() {
    fn sync<T: Sync + Send>() {}
    sync::<Cluster>();
}
