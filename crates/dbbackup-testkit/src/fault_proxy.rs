//! A fault-injecting HTTP/1.1 proxy to put between dbbackup and a real
//! object store (Garage), for the failures a real network and a real store
//! produce: throttling (`503 Slow Down`), slowness, a response cut half way,
//! a listing that lags behind writes.
//!
//! The test points the store config's `endpoint` at [`FaultProxy::endpoint`].
//! Requests are forwarded unchanged (the `Host` header too, so SigV4
//! signatures made for the proxy's address still verify at the store) and
//! answers relayed, except where a fault says otherwise. Faults are shared
//! state, changed while requests flow:
//!
//! - [`FaultProxy::fail_next`], [`FaultProxy::fail_all`]: answer matching
//!   requests `503 Slow Down` with S3's XML error body, without forwarding;
//! - [`FaultProxy::delay`]: hold every (matching) response for a while;
//! - [`FaultProxy::cut_gets`]: close the connection K bytes into the body of
//!   matching object GETs (a request failing half way);
//! - [`FaultProxy::lag_listings`]: LIST answers (`GET ?list-type=2`) leave
//!   out the objects written through the proxy since that call, as a store
//!   whose listing lags behind its writes;
//! - [`FaultProxy::pass_through`]: no faults.
//!
//! Plain std: one thread per client connection, each with its own upstream
//! connection, keep-alive on both sides; request bodies framed by
//! `Content-Length` or chunked. Path-style S3 requests (`/BUCKET/KEY`), as
//! the testkit's configs make. Every socket is shut down on drop.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which requests a fault applies to: a method (any when unset) and a text
/// the percent-decoded request target (path and query) must contain (any
/// when unset). `Match::any().contains("/wal/")` matches the WAL objects
/// and the listings of `wal/` (their `prefix=` query, decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Match {
    method: Option<String>,
    contains: Option<String>,
}

impl Match {
    /// Every request.
    pub fn any() -> Match {
        Match::default()
    }

    /// Requests with this method (`GET`, `PUT`, `HEAD`, `POST`, `DELETE`).
    pub fn method(m: &str) -> Match {
        Match { method: Some(m.to_ascii_uppercase()), contains: None }
    }

    /// Also: the decoded target contains `s`.
    pub fn contains(mut self, s: &str) -> Match {
        self.contains = Some(s.to_string());
        self
    }

    fn matches(&self, method: &str, decoded_target: &str) -> bool {
        self.method.as_deref().is_none_or(|m| m == method)
            && self.contains.as_deref().is_none_or(|c| decoded_target.contains(c))
    }
}

/// A fault the proxy applied to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Injected {
    /// Answered `503 Slow Down` without forwarding.
    SlowDown,
    /// The response was held back.
    Delayed,
    /// The response body was cut and the connection closed.
    Cut,
    /// A listing with recently written objects left out.
    StaleListing,
}

/// One request the proxy saw, for assertions and failure messages.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The request target as sent (path and query, percent-encoded).
    pub target: String,
    /// The status answered (0: no answer, the connection failed).
    pub status: u16,
    pub injected: Vec<Injected>,
}

#[derive(Debug, Default)]
struct Faults {
    /// 503 rules, first match wins; `remaining: None` fails until cleared.
    fail: Vec<(Match, Option<usize>)>,
    delay: Option<(Match, Duration)>,
    cut: Option<(Match, u64)>,
    /// Listings lag: these `BUCKET/KEY`s, written since, are left out.
    lagging: Option<HashSet<String>>,
}

#[derive(Debug, Default)]
struct Shared {
    faults: Mutex<Faults>,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
    sockets: Sockets,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread must not take the proxy down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A proxy's open sockets (client and upstream sides), shut down when it
/// stops: a connection thread blocked in a read then returns.
#[derive(Debug, Default)]
pub(crate) struct Sockets {
    open: Mutex<Vec<(u64, TcpStream)>>,
    next: AtomicU64,
}

impl Sockets {
    pub(crate) fn track(&self, s: &TcpStream) -> Option<u64> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let clone = s.try_clone().ok()?;
        lock(&self.open).push((id, clone));
        Some(id)
    }

    pub(crate) fn untrack(&self, id: Option<u64>) {
        if let Some(id) = id {
            lock(&self.open).retain(|(i, _)| *i != id);
        }
    }

    pub(crate) fn shutdown_all(&self) {
        for (_, s) in lock(&self.open).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

impl Shared {
    /// Sleeps `d`, cut short when the proxy stops.
    fn sleep(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.stop.load(Ordering::Relaxed) {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
    }
}

/// The proxy: listening on a free loopback port, forwarding to `upstream`.
/// Stops (every connection closed) on drop.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream`, an `http://HOST:PORT` endpoint (as
    /// [`crate::Garage::endpoint`] gives) or `HOST:PORT`.
    pub fn start(upstream: &str) -> FaultProxy {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr =
            hostport.parse().unwrap_or_else(|e| panic!("fault proxy: upstream {upstream:?} is not HOST:PORT: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("fault proxy: bind a loopback port");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("fault-proxy-accept".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if shared.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let Ok(conn) = conn else { continue };
                        let shared = Arc::clone(&shared);
                        let _ = std::thread::Builder::new()
                            .name("fault-proxy-conn".into())
                            .spawn(move || serve(conn, upstream, &shared));
                    }
                })
                .expect("fault proxy: spawn the accept thread")
        };
        FaultProxy { addr, upstream, shared, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:PORT`, for the `endpoint` of an `[s3]` table.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The store behind the proxy.
    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Clears every fault: requests and answers pass unchanged, listings
    /// are fresh again.
    pub fn pass_through(&self) {
        *lock(&self.shared.faults) = Faults::default();
    }

    /// Answers the next `n` requests matching `m` with `503 Slow Down`.
    pub fn fail_next(&self, n: usize, m: Match) {
        lock(&self.shared.faults).fail.push((m, Some(n)));
    }

    /// Answers every request matching `m` with `503 Slow Down` until
    /// [`FaultProxy::stop_failing`] (or [`FaultProxy::pass_through`]).
    pub fn fail_all(&self, m: Match) {
        lock(&self.shared.faults).fail.push((m, None));
    }

    /// Ends every 503 rule; other faults stay.
    pub fn stop_failing(&self) {
        lock(&self.shared.faults).fail.clear();
    }

    /// Holds the response to every request matching `m` for `d` before
    /// relaying it: the request has reached the store by then (a PUT is
    /// stored), only the answer is late. `Duration::ZERO`: no delay.
    pub fn delay(&self, d: Duration, m: Match) {
        lock(&self.shared.faults).delay = (!d.is_zero()).then_some((m, d));
    }

    /// Cuts the response to every object GET (not listings) matching `m`:
    /// `after` bytes of the body are relayed, then the connection closes.
    /// A retry with a `Range` is cut the same way.
    pub fn cut_gets(&self, after: u64, m: Match) {
        lock(&self.shared.faults).cut = Some((m, after));
    }

    /// Ends [`FaultProxy::cut_gets`].
    pub fn stop_cutting(&self) {
        lock(&self.shared.faults).cut = None;
    }

    /// From now on listings lag: an object written through the proxy after
    /// this call (a PUT, or a completed multipart upload) is left out of
    /// every LIST answer until [`FaultProxy::fresh_listings`]. GET and HEAD
    /// of the object itself still find it, as on a store whose listing
    /// index trails its data. Only `<Contents>` entries are hidden, not
    /// `<CommonPrefixes>`: a "directory" made only of new objects still shows.
    pub fn lag_listings(&self) {
        lock(&self.shared.faults).lagging = Some(HashSet::new());
    }

    /// Listings show everything again.
    pub fn fresh_listings(&self) {
        lock(&self.shared.faults).lagging = None;
    }

    /// Every request seen so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.shared.seen).clone()
    }

    /// How many requests got fault `what`.
    pub fn injected(&self, what: Injected) -> usize {
        lock(&self.shared.seen).iter().filter(|s| s.injected.contains(&what)).count()
    }

    /// The last `n` requests, one line each, for failure messages.
    pub fn describe(&self, n: usize) -> String {
        let seen = lock(&self.shared.seen);
        seen[seen.len().saturating_sub(n)..]
            .iter()
            .map(|s| format!("{} {} -> {} {:?}", s.method, s.target, s.status, s.injected))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor, then end every connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        self.shared.sockets.shutdown_all();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

// ------------------------------------------------------------------ HTTP

/// A request or response head.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    /// The request or status line, without CRLF.
    pub(crate) first: String,
    pub(crate) headers: Vec<(String, String)>,
}

impl Head {
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub(crate) fn has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .any(|(_, v)| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    }

    pub(crate) fn without(mut self, names: &[&str]) -> Head {
        self.headers.retain(|(k, _)| !names.iter().any(|n| k.eq_ignore_ascii_case(n)));
        self
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let mut s = format!("{}\r\n", self.first);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    pub(crate) fn status(&self) -> u16 {
        self.first.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
    }
}

const MAX_HEAD: usize = 1 << 20;

/// Reads a head; `None` on a clean end of stream before it.
pub(crate) fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut line = Vec::new();
    let mut first = None;
    let mut headers = Vec::new();
    let mut total = 0;
    loop {
        line.clear();
        let n = r.read_until(b'\n', &mut line)?;
        total += n;
        if total > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "HTTP head too large"));
        }
        if n == 0 {
            if first.is_none() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside an HTTP head"));
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\r', '\n']);
        match &first {
            // Empty lines before a request are allowed (RFC 9112 2.2).
            None if text.is_empty() => continue,
            None => first = Some(text.to_string()),
            Some(_) if text.is_empty() => break,
            Some(_) => {
                let (k, v) = text
                    .split_once(':')
                    .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("bad header line {text:?}")))?;
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
    }
    Ok(Some(Head { first: first.unwrap_or_default(), headers }))
}

/// How a body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

fn body_framing(h: &Head) -> Option<Framing> {
    if h.has_token("transfer-encoding", "chunked") {
        return Some(Framing::Chunked);
    }
    h.get("content-length").map(|v| v.trim().parse().map(Framing::Length).unwrap_or(Framing::None))
}

pub(crate) fn request_framing(h: &Head) -> Framing {
    body_framing(h).unwrap_or(Framing::None)
}

pub(crate) fn response_framing(method: &str, h: &Head) -> Framing {
    let status = h.status();
    if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
        return Framing::None;
    }
    body_framing(h).unwrap_or(Framing::Close)
}

/// Writes what fits under the byte budget `left`; false once it is spent.
fn put(w: &mut dyn Write, b: &[u8], left: &mut u64) -> io::Result<bool> {
    let n = (b.len() as u64).min(*left) as usize;
    w.write_all(&b[..n])?;
    *left -= n as u64;
    Ok(n == b.len())
}

/// Copies `n` bytes from `r` to `w` under the budget `left`.
fn copy_n(r: &mut dyn BufRead, w: &mut dyn Write, mut n: u64, left: &mut u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 << 10];
    while n > 0 {
        let want = (buf.len() as u64).min(n) as usize;
        let got = r.read(&mut buf[..want])?;
        if got == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a body"));
        }
        if !put(w, &buf[..got], left)? {
            return Ok(false);
        }
        n -= got as u64;
    }
    Ok(true)
}

/// Reads one line (LF included) of a chunked body; an error at the end of
/// the stream.
fn chunk_line(r: &mut dyn BufRead, line: &mut Vec<u8>) -> io::Result<()> {
    line.clear();
    r.read_until(b'\n', line)?;
    if line.is_empty() {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed inside a chunked body"));
    }
    Ok(())
}

/// Copies a body as framed (chunked bodies raw, chunk lines included: a
/// cut is a cut of the bytes on the wire) to `w`, at most `limit` bytes of
/// it. `Ok(true)` when the whole body went.
pub(crate) fn copy_body(
    r: &mut dyn BufRead,
    w: &mut dyn Write,
    framing: Framing,
    limit: Option<u64>,
) -> io::Result<bool> {
    let mut left = limit.unwrap_or(u64::MAX);
    match framing {
        Framing::None => Ok(true),
        Framing::Length(n) => copy_n(r, w, n, &mut left),
        Framing::Close => copy_n(r, w, u64::MAX, &mut left).or_else(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => Ok(true),
            _ => Err(e),
        }),
        Framing::Chunked => {
            let mut line = Vec::new();
            loop {
                chunk_line(r, &mut line)?;
                let text = String::from_utf8_lossy(&line);
                let size = u64::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("bad chunk size {text:?}")))?;
                if !put(w, &line, &mut left)? {
                    return Ok(false);
                }
                if size == 0 {
                    // Trailers, up to the empty line.
                    loop {
                        chunk_line(r, &mut line)?;
                        if !put(w, &line, &mut left)? {
                            return Ok(false);
                        }
                        if line == b"\r\n" || line == b"\n" {
                            return Ok(true);
                        }
                    }
                }
                // The chunk's data and its CRLF.
                if !copy_n(r, w, size + 2, &mut left)? {
                    return Ok(false);
                }
            }
        }
    }
}

/// A body read whole, decoded (chunked framing removed).
pub(crate) fn read_decoded(r: &mut dyn BufRead, framing: Framing) -> io::Result<Vec<u8>> {
    let mut raw = Vec::new();
    copy_body(r, &mut raw, framing, None)?;
    if framing != Framing::Chunked {
        return Ok(raw);
    }
    let mut out = Vec::new();
    let mut rest = &raw[..];
    loop {
        let nl = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
        let text = String::from_utf8_lossy(&rest[..nl]);
        let size = usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        rest = rest.get(nl + 1..).unwrap_or_default();
        if size == 0 || rest.len() < size {
            return Ok(out);
        }
        out.extend_from_slice(&rest[..size]);
        rest = rest.get(size + 2..).unwrap_or_default();
    }
}

pub(crate) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn xml_unescape(s: &str) -> String {
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

/// `BUCKET/KEY` of a path-style object request target.
fn bucket_key(target: &str) -> Option<String> {
    let path = target.split('?').next().unwrap_or_default();
    let decoded = percent_decode(path);
    let bk = decoded.trim_start_matches('/');
    bk.contains('/').then(|| bk.to_string())
}

/// An S3 ListObjectsV2 answer without the `<Contents>` of `hidden` keys
/// (`BUCKET/KEY`, for `bucket`); `KeyCount` adjusted.
fn filter_listing(xml: &str, bucket: &str, hidden: &HashSet<String>) -> (String, usize) {
    let mut out = String::with_capacity(xml.len());
    let mut rest = xml;
    let mut removed = 0;
    while let Some(start) = rest.find("<Contents>") {
        let Some(len) = rest[start..].find("</Contents>") else { break };
        let end = start + len + "</Contents>".len();
        let block = &rest[start..end];
        let key = block
            .split_once("<Key>")
            .and_then(|(_, k)| k.split_once("</Key>"))
            .map(|(k, _)| xml_unescape(k))
            .unwrap_or_default();
        out.push_str(&rest[..start]);
        if hidden.contains(&format!("{bucket}/{key}")) {
            removed += 1;
        } else {
            out.push_str(block);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    if removed > 0 {
        if let Some((before, after)) = out.split_once("<KeyCount>") {
            if let Some((n, tail)) = after.split_once("</KeyCount>") {
                let n: usize = n.trim().parse().unwrap_or(0);
                out = format!("{before}<KeyCount>{}</KeyCount>{tail}", n.saturating_sub(removed));
            }
        }
    }
    (out, removed)
}

fn slow_down(method: &str, target: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><Resource>{}</Resource><RequestId>fault-proxy</RequestId></Error>",
        target.split('?').next().unwrap_or_default().replace('&', "&amp;").replace('<', "&lt;")
    );
    let mut out = format!(
        "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nx-amz-request-id: fault-proxy\r\nRetry-After: 1\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// One upstream connection, reused across the client's requests.
pub(crate) struct Upstream {
    addr: SocketAddr,
    conn: Option<(TcpStream, BufReader<TcpStream>, Option<u64>)>,
}

impl Upstream {
    pub(crate) fn new(addr: SocketAddr) -> Upstream {
        Upstream { addr, conn: None }
    }

    /// The response side of the connection [`Upstream::exchange`] used.
    pub(crate) fn reader(&mut self) -> &mut BufReader<TcpStream> {
        &mut self.conn.as_mut().expect("exchange connected").1
    }

    fn connect(&mut self, shared: &Sockets) -> io::Result<()> {
        let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10))?;
        s.set_read_timeout(Some(Duration::from_secs(300)))?;
        s.set_nodelay(true)?;
        let id = shared.track(&s);
        let r = BufReader::with_capacity(64 << 10, s.try_clone()?);
        self.conn = Some((s, r, id));
        Ok(())
    }

    pub(crate) fn close(&mut self, shared: &Sockets) {
        if let Some((s, _, id)) = self.conn.take() {
            let _ = s.shutdown(Shutdown::Both);
            shared.untrack(id);
        }
    }

    /// Sends the request and reads the response head (skipping interim
    /// 1xx answers). A kept-alive connection the store closed meanwhile is
    /// replaced once.
    pub(crate) fn exchange(&mut self, shared: &Sockets, head: &[u8], body: &[u8]) -> io::Result<Head> {
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            if !reused {
                self.connect(shared)?;
            }
            let (s, r, _) = self.conn.as_mut().expect("connected above");
            let sent = s.write_all(head).and_then(|()| s.write_all(body)).and_then(|()| s.flush());
            let answer = sent.and_then(|()| loop {
                match read_head(r)? {
                    None => break Err(io::Error::new(io::ErrorKind::UnexpectedEof, "store closed the connection")),
                    Some(h) if (100..200).contains(&h.status()) && h.status() != 101 => continue,
                    Some(h) => break Ok(h),
                }
            });
            match answer {
                Ok(h) => return Ok(h),
                Err(_) if reused && attempt == 0 => self.close(shared),
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt returns")
    }
}

fn record(shared: &Shared, method: &str, target: &str, status: u16, injected: Vec<Injected>) {
    lock(&shared.seen).push(Seen { method: method.to_string(), target: target.to_string(), status, injected });
}

/// Serves one client connection until it closes (or the proxy stops).
fn serve(client: TcpStream, upstream: SocketAddr, shared: &Shared) {
    let id = shared.sockets.track(&client);
    let _ = client.set_nodelay(true);
    let mut up = Upstream::new(upstream);
    let _ = serve_requests(&client, &mut up, shared);
    up.close(&shared.sockets);
    let _ = client.shutdown(Shutdown::Both);
    shared.sockets.untrack(id);
}

fn serve_requests(client: &TcpStream, up: &mut Upstream, shared: &Shared) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 << 10, client.try_clone()?);
    let mut writer = client.try_clone()?;
    while !shared.stop.load(Ordering::Relaxed) {
        let Some(req) = read_head(&mut reader)? else { return Ok(()) };
        let mut parts = req.first.split(' ');
        let method = parts.next().unwrap_or_default().to_ascii_uppercase();
        let target = parts.next().unwrap_or_default().to_string();
        let decoded = percent_decode(&target);
        let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
        let is_list = method == "GET" && query.split('&').any(|kv| kv == "list-type=2");
        let client_close = req.has_token("connection", "close");

        // The body is read whole first: a faulted request must still be
        // consumed for the connection to stay usable.
        if req.has_token("expect", "100-continue") {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let mut body = Vec::new();
        copy_body(&mut reader, &mut body, request_framing(&req), None)?;

        // A 503 rule?
        let failed = {
            let mut f = lock(&shared.faults);
            let hit = f.fail.iter_mut().find(|(m, left)| m.matches(&method, &decoded) && *left != Some(0));
            match hit {
                Some((_, left)) => {
                    if let Some(n) = left {
                        *n -= 1;
                    }
                    true
                }
                None => false,
            }
        };
        if failed {
            writer.write_all(&slow_down(&method, &target))?;
            writer.flush()?;
            record(shared, &method, &target, 503, vec![Injected::SlowDown]);
            if client_close {
                return Ok(());
            }
            continue;
        }

        let fwd = req.clone().without(&["expect"]);
        let resp = match up.exchange(&shared.sockets, &fwd.bytes(), &body) {
            Ok(h) => h,
            Err(e) => {
                record(shared, &method, &target, 0, Vec::new());
                return Err(e);
            }
        };
        let status = resp.status();
        let framing = response_framing(&method, &resp);
        let (delay, cut, hidden) = {
            let mut f = lock(&shared.faults);
            // An object written now: later listings leave it out.
            let written = (200..300).contains(&status)
                && ((method == "PUT" && !query.contains("uploadId=") && !query.contains("partNumber="))
                    || (method == "POST" && query.contains("uploadId=")));
            if let (true, Some(lagging), Some(key)) = (written, f.lagging.as_mut(), bucket_key(&target)) {
                lagging.insert(key);
            }
            let cut = f
                .cut
                .as_ref()
                .filter(|(m, _)| method == "GET" && !is_list && m.matches(&method, &decoded))
                .filter(|_| status == 200 || status == 206)
                .map(|(_, k)| *k);
            let hidden = f.lagging.clone().filter(|_| is_list && status == 200);
            let delay = f.delay.as_ref().filter(|(m, _)| m.matches(&method, &decoded)).map(|(_, d)| *d);
            (delay, cut, hidden)
        };
        let mut injected = Vec::new();
        if let Some(d) = delay {
            injected.push(Injected::Delayed);
            shared.sleep(d);
        }
        let upr = up.reader();
        let upstream_close = framing == Framing::Close || resp.has_token("connection", "close");

        if let Some(hidden) = hidden {
            let xml = read_decoded(upr, framing)?;
            let bucket = decoded.trim_start_matches('/').split(['/', '?']).next().unwrap_or_default().to_string();
            let (xml, removed) = filter_listing(&String::from_utf8_lossy(&xml), &bucket, &hidden);
            if removed > 0 {
                injected.push(Injected::StaleListing);
            }
            let mut head = resp.clone().without(&["content-length", "transfer-encoding"]);
            head.headers.push(("Content-Length".into(), xml.len().to_string()));
            // Recorded before the client has the answer: a test asks right
            // after its command exits.
            record(shared, &method, &target, status, injected);
            writer.write_all(&head.bytes())?;
            writer.write_all(xml.as_bytes())?;
            writer.flush()?;
        } else {
            writer.write_all(&resp.bytes())?;
            let whole = copy_body(upr, &mut writer, framing, cut);
            writer.flush()?;
            match whole {
                Ok(true) => record(shared, &method, &target, status, injected),
                Ok(false) => {
                    // Half a body, then the connection goes: the request
                    // failed half way, as a reset network would make it.
                    injected.push(Injected::Cut);
                    record(shared, &method, &target, status, injected);
                    return Ok(());
                }
                Err(e) => {
                    record(shared, &method, &target, status, injected);
                    return Err(e);
                }
            }
        }
        if upstream_close {
            up.close(&shared.sockets);
            return Ok(());
        }
        if client_close {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny upstream: answers each request with `answer(method, target,
    /// body)` on kept-alive connections; counts connections.
    fn upstream(answer: fn(&str, &str, &[u8]) -> Vec<u8>) -> (SocketAddr, Arc<AtomicU64>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&conns);
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                counter.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let mut r = BufReader::new(c.try_clone().unwrap());
                    let mut w = c;
                    while let Ok(Some(h)) = read_head(&mut r) {
                        let mut body = Vec::new();
                        if copy_body(&mut r, &mut body, request_framing(&h), None).is_err() {
                            return;
                        }
                        let body = read_decoded(&mut io::Cursor::new(body), request_framing(&h)).unwrap();
                        let mut p = h.first.split(' ');
                        let (m, t) = (p.next().unwrap().to_string(), p.next().unwrap().to_string());
                        if w.write_all(&answer(&m, &t, &body)).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    fn ok(body: &str) -> Vec<u8> {
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len()).into_bytes()
    }

    /// Sends raw requests on one connection; reads their responses
    /// (status, decoded body) until the connection ends. A cut body is
    /// returned as far as it came.
    fn client(p: &FaultProxy, reqs: &[&str]) -> Vec<(u16, Vec<u8>)> {
        let s = TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut w = s.try_clone().unwrap();
        w.write_all(reqs.concat().as_bytes()).unwrap();
        let mut r = BufReader::new(s);
        let mut out = Vec::new();
        for req in reqs {
            let Ok(Some(h)) = read_head(&mut r) else { break };
            let mut body = Vec::new();
            let framing = response_framing(req.split(' ').next().unwrap(), &h);
            let whole = copy_body(&mut r, &mut body, framing, None).is_ok();
            let body = if whole { read_decoded(&mut io::Cursor::new(body), framing).unwrap() } else { body };
            out.push((h.status(), body));
        }
        out
    }

    fn echo(m: &str, t: &str, b: &[u8]) -> Vec<u8> {
        if t.contains("list-type=2") {
            return ok("<ListBucketResult><KeyCount>2</KeyCount><Contents><Key>p/a</Key></Contents><Contents><Key>p/b</Key></Contents></ListBucketResult>");
        }
        if m == "HEAD" {
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n".to_vec();
        }
        if t.contains("chunked") {
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec();
        }
        ok(&format!("{m} {t} {}", String::from_utf8_lossy(b)))
    }

    #[test]
    fn forwards_on_kept_alive_connections() {
        let (up, conns) = upstream(echo);
        let p = FaultProxy::start(&up.to_string());
        let got = client(
            &p,
            &[
                "PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
                "PUT /b/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
                "HEAD /b/k HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /b/chunked HTTP/1.1\r\nHost: x\r\n\r\n",
            ],
        );
        assert_eq!(got[0], (200, b"PUT /b/k hello".to_vec()));
        assert_eq!(got[1], (200, b"PUT /b/c hi".to_vec()));
        assert_eq!(got[2], (200, Vec::new()));
        assert_eq!(got[3], (200, b"abcde".to_vec()));
        assert_eq!(conns.load(Ordering::Relaxed), 1, "one upstream connection for the four");
        // A request is recorded once its answer is relayed: the client may
        // read the last answer a moment before.
        let start = std::time::Instant::now();
        while p.seen().len() < 4 && start.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(p.seen().len(), 4, "{}", p.describe(10));
    }

    #[test]
    fn faults_apply_and_clear() {
        let (up, _) = upstream(echo);
        let p = FaultProxy::start(&up.to_string());
        p.fail_next(2, Match::method("GET").contains("/b/x"));
        let got = client(&p, &["GET /b/x HTTP/1.1\r\nHost: x\r\n\r\n"; 3]);
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [503, 503, 200]);
        assert!(String::from_utf8_lossy(&got[0].1).contains("<Code>SlowDown</Code>"));

        p.cut_gets(4, Match::any().contains("/b/"));
        let got = client(&p, &["GET /b/long HTTP/1.1\r\nHost: x\r\n\r\n"; 2]);
        assert_eq!(got.len(), 1, "the connection closes after the cut");
        assert_eq!(got[0].1, b"GET ".to_vec());
        assert_eq!(p.injected(Injected::Cut), 1);
        p.stop_cutting();

        p.lag_listings();
        client(&p, &["PUT /b/p/b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"]);
        let got = client(&p, &["GET /b?list-type=2&prefix=p%2F HTTP/1.1\r\nHost: x\r\n\r\n"]);
        let xml = String::from_utf8_lossy(&got[0].1).into_owned();
        assert!(xml.contains("<Key>p/a</Key>") && !xml.contains("<Key>p/b</Key>"), "{xml}");
        assert!(xml.contains("<KeyCount>1</KeyCount>"), "{xml}");

        p.delay(Duration::from_millis(300), Match::any());
        let t = Instant::now();
        client(&p, &["GET /b/x HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(t.elapsed() >= Duration::from_millis(300));

        p.pass_through();
        let got = client(&p, &["GET /b?list-type=2 HTTP/1.1\r\nHost: x\r\n\r\n"]);
        assert!(String::from_utf8_lossy(&got[0].1).contains("<Key>p/b</Key>"));
    }
}
