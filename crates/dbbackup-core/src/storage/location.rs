//! Where a repository is: `--repo` parsed into a location, and the
//! settings (config file tables `[s3]`, `[gcs]`, `[azure]`, then the
//! stores' standard environment variables) that open it.
//!
//! Secrets are read from the config file or from files it names, or from
//! the environment; never from the command line. A secret file others can
//! read is refused, as a key file is.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use object_store::client::{HttpConnector, ReqwestConnector};
use object_store::{Certificate, ClientOptions, RetryConfig};
use serde::Deserialize;

use super::remote::{Hints, ObjectStorage};
use super::{LocalStorage, Storage};
use crate::error::{Error, Result};

/// A parsed `--repo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
    Gcs { bucket: String, prefix: String },
    Azure { container: String, prefix: String },
}

impl Location {
    /// Parses a location: a path (made absolute against `cwd`), `file://`,
    /// `s3://`, `gs://` or `az://` (`azure://` too).
    pub fn parse(s: &str, cwd: &Path) -> Result<Location> {
        let bucket_prefix = |rest: &str, scheme: &str| -> Result<(String, String)> {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(Error::invalid(format!(
                    "repository location {s:?} names no bucket: write {scheme}://BUCKET[/PREFIX]"
                )));
            }
            Ok((bucket.to_string(), prefix.trim_matches('/').to_string()))
        };
        if let Some(rest) = s.strip_prefix("s3://") {
            let (bucket, prefix) = bucket_prefix(rest, "s3")?;
            return Ok(Location::S3 { bucket, prefix });
        }
        if let Some(rest) = s.strip_prefix("gs://") {
            let (bucket, prefix) = bucket_prefix(rest, "gs")?;
            return Ok(Location::Gcs { bucket, prefix });
        }
        if let Some(rest) = s.strip_prefix("az://").or_else(|| s.strip_prefix("azure://")) {
            let (container, prefix) = bucket_prefix(rest, "az")?;
            return Ok(Location::Azure { container, prefix });
        }
        let path = match s.strip_prefix("file://") {
            Some(p) if p.starts_with('/') => PathBuf::from(p),
            Some(_) => {
                return Err(Error::invalid(format!("repository location {s:?}: a file:// URL needs an absolute path")))
            }
            None => {
                if let Some((scheme, _)) = s.split_once("://") {
                    return Err(Error::invalid(format!(
                        "repository location {s:?}: unknown scheme {scheme}:// (use a path, file://, s3://, gs:// or az://)"
                    )));
                }
                // `s3:/b/p`, `s3:b/p`, `s3//b/p`: a URL mistyped, which as
                // a relative path would quietly keep WAL on this host.
                let first = s.split('/').next().unwrap_or_default();
                let scheme_like = |w: &str| {
                    w.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                        && w.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
                };
                let known = ["s3", "gs", "az", "azure", "file"];
                let mangled = first.split_once(':').is_some_and(|(w, _)| scheme_like(w))
                    || (known.contains(&first.to_ascii_lowercase().as_str()) && s[first.len()..].starts_with("//"));
                if mangled {
                    return Err(Error::invalid(format!(
                        "repository location {s:?} looks like a mistyped URL: write s3://BUCKET[/PREFIX] (gs://, az://), or ./{s} for a local directory of that name"
                    )));
                }
                PathBuf::from(s)
            }
        };
        Ok(Location::Local(if path.is_absolute() { path } else { cwd.join(path) }))
    }

    /// The local directory, for a local repository.
    pub fn local_path(&self) -> Option<&Path> {
        match self {
            Location::Local(p) => Some(p),
            _ => None,
        }
    }

    pub fn is_object_store(&self) -> bool {
        !matches!(self, Location::Local(_))
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = |f: &mut std::fmt::Formatter<'_>, scheme: &str, b: &str, p: &str| {
            if p.is_empty() {
                write!(f, "{scheme}://{b}")
            } else {
                write!(f, "{scheme}://{b}/{p}")
            }
        };
        match self {
            Location::Local(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, prefix } => url(f, "s3", bucket, prefix),
            Location::Gcs { bucket, prefix } => url(f, "gs", bucket, prefix),
            Location::Azure { container, prefix } => url(f, "az", container, prefix),
        }
    }
}

/// `[s3]` in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub secret_access_key_file: Option<PathBuf>,
    pub session_token: Option<String>,
    /// Plain http to an endpoint that is not on this host.
    pub allow_http: Option<bool>,
    /// Seconds one request may take before it counts as failed (and is
    /// retried); default [`REQUEST_TIMEOUT`].
    pub request_timeout: Option<u64>,
    /// PEM file of CA certificates trusted for the endpoint, in addition
    /// to the system's: a store behind a private CA.
    pub ca_file: Option<PathBuf>,
}

/// `[gcs]` in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GcsSettings {
    pub service_account_file: Option<PathBuf>,
    /// An emulator's base URL (fake-gcs-server).
    pub endpoint: Option<String>,
    /// As in `[s3]`.
    pub request_timeout: Option<u64>,
    /// As in `[s3]`.
    pub ca_file: Option<PathBuf>,
}

/// `[azure]` in the config file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AzureSettings {
    pub account: Option<String>,
    pub access_key: Option<String>,
    pub access_key_file: Option<PathBuf>,
    pub sas_token: Option<String>,
    pub sas_token_file: Option<PathBuf>,
    pub endpoint: Option<String>,
    pub use_emulator: Option<bool>,
    /// As in `[s3]`.
    pub request_timeout: Option<u64>,
    /// As in `[s3]`.
    pub ca_file: Option<PathBuf>,
}

/// Every store's settings, as the config file gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreSettings {
    pub s3: S3Settings,
    pub gcs: GcsSettings,
    pub azure: AzureSettings,
}

/// Reads a secret from a file only its owner can read.
fn secret_file(path: &Path, what: &str) -> Result<String> {
    let unreadable = |e: std::io::Error| Error::invalid(format!("cannot read {what} file {}: {e}", path.display()));
    if let Some(e) = crate::secret::exposure(path).map_err(unreadable)? {
        return Err(Error::invalid(crate::secret::refusal(&format!("{what} file"), path, e, "")));
    }
    Ok(std::fs::read_to_string(path).map_err(unreadable)?.trim().to_string())
}

/// Whether an http:// endpoint stays on this host.
fn loopback(endpoint: &str) -> bool {
    let host = endpoint.trim_start_matches("http://").split(['/', ':']).next().unwrap_or_default();
    host == "localhost" || host == "[" || host.starts_with("127.") || endpoint.starts_with("http://[::1]")
}

/// An endpoint the HTTP client can use: `http(s)://HOST[:PORT][/PATH]`
/// with nothing around it. Checked here because the store client takes a
/// malformed one for granted and fails on the first request in ways that
/// read as "not found" (exit codes PostgreSQL would misread).
fn check_endpoint(e: &str, table: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(Error::invalid(format!(
            "[{table}] endpoint {e:?} {why}: write it as https://HOST[:PORT] (or http://127.0.0.1:PORT for a store on this host)"
        )))
    };
    if e.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("holds a space or a control character");
    }
    let Some(rest) = e.strip_prefix("https://").or_else(|| e.strip_prefix("http://")) else {
        return bad("does not start with https:// or http://");
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, tail)) => (h, tail.strip_prefix(':')),
            None => return bad("has an unclosed [ in its host"),
        },
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    if host.is_empty() || host.contains('@') {
        return bad("names no host");
    }
    if port.is_some_and(|p| !p.parse::<u16>().is_ok_and(|p| p > 0)) {
        return bad("has a port that is not a number from 1 to 65535");
    }
    Ok(())
}

/// A region name as stores write them (`us-east-1`, `garage`, `fr-par`).
fn check_region(r: &str) -> Result<()> {
    if r.is_empty() || !r.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(Error::invalid(format!(
            "[s3] region {r:?} is not a region name (letters, digits, - _ . only; e.g. us-east-1)"
        )));
    }
    Ok(())
}

fn check_http(endpoint: &str, allow: bool, table: &str) -> Result<bool> {
    check_endpoint(endpoint, table)?;
    if !endpoint.starts_with("http://") {
        return Ok(false);
    }
    if !loopback(endpoint) && !allow {
        return Err(Error::invalid(format!(
            "[{table}] endpoint {endpoint} is plain http to another host: credentials and data would cross the network unencrypted; use https, or set allow-http = true in [{table}] if the network is trusted"
        )));
    }
    Ok(true)
}

/// How long one request may take, unless `request-timeout` says.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long connecting may take (at most the request timeout).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `plain_only`: every request goes to a plain http endpoint (no https
/// for credentials either): the system's trust store, which takes longer
/// to load than a WAL call's requests take, is not loaded.
fn client_options(http: bool, timeout: Duration, roots: &[Certificate], plain_only: bool) -> ClientOptions {
    let o = ClientOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .with_allow_http(http)
        .with_no_system_certificates(plain_only);
    // Added to the system's roots (rustls-platform-verifier with extra
    // roots): a private CA for this store, public CAs still trusted.
    roots.iter().cloned().fold(o, |o, c| o.with_root_certificate(c))
}

/// The certificates of a table's `ca-file`. Not a secret: any mode will do.
fn ca_certificates(path: Option<&Path>, table: &str) -> Result<Vec<Certificate>> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let what = format!("[{table}] ca-file {}", path.display());
    let pem = std::fs::read(path).map_err(|e| {
        // archive_command and restore_command run in the data directory.
        let fix = if path.is_relative() {
            "write an absolute path (a relative one is read from the current directory: the data directory, for archive_command)"
        } else {
            "check the path, and that the user running dbbackup (for archive_command, the PostgreSQL OS user) can read it"
        };
        Error::invalid(format!("{what} cannot be read: {e}; {fix}"))
    })?;
    let not_pem = |why: &str| {
        Error::invalid(format!(
            "{what} {why}: it must hold the CA's certificate (or several) in PEM form, each between -----BEGIN CERTIFICATE----- and -----END CERTIFICATE----- lines (convert a DER file with `openssl x509 -inform der -in ca.der -out ca.pem`)"
        ))
    };
    match Certificate::from_pem_bundle(&pem) {
        Ok(c) if c.is_empty() => Err(not_pem("holds no PEM certificate")),
        Ok(c) => Ok(c),
        Err(_) => Err(not_pem("is not a valid PEM certificate file")),
    }
}

/// Why a store client could not be built: a `ca-file` whose certificates
/// do not parse as X.509 is said as such (only checked after a failure:
/// building a client reads the system's roots again).
fn build_error(
    url: &str,
    roots: &[Certificate],
    ca_file: Option<&PathBuf>,
    table: &str,
    e: object_store::Error,
) -> Error {
    if let Some(f) = ca_file.filter(|_| !roots.is_empty()) {
        if let Err(bad) = ReqwestConnector::default().connect(&client_options(false, REQUEST_TIMEOUT, roots, false)) {
            // reqwest says "builder error" and keeps rustls' reason below.
            let mut why = bad.to_string();
            let mut src = std::error::Error::source(&bad);
            while let Some(c) = src {
                why = format!("{why}: {c}");
                src = c.source();
            }
            return Error::invalid(format!(
                "[{table}] ca-file {}: a certificate in it is not a valid X.509 CA certificate ({why}): put the CA's PEM certificate there, as `openssl x509 -in FILE -noout -text` can read it",
                f.display()
            ));
        }
    }
    let raw = e.to_string();
    if raw.contains("Invalid Access Key") {
        return Error::invalid(format!(
            "repository {url}: the [{table}] access-key is not a valid account key (base64): copy the storage account's key again ({raw})"
        ));
    }
    Error::invalid(format!("repository {url}: {raw}"))
}

/// `request-timeout` (seconds) of a table, checked.
fn request_timeout(secs: Option<u64>, table: &str) -> Result<Duration> {
    match secs {
        None => Ok(REQUEST_TIMEOUT),
        Some(0) => Err(Error::invalid(format!(
            "[{table}] request-timeout = 0: a request needs at least 1 second; remove the setting for the default of {} s",
            REQUEST_TIMEOUT.as_secs()
        ))),
        Some(s) => Ok(Duration::from_secs(s)),
    }
}

/// Retries of temporary failures (5xx, timeouts, resets), with backoff,
/// inside a bounded time: then the error is final.
fn retry() -> RetryConfig {
    RetryConfig { max_retries: 6, retry_timeout: Duration::from_secs(60), ..Default::default() }
}

/// Opens the repository written as `repo` (a path or a URL, as it appears
/// in archive_command or a report).
pub fn open_path(repo: &Path, settings: &StoreSettings) -> Result<Arc<dyn Storage>> {
    open_storage(&Location::parse(&repo.to_string_lossy(), Path::new("/"))?, settings)
}

/// Opens the storage behind a location.
pub fn open_storage(loc: &Location, settings: &StoreSettings) -> Result<Arc<dyn Storage>> {
    let url = loc.to_string();
    match loc {
        Location::Local(p) => Ok(Arc::new(LocalStorage::new(p))),
        Location::S3 { bucket, prefix } => {
            let s = &settings.s3;
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
            let mut http = false;
            // The standard variables, checked like the table's setting.
            let endpoint = s.endpoint.clone().or_else(|| {
                ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"].iter().find_map(|v| std::env::var(v).ok())
            });
            if let Some(e) = &endpoint {
                http = check_http(e, s.allow_http.unwrap_or(false), "s3")?;
                b = b.with_endpoint(e);
            }
            let region = s
                .region
                .clone()
                .or_else(|| ["AWS_REGION", "AWS_DEFAULT_REGION"].iter().find_map(|v| std::env::var(v).ok()));
            if let Some(r) = &region {
                check_region(r)?;
                b = b.with_region(r);
            }
            if let Some(v) = s.path_style {
                b = b.with_virtual_hosted_style_request(!v);
            }
            if let Some(k) = &s.access_key_id {
                b = b.with_access_key_id(k);
            }
            let secret = match (&s.secret_access_key, &s.secret_access_key_file) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(f)) => Some(secret_file(f, "[s3] secret-access-key")?),
                _ => None,
            };
            // Static keys: no credential request goes anywhere else.
            let static_keys = s.access_key_id.is_some() && secret.is_some();
            if let Some(v) = secret {
                b = b.with_secret_access_key(v);
            }
            if let Some(t) = &s.session_token {
                b = b.with_token(t);
            }
            let timeout = request_timeout(s.request_timeout, "s3")?;
            let roots = ca_certificates(s.ca_file.as_deref(), "s3")?;
            let store = b
                .with_client_options(client_options(http, timeout, &roots, http && static_keys))
                .with_retry(retry())
                .build()
                .map_err(|e| build_error(&url, &roots, s.ca_file.as_ref(), "s3", e))?;
            let hints = Hints { table: "s3", endpoint, ca_file: s.ca_file.clone() };
            Ok(Arc::new(ObjectStorage::new(Arc::new(store), prefix, url, hints)))
        }
        Location::Gcs { bucket, prefix } => {
            let s = &settings.gcs;
            let mut b = object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket);
            let mut http = false;
            if let Some(e) = &s.endpoint {
                http = check_http(e, false, "gcs")?;
                b = b.with_base_url(e.trim_end_matches('/'));
            }
            if let Some(f) = &s.service_account_file {
                secret_file(f, "[gcs] service-account")?;
                b = b.with_service_account_path(f.display().to_string());
            }
            let roots = ca_certificates(s.ca_file.as_deref(), "gcs")?;
            let store = b
                .with_client_options(client_options(http, request_timeout(s.request_timeout, "gcs")?, &roots, false))
                .with_retry(retry())
                .build()
                .map_err(|e| build_error(&url, &roots, s.ca_file.as_ref(), "gcs", e))?;
            let hints = Hints { table: "gcs", endpoint: s.endpoint.clone(), ca_file: s.ca_file.clone() };
            Ok(Arc::new(ObjectStorage::new(Arc::new(store), prefix, url, hints)))
        }
        Location::Azure { container, prefix } => {
            let s = &settings.azure;
            let mut b = object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(container);
            let mut http = false;
            if let Some(a) = &s.account {
                b = b.with_account(a);
            }
            let key = match (&s.access_key, &s.access_key_file) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(f)) => Some(secret_file(f, "[azure] access-key")?),
                _ => None,
            };
            if let Some(k) = key {
                b = b.with_access_key(k);
            }
            let sas = match (&s.sas_token, &s.sas_token_file) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(f)) => Some(secret_file(f, "[azure] sas-token")?),
                _ => None,
            };
            if let Some(t) = sas {
                let pairs: Vec<(String, String)> = t
                    .trim_start_matches('?')
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                b = b.with_sas_authorization(pairs);
            }
            // An explicit endpoint (an emulator's account URL,
            // http://127.0.0.1:10000/devstoreaccount1) wins: object_store's
            // emulator mode reads its URL only from the environment.
            if let Some(e) = &s.endpoint {
                http = check_http(e, false, "azure")?;
                b = b.with_endpoint(e.clone()).with_allow_http(http);
            } else if s.use_emulator.unwrap_or(false) {
                b = b.with_use_emulator(true);
                http = true;
            }
            let roots = ca_certificates(s.ca_file.as_deref(), "azure")?;
            let store = b
                .with_client_options(client_options(http, request_timeout(s.request_timeout, "azure")?, &roots, false))
                .with_retry(retry())
                .build()
                .map_err(|e| build_error(&url, &roots, s.ca_file.as_ref(), "azure", e))?;
            let hints = Hints { table: "azure", endpoint: s.endpoint.clone(), ca_file: s.ca_file.clone() };
            Ok(Arc::new(ObjectStorage::new(Arc::new(store), prefix, url, hints)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_print_back() {
        let cwd = Path::new("/home/pg");
        for (s, want) in [
            ("/backups/pg", Location::Local("/backups/pg".into())),
            ("rel/repo", Location::Local("/home/pg/rel/repo".into())),
            ("file:///backups/pg", Location::Local("/backups/pg".into())),
            ("s3://bucket", Location::S3 { bucket: "bucket".into(), prefix: "".into() }),
            ("s3://bucket/main/pg/", Location::S3 { bucket: "bucket".into(), prefix: "main/pg".into() }),
            ("gs://b/p", Location::Gcs { bucket: "b".into(), prefix: "p".into() }),
            ("az://c/p", Location::Azure { container: "c".into(), prefix: "p".into() }),
        ] {
            assert_eq!(Location::parse(s, cwd).unwrap(), want, "{s}");
        }
        assert_eq!(Location::parse("s3://bucket/main/", cwd).unwrap().to_string(), "s3://bucket/main");
        for bad in ["s3://", "ftp://x/y", "file://relative", "gs:///p"] {
            let e = Location::parse(bad, cwd).unwrap_err().to_string();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn plain_http_only_on_loopback_unless_allowed() {
        assert!(check_http("http://127.0.0.1:3900", false, "s3").unwrap());
        assert!(check_http("http://localhost:3900", false, "s3").unwrap());
        assert!(!check_http("https://s3.example.com", false, "s3").unwrap());
        let e = check_http("http://10.0.0.5:3900", false, "s3").unwrap_err().to_string();
        assert!(e.contains("allow-http"), "{e}");
        assert!(check_http("http://10.0.0.5:3900", true, "s3").unwrap());
    }

    #[test]
    fn mistyped_urls_and_endpoints_are_refused() {
        for bad in ["s3:/b/p", "s3:b/p", "s3//b/p", "S3:/b", "gs:/b", "az:/c/p", "file:/x"] {
            let e = Location::parse(bad, Path::new("/w")).unwrap_err().to_string();
            assert!(e.contains("looks like a mistyped URL"), "{bad}: {e}");
        }
        for ok in ["./s3:/b", "/tmp/s3:/b", "backups/pg", "s3", "s3/pg"] {
            assert!(matches!(Location::parse(ok, Path::new("/w")), Ok(Location::Local(_))), "{ok}");
        }
        for bad in [
            "127.0.0.1:39010",
            "localhost",
            "http:/127.0.0.1:1",
            " http://h",
            "http://h ",
            "",
            "http://h:99999",
            "http://h:x",
            "https://:80",
            "http://[::1",
        ] {
            let e = check_endpoint(bad, "s3").unwrap_err().to_string();
            assert!(e.contains("[s3] endpoint") && e.contains("https://HOST[:PORT]"), "{bad}: {e}");
        }
        for ok in ["http://127.0.0.1:39010", "https://s3.example.com", "https://h:443/base", "http://[::1]:9000"] {
            check_endpoint(ok, "s3").unwrap();
        }
        assert!(check_region("eu-west-3").is_ok() && check_region("garage").is_ok());
        assert!(check_region("eu\nwest").is_err() && check_region("").is_err() && check_region("a b").is_err());
    }

    #[test]
    fn request_timeout_defaults_and_refuses_zero() {
        assert_eq!(request_timeout(None, "s3").unwrap(), REQUEST_TIMEOUT);
        assert_eq!(request_timeout(Some(5), "s3").unwrap(), Duration::from_secs(5));
        let e = request_timeout(Some(0), "s3").unwrap_err().to_string();
        assert!(e.contains("[s3] request-timeout = 0"), "{e}");
    }

    /// An S3 location whose `[s3]` names `ca_file` (no request is made:
    /// the client is only built).
    fn open_with_ca(ca_file: &Path) -> Result<Arc<dyn Storage>> {
        let mut settings = StoreSettings::default();
        settings.s3.endpoint = Some("https://127.0.0.1:1".into());
        settings.s3.region = Some("garage".into());
        settings.s3.ca_file = Some(ca_file.to_path_buf());
        open_storage(&Location::S3 { bucket: "b".into(), prefix: "p".into() }, &settings)
    }

    #[test]
    fn a_bad_ca_file_is_named_with_its_fault() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, body).unwrap();
            p
        };
        let missing = dir.path().join("missing.pem");
        let text = write("text.pem", "not a certificate\n");
        let junk = write("junk.pem", "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n");
        for (file, why) in [
            (&missing, "cannot be read"),
            (&text, "holds no PEM certificate"),
            (&junk, "is not a valid X.509 CA certificate"),
        ] {
            let e = open_with_ca(file).unwrap_err().to_string();
            assert!(e.contains(&format!("[s3] ca-file {}", file.display())) && e.contains(why), "{e}");
            assert!(!e.contains('\n'), "{e}");
        }
        let e = open_with_ca(Path::new("ca.pem")).unwrap_err().to_string();
        assert!(e.contains("write an absolute path"), "{e}");
    }
}
