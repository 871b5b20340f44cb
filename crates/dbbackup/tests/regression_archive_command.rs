//! Regression tests for archive_command shapes and honest PITR reports
//! (issue 11, items 4, 6, 7 and 9): a command that swallows dbbackup's
//! failures, the shapes DBAs write (wrapper scripts, `cp && dbbackup`,
//! `exec`, environment prefixes, global options first, `--config`),
//! `pitr disable` with archive_command also in postgresql.conf or set by
//! another tool, the server log across `--restart`, and `pitr status` on a
//! missing repository or with a pending backup. Real PostgreSQL servers.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// `pitr status --json <extra>`: exit code and report.
fn status(c: &Cluster, extra: &[&str]) -> (i32, Value) {
    let out = pitr(c, &["status", "--json"]).args(extra).output();
    let v = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {out:?}"));
    (out.status, v)
}

/// The fixes of a `pitr status --json` report, one per line.
fn fixes(v: &Value) -> String {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fix"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// `backup base --fast --repo REPO <extra>` against `c`.
fn base(c: &Cluster, repo: &Path, extra: &[&str]) -> Output {
    dbb(["backup", "base", "--fast", "--repo"]).arg(repo).args(c.conn_args()).args(extra).output()
}

/// Sets archive_command with ALTER SYSTEM and waits until the server
/// uses it.
fn set_archive_command(c: &Cluster, cmd: &str) {
    c.sql(&format!("ALTER SYSTEM SET archive_command = '{}'", cmd.replace('\'', "''")));
    c.sql("SELECT pg_reload_conf()");
    c.wait_for("SHOW archive_command", cmd, Duration::from_secs(30));
}

/// An executable shell script owned by the run-as user.
fn script(d: &TestDir, name: &str, body: &str) -> PathBuf {
    let p = d.write(name, format!("#!/bin/sh\n{body}\n"));
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The repository's per-timeline-and-log WAL directories.
fn wal_subdirs(repo: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(repo.join("wal")).unwrap().flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect()
}

fn chmod(mode: &str, p: &Path) {
    Cmd::new("chmod").arg(mode).arg(p).as_root().assert_success();
}

fn last_archived(c: &Cluster) -> String {
    c.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver")
}

// Item 4: `... || true` turns dbbackup's failure into success; PostgreSQL
// then drops WAL the repository never got.
fn a_swallowing_command_is_refused_and_the_lost_segment_named(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let mut o = ClusterOptions::new(version);
    o.extra_conf = vec![
        "archive_mode = on".into(),
        format!("archive_command = '{} wal archive %p %f --repo {repo_s} || true'", bin().display()),
    ];
    let c = Cluster::new(o);
    make_archived_segment(&c);

    // The repository cannot take the next segment: dbbackup fails, `||
    // true` reports success, PostgreSQL calls the segment archived.
    let dirs = wal_subdirs(&repo);
    for dir in &dirs {
        chmod("a-w", dir);
    }
    c.sql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)");
    let lost = c.switch_wal();
    c.wait_archived(&lost, Duration::from_secs(60));
    assert_eq!(c.sql("SELECT failed_count FROM pg_stat_archiver"), "0", "PostgreSQL never saw a failure");
    assert!(wal_objects(&repo).iter().all(|p| !p.file_name().unwrap().to_string_lossy().starts_with(&lost)));

    let (code, v) = status(&c, &["--repo", &repo_s]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (1, "error"), "{}", findings(&v));
    let f = findings(&v);
    assert!(f.contains(&format!("PostgreSQL reports {lost} archived")), "{f}");
    assert!(f.contains(&format!("repository {repo_s} does not hold it: WAL is being lost")), "{f}");
    assert!(f.contains("can report success when dbbackup fails") && f.contains("`|| true`"), "{f}");
    assert!(fixes(&v).contains("remove `|| true` from archive_command"), "{}", fixes(&v));
    assert_eq!(v["repository"]["holds_last_archived"], false);
    // The same without --repo: the repository comes from the command.
    let text = pitr(&c, &["status"]).assert_code(1).stdout;
    assert!(text.contains(&lost) && text.contains("WAL is being lost"), "{text}");

    // backup base refuses before copying anything, naming the `|| true`.
    let out = base(&c, &repo, &[]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("can report success when dbbackup fails"), "{}", out.stderr);
    assert!(out.stderr.contains("`|| true`") && out.stderr.contains("remove `|| true`"), "{}", out.stderr);
    assert!(!repo.join("backups").exists() || std::fs::read_dir(repo.join("backups")).unwrap().next().is_none());

    // pitr enable replaces the command (dbbackup's own) and says why.
    for dir in &dirs {
        chmod("u+w", dir);
    }
    let out = pitr(&c, &["enable", "--repo", &repo_s]).assert_success();
    assert!(
        out.stdout.contains("note: the current archive_command can report success when dbbackup fails"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("archiving works"), "{}", out.stdout);
    let (_, v) = status(&c, &[]);
    let f = findings(&v);
    assert!(!f.contains("does not hold it") && !f.contains("can report success"), "{f}");
    assert_eq!(v["repository"]["holds_last_archived"], true);
}

#[test]
fn pg15_a_swallowing_command_is_refused_and_the_lost_segment_named() {
    a_swallowing_command_is_refused_and_the_lost_segment_named(PgVersion::V15);
}

#[test]
fn pg18_a_swallowing_command_is_refused_and_the_lost_segment_named() {
    a_swallowing_command_is_refused_and_the_lost_segment_named(PgVersion::V18);
}

// Item 6: every shape that archives into the repository is accepted by
// backup base and pitr status.
fn the_shapes_dbas_write_are_accepted(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let c = archiving_cluster(version, None, &repo, "");
    make_archived_segment(&c);
    let bin = bin().display().to_string();
    let wrapper = script(&d, "archive.sh", &format!("exec {bin} wal archive \"$1\" \"$2\" --repo {repo_s}"));
    let spool = d.mkdir("spool").display().to_string();
    let config = d.write("dbbackup.toml", format!("repo = \"{repo_s}\"\n"));
    let config_s = config.display().to_string();
    let log = d.join("archive.log").display().to_string();
    let shapes = [
        format!("{} %p %f", wrapper.display()),
        format!("cp %p {spool}/%f && {bin} wal archive {spool}/%f %f --repo {repo_s}"),
        format!("exec {bin} wal archive %p %f --repo {repo_s}"),
        format!("DBBACKUP_REPO={repo_s} {bin} wal archive %p %f"),
        format!("{bin} --repo {repo_s} wal archive %p %f"),
        format!("{bin} wal archive %p %f --config {config_s}"),
        format!("DBBACKUP_CONFIG={config_s} {bin} wal archive %p %f"),
        format!("{bin} wal archive %p %f --repo {repo_s} >>{log} 2>&1"),
    ];
    for (i, shape) in shapes.iter().enumerate() {
        set_archive_command(&c, shape);
        let out = base(&c, &repo, &["--archive-check-timeout", "60"]);
        assert_eq!(out.status, 0, "{shape}: {out:?}");
        let (code, v) = status(&c, &["--repo", &repo_s]);
        let f = findings(&v);
        assert_eq!(code, 0, "{shape}: {f}");
        assert_eq!(v["repository"]["location"], repo_s.as_str(), "{shape}");
        assert_eq!(v["repository"]["holds_last_archived"], true, "{shape}: {f}");
        if i == 0 {
            // A wrapper: proven by a real segment, since its text cannot tell.
            assert!(out.stderr.contains("archiving proven"), "{}", out.stderr);
            assert_eq!(v["verdict"], "warning", "{f}");
            assert!(f.contains("cannot tell from it where WAL goes"), "{f}");
            assert!(fixes(&v).contains("--prove-archiving") && fixes(&v).contains("would REPLACE"), "{}", fixes(&v));
            let (code, v) = status(&c, &["--repo", &repo_s, "--prove-archiving"]);
            assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
            assert!(findings(&v).contains("archiving proven"), "{}", findings(&v));
        } else {
            assert_eq!(v["verdict"], "ok", "{shape}: {f}");
            assert!(!out.stderr.contains("archiving proven"), "{shape}: read from the text: {}", out.stderr);
        }
    }
    assert_eq!(c.sql("SELECT failed_count FROM pg_stat_archiver"), "0", "{}", c.log_tail(20));
}

#[test]
fn pg15_the_shapes_dbas_write_are_accepted() {
    the_shapes_dbas_write_are_accepted(PgVersion::V15);
}

#[test]
fn pg18_the_shapes_dbas_write_are_accepted() {
    the_shapes_dbas_write_are_accepted(PgVersion::V18);
}

// Item 6: a wrapper whose text cannot tell is proven, not trusted.
#[test]
fn a_wrapper_that_archives_elsewhere_or_fails_is_refused_naming_the_segment() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let elsewhere = d.mkdir("elsewhere");

    // Archives, but not here: refused as soon as PostgreSQL calls the
    // segment archived.
    let copy = script(&d, "copy.sh", &format!("cp \"$1\" {}/\"$2\"", elsewhere.display()));
    set_archive_command(&c, &format!("{} %p %f", copy.display()));
    let out = base(&c, &repo, &[]);
    assert_eq!(out.status, 1, "{out:?}");
    let seg = last_archived(&c);
    assert!(elsewhere.join(&seg).exists());
    assert!(
        out.stderr.contains(&format!("PostgreSQL reports {seg} archived, but repository {repo_s} does not hold it")),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("copy.sh %p %f"), "{}", out.stderr);
    let (code, v) = status(&c, &["--repo", &repo_s]);
    assert_eq!(code, 1);
    assert!(findings(&v).contains(&format!("PostgreSQL reports {seg} archived")), "{}", findings(&v));
    // Another tool's archive: status does not tell the DBA to throw it away.
    assert!(!fixes(&v).contains("run `dbbackup pitr enable --force` to archive"), "{}", fixes(&v));
    assert!(fixes(&v).contains("would REPLACE"), "{}", fixes(&v));

    // Fails every time: refused when the proof times out.
    let fail = script(&d, "fail.sh", "echo 'archive.sh: no space' >&2; exit 1");
    set_archive_command(&c, &format!("{} %p %f", fail.display()));
    let started = Instant::now();
    let out = base(&c, &repo, &["--archive-check-timeout", "3"]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(60), "{:?}", started.elapsed());
    let failed = c.sql("SELECT last_failed_wal FROM pg_stat_archiver");
    assert!(
        out.stderr.contains(&format!("{failed} did not arrive in repository {repo_s} within 3s")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("PostgreSQL fails to archive") && out.stderr.contains("--archive-check-timeout"),
        "{}",
        out.stderr
    );
    let list = json(&dbb(["backup", "list", "--json", "--repo", &repo_s]).assert_success());
    assert_eq!(list.as_array().unwrap().len(), 0, "nothing recorded: {list}");
}

// Item 7: ALTER SYSTEM RESET leaves postgresql.conf's archive_command in
// effect; disable says so and exits 1.
fn disable_names_the_file_that_keeps_archiving(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    // archiving_cluster writes archive_command into postgresql.conf.
    let c = archiving_cluster(version, None, &repo, "");
    pitr(&c, &["enable", "--repo", &repo_s]).assert_success();
    let conf = c.data_dir().join("postgresql.conf").display().to_string();

    let out = pitr(&c, &["disable"]).assert_code(1);
    assert!(out.stdout.contains("archive_mode:    on -> off  (restart needed)"), "{}", out.stdout);
    assert!(out.stdout.contains("archive_command is still '"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("(set in {conf}:")), "{}", out.stdout);
    assert!(out.stdout.contains("PostgreSQL keeps archiving until you remove it there and reload"), "{}", out.stdout);
    assert!(!out.stdout.contains("nothing more is archived"), "{}", out.stdout);
    // It is true: the server still archives.
    make_archived_segment(&c);

    // The restart makes archive_mode = off take effect: archiving stops.
    let out = pitr(&c, &["disable", "--restart"]).assert_success();
    assert!(out.stdout.contains("archiving is off: archive_mode = off is in effect"), "{}", out.stdout);
    assert!(out.stdout.contains("note: archive_command is still '") && out.stdout.contains(&conf), "{}", out.stdout);
    assert_eq!(c.sql("SHOW archive_mode"), "off");
}

#[test]
fn pg15_disable_names_the_file_that_keeps_archiving() {
    disable_names_the_file_that_keeps_archiving(PgVersion::V15);
}

#[test]
fn pg18_disable_names_the_file_that_keeps_archiving() {
    disable_names_the_file_that_keeps_archiving(PgVersion::V18);
}

// Item 7: another tool's archiving is not turned off behind its back.
#[test]
fn disable_refuses_another_tools_archive_command_without_force() {
    let d = TestDir::new();
    let elsewhere = d.mkdir("elsewhere");
    let mut o = ClusterOptions::new(PgVersion::V15);
    o.extra_conf = vec!["archive_mode = on".into()];
    let c = Cluster::new(o);
    let cp = format!("test ! -f {0}/%f && cp %p {0}/%f", elsewhere.display());
    set_archive_command(&c, &cp);

    // status: a warning that it cannot tell, never "run --force" as the fix.
    let (code, v) = status(&c, &[]);
    assert_eq!(code, 1, "no repository anywhere: {}", findings(&v));
    assert!(findings(&v).contains("not dbbackup's `wal archive` as far as its text shows"), "{}", findings(&v));
    assert!(fixes(&v).contains("would REPLACE"), "{}", fixes(&v));

    let out = pitr(&c, &["disable"]).assert_code(1);
    assert!(
        out.stderr.contains(&cp) && out.stderr.contains("another tool") && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    assert_eq!(c.sql("SHOW archive_command"), cp, "nothing changed");
    assert!(!std::fs::read_to_string(c.data_dir().join("postgresql.auto.conf")).unwrap().contains("archive_mode"));

    let out = pitr(&c, &["disable", "--force"]).assert_success();
    assert!(out.stdout.contains("archive_command is empty now: nothing more is archived"), "{}", out.stdout);
    assert_eq!(c.sql("SHOW archive_command"), "");
}

// Item 9: `pitr enable --restart` keeps the server log where it was, not
// in the data directory (where every base backup would copy it).
#[test]
fn enable_restart_keeps_the_server_log_where_it_was() {
    for version in PgVersion::all() {
        let c = Cluster::new(ClusterOptions::new(version));
        let d = TestDir::new();
        let repo = d.join("repo").display().to_string();
        let log = c.log_file();
        let ready = || std::fs::read_to_string(&log).unwrap().matches("ready to accept connections").count();
        let before = ready();
        let out = pitr(&c, &["enable", "--repo", &repo, "--restart"]).assert_success();
        assert!(out.stdout.contains(&format!("restarted; server log: {}, as before", log.display())), "{}", out.stdout);
        assert!(out.stdout.contains("archiving works"), "{}", out.stdout);
        assert!(!c.data_dir().join("postmaster.log").exists(), "{version}: a log in PGDATA");
        assert_eq!(ready(), before + 1, "{version}: the restarted server logs into {}", log.display());
        let out = pitr(&c, &["disable", "--restart"]).assert_success();
        assert!(out.stdout.contains(&format!("server log: {}, as before", log.display())), "{}", out.stdout);
        assert!(!c.data_dir().join("postmaster.log").exists());
        assert_eq!(ready(), before + 2);
    }
}

// Item 9: a missing repository is an error, not "0 segments, no gaps".
#[test]
fn status_of_a_vanished_repository_shows_no_counts() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    std::fs::rename(&repo, d.join("repo.moved")).unwrap();
    let out = pitr(&c, &["status"]).assert_code(1);
    assert!(out.stdout.contains(&format!("repository:      {}: cannot be read", repo.display())), "{}", out.stdout);
    assert!(!out.stdout.contains("0 segments, newest") && !out.stdout.contains("no gaps"), "{}", out.stdout);
    assert!(!out.stdout.contains("newest backup:   none"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("error: repository {}", repo.display())), "{}", out.stdout);
}

// Item 9: a pending backup (WAL not yet confirmed) is reported, with the fix.
#[test]
fn status_reports_pending_backups() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let dirs = wal_subdirs(&repo);
    for dir in &dirs {
        chmod("a-w", dir);
    }
    let id = backup(&c, &repo, &["--no-wait-archive"]);
    let list = json(&dbb(["backup", "list", "--json", "--repo", &repo_s]).assert_success());
    assert_eq!(list[0]["status"], "pending", "{list}");

    let (code, v) = status(&c, &[]);
    assert_eq!(code, 1, "archiving fails meanwhile: {}", findings(&v));
    let f = findings(&v);
    assert!(f.contains(&format!("backup {id} is pending")) && f.contains("not restorable yet"), "{f}");
    assert!(fixes(&v).contains(&format!("`dbbackup backup verify {id}` completes it")), "{}", fixes(&v));
    assert_eq!(v["repository"]["pending_backups"][0]["id"], id.as_str());
    let text = pitr(&c, &["status"]).output().stdout;
    assert!(text.contains(&format!("backup {id} is pending")), "{text}");

    // The WAL arrives; verify completes the backup; status drops the note.
    for dir in &dirs {
        chmod("u+w", dir);
    }
    // A new segment wakes the archiver, which retries the failed one first.
    c.switch_wal();
    let stop_wal = list[0]["stop_wal"].as_str().unwrap().to_string();
    c.wait_archived(&stop_wal, Duration::from_secs(120));
    dbb(["backup", "verify", &id, "--repo", &repo_s]).assert_success();
    let (code, v) = status(&c, &[]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
    assert!(!findings(&v).contains("pending"), "{}", findings(&v));
}
