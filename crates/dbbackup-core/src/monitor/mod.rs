//! The monitor: `dbbackup monitor` checks PITR on a timer with the very
//! [`crate::pitr::status`] that `dbbackup pitr status` runs, keeps the last
//! result, and serves it as Prometheus metrics (`/metrics`) and as the
//! status document (`/status`). A scrape never waits for a check: it reads
//! the cached result, whose age is a metric of its own. A check that does
//! not finish within its deadline is reported as a failed check; the next
//! one starts only when it has ended, so a hanging server or store costs
//! one thread, not one per interval.

pub mod metrics;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::error::{Error, Result};
use crate::pitr::{StatusOptions, StatusReport, Verdict};

/// One check's outcome: the status report, or why there is none (the
/// server could not be reached, the deadline passed).
#[derive(Debug, Clone)]
pub struct Check {
    pub finished: SystemTime,
    pub duration: Duration,
    pub outcome: std::result::Result<StatusReport, String>,
}

/// Checks run and checks that failed, since the monitor started.
#[derive(Debug, Clone, Copy, Default)]
pub struct Totals {
    pub checks: u64,
    pub errors: u64,
}

/// The labels every series carries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    pub system_identifier: String,
    pub repository: String,
}

impl Labels {
    /// The labels of a report, keeping what the last one knew where this one
    /// does not say (a server that is down has no system identifier).
    pub fn update(&mut self, check: &Check) {
        if let Ok(r) = &check.outcome {
            if let Some(s) = &r.system_identifier {
                self.system_identifier = s.clone();
            }
            if let Some(repo) = &r.repository {
                self.repository = repo.location.clone();
            }
        }
    }
}

/// Runs one check: connect, then `pitr::status`.
pub fn check(connect: &dyn Fn() -> Result<postgres::Client>, opts: &StatusOptions) -> Check {
    let start = Instant::now();
    let outcome = connect().and_then(|mut c| crate::pitr::status(&mut c, opts)).map_err(|e| e.to_string());
    Check { finished: SystemTime::now(), duration: start.elapsed(), outcome }
}

/// The `/status` document: the `pitr status --json` report, or for a check
/// that failed a report of the same shape saying why, plus when the check
/// ran.
pub fn status_document(check: &Check, totals: &Totals) -> serde_json::Value {
    let mut doc = match &check.outcome {
        Ok(r) => serde_json::to_value(r).unwrap_or_default(),
        Err(e) => serde_json::json!({
            "verdict": "error",
            "findings": [{
                "level": "error",
                "message": e,
                "fix": "check that PostgreSQL is running and reachable with the connection options the monitor was given (--pgdata, --host, --port, --user)",
            }],
        }),
    };
    let finished = jiff::Timestamp::try_from(check.finished).map(|t| t.to_string()).unwrap_or_default();
    doc["check"] = serde_json::json!({
        "finished": finished,
        "duration_seconds": check.duration.as_secs_f64(),
        "checks": totals.checks,
        "errors": totals.errors,
        "error": check.outcome.as_ref().err(),
    });
    doc
}

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServiceOptions {
    pub interval: Duration,
    /// How long a check may take before it counts as failed.
    pub deadline: Duration,
}

/// What scrapes read: rendered once per check.
#[derive(Default)]
struct Cached {
    check: Option<Check>,
    labels: Labels,
    openmetrics: String,
    prometheus: String,
    status: String,
}

/// A bound listener: binding first lets the caller refuse a port in use
/// before anything else happens.
pub struct Service {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
}

impl Service {
    pub fn bind(addr: SocketAddr) -> Result<Service> {
        let server = tiny_http::Server::http(addr).map_err(|e| {
            let why = e.to_string();
            let hint = if why.contains("in use") {
                ": another process listens there (a monitor left running?); pick another port or stop it"
            } else if why.contains("not available") || why.contains("Cannot assign") {
                ": that address is not one of this host's"
            } else if why.contains("denied") {
                ": ports below 1024 need privileges; use a higher port"
            } else {
                ""
            };
            Error::invalid(format!("cannot listen on {addr}: {why}{hint}"))
        })?;
        let addr = server.server_addr().to_ip().unwrap_or(addr);
        Ok(Service { server: Arc::new(server), addr })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` is set: checks every interval with `checker`,
    /// answers scrapes from the last result.
    pub fn run(
        self,
        opts: ServiceOptions,
        checker: Arc<dyn Fn() -> Check + Send + Sync>,
        initial: Labels,
        stop: Arc<AtomicBool>,
    ) -> Result<()> {
        let cached = Arc::new(Mutex::new(Cached { labels: initial, ..Cached::default() }));
        let checks = {
            let (cached, stop, opts) = (Arc::clone(&cached), Arc::clone(&stop), opts.clone());
            std::thread::Builder::new()
                .name("checks".into())
                .spawn(move || check_loop(&opts, checker, &cached, &stop))
                .map_err(|e| Error::io(format!("cannot start the checks: {e}")))?
        };
        // Two answering threads: one slow reader does not hold up the
        // next scrape.
        let mut http = Vec::new();
        for i in 0..2 {
            let (server, cached, stop) = (Arc::clone(&self.server), Arc::clone(&cached), Arc::clone(&stop));
            http.push(
                std::thread::Builder::new()
                    .name(format!("http-{i}"))
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            match server.recv_timeout(Duration::from_millis(100)) {
                                Ok(Some(req)) => answer(req, &cached),
                                Ok(None) => {}
                                Err(e) => {
                                    tracing::warn!("monitor: cannot accept a request: {e}");
                                    std::thread::sleep(Duration::from_millis(100));
                                }
                            }
                        }
                    })
                    .map_err(|e| Error::io(format!("cannot start the listener: {e}")))?,
            );
        }
        for h in http {
            let _ = h.join();
        }
        // A check in flight is not waited for: it only reads.
        drop(checks);
        Ok(())
    }
}

fn publish(cached: &Mutex<Cached>, check: Check, totals: &Totals, interval: f64) {
    let mut c = cached.lock().unwrap_or_else(|p| p.into_inner());
    c.labels.update(&check);
    let openmetrics = metrics::render(&check, totals, &c.labels, Some(interval));
    c.prometheus = metrics::to_prometheus_text(&openmetrics);
    c.openmetrics = openmetrics;
    c.status = serde_json::to_string_pretty(&status_document(&check, totals)).unwrap_or_default();
    c.check = Some(check);
}

/// What a verdict change says in the log.
fn describe(check: &Check) -> (Verdict, String) {
    match &check.outcome {
        Err(e) => (Verdict::Error, format!("check failed: {e}")),
        Ok(r) => {
            let worst = r
                .findings
                .iter()
                .filter(|f| f.level == r.verdict && f.level != Verdict::Ok)
                .map(|f| f.message.as_str());
            let text = worst.collect::<Vec<_>>().join("; ");
            (r.verdict, text)
        }
    }
}

fn check_loop(
    opts: &ServiceOptions,
    checker: Arc<dyn Fn() -> Check + Send + Sync>,
    cached: &Mutex<Cached>,
    stop: &AtomicBool,
) {
    let mut totals = Totals::default();
    let mut last: Option<(Verdict, String)> = None;
    let interval = opts.interval.as_secs_f64();
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let (tx, rx) = mpsc::channel();
        let run = Arc::clone(&checker);
        let spawned = std::thread::Builder::new().name("check".into()).spawn(move || {
            let _ = tx.send(run());
        });
        let mut result = match spawned {
            Ok(_) => rx.recv_timeout(opts.deadline).map_err(|e| e == mpsc::RecvTimeoutError::Timeout),
            Err(_) => Err(false),
        };
        if let Err(timed_out) = result {
            let why = if timed_out {
                format!(
                    "the check did not finish within {} s (a server or repository that does not answer); the next starts when it ends",
                    opts.deadline.as_secs_f64()
                )
            } else {
                "the check ended without a result (see the log)".to_string()
            };
            totals.checks += 1;
            totals.errors += 1;
            let failed = Check { finished: SystemTime::now(), duration: started.elapsed(), outcome: Err(why) };
            note_change(&mut last, &failed);
            publish(cached, failed, &totals, interval);
            if !timed_out {
                result = Err(false);
            } else {
                // Wait for the hanging check; its late result still counts.
                result = loop {
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(c) => break Ok(c),
                        Err(mpsc::RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => continue,
                        Err(_) => break Err(false),
                    }
                };
                if stop.load(Ordering::Relaxed) {
                    return;
                }
            }
        }
        if let Ok(check) = result {
            totals.checks += 1;
            if check.outcome.is_err() {
                totals.errors += 1;
            }
            note_change(&mut last, &check);
            publish(cached, check, &totals, interval);
        }
        // The next check starts one interval after this one started.
        while !stop.load(Ordering::Relaxed) {
            let left = opts.interval.saturating_sub(started.elapsed());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
    }
}

/// Logs a change of verdict (and of what makes it), not every check.
fn note_change(last: &mut Option<(Verdict, String)>, check: &Check) {
    let now = describe(check);
    if last.as_ref() == Some(&now) {
        return;
    }
    let verdict = serde_json::to_value(now.0).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    match now.0 {
        Verdict::Ok => tracing::info!("monitor: verdict ok"),
        Verdict::Warning => tracing::warn!("monitor: verdict {verdict}: {}", now.1),
        Verdict::Error => tracing::error!("monitor: verdict {verdict}: {}", now.1),
    }
    *last = Some(now);
}

fn answer(req: tiny_http::Request, cached: &Mutex<Cached>) {
    use tiny_http::{Header, Method, Response};
    let header = |k: &str, v: &str| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok();
    let path = req.url().split('?').next().unwrap_or("").to_string();
    if *req.method() != Method::Get && *req.method() != Method::Head {
        let _ = req.respond(Response::from_string("only GET\n").with_status_code(405));
        return;
    }
    let openmetrics = req
        .headers()
        .iter()
        .any(|h| h.field.equiv("Accept") && h.value.as_str().contains("application/openmetrics-text"));
    let (body, content_type, code) = {
        let c = cached.lock().unwrap_or_else(|p| p.into_inner());
        match path.as_str() {
            "/metrics" => {
                let age = metrics::render_age(c.check.as_ref(), &c.labels);
                if openmetrics {
                    (
                        format!("{}{age}# EOF\n", c.openmetrics),
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        200,
                    )
                } else {
                    (
                        format!("{}{}", c.prometheus, metrics::to_prometheus_text(&age)),
                        "text/plain; version=0.0.4; charset=utf-8",
                        200,
                    )
                }
            }
            "/status" if c.check.is_some() => (c.status.clone(), "application/json", 200),
            "/status" => (
                "{\"verdict\": \"unknown\", \"check\": null, \"note\": \"the first check has not finished yet\"}\n"
                    .to_string(),
                "application/json",
                503,
            ),
            "/" => (
                "dbbackup monitor: /metrics (Prometheus), /status (pitr status --json)\n".to_string(),
                "text/plain; charset=utf-8",
                200,
            ),
            _ => ("not found: try /metrics or /status\n".to_string(), "text/plain; charset=utf-8", 404),
        }
    };
    let mut resp = Response::from_string(body).with_status_code(code);
    if let Some(h) = header("Content-Type", content_type) {
        resp = resp.with_header(h);
    }
    let _ = req.respond(resp);
}
