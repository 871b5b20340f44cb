//! `wal archive` and `wal fetch` on real servers: PostgreSQL's own
//! archive_command and restore_command paths, every codec, encryption,
//! segment sizes, and every bad input the contract names.

mod common;

use std::path::PathBuf;

use common::*;

/// Archives through a real server into repositories of every codec (and
/// encrypted), then fetches every segment back and compares bytes.
fn round_trip_on(version: PgVersion) {
    let d = TestDir::new();
    let key = key_file(&d, "key", 0x5a);
    let variants: Vec<(&str, String)> = vec![
        ("zstd", String::new()),
        ("lz4", "--compress=lz4".into()),
        ("gzip", "--compress=gzip".into()),
        ("none", "--compress=none".into()),
        ("zstd-enc", format!("--encrypt --encryption-key-file {}", key.display())),
    ];
    let first = d.join(format!("repo-{}", variants[0].0));
    let c = archiving_cluster(version, None, &first, &variants[0].1);
    for (label, extra) in &variants {
        let repo = d.join(format!("repo-{label}"));
        c.sql(&format!("ALTER SYSTEM SET {}", archive_command_line(&repo, extra).replacen(" = ", " TO ", 1)));
        c.sql("SELECT pg_reload_conf()");
        std::thread::sleep(std::time::Duration::from_millis(300));
        // The archive command creates the repository on first use.
        let names: Vec<String> = (0..3).map(|_| make_archived_segment(&c)).collect();
        let stats = c.sql("SELECT failed_count FROM pg_stat_archiver");
        assert_eq!(stats, "0", "{version} {label}: archiver failures: {}", c.log_tail(20));
        let info = json(&dbb(["repo", "info", "--json", "--repo"]).arg(&repo).assert_success());
        assert_eq!(info["cluster"]["system_identifier"], c.system_identifier().to_string().as_str());
        for name in &names {
            let original = c.data_dir().join("pg_wal").join(name);
            let dest = d.join(format!("fetched-{label}-{name}"));
            let mut fetch = dbb(["wal", "fetch"]);
            fetch.arg(name).arg(&dest).arg("--repo").arg(&repo);
            if label.ends_with("enc") {
                fetch.arg("--encryption-key-file").arg(&key);
            }
            fetch.assert_success();
            assert_eq!(sha256_file(&dest), sha256_file(&original), "{version} {label} {name}");
            let obj = object_for(&repo, name);
            let file = obj.file_name().unwrap().to_string_lossy().to_string();
            assert!(file.contains(&b3_file(&original)), "checksum in object name: {file}");
            // Standard tools open unencrypted objects in an emergency.
            let tool = match *label {
                "zstd" => Some("zstd -dc"),
                "lz4" => Some("lz4 -dc"),
                "gzip" => Some("gzip -dc"),
                _ => None,
            };
            if let Some(tool) = tool {
                let out = Cmd::new("sh")
                    .args(["-c", &format!("{tool} < '{}' | sha256sum", obj.display())])
                    .as_root()
                    .assert_success();
                assert!(out.stdout.starts_with(&sha256_file(&original)), "{tool}: {}", out.stdout);
            }
            if *label == "none" {
                assert_eq!(sha256_file(&obj), sha256_file(&original));
            }
            if label.ends_with("enc") {
                assert!(file.ends_with(".zst.enc"), "{file}");
                let raw = std::fs::read(&obj).unwrap();
                assert_eq!(&raw[..8], b"DBBKENC1");
            }
        }
    }
}

#[test]
fn pg15_archives_and_fetches_every_codec_and_encrypted() {
    round_trip_on(PgVersion::V15);
}

#[test]
fn pg18_archives_and_fetches_every_codec_and_encrypted() {
    round_trip_on(PgVersion::V18);
}

fn segment_size_round_trip(version: PgVersion, mb: u32) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(version, Some(mb), &repo, "");
    let names: Vec<String> = (0..3).map(|_| make_archived_segment(&c)).collect();
    assert_eq!(c.sql("SELECT failed_count FROM pg_stat_archiver"), "0", "{}", c.log_tail(20));
    let info = json(&dbb(["repo", "info", "--json", "--repo"]).arg(&repo).assert_success());
    assert_eq!(info["cluster"]["wal_segment_size"], u64::from(mb) << 20);
    assert_eq!(info["cluster"]["pg_version_major"], version.major());
    for name in names {
        let dest = d.join(format!("f-{name}"));
        dbb(["wal", "fetch"]).arg(&name).arg(&dest).arg("--repo").arg(&repo).assert_success();
        assert_eq!(std::fs::metadata(&dest).unwrap().len(), u64::from(mb) << 20);
        assert_eq!(sha256_file(&dest), sha256_file(&c.data_dir().join("pg_wal").join(&name)));
    }
}

#[test]
fn pg15_one_megabyte_segments() {
    segment_size_round_trip(PgVersion::V15, 1);
}

#[test]
fn pg18_sixty_four_megabyte_segments() {
    segment_size_round_trip(PgVersion::V18, 64);
}

/// Real segments copied out of a running cluster (no archiving), for
/// feeding bad input to the archiver.
struct Segments {
    cluster: Cluster,
    names: Vec<String>,
    dir: PathBuf,
}

fn real_segments(version: PgVersion, n: usize) -> Segments {
    let cluster = Cluster::new(ClusterOptions::new(version));
    let dir = cluster.dir().mkdir("segments");
    let mut names = Vec::new();
    for _ in 0..n {
        cluster.sql("CREATE TABLE IF NOT EXISTS f(i int); INSERT INTO f SELECT generate_series(1, 1000)");
        let name = cluster.switch_wal();
        std::fs::copy(cluster.data_dir().join("pg_wal").join(&name), dir.join(&name)).unwrap();
        names.push(name);
    }
    chown_to_run_user(&dir);
    Segments { cluster, names, dir }
}

#[test]
fn archive_refuses_bad_segments_with_clear_errors() {
    let s = real_segments(PgVersion::V15, 2);
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).arg("--pgdata").arg(s.cluster.data_dir()).assert_success();
    let (n1, n2) = (&s.names[0], &s.names[1]);
    let seg1 = s.dir.join(n1);
    let bytes = std::fs::read(&seg1).unwrap();

    // Missing source path.
    let out = archive_cmd(&d.join("gone"), Some(n1), &repo).assert_code(1);
    assert!(
        out.stderr.contains("cannot read WAL file")
            && out.stderr.contains("gone")
            && out.stderr.starts_with("dbbackup:"),
        "{}",
        out.stderr
    );
    // Empty.
    let empty = d.write("empty", "");
    let out = archive_cmd(&empty, Some(n1), &repo).assert_code(1);
    assert!(out.stderr.contains("is empty"), "{}", out.stderr);
    // Truncated and oversized.
    let short = d.write("short", &bytes[..bytes.len() / 2]);
    let out = archive_cmd(&short, Some(n1), &repo).assert_code(1);
    assert!(
        out.stderr.contains(&format!("is {} bytes", bytes.len() / 2)) && out.stderr.contains("truncated or oversized"),
        "{}",
        out.stderr
    );
    let mut big = bytes.clone();
    big.push(0);
    let long = d.write("long", &big);
    let out = archive_cmd(&long, Some(n1), &repo).assert_code(1);
    assert!(out.stderr.contains("truncated or oversized"), "{}", out.stderr);
    // Header that does not match the name.
    let out = archive_cmd(&seg1, Some(n2), &repo).assert_code(1);
    assert!(
        out.stderr.contains("does not belong to this file name") && out.stderr.contains(n2.as_str()),
        "{}",
        out.stderr
    );
    // Not a WAL file name at all.
    let out = archive_cmd(&seg1, Some("garbage"), &repo).assert_code(1);
    assert!(out.stderr.contains("not a WAL file name"), "{}", out.stderr);
    // Not WAL content.
    let junk = d.write(n1, vec![0x41u8; bytes.len()]);
    let out = archive_cmd(&junk, None, &repo).assert_code(1);
    assert!(out.stderr.contains("page magic"), "{}", out.stderr);
    assert!(wal_objects(&repo).is_empty(), "nothing may be stored: {:?}", wal_objects(&repo));

    // A segment from another cluster.
    let other = real_segments(PgVersion::V15, 1);
    let out = archive_cmd(&other.dir.join(&other.names[0]), None, &repo).assert_code(1);
    let (ours, theirs) = (s.cluster.system_identifier().to_string(), other.cluster.system_identifier().to_string());
    assert!(
        out.stderr.contains("another cluster") && out.stderr.contains(&ours) && out.stderr.contains(&theirs),
        "{}",
        out.stderr
    );
    // A PostgreSQL 18 segment into a PostgreSQL 15 repository.
    let v18 = real_segments(PgVersion::V18, 1);
    let out = archive_cmd(&v18.dir.join(&v18.names[0]), None, &repo).assert_code(1);
    assert!(out.stderr.contains("PostgreSQL 18") || out.stderr.contains("another cluster"), "{}", out.stderr);
    assert!(wal_objects(&repo).is_empty());
}

#[test]
fn duplicates_identical_succeed_and_differing_fail_naming_both_checksums() {
    let s = real_segments(PgVersion::V18, 1);
    let d = TestDir::new();
    let repo = d.join("repo");
    let name = &s.names[0];
    let seg = s.dir.join(name);
    archive_cmd(&seg, None, &repo).assert_success();
    let obj = object_for(&repo, name);
    let stored = std::fs::read(&obj).unwrap();
    let mtime = std::fs::metadata(&obj).unwrap().modified().unwrap();

    // Identical duplicate: success, nothing rewritten, logged.
    let out = archive_cmd(&seg, None, &repo).assert_success();
    assert!(out.stderr.contains("already archived"), "{}", out.stderr);
    assert_eq!(wal_objects(&repo).len(), 1);
    assert_eq!(std::fs::metadata(&obj).unwrap().modified().unwrap(), mtime);
    // Also with another codec requested: still one object.
    archive_cmd(&seg, None, &repo).arg("--compress=gzip").assert_success();
    assert_eq!(wal_objects(&repo).len(), 1);

    // Differing duplicate: refused with both checksums; the archived copy stays.
    let mut changed = std::fs::read(&seg).unwrap();
    let last = changed.len() - 1;
    changed[last] ^= 0xff;
    let other = d.mkdir("other");
    let changed_path = other.join(name);
    std::fs::write(&changed_path, &changed).unwrap();
    chown_to_run_user(&other);
    let out = archive_cmd(&changed_path, None, &repo).assert_code(1);
    let (old, new) = (b3_file(&seg), b3_file(&changed_path));
    assert!(
        out.stderr.contains(&old) && out.stderr.contains(&new) && out.stderr.contains("different content"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(&obj).unwrap(), stored);
    assert_eq!(wal_objects(&repo).len(), 1);
}

#[test]
fn concurrent_archivers_of_one_segment_store_exactly_one_object() {
    let s = real_segments(PgVersion::V15, 1);
    let d = TestDir::new();
    let repo = d.join("repo");
    dbb(["repo", "init", "--repo"]).arg(&repo).assert_success();
    let seg = s.dir.join(&s.names[0]);
    let handles: Vec<_> = ["--compress=zstd", "--compress=lz4", "--compress=gzip", "--compress=none"]
        .into_iter()
        .flat_map(|c| [c, c])
        .map(|codec| {
            let (seg, repo) = (seg.clone(), repo.clone());
            std::thread::spawn(move || archive_cmd(&seg, None, &repo).arg(codec).output())
        })
        .collect();
    for h in handles {
        let out = h.join().unwrap();
        assert_eq!(out.status, 0, "{out:?}");
    }
    assert_eq!(wal_objects(&repo).len(), 1, "{:?}", wal_objects(&repo));
    let dest = d.join("dest");
    dbb(["wal", "fetch"]).arg(&s.names[0]).arg(&dest).arg("--repo").arg(&repo).assert_success();
    assert_eq!(sha256_file(&dest), sha256_file(&seg));
}

#[test]
fn archive_into_an_unwritable_repository_fails_and_postgres_retries() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    make_archived_segment(&c);
    // Make the repository unwritable for the postgres user.
    Cmd::new("chmod").args(["-R", "a-w"]).arg(&repo).as_root().assert_success();
    c.sql("INSERT INTO filler SELECT 1, 'x'");
    let name = c.switch_wal();
    let mut failed = String::new();
    for _ in 0..100 {
        failed = c.sql("SELECT failed_count::text || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver");
        if failed.starts_with('0') {
            std::thread::sleep(std::time::Duration::from_millis(100));
        } else {
            break;
        }
    }
    assert!(failed.ends_with(&name), "archiving should fail: {failed}");
    let log = c.log_tail(50);
    assert!(log.contains("dbbackup: error: wal archive") && log.contains("Permission denied"), "{log}");
    // Repaired: PostgreSQL's retry succeeds, nothing lost.
    Cmd::new("chmod").args(["-R", "u+w"]).arg(&repo).as_root().assert_success();
    c.wait_archived(&name, std::time::Duration::from_secs(90));
    let dest = d.join("dest");
    dbb(["wal", "fetch"]).arg(&name).arg(&dest).arg("--repo").arg(&repo).assert_success();
}

#[test]
fn archive_with_encrypt_needs_a_key_and_an_encrypted_repository() {
    let s = real_segments(PgVersion::V15, 1);
    let d = TestDir::new();
    let seg = s.dir.join(&s.names[0]);
    let repo = d.join("new");
    let out = archive_cmd(&seg, None, &repo).arg("--encrypt").assert_code(1);
    assert!(out.stderr.contains("--encrypt needs a key"), "{}", out.stderr);
    assert!(!repo.join("dbbackup.json").exists());
    let plain = d.join("plain");
    dbb(["repo", "init", "--repo"]).arg(&plain).assert_success();
    let key = key_file(&d, "k", 1);
    let out = archive_cmd(&seg, None, &plain).arg("--encrypt").arg("--encryption-key-file").arg(&key).assert_code(1);
    assert!(out.stderr.contains("not encrypted"), "{}", out.stderr);
    assert!(wal_objects(&plain).is_empty());
}

/// Every fetch failure other than "not archived" exits above 125 and leaves
/// the destination untouched.
fn fetch_failures(encrypted: bool) {
    let s = real_segments(PgVersion::V15, 2);
    let d = TestDir::new();
    let repo = d.join("repo");
    let key = key_file(&d, "key", 0x33);
    let wrong = key_file(&d, "wrong", 0x44);
    let mut init = dbb(["repo", "init", "--repo"]);
    init.arg(&repo);
    if encrypted {
        init.arg("--encrypt").arg("--encryption-key-file").arg(&key);
    }
    init.assert_success();
    let keyargs: Vec<std::ffi::OsString> =
        if encrypted { vec!["--encryption-key-file".into(), key.clone().into()] } else { vec![] };
    for n in &s.names {
        archive_cmd(&s.dir.join(n), None, &repo).args(&keyargs).assert_success();
    }
    let (n1, n2) = (s.names[0].clone(), s.names[1].clone());
    let dest = d.write("RECOVERYXLOG", "sentinel");
    let fetch = |name: &str, extra: &[std::ffi::OsString]| {
        let mut c = dbb(["wal", "fetch"]);
        c.arg(name).arg(&dest).arg("--repo").arg(&repo).args(extra);
        c.output()
    };
    let untouched = || {
        assert_eq!(std::fs::read_to_string(&dest).unwrap(), "sentinel");
        let strays: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
            .collect();
        assert!(strays.is_empty(), "temporary files left: {strays:?}");
    };

    // Not archived: exit 1, the normal end of recovery; also for history files.
    let out = fetch("000000010000000000000099", &keyargs);
    assert_eq!(out.status, 1, "{out:?}");
    let out = fetch("00000002.history", &keyargs);
    assert_eq!(out.status, 1, "{out:?}");
    untouched();
    // A good fetch works (then restore the sentinel).
    let good = d.join("good");
    dbb(["wal", "fetch"]).arg(&n1).arg(&good).arg("--repo").arg(&repo).args(&keyargs).assert_success();
    assert_eq!(sha256_file(&good), sha256_file(&s.dir.join(&n1)));

    if encrypted {
        let out = fetch(&n1, &[]);
        assert_eq!(out.status, 128, "{out:?}");
        assert!(out.stderr.contains("no key was given"), "{}", out.stderr);
        let out = fetch(&n1, &["--encryption-key-file".into(), wrong.clone().into()]);
        assert_eq!(out.status, 128, "{out:?}");
        assert!(out.stderr.contains("wrong encryption key"), "{}", out.stderr);
        untouched();
    }

    // Invalid name.
    let out = fetch("RECOVERYHISTORY", &keyargs);
    assert!(out.status > 125, "{out:?}");

    let obj1 = object_for(&repo, &n1);
    let obj2 = object_for(&repo, &n2);
    let original1 = std::fs::read(&obj1).unwrap();

    // One corrupted byte in the middle.
    let mut bad = original1.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    std::fs::write(&obj1, &bad).unwrap();
    let out = fetch(&n1, &keyargs);
    assert_eq!(out.status, 128, "{out:?}");
    assert!(out.stderr.starts_with("dbbackup: wal fetch") && out.stderr.contains(&n1), "{}", out.stderr);
    untouched();

    // Truncated object.
    std::fs::write(&obj1, &original1[..original1.len() - 100]).unwrap();
    let out = fetch(&n1, &keyargs);
    assert_eq!(out.status, 128, "{out:?}");
    untouched();
    std::fs::write(&obj1, &original1).unwrap();

    // Object renamed to another segment's name: n2's object now claims to be n1.
    std::fs::remove_file(&obj1).unwrap();
    let renamed = obj1.with_file_name(obj2.file_name().unwrap().to_string_lossy().replacen(&n2, &n1, 1));
    std::fs::copy(&obj2, &renamed).unwrap();
    chown_to_run_user(&renamed);
    let out = fetch(&n1, &keyargs);
    assert_eq!(out.status, 128, "{out:?}");
    if encrypted {
        assert!(out.stderr.contains("failed authentication"), "{}", out.stderr);
    } else {
        assert!(out.stderr.contains("does not belong"), "{}", out.stderr);
    }
    untouched();

    // An unreadable repository is fatal, not "not found".
    let broken = d.join("repo/dbbackup.json");
    std::fs::write(&broken, "{ not json").unwrap();
    let out = fetch(&n2, &keyargs);
    assert_eq!(out.status, 128, "{out:?}");
    untouched();
}

#[test]
fn fetch_failures_are_fatal_and_leave_destination_untouched() {
    fetch_failures(false);
}

#[test]
fn fetch_failures_are_fatal_and_leave_destination_untouched_encrypted() {
    fetch_failures(true);
}
