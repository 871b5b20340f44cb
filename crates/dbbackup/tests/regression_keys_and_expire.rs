//! Regression tests for issue 11 (items 8 and parts of 9), as a new user
//! met them: a key given for an unencrypted repository was silently
//! ignored; a key file anyone could read was used; a role without backup
//! rights left a `failed` backup behind; `backup expire --dry-run` printed
//! every WAL object's name and no totals. Real PostgreSQL servers (15, and
//! 18 for the key and backup stories).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The IDs `backup list --json` shows.
fn listed(repo: &Path) -> Vec<String> {
    let out = dbb(["backup", "list", "--json", "--repo"]).arg(repo).assert_success();
    json(&out).as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_string()).collect()
}

/// Entries under the repository's backups/ directory (none when absent).
fn backup_dirs(repo: &Path) -> Vec<String> {
    std::fs::read_dir(repo.join("backups"))
        .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default()
}

/// Connection options for `c` as role `user`.
fn conn_as(c: &Cluster, user: &str) -> Vec<String> {
    vec![
        "--host".into(),
        c.socket_dir().display().to_string(),
        "--port".into(),
        c.port().to_string(),
        "--user".into(),
        user.into(),
        "--dbname".into(),
        "postgres".into(),
    ]
}

/// `backup base --fast --repo R` on `c` with `args`, not yet run.
fn backup_cmd(c: &Cluster, repo: &Path, args: &[&str]) -> Cmd {
    let mut cmd = dbb(["backup", "base", "--fast", "--repo"]);
    cmd.arg(repo).args(c.conn_args()).args(args);
    cmd
}

/// Finishes a segment of `c` and copies it into `dir` (as archive_command
/// would see it); returns the copy.
fn copy_of_archived_segment(c: &Cluster, dir: &TestDir) -> PathBuf {
    let name = make_archived_segment(c);
    let dest = dir.join(&name);
    std::fs::copy(c.data_dir().join("pg_wal").join(&name), &dest).unwrap();
    chown_to_run_user(&dest);
    dest
}

// 1. A key given for an unencrypted repository: refused by every writer,
//    harmless for readers, and the default variable alone never stops
//    archiving.
fn key_for_an_unencrypted_repository(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    // archive_command created a plain repository.
    let c = archiving_cluster(version, None, &repo, "");
    let seg = copy_of_archived_segment(&c, &d);
    let key = key_file(&d, "key", 0x5e);
    let key_s = key.display().to_string();

    // The DBA expects an encrypted backup: refused, nothing is listed.
    let out = backup_cmd(&c, &repo, &["--encryption-key-file", &key_s]).assert_code(1);
    assert!(
        out.stderr.contains(&format!("repository {repo_s} is not encrypted"))
            && out.stderr.contains(&format!("--encryption-key-file {key_s}"))
            && out.stderr.contains("the backup would be stored unencrypted")
            && out.stderr.contains("dbbackup repo init --encrypt"),
        "{}",
        out.stderr
    );
    assert!(listed(&repo).is_empty() && backup_dirs(&repo).is_empty(), "{:?}", backup_dirs(&repo));
    // A variable named with --encryption-key-env is as explicit.
    let out = backup_cmd(&c, &repo, &["--encryption-key-env", "MY_KEY"]).env("MY_KEY", "5e".repeat(32)).assert_code(1);
    assert!(
        out.stderr.contains("is not encrypted") && out.stderr.contains("--encryption-key-env MY_KEY"),
        "{}",
        out.stderr
    );
    assert!(listed(&repo).is_empty());

    // wal archive: an explicit key is refused (PostgreSQL would retry)...
    let out = archive_cmd(&seg, None, &repo).arg("--encryption-key-file").arg(&key).assert_code(1);
    assert!(
        out.stderr.contains("is not encrypted") && out.stderr.contains("WAL would be stored unencrypted"),
        "{}",
        out.stderr
    );
    // ...but the default variable set in the server's environment is not a
    // reason to stop archiving, not even a malformed one.
    archive_cmd(&seg, None, &repo).env("DBBACKUP_ENCRYPTION_KEY", "5e".repeat(32)).assert_success();
    archive_cmd(&seg, None, &repo).env("DBBACKUP_ENCRYPTION_KEY", "left over").assert_success();
    // Nor for a backup: it goes ahead, with a warning.
    let out = backup_cmd(&c, &repo, &[]).env("DBBACKUP_ENCRYPTION_KEY", "5e".repeat(32)).assert_success();
    assert!(
        out.stderr.contains(&format!("DBBACKUP_ENCRYPTION_KEY is set, but repository {repo_s} is not encrypted")),
        "{}",
        out.stderr
    );
    assert_eq!(listed(&repo).len(), 1);

    // A second repo init with a key and no --encrypt says what it would do.
    let other = d.join("other");
    let out = dbb(["repo", "init", "--repo"]).arg(&other).arg("--encryption-key-file").arg(&key).assert_code(1);
    assert!(out.stderr.contains("but not --encrypt") && out.stderr.contains("created unencrypted"), "{}", out.stderr);
    assert!(!other.exists());

    // Readers do not care: the key is harmless there.
    let name = seg.file_name().unwrap().to_string_lossy().to_string();
    dbb(["wal", "fetch", &name])
        .arg(d.join("fetched"))
        .args(["--repo", &repo_s, "--encryption-key-file", &key_s])
        .assert_success();
    dbb(["wal", "list", "--repo", &repo_s, "--encryption-key-file", &key_s]).assert_success();
    dbb(["backup", "verify", "latest", "--repo", &repo_s, "--encryption-key-file", &key_s]).assert_success();
}

#[test]
fn pg15_a_key_for_an_unencrypted_repository_is_refused_by_writers() {
    key_for_an_unencrypted_repository(PgVersion::V15);
}

#[test]
fn pg18_a_key_for_an_unencrypted_repository_is_refused_by_writers() {
    key_for_an_unencrypted_repository(PgVersion::V18);
}

// 2. A key file group or others can read (`dbbackup key generate > FILE`
//    under umask 022): refused everywhere with the chmod 600 fix, unless
//    --allow-shared-key-file says it is a shared secret mount.
fn shared_key_file(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let generated = dbb(["key", "generate"]).assert_success().stdout;
    let key = d.write("key", generated);
    chmod(&key, 0o644);
    let key_s = key.display().to_string();
    let chmod_fix = format!("run `chmod 600 {key_s}`");
    let refused = |out: &Output| {
        assert!(
            out.stderr.contains(&format!("encryption key file {key_s} is readable by group or others (mode 0644)"))
                && out.stderr.contains(&chmod_fix)
                && out.stderr.contains("--allow-shared-key-file"),
            "{}",
            out.stderr
        );
    };

    let out = dbb(["repo", "init", "--encrypt", "--repo", &repo_s, "--encryption-key-file", &key_s]).assert_code(1);
    refused(&out);
    assert!(!repo.exists());
    dbb(["repo", "init", "--encrypt", "--repo", &repo_s, "--encryption-key-file", &key_s, "--allow-shared-key-file"])
        .assert_success();

    // archive_command without the flag: archiving fails, the server log
    // says why, PostgreSQL keeps the segment and retries.
    let c = archiving_cluster(version, None, &repo, &format!("--encryption-key-file {key_s}"));
    c.sql("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 1000)");
    let first = c.switch_wal();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !c.log_tail(200).contains(&chmod_fix) {
        assert!(std::time::Instant::now() < deadline, "no refusal in the server log:\n{}", c.log_tail(30));
        std::thread::sleep(Duration::from_millis(100));
    }
    // The archiver reports the failure to pg_stat_archiver just after the
    // command's stderr reached the log: wait for it.
    c.wait_for("SELECT failed_count > 0 FROM pg_stat_archiver", "t", Duration::from_secs(30));
    assert!(wal_objects(&repo).is_empty());

    // backup base: refused before anything is created.
    let out = backup_cmd(&c, &repo, &["--encryption-key-file", &key_s]).assert_code(1);
    refused(&out);
    assert!(listed(&repo).is_empty() && backup_dirs(&repo).is_empty());

    // The key lives on a read-only secret mount: archive_command gets the
    // flag, and the retry archives what waited.
    let cmd = format!(
        "{} wal archive %p %f --repo {repo_s} --encryption-key-file {key_s} --allow-shared-key-file",
        bin().display()
    );
    c.sql(&format!("ALTER SYSTEM SET archive_command = '{cmd}'"));
    c.sql("SELECT pg_reload_conf()");
    c.wait_archived(&first, Duration::from_secs(120));
    let id = backup(&c, &repo, &["--encryption-key-file", &key_s, "--allow-shared-key-file"]);
    assert_eq!(listed(&repo), std::slice::from_ref(&id));

    // Readers refuse it too: wal fetch exits above 125 (recovery stops),
    // restore writes nothing.
    let dest = d.join("fetched");
    let out = dbb(["wal", "fetch", &first])
        .arg(&dest)
        .args(["--repo", &repo_s, "--encryption-key-file", &key_s])
        .assert_code(128);
    refused(&out);
    assert!(!dest.exists());
    let target = d.join("restored");
    let out = dbb(["restore", "pitr", "--repo", &repo_s, "--encryption-key-file", &key_s, "--target-dir"])
        .arg(&target)
        .assert_code(1);
    refused(&out);
    assert!(!target.exists());
    // The flag from a config file works as well.
    let config = d.write("dbbackup.toml", "allow-shared-key-file = true\n");
    dbb(["wal", "fetch", &first])
        .arg(&dest)
        .args(["--repo", &repo_s, "--encryption-key-file", &key_s, "--config"])
        .arg(&config)
        .assert_success();

    // restore pitr with the flag writes it into restore_command, so the
    // restored server can fetch its WAL.
    c.sql("INSERT INTO t VALUES (-1)");
    finish_wal(&c);
    let r = restore(
        &c,
        &repo,
        &target,
        &["--encryption-key-file", &key_s, "--allow-shared-key-file", "--archive-mode", "off"],
    );
    r.promoted();
    assert_eq!(r.sql("SELECT count(*) FROM t WHERE i = -1"), "1");
    let auto = std::fs::read_to_string(target.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(&format!("--encryption-key-file {key_s} --allow-shared-key-file")), "{auto}");
    drop(r);

    // The other fix: chmod 600, and no flag is needed.
    chmod(&key, 0o600);
    std::fs::remove_file(&dest).unwrap();
    dbb(["wal", "fetch", &first])
        .arg(&dest)
        .args(["--repo", &repo_s, "--encryption-key-file", &key_s])
        .assert_success();
}

#[test]
fn pg15_a_key_file_others_can_read_is_refused_with_the_fix() {
    shared_key_file(PgVersion::V15);
}

#[test]
fn pg18_a_key_file_others_can_read_is_refused_with_the_fix() {
    shared_key_file(PgVersion::V18);
}

// 3. A role that may not take backups: refused naming the role and the
//    GRANTs, and nothing is left behind; with the grants, it works. A
//    pg_backup_start that fails leaves nothing either.
fn backup_rights(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let c = archiving_cluster(version, None, &repo, "");
    make_archived_segment(&c);
    c.sql("CREATE ROLE bob LOGIN");
    let as_bob = || {
        let mut cmd = dbb(["backup", "base", "--fast", "--repo", &repo_s]);
        cmd.args(conn_as(&c, "bob"));
        cmd
    };

    let out = as_bob().assert_code(1);
    for want in [
        "role bob cannot take a base backup: it is not a superuser",
        "GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO bob;",
        "GRANT EXECUTE ON FUNCTION pg_backup_stop(boolean) TO bob;",
        "GRANT pg_read_all_settings TO bob;",
        "Or connect as a superuser with --user",
    ] {
        assert!(out.stderr.contains(want), "missing {want:?} in: {}", out.stderr);
    }
    assert!(listed(&repo).is_empty() && backup_dirs(&repo).is_empty(), "{:?}", backup_dirs(&repo));

    // Half the grants (the case: data_directory readable, so the
    // backup used to get as far as pg_backup_start and leave a `failed`
    // entry): the message names only what is still missing.
    c.sql("GRANT pg_read_all_settings TO bob");
    let out = as_bob().assert_code(1);
    assert!(out.stderr.contains("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean) TO bob;"), "{}", out.stderr);
    assert!(!out.stderr.contains("GRANT pg_read_all_settings"), "{}", out.stderr);
    assert!(listed(&repo).is_empty() && backup_dirs(&repo).is_empty(), "{:?}", backup_dirs(&repo));

    // All of them: a complete backup taken by bob.
    c.sql("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO bob");
    let out = as_bob().assert_success();
    let id = out.stdout.lines().last().unwrap().trim().to_string();
    let show = json(&dbb(["backup", "show", &id, "--json", "--repo", &repo_s]).assert_success());
    assert_eq!(show["status"], "complete", "{show}");

    // pg_backup_start itself fails (the role's statement_timeout cancels
    // the spread checkpoint it waits for): no backup was taken, so none is
    // listed, not even as failed.
    c.sql("CREATE ROLE carol LOGIN IN ROLE pg_read_all_settings");
    c.sql("GRANT EXECUTE ON FUNCTION pg_backup_start(text, boolean), pg_backup_stop(boolean) TO carol");
    c.sql("ALTER ROLE carol SET statement_timeout = '300ms'");
    c.sql(
        "CREATE TABLE dirty(i int, t text); INSERT INTO dirty SELECT g, md5(g::text) FROM generate_series(1, 50000) g",
    );
    let mut cmd = dbb(["backup", "base", "--repo", &repo_s]);
    let out = cmd.args(conn_as(&c, "carol")).assert_code(1);
    assert!(
        out.stderr.contains("cannot start the backup")
            && out.stderr.contains("statement timeout")
            && out.stderr.contains("no backup was taken"),
        "{}",
        out.stderr
    );
    assert_eq!(listed(&repo), std::slice::from_ref(&id));
    assert_eq!(backup_dirs(&repo), [id]);
}

#[test]
fn pg15_a_role_without_backup_rights_is_refused_and_leaves_nothing() {
    backup_rights(PgVersion::V15);
}

#[test]
fn pg18_a_role_without_backup_rights_is_refused_and_leaves_nothing() {
    backup_rights(PgVersion::V18);
}

// 4. `backup expire --dry-run` on a long archive: counts, bytes and ranges
//    per timeline, not thousands of names; -v lists them; the real run
//    reports what it removed.
#[test]
fn expire_dry_run_sums_up_the_wal_it_would_remove() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let c = archiving_cluster(PgVersion::V15, Some(1), &repo, "");
    make_archived_segment(&c);
    let old = backup(&c, &repo, &[]);
    let mut names = Vec::new();
    for _ in 0..30 {
        names.push(c.switch_wal());
    }
    c.wait_archived(names.last().unwrap(), WAIT);
    let new = backup(&c, &repo, &[]);
    let new_start = json(&dbb(["backup", "show", &new, "--json", "--repo", &repo_s]).assert_success())["start_wal"]
        .as_str()
        .unwrap()
        .to_string();
    let expire = |args: &[&str]| {
        let mut cmd = dbb(["backup", "expire", "--keep", "1", "--repo", &repo_s]);
        cmd.args(args);
        cmd
    };

    let before = wal_objects(&repo).len();
    let plan = json(&expire(&["--dry-run", "--json"]).assert_success());
    let paths: Vec<String> =
        plan["remove_wal"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect();
    let s = &plan["wal_summary"];
    assert_eq!(s["objects"].as_u64().unwrap() as usize, paths.len());
    assert!(paths.len() > 30, "{plan}");
    assert_eq!(s["backup_files"], 1, "the old backup's .backup file: {plan}");
    let range = &s["ranges"][0];
    assert_eq!(s["ranges"].as_array().unwrap().len(), 1, "{plan}");
    let (first, last) = (range["first"].as_str().unwrap(), range["last"].as_str().unwrap());
    let oldest = wal_objects(&repo)[0].file_name().unwrap().to_string_lossy()[..24].to_string();
    assert_eq!(first, oldest);
    assert!(last < new_start.as_str() && names.contains(&last.to_string()), "{last} {new_start}");
    let stored: u64 = paths.iter().map(|p| std::fs::metadata(repo.join(p)).unwrap().len()).sum();
    assert_eq!(s["stored_bytes"].as_u64().unwrap(), stored);

    let out = expire(&["--dry-run"]).assert_success();
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("would remove ") && l.contains("WAL objects"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    let segments = range["segments"].as_u64().unwrap();
    assert!(
        line.starts_with(&format!("would remove {} WAL objects (", paths.len()))
            && line.contains(&format!("stored): timeline 1 {first} to {last} ({segments} segments); 1 .backup file"))
            && line.contains("-v lists every object"),
        "{line}"
    );
    assert!(out.stdout.contains(&format!("would remove backup {old}")), "{}", out.stdout);
    // Not every name: the middle of the range is not printed.
    assert!(!out.stdout.contains(&names[10]) && !out.stdout.contains("wal/"), "{}", out.stdout);
    assert!(out.stdout.lines().count() < 8, "{}", out.stdout);

    let out = expire(&["--dry-run", "-v"]).assert_success();
    for p in &paths {
        assert!(out.stdout.contains(&format!("would remove {p}\n")), "{p} not listed: {}", out.stdout);
    }
    assert_eq!(wal_objects(&repo).len(), before, "a dry run removes nothing");

    // The real run: past tense, the same numbers.
    let out = expire(&[]).assert_success();
    assert!(out.stdout.contains(&format!("removed {} WAL objects (", paths.len())), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("timeline 1 {first} to {last} ({segments} segments)")), "{}", out.stdout);
    assert!(!out.stdout.contains("-v lists"), "{}", out.stdout);
    assert_eq!(wal_objects(&repo).len(), before - paths.len());
    assert_eq!(listed(&repo), [new]);
}
