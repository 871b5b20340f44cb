//! The WAL record reader (`dbbackup_format::walread`) against `pg_waldump` on
//! real WAL: PostgreSQL 15 and 18, 1 MiB and 16 MiB segments, a workload
//! with DDL, many small records, full-page images (compressed with every
//! method the server has), a 3 MB record that crosses pages and segments,
//! and segment switches. Every record pg_waldump prints must be read the
//! same (LSN, prev, resource manager, length, xid, block references), and
//! every full-page image must restore to a sane page.

mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use common::*;
use dbbackup_format::walread::{Record, WalReader};
use dbbackup_format::{Lsn, SegmentSize};

/// What pg_waldump and the reader both say of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    prev: Lsn,
    rmgr: String,
    total_len: u32,
    xid: u32,
    /// (rel as spc/db/rel, fork name, block, has image)
    blocks: Vec<(String, String, u32, bool)>,
}

fn parse_lsn(s: &str) -> Lsn {
    s.trim_end_matches(',').parse().unwrap_or_else(|e| panic!("{e}: {s:?}"))
}

/// Parses pg_waldump's record lines (`rmgr: Heap len (rec/tot): 54/ 254, tx: 735, lsn: 0/01000028, prev: ..., desc: ..., blkref #0: rel 1663/5/16384 blk 0 FPW`).
fn parse_waldump(out: &str) -> BTreeMap<Lsn, Seen> {
    let mut recs = BTreeMap::new();
    for line in out.lines().filter(|l| l.starts_with("rmgr: ")) {
        // "name: value" or "name value" (pg_waldump 15 prints "prev 0/..").
        let field = |name: &str| -> &str {
            let at = line.find(&format!("{name} ")).or_else(|| line.find(&format!("{name}: ")));
            let at = at.unwrap_or_else(|| panic!("no {name} in {line}")) + name.len();
            line[at..].trim_start_matches(':').split_whitespace().next().unwrap()
        };
        let rmgr = field("rmgr").to_string();
        let tot = line.split("len (rec/tot):").nth(1).unwrap().split(',').next().unwrap();
        let total_len = tot.split('/').nth(1).unwrap().trim().parse().unwrap();
        let xid = field("tx").trim_end_matches(',').parse().unwrap();
        let lsn = parse_lsn(field("lsn"));
        let prev = parse_lsn(field("prev"));
        let mut blocks = Vec::new();
        for part in line.split("blkref #").skip(1) {
            // "0: rel 1663/5/16384 fork fsm blk 2 FPW, ..."
            let words: Vec<&str> = part.split_whitespace().collect();
            assert_eq!(words[1], "rel", "{line}");
            let rel = words[2].trim_end_matches(',').to_string();
            let mut i = 3;
            let mut fork = "main".to_string();
            if words[i] == "fork" {
                fork = words[i + 1].to_string();
                i += 2;
            }
            assert_eq!(words[i], "blk", "{line}");
            let block = words[i + 1].trim_end_matches(',').parse().unwrap();
            let fpw = words.get(i + 2).is_some_and(|w| w.starts_with("FPW"));
            blocks.push((rel, fork, block, fpw));
        }
        recs.insert(lsn, Seen { prev, rmgr, total_len, xid, blocks });
    }
    recs
}

const FORKS: [&str; 4] = ["main", "fsm", "vm", "init"];

/// Runs a workload that makes varied WAL, then returns the finished
/// segments' names, in order.
fn make_wal(c: &Cluster) -> Vec<String> {
    c.sql(
        "CREATE TABLE acc (id int PRIMARY KEY, bal int, note text);
         INSERT INTO acc SELECT g, 0, repeat('n', g % 50) FROM generate_series(1, 20000) g;
         CREATE TABLE big (id int, b bytea);
         ALTER TABLE big ALTER b SET STORAGE EXTERNAL;
         INSERT INTO big SELECT 1, decode(repeat('ab', 1500000), 'hex');",
    );
    // One 3 MB record: crosses many pages and (with 1 MiB segments) segments.
    c.sql("SELECT pg_logical_emit_message(false, 'dbbackup', repeat('x', 3000000))");
    let mut methods = vec!["off", "pglz"];
    for m in ["lz4", "zstd"] {
        if c.sql_ok(&format!("ALTER SYSTEM SET wal_compression = '{m}'")).is_ok() {
            methods.push(m);
        }
    }
    for m in &methods {
        c.sql(&format!("ALTER SYSTEM SET wal_compression = '{m}'"));
        c.sql("SELECT pg_reload_conf()");
        std::thread::sleep(std::time::Duration::from_millis(300));
        // Full-page images come with the first change of each page after a checkpoint.
        c.sql("CHECKPOINT");
        c.sql("UPDATE acc SET bal = bal + 1 WHERE id % 7 = 0");
        c.sql("DELETE FROM acc WHERE id % 97 = 0");
        c.sql("VACUUM acc");
    }
    c.sql(
        "BEGIN; CREATE TABLE gone (i int); INSERT INTO gone VALUES (1); SAVEPOINT s; INSERT INTO gone VALUES (2); COMMIT;
         TRUNCATE acc; DROP TABLE gone; DROP TABLE big;",
    );
    c.switch_wal();
    c.sql("CREATE TABLE after_switch (i int); INSERT INTO after_switch VALUES (1)");
    c.switch_wal();
    let current = c.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let mut names: Vec<String> = std::fs::read_dir(c.data_dir().join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.bytes().all(|b| b.is_ascii_hexdigit()) && *n < current)
        .collect();
    names.sort();
    names
}

fn cross_check(version: PgVersion, seg_mb: u32) {
    let t0 = Instant::now();
    let mut opts = ClusterOptions::new(version);
    opts.wal_segsize_mb = Some(seg_mb);
    opts.set("wal_keep_size", "'2GB'").set("wal_level", "logical");
    let c = Cluster::new(opts);
    let names = make_wal(&c);
    assert!(names.len() >= 2, "{names:?}");
    let seg = SegmentSize::new(seg_mb << 20).unwrap();
    let wal_dir = c.data_dir().join("pg_wal");

    let dump = c.bin_cmd("pg_waldump").arg("--path").arg(&wal_dir).arg(&names[0]).arg(names.last().unwrap()).output();
    let theirs = parse_waldump(&dump.stdout);
    assert!(theirs.len() > 1000, "pg_waldump printed little: {}", dump.stderr);

    // Our reader, fed in 64 KiB chunks across all segments.
    let first = dbbackup_format::WalFileName::parse(&names[0]).unwrap().start_lsn(seg).unwrap();
    let mut reader = WalReader::new(seg, first);
    let mut ours = BTreeMap::new();
    let (mut images, mut compressed, mut spanning) = (0usize, BTreeMap::<String, usize>::new(), 0usize);
    for name in &names {
        let bytes = std::fs::read(wal_dir.join(name)).unwrap();
        assert_eq!(bytes.len() as u32, seg.bytes());
        for chunk in bytes.chunks(64 << 10) {
            reader
                .feed(chunk, &mut |r: &Record<'_>| -> Result<(), String> {
                    let mut blocks = Vec::new();
                    for b in r.blocks {
                        blocks.push((
                            b.locator.to_string(),
                            FORKS[usize::from(b.fork)].to_string(),
                            b.block,
                            b.image.is_some(),
                        ));
                        if let Some(img) = b.image {
                            let page = img.page().map_err(|e| format!("{} block {}: {e}", r.lsn, b.id))?;
                            check_page(&page, r.lsn).map_err(|e| format!("{} block {}: {e}", r.lsn, b.id))?;
                            images += 1;
                            *compressed.entry(format!("{:?}", img.compression)).or_default() += 1;
                        }
                    }
                    if seg.segment_of(r.lsn) != seg.segment_of(Lsn(r.end.0 - 1)) {
                        spanning += 1;
                    }
                    let rmgr = dbbackup_format::walrmgr::rmgr_name(r.rmid).to_string();
                    ours.insert(r.lsn, Seen { prev: r.prev, rmgr, total_len: r.total_len, xid: r.xid, blocks });
                    Ok(())
                })
                .unwrap_or_else(|e| panic!("PostgreSQL {version}, {seg_mb} MiB segments: {e:?}"));
        }
    }
    // The last record may run past the last finished segment: pg_waldump
    // cannot print it either.
    let mut mismatches = Vec::new();
    for (lsn, t) in &theirs {
        match ours.get(lsn) {
            Some(o) if o == t => {}
            other => mismatches.push(format!("{lsn}: pg_waldump {t:?}, reader {other:?}")),
        }
    }
    let extra: Vec<_> = ours.keys().filter(|l| !theirs.contains_key(l)).collect();
    assert!(
        mismatches.is_empty() && extra.is_empty(),
        "PostgreSQL {version}, {seg_mb} MiB: {} mismatches, first: {:?}; records pg_waldump did not print: {:?}",
        mismatches.len(),
        mismatches.iter().take(5).collect::<Vec<_>>(),
        extra.iter().take(5).collect::<Vec<_>>()
    );
    assert!(images > 100, "few full-page images: {images}");
    assert!(compressed.contains_key("Pglz"), "no pglz images: {compressed:?}");
    if seg_mb == 1 {
        assert!(spanning > 0, "no record crossed a segment boundary");
    }
    eprintln!(
        "PostgreSQL {version}, {seg_mb} MiB segments: {} records, {} segments, {images} images {compressed:?}, {spanning} crossing segments, {:?}",
        ours.len(),
        names.len(),
        t0.elapsed()
    );
}

/// A restored page: LSN not after the record's, header fields in range.
fn check_page(p: &[u8], lsn: Lsn) -> Result<(), String> {
    let u16_at = |o: usize| u16::from_le_bytes([p[o], p[o + 1]]);
    let pd_lsn = (u64::from(u32::from_le_bytes(p[0..4].try_into().unwrap())) << 32)
        | u64::from(u32::from_le_bytes(p[4..8].try_into().unwrap()));
    if pd_lsn > lsn.0 {
        return Err(format!("page LSN {} is after the record", Lsn(pd_lsn)));
    }
    if p.iter().all(|&b| b == 0) {
        return Ok(());
    }
    let (lower, upper, special, size_version) = (u16_at(12), u16_at(14), u16_at(16), u16_at(18));
    if size_version != 8192 | 4 || !(24 <= lower && lower <= upper && upper <= special && special <= 8192) {
        return Err(format!(
            "insane page header: lower {lower} upper {upper} special {special} size/version {size_version:#x}"
        ));
    }
    Ok(())
}

#[test]
fn reader_matches_pg_waldump_pg15_1mb() {
    cross_check(PgVersion::V15, 1);
}

#[test]
fn reader_matches_pg_waldump_pg15_16mb() {
    cross_check(PgVersion::V15, 16);
}

#[test]
fn reader_matches_pg_waldump_pg18_1mb() {
    cross_check(PgVersion::V18, 1);
}

#[test]
fn reader_matches_pg_waldump_pg18_16mb() {
    cross_check(PgVersion::V18, 16);
}
