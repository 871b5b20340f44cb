//! A repository in an object store (S3 and S3-compatible stores, GCS,
//! Azure) through the `object_store` crate.
//!
//! What the store promises, and what this backend adds:
//! - An object is visible only once its upload was acknowledged: a single
//!   PUT, or a multipart upload completed at `commit`. Nothing partial is
//!   ever visible under a key; an uncommitted writer aborts its upload.
//! - "Never replace": a conditional PUT (`If-None-Match: *`) where the
//!   store honours it, and a HEAD before every no-replace write, since some
//!   (Garage 2.5.0) ignore the condition. The race left between two
//!   writers of one key is closed one level up: archived WAL objects are
//!   named after their content, so two writers of one key write the same
//!   bytes, and a differing duplicate has another key and is found.
//! - No locks exist in object stores: a lock is a lease object that names
//!   its holder and an expiry, renewed while held and removed on release.
//! - Requests time out and are retried with backoff inside a bounded time
//!   by `object_store` itself; what still fails is an error (never a "not
//!   found"), so `wal fetch` stops recovery rather than ending it.
//!
//! Memory stays bounded: reads stream, writes go out in parts of
//! [`PART_SIZE`], at most one part buffered.

use std::fmt;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{MultipartUpload, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use super::{Commit, Entry, LockGuard, ObjectWriter, Storage, StorageError, StorageResult, TEMP_PREFIX};

/// Size of one part of a multipart upload (and of the single-PUT limit).
pub const PART_SIZE: usize = 8 << 20;

/// How long a lock lease lasts without renewal; it is renewed every third.
const LEASE: Duration = Duration::from_secs(60);

/// The runtime every object-store request runs on. Callers are plain
/// threads (archive, backup workers), which block on it.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("dbbackup-io")
            .enable_all()
            .build()
            .expect("the I/O runtime starts")
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// What error messages need to know of the settings that opened a store,
/// to name the fix (`ca-file = ...` in `[s3]`).
#[derive(Debug, Clone, Default)]
pub struct Hints {
    /// The config file table: `s3`, `gcs` or `azure`.
    pub table: &'static str,
    /// The table's `endpoint`, if set.
    pub endpoint: Option<String>,
    /// The table's `ca-file`, if set.
    pub ca_file: Option<PathBuf>,
}

/// A repository under `prefix` in an object store.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    hints: Arc<Hints>,
    /// Key prefix of the repository, without a trailing `/` ("" for the
    /// bucket's root).
    prefix: String,
    /// The location as the user wrote it (`s3://bucket/prefix`).
    url: String,
}

impl fmt::Debug for ObjectStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectStorage({})", self.url)
    }
}

impl ObjectStorage {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, url: String, hints: Hints) -> ObjectStorage {
        ObjectStorage { store, hints: Arc::new(hints), prefix: prefix.trim_matches('/').to_string(), url }
    }

    fn key(&self, rel: &str) -> ObjPath {
        let rel = rel.trim_matches('/');
        match (self.prefix.is_empty(), rel.is_empty()) {
            (true, _) => ObjPath::from(rel),
            (false, true) => ObjPath::from(self.prefix.as_str()),
            (false, false) => ObjPath::from(format!("{}/{rel}", self.prefix)),
        }
    }

    /// The repository-relative name of a listed key.
    fn rel<'a>(&self, full: &'a str) -> &'a str {
        if self.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.prefix).map(|r| r.trim_start_matches('/')).unwrap_or(full)
        }
    }

    /// Every key under `dir` (recursively), repository-relative.
    fn list_all(&self, dir: &str) -> StorageResult<Vec<String>> {
        let prefix = self.key(dir);
        let mut stream = self.store.list(Some(&prefix));
        let mut out = Vec::new();
        block_on(async {
            while let Some(m) = stream.next().await {
                let m = m.map_err(|e| listing_error(dir, e, &self.hints))?;
                out.push(self.rel(m.location.as_ref()).to_string());
            }
            Ok::<(), StorageError>(())
        })?;
        Ok(out)
    }
}

/// Turns a store error into ours. `NotFound` stays "not found" only for
/// objects: callers decide what a missing object means.
fn error(rel: &str, e: object_store::Error, hints: &Hints) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => StorageError::NotFound { path: rel.to_string() },
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. } => {
            StorageError::AlreadyExists { path: rel.to_string() }
        }
        e => StorageError::Io { path: rel.to_string(), source: io_error(&e, hints) },
    }
}

/// A store error as an `io::Error` whose kind says whether it is temporary
/// (see [`StorageError::is_temporary`]).
fn io_error(e: &dyn std::error::Error, hints: &Hints) -> io::Error {
    let (text, kind) = describe(e, hints);
    io::Error::new(kind, text)
}

/// A listing never answers "not found": an empty prefix lists as empty,
/// and a missing bucket is an error (a "no" there would read as "not
/// archived" to `wal fetch`).
fn listing_error(rel: &str, e: object_store::Error, hints: &Hints) -> StorageError {
    StorageError::Io { path: rel.to_string(), source: io_error(&e, hints) }
}

/// `object_store` errors nest their causes over several lines and quote
/// the store's XML: one line, led by what it means for the DBA.
fn one_line(e: &dyn std::error::Error, hints: &Hints) -> String {
    describe(e, hints).0
}

/// [`one_line`], and the kind of failure: temporary ones (see
/// [`StorageError::is_temporary`]) get a kind that says so.
fn describe(e: &dyn std::error::Error, hints: &Hints) -> (String, io::ErrorKind) {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    let raw = s.split_whitespace().collect::<Vec<_>>().join(" ");
    // <Code>NoSuchBucket</Code><Message>Bucket not found</Message> -> "NoSuchBucket: Bucket not found".
    let tag = |t: &str| {
        let open = format!("<{t}>");
        let start = raw.find(&open)? + open.len();
        Some(raw[start..].split("</").next()?.to_string())
    };
    let detail = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => {
            let cut = raw.find("<?xml").or_else(|| raw.find("<Error>")).unwrap_or(raw.len());
            format!("{}{c}: {m}", &raw[..cut])
        }
        _ => raw.clone(),
    };
    match explain(&raw, hints) {
        Some((what, kind)) => (format!("{what} ({detail})"), kind),
        None => (detail, io::ErrorKind::Other),
    }
}

/// What a store's error means, for the common mistakes.
fn explain(raw: &str, hints: &Hints) -> Option<(String, io::ErrorKind)> {
    use io::ErrorKind as K;
    let has = |needles: &[&str]| needles.iter().any(|n| raw.contains(n));
    let fixed = |s: &str| Some((s.to_string(), K::Other));
    let temporary = |s: &str, k: K| Some((s.to_string(), k));
    if has(&["NoSuchBucket", "ContainerNotFound", "The specified container does not exist", "bucket does not exist"]) {
        fixed("the bucket (or container) does not exist: check its name in --repo, and the endpoint and region")
    } else if has(&["PermanentRedirect", "AuthorizationHeaderMalformed", "IncorrectEndpoint", "wrong region"]) {
        fixed("the bucket is in another region: set region in [s3] to the bucket's")
    } else if has(&[
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AuthenticationFailed",
        "403 Forbidden",
        "401 Unauthorized",
    ]) {
        fixed("access denied: check the credentials (access key and secret) and the permissions on the bucket")
    } else if has(&["Invalid Access Key", "Invalid last symbol", "Invalid symbol", "Invalid byte"]) {
        fixed("the [azure] access-key is not a valid account key (base64): copy the storage account's key again")
    } else if let Some(tls) = explain_tls(raw, hints) {
        Some((tls, K::Other))
    } else if has(&[
        "SlowDown",
        "ServiceUnavailable",
        "503 Service Unavailable",
        "Could not reach quorum",
        "500 Internal Server Error",
        "502 Bad Gateway",
    ]) {
        temporary("the store is overloaded or unavailable (retried with backoff, still failing): wait, or check the store's health", K::ResourceBusy)
    } else if has(&["operation timed out"]) {
        temporary("the store did not answer within the request timeout (retried): check that it is up and not overloaded, or raise request-timeout", K::TimedOut)
    } else if has(&["error reading a body", "body error", "end of file before message length reached"]) {
        temporary("the transfer from the store broke off half way (retried): check the network and the store's health, then try again", K::ConnectionAborted)
    } else if let Some(dropped) = explain_dropped(raw, hints) {
        Some((dropped, K::ConnectionReset))
    } else if has(&[
        "Connection refused",
        "dns error",
        "connect error",
        "timed out",
        "operation timed out",
        "error sending request",
    ]) {
        temporary(
            "cannot reach the store (retried): check the endpoint, that the store is up, and the network",
            K::ConnectionRefused,
        )
    } else {
        None
    }
}

/// TLS failures (rustls' words, as reqwest and hyper pass them on), said
/// with their fix: a private CA to trust, a host name the certificate
/// does not carry, or an endpoint whose scheme is not what it speaks.
fn explain_tls(raw: &str, hints: &Hints) -> Option<String> {
    let has = |needles: &[&str]| needles.iter().any(|n| raw.contains(n));
    let table = hints.table;
    let endpoint = hints.endpoint.as_deref().unwrap_or("");
    // The endpoint with the other scheme, for the fix.
    let swapped = |from: &str, to: &str| match endpoint.strip_prefix(from) {
        Some(rest) => format!("endpoint = \"{to}{rest}\""),
        None => format!("an {to} endpoint"),
    };
    if has(&["UnknownIssuer", "unknown issuer", "self-signed certificate", "self signed certificate"]) {
        Some(match &hints.ca_file {
            None => format!(
                "the store's TLS certificate is not trusted: no CA this host trusts signed it (a private CA?); give that CA's certificate with ca-file = \"/path/ca.pem\" in [{table}]"
            ),
            Some(f) => format!(
                "the store's TLS certificate is not trusted: neither this host's CAs nor the one in [{table}] ca-file {} signed it; put the certificate of the CA that issued the store's certificate in that file",
                f.display()
            ),
        })
    } else if has(&["not valid for name", "NotValidForName"]) {
        Some(format!(
            "the store's TLS certificate is not valid for the host name in the endpoint: write endpoint in [{table}] with a name or address the certificate carries (its subjectAltName), or have the certificate reissued for this one"
        ))
    } else if has(&[
        "certificate expired",
        "certificate not valid yet",
        "invalid peer certificate: Expired",
        "invalid peer certificate: NotValidYet",
    ]) {
        Some("the store's TLS certificate has expired or is not valid yet: renew it on the store, and check this host's clock".to_string())
    } else if has(&["InvalidContentType", "received corrupt message"]) && endpoint.starts_with("https://") {
        Some(format!(
            "the endpoint does not speak TLS (it answered in plain http): write {} in [{table}] if the store serves plain http (with allow-http = true when it is not on this host), or use the store's https port",
            swapped("https://", "http://")
        ))
    } else if has(&["HTTP request to an HTTPS server", "plain HTTP request was sent to HTTPS port"]) {
        Some(format!(
            "the endpoint speaks https, not plain http: write {} in [{table}]",
            swapped("http://", "https://")
        ))
    } else if has(&["invalid peer certificate", "certificate", "tls handshake", "TLS", "received fatal alert"]) {
        Some(format!(
            "TLS failure talking to the store: check the endpoint's certificate, its https:// or http:// scheme in [{table}] endpoint, and ca-file for a private CA"
        ))
    } else {
        None
    }
}

/// A plain http request the endpoint dropped at once, every retry: what a
/// TLS port does with one (stunnel, Ceph's beast); so might a store going
/// down, hence both fixes.
fn explain_dropped(raw: &str, hints: &Hints) -> Option<String> {
    let endpoint = hints.endpoint.as_deref()?;
    let rest = endpoint.strip_prefix("http://")?;
    ["Connection reset by peer", "connection closed before message completed"].iter().any(|n| raw.contains(n)).then(|| {
        format!(
            "the store dropped the connection as soon as the request was sent (retried): if it serves https there, write endpoint = \"https://{rest}\" in [{}]; otherwise check that the store is up, and the network",
            hints.table
        )
    })
}

impl Storage for ObjectStorage {
    fn location(&self) -> String {
        self.url.clone()
    }

    fn root_exists(&self) -> StorageResult<bool> {
        let prefix = (!self.prefix.is_empty()).then(|| ObjPath::from(self.prefix.as_str()));
        let listed =
            block_on(self.store.list_with_delimiter(prefix.as_ref())).map_err(|e| listing_error("", e, &self.hints))?;
        Ok(!listed.objects.is_empty() || !listed.common_prefixes.is_empty())
    }

    fn open(&self, path: &str) -> StorageResult<Box<dyn Read + Send>> {
        let got = block_on(self.store.get(&self.key(path))).map_err(|e| error(path, e, &self.hints))?;
        Ok(Box::new(StreamReader {
            stream: got.into_stream(),
            chunk: Bytes::new(),
            path: path.to_string(),
            hints: Arc::clone(&self.hints),
        }))
    }

    fn create(&self, key: &str, mode: Commit) -> StorageResult<Box<dyn ObjectWriter>> {
        Ok(Box::new(RemoteWriter {
            store: Arc::clone(&self.store),
            hints: Arc::clone(&self.hints),
            key: self.key(key),
            rel: key.to_string(),
            mode,
            buf: Vec::new(),
            upload: None,
            check_first: mode == Commit::NoReplace,
        }))
    }

    fn list(&self, dir: &str) -> StorageResult<Vec<Entry>> {
        let prefix = self.key(dir);
        let prefix = (!prefix.as_ref().is_empty()).then_some(prefix);
        let listed = block_on(self.store.list_with_delimiter(prefix.as_ref()))
            .map_err(|e| listing_error(dir, e, &self.hints))?;
        let name = |full: &str| self.rel(full).rsplit('/').next().unwrap_or_default().to_string();
        let mut out: Vec<Entry> = listed
            .common_prefixes
            .iter()
            .map(|p| Entry { name: name(p.as_ref()), size: 0, modified: None, is_dir: true })
            .chain(listed.objects.iter().map(|m| Entry {
                name: name(m.location.as_ref()),
                size: m.size,
                modified: Some(SystemTime::from(m.last_modified)),
                is_dir: false,
            }))
            .filter(|e| !e.name.starts_with(TEMP_PREFIX))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn size_of(&self, path: &str) -> StorageResult<Option<u64>> {
        match block_on(self.store.head(&self.key(path))) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(error(path, e, &self.hints)),
        }
    }

    fn remove(&self, path: &str) -> StorageResult<()> {
        match block_on(self.store.delete(&self.key(path))) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(error(path, e, &self.hints)),
        }
    }

    fn lock(&self, name: &str) -> StorageResult<Box<dyn LockGuard>> {
        let started = std::time::Instant::now();
        loop {
            if let Some(g) = self.try_lock(name)? {
                return Ok(g);
            }
            // A crashed holder's lease runs out after LEASE.
            if started.elapsed() > LEASE * 10 {
                return Err(StorageError::Io {
                    path: name.to_string(),
                    source: io::Error::other(format!(
                        "still held by another process after {} s (see the lease object {name})",
                        started.elapsed().as_secs()
                    )),
                });
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn try_lock(&self, name: &str) -> StorageResult<Option<Box<dyn LockGuard>>> {
        Lease::try_take(Arc::clone(&self.store), Arc::clone(&self.hints), self.key(name), name)
    }

    fn per_name_locks(&self) -> bool {
        true
    }

    fn requests_per_worker(&self) -> usize {
        // Each in flight may buffer a part (PART_SIZE) plus the codec's
        // buffers: 3 keeps a backup with --jobs 2 well under 256 MiB.
        3
    }

    fn remove_tree(&self, dir: &str) -> StorageResult<()> {
        for rel in self.list_all(dir)? {
            self.remove(&rel)?;
        }
        Ok(())
    }
}

/// Reads a GET's body stream as `Read`.
struct StreamReader {
    stream: BoxStream<'static, object_store::Result<Bytes>>,
    chunk: Bytes,
    path: String,
    hints: Arc<Hints>,
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.chunk.is_empty() {
            match block_on(self.stream.next()) {
                None => return Ok(0),
                Some(Ok(b)) => self.chunk = b,
                // A transfer that failed half way (after object_store's own
                // resumes) says nothing about the stored bytes: not `Other`,
                // which decoding reads as a corrupt object (and `wal
                // archive` would then "repair" a good one by rewriting it).
                Some(Err(e)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        format!("{}: {}", self.path, one_line(&e, &self.hints)),
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// Writes one object: a single PUT when it fits in a part, else a
/// multipart upload, one part in flight at a time.
struct RemoteWriter {
    store: Arc<dyn ObjectStore>,
    hints: Arc<Hints>,
    key: ObjPath,
    rel: String,
    mode: Commit,
    buf: Vec<u8>,
    upload: Option<Box<dyn MultipartUpload>>,
    /// No-replace: look for an existing object before uploading anything.
    check_first: bool,
}

impl RemoteWriter {
    fn exists(&self) -> io::Result<bool> {
        match block_on(self.store.head(&self.key)) {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io::Error::other(format!("{}: {}", self.rel, one_line(&e, &self.hints)))),
        }
    }

    fn send_part(&mut self) -> io::Result<()> {
        if self.upload.is_none() {
            if self.check_first && self.exists()? {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: already exists", self.rel)));
            }
            let up = block_on(self.store.put_multipart(&self.key))
                .map_err(|e| io::Error::other(format!("{}: {}", self.rel, one_line(&e, &self.hints))))?;
            self.upload = Some(up);
        }
        let part = PutPayload::from(std::mem::take(&mut self.buf));
        let up = self.upload.as_mut().expect("started above");
        block_on(up.put_part(part))
            .map_err(|e| io::Error::other(format!("{}: {}", self.rel, one_line(&e, &self.hints))))
    }
}

impl Write for RemoteWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = PART_SIZE - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == PART_SIZE {
            self.send_part()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl ObjectWriter for RemoteWriter {
    fn commit(mut self: Box<Self>) -> StorageResult<()> {
        let rel = self.rel.clone();
        let no_replace = self.mode == Commit::NoReplace;
        if no_replace && self.head_says_exists()? {
            return Err(StorageError::AlreadyExists { path: rel });
        }
        match self.upload.take() {
            None => {
                let mode = if no_replace { PutMode::Create } else { PutMode::Overwrite };
                let bytes = Bytes::from(std::mem::take(&mut self.buf));
                let opts = PutOptions { mode, ..Default::default() };
                match block_on(self.store.put_opts(&self.key, PutPayload::from(bytes.clone()), opts)) {
                    Ok(_) => Ok(()),
                    // A store configured without conditional writes: the
                    // HEAD above is the check.
                    Err(object_store::Error::NotImplemented { .. }) if no_replace => {
                        block_on(self.store.put(&self.key, PutPayload::from(bytes)))
                            .map(|_| ())
                            .map_err(|e| error(&rel, e, &self.hints))
                    }
                    Err(e) => Err(error(&rel, e, &self.hints)),
                }
            }
            Some(mut up) => {
                if !self.buf.is_empty() {
                    let part = PutPayload::from(std::mem::take(&mut self.buf));
                    if let Err(e) = block_on(up.put_part(part)) {
                        let _ = block_on(up.abort());
                        return Err(error(&rel, e, &self.hints));
                    }
                }
                block_on(up.complete()).map(|_| ()).map_err(|e| {
                    let _ = block_on(up.abort());
                    error(&rel, e, &self.hints)
                })
            }
        }
    }
}

impl RemoteWriter {
    fn head_says_exists(&self) -> StorageResult<bool> {
        self.exists().map_err(|e| StorageError::Io { path: self.rel.clone(), source: e })
    }
}

impl Drop for RemoteWriter {
    fn drop(&mut self) {
        // Uncommitted: the parts uploaded so far go.
        if let Some(mut up) = self.upload.take() {
            let _ = block_on(up.abort());
        }
    }
}

/// A lock in a store without locks: an object naming its holder and when
/// the lease ends, renewed by a thread while held, removed on release.
struct Lease {
    store: Arc<dyn ObjectStore>,
    hints: Arc<Hints>,
    key: ObjPath,
    token: String,
    /// Dropping it wakes the renewer at once (no polling).
    stop: Option<std::sync::mpsc::Sender<()>>,
    renewer: Option<std::thread::JoinHandle<()>>,
}

impl LockGuard for Lease {}

#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseBody {
    token: String,
    host: String,
    pid: u32,
    /// Seconds since the epoch.
    expires: u64,
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Lease {
    fn body(token: &str) -> PutPayload {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let b =
            LeaseBody { token: token.to_string(), host, pid: std::process::id(), expires: now_s() + LEASE.as_secs() };
        PutPayload::from(serde_json::to_vec(&b).expect("a lease serializes"))
    }

    fn read(store: &dyn ObjectStore, hints: &Hints, key: &ObjPath, rel: &str) -> StorageResult<Option<LeaseBody>> {
        let got = match block_on(store.get(key)) {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(error(rel, e, hints)),
        };
        let bytes = block_on(got.bytes()).map_err(|e| error(rel, e, hints))?;
        // An unreadable lease (torn, foreign) counts as expired.
        Ok(Some(serde_json::from_slice(&bytes).unwrap_or(LeaseBody {
            token: String::new(),
            host: String::new(),
            pid: 0,
            expires: 0,
        })))
    }

    fn try_take(
        store: Arc<dyn ObjectStore>,
        hints: Arc<Hints>,
        key: ObjPath,
        rel: &str,
    ) -> StorageResult<Option<Box<dyn LockGuard>>> {
        if let Some(held) = Self::read(store.as_ref(), &hints, &key, rel)? {
            if held.expires > now_s() {
                return Ok(None);
            }
            // Expired: its holder died. Remove it, then race for it.
            let _ = block_on(store.delete(&key));
        }
        let mut t = [0u8; 16];
        getrandom::fill(&mut t)
            .map_err(|e| StorageError::Io { path: rel.into(), source: io::Error::other(e.to_string()) })?;
        let token = hex::encode(t);
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match block_on(store.put_opts(&key, Self::body(&token), opts)) {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => {
                return Ok(None)
            }
            Err(e) => return Err(error(rel, e, &hints)),
        }
        // A store that ignores conditional writes let the last writer win:
        // the lease is ours only if it still names us.
        match Self::read(store.as_ref(), &hints, &key, rel)? {
            Some(b) if b.token == token => {}
            _ => return Ok(None),
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let renewer = {
            let (store, key, token) = (Arc::clone(&store), key.clone(), token.clone());
            std::thread::spawn(move || {
                // Renew every third of the lease until the guard goes
                // (its sender dropped: the wait ends at once).
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(LEASE / 3) {
                    let _ = block_on(store.put(&key, Self::body(&token)));
                }
            })
        };
        Ok(Some(Box::new(Lease { store, hints, key, token, stop: Some(stop), renewer: Some(renewer) })))
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(h) = self.renewer.take() {
            let _ = h.join();
        }
        // Only our own lease is removed.
        if let Ok(Some(b)) = Self::read(self.store.as_ref(), &self.hints, &self.key, self.key.as_ref()) {
            if b.token == self.token {
                let _ = block_on(self.store.delete(&self.key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(endpoint: &str, ca_file: Option<&str>) -> Hints {
        Hints { table: "s3", endpoint: Some(endpoint.into()), ca_file: ca_file.map(PathBuf::from) }
    }

    /// rustls' words, as they reach us through reqwest and object_store.
    const SENDING: &str = "Generic S3 error: Error performing GET https://127.0.0.1:9000/b/k in 1s, after 6 retries - HTTP error: error sending request: client error (Connect): ";

    #[test]
    fn tls_failures_are_said_with_their_fix() {
        let https = s3("https://127.0.0.1:9000", None);
        let said = |raw: &str, h: &Hints| explain(&format!("{SENDING}{raw}"), h).map(|(e, _)| e).unwrap_or_default();

        let e = said("invalid peer certificate: UnknownIssuer", &https);
        assert!(e.contains("not trusted") && e.contains("ca-file = \"/path/ca.pem\" in [s3]"), "{e}");
        let e = said("invalid peer certificate: UnknownIssuer", &s3("https://127.0.0.1:9000", Some("/etc/ca.pem")));
        assert!(e.contains("not trusted") && e.contains("[s3] ca-file /etc/ca.pem"), "{e}");
        let e = said("invalid peer certificate: certificate not valid for name \"s3.local\"; certificate is only valid for IpAddress(127.0.0.1)", &https);
        assert!(e.contains("not valid for the host name"), "{e}");
        let e = said("invalid peer certificate: certificate expired: verification time 2 (UNIX), but certificate is not valid after 1 (1 seconds ago)", &https);
        assert!(e.contains("expired"), "{e}");
        let e = said("received corrupt message of type InvalidContentType", &https);
        assert!(e.contains("does not speak TLS") && e.contains("endpoint = \"http://127.0.0.1:9000\" in [s3]"), "{e}");

        let http = s3("http://127.0.0.1:9000", None);
        let e = said(
            "Server returned non-2xx status code: 400 Bad Request: Client sent an HTTP request to an HTTPS server.",
            &http,
        );
        assert!(e.contains("speaks https") && e.contains("endpoint = \"https://127.0.0.1:9000\" in [s3]"), "{e}");
        let e = said("connection error: Connection reset by peer (os error 104)", &http);
        assert!(e.contains("if it serves https there, write endpoint = \"https://127.0.0.1:9000\""), "{e}");
        // Over https, a reset is just a reset.
        let e = said("connection error: Connection reset by peer (os error 104)", &https);
        assert!(e.contains("cannot reach the store"), "{e}");
    }

    #[test]
    fn store_answers_are_not_taken_for_tls_failures() {
        let h = s3("https://s3.example.com", None);
        // An expired session token is a credentials problem, not a certificate's.
        let e = explain("Client error with status 400 Bad Request: ExpiredToken: The provided token has expired.", &h);
        assert!(e.as_ref().is_none_or(|(e, _)| !e.contains("certificate")), "{e:?}");
        let (e, _) = explain("403 Forbidden: AccessDenied: Access Denied", &h).unwrap();
        assert!(e.starts_with("access denied"), "{e}");
    }

    /// What may pass by itself is temporary; what needs a fix is not.
    #[test]
    fn store_errors_say_whether_they_are_temporary() {
        let h = s3("https://s3.example.com", None);
        let temporary = |raw: &str| {
            let err =
                StorageError::Io { path: "wal/x".into(), source: io_error(&io::Error::other(raw.to_string()), &h) };
            err.is_temporary()
        };
        assert!(temporary("Server returned non-2xx status code: 503 Service Unavailable: SlowDown"));
        assert!(temporary("HTTP error: operation timed out"));
        assert!(temporary(
            "error sending request: client error (Connect): tcp connect error: Connection refused (os error 111)"
        ));
        assert!(temporary("error decoding response body: error reading a body from connection"));
        assert!(!temporary("403 Forbidden: AccessDenied: Access Denied"));
        assert!(!temporary("404 Not Found: NoSuchBucket: The specified bucket does not exist"));
        assert!(!temporary("invalid peer certificate: UnknownIssuer"));
        assert!(!temporary("something nobody has seen before"));
        // The engine's error says it too, and wal fetch still exits >125 on it.
        let e = crate::error::Error::from(StorageError::Io {
            path: "wal/x".into(),
            source: io_error(&io::Error::other("503 Service Unavailable"), &h),
        });
        assert_eq!(e.kind(), crate::error::ErrorKind::Unavailable);
        assert_eq!(e.to_string().matches("a temporary failure").count(), 1, "{e}");
    }
}
