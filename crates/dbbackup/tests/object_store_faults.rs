//! Faults between dbbackup and an object store, on a real Garage behind a
//! fault-injecting proxy (`dbbackup_testkit::fault_proxy`) and real
//! PostgreSQL servers: throttling storms shorter and longer than the retry
//! budget, a store slower than the request timeout, responses cut half
//! way, listings that lag behind writes.
//!
//! The contract under test (docs/wal.md, docs/object-storage.md): `wal
//! archive` exits 0 only when the segment is stored; `wal fetch` exits 1
//! only for a definitive "not in the archive" and 128 for every fault, so
//! recovery stops instead of ending early; a failed restore leaves no
//! half-restored directory.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use dbbackup_testkit::stores::Garage;
use dbbackup_testkit::{FaultProxy, Injected, Match};

/// A Garage behind a fault proxy, and two config files for one repository:
/// `cfg` goes through the proxy (what the cluster and the commands under
/// test use), `direct` straight to Garage (to look at what is really
/// stored, whatever the proxy does).
struct Store {
    proxy: FaultProxy,
    d: TestDir,
    cfg: PathBuf,
    direct: PathBuf,
    _garage: Garage,
}

/// `s3_extra`: lines appended to the `[s3]` table of both configs.
fn store(prefix: &str, s3_extra: &str) -> Store {
    let g = Garage::single();
    let proxy = FaultProxy::start(&g.endpoint());
    let d = TestDir::new();
    let direct = format!("{}{s3_extra}", g.config_toml(prefix));
    let cfg = private_file(&d, "proxied.toml", direct.replace(&g.endpoint(), &proxy.endpoint()));
    let direct = private_file(&d, "direct.toml", direct);
    Store { proxy, d, cfg, direct, _garage: g }
}

/// `pg_stat_archiver`: failed_count, last_failed_wal, last_archived_wal.
fn archiver(c: &Cluster) -> (u64, String, String) {
    let row = c.sql(
        "SELECT failed_count || '|' || coalesce(last_failed_wal, '') || '|' || coalesce(last_archived_wal, '') FROM pg_stat_archiver",
    );
    let f: Vec<&str> = row.split('|').collect();
    (f[0].parse().unwrap(), f[1].to_string(), f[2].to_string())
}

/// Polls until `cond` holds, or panics with `what` and the server log.
fn wait_until(c: &Cluster, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}\n{:?}\n{}", archiver(c), c.log_tail(30));
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The stored objects for WAL file `name`, as `wal list --json` shows them.
fn listed(cfg: &Path, name: &str) -> Vec<serde_json::Value> {
    let all = json(&with_config(cfg, &["wal", "list", "--json"]).assert_success());
    all.as_array().unwrap().iter().filter(|o| o["name"] == name).cloned().collect()
}

/// Throttling while PostgreSQL archives. A storm of six 503s (object_store
/// retries a request six times) is ridden out inside one `wal archive`:
/// PostgreSQL never sees a failure. A storm outlasting the retries makes
/// `wal archive` fail, so PostgreSQL keeps the segment and retries it until
/// the store answers again; nothing is lost.
fn slow_down_storms_while_archiving(version: PgVersion) {
    let s = store("storm", "");
    let c = cluster_on(version, &s.cfg);
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);

    // Within the retry budget: one request answered 503 six times.
    s.proxy.fail_next(6, Match::any());
    c.sql("INSERT INTO t VALUES (1)");
    let seg = c.switch_wal();
    c.wait_archived(&seg, Duration::from_secs(120));
    assert_eq!(s.proxy.injected(Injected::SlowDown), 6, "{}", s.proxy.describe(20));
    assert_eq!(archiver(&c).0, 0, "PostgreSQL saw no failure:\n{}", c.log_tail(20));
    let stored = listed(&s.direct, &seg);
    assert_eq!(stored.len(), 1, "{stored:?}");
    let got = s.d.join("got");
    with_config(&s.direct, &["wal", "fetch", &seg]).arg(&got).assert_success();
    assert_eq!(b3_file(&got), stored[0]["checksum_blake3"].as_str().unwrap());

    // Longer than the budget: every request fails until the storm ends.
    s.proxy.fail_all(Match::any());
    c.sql("INSERT INTO t VALUES (2)");
    let seg2 = c.switch_wal();
    wait_until(&c, "two failed attempts to archive the segment", Duration::from_secs(120), || {
        let (failed, last_failed, _) = archiver(&c);
        failed >= 2 && last_failed == seg2
    });
    let (_, _, last_archived) = archiver(&c);
    assert!(last_archived < seg2, "{seg2} reported archived during the storm ({last_archived})");
    assert!(c.data_dir().join("pg_wal").join(&seg2).exists(), "PostgreSQL keeps {seg2} to retry it");
    assert!(listed(&s.direct, &seg2).is_empty(), "{seg2} is not in the store");
    let log = c.log_tail(40);
    assert!(log.contains("archive command failed with exit code 1"), "{log}");
    assert!(log.contains("503") && log.contains("SlowDown"), "the store's answer is in the log:\n{log}");

    // The storm ends; the next attempt (a new segment wakes the archiver)
    // stores it, and the archive is whole.
    s.proxy.pass_through();
    let seg3 = c.switch_wal();
    c.wait_archived(&seg3, Duration::from_secs(120));
    assert_eq!(listed(&s.direct, &seg2).len(), 1);
    let out = with_config(&s.cfg, &["wal", "verify"]).assert_success();
    assert!(!out.stdout.contains("gap"), "{}", out.stdout);
}

#[test]
fn pg15_slow_down_storms_while_archiving() {
    slow_down_storms_while_archiving(PgVersion::V15);
}

#[test]
fn pg18_slow_down_storms_while_archiving() {
    slow_down_storms_while_archiving(PgVersion::V18);
}

/// `wal fetch` while the store throttles past the retries, refuses the
/// credentials, or lists a segment but fails to hand it over: 128 every
/// time (recovery stops), never 1 (which would end recovery early), and
/// the destination is not created. Once the store answers: 0.
#[test]
fn fetch_during_a_storm_stops_recovery_instead_of_ending_it() {
    let s = store("fetch", "");
    let c = cluster_on(PgVersion::V15, &s.cfg);
    let seg = make_archived_segment(&c);
    let dest = s.d.join("dest");

    s.proxy.fail_all(Match::any());
    let out = with_config(&s.cfg, &["wal", "fetch", &seg]).arg(&dest).assert_code(128);
    assert!(out.stderr.contains(&format!("wal fetch {seg}")), "{}", out.stderr);
    assert!(out.stderr.contains("after 6 retries"), "{}", out.stderr);
    assert!(out.stderr.contains("503 Service Unavailable: SlowDown"), "{}", out.stderr);
    assert!(out.stderr.contains("the store is overloaded or unavailable"), "{}", out.stderr);
    assert!(out.stderr.contains("a temporary failure"), "{}", out.stderr);
    assert!(!dest.exists());
    assert!(s.proxy.injected(Injected::SlowDown) >= 7, "retried:\n{}", s.proxy.describe(20));

    // The listing answers, the object's GET is throttled.
    s.proxy.pass_through();
    s.proxy.fail_all(Match::method("GET").contains(&format!("{seg}.")));
    let out = with_config(&s.cfg, &["wal", "fetch", &seg]).arg(&dest).assert_code(128);
    assert!(out.stderr.contains("cannot open stored object") && out.stderr.contains("503"), "{}", out.stderr);
    assert!(!dest.exists());

    // Refused credentials.
    s.proxy.pass_through();
    let body = std::fs::read_to_string(&s.cfg).unwrap();
    let secret = body.lines().find(|l| l.starts_with("secret-access-key")).unwrap();
    let wrong = private_file(&s.d, "wrong.toml", body.replace(secret, "secret-access-key = \"00\""));
    let out = with_config(&wrong, &["wal", "fetch", &seg]).arg(&dest).assert_code(128);
    assert!(out.stderr.contains("access denied: check the credentials"), "{}", out.stderr);
    assert!(!dest.exists());

    let stored = listed(&s.direct, &seg);
    with_config(&s.cfg, &["wal", "fetch", &seg]).arg(&dest).assert_success();
    assert_eq!(b3_file(&dest), stored[0]["checksum_blake3"].as_str().unwrap());
}

/// Responses cut half way: every GET of a WAL object, then every GET of a
/// backup's files, closes its connection 1 KiB into the body (object_store
/// resumes with a Range request, which is cut the same way, until its
/// retries run out). `wal fetch` exits 128 and never creates the
/// destination; a retried `wal archive` of an archived segment, which reads
/// the stored copy back to check it, fails (PostgreSQL retries) and leaves
/// the stored object alone; `restore pitr` exits 1 and leaves no
/// half-restored directory. Each names a broken transfer, not a corrupt
/// object. With the cuts gone, all work.
#[test]
fn responses_cut_half_way_deliver_nothing_and_damage_nothing() {
    let s = store("cut", "");
    let c = cluster_on(PgVersion::V15, &s.cfg);
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    with_config(&s.cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    c.sql("INSERT INTO t VALUES (1)");
    // Some 70 kB stored: more than seven cuts of 1 KiB deliver.
    let seg = make_archived_segment(&c);
    let copy = s.d.join(&seg);
    with_config(&s.direct, &["wal", "fetch", &seg]).arg(&copy).assert_success();
    chown_to_run_user(&copy);
    let stored = listed(&s.direct, &seg);

    s.proxy.cut_gets(1024, Match::any().contains("/wal/"));
    let dest = s.d.mkdir("pg_wal_dir").join("RECOVERYXLOG");
    let out = with_config(&s.cfg, &["wal", "fetch", &seg]).arg(&dest).assert_code(128);
    assert!(out.stderr.contains(&format!("wal fetch {seg}")), "{}", out.stderr);
    assert!(out.stderr.contains("broke off half way"), "{}", out.stderr);
    assert!(!out.stderr.contains("corrupt"), "the stored object is fine: {}", out.stderr);
    assert!(s.proxy.injected(Injected::Cut) >= 7, "resumed and cut again:\n{}", s.proxy.describe(20));
    let left: Vec<_> = std::fs::read_dir(dest.parent().unwrap()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "nothing delivered, no temporary file left: {left:?}");

    // PostgreSQL retrying the archived segment (identical content): the
    // check of the stored copy is cut, which proves nothing against it.
    let puts = |p: &FaultProxy| p.seen().iter().filter(|r| r.method == "PUT" && r.target.contains("/wal/0")).count();
    let before = puts(&s.proxy);
    let out = with_config(&s.cfg, &["wal", "archive"]).arg(&copy).arg(&seg).assert_code(1);
    assert!(out.stderr.contains("broke off half way"), "{}", out.stderr);
    assert!(!out.stderr.contains("damaged") && !out.stderr.contains("corrupt"), "{}", out.stderr);
    assert_eq!(puts(&s.proxy), before, "no WAL object rewritten:\n{}", s.proxy.describe(20));
    assert_eq!(listed(&s.direct, &seg), stored, "the archived object is untouched");

    s.proxy.pass_through();
    s.proxy.cut_gets(1024, Match::any().contains("/data/"));
    let dir = s.d.join("restored");
    let out = with_config(&s.cfg, &["restore", "pitr"]).arg("--target-dir").arg(&dir).assert_code(1);
    assert!(out.stderr.contains("what was written is removed"), "{}", out.stderr);
    assert!(out.stderr.contains("broke off half way"), "{}", out.stderr);
    assert!(!dir.exists(), "no half-restored directory: {:?}", std::fs::read_dir(&dir).map(|r| r.count()));

    s.proxy.pass_through();
    with_config(&s.cfg, &["wal", "fetch", &seg]).arg(&dest).assert_success();
    assert_eq!(b3_file(&dest), stored[0]["checksum_blake3"].as_str().unwrap());
    with_config(&s.cfg, &["wal", "archive"]).arg(&copy).arg(&seg).assert_success();
    with_config(&s.cfg, &["restore", "pitr"]).arg("--target-dir").arg(&dir).assert_success();
    assert!(dir.join("PG_VERSION").exists());
}

/// A store slower than the request timeout (`request-timeout = 1` in
/// `[s3]`, every answer held 3 s): `wal fetch` gives up within the retry
/// budget and exits 128, saying the request timed out. Then only the WAL
/// uploads are slow: the store has the object but its answer comes after
/// the timeout, so `wal archive` fails; PostgreSQL retries, the retry finds
/// the identical object and succeeds. One object, nothing lost.
#[test]
fn a_store_slower_than_the_timeout_stops_fetch_and_archiving_recovers() {
    let s = store("slow", "request-timeout = 1\n");
    let c = cluster_on(PgVersion::V15, &s.cfg);
    let seg = make_archived_segment(&c);

    s.proxy.delay(Duration::from_secs(3), Match::any());
    let dest = s.d.join("dest");
    let start = Instant::now();
    let out = with_config(&s.cfg, &["wal", "fetch", &seg]).arg(&dest).assert_code(128);
    assert!(start.elapsed() < Duration::from_secs(40), "bounded by the retries: {:?}", start.elapsed());
    assert!(out.stderr.contains("the store did not answer within the request timeout (retried)"), "{}", out.stderr);
    assert!(out.stderr.contains("timed out"), "{}", out.stderr);
    assert!(!dest.exists());

    s.proxy.delay(Duration::from_secs(3), Match::method("PUT").contains("/wal/0"));
    c.sql("SELECT txid_current()");
    let seg2 = c.switch_wal();
    c.wait_archived(&seg2, Duration::from_secs(120));
    let (failed, last_failed, _) = archiver(&c);
    assert_eq!((failed, last_failed.as_str()), (1, seg2.as_str()), "{}", c.log_tail(20));
    let log = c.log_tail(40);
    assert!(log.contains(&format!("cannot store {seg2}")) && log.contains("timed out"), "{log}");
    assert!(log.contains("already archived with identical content"), "{log}");
    assert_eq!(listed(&s.direct, &seg2).len(), 1);

    s.proxy.pass_through();
    with_config(&s.cfg, &["wal", "fetch", &seg2]).arg(&dest).assert_success();
    with_config(&s.cfg, &["wal", "verify"]).assert_success();
}

/// A listing that lags behind writes: objects archived after a moment are
/// not listed yet (GET and HEAD find them). Stores that promise
/// read-after-write listings (AWS S3, Garage) never do this; dbbackup
/// relies on that promise, and this records what happens without it:
///
/// - `wal fetch` of the just-archived segment answers 1: from the store's
///   listing it is legitimately not there yet;
/// - an identical retry of it is still recognized (the HEAD before the
///   upload finds its key): 0, nothing written;
/// - a differing duplicate is NOT refused: its key (named after its other
///   checksum) is free and the listing that should show the first copy
///   does not, so it is stored beside it. The safety net holds: `wal
///   fetch` then refuses to choose between the two (128), so a recovery
///   stops there instead of replaying the wrong one.
#[test]
fn a_lagging_listing_is_recorded() {
    let s = store("lag", "");
    let c = cluster_on(PgVersion::V15, &s.cfg);
    make_archived_segment(&c);
    s.proxy.lag_listings();
    let seg = make_archived_segment(&c);
    assert_eq!(listed(&s.direct, &seg).len(), 1, "stored");

    let dest = s.d.join("dest");
    with_config(&s.cfg, &["wal", "fetch", &seg]).arg(&dest).assert_code(1);
    assert!(!dest.exists());
    assert!(s.proxy.injected(Injected::StaleListing) >= 1, "{}", s.proxy.describe(20));

    let copy = s.d.join(&seg);
    with_config(&s.direct, &["wal", "fetch", &seg]).arg(&copy).assert_success();
    chown_to_run_user(&copy);
    let out = with_config(&s.cfg, &["wal", "archive"]).arg(&copy).arg(&seg).assert_success();
    assert!(out.stderr.contains("already archived with identical content"), "{}", out.stderr);
    assert_eq!(listed(&s.direct, &seg).len(), 1);

    let mut bytes = std::fs::read(&copy).unwrap();
    bytes[20000] ^= 0xff;
    std::fs::write(&copy, &bytes).unwrap();
    with_config(&s.cfg, &["wal", "archive"]).arg(&copy).arg(&seg).assert_success();
    assert_eq!(listed(&s.direct, &seg).len(), 2, "stored beside the first copy");
    let out = with_config(&s.direct, &["wal", "fetch", &seg]).arg(&dest).assert_code(128);
    assert!(out.stderr.contains("archived twice with different content"), "{}", out.stderr);
    assert!(!dest.exists());
    // `wal verify` reports it (the weekly check must not say "ok").
    let out = with_config(&s.direct, &["wal", "verify"]).assert_code(1);
    assert!(out.stdout.contains(&format!("{seg} is archived twice with different content")), "{}", out.stdout);
}
