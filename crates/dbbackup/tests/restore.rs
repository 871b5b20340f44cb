//! `restore pitr` on real servers: every target kind, target actions,
//! timelines, pg_basebackup sources, encrypted repositories and the
//! refusals that come before anything is written.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;

/// A plain `restore pitr` (no auto-start) that is expected to fail.
fn refused(repo: &Path, dir: &Path, args: &[&str], code: i32) -> Output {
    dbb(["restore", "pitr", "--repo"]).arg(repo).arg("--target-dir").arg(dir).args(args).assert_code(code)
}

fn is_empty_or_absent(dir: &Path) -> bool {
    std::fs::read_dir(dir).map(|mut rd| rd.next().is_none()).unwrap_or(true)
}

// ---------------------------------------------------------------------------
// 1 + 2: every target kind, and --target-action pause.

fn every_target_kind(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(version, None, &repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let id = backup(&c, &repo, &[]);
    // Right after the backup's end: a time target here must be reachable from
    // it (its stop_time once was rounded up to the next second and refused it).
    c.sql("INSERT INTO t VALUES (1)");
    let t1 = c.sql("SELECT now()");
    std::thread::sleep(Duration::from_millis(50));
    let x2 = c.sql("INSERT INTO t VALUES (2) RETURNING txid_current()");
    c.sql("SELECT pg_create_restore_point('rp1')");
    c.sql("INSERT INTO t VALUES (3)");
    let l3 = c.sql("SELECT pg_current_wal_insert_lsn()");
    c.sql("INSERT INTO t VALUES (4)");
    finish_wal(&c);
    assert_eq!(c.sql(ROWS), "1,2,3,4");

    // The same moment as RFC 3339 (UTC) and as local time without an offset
    // (dbbackup's own time zone).
    let t1_rfc =
        c.sql(&format!(r#"SELECT to_char(timestamptz '{t1}' AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"#));
    let tz = jiff::tz::TimeZone::system();
    let tz_name = tz.iana_name().unwrap_or("UTC").to_string();
    let t1_local =
        c.sql(&format!("SELECT to_char(timestamptz '{t1}' AT TIME ZONE '{tz_name}', 'YYYY-MM-DD HH24:MI:SS.US')"));

    let off = ["--archive-mode", "off"];
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("time", vec!["--target-time", &t1], "1"),
        ("time rfc3339", vec!["--target-time", &t1_rfc], "1"),
        ("time local", vec!["--target-time", &t1_local], "1"),
        ("xid inclusive", vec!["--target-xid", &x2], "1,2"),
        ("xid --inclusive=true", vec!["--target-xid", &x2, "--inclusive=true"], "1,2"),
        ("xid exclusive", vec!["--target-xid", &x2, "--exclusive"], "1"),
        ("xid --inclusive=false", vec!["--target-xid", &x2, "--inclusive=false"], "1"),
        ("lsn", vec!["--target-lsn", &l3], "1,2,3"),
        ("name", vec!["--target-name", "rp1"], "1,2"),
        ("immediate", vec!["--target-immediate"], ""),
        ("end of archive", vec![], "1,2,3,4"),
    ];
    for (what, args, want) in cases {
        let dir = d.join(format!("restored-{}", what.replace([' ', '=', '-'], "_")));
        let mut all = args.clone();
        all.extend_from_slice(&off);
        let r = restore(&c, &repo, &dir, &all);
        let v = r.promoted();
        assert_eq!(r.rows(), want, "PostgreSQL {version}, target {what}:\n{}", r.describe());
        assert_eq!(v["plan"]["source"], format!("backup {id}"), "{what}");
        assert_eq!(v["target_dir"], dir.display().to_string());
        assert_eq!(v["recovery"]["timeline"], 2, "{what}: {}", r.describe());
        assert_eq!(r.sql("SELECT pg_is_in_recovery()"), "f");
        assert_eq!(r.sql("SHOW archive_mode"), "off", "{what}");
        // The restored copy is writable.
        r.sql("INSERT INTO t VALUES (99)");
        let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
        assert!(
            auto.contains(&format!("{} wal fetch %f %p --repo {}", bin().display(), repo.display())),
            "{what}: {auto}"
        );
        assert!(auto.contains("archive_mode = 'off'"), "{auto}");
        r.stop();
    }

    // --target-action pause: stops at the target, still in recovery, readable.
    let dir = d.join("restored-pause");
    let r = restore(&c, &repo, &dir, &["--target-name", "rp1", "--target-action", "pause", "--archive-mode", "off"]);
    let v = r.ok();
    assert_eq!(v["recovery"]["state"], "paused", "{}", r.describe());
    assert_eq!(v["recovery"]["target_reached"], true, "{}", r.describe());
    assert_eq!(v["recovery"]["timeline"], 1, "{}", r.describe());
    assert!(r.out.stderr.contains("recovery paused: timeline 1"), "{}", r.describe());
    assert_eq!(r.sql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(r.rows(), "1,2");
    // Resuming promotes at the target.
    r.sql("SELECT pg_wal_replay_resume()");
    r.wait_for("SELECT pg_is_in_recovery()", "f");
    assert_eq!(r.rows(), "1,2");
}

#[test]
fn pg15_every_target_kind_and_pause() {
    every_target_kind(PgVersion::V15);
}

#[test]
fn pg18_every_target_kind_and_pause() {
    every_target_kind(PgVersion::V18);
}

// ---------------------------------------------------------------------------
// 7: refusals, all before anything is written.

/// Two backups with rows in between, on PostgreSQL 15:
/// rows 1 (before backup 2), 2 (after it).
#[test]
fn refusals_before_anything_is_written() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let b1 = backup(&c, &repo, &[]);
    std::thread::sleep(Duration::from_millis(1100));
    c.sql("INSERT INTO t VALUES (1)");
    let between = c.sql("SELECT now()");
    let gap = finish_wal(&c);
    std::thread::sleep(Duration::from_millis(1100));
    let b2 = backup(&c, &repo, &[]);
    std::thread::sleep(Duration::from_millis(1100));
    c.sql("INSERT INTO t VALUES (2)");
    finish_wal(&c);
    let nowhere = d.join("nowhere");

    // Usage errors: exit 2, the accepted forms shown.
    let out = refused(&repo, &nowhere, &["--target-xid", "742", "--target-name", "rp"], 2);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
    let out = refused(&repo, &nowhere, &["--target-time", "2026-11-25 10:00:00", "--target-immediate"], 2);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
    for bad in ["yesterday", "2026-13-45 10:00:00", "25/11/2026 10:00"] {
        let out = refused(&repo, &nowhere, &["--target-time", bad], 2);
        assert!(out.stderr.contains("invalid target time"), "{bad}: {}", out.stderr);
        assert!(
            out.stderr.contains("YYYY-MM-DD HH:MM:SS[.ffffff][+-HH[:MM]]") && out.stderr.contains("RFC 3339"),
            "{bad}: {}",
            out.stderr
        );
    }
    for bad in ["0/XYZ", "3000028", "0/3000028/1"] {
        let out = refused(&repo, &nowhere, &["--target-lsn", bad], 2);
        assert!(out.stderr.contains("invalid LSN") && out.stderr.contains("0/3000028"), "{bad}: {}", out.stderr);
    }
    for bad in ["abc", "-5", "1"] {
        let out = refused(&repo, &nowhere, &[&format!("--target-xid={bad}")], 2);
        assert!(out.stderr.contains("invalid transaction ID") && out.stderr.contains("742"), "{bad}: {}", out.stderr);
    }
    let out = refused(&repo, &nowhere, &["--target-name", "rp", "--inclusive", "--exclusive"], 2);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);
    assert!(!nowhere.exists(), "usage errors must not create the target directory");

    // A non-empty target directory.
    let keep = d.write("full/keep.txt", "mine");
    let full = d.join("full");
    let out = refused(&repo, &full, &[], 1);
    assert!(out.stderr.starts_with("dbbackup: error:") || out.stderr.contains("\ndbbackup: error:"), "{}", out.stderr);
    assert!(out.stderr.contains("is not empty") && out.stderr.contains("keep.txt"), "{}", out.stderr);
    let names: Vec<_> = std::fs::read_dir(&full).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, vec![std::ffi::OsString::from("keep.txt")]);
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "mine");

    // Past the end of the archive (but not in the future): refused, unless --target-past-end.
    std::thread::sleep(Duration::from_millis(1500));
    let past_end = c.sql("SELECT now()");
    let out = refused(&repo, &nowhere, &["--target-time", &past_end], 1);
    assert!(
        out.stderr.contains("past the end of the archive") && out.stderr.contains("--target-past-end"),
        "{}",
        out.stderr
    );
    assert!(!nowhere.exists());
    // --force is for the directory only: it never turns a time past the end into "the end".
    let out = refused(&repo, &nowhere, &["--target-time", &past_end, "--force"], 1);
    assert!(out.stderr.contains("--target-past-end"), "{}", out.stderr);
    assert!(!nowhere.exists());
    // The same for an LSN past the end.
    let out = refused(&repo, &nowhere, &["--target-lsn", "FF/0"], 1);
    assert!(
        out.stderr.contains("target LSN FF/0 is past the end of the archive")
            && out.stderr.contains("--target-past-end"),
        "{}",
        out.stderr
    );

    // A target time in the future: refused, unless --target-past-end.
    let future = c.sql("SELECT now() + interval '1 day'");
    let out = refused(&repo, &nowhere, &["--target-time", &future], 1);
    assert!(out.stderr.contains("in the future") && out.stderr.contains("--target-past-end"), "{}", out.stderr);
    assert!(!nowhere.exists());
    let forced = d.join("forced");
    dbb(["restore", "pitr", "--target-past-end", "--target-time", &future, "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&forced)
        .assert_success();
    assert!(forced.join("recovery.signal").exists() && forced.join("PG_VERSION").exists());

    // A target before the chosen backup's end names the backup that can reach it.
    let out = refused(&repo, &nowhere, &["--base-backup", &b2, "--target-time", &between], 1);
    assert!(out.stderr.contains(&format!("backup {b2} cannot reach")), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("backup {b1} can (use --base-backup {b1})")), "{}", out.stderr);
    assert!(!nowhere.exists());

    // Without --base-backup the first backup is chosen for that time.
    let auto = d.join("auto");
    let r = restore(&c, &repo, &auto, &["--target-time", &between, "--archive-mode", "off"]);
    let v = r.promoted();
    assert_eq!(v["plan"]["source"], format!("backup {b1}"));
    assert_eq!(r.rows(), "1");
    r.stop();
    drop(r);

    // --auto-start without --port: the source's port is taken; refused
    // before anything is written.
    let busy = d.join("busy");
    let out = dbb(["restore", "pitr", "--auto-start", "--archive-mode", "off", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&busy)
        .assert_code(1);
    assert!(out.stderr.contains(&format!("port {} is in use", c.port())), "{}", out.stderr);
    assert!(out.stderr.contains("--port"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing was restored"), "{}", out.stderr);
    assert!(!busy.exists());

    // A backup that is not complete.
    let manifest = repo.join("backups").join(&b2).join("manifest.json");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let failed = text
        .replace("\"status\":\"complete\"", "\"status\":\"failed\"")
        .replace("\"status\": \"complete\"", "\"status\": \"failed\"");
    assert_ne!(text, failed, "no complete status in {}", manifest.display());
    std::fs::write(&manifest, &failed).unwrap();
    let out = refused(&repo, &nowhere, &["--base-backup", &b2], 1);
    assert!(out.stderr.contains(&b2) && out.stderr.contains("not complete"), "{}", out.stderr);
    assert!(!nowhere.exists());
    std::fs::write(&manifest, &text).unwrap();

    // A segment missing between the backup and the target.
    std::fs::remove_file(object_for(&repo, &gap)).unwrap();
    let out = refused(&repo, &nowhere, &["--base-backup", &b1], 1);
    assert!(out.stderr.contains("is missing") && out.stderr.contains(&gap), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("backup {b1}")), "{}", out.stderr);
    assert!(is_empty_or_absent(&nowhere));
    let empty = d.mkdir("empty");
    let out = refused(&repo, &empty, &["--base-backup", &b1, "--target-time", &between], 1);
    assert!(out.stderr.contains(&gap), "{}", out.stderr);
    assert!(is_empty_or_absent(&empty));
    // The second backup does not need it.
    let after = d.join("after");
    let r = restore(&c, &repo, &after, &["--archive-mode", "off"]);
    let v = r.promoted();
    assert_eq!(v["plan"]["source"], format!("backup {b2}"));
    assert_eq!(r.rows(), "1,2");
}

// ---------------------------------------------------------------------------
// 3: 1 MB WAL segments.

#[test]
fn pg15_one_megabyte_segments_restore_to_a_time() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, Some(1), &repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let id = backup(&c, &repo, &[]);
    std::thread::sleep(Duration::from_millis(1100));
    c.sql("INSERT INTO t VALUES (1)");
    // More than a few 1 MB segments between the target and the end.
    make_archived_segment(&c);
    c.sql("INSERT INTO t VALUES (2)");
    let t2 = c.sql("SELECT now()");
    make_archived_segment(&c);
    c.sql("INSERT INTO t VALUES (3)");
    finish_wal(&c);
    let dir = d.join("restored");
    let r = restore(&c, &repo, &dir, &["--target-time", &t2, "--archive-mode", "off", "--jobs", "4"]);
    let v = r.promoted();
    assert_eq!(v["plan"]["source"], format!("backup {id}"));
    let (first, last) = (v["plan"]["first_segment"].as_str().unwrap(), v["plan"]["last_segment"].as_str().unwrap());
    assert!(first < last, "{v}");
    assert_eq!(r.rows(), "1,2");
    assert_eq!(r.sql("SHOW wal_segment_size"), "1MB");
    assert_eq!(r.sql("SELECT count(*) FROM filler"), "4000");
    r.stop();
    drop(r);

    // --target-action shutdown: the server stops at the target.
    let dir = d.join("shutdown");
    let r = restore(&c, &repo, &dir, &["--target-time", &t2, "--target-action", "shutdown", "--archive-mode", "off"]);
    let v = r.ok();
    assert_eq!(v["recovery"]["state"], "shut down", "{}", r.describe());
    assert_eq!(v["recovery"]["target_reached"], true, "{}", r.describe());
    assert!(r.out.stderr.contains("recovery shut down; target reached"), "{}", r.describe());
    assert!(!dir.join("postmaster.pid").exists(), "{}", r.describe());
}

// ---------------------------------------------------------------------------
// 4: timelines.

/// Waits until the restored server has archived `name` (or later).
fn wait_archived_on(r: &Restored, name: &str) {
    let start = std::time::Instant::now();
    loop {
        let last = r.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
        if last.len() >= 24 && last.as_str() >= name {
            return;
        }
        assert!(start.elapsed() < WAIT, "{name} not archived by the restored server:\n{}", r.describe());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn timelines(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(version, None, &repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    backup(&c, &repo, &[]);
    c.sql("INSERT INTO t VALUES (1)");
    c.sql("SELECT pg_create_restore_point('branch')");
    c.sql("INSERT INTO t VALUES (2)");
    finish_wal(&c);

    // The first restore promotes to timeline 2 and keeps archiving (preserve, as a new primary would).
    let r1 = restore(&c, &repo, &d.join("r1"), &["--target-name", "branch", "--archive-mode", "preserve"]);
    let v = r1.promoted();
    assert!(r1.out.stderr.contains("as the new primary"), "preserve says what it means: {}", r1.describe());
    assert_eq!(v["recovery"]["timeline"], 2, "{}", r1.describe());
    assert_eq!(v["plan"]["target_timeline"], 1);
    assert_eq!(r1.rows(), "1");
    assert_eq!(r1.sql("SHOW archive_mode"), "on");
    r1.sql("INSERT INTO t VALUES (100)");
    r1.sql("INSERT INTO t VALUES (101)");
    r1.sql("SELECT txid_current()");
    let seg = r1.sql("SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    wait_archived_on(&r1, &seg);

    // Timeline 1 goes on on the source.
    c.sql("INSERT INTO t VALUES (3)");
    finish_wal(&c);

    // The copy is told it archives a second live history.
    let out = dbb(["pitr", "status", "--json", "--repo"])
        .arg(&repo)
        .args(["--host", &r1.sock.display().to_string(), "--port", &r1.port.to_string()])
        .output();
    let v = json(&out);
    assert_eq!(v["verdict"], "error", "{}", findings(&v));
    assert!(findings(&v).contains("this server archives a second live history"), "{}", findings(&v));
    r1.stop();
    drop(r1);

    let tl = json(&dbb(["wal", "timeline", "--json", "--repo"]).arg(&repo).assert_success());
    let tls = tl["timelines"].as_array().unwrap();
    assert_eq!(tls.len(), 2, "{tl}");
    assert_eq!(tls[0]["timeline"], 1);
    assert!(tls[0]["parent"].is_null(), "{tl}");
    assert_eq!(tls[1]["timeline"], 2);
    assert_eq!(tls[1]["parent"], 1);
    assert_eq!(tls[1]["last_segment"], seg.as_str());

    // The source is told: an error, not a warning.
    let out = pitr(&c, &["status", "--json"]).arg("--repo").arg(&repo).output();
    assert_eq!(out.status, 1, "{out:?}");
    let v = json(&out);
    assert_eq!(v["verdict"], "error", "{}", findings(&v));
    assert!(findings(&v).contains("two live histories: timeline 2 branched off timeline 1"), "{}", findings(&v));

    // (a) Timeline 1 kept archiving after timeline 2 was born: two live
    // histories. Without --timeline the restore refuses and names both.
    let out = dbb(["restore", "pitr", "--repo"]).arg(&repo).arg("--target-dir").arg(d.join("r2")).assert_code(1);
    for want in ["two live histories", "timeline 2 branched off timeline 1", "--timeline 1", "--timeline 2", &seg] {
        assert!(out.stderr.contains(want), "{want:?} missing: {}", out.stderr);
    }
    assert!(!d.join("r2").exists());

    // (b) An explicit --timeline latest follows timeline 2 to its end.
    let r2 = restore(&c, &repo, &d.join("r2"), &["--timeline", "latest", "--archive-mode", "off"]);
    let v = r2.promoted();
    assert_eq!(v["plan"]["target_timeline"], 2, "{}", r2.describe());
    assert_eq!(v["plan"]["last_segment"], seg.as_str());
    assert_eq!(r2.rows(), "1,100,101");
    // Promoted past the end of timeline 2: PostgreSQL picks the next free ID.
    assert_eq!(v["recovery"]["timeline"], 3, "{}", r2.describe());
    r2.stop();
    drop(r2);

    // (c) --timeline 1 stays on the source's history.
    let r3 = restore(&c, &repo, &d.join("r3"), &["--timeline", "1", "--archive-mode", "off"]);
    let v = r3.promoted();
    assert_eq!(v["plan"]["target_timeline"], 1, "{}", r3.describe());
    assert_eq!(r3.rows(), "1,2,3");
    r3.stop();
    drop(r3);

    // (d) --timeline 2 with a target on it.
    let r4 = restore(&c, &repo, &d.join("r4"), &["--timeline", "2", "--target-immediate", "--archive-mode", "off"]);
    let v = r4.promoted();
    assert_eq!(v["plan"]["target_timeline"], 2, "{}", r4.describe());
    assert_eq!(r4.rows(), "");
}

#[test]
fn pg15_timelines_latest_and_numbered() {
    timelines(PgVersion::V15);
}

#[test]
fn pg18_timelines_latest_and_numbered() {
    timelines(PgVersion::V18);
}

// ---------------------------------------------------------------------------
// 5: pg_basebackup directories and tars as the source.

#[test]
fn pg15_base_backup_path_plain_and_tar() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let plain = TestDir::new();
    c.base_backup_into(&plain);
    c.sql("INSERT INTO t VALUES (1)");
    let tar = TestDir::new();
    c.bin_cmd("pg_basebackup")
        .arg("-h")
        .arg(c.socket_dir())
        .args(["-p", &c.port().to_string(), "-U", "postgres", "-Ft", "-X", "none", "-c", "fast", "-D"])
        .arg(tar.join("bb"))
        .assert_success();
    assert!(tar.join("bb/base.tar").is_file());
    c.sql("INSERT INTO t VALUES (2)");
    c.sql("SELECT pg_create_restore_point('after2')");
    c.sql("INSERT INTO t VALUES (3)");
    finish_wal(&c);

    // No backup taken by dbbackup at all: the repository holds only WAL.
    let list = json(&dbb(["backup", "list", "--json", "--repo"]).arg(&repo).assert_success());
    assert_eq!(list.as_array().map(Vec::len), Some(0), "{list}");

    let plain_src = plain.join("data");
    let r = restore(
        &c,
        &repo,
        &d.join("from-plain"),
        &["--base-backup", plain_src.to_str().unwrap(), "--archive-mode", "off"],
    );
    let v = r.promoted();
    assert_eq!(v["plan"]["source"], plain_src.display().to_string());
    assert_eq!(r.rows(), "1,2,3");
    r.stop();
    drop(r);
    // The source is left as it was.
    assert!(plain_src.join("backup_label").exists() && !plain_src.join("recovery.signal").exists());

    let tar_src = tar.join("bb");
    let r = restore(
        &c,
        &repo,
        &d.join("from-tar"),
        &["--base-backup", tar_src.to_str().unwrap(), "--target-name", "after2", "--archive-mode", "off"],
    );
    let v = r.promoted();
    assert_eq!(v["plan"]["source"], tar_src.display().to_string());
    assert_eq!(r.rows(), "1,2");
    r.stop();
    drop(r);

    // The tar file itself is accepted too.
    let r = restore(
        &c,
        &repo,
        &d.join("from-tar-file"),
        &["--base-backup", tar_src.join("base.tar").to_str().unwrap(), "--target-immediate", "--archive-mode", "off"],
    );
    r.promoted();
    assert_eq!(r.rows(), "1");
}

// ---------------------------------------------------------------------------
// 6: encrypted repositories.

#[test]
fn pg18_encrypted_repository_needs_the_right_key() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let key = key_file(&d, "key", 0x11);
    let wrong = key_file(&d, "wrong", 0x22);
    let c =
        archiving_cluster(PgVersion::V18, None, &repo, &format!("--encrypt --encryption-key-file {}", key.display()));
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    let id = backup(&c, &repo, &["--encryption-key-file", key.to_str().unwrap()]);
    c.sql("INSERT INTO t VALUES (1)");
    finish_wal(&c);

    let nokey = d.join("nokey");
    let out = refused(&repo, &nokey, &[], 1);
    assert!(out.stderr.contains("dbbackup: error:") && out.stderr.contains("key"), "{}", out.stderr);
    assert!(is_empty_or_absent(&nokey), "nothing may be written without the key");

    let wrongdir = d.join("wrongkey");
    let out = refused(&repo, &wrongdir, &["--encryption-key-file", wrong.to_str().unwrap()], 1);
    assert!(out.stderr.contains("dbbackup: error:") && out.stderr.contains("fingerprint"), "{}", out.stderr);
    assert!(is_empty_or_absent(&wrongdir), "nothing may be written with a wrong key");

    let dir = d.join("restored");
    let r = restore(&c, &repo, &dir, &["--encryption-key-file", key.to_str().unwrap(), "--archive-mode", "off"]);
    let v = r.promoted();
    assert_eq!(v["plan"]["source"], format!("backup {id}"));
    assert_eq!(r.rows(), "1");
    let auto = std::fs::read_to_string(dir.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains(&format!("--encryption-key-file {}", key.display())), "{auto}");
    // The restored files are not the stored (encrypted) objects.
    assert_eq!(r.sql("SELECT count(*) FROM filler"), "2000");
}
