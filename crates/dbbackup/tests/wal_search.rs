//! `wal search` and `restore pitr --before-accident` (issue 16): a DBA's
//! accidents on a real server — DROP TABLE, TRUNCATE, DROP SCHEMA CASCADE,
//! a dropped partition, a table created and dropped after the backup, a
//! rolled-back DROP, a prepared transaction that drops, DROP DATABASE — are
//! each found with table, xid and commit time, and the printed restore
//! command brings the data back. PostgreSQL 15 and 18, 16 MiB and 1 MiB
//! segments (records crossing segment boundaries).

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use serde_json::Value;

fn psql_db(bindir: &Path, sock: &Path, port: u16, db: &str, q: &str) -> Result<String, String> {
    let out = Cmd::new(bindir.join("psql"))
        .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(sock)
        .arg("-p")
        .arg(port.to_string())
        .args(["-U", "postgres", "-d", db, "-c", q])
        .output();
    if out.status == 0 {
        Ok(out.stdout.trim().to_string())
    } else {
        Err(out.stderr)
    }
}

fn sql_in(c: &Cluster, db: &str, q: &str) -> String {
    psql_db(&c.bindir(), c.socket_dir(), c.port(), db, q).unwrap_or_else(|e| panic!("SQL failed in {db}: {q}\n{e}"))
}

fn restored_sql(r: &Restored, db: &str, q: &str) -> String {
    psql_db(&r.bindir, &r.sock, r.port, db, q)
        .unwrap_or_else(|e| panic!("SQL failed on the restored server in {db}: {q}\n{e}\n{}", r.describe()))
}

/// Runs `q` (which must hold the destructive statement) in its own
/// transaction in `db`; returns the transaction's xid.
fn accident(c: &Cluster, db: &str, q: &str) -> u32 {
    let out = sql_in(c, db, &format!("BEGIN; {q}; SELECT txid_current(); COMMIT"));
    // A pause so commit times differ between events.
    std::thread::sleep(Duration::from_millis(20));
    out.lines().last().unwrap().trim().parse().unwrap_or_else(|e| panic!("xid from {out:?}: {e}"))
}

fn search(repo: &Path, args: &[&str]) -> Value {
    let out = dbb(["wal", "search", "--json", "--repo"]).arg(repo).args(args).assert_success();
    json(&out)
}

/// The event of transaction `xid`.
fn event(v: &Value, xid: u32) -> Value {
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["xid"] == xid)
        .cloned()
        .unwrap_or_else(|| panic!("no event for xid {xid} in {v:#}"))
}

/// `schema.name` of each relation of `e` with `action` and a table-like kind.
fn tables(e: &Value, action: &str) -> Vec<String> {
    let mut t: Vec<String> = e["relations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == action)
        .filter(|r| matches!(r["kind"].as_str(), Some("table" | "partitioned table" | "materialized view")))
        .map(|r| format!("{}.{}", r["schema"].as_str().unwrap_or("?"), r["name"].as_str().unwrap_or("?")))
        .collect();
    t.sort();
    t
}

/// Runs the restore command `wal search` printed for `e` (DIR replaced),
/// started and followed.
fn run_printed(c: &Cluster, e: &Value, dir: &Path) -> Restored {
    let cmd = e["restore_command"].as_str().unwrap_or_else(|| panic!("no restore command in {e:#}"));
    let words: Vec<&str> = cmd.split_whitespace().collect();
    assert_eq!(&words[..3], ["dbbackup", "restore", "pitr"], "{cmd}");
    if e["dropped_databases"].as_array().unwrap().is_empty() {
        assert!(cmd.contains(&format!("--target-xid {} --exclusive", e["xid"])), "{cmd}");
    } else {
        // DROP DATABASE removes the files before its commit.
        assert!(cmd.contains("--target-lsn ") && cmd.contains(" --exclusive"), "{cmd}");
    }
    let port = free_port();
    let mut run = dbb(Vec::<String>::new());
    for w in &words[1..] {
        run.arg(if *w == "DIR" { dir.to_str().unwrap() } else { w });
    }
    run.args(["--json", "--auto-start", "--monitor", "--port", &port.to_string()]);
    let out = run.timeout(Duration::from_secs(300)).output();
    Restored { out, dir: dir.to_path_buf(), sock: c.socket_dir().to_path_buf(), port, bindir: c.bindir() }
}

/// Is `t` (as `wal search --json` prints it) between the server's `a` and `b`?
fn between(c: &Cluster, t: &str, a: &str, b: &str) -> bool {
    c.sql(&format!("SELECT '{t}'::timestamptz BETWEEN '{a}'::timestamptz AND '{b}'::timestamptz")) == "t"
}

fn story(version: PgVersion, segsize_mb: Option<u32>, restore_all: bool) {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let mut opts = ClusterOptions::new(version);
    opts.wal_segsize_mb = segsize_mb;
    opts.extra_conf =
        vec!["archive_mode = on".into(), archive_command_line(&repo, ""), "max_prepared_transactions = 5".into()];
    let c = Cluster::new(opts);

    c.sql("CREATE DATABASE shop");
    c.sql("CREATE DATABASE scratch");
    sql_in(&c, "scratch", "CREATE TABLE notes(i int); INSERT INTO notes SELECT generate_series(1, 77)");
    sql_in(
        &c,
        "shop",
        "CREATE TABLE orders(id int PRIMARY KEY, note text); \
         INSERT INTO orders SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 1000) g; \
         CREATE TABLE items(i int); INSERT INTO items SELECT generate_series(1, 500); \
         CREATE SCHEMA staging; CREATE TABLE staging.a(i int); CREATE TABLE staging.b(i serial, t text); \
         INSERT INTO staging.a SELECT generate_series(1, 10); INSERT INTO staging.b(t) VALUES ('x'), ('y'); \
         CREATE TABLE m(d date, v int) PARTITION BY RANGE (d); \
         CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
         CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
         INSERT INTO m SELECT '2024-03-01'::date + g, g FROM generate_series(1, 200) g; \
         INSERT INTO m SELECT '2025-03-01'::date + g, g FROM generate_series(1, 100) g; \
         CREATE TABLE keepme(i int); INSERT INTO keepme SELECT generate_series(1, 5); \
         CREATE TABLE prep(i int); INSERT INTO prep SELECT generate_series(1, 9)",
    );
    let id = backup(&c, &repo, &[]);

    // After the backup: a table the backup's catalog does not know, and
    // enough WAL (big rows: full-page images, records across pages) that
    // 1 MiB segments are crossed.
    sql_in(
        &c,
        "shop",
        "CREATE TABLE late(i int, t text); INSERT INTO late SELECT g, repeat('z', 3000) FROM generate_series(1, 600) g",
    );
    sql_in(&c, "shop", "UPDATE orders SET note = note || 'u' WHERE id % 3 = 0");
    let t0 = c.sql("SELECT clock_timestamp()");
    let x_orders = accident(&c, "shop", "DROP TABLE orders");
    let x_items = accident(&c, "shop", "TRUNCATE items");
    let x_staging = accident(&c, "shop", "DROP SCHEMA staging CASCADE");
    let x_part = accident(&c, "shop", "DROP TABLE m_2024");
    let x_late = accident(&c, "shop", "DROP TABLE late");
    sql_in(&c, "shop", "BEGIN; DROP TABLE keepme; ROLLBACK");
    sql_in(&c, "shop", "BEGIN; DROP TABLE prep; PREPARE TRANSACTION 'drop-prep'");
    let x_prep: u32 = c.sql("SELECT transaction FROM pg_prepared_xacts WHERE gid = 'drop-prep'").parse().unwrap();
    sql_in(&c, "shop", "COMMIT PREPARED 'drop-prep'");
    let x_db: u32 = c.sql("SELECT txid_current()").parse().unwrap();
    c.sql("DROP DATABASE scratch");
    let t1 = c.sql("SELECT clock_timestamp()");
    finish_wal(&c);

    let all = search(&repo, &[]);
    assert_eq!(all["searched"]["backup"], id.as_str(), "{all:#}");
    let xids: Vec<u64> = all["events"].as_array().unwrap().iter().map(|e| e["xid"].as_u64().unwrap()).collect();
    // DROP DATABASE ran outside the BEGIN above; its xid is the next one.
    let db_event =
        all["events"].as_array().unwrap().iter().find(|e| !e["dropped_databases"].as_array().unwrap().is_empty());
    let db_event = db_event.unwrap_or_else(|| panic!("no DROP DATABASE event: {all:#}")).clone();
    assert!(db_event["xid"].as_u64().unwrap() > u64::from(x_db), "{db_event:#}");
    assert_eq!(db_event["dropped_databases"][0]["name"], "scratch", "{db_event:#}");
    let expected = [x_orders, x_items, x_staging, x_part, x_late, x_prep];
    let found: Vec<u64> = xids.iter().copied().filter(|x| *x != db_event["xid"].as_u64().unwrap()).collect();
    assert_eq!(
        found,
        expected.iter().map(|x| u64::from(*x)).collect::<Vec<_>>(),
        "events oldest first, rolled-back DROP not among them: {all:#}"
    );

    let e = event(&all, x_orders);
    assert_eq!(tables(&e, "dropped"), ["public.orders"], "{e:#}");
    assert_eq!(e["database"], "shop");
    assert!(between(&c, e["time"].as_str().unwrap(), &t0, &t1), "{e:#} not between {t0} and {t1}");
    assert!(
        e["relations"].as_array().unwrap().iter().any(|r| r["kind"] == "index" && r["name"] == "orders_pkey"),
        "{e:#}"
    );
    assert_eq!(tables(&event(&all, x_items), "truncated"), ["public.items"], "{all:#}");
    assert_eq!(tables(&event(&all, x_staging), "dropped"), ["staging.a", "staging.b"], "{all:#}");
    assert_eq!(tables(&event(&all, x_part), "dropped"), ["public.m_2024"], "{all:#}");
    assert_eq!(
        tables(&event(&all, x_late), "dropped"),
        ["public.late"],
        "created after the backup, still named: {all:#}"
    );
    let p = event(&all, x_prep);
    assert_eq!(tables(&p, "dropped"), ["public.prep"], "{p:#}");
    assert_eq!(p["prepared_gid"], "drop-prep", "{p:#}");
    for e in all["events"].as_array().unwrap() {
        assert_eq!(e["timeline"], 1);
        assert_eq!(e["base_backup"], id.as_str());
        assert!(between(&c, e["time"].as_str().unwrap(), &t0, &t1), "{e:#}");
    }

    // Text: what a DBA reads, filtered by table.
    let out = dbb(["wal", "search", "--repo"]).arg(&repo).args(["--table", "ORDERS"]).assert_success();
    assert!(out.stdout.contains("dropped table public.orders"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("xid {x_orders}")), "{}", out.stdout);
    assert!(out.stdout.contains("database shop"), "{}", out.stdout);
    assert!(out.stdout.contains(&format!("--target-xid {x_orders} --exclusive")), "{}", out.stdout);
    assert!(!out.stdout.contains("items"), "only the orders event: {}", out.stdout);
    assert!(out.stderr.contains("searched"), "{}", out.stderr);
    let rolled_back = dbb(["wal", "search", "--repo"]).arg(&repo).args(["--table", "keepme"]).assert_success();
    assert!(
        rolled_back.stdout.contains("no committed transaction in the searched WAL dropped or truncated table keepme"),
        "{}",
        rolled_back.stdout
    );
    let in_db = search(&repo, &["--database", "scratch"]);
    assert_eq!(in_db["events"].as_array().unwrap().len(), 1, "{in_db:#}");
    let later = search(&repo, &["--since", &t1]);
    assert!(later["events"].as_array().unwrap().is_empty(), "{later:#}");

    // The printed command brings the table back.
    let r = run_printed(&c, &event(&all, x_orders), &dir.join("r_orders"));
    r.promoted();
    assert_eq!(
        restored_sql(&r, "shop", "SELECT count(*), count(*) FILTER (WHERE note LIKE '%u') FROM orders"),
        "1000|333"
    );
    assert_eq!(restored_sql(&r, "shop", "SELECT count(*) FROM items"), "500", "before the TRUNCATE too");
    drop(r);

    if restore_all {
        // --before-accident finds it itself.
        let r = restore(&c, &repo, &dir.join("r_items"), &["--before-accident", "items"]);
        r.promoted();
        assert!(r.out.stderr.contains(&format!("xid {x_items}")), "{}", r.describe());
        assert_eq!(restored_sql(&r, "shop", "SELECT count(*) FROM items"), "500");
        assert_eq!(restored_sql(&r, "shop", "SELECT to_regclass('orders')"), "", "after the DROP TABLE orders");
        drop(r);

        let r = run_printed(&c, &event(&all, x_staging), &dir.join("r_staging"));
        r.promoted();
        assert_eq!(
            restored_sql(&r, "shop", "SELECT (SELECT count(*) FROM staging.a) + (SELECT count(*) FROM staging.b)"),
            "12"
        );
        drop(r);

        let r = restore(&c, &repo, &dir.join("r_part"), &["--before-accident", "public.m_2024"]);
        r.promoted();
        assert_eq!(restored_sql(&r, "shop", "SELECT count(*) FROM m"), "300");
        drop(r);

        let r = run_printed(&c, &event(&all, x_late), &dir.join("r_late"));
        r.promoted();
        assert_eq!(restored_sql(&r, "shop", "SELECT count(*) FROM late"), "600");
        drop(r);

        // The prepared transaction stays prepared in the copy, as the
        // output says: roll it back there to see the table.
        let out = dbb(["wal", "search", "--repo"]).arg(&repo).args(["--table", "prep"]).assert_success();
        assert!(out.stdout.contains("ROLLBACK PREPARED 'drop-prep'"), "{}", out.stdout);
        let r = restore(&c, &repo, &dir.join("r_prep"), &["--before-accident", "prep"]);
        r.promoted();
        restored_sql(&r, "shop", "ROLLBACK PREPARED 'drop-prep'");
        assert_eq!(restored_sql(&r, "shop", "SELECT count(*) FROM prep"), "9");
        drop(r);
    }

    let r = run_printed(&c, &db_event, &dir.join("r_db"));
    r.promoted();
    assert_eq!(restored_sql(&r, "scratch", "SELECT count(*) FROM notes"), "77");
    drop(r);
}

#[test]
fn accidents_found_and_undone_pg15_16mb() {
    story(PgVersion::V15, None, true);
}

#[test]
fn accidents_found_and_undone_pg18_1mb() {
    story(PgVersion::V18, Some(1), true);
}

#[test]
fn accidents_found_pg15_1mb_and_pg18_16mb() {
    story(PgVersion::V15, Some(1), false);
    story(PgVersion::V18, None, false);
}

/// `--before-accident` refuses to guess: several matches are listed, none is
/// said; and a missing segment stops the search with the segment named.
#[test]
fn before_accident_refuses_to_guess_and_gaps_are_errors() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let c = archiving_cluster(PgVersion::V15, Some(1), &repo, "");
    c.sql("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 3)");
    backup(&c, &repo, &[]);
    let x1 = accident(&c, "postgres", "DROP TABLE t");
    c.sql("CREATE TABLE t(i int); INSERT INTO t SELECT generate_series(1, 4)");
    let x2 = accident(&c, "postgres", "DROP TABLE t");
    finish_wal(&c);

    let target = dir.join("r");
    let out = dbb(["restore", "pitr", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&target)
        .args(["--before-accident", "t"])
        .assert_code(1);
    assert!(
        out.stderr.contains("2 committed transactions dropped or truncated t; nothing was restored"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&format!("--target-xid {x1} --exclusive")), "{}", out.stderr);
    assert!(out.stderr.contains(&format!("--target-xid {x2} --exclusive")), "{}", out.stderr);
    assert!(!target.exists(), "nothing restored");

    let out = dbb(["restore", "pitr", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&target)
        .args(["--before-accident", "nosuch"])
        .assert_code(1);
    assert!(
        out.stderr.contains("no committed transaction in the searched WAL dropped or truncated table nosuch"),
        "{}",
        out.stderr
    );
    let out = dbb(["restore", "pitr", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(&target)
        .args(["--before-accident", "t", "--target-xid", "900"])
        .assert_code(2);
    assert!(out.stderr.contains("cannot be used with"), "{}", out.stderr);

    // Usage errors: exit 2 before anything is read.
    for (args, msg) in [
        (vec!["wal", "search", "--table", ""], "an empty name matches nothing"),
        (vec!["wal", "search", "--since", "2026-11-02", "--until", "2026-11-01"], "is after --until"),
        (vec!["wal", "search", "--timeline", "current"], "expected latest or a timeline number"),
        (vec!["wal", "search", "--timeline", "0"], "expected latest or a timeline number"),
        (vec!["wal", "search", "--table", "\"Mixed"], "unbalanced double quote"),
        (vec!["wal", "search", "--table", "public."], "has an empty part"),
        (vec!["wal", "search", "--table", "a.b.c"], "more than two parts"),
        (
            vec!["restore", "pitr", "--target-dir", "/nonexistent", "--before-accident", "t", "--inclusive"],
            "cannot be used with",
        ),
    ] {
        let out = dbb(&args).arg("--repo").arg(&repo).assert_code(2);
        assert!(out.stderr.contains(msg), "{args:?}: {}", out.stderr);
    }
    let out = dbb(["wal", "search", "--timeline", "7", "--repo"]).arg(&repo).assert_code(1);
    assert!(
        out.stderr.contains("timeline 7 is not in the archive") && out.stderr.contains("timeline(s) 1"),
        "{}",
        out.stderr
    );

    // WAL the server wrote after the end of the archive: said, when the
    // server is reachable.
    let x3 = accident(&c, "postgres", "CREATE TABLE t(i int); DROP TABLE t");
    let out = dbb(["wal", "search", "--repo"]).arg(&repo).args(c.conn_args()).assert_success();
    assert!(out.stderr.contains("warning: the server has written WAL up to"), "{}", out.stderr);
    assert!(out.stderr.contains("the last transaction in the archive ended at"), "{}", out.stderr);
    assert!(!out.stdout.contains(&format!("xid {x3}")), "not archived yet: {}", out.stdout);

    // The second one, by xid from the listing, restores the second table.
    let r = restore(&c, &repo, &target, &["--target-xid", &x2.to_string(), "--exclusive"]);
    r.promoted();
    assert_eq!(r.sql("SELECT count(*) FROM t"), "4");
    drop(r);

    // A segment missing after the start: the search says which and fails;
    // so it does without the segment holding the backup's start.
    make_archived_segment(&c);
    make_archived_segment(&c);
    let v = search(&repo, &[]);
    let from: String = v["searched"]["from_lsn"].as_str().unwrap().to_string();
    let start_seg = c.sql(&format!("SELECT pg_walfile_name('{from}')"));
    let mut segs: Vec<(String, std::path::PathBuf)> = wal_objects(&repo)
        .into_iter()
        .map(|p| (p.file_name().unwrap().to_string_lossy()[..24].to_string(), p))
        .filter(|(n, p)| {
            n.chars().all(|c| c.is_ascii_hexdigit())
                && !p.to_string_lossy().contains(".history")
                && !p.to_string_lossy().contains(".backup")
        })
        .filter(|(n, _)| *n >= start_seg)
        .collect();
    segs.sort();
    assert!(segs.len() >= 3 && segs[0].0 == start_seg, "{segs:?} ({from})");
    let (name, path) = segs[1].clone();
    std::fs::remove_file(&path).unwrap();
    let out = dbb(["wal", "search", "--repo"]).arg(&repo).assert_code(1);
    assert!(
        out.stderr.contains(&format!("segment {name} (holding"))
            && out.stderr.contains("is missing from the archive: the search cannot go past it"),
        "{} (removed {name})",
        out.stderr
    );
    std::fs::remove_file(&segs[0].1).unwrap();
    let out = dbb(["wal", "search", "--repo"]).arg(&repo).assert_code(1);
    assert!(
        out.stderr.contains(&format!("segment {start_seg} (holding {from}, the start of backup")),
        "{}",
        out.stderr
    );
}

/// An encrypted repository is searched through the same decode path.
#[test]
fn encrypted_repository_is_searched() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let key = key_file(&dir, "key", 0x5a);
    let keyarg = format!("--encryption-key-file {}", key.display());
    dbb(["repo", "init", "--encrypt", "--repo"]).arg(&repo).arg("--encryption-key-file").arg(&key).assert_success();
    let c = archiving_cluster(PgVersion::V15, None, &repo, &keyarg);
    c.sql("CREATE TABLE secret_t(i int); INSERT INTO secret_t SELECT generate_series(1, 3)");
    backup(&c, &repo, &["--encryption-key-file", key.to_str().unwrap()]);
    let x = accident(&c, "postgres", "TRUNCATE secret_t");
    finish_wal(&c);
    let out = dbb(["wal", "search", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("key"), "without the key: {}", out.stderr);
    let out =
        dbb(["wal", "search", "--json", "--repo"]).arg(&repo).arg("--encryption-key-file").arg(&key).assert_success();
    let v = json(&out);
    assert_eq!(tables(&event(&v, x), "truncated"), ["public.secret_t"], "{v:#}");
    let cmd = event(&v, x)["restore_command"].as_str().unwrap().to_string();
    assert!(cmd.contains("--encryption-key-file"), "{cmd}");
}

/// Catalog changes after the backup are followed: a rename, a rewritten
/// `pg_class` (VACUUM FULL), databases created both ways, savepoints; and
/// what is not an accident (a rewrite, a rolled-back savepoint, row
/// deletions) is not reported.
fn catalog_story(version: PgVersion, segsize_mb: Option<u32>) {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let c = archiving_cluster(version, segsize_mb, &repo, "");
    c.sql("CREATE TABLE old_name(i int); INSERT INTO old_name SELECT generate_series(1, 10)");
    c.sql("CREATE TABLE rewritten(i int); INSERT INTO rewritten SELECT generate_series(1, 10)");
    c.sql("CREATE TABLE rows_deleted(i int); INSERT INTO rows_deleted SELECT generate_series(1, 10)");
    c.sql("CREATE TABLE in_savepoint(i int); CREATE TABLE kept_by_rollback(i int)");
    c.sql("CREATE TABLE \"MixedCase\"(i int); CREATE TABLE keyed(i int PRIMARY KEY, t text)");
    backup(&c, &repo, &[]);

    c.sql("ALTER TABLE old_name RENAME TO new_name");
    c.sql("VACUUM FULL pg_class");
    c.sql("CREATE TABLE after_vacuum(i int); INSERT INTO after_vacuum VALUES (1)");
    c.sql("CREATE DATABASE walloged");
    sql_in(&c, "walloged", "CREATE SCHEMA s; CREATE TABLE s.inner_t(i int); INSERT INTO s.inner_t VALUES (1)");
    c.sql("CREATE DATABASE copied STRATEGY file_copy");
    sql_in(&c, "copied", "CREATE TABLE copied_t(i int); INSERT INTO copied_t VALUES (1)");
    c.sql("VACUUM FULL rewritten");
    c.sql("DELETE FROM rows_deleted");
    sql_in(&c, "postgres", "BEGIN; SAVEPOINT a; DROP TABLE kept_by_rollback; ROLLBACK TO a; COMMIT");

    let x_renamed = accident(&c, "postgres", "DROP TABLE new_name");
    let x_after = accident(&c, "postgres", "DROP TABLE after_vacuum");
    let x_inner = accident(&c, "walloged", "DROP TABLE s.inner_t");
    let x_copied = accident(&c, "copied", "TRUNCATE copied_t");
    let x_sp = accident(&c, "postgres", "SAVEPOINT a; DROP TABLE in_savepoint; RELEASE a");
    let x_mixed = accident(&c, "postgres", "DROP TABLE \"MixedCase\"");
    let x_keyed = accident(&c, "postgres", "TRUNCATE keyed");
    finish_wal(&c);

    let v = search(&repo, &[]);
    let xids: Vec<u64> = v["events"].as_array().unwrap().iter().map(|e| e["xid"].as_u64().unwrap()).collect();
    assert_eq!(
        xids,
        [x_renamed, x_after, x_inner, x_copied, x_sp, x_mixed, x_keyed].map(u64::from),
        "only the five accidents (no rewrite, no rolled-back savepoint, no row deletions): {v:#}"
    );
    assert_eq!(tables(&event(&v, x_renamed), "dropped"), ["public.new_name"], "{v:#}");
    assert_eq!(tables(&event(&v, x_after), "dropped"), ["public.after_vacuum"], "{v:#}");
    let inner = event(&v, x_inner);
    assert_eq!(tables(&inner, "dropped"), ["s.inner_t"], "{v:#}");
    assert_eq!(inner["database"], "walloged", "{v:#}");
    let copied = event(&v, x_copied);
    assert_eq!(tables(&copied, "truncated"), ["public.copied_t"], "{v:#}");
    assert_eq!(copied["database"], "copied", "{v:#}");
    assert_eq!(tables(&event(&v, x_sp), "dropped"), ["public.in_savepoint"], "{v:#}");
    let notes = v["notes"].as_array().unwrap();
    assert!(notes.is_empty(), "everything followed: {v:#}");

    // Names as in SQL, and as they were before a rename.
    let found = |args: &[&str]| -> Vec<u64> {
        search(&repo, args)["events"].as_array().unwrap().iter().map(|e| e["xid"].as_u64().unwrap()).collect()
    };
    assert_eq!(found(&["--table", "old_name"]), [u64::from(x_renamed)]);
    assert_eq!(event(&v, x_renamed)["relations"][0]["former_names"][0], "old_name", "{v:#}");
    assert_eq!(found(&["--table", "\"MixedCase\""]), [u64::from(x_mixed)]);
    assert_eq!(found(&["--table", "public.\"MixedCase\""]), [u64::from(x_mixed)]);
    assert_eq!(found(&["--table", "MixedCase"]), [u64::from(x_mixed)], "unquoted: itself too");
    assert!(found(&["--table", "\"mixedcase\""]).is_empty());
    assert!(found(&["--table", "other.\"MixedCase\""]).is_empty());
    let out = dbb(["wal", "search", "--repo"]).arg(&repo).args(["--table", "\"MixedCase\""]).assert_success();
    assert!(out.stdout.contains("dropped table public.\"MixedCase\""), "{}", out.stdout);
    let out = dbb(["wal", "search", "--repo"]).arg(&repo).args(["--table", "old_name"]).assert_success();
    assert!(out.stdout.contains("dropped table public.new_name (formerly old_name)"), "{}", out.stdout);
    // TRUNCATE counts the index and TOAST files it renewed with the table.
    let k = event(&v, x_keyed);
    let kinds: Vec<&str> = k["relations"].as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    assert!(kinds.contains(&"index") && kinds.contains(&"TOAST table"), "{k:#}");
    assert!(k["relations"].as_array().unwrap().iter().all(|r| r["action"] == "truncated"), "{k:#}");
    let out = dbb(["wal", "search", "--repo"]).arg(&repo).args(["--table", "keyed"]).assert_success();
    assert!(out.stdout.contains("truncated table public.keyed\n    with 1 TOAST table, 2 indexes"), "{}", out.stdout);
}

#[test]
fn catalog_changes_are_followed_pg15() {
    catalog_story(PgVersion::V15, Some(1));
}

#[test]
fn catalog_changes_are_followed_pg18() {
    catalog_story(PgVersion::V18, None);
}

/// After a restore that became the new primary (timeline 2), the search
/// follows the latest timeline: the accident undone on timeline 1 is not
/// on its way, the new one is, with `--timeline 2` in its command;
/// `--timeline 1` still finds the first.
#[test]
fn timelines_after_a_restore() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let c = archiving_cluster(PgVersion::V15, Some(1), &repo, "");
    c.sql("CREATE TABLE a(i int); INSERT INTO a SELECT generate_series(1, 3); CREATE TABLE b(i int); INSERT INTO b VALUES (7)");
    backup(&c, &repo, &[]);
    let xa = accident(&c, "postgres", "DROP TABLE a");
    finish_wal(&c);
    c.stop();

    let r = restore(&c, &repo, &dir.join("primary2"), &["--before-accident", "a", "--archive-mode", "preserve"]);
    r.promoted();
    assert_eq!(r.sql("SELECT count(*) FROM a"), "3");
    let out = r.sql("BEGIN; DROP TABLE b; SELECT txid_current(); COMMIT");
    let xb: u32 = out.lines().last().unwrap().parse().unwrap();
    r.finish_wal();

    let v = search(&repo, &[]);
    let xids: Vec<u64> = v["events"].as_array().unwrap().iter().map(|e| e["xid"].as_u64().unwrap()).collect();
    assert_eq!(xids, [u64::from(xb)], "{v:#}");
    let e = event(&v, xb);
    assert_eq!(e["timeline"], 2, "{e:#}");
    assert_eq!(tables(&e, "dropped"), ["public.b"]);
    assert!(e["restore_command"].as_str().unwrap().ends_with("--exclusive --timeline 2"), "{e:#}");
    let v1 = search(&repo, &["--timeline", "1"]);
    let e1 = event(&v1, xa);
    assert_eq!(e1["timeline"], 1);
    assert_eq!(v1["events"].as_array().unwrap().len(), 1, "{v1:#}");
    drop(r);

    let r2 = run_printed(&c, &e, &dir.join("r_b"));
    r2.promoted();
    assert_eq!(r2.sql("SELECT (SELECT count(*) FROM a) || '/' || (SELECT count(*) FROM b)"), "3/1");
}

/// An encrypted repository on S3 (Garage): the search reads the archive
/// through the store, and its printed command (with `--config`) restores.
#[test]
fn encrypted_s3_repository_is_searched_and_restored() {
    let g = Garage::single();
    let d = TestDir::new();
    let key = key_file(&d, "key", 0x29);
    let cfg = private_file(
        &d,
        "dbbackup.toml",
        format!("encryption-key-file = \"{}\"\n{}", key.display(), g.config_toml("pg/search")),
    );
    with_config(&cfg, &["repo", "init", "--encrypt"]).assert_success();
    let c = cluster_on(PgVersion::V18, &cfg);
    c.sql("CREATE TABLE ledger(i int); INSERT INTO ledger SELECT generate_series(1, 42)");
    with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    c.sql("INSERT INTO ledger SELECT generate_series(43, 50)");
    let x = accident(&c, "postgres", "DROP TABLE ledger");
    finish_wal(&c);
    let v = json(&with_config(&cfg, &["wal", "search", "--json", "--table", "ledger"]).assert_success());
    let e = event(&v, x);
    assert_eq!(tables(&e, "dropped"), ["public.ledger"], "{v:#}");
    let cmd = e["restore_command"].as_str().unwrap();
    assert!(cmd.contains("--config") && !cmd.contains("secret"), "{cmd}");
    let r = run_printed(&c, &e, &d.join("r"));
    r.promoted();
    assert_eq!(r.sql("SELECT count(*) FROM ledger"), "50");
}

/// With wal_level = logical, TRUNCATE is logged on its own: one followed by
/// INSERT in the same transaction is still shown (with replica it is a
/// rewrite, documented as not found).
#[test]
fn logical_wal_level_shows_truncate_and_reload() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let mut opts = ClusterOptions::new(PgVersion::V18);
    opts.wal_segsize_mb = Some(1);
    opts.extra_conf = vec!["archive_mode = on".into(), archive_command_line(&repo, ""), "wal_level = logical".into()];
    let c = Cluster::new(opts);
    c.sql("CREATE TABLE staged(i int); INSERT INTO staged SELECT generate_series(1, 100); CREATE TABLE gone(i int)");
    backup(&c, &repo, &[]);
    let x1 = accident(&c, "postgres", "TRUNCATE staged; INSERT INTO staged VALUES (1)");
    let x2 = accident(&c, "postgres", "DROP TABLE gone");
    finish_wal(&c);
    let v = search(&repo, &[]);
    assert_eq!(tables(&event(&v, x1), "truncated"), ["public.staged"], "{v:#}");
    assert_eq!(tables(&event(&v, x2), "dropped"), ["public.gone"], "{v:#}");
    assert_eq!(v["events"].as_array().unwrap().len(), 2, "{v:#}");
}

/// A copy restored with --archive-mode preserve archives timeline 2 while
/// the primary goes on on timeline 1: searching "the latest" would miss the
/// primary's accidents, so without --timeline the search (and
/// --before-accident) is refused, naming both.
#[test]
fn two_live_timelines_need_a_choice() {
    let dir = TestDir::new();
    let repo = dir.join("repo");
    let c = archiving_cluster(PgVersion::V15, Some(1), &repo, "");
    c.sql("CREATE TABLE t1(i int); INSERT INTO t1 VALUES (1)");
    backup(&c, &repo, &[]);
    finish_wal(&c);
    let copy = restore(&c, &repo, &dir.join("copy"), &["--archive-mode", "preserve"]);
    copy.promoted();
    copy.finish_wal();
    let x = accident(&c, "postgres", "DROP TABLE t1");
    // The fork is at the start of a segment (the copy recovered to the end
    // of the archive): the primary's next segment is all after it.
    finish_wal(&c);

    let out = dbb(["wal", "search", "--repo"]).arg(&repo).assert_code(1);
    assert!(out.stderr.contains("two live histories"), "{}", out.stderr);
    assert!(out.stderr.contains("--timeline 1") && out.stderr.contains("--timeline 2"), "{}", out.stderr);
    let out = dbb(["restore", "pitr", "--repo"])
        .arg(&repo)
        .arg("--target-dir")
        .arg(dir.join("r"))
        .args(["--before-accident", "t1"])
        .assert_code(1);
    assert!(out.stderr.contains("two live histories"), "{}", out.stderr);
    let v = search(&repo, &["--timeline", "1"]);
    assert_eq!(tables(&event(&v, x), "dropped"), ["public.t1"], "{v:#}");
    assert!(search(&repo, &["--timeline", "2"])["events"].as_array().unwrap().is_empty());
}
