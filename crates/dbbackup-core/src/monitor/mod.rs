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

/// Runs `checker` for at most `deadline`: past it, a failed check says so
/// (the check's thread is left to finish or hang on its own).
pub fn check_within(checker: impl FnOnce() -> Check + Send + 'static, deadline: Duration) -> Check {
    let started = Instant::now();
    let outcome = match spawn_check(checker).map(|rx| rx.recv_timeout(deadline)) {
        Some(Ok(check)) => return check,
        Some(Err(mpsc::RecvTimeoutError::Timeout)) => deadline_passed(deadline),
        _ => NO_RESULT.to_string(),
    };
    Check { finished: SystemTime::now(), duration: started.elapsed(), outcome: Err(outcome) }
}

/// Runs `checker` on a thread of its own; its result arrives on the
/// receiver (none if the thread could not start, or ended without one).
fn spawn_check(checker: impl FnOnce() -> Check + Send + 'static) -> Option<mpsc::Receiver<Check>> {
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("check".into())
        .spawn(move || {
            let _ = tx.send(checker());
        })
        .ok()?;
    Some(rx)
}

/// A check whose thread ended without a result (a panic: see the log).
const NO_RESULT: &str = "the check ended without a result (see the log)";

fn deadline_passed(deadline: Duration) -> String {
    format!(
        "the check did not finish within {} s (a server or repository that does not answer)",
        deadline.as_secs_f64()
    )
}

/// The `/status` document: the `pitr status --json` report, or for a check
/// that failed a report of the same shape saying why, plus when the check
/// ran.
pub fn status_document(check: &Check, totals: &Totals) -> serde_json::Value {
    let mut doc = match &check.outcome {
        Ok(r) => serde_json::to_value(r).unwrap_or_default(),
        Err(e) => {
            let hung = e.contains("did not finish") || e.contains("without an answer");
            let fix = if hung {
                "a server or repository that does not answer: check both (a stopped or overloaded server, a hung NFS mount, an object store that does not respond); the next check starts when this one ends"
            } else {
                "check that PostgreSQL is running and reachable with the connection options the monitor was given (--pgdata, --host, --port, --user)"
            };
            serde_json::json!({
                "verdict": "error",
                "findings": [{ "level": "error", "message": e, "fix": fix }],
            })
        }
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
    /// The repository ID given (`--repo-id`): each check compares it, so the
    /// monitor does not keep the first ID it finds.
    pub repo_id: Option<String>,
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
    listener: std::net::TcpListener,
    addr: SocketAddr,
}

impl Service {
    pub fn bind(addr: SocketAddr) -> Result<Service> {
        let listener =
            std::net::TcpListener::bind(addr).and_then(|l| l.set_nonblocking(true).map(|_| l)).map_err(|e| {
                let why = e.to_string();
                let hint = match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        ": another process listens there (a monitor left running?); pick another port or stop it"
                    }
                    std::io::ErrorKind::AddrNotAvailable => ": that address is not one of this host's",
                    std::io::ErrorKind::PermissionDenied => ": ports below 1024 need privileges; use a higher port",
                    _ => "",
                };
                Error::invalid(format!("cannot listen on {addr}: {why}{hint}"))
            })?;
        let addr = listener.local_addr().unwrap_or(addr);
        Ok(Service { listener, addr })
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
        {
            let (cached, stop, opts) = (Arc::clone(&cached), Arc::clone(&stop), opts.clone());
            // Not joined at the end: a check in flight only reads.
            std::thread::Builder::new()
                .name("checks".into())
                .spawn(move || check_loop(&opts, checker, &cached, &stop))
                .map_err(|e| Error::io(format!("cannot start the checks: {e}")))?;
        }
        // HTTP on one thread of its own: answers come from memory.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io(format!("cannot start the HTTP server: {e}")))?;
        rt.block_on(serve(self.listener, cached, stop))
    }
}

/// Accepts connections until `stop`; each is served by hyper (HTTP/1.1,
/// kept alive as Prometheus keeps it), with a bound on how long a client
/// may take to send its request.
async fn serve(listener: std::net::TcpListener, cached: Arc<Mutex<Cached>>, stop: Arc<AtomicBool>) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| Error::io(format!("cannot serve HTTP: {e}")))?;
    while !stop.load(Ordering::Relaxed) {
        let accepted = match tokio::time::timeout(Duration::from_millis(100), listener.accept()).await {
            Err(_) => continue,
            Ok(Err(e)) => {
                // Out of descriptors and the like: say it, keep serving.
                tracing::warn!("monitor: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Ok(Ok((stream, _))) => stream,
        };
        // A response in several writes must not wait for delayed ACKs.
        let _ = accepted.set_nodelay(true);
        let cached = Arc::clone(&cached);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = answer(&req, &cached);
                async move { Ok::<_, std::convert::Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(accepted), service);
            // A client that goes away is its own business.
            let _ = conn.await;
        });
    }
    Ok(())
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
    let mut pinned: Option<(String, String)> = None;
    let interval = opts.interval.as_secs_f64();
    let mut done = |check: Check, totals: &mut Totals| {
        let mut check = check;
        if opts.repo_id.is_none() {
            pin_repository(&mut pinned, &mut check);
        }
        totals.checks += 1;
        if check.outcome.is_err() {
            totals.errors += 1;
        }
        note_change(&mut last, &check);
        publish(cached, check, totals, interval);
    };
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let run = Arc::clone(&checker);
        let rx = spawn_check(move || run());
        let failed =
            |why: String| Check { finished: SystemTime::now(), duration: started.elapsed(), outcome: Err(why) };
        match rx.as_ref().map(|rx| (rx, rx.recv_timeout(opts.deadline))) {
            Some((_, Ok(check))) => done(check, &mut totals),
            Some((rx, Err(mpsc::RecvTimeoutError::Timeout))) => {
                // Past the deadline: a failed check now, and one more every
                // interval while it hangs (the counters and the time of the
                // last check move on: the server is the stale one, not the
                // monitor); its late result still counts.
                done(failed(format!("{}; the next starts when it ends", deadline_passed(opts.deadline))), &mut totals);
                let mut reported = Instant::now();
                loop {
                    match rx.recv_timeout(Duration::from_millis(100)) {
                        Ok(check) => {
                            done(check, &mut totals);
                            break;
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => return,
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            if reported.elapsed() >= opts.interval.max(Duration::from_secs(1)) {
                                let why = format!(
                                    "a check has run for {} s without an answer (a server or repository that does not answer); the next starts when it ends",
                                    started.elapsed().as_secs()
                                );
                                done(failed(why), &mut totals);
                                reported = Instant::now();
                            }
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => {
                            done(failed(NO_RESULT.into()), &mut totals);
                            break;
                        }
                    }
                }
            }
            _ => done(failed(NO_RESULT.into()), &mut totals),
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

/// The repository a monitor watches is the one its first good check found
/// (its ID). Another one later is an error, not a healthy new
/// start: archive_command pointed elsewhere (a typo), or the repository
/// re-created where the old one was (a file system not mounted, so the
/// next archive made a new, empty repository there).
fn pin_repository(pinned: &mut Option<(String, String)>, check: &mut Check) {
    let Ok(r) = &mut check.outcome else { return };
    let Some(repo) = r.repository.as_ref().filter(|h| h.reachable && h.error.is_none()) else { return };
    let Some(id) = repo.id.clone() else { return };
    match pinned {
        None => *pinned = Some((repo.location.clone(), id)),
        // By ID: the same repository may be written another way.
        Some((loc, pid)) if *pid != id => {
            let message = format!(
                "the repository changed since the monitor started: it watched {loc} (ID {pid}), the checks now find {} (ID {id}): archive_command was pointed at another repository, or the repository was re-created (a file system not mounted, a directory removed) and holds none of the earlier WAL and backups",
                repo.location
            );
            r.findings.push(crate::pitr::Finding {
                level: Verdict::Error,
                message,
                fix: "if archiving moved on purpose, take a base backup there and restart the monitor to watch it; otherwise point archive_command back at the repository (mount it) and take a new base backup".into(),
            });
            r.verdict = Verdict::Error;
        }
        Some(_) => {}
    }
}

/// Logs a change of verdict (and of what makes it), not every check.
/// Numbers do not count as a change: a lag that grows, a temporary
/// object's name.
fn note_change(last: &mut Option<(Verdict, String)>, check: &Check) {
    let now = describe(check);
    let shape = |t: &str| t.chars().filter(|c| !c.is_ascii_digit()).collect::<String>();
    if last.as_ref().is_some_and(|(v, t)| *v == now.0 && shape(t) == shape(&now.1)) {
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

fn answer<B>(req: &hyper::Request<B>, cached: &Mutex<Cached>) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    use hyper::{header, Method, StatusCode};
    let respond = |code: StatusCode, content_type: &str, body: String| {
        let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *r.status_mut() = code;
        if let Ok(v) = header::HeaderValue::from_str(content_type) {
            r.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        r
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "only GET\n".into());
    }
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
    let c = cached.lock().unwrap_or_else(|p| p.into_inner());
    match req.uri().path() {
        "/metrics" => {
            let age = metrics::render_age(c.check.as_ref(), &c.labels);
            if openmetrics {
                let body = format!("{}{age}# EOF\n", c.openmetrics);
                respond(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body)
            } else {
                let body = format!("{}{}", c.prometheus, metrics::to_prometheus_text(&age));
                respond(StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", body)
            }
        }
        "/status" if c.check.is_some() => respond(StatusCode::OK, "application/json", c.status.clone()),
        "/status" => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "application/json",
            "{\"verdict\": \"unknown\", \"check\": null, \"note\": \"the first check has not finished yet\"}\n".into(),
        ),
        "/" => respond(
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "dbbackup monitor: /metrics (Prometheus), /status (pitr status --json)\n".into(),
        ),
        _ => respond(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found: try /metrics or /status\n".into()),
    }
}
