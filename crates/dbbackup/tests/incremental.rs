//! Incremental and differential backups on real PostgreSQL 15 and 18:
//! full, then pgbench writes, incr, a VACUUM FULL, a TRUNCATE, a new and a
//! dropped table and an index build, incr, diff, incr. Every point restores
//! (PITR past it) to what `pg_dump` printed on the source there, and passes
//! `pg_amcheck`; a chain restores to the very bytes of a full backup taken
//! at the same moment; a damaged block of a parent fails verify and restore
//! of a child naming the object; an interrupted incremental leaves the
//! chain usable; delete and expire keep chains whole.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn pgbench(c: &Cluster, args: &[&str]) {
    c.bin_cmd("pgbench").args(c.conn_args()).args(args).assert_success();
}

fn list(repo: &Path) -> Vec<Value> {
    serde_json::from_str(&dbb(["backup", "list", "--json", "--repo"]).arg(repo).assert_success().stdout).unwrap()
}

fn entry(repo: &Path, id: &str) -> Value {
    list(repo).into_iter().find(|b| b["id"] == id).unwrap_or_else(|| panic!("no backup {id}"))
}

/// `backup base --type T`; returns (ID, stderr).
fn typed(c: &Cluster, repo: &Path, t: &str) -> (String, String) {
    let out = dbb(["backup", "base", "--fast", "--type", t, "--repo"]).arg(repo).args(c.conn_args()).assert_success();
    (out.stdout.lines().last().unwrap().trim().to_string(), out.stderr)
}

/// `pg_dump` of the database, as text.
fn dump(bindir: &Path, sock: &Path, port: u16) -> String {
    Cmd::new(bindir.join("pg_dump"))
        .arg("-h")
        .arg(sock)
        .args(["-p", &port.to_string(), "-U", "postgres", "--no-sync", "postgres"])
        .assert_success()
        .stdout
        .lines()
        // pg_dump's per-run random \restrict key.
        .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The data as of now (the source is idle), then a restore point `name`.
fn mark(c: &Cluster, name: &str) -> String {
    let d = dump(&c.bindir(), c.socket_dir(), c.port());
    c.sql(&format!("SELECT pg_create_restore_point('{name}')"));
    d
}

/// Every regular file under `root`, relative path → BLAKE3.
fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, b3_file(&e.path()));
            }
        }
    }
    out
}

/// `restore pitr --base-backup ID` into `dir` without starting a server.
fn extract(repo: &Path, id: &str, dir: &Path) -> Output {
    dbb(["restore", "pitr", "--base-backup", id, "--target-immediate", "--repo"])
        .arg(repo)
        .arg("--target-dir")
        .arg(dir)
        .output()
}

fn chain_story(version: PgVersion) {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(version, None, &repo, "");
    c.append_conf("autovacuum = off");
    c.restart();
    pgbench(&c, &["-i", "-s", "3", "-q"]);
    c.sql("CREATE TABLE doomed AS SELECT g AS i FROM generate_series(1, 50000) g");
    c.sql("CREATE EXTENSION amcheck");

    // --type incr on an empty repository: full, and it says so.
    let (full, err) = typed(&c, &repo, "incr");
    assert!(err.contains("no complete backup yet: this backup is full"), "{err}");
    let f = entry(&repo, &full);
    assert_eq!((f["type"].as_str(), f["parent"].as_str()), (Some("full"), None), "{f}");
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(repo.join("dbbackup.json")).unwrap()).unwrap();
    assert_eq!(meta["format_version"], 1, "a repository with full backups only stays version 1");
    let dump_full = mark(&c, "after_full");

    pgbench(&c, &["-t", "300", "-c", "2", "-n"]);
    let (incr1, err) = typed(&c, &repo, "incr");
    assert!(err.contains(&format!("incr backup on top of backup {full}")), "{err}");
    let i1 = entry(&repo, &incr1);
    assert_eq!((i1["type"].as_str(), i1["parent"].as_str()), (Some("incr"), Some(full.as_str())), "{i1}");
    assert_eq!(i1["chain"], serde_json::json!([full, incr1]));
    let meta: Value = serde_json::from_str(&std::fs::read_to_string(repo.join("dbbackup.json")).unwrap()).unwrap();
    assert_eq!(meta["format_version"], 2, "the first incremental makes the repository version 2");
    let (fs, is) = (f["stored_bytes"].as_u64().unwrap(), i1["stored_bytes"].as_u64().unwrap());
    assert!(is * 4 < fs, "the incremental stores far less than the full backup: {is} vs {fs}");
    let (fsize, isize) = (f["size_bytes"].as_u64().unwrap(), i1["size_bytes"].as_u64().unwrap());
    assert!(isize >= fsize, "the restore size is the whole cluster's: {isize} vs {fsize}");
    assert_eq!(i1["chain_stored_bytes"].as_u64().unwrap(), fs + is);
    let dump_incr1 = mark(&c, "after_incr1");

    // Rewrites, truncation, new and dropped relations, an index build.
    c.sql("VACUUM FULL pgbench_tellers");
    c.sql("TRUNCATE pgbench_history");
    c.sql("CREATE TABLE fresh AS SELECT g AS i, md5(g::text) AS t FROM generate_series(1, 20000) g");
    c.sql("DROP TABLE doomed");
    c.sql("CREATE INDEX accounts_abalance ON pgbench_accounts (abalance)");
    pgbench(&c, &["-t", "200", "-c", "2", "-n"]);
    let (incr2, _) = typed(&c, &repo, "incr");
    assert_eq!(entry(&repo, &incr2)["parent"], incr1.as_str());
    let dump_incr2 = mark(&c, "after_incr2");

    pgbench(&c, &["-t", "200", "-c", "2", "-n"]);
    let (diff, err) = typed(&c, &repo, "diff");
    assert!(err.contains(&format!("diff backup on top of backup {full}")), "{err}");
    let dj = entry(&repo, &diff);
    assert_eq!((dj["type"].as_str(), dj["parent"].as_str()), (Some("diff"), Some(full.as_str())), "{dj}");
    let dump_diff = mark(&c, "after_diff");
    let lsn_diff = c.sql("SELECT pg_current_wal_lsn()");

    c.sql("UPDATE fresh SET t = 'changed' WHERE i % 100 = 0");
    // No --type once a backup exists: incr, on the newest (the diff).
    let out = dbb(["backup", "base", "--fast", "--repo"]).arg(&repo).args(c.conn_args()).assert_success();
    let incr3 = out.stdout.lines().last().unwrap().trim().to_string();
    let i3 = entry(&repo, &incr3);
    assert_eq!((i3["type"].as_str(), i3["parent"].as_str()), (Some("incr"), Some(diff.as_str())), "{i3}");
    let dump_incr3 = mark(&c, "after_incr3");
    finish_wal(&c);

    // The same moment, held twice: an idle server, a checkpoint, then an
    // incremental and a full backup back to back restore to the same bytes.
    c.sql("CHECKPOINT");
    let (incr4, _) = typed(&c, &repo, "incr");
    let (full2, _) = typed(&c, &repo, "full");
    let (a, b) = (d.join("from_chain"), d.join("from_full"));
    let out = extract(&repo, &incr4, &a);
    assert_eq!(out.status, 0, "{out:?}");
    let out = extract(&repo, &full2, &b);
    assert_eq!(out.status, 0, "{out:?}");
    let (ta, tb) = (tree(&a), tree(&b));
    // What differs between two backups of an idle server: their labels,
    // pg_control (the checkpoint each started with), recovery settings.
    let skip = |p: &str| {
        matches!(p, "backup_label" | "global/pg_control" | "postgresql.auto.conf" | "recovery.signal")
            || p.starts_with("pg_wal/")
    };
    let keys_a: Vec<&String> = ta.keys().filter(|k| !skip(k)).collect();
    let keys_b: Vec<&String> = tb.keys().filter(|k| !skip(k)).collect();
    assert_eq!(keys_a, keys_b, "the same files");
    let differ: Vec<&&String> = keys_a.iter().filter(|k| ta[**k] != tb[**k]).collect();
    assert!(differ.is_empty(), "files differ between the chain's restore and the full backup's: {differ:?}");
    assert!(keys_a.len() > 500);

    // verify follows the chain.
    for id in [&incr1, &incr2, &diff, &incr3, &incr4] {
        let out = dbb(["backup", "verify", id, "--repo"]).arg(&repo).assert_success();
        assert!(out.stdout.contains(": ok"), "{}", out.stdout);
    }
    // ... and checks the block maps a backup stored.
    let m1: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join(format!("backups/{incr1}/manifest.json"))).unwrap())
            .unwrap();
    let f = m1["files"].as_array().unwrap().iter().find(|f| f["map"]["backup"] == incr1.as_str()).unwrap();
    let path = f["path"].as_str().unwrap();
    let obj = repo.join(format!("backups/{incr1}/maps/{path}.zst"));
    let good = std::fs::read(&obj).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x20;
    std::fs::write(&obj, &bad).unwrap();
    let out = dbb(["backup", "verify", &incr1, "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stdout.contains(&format!("BAD  {path} (block map)")), "{}", out.stdout);
    std::fs::write(&obj, &good).unwrap();

    // Every point, with PITR past the backup to the restore point after it.
    for (id, point, want) in [
        (&full, "after_full", &dump_full),
        (&incr1, "after_incr1", &dump_incr1),
        (&incr2, "after_incr2", &dump_incr2),
        (&diff, "after_diff", &dump_diff),
        (&incr3, "after_incr3", &dump_incr3),
    ] {
        let dir = d.join(format!("r_{point}"));
        let r = restore(&c, &repo, &dir, &["--base-backup", id, "--target-name", point]);
        r.promoted();
        let got = dump(&r.bindir, &r.sock, r.port);
        if got != *want {
            let diff: Vec<(&str, &str)> = got.lines().zip(want.lines()).filter(|(a, b)| a != b).take(5).collect();
            panic!(
                "backup {id} restored to {point} differs from the source's pg_dump there ({} vs {} lines): {diff:?}",
                got.lines().count(),
                want.lines().count()
            );
        }
        let check = Cmd::new(r.bindir.join("pg_amcheck"))
            .arg("-h")
            .arg(&r.sock)
            .args(["-p", &r.port.to_string(), "-U", "postgres", "--all", "--heapallindexed"])
            .output();
        assert_eq!(check.status, 0, "pg_amcheck on the restore of {id}: {check:?}");
        r.stop();
        let _ = std::fs::remove_dir_all(&dir);
    }

    // `restore pitr` without --base-backup picks the newest chain that reaches the target.
    let dir = d.join("r_pick");
    let r = restore(&c, &repo, &dir, &["--target-lsn", &lsn_diff]);
    let v = r.promoted();
    assert!(v["plan"].to_string().contains(&diff), "the diff is the newest backup before the point: {v}");
    drop(r);
    let _ = std::fs::remove_dir_all(&dir);

    // One damaged block in the full backup's copy of a relation the chain
    // holds as a delta: verify and restore of the child name the object.
    let manifest = |id: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(repo.join(format!("backups/{id}/manifest.json"))).unwrap())
            .unwrap()
    };
    let m3 = manifest(&incr3);
    let rel = m3["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["delta"].is_object() && f["size"].as_u64().unwrap() > 1 << 20)
        .map(|f| f["path"].as_str().unwrap().to_string())
        .expect("incr3 holds a large file as a delta");
    let fm = manifest(&full);
    let whole = fm["files"].as_array().unwrap().iter().find(|f| f["path"] == rel.as_str()).unwrap();
    let obj = repo.join(format!("backups/{full}/{}", whole["object"].as_str().unwrap()));
    let mut bytes = std::fs::read(&obj).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x55;
    std::fs::write(&obj, &bytes).unwrap();
    let named = format!("backups/{full}/{}", whole["object"].as_str().unwrap());
    let out = dbb(["backup", "verify", &incr3, "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stdout.contains(&format!("BAD  {rel}")) && out.stdout.contains(&named), "{}", out.stdout);
    let out = extract(&repo, &incr3, &d.join("r_bad"));
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains(&named), "{}", out.stderr);
    assert!(!d.join("r_bad").exists(), "a failed restore removes what it wrote");
    std::fs::write(&obj, {
        bytes[mid] ^= 0x55;
        &bytes
    })
    .unwrap();
}

#[test]
fn pg15_chains_restore_every_point_and_the_bytes_of_a_full_backup() {
    chain_story(PgVersion::V15);
}

#[test]
fn pg18_chains_restore_every_point_and_the_bytes_of_a_full_backup() {
    chain_story(PgVersion::V18);
}

/// An incremental killed while it waits for its WAL: listed as
/// interrupted, never a parent; the next incremental builds on the last
/// complete backup and restores.
#[test]
fn an_interrupted_incremental_leaves_the_chain_usable() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    pgbench(&c, &["-i", "-s", "1", "-q"]);
    let (full, _) = typed(&c, &repo, "full");
    pgbench(&c, &["-t", "100", "-n"]);
    // Archiving stalls (the archiver sleeps before archiving), so the
    // backup waits for its WAL after storing its files.
    let stall = "sleep 3599.25";
    c.sql(&format!(
        "ALTER SYSTEM SET archive_command = '{stall} && {} wal archive %p %f --repo {}'",
        bin().display(),
        repo.display()
    ));
    c.sql("SELECT pg_reload_conf()");
    let label = "interrupted-incremental-under-test";
    let mut child = dbb(["backup", "base", "--fast", "--type", "incr", "--label", label, "--repo"])
        .arg(&repo)
        .args(c.conn_args())
        .spawn_logged(&d.join("incr.log"));
    let start = std::time::Instant::now();
    let id = loop {
        let running = list(&repo).into_iter().find(|b| b["id"] != full.as_str() && !b["stop_lsn"].is_null());
        if let Some(b) = running {
            break b["id"].as_str().unwrap().to_string();
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the incremental never stored its files");
        std::thread::sleep(Duration::from_millis(100));
    };
    // The backup itself (the child may be runuser, which would not pass a SIGKILL on).
    Cmd::new("pkill").args(["-KILL", "-f", label]).as_root().output();
    child.wait().unwrap();
    c.sql("ALTER SYSTEM RESET archive_command");
    c.sql("SELECT pg_reload_conf()");
    Cmd::new("pkill").args(["-f", stall]).as_root().output();
    assert_eq!(entry(&repo, &id)["status"], "interrupted");
    c.sql("CREATE TABLE t(i int); INSERT INTO t VALUES (1), (2)");
    let (next, err) = typed(&c, &repo, "incr");
    assert!(err.contains(&format!("on top of backup {full}")), "never on the interrupted one: {err}");
    assert_eq!(entry(&repo, &next)["parent"], full.as_str());
    c.sql("INSERT INTO t VALUES (3)");
    finish_wal(&c);
    let r = restore(&c, &repo, &d.join("r"), &["--base-backup", &next]);
    r.ok();
    assert_eq!(r.rows(), "1,2,3");
    drop(r);
    // expire removes the interrupted one, keeps the chain.
    let out = dbb(["backup", "expire", "--keep", "1", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("removing backup {id} (interrupted)")), "{}", out.stdout);
    let ids: Vec<String> = list(&repo).iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, [full, next]);
}

/// delete refuses a parent while children exist; --with-dependents removes
/// the chain newest first; expire --keep counts full backups.
#[test]
fn delete_and_expire_keep_chains_whole() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V18, None, &repo, "");
    c.sql("CREATE TABLE t AS SELECT g AS i FROM generate_series(1, 100000) g");
    let (f1, _) = typed(&c, &repo, "full");
    c.sql("UPDATE t SET i = i + 1 WHERE i < 100");
    let (i1, _) = typed(&c, &repo, "incr");
    c.sql("UPDATE t SET i = i + 1 WHERE i < 100");
    let (i2, _) = typed(&c, &repo, "incr");
    let (f2, _) = typed(&c, &repo, "full");
    c.sql("UPDATE t SET i = i + 1 WHERE i < 100");
    let (d1, _) = typed(&c, &repo, "diff");
    assert_eq!(entry(&repo, &d1)["parent"], f2.as_str());

    let out = dbb(["backup", "delete", &i1, "--repo"]).arg(&repo).assert_code(1);
    assert!(
        out.stderr.contains(&format!("backups are built on backup {i1}: {i2} (incr on {i1})"))
            && out.stderr.contains("--with-dependents"),
        "{}",
        out.stderr
    );
    let text = dbb(["backup", "list", "--repo"]).arg(&repo).assert_success().stdout;
    let header = text.lines().next().unwrap();
    for col in ["TYPE", "PARENT", "CHAIN"] {
        assert!(header.contains(col), "{text}");
    }
    assert!(text.lines().any(|l| l.starts_with(&i2) && l.contains(" incr ") && l.contains(&i1)), "{text}");

    // --keep 1 counts full backups: f2 and the diff on it stay; the older
    // chain goes, children first.
    let out = dbb(["backup", "expire", "--keep", "1", "--dry-run", "--repo"]).arg(&repo).assert_success();
    let order: Vec<&str> = out.stdout.lines().filter(|l| l.starts_with("would remove backup")).collect();
    assert_eq!(order.len(), 3, "{}", out.stdout);
    assert!(order[0].contains(&i2) && order[1].contains(&i1) && order[2].contains(&f1), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("keeping backups {f2}, {d1}")), "{}", out.stdout);

    let out = dbb(["backup", "delete", &i1, "--with-dependents", "--repo"]).arg(&repo).assert_success();
    assert_eq!(out.stdout, format!("deleted backup {i2} (incr on {i1})\ndeleted backup {i1}\n"));
    let out = dbb(["backup", "delete", &f2, "--with-dependents", "--repo"]).arg(&repo).assert_success();
    assert!(out.stdout.contains(&format!("deleted backup {d1}")), "{}", out.stdout);
    let ids: Vec<String> = list(&repo).iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, [f1.as_str()]);
    let out = dbb(["backup", "delete", &f1, "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("only complete backup"), "{}", out.stderr);

    // A typo'd type is a usage error.
    let out = dbb(["backup", "base", "--type", "incremntal", "--repo"]).arg(&repo).args(c.conn_args()).assert_code(2);
    assert!(out.stderr.contains("\"incremntal\" is not a backup type: full, incr or diff"), "{}", out.stderr);
}

/// A chain on S3 (Garage), encrypted: full, incr, diff, incr restore with
/// the newest, verify and pg_amcheck pass; delete of the full backup
/// refuses while the chain exists.
#[test]
fn an_encrypted_chain_on_s3_restores_and_verifies() {
    let g = Garage::single();
    let d = TestDir::new();
    let key = key_file(&d, "key", 0x17);
    let cfg = private_file(
        &d,
        "dbbackup.toml",
        format!("encryption-key-file = \"{}\"\n{}", key.display(), g.config_toml("pg/chain")),
    );
    with_config(&cfg, &["repo", "init", "--encrypt"]).assert_success();
    let c = cluster_on(PgVersion::V18, &cfg);
    pgbench(&c, &["-i", "-s", "2", "-q"]);
    c.sql("CREATE TABLE t(i int)");
    let take = |t: &str| -> String {
        let out = with_config(&cfg, &["backup", "base", "--fast", "--type", t]).args(c.conn_args()).assert_success();
        out.stdout.lines().last().unwrap().trim().to_string()
    };
    let full = take("full");
    c.sql("INSERT INTO t VALUES (1)");
    pgbench(&c, &["-t", "200", "-n"]);
    let incr = take("incr");
    c.sql("INSERT INTO t VALUES (2)");
    pgbench(&c, &["-t", "200", "-n"]);
    let diff = take("diff");
    c.sql("INSERT INTO t VALUES (3)");
    pgbench(&c, &["-t", "200", "-n"]);
    let last = take("incr");
    c.sql("INSERT INTO t VALUES (4)");
    finish_wal(&c);
    let all = json(&with_config(&cfg, &["backup", "list", "--json"]).assert_success());
    let types: Vec<(&str, Option<&str>)> =
        all.as_array().unwrap().iter().map(|b| (b["type"].as_str().unwrap(), b["parent"].as_str())).collect();
    assert_eq!(
        types,
        [("full", None), ("incr", Some(full.as_str())), ("diff", Some(full.as_str())), ("incr", Some(diff.as_str()))]
    );
    assert!(all[1]["stored_bytes"].as_u64().unwrap() * 4 < all[0]["stored_bytes"].as_u64().unwrap(), "{all}");
    with_config(&cfg, &["backup", "verify", &last]).assert_success();
    let r = restore_on(&cfg, &c, &d.join("r"), &["--base-backup", &last]);
    r.ok();
    assert_eq!(r.rows(), "1,2,3,4");
    let check = Cmd::new(r.bindir.join("pg_amcheck"))
        .arg("-h")
        .arg(&r.sock)
        .args(["-p", &r.port.to_string(), "-U", "postgres", "--all", "--heapallindexed", "--install-missing"])
        .output();
    assert_eq!(check.status, 0, "pg_amcheck: {check:?}");
    drop(r);

    let out = with_config(&cfg, &["backup", "delete", &full]).assert_code(1);
    assert!(
        out.stderr.contains(&format!("backups are built on backup {full}: {incr} (incr on {full})")),
        "{}",
        out.stderr
    );
    assert_eq!(json(&with_config(&cfg, &["backup", "list", "--json"]).assert_success()).as_array().unwrap().len(), 4);
}

/// A parent removed by hand (rm -rf): its children are listed as broken,
/// `pitr status` warns, restore and verify refuse naming the missing
/// parent, `restore pitr` without --base-backup falls back to a whole
/// chain, and expire removes the orphans.
#[test]
fn a_parent_removed_by_hand_breaks_its_chain_loudly() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    c.sql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)");
    let (f1, _) = typed(&c, &repo, "full");
    c.sql("INSERT INTO t VALUES (2)");
    let (f2, _) = typed(&c, &repo, "full");
    c.sql("INSERT INTO t VALUES (3)");
    let (i1, _) = typed(&c, &repo, "incr");
    finish_wal(&c);
    Cmd::new("rm").arg("-rf").arg(repo.join(format!("backups/{f2}"))).as_root().assert_success();

    let text = dbb(["backup", "list", "--repo"]).arg(&repo).assert_success().stdout;
    assert!(text.lines().any(|l| l.starts_with(&i1) && l.contains("broken")), "{text}");
    let e = entry(&repo, &i1);
    assert!(e["chain_error"].as_str().unwrap().contains(&format!("needs its parent backup {f2}")), "{e}");
    let status = json(&pitr(&c, &["status", "--json", "--repo", &repo.display().to_string()]).output());
    assert!(findings(&status).contains(&format!("backup {i1} needs its parent backup {f2}")), "{status}");
    let out = dbb(["backup", "verify", &i1, "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stdout.contains(&format!("needs its parent backup {f2}")), "{}", out.stdout);
    let out = extract(&repo, &i1, &d.join("r_bad"));
    assert_eq!(out.status, 1, "{out:?}");
    assert!(out.stderr.contains(&format!("needs its parent backup {f2}")), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("backup {f1} can be restored (use --base-backup {f1})")), "{}", out.stderr);
    // Refused before anything is written: --force does not empty the target first.
    let kept = d.mkdir("r_force");
    chown_to_run_user(&kept);
    std::fs::write(kept.join("keep.txt"), "mine").unwrap();
    let out = dbb(["restore", "pitr", "--base-backup", &i1, "--force", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&kept)
        .assert_code(1);
    assert!(out.stderr.contains(&format!("needs its parent backup {f2}")), "{}", out.stderr);
    assert_eq!(std::fs::read_to_string(kept.join("keep.txt")).unwrap(), "mine");
    // `latest` is the newest backup that can be restored.
    let show = json(&dbb(["backup", "show", "latest", "--json", "--repo"]).arg(&repo).assert_success());
    assert_eq!(show["id"], f1.as_str());
    // A new incremental builds on a whole chain, saying why not on the newest.
    c.sql("INSERT INTO t VALUES (4)");
    let (i2, err) = typed(&c, &repo, "incr");
    assert!(err.contains(&format!("passing over backup {i1} as a parent")), "{err}");
    assert_eq!(entry(&repo, &i2)["parent"], f1.as_str());

    // Without --base-backup: the newest whole chain and the WAL since.
    finish_wal(&c);
    let r = restore(&c, &repo, &d.join("r"), &[]);
    r.ok();
    assert_eq!(r.rows(), "1,2,3,4");
    drop(r);
    // The broken backup does not count as one that can still be restored.
    let out = dbb(["backup", "delete", &f1, "--with-dependents", "--repo"]).arg(&repo).assert_code(1);
    assert!(
        out.stderr.contains("only complete backups that can be restored") && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    let out = dbb(["backup", "expire", "--keep", "1", "--repo"]).arg(&repo).assert_success();
    assert!(
        out.stdout
            .contains(&format!("removing backup {i1} (its chain is broken: backup {i1} needs its parent backup {f2}")),
        "{}",
        out.stdout
    );
    let ids: Vec<String> = list(&repo).iter().map(|b| b["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, [f1, i2]);
}

/// A full backup taken by an older dbbackup (no block maps, no type): the
/// first incremental on it compares files whole (unchanged ones are not
/// stored again, changed ones are stored whole) and writes the maps the
/// next one uses; both restore.
#[test]
fn an_incremental_on_a_full_backup_of_an_older_dbbackup() {
    let d = TestDir::new();
    let repo = d.join("repo");
    let c = archiving_cluster(PgVersion::V15, None, &repo, "");
    pgbench(&c, &["-i", "-s", "2", "-q"]);
    c.sql("CREATE TABLE t(i int); INSERT INTO t VALUES (1)");
    let (full, _) = typed(&c, &repo, "full");
    // What a version 1 manifest looks like: no type, block size or maps.
    let path = repo.join(format!("backups/{full}/manifest.json"));
    let mut m: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let obj = m.as_object_mut().unwrap();
    obj.remove("type");
    obj.remove("block_size");
    for f in obj["files"].as_array_mut().unwrap() {
        f.as_object_mut().unwrap().remove("map");
    }
    std::fs::write(&path, serde_json::to_string(&m).unwrap()).unwrap();
    Cmd::new("rm").arg("-rf").arg(repo.join(format!("backups/{full}/maps"))).as_root().assert_success();

    c.sql("INSERT INTO t VALUES (2)");
    pgbench(&c, &["-t", "100", "-n"]);
    let (i1, _) = typed(&c, &repo, "incr");
    let m1: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join(format!("backups/{i1}/manifest.json"))).unwrap())
            .unwrap();
    let files = m1["files"].as_array().unwrap();
    let large_unchanged = files
        .iter()
        .filter(|f| f["unchanged"] == true && f["size"].as_u64().unwrap() >= 128 << 10)
        .inspect(|f| assert_eq!(f["map"]["backup"], i1.as_str(), "the first incremental writes the map: {f}"))
        .count();
    assert!(large_unchanged > 0, "large files that did not change are not stored again");
    assert!(files.iter().all(|f| f["delta"].is_null()), "no maps to compare blocks with: whole or unchanged");
    c.sql("INSERT INTO t VALUES (3)");
    pgbench(&c, &["-t", "100", "-n"]);
    let (i2, _) = typed(&c, &repo, "incr");
    let m2: Value =
        serde_json::from_str(&std::fs::read_to_string(repo.join(format!("backups/{i2}/manifest.json"))).unwrap())
            .unwrap();
    assert!(m2["files"].as_array().unwrap().iter().any(|f| f["delta"].is_object()), "the next one stores blocks");
    c.sql("INSERT INTO t VALUES (4)");
    finish_wal(&c);
    for (id, want) in [(&i1, "1,2,3,4"), (&i2, "1,2,3,4")] {
        let dir = d.join(format!("r_{id}"));
        let r = restore(&c, &repo, &dir, &["--base-backup", id]);
        r.ok();
        assert_eq!(r.rows(), want);
        assert_eq!(
            r.sql("SELECT sum(abalance) FROM pgbench_accounts"),
            c.sql("SELECT sum(abalance) FROM pgbench_accounts")
        );
        drop(r);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
