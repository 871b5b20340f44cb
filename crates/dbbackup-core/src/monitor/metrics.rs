//! The metrics of one check, as Prometheus reads them. Built with
//! `prometheus-client` (OpenMetrics text); [`to_prometheus_text`] turns
//! that into the classic text format for scrapers that do not ask for
//! OpenMetrics and for node_exporter's textfile collector.
//!
//! Every series carries two labels, `system_identifier` (the cluster) and
//! `repository` (as archive_command or --repo names it); the few families
//! with a label of their own take it from a fixed set (verdict states,
//! backup statuses, kinds of stored object). Nothing of unbounded
//! cardinality: no segment names, no backup IDs.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use prometheus_client::encoding::text::encode_registry;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{Check, Labels, Totals};
use crate::pitr::{StatusReport, Verdict};

type F64Gauge = Gauge<f64, AtomicU64>;
type F64Counter = Counter<f64, AtomicU64>;
type LabelSet = Vec<(&'static str, String)>;

/// Seconds since the epoch of an RFC 3339 time (as status reports them).
fn epoch(t: Option<&str>) -> Option<f64> {
    let t: jiff::Timestamp = t?.parse().ok()?;
    Some(t.as_millisecond() as f64 / 1000.0)
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// A registry with the common labels, and terse ways to add to it.
struct Builder {
    reg: Registry,
}

impl Builder {
    fn new(labels: &Labels) -> Builder {
        let common: Vec<(Cow<'static, str>, Cow<'static, str>)> = vec![
            ("system_identifier".into(), labels.system_identifier.clone().into()),
            ("repository".into(), labels.repository.clone().into()),
        ];
        Builder { reg: Registry::with_labels(common.into_iter()) }
    }

    fn gauge(&mut self, name: &str, help: &str, value: f64) {
        let g = F64Gauge::default();
        g.set(value);
        self.reg.register(name, help, g);
    }

    fn maybe(&mut self, name: &str, help: &str, value: Option<f64>) {
        if let Some(v) = value {
            self.gauge(name, help, v);
        }
    }

    /// `name` without `_total`: OpenMetrics adds it to counters.
    fn counter(&mut self, name: &str, help: &str, value: f64) {
        let c = F64Counter::default();
        c.inc_by(value.max(0.0));
        self.reg.register(name, help, c);
    }

    fn family(&mut self, name: &str, help: &str, label: &'static str, values: &[(&str, f64)]) {
        let f = Family::<LabelSet, F64Gauge>::default();
        for (l, v) in values {
            f.get_or_create(&vec![(label, (*l).to_string())]).set(*v);
        }
        self.reg.register(name, help, f);
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode_registry(&mut out, &self.reg);
        out
    }
}

/// The metrics of `check`, in OpenMetrics text without the final `# EOF`
/// (the scrape adds the check's age, then `# EOF`). `interval` is the
/// monitor's (none for a one-shot `pitr status --prometheus`).
pub fn render(check: &Check, totals: &Totals, labels: &Labels, interval: Option<f64>) -> String {
    let mut b = Builder::new(labels);
    let now = SystemTime::now();
    b.family(
        "dbbackup_build_info",
        "The dbbackup version that serves these metrics (always 1)",
        "version",
        &[(env!("CARGO_PKG_VERSION"), 1.0)],
    );
    b.gauge(
        "dbbackup_last_check_timestamp_seconds",
        "When the last check finished (or was given up on at its deadline)",
        unix(check.finished),
    );
    b.gauge("dbbackup_check_duration_seconds", "How long the last check took", check.duration.as_secs_f64());
    b.counter("dbbackup_checks", "Checks run since the monitor started", totals.checks as f64);
    b.counter(
        "dbbackup_check_errors",
        "Checks that could not run to the end (server unreachable, deadline passed) since the monitor started",
        totals.errors as f64,
    );
    b.maybe("dbbackup_check_interval_seconds", "How often the monitor checks", interval);
    match &check.outcome {
        Err(_) => {
            b.gauge("dbbackup_server_up", "Whether the last check reached PostgreSQL", 0.0);
            b.family(
                "dbbackup_verdict",
                "The pitr status verdict: 1 for the current state, 0 for the others",
                "state",
                &[("ok", 0.0), ("warning", 0.0), ("error", 1.0)],
            );
        }
        Ok(r) => report(&mut b, r, now),
    }
    b.encode()
}

fn report(b: &mut Builder, r: &StatusReport, now: SystemTime) {
    b.gauge("dbbackup_server_up", "Whether the last check reached PostgreSQL", 1.0);
    let v = |want: Verdict| flag(r.verdict == want);
    b.family(
        "dbbackup_verdict",
        "The pitr status verdict: 1 for the current state, 0 for the others",
        "state",
        &[("ok", v(Verdict::Ok)), ("warning", v(Verdict::Warning)), ("error", v(Verdict::Error))],
    );
    let count = |l: Verdict| r.findings.iter().filter(|f| f.level == l).count() as f64;
    b.family(
        "dbbackup_findings",
        "Findings of the last check by level (their text is in /status)",
        "level",
        &[("warning", count(Verdict::Warning)), ("error", count(Verdict::Error))],
    );
    b.gauge(
        "dbbackup_in_recovery",
        "Whether the server is in recovery (a standby or a restoring copy)",
        flag(r.in_recovery),
    );
    let a = &r.archiver;
    b.gauge(
        "dbbackup_archiving_failing",
        "Whether the newest archive attempt failed (pg_stat_archiver)",
        flag(a.failing),
    );
    b.counter(
        "dbbackup_wal_archived",
        "WAL files archived since the statistics were reset (pg_stat_archiver)",
        a.archived_count as f64,
    );
    b.counter(
        "dbbackup_wal_failed",
        "Failed archive attempts since the statistics were reset (pg_stat_archiver)",
        a.failed_count as f64,
    );
    b.maybe(
        "dbbackup_wal_last_archived_timestamp_seconds",
        "When the last WAL file was archived",
        epoch(a.last_archived_time.as_deref()),
    );
    b.maybe(
        "dbbackup_wal_last_failed_timestamp_seconds",
        "When the last archive attempt failed",
        epoch(a.last_failed_time.as_deref()),
    );
    b.maybe(
        "dbbackup_archive_lag_segments",
        "Finished WAL segments not yet archived",
        r.lag_segments.map(|x| x as f64),
    );
    b.maybe("dbbackup_archive_lag_bytes", "WAL bytes written but not yet archived", r.lag_bytes.map(|x| x as f64));
    b.maybe(
        "dbbackup_archive_lag_seconds",
        "How long the oldest segment waiting for archiving has waited (0 when none waits)",
        r.lag_seconds,
    );
    if let Some(q) = &r.async_queue {
        b.gauge(
            "dbbackup_async_queue_ready_segments",
            "Segments PostgreSQL has marked ready for archiving (--async)",
            q.ready as f64,
        );
        b.gauge(
            "dbbackup_async_queue_unacknowledged_segments",
            "Ready segments the asynchronous worker has not yet stored (--async)",
            q.unacknowledged as f64,
        );
        b.maybe(
            "dbbackup_async_worker_running",
            "Whether an asynchronous archive worker runs (--async)",
            q.worker_running.map(flag),
        );
    }
    let Some(repo) = &r.repository else {
        return;
    };
    let up = repo.reachable && repo.error.is_none();
    b.gauge("dbbackup_repository_up", "Whether the last check could read the repository", flag(up));
    if !repo.reachable {
        return;
    }
    b.gauge(
        "dbbackup_repository_writable",
        "Whether a test object could be written into the repository's WAL",
        flag(repo.writable.is_none()),
    );
    b.gauge("dbbackup_repository_wal_segments", "WAL segments in the repository", repo.segments as f64);
    b.gauge(
        "dbbackup_repository_gaps",
        "Runs of missing segments in the archive (not counting segments still queued for archiving)",
        repo.gaps.len() as f64,
    );
    b.gauge(
        "dbbackup_repository_missing_segments",
        "Segments missing in those gaps",
        repo.gaps.iter().map(|g| g.count).sum::<u64>() as f64,
    );
    if let Some(s) = &repo.stored_bytes {
        b.family(
            "dbbackup_repository_size_bytes",
            "Bytes stored in the repository (compressed, encrypted) by kind",
            "kind",
            &[("wal", s.wal as f64), ("backup", s.backups as f64)],
        );
    }
    let n = |s: &str| repo.backups.get(s).copied().unwrap_or(0) as f64;
    b.family(
        "dbbackup_backups",
        "Base backups by status (running includes interrupted ones)",
        "status",
        &[
            ("complete", n("complete")),
            ("pending", n("pending")),
            ("running", n("running")),
            ("failed", n("failed")),
            ("expired", n("expired")),
        ],
    );
    if let Some(nb) = &repo.newest_backup {
        let (start, stop) = (epoch(Some(&nb.start_time)), epoch(nb.stop_time.as_deref()));
        b.maybe("dbbackup_backup_newest_timestamp_seconds", "When the newest complete base backup finished", stop);
        b.maybe(
            "dbbackup_backup_newest_age_seconds",
            "How long ago the newest complete base backup finished (at the check)",
            stop.map(|s| (unix(now) - s).max(0.0)),
        );
        b.maybe(
            "dbbackup_backup_newest_duration_seconds",
            "How long the newest complete base backup took",
            start.zip(stop).map(|(a, z)| (z - a).max(0.0)),
        );
        b.gauge(
            "dbbackup_backup_newest_size_bytes",
            "Size of the cluster the newest complete backup copied",
            nb.size_bytes as f64,
        );
        b.gauge(
            "dbbackup_backup_newest_stored_bytes",
            "Bytes the newest complete backup stores (compressed, encrypted)",
            nb.stored_bytes as f64,
        );
    }
    if let Some(range) = &repo.recoverable {
        b.maybe(
            "dbbackup_recoverable_oldest_timestamp_seconds",
            "The oldest point a restore can reach (the end of the oldest complete backup)",
            epoch(range.oldest_time.as_deref()),
        );
        b.maybe(
            "dbbackup_recoverable_newest_timestamp_seconds",
            "About the newest point a restore can reach (when the newest segment before any gap was archived)",
            epoch(range.newest_time.as_deref()),
        );
        b.gauge(
            "dbbackup_recoverable_cut_by_gap",
            "Whether a missing segment after the newest backup's start ends the recoverable range early",
            flag(range.cut_by_gap),
        );
    }
}

/// The age of the result a scrape reads, encoded like [`render`]'s body.
pub fn render_age(check: Option<&Check>, labels: &Labels) -> String {
    let mut b = Builder::new(labels);
    let age = check.map(|c| SystemTime::now().duration_since(c.finished).map(|d| d.as_secs_f64()).unwrap_or(0.0));
    b.maybe("dbbackup_check_age_seconds", "How old the result served is (time since the last check finished)", age);
    b.encode()
}

/// The classic Prometheus text format (0.0.4) of an OpenMetrics body:
/// counters are named with their `_total` in HELP and TYPE, and the
/// OpenMetrics-only lines (`# UNIT`, `# EOF`) go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: HashSet<&str> =
        openmetrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len() + 64);
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("# HELP ", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("# TYPE ", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) { "_total" } else { "" };
                out.push_str(&format!("{kind}{name}{suffix} {tail}\n"));
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_get_their_total_in_the_classic_format() {
        let om = "# HELP dbbackup_checks Checks.\n# TYPE dbbackup_checks counter\ndbbackup_checks_total 3\n\
                  # HELP dbbackup_server_up Up.\n# TYPE dbbackup_server_up gauge\ndbbackup_server_up 1\n# EOF\n";
        let text = to_prometheus_text(om);
        assert_eq!(
            text,
            "# HELP dbbackup_checks_total Checks.\n# TYPE dbbackup_checks_total counter\ndbbackup_checks_total 3\n\
             # HELP dbbackup_server_up Up.\n# TYPE dbbackup_server_up gauge\ndbbackup_server_up 1\n"
        );
    }

    #[test]
    fn a_failed_check_says_the_server_is_down_and_the_verdict_is_error() {
        let check = Check {
            finished: SystemTime::now(),
            duration: std::time::Duration::from_millis(5),
            outcome: Err("cannot connect".into()),
        };
        let labels = Labels { system_identifier: "7".into(), repository: "/r".into() };
        let om = render(&check, &Totals { checks: 1, errors: 1 }, &labels, Some(60.0));
        assert!(om.contains("dbbackup_server_up{system_identifier=\"7\",repository=\"/r\"} 0"), "{om}");
        assert!(om.contains("dbbackup_verdict{system_identifier=\"7\",repository=\"/r\",state=\"error\"} 1"), "{om}");
        assert!(om.contains("dbbackup_check_errors_total{system_identifier=\"7\",repository=\"/r\"} 1"), "{om}");
        assert!(!om.contains("dbbackup_repository_up"), "{om}");
    }

    #[test]
    fn times_are_seconds_since_the_epoch() {
        assert_eq!(epoch(Some("1970-01-01T00:01:40Z")), Some(100.0));
        assert_eq!(epoch(Some("2026-11-27T10:00:00.500000Z")).map(|s| s.fract()), Some(0.5));
        assert_eq!(epoch(Some("not a time")), None);
    }
}
