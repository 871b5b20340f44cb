//! A repository is known by the ID in its metadata, not by how its
//! location is written: `pitr status`, `backup base` and `pitr enable`
//! recognise it in archive_command through another spelling of the same
//! directory, tell apart two stores that share a bucket name, and prove a
//! wrapper script they cannot read with a real segment.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dbbackup_testkit::stores::Garage;

/// Sets archive_command and reloads.
fn set_archive_command(c: &Cluster, cmd: &str) {
    c.sql(&format!("ALTER SYSTEM SET archive_command = '{}'", cmd.replace('\'', "''")));
    c.sql("SELECT pg_reload_conf()");
    c.wait_for("SHOW archive_command", cmd, std::time::Duration::from_secs(10));
}

fn status(c: &Cluster, repo_args: &[&str]) -> serde_json::Value {
    let mut cmd = dbb(["pitr", "status", "--json"]);
    cmd.args(repo_args).args(c.conn_args());
    json(&cmd.output())
}

fn has_finding(v: &serde_json::Value, level: &str, text: &str) -> bool {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["level"] == level && f["message"].as_str().unwrap().contains(text))
}

/// `file:///path` in archive_command and `/path` on the command line (and,
/// where this machine allows mounts, a bind mount of the repository) are
/// the same repository: no "archives into X, not into Y", and `backup base`
/// takes its backup.
#[test]
fn one_repository_written_two_ways_is_recognised_by_its_id() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let repo_s = repo.display().to_string();
    let url = format!("file://{repo_s}");
    set_archive_command(&c, &format!("{} wal archive %p %f --repo {url}", bin().display()));
    make_archived_segment(&c);

    let v = status(&c, &["--repo", &repo_s]);
    assert!(!has_finding(&v, "error", "archives into"), "{}", findings(&v));
    assert_eq!(v["verdict"], "ok", "{}", findings(&v));
    dbb(["backup", "base", "--fast", "--repo", &repo_s]).args(c.conn_args()).assert_success();

    // The same directory under another mount path: different text, one ID.
    let mnt = d.mkdir("mnt");
    let mounted = std::process::Command::new("mount").arg("--bind").arg(&repo).arg(&mnt).status();
    if !mounted.is_ok_and(|s| s.success()) {
        eprintln!("note: bind mounts are not allowed here; the mount half of this test did not run");
        return;
    }
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Unmount(mnt.clone());
    let v = status(&c, &["--repo", &mnt.display().to_string()]);
    assert!(!has_finding(&v, "error", "archives into"), "{}", findings(&v));
    dbb(["backup", "base", "--fast", "--repo"]).arg(&mnt).args(c.conn_args()).assert_success();
}

/// Two stores with the same bucket and prefix: the same `s3://` text, two
/// repositories. Status and backup see that archive_command's config file
/// reaches the other one.
#[test]
fn the_same_url_at_another_store_is_another_repository() {
    let (a, b) = (Garage::single(), Garage::single());
    let d = TestDir::new();
    let cfg_a = private_file(&d, "a.toml", a.config_toml("pg"));
    let cfg_b = private_file(&d, "b.toml", b.config_toml("pg"));
    let c = cluster_on(PgVersion::V15, &cfg_a);
    make_archived_segment(&c);
    with_config(&cfg_b, &["repo", "init"]).assert_success();

    // Through a's config: ours, ok.
    let v = status(&c, &["--config", &cfg_a.display().to_string()]);
    assert_eq!(v["verdict"], "ok", "{}", findings(&v));
    // Through b's: same text, another repository, and the message says whose.
    let v = status(&c, &["--config", &cfg_b.display().to_string()]);
    assert_eq!(v["verdict"], "error", "{}", findings(&v));
    assert!(
        has_finding(&v, "error", "archive_command archives into s3://dbbackup-test/pg as repo in config file"),
        "{}",
        findings(&v)
    );
    assert!(has_finding(&v, "error", "(repository ID "), "{}", findings(&v));

    let out = with_config(&cfg_b, &["backup", "base", "--fast"]).args(c.conn_args()).assert_code(1);
    assert!(out.stderr.contains("PostgreSQL does not archive into repository s3://dbbackup-test/pg"), "{}", out.stderr);
    let list = json(&with_config(&cfg_b, &["backup", "list", "--json"]).assert_success());
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    // The right one still works.
    with_config(&cfg_a, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
}

/// A wrapper script dbbackup cannot read: `pitr enable` proves it with a
/// real segment and keeps it when it archives into this repository; one
/// that archives elsewhere is refused with what the proof saw; `backup base`
/// and `pitr status --prove-archiving` accept the working wrapper.
#[test]
fn a_wrapper_script_is_proven_kept_or_refused() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let other = d.join("other");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let wrapper = |name: &str, into: &Path| -> PathBuf {
        let p = d.write(
            name,
            format!(
                "#!/bin/sh\nset -e\nexec {} wal archive \"$1\" \"$2\" --repo {}\n",
                bin().display(),
                into.display()
            ),
        );
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let good = wrapper("archive-good.sh", &repo);
    let cmd = format!("{} %p %f", good.display());
    set_archive_command(&c, &cmd);
    let repo_s = repo.display().to_string();
    let out = pitr(&c, &["enable", "--repo", &repo_s]).assert_success();
    assert!(out.stdout.contains("it is kept"), "{}", out.stdout);
    assert_eq!(c.sql("SHOW archive_command"), cmd);
    dbb(["backup", "base", "--fast", "--repo", &repo_s]).args(c.conn_args()).assert_success();
    let v = json(&pitr(&c, &["status", "--json", "--prove-archiving", "--repo", &repo_s]).output());
    assert_eq!(v["verdict"], "ok", "{}", findings(&v));

    // A wrapper into another repository: refused, nothing changed.
    let bad = wrapper("archive-other.sh", &other);
    let cmd = format!("{} %p %f", bad.display());
    set_archive_command(&c, &cmd);
    let out = pitr(&c, &["enable", "--repo", &repo_s]).assert_code(1);
    assert!(
        out.stderr.contains(&format!("it does not archive into {repo_s}")) && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    assert_eq!(c.sql("SHOW archive_command"), cmd);
    // --force replaces it with dbbackup's own command.
    pitr(&c, &["enable", "--repo", &repo_s, "--force"]).assert_success();
    assert!(c.sql("SHOW archive_command").contains(&format!("wal archive %p %f --repo {repo_s}")));
}
