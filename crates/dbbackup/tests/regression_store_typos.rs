//! What a black-box audit of object-store repositories found: typos a DBA
//! makes in the config file, a segment archived by hand before PostgreSQL
//! finished it, files archive_command cannot read, and a restart pg_ctl
//! cannot do. Each is refused with one line before anything changes; none
//! may make `wal fetch` exit with a code PostgreSQL reads as "not archived".

mod common;

use common::*;
use dbbackup_testkit::stores::Garage;

/// A mistyped endpoint or region is one line naming the setting, exit 1
/// (fetch: 128), and nothing is created. It once crashed every command
/// with exit 101, which in restore_command ended recovery early.
#[test]
fn mistyped_endpoints_and_regions_are_one_line_and_fetch_stops_recovery() {
    let g = Garage::single();
    let d = TestDir::new();
    let body = g.config_toml("pg");
    let endpoint = g.endpoint();
    let hostport = endpoint.trim_start_matches("http://").to_string();
    let typos = [
        hostport.clone(),
        "localhost".to_string(),
        format!("http:/{hostport}"),
        format!(" {endpoint}"),
        format!("{endpoint} "),
        String::new(),
        "http://127.0.0.1:99999".to_string(),
    ];
    for (i, typo) in typos.iter().enumerate() {
        let cfg = private_file(&d, &format!("e{i}.toml"), body.replace(&endpoint, typo));
        let out = with_config(&cfg, &["repo", "init"]).assert_code(1);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{typo:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("[s3] endpoint") && out.stderr.contains("https://HOST[:PORT]"),
            "{typo:?}: {}",
            out.stderr
        );
        let out = with_config(&cfg, &["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).assert_code(128);
        assert!(out.stderr.contains("[s3] endpoint"), "{typo:?}: {}", out.stderr);
        assert!(!d.join("x").exists());
    }
    let cfg = private_file(&d, "r.toml", body.replace("region = \"garage\"", "region = \"eu\\nwest\""));
    let out = with_config(&cfg, &["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).assert_code(128);
    assert!(out.stderr.contains("[s3] region"), "{}", out.stderr);
    // Nothing was created in the bucket by any of them.
    let good = private_file(&d, "good.toml", &body);
    let out = with_config(&good, &["repo", "info"]).assert_code(1);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}

/// `s3:/bucket/prefix` (one slash) once became a local directory under the
/// current one, with the [s3] table ignored and `pitr status` saying ok.
#[test]
fn a_mistyped_url_is_refused_not_taken_for_a_local_directory() {
    let g = Garage::single();
    let d = TestDir::new();
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    for typo in ["s3:/dbbackup-test/pg", "s3:dbbackup-test/pg", "s3//dbbackup-test/pg"] {
        let cfg = private_file(&d, "typo.toml", g.config_toml("pg").replace("s3://dbbackup-test/pg", typo));
        let out = with_config(&cfg, &["pitr", "enable"]).args(c.conn_args()).current_dir(d.path()).assert_code(1);
        assert!(out.stderr.contains("looks like a mistyped URL"), "{typo}: {}", out.stderr);
        let out = dbb(["repo", "init", "--repo", typo]).current_dir(d.path()).assert_code(1);
        assert!(out.stderr.contains("looks like a mistyped URL"), "{typo}: {}", out.stderr);
    }
    assert!(!d.join("s3:").exists() && !d.join("s3:dbbackup-test").exists() && !d.join("s3").exists());
    assert_eq!(c.sql("SHOW archive_mode"), "off");
}

/// Archiving by hand the segment PostgreSQL is still writing once stored
/// unfinished WAL under its name, and archiving stopped for good when the
/// finished segment came. Refused now; PostgreSQL archives it later.
#[test]
fn the_segment_being_written_is_not_archived_by_hand() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    c.sql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)");
    let current = c.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let path = c.data_dir().join("pg_wal").join(&current);
    let out = archive_cmd(&path, None, &repo).assert_code(1);
    assert!(out.stderr.contains("is not finished") && out.stderr.contains(".partial"), "{}", out.stderr);
    // A copy as it is goes under a .partial name.
    archive_cmd(&path, Some(&format!("{current}.partial")), &repo).assert_success();
    // PostgreSQL finishes and archives it as usual.
    let seg = c.switch_wal();
    assert_eq!(seg, current);
    c.wait_archived(&seg, std::time::Duration::from_secs(60));
    dbb(["wal", "verify", "--repo"]).arg(&repo).assert_success();
}

/// `pitr enable` checks the files the config file names, as it checks the
/// config and key files: a secret file only root can read would make every
/// archive fail after archive_command was replaced.
#[test]
fn pitr_enable_refuses_a_secret_file_the_server_cannot_read() {
    let g = Garage::single();
    let d = TestDir::new();
    let secret = d.join("secret");
    std::fs::write(&secret, g.secret_access_key()).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    // Root owns it (the test runs as root); the config file is the server's.
    let body = g.config_toml("pg").replace(
        &format!("secret-access-key = \"{}\"", g.secret_access_key()),
        &format!("secret-access-key-file = \"{}\"", secret.display()),
    );
    let cfg = private_file(&d, "cfg.toml", body);
    chown_to_run_user(&cfg);
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let out = with_config(&cfg, &["pitr", "enable"]).args(c.conn_args()).as_root().assert_code(1);
    assert!(out.stderr.contains("[s3] secret-access-key-file") && out.stderr.contains("chown"), "{}", out.stderr);
    assert_eq!(c.sql("SHOW archive_mode"), "off");
    assert!(!c.sql("SHOW archive_command").contains("dbbackup"));
    let out = with_config(&cfg, &["repo", "info"]).as_root().assert_code(1);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
    // The server's OS user itself cannot read it: one line naming the file.
    let out = with_config(&cfg, &["repo", "info"]).assert_code(1);
    assert!(
        out.stderr.contains("cannot read [s3] secret-access-key file") && out.stderr.contains("Permission denied"),
        "{}",
        out.stderr
    );
    let out = with_config(&cfg, &["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).assert_code(128);
    assert!(out.stderr.contains("cannot read [s3] secret-access-key file"), "{}", out.stderr);
}

/// A server started with a relative -D: `pg_ctl restart` would stop it and
/// fail to start it. Refused before anything stops.
#[test]
fn restart_of_a_server_started_with_a_relative_data_directory_is_refused() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let opts = c.data_dir().join("postmaster.opts");
    let text = std::fs::read_to_string(&opts).unwrap();
    let dir = c.data_dir().display().to_string();
    let name = c.data_dir().file_name().unwrap().to_string_lossy().to_string();
    // As if started from the parent directory with `pg_ctl -D NAME`.
    std::fs::write(&opts, text.replace(&format!("\"{dir}\""), &format!("\"{name}\""))).unwrap();
    let out = pitr(&c, &["enable", "--restart", "--repo", &repo.display().to_string()]).assert_code(1);
    assert!(
        out.stderr.contains("relative data directory") && out.stderr.contains("nothing was restarted"),
        "{}",
        out.stderr
    );
    assert!(c.is_running());
    assert_eq!(c.sql("SELECT 1"), "1");
}

/// A mistyped bucket: every command names the missing bucket, not mounts.
#[test]
fn a_mistyped_bucket_is_said_by_every_command() {
    let g = Garage::single();
    let d = TestDir::new();
    let cfg = private_file(&d, "b.toml", g.config_toml("pg").replace("dbbackup-test", "dbbackup-tset"));
    for args in [&["repo", "info"][..], &["wal", "list"], &["backup", "list"]] {
        let out = with_config(&cfg, args).assert_code(1);
        assert!(out.stderr.contains("does not exist") && out.stderr.contains("bucket"), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.contains("mounted"), "{args:?}: {}", out.stderr);
    }
    let out = with_config(&cfg, &["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).assert_code(128);
    assert!(out.stderr.contains("bucket"), "{}", out.stderr);
}

/// An Azure account key that is not base64: said as such, not as the
/// client library's "Invalid last symbol".
#[test]
fn an_invalid_azure_key_is_said_as_such() {
    let a = dbbackup_testkit::stores::Azurite::start();
    let d = TestDir::new();
    let cfg = private_file(&d, "az.toml", a.config_toml("pg").replace(a.access_key(), "not-a-key-X"));
    let out = with_config(&cfg, &["repo", "init"]).assert_code(1);
    assert!(out.stderr.contains("access-key is not a valid account key"), "{}", out.stderr);
    let out = with_config(&cfg, &["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).assert_code(128);
    assert!(out.stderr.contains("access-key is not a valid account key"), "{}", out.stderr);
}

/// `pitr disable` then `pitr enable` with no restart between: enable must
/// write archive_mode = on again (the file says off, waiting for the
/// restart), or the restart it asks for turns archiving off. And the other
/// way round for disable.
#[test]
fn enable_after_disable_without_a_restart_keeps_archiving_on() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    pitr(&c, &["enable", "--restart", "--repo", &repo_s]).assert_success();
    pitr(&c, &["disable"]).assert_success();
    pitr(&c, &["enable", "--repo", &repo_s]).assert_success();
    c.restart();
    assert_eq!(c.sql("SHOW archive_mode"), "on");
    // And enable then disable: the restart must turn it off.
    pitr(&c, &["disable", "--restart"]).assert_success();
    assert_eq!(c.sql("SHOW archive_mode"), "off");
    pitr(&c, &["enable", "--repo", &repo_s]).assert_success();
    pitr(&c, &["disable"]).assert_success();
    c.restart();
    assert_eq!(c.sql("SHOW archive_mode"), "off");
}
