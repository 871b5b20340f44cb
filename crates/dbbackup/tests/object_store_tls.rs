//! A store behind https with a certificate from a private CA (Garage behind
//! the testkit's stunnel front, as DBAs run MinIO, Ceph RGW or Garage):
//! trusted through `ca-file` in `[s3]`, by archive_command and
//! restore_command too; and every TLS mistake said in words with its fix —
//! an untrusted certificate, the wrong CA, a host name the certificate
//! does not carry, a ca-file that is missing or not PEM, an https URL to a
//! plain-http port and the reverse. `wal fetch` stops recovery (128) on
//! all of them, never "not archived".

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dbbackup_testkit::stores::Garage;

/// Garage's plain-http S3 port.
fn s3_port(g: &Garage) -> u16 {
    g.endpoint().rsplit(':').next().unwrap().parse().unwrap()
}

/// Garage with the TLS front before it.
fn garage_behind_tls() -> (Garage, TlsFront) {
    let g = Garage::single();
    let tls = TlsFront::start(s3_port(&g));
    (g, tls)
}

/// A config for `s3://BUCKET/PREFIX` through `endpoint`, with `extra`
/// lines appended to `[s3]`.
fn s3_config(d: &TestDir, g: &Garage, name: &str, prefix: &str, endpoint: &str, extra: &str) -> PathBuf {
    let body = g.config_toml(prefix).replace(&g.endpoint(), endpoint) + extra;
    private_file(d, name, body)
}

fn ca_line(ca: &Path) -> String {
    format!("ca-file = \"{}\"\n", ca.display())
}

/// `repo init` fails with exit 1 and one line containing every `want`;
/// `wal fetch` fails with 128 (recovery stops) for the same cause.
fn init_and_fetch_say(cfg: &Path, d: &TestDir, want: &[&str]) {
    let out = with_config(cfg, &["repo", "init"]).assert_code(1);
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
    for w in want {
        assert!(out.stderr.contains(w), "repo init: want {w:?} in:\n{}", out.stderr);
    }
    let out = with_config(cfg, &["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).assert_code(128);
    for w in want {
        assert!(out.stderr.contains(w), "wal fetch: want {w:?} in:\n{}", out.stderr);
    }
}

/// The whole path through a private CA: archive_command, a base backup,
/// wal verify, and a restore whose restore_command reads the same config.
#[test]
fn archive_backup_restore_through_a_private_ca() {
    let (g, tls) = garage_behind_tls();
    let d = TestDir::new();
    let cfg = s3_config(&d, &g, "dbbackup.toml", "pg", &tls.endpoint(), &ca_line(tls.ca_file()));
    let c = cluster_on(PgVersion::V15, &cfg);
    c.sql("CREATE TABLE t(i int)");
    make_archived_segment(&c);
    with_config(&cfg, &["backup", "base", "--fast"]).args(c.conn_args()).assert_success();
    c.sql("INSERT INTO t VALUES (1), (2)");
    finish_wal(&c);
    with_config(&cfg, &["wal", "verify"]).assert_success();
    let dir = d.join("restored");
    let r = restore_on(&cfg, &c, &dir, &[]);
    r.promoted();
    assert_eq!(r.rows(), "1,2", "{}", r.describe());
    assert!(tls.connections() > 0, "not through the TLS front:\n{}", tls.log_tail());
}

/// No ca-file, another CA's, a host name the certificate does not carry:
/// each said with its fix; nothing is created in the bucket.
#[test]
fn an_untrusted_certificate_is_said_with_the_fix() {
    let (g, tls) = garage_behind_tls();
    let d = TestDir::new();

    let none = s3_config(&d, &g, "none.toml", "p", &tls.endpoint(), "");
    init_and_fetch_say(
        &none,
        &d,
        &["the store's TLS certificate is not trusted", "ca-file = \"/path/ca.pem\" in [s3]"],
    );

    let other = tls.other_ca_file().display().to_string();
    let wrong = s3_config(&d, &g, "wrong.toml", "p", &tls.endpoint(), &ca_line(tls.other_ca_file()));
    init_and_fetch_say(&wrong, &d, &["the store's TLS certificate is not trusted", &format!("[s3] ca-file {other}")]);

    // The certificate names 127.0.0.1 only.
    let name = tls.endpoint().replace("127.0.0.1", "localhost");
    let by_name = s3_config(&d, &g, "name.toml", "p", &name, &ca_line(tls.ca_file()));
    init_and_fetch_say(&by_name, &d, &["not valid for the host name in the endpoint", "\"localhost\""]);

    // Nothing was created: the prefix is still empty.
    let ok = s3_config(&d, &g, "ok.toml", "p", &tls.endpoint(), &ca_line(tls.ca_file()));
    let out = with_config(&ok, &["repo", "info"]).assert_code(1);
    assert!(out.stderr.contains("does not exist"), "{}", out.stderr);
}

/// A ca-file that cannot be read, holds no certificate, or holds junk
/// between the PEM lines: one line naming the key and the file, before any
/// request; `wal fetch` stops recovery.
#[test]
fn a_bad_ca_file_is_one_line_naming_it() {
    let (g, tls) = garage_behind_tls();
    let d = TestDir::new();
    let missing = d.join("no-such-ca.pem");
    let text = d.write("notes.pem", "this is not a certificate\n");
    let key_only =
        d.write("key.pem", "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n");
    let junk = d.write("junk.pem", "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n");
    for (file, why) in [
        (&missing, "cannot be read"),
        (&text, "holds no PEM certificate"),
        (&key_only, "holds no PEM certificate"),
        (&junk, "is not a valid X.509 CA certificate"),
    ] {
        let cfg = s3_config(&d, &g, "cfg.toml", "p", &tls.endpoint(), &ca_line(file));
        let named = format!("[s3] ca-file {}", file.display());
        let out = with_config(&cfg, &["repo", "init"]).assert_code(1);
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.stderr);
        assert!(out.stderr.contains(&named) && out.stderr.contains(why), "{}: {}", file.display(), out.stderr);
        let out = with_config(&cfg, &["wal", "fetch", "000000010000000000000001"]).arg(d.join("x")).assert_code(128);
        assert!(out.stderr.contains(&named) && out.stderr.contains(why), "{}: {}", file.display(), out.stderr);
    }
    assert_eq!(tls.connections(), 0, "a request was sent:\n{}", tls.log_tail());
}

/// The endpoint's scheme not what the port speaks, either way round.
#[test]
fn the_wrong_scheme_is_said_with_the_fix() {
    let (g, tls) = garage_behind_tls();
    let d = TestDir::new();
    // https to Garage's plain-http port.
    let plain = g.endpoint();
    let https = s3_config(&d, &g, "https.toml", "p", &plain.replace("http://", "https://"), "");
    init_and_fetch_say(&https, &d, &["the endpoint does not speak TLS", &format!("endpoint = \"{plain}\" in [s3]")]);
    // http to the TLS port (loopback: no allow-http needed).
    let http = s3_config(&d, &g, "http.toml", "p", &tls.endpoint().replace("https://", "http://"), "");
    init_and_fetch_say(&http, &d, &[&format!("write endpoint = \"{}\" in [s3]", tls.endpoint())]);
}
