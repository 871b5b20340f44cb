//! The harness itself: real clusters of both versions start, answer SQL,
//! switch WAL; commands run as the postgres user with the environment given.

use dbbackup_testkit::*;

#[test]
fn clusters_of_both_versions_start_and_switch_wal() {
    for v in PgVersion::all() {
        let c = Cluster::new(ClusterOptions::new(v));
        assert_eq!(c.sql("SELECT 1"), "1");
        assert!(c.sql("SHOW server_version").starts_with(&v.major().to_string()));
        assert_ne!(c.system_identifier(), 0);
        let a = c.switch_wal();
        let b = c.switch_wal();
        assert_eq!(a.len(), 24);
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
fn commands_run_as_postgres_with_their_environment() {
    let out = Cmd::new("id").arg("-un").assert_success();
    if run_as_user().is_some() {
        assert_eq!(out.stdout.trim(), "postgres");
    }
    let out = Cmd::new("sh").args(["-c", "echo $FOO-${PGHOST:-unset}"]).env("FOO", "bar").assert_success();
    assert_eq!(out.stdout.trim(), "bar-unset");
}
