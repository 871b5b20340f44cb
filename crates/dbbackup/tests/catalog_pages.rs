//! The catalog as `wal search` will read it from a base backup: the relation
//! map files, then the heap pages of pg_class, pg_namespace and pg_database,
//! parsed by the format crate straight from a real data directory and
//! compared with what the server says through SQL.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use common::*;
use dbbackup_format::heap::{
    page_tuples, parse_relmap, pg_class_row, pg_database_row, pg_namespace_row, PgClassRow, PG_CLASS_OID,
    PG_DATABASE_OID, PG_NAMESPACE_OID,
};
use dbbackup_format::relfile::{RelFileLocator, DEFAULT_TABLESPACE};
use dbbackup_format::walrmgr::{decode_xact, XactKind};

const BLCKSZ: usize = 8192;

/// The file number a relation map file gives a mapped catalog.
fn mapped(dir: &Path, rel: u32) -> u32 {
    let bytes = std::fs::read(dir.join("pg_filenode.map")).unwrap();
    let map = parse_relmap(&bytes).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    map.iter().find(|(oid, _)| *oid == rel).unwrap_or_else(|| panic!("{rel} not in the map of {}", dir.display())).1
}

/// Every tuple's user data in a relation's main fork, page by page.
fn tuples_of(file: &Path) -> (usize, Vec<Vec<u8>>) {
    let bytes = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    assert_eq!(bytes.len() % BLCKSZ, 0, "{}", file.display());
    let mut out = Vec::new();
    for (n, page) in bytes.chunks(BLCKSZ).enumerate() {
        let ts = page_tuples(page).unwrap_or_else(|e| panic!("{} page {n}: {e}", file.display()));
        out.extend(ts.iter().map(|t| t.data.to_vec()));
    }
    (bytes.len() / BLCKSZ, out)
}

fn sql_rows(c: &Cluster, q: &str) -> Vec<Vec<String>> {
    c.sql(q).lines().map(|l| l.split('|').map(str::to_string).collect()).collect()
}

/// Parses pg_class, pg_namespace and pg_database from the data directory and
/// checks every live row the server shows is among them.
fn check_catalogs(c: &Cluster, major: u32) -> u32 {
    c.sql("CHECKPOINT");
    let data = c.data_dir();
    let dboid: u32 = c.sql("SELECT oid FROM pg_database WHERE datname = current_database()").parse().unwrap();
    let dbdir = data.join("base").join(dboid.to_string());

    // pg_class: mapped, its file number from base/<db>/pg_filenode.map.
    let class_file = mapped(&dbdir, PG_CLASS_OID);
    let (pages, tuples) = tuples_of(&dbdir.join(class_file.to_string()));
    assert!(pages > 2, "pg_class spans {pages} pages: the test wants several");
    let rows: Vec<PgClassRow> =
        tuples.iter().map(|d| pg_class_row(major, d).unwrap_or_else(|e| panic!("pg_class: {e}"))).collect();
    let mut by_oid: HashMap<u32, Vec<&PgClassRow>> = HashMap::new();
    for r in &rows {
        by_oid.entry(r.oid).or_default().push(r);
    }
    let live = sql_rows(
        c,
        "SELECT oid, relname, relnamespace, relfilenode, relkind, relpersistence, reltoastrelid, reltablespace, relisshared FROM pg_class",
    );
    assert!(live.len() > 300, "{} pg_class rows", live.len());
    for l in &live {
        let want = PgClassRow {
            oid: l[0].parse().unwrap(),
            relname: l[1].clone(),
            relnamespace: l[2].parse().unwrap(),
            relfilenode: l[3].parse().unwrap(),
            relkind: l[4].as_bytes()[0],
            relpersistence: l[5].as_bytes()[0],
            reltoastrelid: l[6].parse().unwrap(),
            reltablespace: l[7].parse().unwrap(),
            relisshared: l[8] == "t",
        };
        let found = by_oid.get(&want.oid).map(|v| v.iter().any(|r| **r == want)).unwrap_or(false);
        assert!(
            found,
            "PostgreSQL {major}: live pg_class row {want:?} not parsed from the file; versions found: {:?}",
            by_oid.get(&want.oid)
        );
    }
    let kinds: BTreeSet<char> = live.iter().map(|l| l[4].chars().next().unwrap()).collect();
    for k in ['r', 'i', 'S', 't', 'v', 'm', 'p', 'I', 'c'] {
        assert!(kinds.contains(&k), "relkind {k} missing from the story: {kinds:?}");
    }

    // pg_namespace: not mapped; its file number is in the pg_class just parsed.
    let ns_rows = &by_oid[&PG_NAMESPACE_OID];
    let ns_file = ns_rows.iter().find(|r| r.relname == "pg_namespace").unwrap().relfilenode;
    let live_ns: String = c.sql("SELECT relfilenode FROM pg_class WHERE oid = 'pg_namespace'::regclass");
    assert_eq!(ns_file.to_string(), live_ns, "pg_namespace's live file number");
    let (_, ns_tuples) = tuples_of(&dbdir.join(ns_file.to_string()));
    let ns: Vec<_> = ns_tuples.iter().map(|d| pg_namespace_row(major, d).unwrap()).collect();
    for l in sql_rows(c, "SELECT oid, nspname FROM pg_namespace") {
        assert!(
            ns.iter().any(|n| n.oid.to_string() == l[0] && n.name == l[1]),
            "PostgreSQL {major}: schema {l:?} not parsed from pg_namespace ({ns:?})"
        );
    }

    // pg_database: shared and mapped, global/pg_filenode.map.
    let global = data.join("global");
    let db_file = mapped(&global, PG_DATABASE_OID);
    let (_, db_tuples) = tuples_of(&global.join(db_file.to_string()));
    let dbs: Vec<_> = db_tuples.iter().map(|d| pg_database_row(major, d).unwrap()).collect();
    for l in sql_rows(c, "SELECT oid, datname FROM pg_database") {
        assert!(
            dbs.iter().any(|d| d.oid.to_string() == l[0] && d.name == l[1]),
            "PostgreSQL {major}: database {l:?} not parsed from pg_database ({dbs:?})"
        );
    }
    class_file
}

fn catalog_pages_story(version: PgVersion) {
    let mut opts = ClusterOptions::new(version);
    // No background vacuum between the CHECKPOINT and reading the files.
    opts.set("autovacuum", "off").set("max_prepared_transactions", 2);
    let c = Cluster::new(opts);
    let long = "a_rather_long_table_name_that_postgresql_cuts_at_sixty_three_bytes_exactly";
    c.sql(&format!(
        "CREATE SCHEMA sales;
         CREATE SCHEMA \"Größe und Maß\";
         CREATE TABLE sales.orders (id int PRIMARY KEY, note text, amount numeric);
         INSERT INTO sales.orders SELECT g, repeat('x', 5000), g FROM generate_series(1, 20) g;
         CREATE TABLE sales.{long} (id bigint);
         CREATE TABLE \"Größe und Maß\".\"Tabelle\" (v text);
         CREATE UNLOGGED TABLE sales.scratch (v int);
         CREATE SEQUENCE sales.ticket;
         CREATE VIEW sales.recent AS SELECT * FROM sales.orders WHERE id > 10;
         CREATE MATERIALIZED VIEW sales.totals AS SELECT sum(amount) FROM sales.orders;
         CREATE TYPE sales.money_pair AS (a numeric, b numeric);
         CREATE TABLE sales.events (at date, what text) PARTITION BY RANGE (at);
         CREATE INDEX ON sales.events (at);
         CREATE TABLE sales.events_2024 PARTITION OF sales.events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
         CREATE TABLE sales.events_2025 PARTITION OF sales.events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
         DO $$ BEGIN FOR i IN 1..60 LOOP EXECUTE format('CREATE TABLE sales.filler_%s (id int PRIMARY KEY, t text)', i); END LOOP; END $$;
         DROP TABLE sales.filler_7;
         ALTER TABLE sales.filler_8 RENAME TO renamed_filler;"
    ));
    c.sql("CREATE DATABASE shop");
    assert_eq!(c.sql("SELECT length(relname) FROM pg_class WHERE relname LIKE 'a_rather_long%'"), "63");

    let before = check_catalogs(&c, version.major());

    // VACUUM FULL gives pg_class (mapped) a new file through the map, and
    // pg_namespace (not mapped) a new relfilenode in pg_class.
    for t in ["pg_class", "pg_namespace", "pg_database"] {
        c.sql(&format!("VACUUM FULL {t}"));
    }
    let after = check_catalogs(&c, version.major());
    assert_ne!(before, after, "VACUUM FULL pg_class keeps file {before}");

    prepared_drop(&c, version.major());
}

/// A prepared transaction that drops one table and creates another: the
/// checkpoint writes its two-phase state file, which is byte for byte the
/// main data of its PREPARE WAL record, so decode_xact must read it.
fn prepared_drop(c: &Cluster, major: u32) {
    let dboid: u32 = c.sql("SELECT oid FROM pg_database WHERE datname = current_database()").parse().unwrap();
    let dropped: u32 =
        c.sql("SELECT relfilenode FROM pg_class WHERE oid = 'sales.filler_9'::regclass").parse().unwrap();
    c.sql("BEGIN; CREATE TABLE sales.born_in_2pc (id int); DROP TABLE sales.filler_9; PREPARE TRANSACTION 'drop filler 9'");
    c.sql("CHECKPOINT");
    let info = sql_rows(
        c,
        "SELECT transaction, ((extract(epoch FROM prepared) - 946684800) * 1000000)::bigint FROM pg_prepared_xacts",
    );
    let dir = c.data_dir().join("pg_twophase");
    let files: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.path()).collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let state = std::fs::read(&files[0]).unwrap();
    let r = decode_xact(major, 0x10, &state).unwrap_or_else(|e| panic!("PostgreSQL {major} state file: {e}"));
    assert_eq!(r.kind, XactKind::Prepare);
    assert_eq!(r.gid.as_deref(), Some("drop filler 9"));
    assert_eq!(r.twophase_xid.map(|x| x.to_string()), Some(info[0][0].clone()));
    assert_eq!(r.time.to_string(), info[0][1], "prepared_at");
    assert_eq!(r.db, Some(dboid));
    let locator = |rel| RelFileLocator { spc: DEFAULT_TABLESPACE, db: dboid, rel };
    assert!(r.dropped.contains(&locator(dropped)), "{:?} lacks filler_9's file {dropped}", r.dropped);
    assert_eq!(r.abort_dropped.len(), 1, "the new table's file, removed if the transaction aborts: {r:?}");
    assert!(!r.dropped.contains(&r.abort_dropped[0]));
    c.sql("ROLLBACK PREPARED 'drop filler 9'");
}

#[test]
fn catalog_pages_pg15() {
    catalog_pages_story(PgVersion::V15);
}

#[test]
fn catalog_pages_pg18() {
    catalog_pages_story(PgVersion::V18);
}
