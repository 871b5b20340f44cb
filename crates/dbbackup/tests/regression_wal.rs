//! Regression tests for bugs found in WAL archiving, `wal verify`, `pitr
//! enable`/`status` and the CLI plumbing: each test fails if its bug
//! comes back. Real PostgreSQL 15 servers wherever WAL is needed.

mod common;

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

/// Finishes a segment of `c` (not archiving) and copies it into `dir`.
fn copy_segment(c: &Cluster, dir: &TestDir) -> (String, PathBuf) {
    c.sql("CREATE TABLE IF NOT EXISTS f(i int); INSERT INTO f SELECT generate_series(1, 1000)");
    let name = c.switch_wal();
    let dest = dir.join(&name);
    std::fs::copy(c.data_dir().join("pg_wal").join(&name), &dest).unwrap();
    chown_to_run_user(&dest);
    (name, dest)
}

/// Waits until the repository holds an object for `name`.
fn wait_object(repo: &Path, name: &str) {
    let start = Instant::now();
    let prefix = format!("{name}.");
    while !wal_objects(repo).iter().any(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix)) {
        assert!(start.elapsed() < Duration::from_secs(60), "{name} never archived: {:?}", wal_objects(repo));
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A real promotion of an archiving cluster, in place: stopped cleanly,
/// restarted in archive recovery from its own repository (through `wal
/// fetch`), it ends recovery on timeline 2, writes `00000002.history` and
/// archives it. Returns two segments archived on timeline 2.
fn promote_in_place(c: &Cluster, repo: &Path, extra: &str) -> Vec<String> {
    c.stop();
    c.append_conf(&format!(
        "restore_command = '{} wal fetch %f %p --repo {} {extra}'",
        bin().display(),
        repo.display()
    ));
    c.dir().write("data/recovery.signal", "");
    c.start();
    c.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(60));
    c.wait_for("SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)", "00000002", Duration::from_secs(60));
    let tl2 = vec![make_archived_segment(c), make_archived_segment(c)];
    wait_object(repo, "00000002.history");
    tl2
}

// 1. Junk under a history or backup file name is refused, never stored.
#[test]
fn archive_refuses_junk_history_and_backup_files() {
    // A repository bound to a (stopped) 16 MB-segment cluster, as every
    // repository is once its first segment is archived.
    let mut o = ClusterOptions::new(PgVersion::V15);
    o.start = false;
    let c = Cluster::new(o);
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).arg("--pgdata").arg(c.data_dir()).assert_success();

    let junk = d.write("junk", "junk\n");
    let out = archive_cmd(&junk, Some("00000003.history"), &repo).assert_code(1);
    assert!(
        out.stderr.contains("00000003.history") && out.stderr.contains("not a timeline history file"),
        "{}",
        out.stderr
    );

    // Valid-looking content, but timeline 1 never has a history file.
    let tl1 = d.write("tl1", "1\t0/3000000\tno recovery target specified\n");
    let out = archive_cmd(&tl1, Some("00000001.history"), &repo).assert_code(1);
    assert!(
        out.stderr.contains("00000001.history") && out.stderr.contains("timeline 1 has no history file"),
        "{}",
        out.stderr
    );

    // Backup history files: no START WAL LOCATION, or one elsewhere than the name says.
    let backup_name = "000000010000000000000006.00000028.backup";
    let no_start = d.write("no-start", "STOP WAL LOCATION: 0/6000100 (file 000000010000000000000006)\n");
    let out = archive_cmd(&no_start, Some(backup_name), &repo).assert_code(1);
    assert!(out.stderr.contains(backup_name) && out.stderr.contains("no START WAL LOCATION"), "{}", out.stderr);
    for (label, start) in [("other-segment", "0/7000028"), ("other-offset", "0/6000030")] {
        let wrong = d.write(
            label,
            format!(
                "START WAL LOCATION: {start} (file 000000010000000000000006)\nSTOP WAL LOCATION: 0/7000100 (file 000000010000000000000007)\n"
            ),
        );
        let out = archive_cmd(&wrong, Some(backup_name), &repo).assert_code(1);
        assert!(
            out.stderr.contains(backup_name) && out.stderr.contains("not the position its name says"),
            "{label}: {}",
            out.stderr
        );
    }
    let history_dir: Vec<_> = std::fs::read_dir(repo.join("wal/history"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(history_dir.is_empty(), "nothing may be stored under wal/history: {history_dir:?}");
    assert!(wal_objects(&repo).is_empty(), "nothing may be stored: {:?}", wal_objects(&repo));

    // Correct hand-made files are archived (into the bound repository and
    // into an unbound one), and come back byte for byte.
    let unbound = d.join("unbound");
    dbb(["repo", "init", "--repo"]).arg(&unbound).assert_success();
    let label = "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\nSTOP WAL LOCATION: 0/6000100 (file 000000010000000000000006)\n";
    let good = d.write("good-backup", label);
    let history = "1\t0/3000000\tno recovery target specified\n";
    let good_hist = d.write("good-history", history);
    for r in [&repo, &unbound] {
        archive_cmd(&good, Some(backup_name), r).assert_success();
        archive_cmd(&good_hist, Some("00000002.history"), r).assert_success();
        assert_eq!(wal_objects(r).len(), 2, "{:?}", wal_objects(r));
        for (name, content) in [(backup_name, label), ("00000002.history", history)] {
            let dest = d.join("fetched");
            let _ = std::fs::remove_file(&dest);
            dbb(["wal", "fetch", name]).arg(&dest).arg("--repo").arg(r).assert_success();
            assert_eq!(std::fs::read_to_string(&dest).unwrap(), content);
        }
    }
}

// 2. A child timeline without its history file is a verify failure.
#[test]
fn verify_fails_when_a_child_timeline_history_file_is_missing() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    make_archived_segment(&c);
    promote_in_place(&c, &repo, "");
    dbb(["wal", "verify", "--repo"]).arg(&repo).assert_success();

    std::fs::remove_file(object_for(&repo, "00000002.history")).unwrap();
    let out = dbb(["wal", "verify", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stdout.contains("00000002.history"), "{}\n{}", out.stdout, out.stderr);
    let out = dbb(["wal", "verify", "--json", "--repo"]).arg(&repo).assert_code(1);
    let report = json(&out);
    assert_eq!(report["ok"], false);
    let errors = report["history_errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["path"].as_str().unwrap().ends_with("00000002.history")
            && e["error"].as_str().unwrap().contains("00000002.history")),
        "{report:#}"
    );
}

// 3. Gaps in an encrypted repository holding a history file, with or without the key.
#[test]
fn status_finds_gaps_in_an_encrypted_repository_with_a_history_file() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let repo_s = repo.display().to_string();
    let key = key_file(&d, "key", 0x7c);
    let key_s = key.display().to_string();
    dbb(["repo", "init", "--encrypt", "--repo", &repo_s, "--encryption-key-file", &key_s]).assert_success();
    // archive_command as `pitr enable --encryption-key-file` writes it
    // (set at initdb time: `pitr enable` on a server with archive_mode off
    // spends 10 s waiting for a reload PostgreSQL 15 shows as "(disabled)").
    let c = archiving_cluster(PgVersion::V15, None, &repo, &format!("--encryption-key-file {key_s}"));
    let tl1: Vec<String> = (0..3).map(|_| make_archived_segment(&c)).collect();
    promote_in_place(&c, &repo, &format!("--encryption-key-file {key_s}"));
    let history = object_for(&repo, "00000002.history");
    assert!(history.to_string_lossy().ends_with(".enc"), "{history:?}");
    let (code, v) = status(&c, &["--repo", &repo_s]);
    assert_eq!(v["repository"]["gaps"], serde_json::json!([]), "{}", findings(&v));
    assert_ne!(code, 1, "{}", findings(&v));
    // The key archive_command names reads the history files: no warning,
    // and none when the key is given either.
    assert!(v["repository"]["history_error"].is_null(), "{}", findings(&v));
    let (_, v) = status(&c, &["--repo", &repo_s, "--encryption-key-file", &key_s]);
    assert!(v["repository"]["history_error"].is_null(), "{}", findings(&v));

    let victim = &tl1[1];
    std::fs::remove_file(object_for(&repo, victim)).unwrap();
    for extra in [vec![], vec!["--encryption-key-file", key_s.as_str()]] {
        let mut args = vec!["--repo", repo_s.as_str()];
        args.extend(extra.iter());
        let (code, v) = status(&c, &args);
        assert_eq!((code, v["verdict"].as_str().unwrap()), (1, "error"), "{extra:?}: {}", findings(&v));
        let gaps = v["repository"]["gaps"].as_array().unwrap();
        assert!(
            gaps.iter().any(|g| g["timeline"] == 1 && g["first_missing"] == victim.as_str()),
            "{extra:?}: {gaps:?}"
        );
        assert!(findings(&v).contains(&format!("gap on timeline 1: {victim}")), "{extra:?}: {}", findings(&v));
    }
}

// 4. An unwritable repository is an error before any archive fails.
#[test]
fn status_reports_a_read_only_repository_before_archiving_fails() {
    if run_as_user().is_none() {
        eprintln!("not root: the repository owner can always write, nothing to test");
        return;
    }
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let (code, v) = status(&c, &[]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
    assert!(v["repository"]["writable"].is_null(), "{v:#}");

    Cmd::new("chmod").args(["-R", "a-w"]).arg(&repo).as_root().assert_success();
    let (code, v) = status(&c, &[]);
    let restore = Cmd::new("chmod").args(["-R", "u+w"]).arg(&repo).as_root().output();
    assert_eq!((code, v["verdict"].as_str().unwrap()), (1, "error"), "{}", findings(&v));
    assert!(findings(&v).contains("cannot write"), "{}", findings(&v));
    assert!(v["repository"]["writable"].is_string(), "{v:#}");
    assert_eq!(v["archiver"]["failed_count"], 0, "no archive had failed yet: {v:#}");
    assert_eq!(restore.status, 0, "{restore:?}");

    let (code, v) = status(&c, &[]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
}

// 5. The newest complete base backup is shown; none yet is only a note.
#[test]
fn status_shows_the_newest_base_backup() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);

    let (code, v) = status(&c, &[]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
    assert!(v["repository"]["newest_backup"].is_null(), "{v:#}");
    let note = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["message"].as_str().unwrap().contains("no complete base backup"))
        .unwrap_or_else(|| panic!("no finding about the missing backup: {}", findings(&v)));
    assert_eq!(note["level"], "ok", "a note, not a warning: {note}");
    let text = pitr(&c, &["status"]).assert_success().stdout;
    assert!(text.lines().any(|l| l.starts_with("newest backup:") && l.contains("none")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("note:") && l.contains("no complete base backup")), "{text}");

    let out = dbb(["backup", "base", "--fast", "--repo"]).arg(&repo).args(c.conn_args()).assert_success();
    let id = out.stdout.lines().last().unwrap().trim().to_string();
    assert_eq!(id.len(), 16, "backup ID on the last line: {}", out.stdout);

    let (code, v) = status(&c, &[]);
    assert_eq!((code, v["verdict"].as_str().unwrap()), (0, "ok"), "{}", findings(&v));
    assert_eq!(v["repository"]["newest_backup"]["id"], id.as_str(), "{v:#}");
    assert_eq!(v["repository"]["newest_backup"]["timeline"], 1);
    assert!(!findings(&v).contains("no complete base backup"), "{}", findings(&v));
    let text = pitr(&c, &["status"]).assert_success().stdout;
    assert!(text.lines().any(|l| l.starts_with("newest backup:") && l.contains(&id)), "{text}");
}

// 6. A key without --encrypt never creates an unencrypted repository.
#[test]
fn a_key_without_encrypt_is_refused_when_the_repository_would_be_unencrypted() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let key = key_file(&d, "key", 0x42);
    let key_s = key.display().to_string();
    let command_before = c.sql("SHOW archive_command");
    let auto_before = std::fs::read_to_string(c.data_dir().join("postgresql.auto.conf")).unwrap();

    let new = d.join("new");
    let out =
        pitr(&c, &["enable", "--repo", &new.display().to_string(), "--encryption-key-file", &key_s]).assert_code(1);
    assert!(out.stderr.contains("--encrypt"), "{}", out.stderr);
    assert!(!new.exists(), "repository created despite the refusal");
    assert_eq!(c.sql("SHOW archive_command"), command_before);
    assert_eq!(std::fs::read_to_string(c.data_dir().join("postgresql.auto.conf")).unwrap(), auto_before);

    let (_, seg) = copy_segment(&c, &d);
    let new2 = d.join("new2");
    let out = archive_cmd(&seg, None, &new2).arg("--encryption-key-file").arg(&key).assert_code(1);
    assert!(out.stderr.contains("--encrypt"), "{}", out.stderr);
    assert!(!new2.exists(), "repository created despite the refusal");

    let plain = d.join("plain");
    dbb(["repo", "init", "--repo"]).arg(&plain).assert_success();
    let out =
        pitr(&c, &["enable", "--repo", &plain.display().to_string(), "--encryption-key-file", &key_s]).assert_code(1);
    assert!(out.stderr.contains("is not encrypted"), "{}", out.stderr);
    assert_eq!(c.sql("SHOW archive_command"), command_before);
    assert!(wal_objects(&plain).is_empty());
}

// 7. Concurrent first archivers agree on one repository.
#[test]
fn concurrent_first_archivers_create_one_repository() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let (_, seg) = copy_segment(&c, &d);
    for round in 0..5 {
        let repo = d.join(format!("repo-{round}"));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (seg, repo) = (seg.clone(), repo.clone());
                std::thread::spawn(move || archive_cmd(&seg, None, &repo).output())
            })
            .collect();
        for h in handles {
            let out = h.join().unwrap();
            assert_eq!(out.status, 0, "round {round}: {out:?}");
        }
        assert_eq!(wal_objects(&repo).len(), 1, "round {round}: {:?}", wal_objects(&repo));
        dbb(["repo", "info", "--repo"]).arg(&repo).assert_success();
    }
}

// 7b. An existing empty directory becomes the repository.
#[test]
fn archive_into_an_empty_directory_creates_the_repository() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let (name, seg) = copy_segment(&c, &d);
    let empty = d.mkdir("empty");
    archive_cmd(&seg, None, &empty).assert_success();
    let info = json(&dbb(["repo", "info", "--json", "--repo"]).arg(&empty).assert_success());
    assert_eq!(info["format_version"], 1);
    assert_eq!(info["cluster"]["system_identifier"], c.system_identifier().to_string().as_str());
    assert_eq!(wal_objects(&empty).len(), 1);
    let dest = d.join("dest");
    dbb(["wal", "fetch"]).arg(&name).arg(&dest).arg("--repo").arg(&empty).assert_success();
    assert_eq!(sha256_file(&dest), sha256_file(&seg));
}

// 8. --watch 0 would spin: a usage error.
#[test]
fn status_watch_zero_is_a_usage_error() {
    // Were it accepted, it would loop (no server here): fail fast instead.
    let out = dbb(["pitr", "status", "--watch", "0"]).timeout(Duration::from_secs(10)).assert_code(2);
    assert!(out.stderr.contains("--watch"), "{}", out.stderr);
}

fn auto_conf_copies(data: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("postgresql.auto.conf.dbbackup-"))
        .map(|e| e.path())
        .collect();
    v.sort();
    v
}

// 9. Offline edits in quick succession keep every copy; no empty copy.
#[test]
fn offline_enable_twice_then_disable_keeps_every_copy() {
    let mut o = ClusterOptions::new(PgVersion::V15);
    o.start = false;
    let c = Cluster::new(o);
    let d = TestDir::new();
    let repo = d.join("repo");
    let data = c.data_dir();
    let auto = data.join("postgresql.auto.conf");
    let enable = || dbb(["pitr", "enable", "--repo"]).arg(&repo).arg("--pgdata").arg(&data).assert_success();

    let v0 = std::fs::read_to_string(&auto).unwrap();
    enable();
    let v1 = std::fs::read_to_string(&auto).unwrap();
    enable();
    let v2 = std::fs::read_to_string(&auto).unwrap();
    dbb(["pitr", "disable", "--pgdata"]).arg(&data).assert_success();
    let v3 = std::fs::read_to_string(&auto).unwrap();
    assert!(v2.contains("archive_mode = 'on'") && v3.contains("archive_mode = 'off'"), "{v2}\n---\n{v3}");
    let copies = auto_conf_copies(&data);
    assert_eq!(copies.len(), 3, "one copy per run: {copies:?}");
    let contents: Vec<String> = copies.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert_eq!(contents, vec![v0, v1, v2], "each copy holds the file as that run found it");

    // No postgresql.auto.conf at all: a new one with PostgreSQL's header, no empty copy.
    for p in &copies {
        std::fs::remove_file(p).unwrap();
    }
    std::fs::remove_file(&auto).unwrap();
    enable();
    assert!(auto_conf_copies(&data).is_empty(), "{:?}", auto_conf_copies(&data));
    let text = std::fs::read_to_string(&auto).unwrap();
    assert!(text.starts_with("# Do not edit this file manually!"), "{text}");
    assert!(text.contains("archive_mode = 'on'"), "{text}");
    c.start();
    assert_eq!(c.sql("SHOW archive_mode"), "on");
}

// 10. A reader that stops early is no reason to panic.
#[test]
fn a_closed_pipe_does_not_panic() {
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    let d = TestDir::new();
    let repo = d.join("repo");
    let (name, seg) = copy_segment(&c, &d);
    archive_cmd(&seg, None, &repo).assert_success();
    // Far more listing than a pipe holds: the same object under 1500 names
    // (`wal list` reads names only).
    let obj = object_for(&repo, &name);
    let file = obj.file_name().unwrap().to_string_lossy().to_string();
    for i in 0..1500u32 {
        let other = format!("00000001{:08X}{:08X}", i / 256, i % 256);
        if other == name {
            continue;
        }
        let dir = repo.join("wal").join(&other[..16]);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::hard_link(&obj, dir.join(file.replacen(&name, &other, 1))).unwrap();
    }
    chown_to_run_user(&repo);
    let full = dbb(["wal", "list", "--json", "--repo"]).arg(&repo).assert_success();
    assert!(full.stdout.len() > 200_000, "{} bytes", full.stdout.len());

    for args in ["wal list", "wal list --json", "repo info"] {
        let script = format!(
            "{{ '{}' {args} --repo '{}'; echo \"exit=$?\" >&2; }} | head -c 10",
            bin().display(),
            repo.display()
        );
        let out = Cmd::new("sh").args(["-c", &script]).output();
        assert_eq!(out.stdout.len(), 10, "{args}: {out:?}");
        assert!(
            !out.stderr.contains("panicked") && !out.stderr.contains("backtrace") && !out.stderr.contains("exit=101"),
            "{args}: {}",
            out.stderr
        );
    }
}

// 11. `json` and `quiet` in the config file.
#[test]
fn config_file_accepts_json_and_quiet() {
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).assert_success();
    let cfg = d.write("dbbackup.toml", format!("repo = \"{}\"\njson = true\nquiet = true\n", repo.display()));
    let out = dbb(["repo", "info", "--config"]).arg(&cfg).assert_success();
    let info = json(&out);
    assert_eq!(info["format_version"], 1);
    assert_eq!(info["compression"]["algorithm"], "zstd");
    assert!(out.stderr.trim().is_empty(), "quiet: {}", out.stderr);

    // quiet = true silences warnings as --quiet does (here: a duplicate archive).
    let label = d.write("label", "START WAL LOCATION: 0/6000028 (file 000000010000000000000006)\n");
    let name = Some("000000010000000000000006.00000028.backup");
    archive_cmd(&label, name, &repo).assert_success();
    let loud = archive_cmd(&label, name, &repo).assert_success();
    assert!(loud.stderr.contains("already archived"), "{}", loud.stderr);
    let flag = archive_cmd(&label, name, &repo).arg("--quiet").assert_success();
    assert!(flag.stderr.is_empty(), "--quiet: {}", flag.stderr);
    let quiet_cfg = d.write("quiet.toml", "quiet = true\n");
    let quiet = archive_cmd(&label, name, &repo).arg("--config").arg(&quiet_cfg).assert_success();
    assert!(quiet.stderr.is_empty(), "quiet = true still logs: {}", quiet.stderr);
}

// A mistyped restore_command must stop recovery, not end it early: usage
// errors of `wal fetch` exit above 125, not 2 ("not archived").
#[test]
fn wal_fetch_usage_errors_are_fatal_for_recovery() {
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).assert_success();
    let out = dbb(["wal", "fetch", "000000010000000000000003", "/nonexistent/x", "--bogus", "--repo"])
        .arg(&repo)
        .assert_code(128);
    assert!(out.stderr.starts_with("dbbackup: wal fetch:") && out.stderr.contains("--bogus"), "{}", out.stderr);
    let out = dbb(["wal", "fetch", "000000010000000000000003", "--repo"]).arg(&repo).assert_code(128);
    assert!(out.stderr.contains("dbbackup: wal fetch:"), "{}", out.stderr);
    // Other commands keep exit 2 for usage errors; help is still help.
    dbb(["wal", "list", "--bogus"]).assert_code(2);
    dbb(["wal", "fetch", "--help"]).assert_success();
}
