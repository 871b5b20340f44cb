//! `pitr enable`, `pitr disable`, `pitr status` on real servers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn verdict(c: &Cluster, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["status", "--json"];
    args.extend_from_slice(extra);
    let out = pitr(c, &args).output();
    (out.status, serde_json::from_str(&out.stdout).unwrap_or_else(|_| panic!("{out:?}")))
}

fn wait_failed(c: &Cluster) {
    for _ in 0..200 {
        if c.sql("SELECT failed_count > 0 AND last_failed_time > coalesce(last_archived_time, '-infinity') FROM pg_stat_archiver") == "t" {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("archiving did not fail: {}", c.log_tail(20));
}

fn enable_status_break_fix_disable(version: PgVersion) {
    let c = Cluster::new(ClusterOptions::new(version));
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();

    // A fresh cluster does not archive: enabling needs a restart.
    let out = pitr(&c, &["enable", "--repo", &repo_s]).assert_success();
    assert!(out.stdout.contains("archive_mode:    off -> on  (restart needed)"), "{}", out.stdout);
    assert!(out.stdout.contains("restart needed: run `pg_ctl restart"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("--repo {repo_s}")), "{}", out.stdout);
    let (code, v) = verdict(&c, &[]);
    assert_eq!(code, 1);
    assert_eq!(v["verdict"], "error");
    assert!(findings(&v).contains("archiving is off") && findings(&v).contains("restart"), "{}", findings(&v));

    // --restart restarts and proves archiving works with a real segment.
    let out = pitr(&c, &["enable", "--repo", &repo_s, "--restart"]).assert_success();
    assert!(out.stdout.contains("restarted") && out.stdout.contains("archiving works"), "{}", out.stdout);
    let (code, v) = verdict(&c, &[]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
    assert_eq!(v["settings"]["archive_mode"]["value"], "on");
    assert_eq!(v["repository"]["location"], repo_s.as_str());
    assert!(v["repository"]["segments"].as_u64().unwrap() >= 1);
    let info = json(&dbb(["repo", "info", "--json", "--repo", &repo_s]).assert_success());
    assert_eq!(info["cluster"]["system_identifier"], c.system_identifier().to_string().as_str());
    let text = pitr(&c, &["status"]).assert_success().stdout;
    assert!(text.starts_with("verdict:         ok"), "{text}");

    // Break the repository: archiving fails, status says error and why.
    Cmd::new("chmod").args(["-R", "a-w"]).arg(&repo).as_root().assert_success();
    c.sql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)");
    let name = c.switch_wal();
    wait_failed(&c);
    let (code, v) = verdict(&c, &[]);
    assert_eq!(code, 1);
    assert_eq!(v["verdict"], "error");
    let f = findings(&v);
    assert!(f.contains("archiving is failing") && f.contains(&name), "{f}");
    assert!(v["findings"].as_array().unwrap().iter().all(|f| !f["fix"].as_str().unwrap().is_empty()));

    // Repair: PostgreSQL's retry succeeds and the verdict is ok again.
    Cmd::new("chmod").args(["-R", "u+w"]).arg(&repo).as_root().assert_success();
    c.wait_archived(&name, Duration::from_secs(120));
    let (code, v) = verdict(&c, &[]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));

    // Disable: archive_command reset at once, archive_mode off at restart.
    let out = pitr(&c, &["disable"]).assert_success();
    assert!(out.stdout.contains("archive_mode:    on -> off  (restart needed)"), "{}", out.stdout);
    let archived_before = c.sql("SELECT archived_count FROM pg_stat_archiver");
    c.sql("INSERT INTO t VALUES (2)");
    c.switch_wal();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(c.sql("SELECT archived_count FROM pg_stat_archiver"), archived_before);
    c.restart();
    let (code, v) = verdict(&c, &["--repo", &repo_s]);
    assert_eq!(code, 1);
    assert!(findings(&v).contains("archiving is off"), "{}", findings(&v));
}

#[test]
fn pg15_enable_status_break_fix_disable() {
    enable_status_break_fix_disable(PgVersion::V15);
}

#[test]
fn pg18_enable_status_break_fix_disable() {
    enable_status_break_fix_disable(PgVersion::V18);
}

#[test]
fn offline_enable_edits_auto_conf_of_a_stopped_cluster() {
    for version in PgVersion::all() {
        let mut o = ClusterOptions::new(version);
        o.start = false;
        let c = Cluster::new(o);
        let d = TestDir::new();
        let repo = d.join("repo");
        let auto = c.data_dir().join("postgresql.auto.conf");
        let before = std::fs::read_to_string(&auto).unwrap();
        let out = dbb(["pitr", "enable", "--archive-timeout", "60", "--repo"])
            .arg(&repo)
            .arg("--pgdata")
            .arg(c.data_dir())
            .assert_success();
        assert!(out.stdout.contains("the server is stopped"), "{}", out.stdout);
        let after = std::fs::read_to_string(&auto).unwrap();
        assert!(after.starts_with(before.trim_end()), "old lines kept:\n{after}");
        assert!(after.contains("archive_mode = 'on'") && after.contains("archive_timeout = '60'"), "{after}");
        assert!(
            after.contains(&format!(
                "archive_command = '{} wal archive %p %f --repo {}'",
                bin().display(),
                repo.display()
            )),
            "{after}"
        );
        let copies: Vec<_> = std::fs::read_dir(c.data_dir())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with("postgresql.auto.conf.dbbackup-"))
            .collect();
        assert_eq!(copies.len(), 1);
        assert_eq!(std::fs::read_to_string(copies[0].path()).unwrap(), before);
        c.start();
        assert_eq!(c.sql("SHOW archive_timeout"), "1min");
        let name = make_archived_segment(&c);
        let dest = d.join("seg");
        dbb(["wal", "fetch"]).arg(&name).arg(&dest).arg("--repo").arg(&repo).assert_success();
        let (code, v) = verdict(&c, &[]);
        assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
    }
}

#[test]
fn a_repository_path_with_a_space_and_a_quote_works() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let repo = d.join("my repo's \"dir\"");
    let repo_s = repo.display().to_string();
    pitr(&c, &["enable", "--restart", "--repo", &repo_s]).assert_success();
    let name = make_archived_segment(&c);
    assert_eq!(c.sql("SELECT failed_count FROM pg_stat_archiver"), "0", "{}", c.log_tail(20));
    let dest = d.join("seg");
    dbb(["wal", "fetch"]).arg(&name).arg(&dest).arg("--repo").arg(&repo).assert_success();
    let (code, v) = verdict(&c, &[]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
    assert_eq!(v["repository"]["location"], repo_s.as_str());
}

#[test]
fn enable_refuses_unreachable_servers_non_superusers_foreign_commands_and_foreign_repositories() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let repo = d.join("repo").display().to_string();

    // Unreachable: the message names the socket directory, the port and the cause.
    let nowhere = d.mkdir("nosock");
    let out = dbb(["pitr", "status", "--host"]).arg(&nowhere).args(["--port", "1"]).assert_code(1);
    assert!(out.stderr.contains(&nowhere.display().to_string()) && out.stderr.contains("port 1"), "{}", out.stderr);
    assert!(out.stderr.contains("No such file or directory"), "{}", out.stderr);
    let out = dbb(["pitr", "enable", "--repo", &repo, "--host", "127.0.0.1", "--port", "1"]).assert_code(1);
    assert!(out.stderr.contains("host 127.0.0.1 port 1") && out.stderr.contains("refused"), "{}", out.stderr);

    // Not a superuser.
    c.sql("CREATE ROLE app LOGIN");
    let out = dbb(["pitr", "enable", "--repo", &repo, "--host"])
        .arg(c.socket_dir())
        .args(["--port", &c.port().to_string(), "--user", "app", "--dbname", "postgres"])
        .assert_code(1);
    assert!(out.stderr.contains("not a superuser") && out.stderr.contains("SUPERUSER"), "{}", out.stderr);
    assert!(!d.join("repo").exists(), "nothing may be created before the privilege check");

    // Another tool's archive_command: shown, refused unless --force.
    c.sql("ALTER SYSTEM SET archive_command = 'cp %p /mnt/elsewhere/%f'");
    c.sql("SELECT pg_reload_conf()");
    std::thread::sleep(Duration::from_millis(300));
    let out = pitr(&c, &["enable", "--repo", &repo]).assert_code(1);
    assert!(out.stderr.contains("cp %p /mnt/elsewhere/%f") && out.stderr.contains("--force"), "{}", out.stderr);
    let out = pitr(&c, &["enable", "--repo", &repo, "--force"]).assert_success();
    assert!(out.stdout.contains("cp %p /mnt/elsewhere/%f ->"), "{}", out.stdout);

    // A repository bound to another cluster.
    let other = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let foreign = d.join("foreign").display().to_string();
    dbb(["repo", "init", "--repo", &foreign, "--pgdata"]).arg(other.data_dir()).assert_success();
    let out = pitr(&c, &["enable", "--repo", &foreign]).assert_code(1);
    let (ours, theirs) = (c.system_identifier().to_string(), other.system_identifier().to_string());
    assert!(out.stderr.contains(&ours) && out.stderr.contains(&theirs), "{}", out.stderr);
}
