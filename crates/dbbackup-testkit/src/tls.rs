//! A TLS front for a loopback server: `stunnel` terminating https in front
//! of a plain-http port (Garage's S3 API, say), with a certificate for
//! `127.0.0.1` from a throwaway CA made by openssl — a store behind a
//! private CA, as DBAs run MinIO, Ceph RGW or Garage.
//!
//! [`TlsFront::ca_file`] is the CA that signed the certificate,
//! [`TlsFront::other_ca_file`] an unrelated one (the "wrong CA" case). Both
//! are readable by the `postgres` OS user: archive_command and
//! restore_command run as it. The certificate names only the IP address
//! (`subjectAltName = IP:127.0.0.1`): `https://localhost:PORT` reaches the
//! same server under a name the certificate does not carry.
//!
//! stunnel and openssl come from `scripts/setup.sh`. The front runs under
//! the stores' lifeline wrapper (see [`crate::stores`]): killed, and its
//! files removed, on drop or when the test process dies.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::stores::{listening, port_clash, tail, Proc};
use crate::{chown_to_run_user, free_port, Cmd, TestDir};

/// How long stunnel may take to listen.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// stunnel terminating TLS on a free loopback port and relaying to
/// `127.0.0.1:<target>`. Killed and removed on drop.
#[derive(Debug)]
pub struct TlsFront {
    // Fields drop in order: the process before its files.
    proc: Proc,
    port: u16,
    target: u16,
    log: PathBuf,
    ca: PathBuf,
    other_ca: PathBuf,
    dir: TestDir,
}

/// `openssl ARGS` in `dir`; panics with its output on failure.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Cmd::new("openssl").as_root().current_dir(dir).args(args).output();
    assert!(
        out.status == 0,
        "openssl {} failed (exit {}): {}{} (is openssl installed? run scripts/setup.sh)",
        args.join(" "),
        out.status,
        out.stdout,
        out.stderr
    );
}

/// A self-signed CA: `NAME.key` and `NAME.pem` in `dir`.
fn make_ca(dir: &Path, name: &str, cn: &str) {
    let (key, pem) = (format!("{name}.key"), format!("{name}.pem"));
    openssl(
        dir,
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", cn, "-keyout", &key, "-out", &pem],
    );
}

impl TlsFront {
    /// Starts stunnel in front of `127.0.0.1:target`, with fresh
    /// certificates.
    pub fn start(target: u16) -> TlsFront {
        let dir = TestDir::new();
        // As scripts/bench.sh makes them: a CA, and a server certificate
        // for the IP address (rustls matches IP addresses against IP SANs
        // only), signed by it.
        make_ca(dir.path(), "ca", "/CN=dbbackup-testkit-ca");
        make_ca(dir.path(), "other-ca", "/CN=dbbackup-testkit-other-ca");
        openssl(
            dir.path(),
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
            ],
        );
        dir.write(
            "ext.cnf",
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        );
        openssl(
            dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                "tls.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                "ext.cnf",
                "-out",
                "tls.crt",
            ],
        );
        // The CA files go to the run-as user (mode 0644 from openssl): the
        // server's archive_command reads them. The keys stay root's.
        let (ca, other_ca) = (dir.join("ca.pem"), dir.join("other-ca.pem"));
        chown_to_run_user(&ca);
        chown_to_run_user(&other_ca);

        let log = dir.join("stunnel.log");
        let conf = dir.join("stunnel.conf");
        for attempt in 1..=3 {
            let port = free_port();
            let text = format!(
                "foreground = yes\npid =\ndebug = notice\n[front]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{target}\ncert = {cert}\nkey = {key}\n",
                cert = dir.join("tls.crt").display(),
                key = dir.join("tls.key").display(),
            );
            std::fs::write(&conf, text).unwrap_or_else(|e| panic!("write {}: {e}", conf.display()));
            let args = vec![conf.display().to_string()];
            let mut proc = Proc::spawn("stunnel", Path::new("stunnel"), &args, &log, dir.path());
            let start = Instant::now();
            let up = loop {
                if !proc.running() {
                    break false;
                }
                if listening(port) {
                    break true;
                }
                if start.elapsed() > READY_TIMEOUT {
                    break false;
                }
                std::thread::sleep(Duration::from_millis(50));
            };
            if up {
                return TlsFront { proc, port, target, log, ca, other_ca, dir };
            }
            drop(proc);
            if !(port_clash(&log) && attempt < 3) {
                panic!(
                    "stunnel did not start (attempt {attempt}; is it installed? run scripts/setup.sh); its log {}:\n{}",
                    log.display(),
                    tail(&log, 40)
                );
            }
        }
        unreachable!()
    }

    /// The port stunnel accepts TLS on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The plain-http port it relays to.
    pub fn target(&self) -> u16 {
        self.target
    }

    /// `https://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The CA that signed the server's certificate (PEM), readable by the
    /// run-as user.
    pub fn ca_file(&self) -> &Path {
        &self.ca
    }

    /// A CA that did not sign it (PEM), readable by the run-as user.
    pub fn other_ca_file(&self) -> &Path {
        &self.other_ca
    }

    /// How many client connections stunnel accepted (its readiness probe
    /// not counted): whether anything went through the front.
    pub fn connections(&self) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        log.lines().filter(|l| l.contains("accepted connection")).count().saturating_sub(1)
    }

    /// Kills stunnel now (the https endpoint vanishes); `Drop` then only
    /// removes the files.
    pub fn stop(&mut self) {
        self.proc.kill();
    }

    /// The end of stunnel's log, for failure messages.
    pub fn log_tail(&self) -> String {
        format!("--- stunnel ({})\n{}", self.log.display(), tail(&self.log, 30))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}
