//! Repositories in object stores, against real servers: Garage (S3) for
//! the whole PITR story on PostgreSQL 15 and 18, and the write protocol on
//! a store that ignores conditional writes; Azurite (Azure) for archive,
//! fetch, backup and restore; fake-gcs-server (GCS, behind the testkit's
//! XML-to-JSON upload proxy) for archive, fetch, backup with multipart
//! uploads, verify and a point-in-time restore on PostgreSQL 15 and 18,
//! and the refusal of a differing duplicate.

mod common;

use std::path::PathBuf;

use common::*;
use dbbackup_testkit::gcs_xml::Call;
use dbbackup_testkit::stores::{Azurite, FakeGcs, Garage};

/// A private config file the `postgres` user can read.
fn config(d: &TestDir, body: &str) -> PathBuf {
    private_file(d, "dbbackup.toml", body)
}

/// Archive, backup, writes, a restore to a time and to the end, on S3.
fn pitr_story_on_s3(version: PgVersion) {
    let g = Garage::single();
    let d = TestDir::new();
    let cfg = config(&d, &g.config_toml("pg/main"));
    let c = cluster_on(version, &cfg);
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let out = with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    let id = out.stdout.lines().last().unwrap().trim().to_string();
    c.sql("INSERT INTO t VALUES (1)");
    let t1 = c.sql("SELECT now()");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.sql("INSERT INTO t VALUES (2)");
    finish_wal(&c);

    // The catalog commands see the same repository.
    let info = json(&with_config(&cfg, &["repo", "info", "--json"]).assert_success());
    assert!(info["repository"].as_str().unwrap().starts_with("s3://"), "{info}");
    let list = json(&with_config(&cfg, &["backup", "list", "--json"]).assert_success());
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    assert_eq!(list[0]["status"], "complete", "{list}");
    with_config(&cfg, &["wal", "verify"]).assert_success();
    with_config(&cfg, &["backup", "verify", &id]).assert_success();
    let v = json(&with_config(&cfg, &["pitr", "status", "--json"]).args(c.conn_args()).output());
    assert_eq!(v["verdict"], "ok", "{}", findings(&v));
    // Without --config, status reads the repository with the config file
    // archive_command names (as archiving does), by its URL too.
    let url = info["repository"].as_str().unwrap().to_string();
    for extra in [vec![], vec!["--repo", url.as_str()]] {
        let mut cmd = dbb(["pitr", "status", "--json"]);
        let v = json(&cmd.args(extra).args(c.conn_args()).output());
        assert_eq!(v["verdict"], "ok", "{}", findings(&v));
    }

    // A restore to a time between the two rows, then one to the end.
    let dir = d.join("restored");
    let r = restore_on(&cfg, &c, &dir, &["--target-time", &t1]);
    r.promoted();
    assert_eq!(r.rows(), "1", "{}", r.describe());
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("--config") && !auto.contains("secret"), "{auto}");
    r.stop();

    let end = d.join("end");
    let r = restore_on(&cfg, &c, &end, &[]);
    r.promoted();
    assert_eq!(r.rows(), "1,2", "{}", r.describe());
}

#[test]
fn pg15_pitr_story_on_s3() {
    pitr_story_on_s3(PgVersion::V15);
}

#[test]
fn pg18_pitr_story_on_s3() {
    pitr_story_on_s3(PgVersion::V18);
}

/// Garage ignores `If-None-Match: *`: an archived WAL object is still never
/// replaced, and a differing duplicate is refused naming both checksums.
#[test]
fn a_differing_duplicate_is_refused_on_a_store_without_conditional_writes() {
    let g = Garage::single();
    let d = TestDir::new();
    let cfg = config(&d, &g.config_toml("dup"));
    differing_duplicate_refused_identical_accepted(&d, &cfg);
}

/// An archived segment's name with other content is refused (exit 1, both
/// checksums named); with the same content it succeeds, and one object
/// stays.
fn differing_duplicate_refused_identical_accepted(d: &TestDir, cfg: &std::path::Path) {
    let c = cluster_on(PgVersion::V15, cfg);
    let name = make_archived_segment(&c);
    let listed = json(&with_config(cfg, &["wal", "list", "--json"]).assert_success());
    let stored = listed.as_array().unwrap().iter().find(|o| o["name"] == name.as_str()).unwrap().clone();

    // The same name with other content: the archived segment, fetched
    // back, with one byte changed past its page header.
    let copy = d.join(&name);
    with_config(cfg, &["wal", "fetch", &name]).arg(&copy).assert_success();
    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[20000] ^= 0xff;
    std::fs::write(&copy, &bytes).unwrap();
    chown_to_run_user(&copy);
    let out = with_config(cfg, &["wal", "archive"]).arg(&copy).arg(&name).assert_code(1);
    assert!(out.stderr.contains("already archived with different content"), "{}", out.stderr);
    assert!(out.stderr.contains(stored["checksum_blake3"].as_str().unwrap()), "{}", out.stderr);
    // Identical content succeeds without a rewrite.
    with_config(cfg, &["wal", "fetch", &name]).arg(d.join("same")).assert_success();
    chown_to_run_user(&d.join("same"));
    with_config(cfg, &["wal", "archive"]).arg(d.join("same")).arg(&name).assert_success();
    let after = json(&with_config(cfg, &["wal", "list", "--json"]).assert_success());
    let objects: Vec<_> = after.as_array().unwrap().iter().filter(|o| o["name"] == name.as_str()).collect();
    assert_eq!(objects.len(), 1, "{after}");
    assert_eq!(objects[0]["checksum_blake3"], stored["checksum_blake3"]);
}

/// Bad input: one clear line, non-zero, nothing created.
#[test]
fn object_store_mistakes_are_one_clear_line() {
    let g = Garage::single();
    let d = TestDir::new();
    let unknown = dbb(["repo", "info", "--repo", "ftp://x/y"]).assert_code(1);
    assert!(unknown.stderr.contains("unknown scheme ftp://"), "{}", unknown.stderr);
    let missing = config(&d, &g.config_toml("p").replace(g.bucket(), "no-such-bucket"));
    let out = with_config(&missing, &["repo", "init"]).assert_code(1);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("the bucket (or container) does not exist"), "{}", out.stderr);
    let wrong =
        private_file(&d, "wrong.toml", g.config_toml("p").replace(g.secret_access_key(), "0".repeat(64).as_str()));
    let out = with_config(&wrong, &["repo", "init"]).assert_code(1);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("access denied: check the credentials"), "{}", out.stderr);
    assert!(!out.stderr.contains("temporary"), "refused credentials need a fix: {}", out.stderr);
    // A store that is down: a clear line, and `wal fetch` stops recovery (128), never "not archived".
    let dead = private_file(&d, "dead.toml", g.config_toml("p").replace(&g.endpoint(), "http://127.0.0.1:1"));
    let out = with_config(&dead, &["repo", "init"]).assert_code(1);
    assert!(out.stderr.contains("cannot reach the store"), "{}", out.stderr);
    let out = with_config(&dead, &["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).assert_code(128);
    assert!(out.stderr.contains("cannot reach the store"), "{}", out.stderr);
    assert!(out.stderr.contains("a temporary failure"), "{}", out.stderr);
    // Plain http to another host without allow-http.
    let far = private_file(&d, "far.toml", g.config_toml("p").replace("127.0.0.1", "192.0.2.1"));
    let out = with_config(&far, &["repo", "info"]).assert_code(1);
    assert!(out.stderr.contains("allow-http"), "{}", out.stderr);
    // A secret file others can read.
    let secret = d.write("secret", g.secret_access_key());
    let body = g.config_toml("p").replace(
        &format!("secret-access-key = \"{}\"", g.secret_access_key()),
        &format!("secret-access-key-file = \"{}\"", secret.display()),
    );
    let shared = private_file(&d, "shared.toml", body);
    let out = with_config(&shared, &["repo", "init"]).assert_code(1);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    // Nothing was created: the bucket's prefix is still empty.
    let ok = config(&d, &g.config_toml("p"));
    let out = with_config(&ok, &["repo", "info"]).assert_code(1);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}

/// Archive, fetch, backup, verify and restore on Azure (Azurite).
#[test]
fn archive_backup_restore_on_azure() {
    let a = Azurite::start();
    let d = TestDir::new();
    let cfg = config(&d, &a.config_toml("pg"));
    let c = cluster_on(PgVersion::V15, &cfg);
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    c.sql("INSERT INTO t VALUES (1)");
    let last = finish_wal(&c);
    with_config(&cfg, &["wal", "verify"]).assert_success();
    with_config(&cfg, &["backup", "verify", "latest"]).assert_success();
    with_config(&cfg, &["wal", "fetch", &last]).arg(d.join("got")).assert_success();
    let dir = d.join("restored");
    let r = restore_on(&cfg, &c, &dir, &[]);
    r.promoted();
    assert_eq!(r.rows(), "1", "{}", r.describe());
}

/// `pitr enable` on S3 writes `--config FILE` into archive_command, never a
/// secret; a config file holding a secret must be private.
#[test]
fn pitr_enable_on_s3_names_the_config_file_never_a_secret() {
    let g = Garage::single();
    let d = TestDir::new();
    let cfg = config(&d, &g.config_toml("enabled"));
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    // Without --config, the server could not reach the store.
    let out = dbb(["pitr", "enable", "--repo", &format!("s3://{}/enabled", g.bucket())]).args(c.conn_args()).output();
    assert_ne!(out.status, 0, "{out:?}");
    let out = with_config(&cfg, &["pitr", "enable", "--restart"]).args(c.conn_args()).assert_success();
    assert!(out.stdout.contains("archiving works"), "{}", out.stdout);
    let cmd = c.sql("SHOW archive_command");
    assert!(cmd.contains(&format!("--config {}", cfg.display())), "{cmd}");
    assert!(!cmd.contains(g.secret_access_key()) && !cmd.contains(g.access_key_id()), "{cmd}");
    let v = json(&with_config(&cfg, &["pitr", "status", "--json"]).args(c.conn_args()).output());
    assert_ne!(v["verdict"], "error", "{}", findings(&v));
    with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();

    // The same file readable by others is refused, with the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = with_config(&cfg, &["repo", "info"]).assert_code(2);
    assert!(out.stderr.contains("chmod 600") && out.stderr.contains("an object-store secret"), "{}", out.stderr);
}

/// A three-node Garage (replication 3): with one node down, archiving,
/// backups and restores go on; with two down, archiving fails and
/// PostgreSQL retries (never a success for a segment not stored); once the
/// nodes are back, the segment arrives and nothing is lost.
#[test]
fn garage_nodes_failing_lose_nothing() {
    let mut g = Garage::cluster3();
    let d = TestDir::new();
    let cfg = config(&d, &g.config_toml("ha"));
    let c = cluster_on(PgVersion::V15, &cfg);
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);

    // One node down.
    g.stop_node(2);
    with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    c.sql("INSERT INTO t VALUES (1)");
    finish_wal(&c);
    let dir = d.join("one-down");
    let r = restore_on(&cfg, &c, &dir, &[]);
    r.promoted();
    assert_eq!(r.rows(), "1", "{}", r.describe());
    r.stop();

    // Two nodes down: no quorum. The segment is not archived, and
    // PostgreSQL keeps it and retries.
    g.stop_node(1);
    c.sql("INSERT INTO t VALUES (2)");
    let seg = c.switch_wal();
    let start = std::time::Instant::now();
    loop {
        let failed = c.sql("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver");
        if failed == seg {
            break;
        }
        assert!(start.elapsed() < std::time::Duration::from_secs(240), "no archive failure seen:\n{}", c.log_tail(20));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_ne!(c.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver"), seg);
    assert!(c.data_dir().join("pg_wal").join(&seg).exists(), "PostgreSQL keeps the segment");

    // Back: the retry stores it, and the archive is whole.
    g.start_node(1);
    g.start_node(2);
    c.wait_archived(&seg, std::time::Duration::from_secs(300));
    with_config(&cfg, &["wal", "verify"]).assert_success();
    let dir = d.join("all-back");
    let r = restore_on(&cfg, &c, &dir, &[]);
    r.promoted();
    assert_eq!(r.rows(), "1,2", "{}", r.describe());
}

/// An encrypted repository on S3 through its whole life: init, archive,
/// two backups, expiry (leases for the lock, deletes by prefix), verify,
/// and a restore whose restore_command reads the key and the config.
#[test]
fn encrypted_repository_with_retention_on_s3() {
    let g = Garage::single();
    let d = TestDir::new();
    let key = key_file(&d, "key", 0x42);
    let body = format!("{}encryption-key-file = \"{}\"\n", g.config_toml("enc"), key.display());
    // `encryption-key-file` is a top-level key: put it before the tables.
    let (top, tables) = body.split_once("\n[s3]").unwrap();
    let (tables, key_line) = tables.rsplit_once("encryption-key-file").unwrap();
    let cfg = config(&d, &format!("{top}\nencryption-key-file{key_line}\n[s3]{tables}"));
    with_config(&cfg, &["repo", "init", "--encrypt"]).assert_success();
    let c = cluster_on(PgVersion::V15, &cfg);
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let first = with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    let first = first.stdout.lines().last().unwrap().trim().to_string();
    c.sql("INSERT INTO t VALUES (1)");
    finish_wal(&c);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    with_config(&cfg, &["backup", "base", "--fast", "--type", "full"]).args(c.conn_args()).assert_success();
    c.sql("INSERT INTO t VALUES (2)");
    finish_wal(&c);

    let out = with_config(&cfg, &["backup", "expire", "--keep", "1"]).assert_success();
    assert!(out.stdout.contains(&first) || out.stderr.contains(&first), "{out:?}");
    let list = json(&with_config(&cfg, &["backup", "list", "--json"]).assert_success());
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_ne!(list[0]["id"], first.as_str());
    with_config(&cfg, &["wal", "verify"]).assert_success();
    let objects = json(&with_config(&cfg, &["wal", "list", "--json"]).assert_success());
    assert!(objects.as_array().unwrap().iter().all(|o| o["encrypted"] == true), "{objects}");

    let dir = d.join("restored");
    let r = restore_on(&cfg, &c, &dir, &[]);
    r.promoted();
    assert_eq!(r.rows(), "1,2", "{}", r.describe());
}

/// GCS (fake-gcs-server behind the testkit's XML proxy, so object_store's
/// real GCS client does every request): archive through archive_command,
/// a base backup big enough for multipart uploads, wal and backup verify,
/// fetch, and a restore to a time between two rows.
fn archive_backup_restore_on_gcs(version: PgVersion) {
    let s = FakeGcs::start();
    let d = TestDir::new();
    let cfg = config(&d, &s.config_toml("pg"));
    let c = cluster_on(version, &cfg);
    c.sql("CREATE TABLE t(i int)");
    // About 30 MB of half-compressible rows: the table's file is still
    // over a part (8 MiB) once compressed, so it goes up in parts.
    c.sql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((-g)::text) AS pad FROM generate_series(1, 300000) g");
    let size: u64 = c.sql("SELECT pg_relation_size('big')").parse().unwrap();
    assert!(size > 24 << 20, "big is only {size} bytes");
    make_archived_segment(&c);

    let out = with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    let id = out.stdout.lines().last().unwrap().trim().to_string();
    let p = s.proxy();
    eprintln!(
        "through the proxy: {} puts, {} create-only puts, {} multipart uploads of {} parts, {} relayed",
        p.count(Call::Put),
        p.count(Call::ConditionalPut),
        p.count(Call::MultipartComplete),
        p.count(Call::MultipartPart),
        p.count(Call::Relayed)
    );
    assert!(p.count(Call::MultipartComplete) >= 1, "no multipart upload:\n{}", p.describe(40));
    assert!(p.count(Call::ConditionalPut) >= 1, "no create-only put:\n{}", p.describe(40));
    assert_eq!(p.open_uploads(), 0, "an upload left open:\n{}", p.describe(40));

    c.sql("INSERT INTO t VALUES (1)");
    let t1 = c.sql("SELECT now()");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.sql("INSERT INTO t VALUES (2)");
    let last = finish_wal(&c);

    let info = json(&with_config(&cfg, &["repo", "info", "--json"]).assert_success());
    assert_eq!(info["repository"], format!("gs://{}/pg", s.bucket()).as_str(), "{info}");
    let list = json(&with_config(&cfg, &["backup", "list", "--json"]).assert_success());
    assert_eq!(list[0]["id"], id.as_str(), "{list}");
    assert_eq!(list[0]["status"], "complete", "{list}");
    with_config(&cfg, &["wal", "verify"]).assert_success();
    with_config(&cfg, &["backup", "verify", &id]).assert_success();
    let v = json(&with_config(&cfg, &["pitr", "status", "--json"]).args(c.conn_args()).output());
    assert_eq!(v["verdict"], "ok", "{}", findings(&v));
    let got = d.join("got");
    with_config(&cfg, &["wal", "fetch", &last]).arg(&got).assert_success();
    assert_eq!(std::fs::metadata(&got).unwrap().len(), 16 << 20);

    let dir = d.join("restored");
    let r = restore_on(&cfg, &c, &dir, &["--target-time", &t1]);
    r.promoted();
    assert_eq!(r.rows(), "1", "{}", r.describe());
    assert_eq!(r.sql("SELECT count(*), sum(g) FROM big"), "300000|45000150000", "{}", r.describe());
    assert_eq!(s.proxy().open_uploads(), 0, "{}", s.proxy().describe(40));
}

#[test]
fn archive_backup_restore_on_gcs_pg15() {
    archive_backup_restore_on_gcs(PgVersion::V15);
}

#[test]
fn archive_backup_restore_on_gcs_pg18() {
    archive_backup_restore_on_gcs(PgVersion::V18);
}

/// GCS honours conditional creates (fake-gcs-server answers 412); the
/// duplicate rules hold there as on a store that ignores them.
#[test]
fn a_differing_duplicate_is_refused_on_gcs() {
    let s = FakeGcs::start();
    let d = TestDir::new();
    let cfg = config(&d, &s.config_toml("dup"));
    differing_duplicate_refused_identical_accepted(&d, &cfg);
    assert!(s.proxy().count(Call::ConditionalPut) >= 1, "{}", s.proxy().describe(40));
}

/// The region the store does not serve, and a prefix that already holds
/// another cluster's repository: one clear line each, exit 1, nothing
/// written (the other cluster's repository is untouched).
#[test]
fn wrong_region_and_another_clusters_prefix_are_refused() {
    let g = Garage::single();
    let d = TestDir::new();
    let body = g.config_toml("pg");
    let region = private_file(&d, "region.toml", body.replace("region = \"garage\"", "region = \"eu-west-3\""));
    let out = with_config(&region, &["repo", "init"]).assert_code(1);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    assert!(out.stderr.contains("region"), "{}", out.stderr);

    // Cluster a archives into s3://BUCKET/pg; cluster b is pointed at it.
    let cfg = config(&d, &body);
    let a = cluster_on(PgVersion::V15, &cfg);
    make_archived_segment(&a);
    let before = json(&with_config(&cfg, &["wal", "list", "--json"]).assert_success());
    let b = Cluster::new(ClusterOptions::new(PgVersion::V15));
    b.sql("CREATE TABLE x(i int)");
    let out = with_config(&cfg, &["pitr", "enable"]).args(b.conn_args()).assert_code(1);
    assert!(out.stderr.contains("another cluster"), "{}", out.stderr);
    assert_eq!(b.sql("SHOW archive_mode"), "off");
    let out = with_config(&cfg, &["backup", "base", "--fast"]).args(b.conn_args()).assert_code(1);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    let seg = b.data_dir().join("pg_wal").join(b.sql("SELECT pg_walfile_name(pg_current_wal_lsn())"));
    let out = with_config(&cfg, &["wal", "archive"]).arg(&seg).assert_code(1);
    assert!(out.stderr.contains("another cluster"), "{}", out.stderr);
    let after = json(&with_config(&cfg, &["wal", "list", "--json"]).assert_success());
    assert_eq!(before, after);
    let list = json(&with_config(&cfg, &["backup", "list", "--json"]).assert_success());
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
}
