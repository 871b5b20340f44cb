//! `backup base`, `list`, `show`, `verify`, `delete`, `expire` and `wal
//! cleanup` on real servers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

fn base(c: &Cluster, repo: &std::path::Path, extra: &[&str]) -> Output {
    dbb(["backup", "base", "--fast", "--repo"]).arg(repo).args(c.conn_args()).args(extra).output()
}

fn list(repo: &std::path::Path) -> Vec<Value> {
    serde_json::from_str(&dbb(["backup", "list", "--json", "--repo"]).arg(repo).assert_success().stdout).unwrap()
}

fn backup_under_writes(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(version, None, &repo, "");
    c.sql("CREATE TABLE w(i int, t text)");
    // Writes keep running during the backup.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let (bindir, sock, port) = (c.bindir(), c.socket_dir().to_path_buf(), c.port().to_string());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                Cmd::new(bindir.join("psql"))
                    .args(["-X", "-q", "-h"])
                    .arg(&sock)
                    .args(["-p", &port, "-U", "postgres", "-d", "postgres", "-c"])
                    .arg("INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
                    .output();
                n += 1;
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let out = base(&c, &repo, &["--jobs", "2", "--label", "nightly"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(writer.join().unwrap() > 0);
    assert_eq!(out.status, 0, "{out:?}");
    let id = out.stdout.lines().last().unwrap().to_string();
    assert_eq!(id.len(), 16, "backup ID on the last line: {}", out.stdout);

    let all = list(&repo);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["id"], id.as_str());
    assert_eq!(all[0]["status"], "complete");
    assert_eq!(all[0]["label"], "nightly");
    assert_eq!(all[0]["timeline"], 1);
    let show = json(&dbb(["backup", "show", "latest", "--json", "--repo"]).arg(&repo).assert_success());
    assert_eq!(show["id"], id.as_str());
    assert_eq!(show["pg_version_major"], version.major());

    // The manifest lists exactly the data directory's files, minus what pg_basebackup skips.
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join(format!("backups/{id}/manifest.json"))).unwrap())
            .unwrap();
    let files: Vec<&str> = manifest["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap()).collect();
    for must in ["PG_VERSION", "global/pg_control", "postgresql.conf", "backup_label"] {
        assert!(files.contains(&must), "{must} missing");
    }
    for never in ["postmaster.pid", "postmaster.opts"] {
        assert!(!files.contains(&never), "{never} must be skipped");
    }
    assert!(files.iter().all(|f| !f.starts_with("pg_wal/")), "pg_wal contents are skipped");
    let on_disk = std::fs::read_dir(c.data_dir().join("base")).unwrap().count();
    assert!(files.iter().filter(|f| f.starts_with("base/")).count() > on_disk * 100, "relation files copied");
    let label = manifest["files"].as_array().unwrap().iter().find(|f| f["path"] == "backup_label").unwrap();
    assert!(label["size"].as_u64().unwrap() > 50);
    // stored_size: the file's object, plus its block map (files of 128 KiB and more).
    for f in manifest["files"].as_array().unwrap() {
        let obj = repo.join(format!("backups/{id}/{}", f["object"].as_str().unwrap()));
        let map = repo.join(format!("backups/{id}/maps/{}.zst", f["path"].as_str().unwrap()));
        assert_eq!(f["map"].is_object(), f["size"].as_u64().unwrap() >= 128 << 10, "{f}");
        let map_size = if f["map"].is_object() { std::fs::metadata(&map).unwrap().len() } else { 0 };
        assert_eq!(std::fs::metadata(&obj).unwrap().len() + map_size, f["stored_size"].as_u64().unwrap(), "{obj:?}");
    }

    // verify passes; a flipped byte in one stored file fails naming it.
    let out = dbb(["backup", "verify", "latest", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(": ok"), "{}", out.stdout);
    let victim =
        manifest["files"].as_array().unwrap().iter().find(|f| f["stored_size"].as_u64().unwrap() > 200).unwrap();
    let obj = repo.join(format!("backups/{id}/{}", victim["object"].as_str().unwrap()));
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&obj, &bytes).unwrap();
    let out = dbb(["backup", "verify", &id, "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stdout.contains(&format!("BAD  {}", victim["path"].as_str().unwrap())), "{}", out.stdout);
}

#[test]
fn pg15_backup_under_writes_verifies_and_detects_damage() {
    backup_under_writes(PgVersion::V15);
}

#[test]
fn pg18_backup_under_writes_verifies_and_detects_damage() {
    backup_under_writes(PgVersion::V18);
}

#[test]
fn backup_refuses_a_server_that_does_not_archive_into_the_repository() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = Cluster::new(ClusterOptions::new(PgVersion::V15));
    dbb(["repo", "init", "--repo"]).arg(&repo).arg("--pgdata").arg(c.data_dir()).assert_success();
    let out = base(&c, &repo, &[]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("archive_mode = off") && out.stderr.contains("dbbackup pitr enable"), "{}", out.stderr);
    assert!(list(&repo).is_empty(), "nothing recorded before the check");

    // Archiving, but into another repository.
    let other = d.join("other");
    let c2 = archiving_cluster(PgVersion::V15, None, &other, "");
    let repo2 = d.join("repo2");
    let out = base(&c2, &repo2, &[]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(
        out.stderr.contains("does not archive into") && out.stderr.contains(&repo2.display().to_string()),
        "{}",
        out.stderr
    );

    // A repository bound to another cluster.
    let out = base(&c2, &repo, &[]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains(&c.system_identifier().to_string()), "{}", out.stderr);
}

#[test]
fn a_second_concurrent_backup_is_refused_and_an_interrupted_one_never_counts() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    // Another backup holds the lock.
    let lock = repo.join("locks/backup.lock");
    Cmd::new("touch").arg(&lock).assert_success();
    // flock -o: the lock belongs to flock itself, so killing it releases it.
    let mut holder = std::process::Command::new("flock")
        .arg("-o")
        .arg(&lock)
        .args(["sleep", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let out = base(&c, &repo, &[]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("another `dbbackup backup base` is running"), "{}", out.stderr);

    // A backup killed half way stays running/interrupted, never complete.
    c.sql("CREATE TABLE big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS t FROM generate_series(1, 400000) g");
    let mut child = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin())
        .args(["backup", "base", "--fast", "--jobs", "1", "--repo"])
        .arg(&repo)
        .args(c.conn_args())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let started = std::fs::read_dir(repo.join("backups"))
            .map(|rd| rd.flatten().any(|e| e.path().join("data").exists()))
            .unwrap_or(false);
        if started || std::time::Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Cmd::new("pkill").args(["-KILL", "-P", &child.id().to_string()]).as_root().output();
    let _ = child.wait();
    let all = list(&repo);
    assert_eq!(all.len(), 1, "{all:?}");
    // Killed while copying: it must not be complete.
    assert_eq!(all[0]["status"], "interrupted", "{all:?}");
    if all[0]["status"] == "interrupted" {
        let id = all[0]["id"].as_str().unwrap().to_string();
        let out = dbb(["restore", "pitr", "--base-backup", &id, "--repo"])
            .arg(&repo)
            .arg("--target-dir")
            .arg(d.join("r"))
            .assert_code(1);
        assert!(out.stderr.contains("not complete"), "{}", out.stderr);
        // The next expire cleans it up (a complete backup is needed for any policy).
        assert_eq!(base(&c, &repo, &[]).status, 0);
        let out = dbb(["backup", "expire", "--keep", "1", "--repo"]).arg(&repo).assert_success();
        assert!(out.stdout.contains(&format!("removing backup {id} (interrupted)")), "{}", out.stdout);
        assert!(!repo.join(format!("backups/{id}")).exists());
    }
}

#[test]
fn a_write_failure_mid_backup_marks_it_failed_and_ends_backup_mode() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "--compress=none");
    c.sql("CREATE TABLE big AS SELECT g, md5(g::text) AS t FROM generate_series(1, 200000) g");
    make_archived_segment(&c);
    // Files above 2 MB cannot be written (EFBIG, with SIGXFSZ ignored).
    let script = format!(
        "trap '' XFSZ; ulimit -f 2048; exec {} backup base --fast --compress none --repo {} {}",
        bin().display(),
        repo.display(),
        c.conn_args().join(" ")
    );
    let out = Cmd::new("bash").args(["-c", &script]).output();
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("File too large"), "{}", out.stderr);
    let all = list(&repo);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["status"], "failed");
    assert!(!all[0]["error"].as_str().unwrap().is_empty());
    // The server is not left in backup mode: another backup works at once.
    let out = base(&c, &repo, &["--compress", "zstd"]);
    assert_eq!(out.status, 0, "{out:?}");
    assert_eq!(list(&repo).iter().filter(|b| b["status"] == "complete").count(), 1);
}

#[test]
fn an_unreadable_file_in_pgdata_fails_the_backup_naming_it() {
    if run_as_user().is_none() {
        return; // whoever runs the tests as root reads every file
    }
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    let f = c.data_dir().join("notes.unreadable");
    std::fs::write(&f, "private").unwrap();
    Cmd::new("chmod").arg("000").arg(&f).as_root().assert_success();
    let out = base(&c, &repo, &[]);
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains("notes.unreadable") && out.stderr.contains("Permission denied"), "{}", out.stderr);
    let all = list(&repo);
    assert_eq!(all.len(), 1);
    assert_eq!(all[0]["status"], "failed");
    // Fixed: the next backup works (the server left backup mode).
    std::fs::remove_file(&f).unwrap();
    let out = base(&c, &repo, &[]);
    assert_eq!(out.status, 0, "{out:?}");
}

#[test]
fn delete_expire_and_cleanup_keep_every_retained_backup_restorable() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);

    // No complete backup: cleanup removes nothing and says why.
    let before = wal_objects(&repo);
    let out = dbb(["wal", "cleanup", "--retention-days", "0", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains("no complete backup"), "{}", out.stdout);
    assert_eq!(wal_objects(&repo), before);
    let out = dbb(["backup", "delete", "nope", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("no backup nope"), "{}", out.stderr);

    let mut ids = Vec::new();
    for i in 0..3 {
        c.sql(&format!("INSERT INTO t VALUES ({i})"));
        make_archived_segment(&c);
        // Full backups: --keep counts them (chains are tested in incremental.rs).
        let out = base(&c, &repo, &["--type", "full"]);
        assert_eq!(out.status, 0, "{out:?}");
        ids.push(out.stdout.lines().last().unwrap().to_string());
        make_archived_segment(&c);
        std::thread::sleep(Duration::from_millis(1100));
    }
    let manifests: Vec<Value> = list(&repo);
    let start_of =
        |id: &str| manifests.iter().find(|m| m["id"] == id).unwrap()["start_wal"].as_str().unwrap().to_string();

    // Dry run: exactly the oldest backup and the WAL before the second's start.
    let out = dbb(["backup", "expire", "--keep", "2", "--dry-run", "--json", "--repo"]).arg(&repo).assert_success();
    let plan = json(&out);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(plan["remove_backups"][0]["id"], ids[0].as_str());
    assert_eq!(plan["keep_backups"], serde_json::json!([ids[1], ids[2]]));
    assert_eq!(plan["wal_kept_from"], start_of(&ids[1]).as_str());
    let cut = start_of(&ids[1]);
    for w in plan["remove_wal"].as_array().unwrap() {
        let name = w.as_str().unwrap().rsplit('/').next().unwrap()[..24].to_string();
        assert!(name < cut, "{name} is needed");
    }
    assert!(!plan["remove_wal"].as_array().unwrap().is_empty());
    assert!(repo.join(format!("backups/{}", ids[0])).exists(), "dry run removed something");
    let objects_before = wal_objects(&repo).len();

    let out = dbb(["backup", "expire", "--keep", "2", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("removing backup {}", ids[0])), "{}", out.stdout);
    assert!(!repo.join(format!("backups/{}", ids[0])).exists());
    assert_eq!(wal_objects(&repo).len(), objects_before - plan["remove_wal"].as_array().unwrap().len());
    for id in &ids[1..] {
        dbb(["backup", "verify", id, "--repo"]).arg(&repo).assert_success();
    }
    let out = dbb(["wal", "verify", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(": ok"), "{}", out.stdout);

    // A one-day window keeps everything now; keep-days 0 keeps the newest backup.
    let out =
        dbb(["wal", "cleanup", "--retention-days", "1", "--dry-run", "--json", "--repo"]).arg(&repo).assert_success();
    assert_eq!(json(&out)["remove_wal"], serde_json::json!([]));
    // Cleanup to the newest backup: the older one stays listed, but as
    // expired (its WAL goes), so nothing unrestorable is listed complete.
    let out = dbb(["wal", "cleanup", "--retention-days", "0", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("keeping WAL from {}", start_of(&ids[2]))), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("marking backup {} expired", ids[1])), "{}", out.stdout);
    let after = list(&repo);
    assert_eq!(after.len(), 2, "wal cleanup never removes backups");
    let status_of = |id: &str| after.iter().find(|m| m["id"] == id).unwrap()["status"].as_str().unwrap().to_string();
    assert_eq!(status_of(&ids[1]), "expired");
    assert_eq!(status_of(&ids[2]), "complete");
    dbb(["backup", "verify", &ids[2], "--repo"]).arg(&repo).assert_success();
    let out = dbb(["backup", "expire", "--keep", "1", "--dry-run", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("would remove backup {} (expired by wal cleanup)", ids[1])), "{}", out.stdout);

    // delete: not the only complete backup, unless --force (an expired one goes freely).
    dbb(["backup", "delete", &ids[1], "--repo"]).arg(&repo).assert_success();
    let out = dbb(["backup", "delete", &ids[2], "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("only complete backup") && out.stderr.contains("--force"), "{}", out.stderr);
    let out = dbb(["backup", "expire", "--keep", "0", "--repo"]).arg(&repo).assert_code(2);
    assert!(out.stderr.contains("keep at least 1"), "{}", out.stderr);
    dbb(["backup", "delete", &ids[2], "--force", "--repo"]).arg(&repo).assert_success();
    assert!(list(&repo).is_empty());
}
