//! Talking to PostgreSQL: connection options as libpq tools take them, and
//! the questions dbbackup asks a server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};

/// How to reach the server (flags, then PG* variables, as libpq does).
#[derive(Debug, Clone, Default)]
pub struct ConnOptions {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub user: Option<String>,
    pub dbname: Option<String>,
    pub password: Option<String>,
    pub passfile: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
}

impl ConnOptions {
    /// The socket directory or host name used when none is given.
    fn effective_host(&self) -> String {
        if let Some(h) = &self.host {
            return h.clone();
        }
        // libpq's compiled-in default differs by distribution; Debian's is
        // /var/run/postgresql, upstream's /tmp.
        for dir in ["/var/run/postgresql", "/tmp"] {
            if Path::new(dir).is_dir() {
                return dir.to_string();
            }
        }
        "/tmp".to_string()
    }

    fn effective_port(&self) -> u16 {
        self.port.unwrap_or(5432)
    }

    fn effective_user(&self) -> String {
        self.user.clone().or_else(|| std::env::var("USER").ok()).unwrap_or_else(|| "postgres".to_string())
    }

    /// "host /tmp port 5432 user postgres" for messages.
    pub fn describe(&self) -> String {
        let host = self.effective_host();
        let what = if host.starts_with('/') { "socket directory" } else { "host" };
        format!("{what} {host} port {} user {}", self.effective_port(), self.effective_user())
    }

    fn password_for(&self, host: &str, port: u16, db: &str, user: &str) -> Option<String> {
        if let Some(p) = &self.password {
            return Some(p.clone());
        }
        let file =
            self.passfile.clone().or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".pgpass")))?;
        let text = std::fs::read_to_string(file).ok()?;
        let host_key = if host.starts_with('/') { "localhost" } else { host };
        text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
            let f = split_pgpass(l);
            if f.len() != 5 {
                return None;
            }
            let m = |pat: &str, v: &str| pat == "*" || pat == v;
            (m(&f[0], host_key) && m(&f[1], &port.to_string()) && m(&f[2], db) && m(&f[3], user)).then(|| f[4].clone())
        })
    }

    /// Connects, with an error naming where and why it failed.
    pub fn connect(&self) -> Result<postgres::Client> {
        let host = self.effective_host();
        let port = self.effective_port();
        let user = self.effective_user();
        let db = self.dbname.clone().unwrap_or_else(|| user.clone());
        let mut cfg = postgres::Config::new();
        if host.starts_with('/') {
            cfg.host_path(&host);
        } else {
            cfg.host(&host);
        }
        cfg.port(port).user(&user).dbname(&db).application_name("dbbackup");
        cfg.connect_timeout(self.connect_timeout.unwrap_or(Duration::from_secs(10)));
        if let Some(p) = self.password_for(&host, port, &db, &user) {
            cfg.password(p);
        }
        cfg.connect(postgres::NoTls).map_err(|e| {
            Error::server(format!("cannot connect to PostgreSQL at {}: {}", self.describe(), error_text(&e)))
        })
    }
}

/// Splits a .pgpass line on unescaped colons.
fn split_pgpass(line: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.last_mut().expect("one field").push(n);
                }
            }
            ':' => out.push(String::new()),
            c => out.last_mut().expect("one field").push(c),
        }
    }
    out
}

/// The full text of a client error, including the server's message and the
/// underlying I/O cause, which `Display` alone omits.
pub fn error_text(e: &postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{}: {}", db.severity(), db.message());
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    s
}

/// A server's identity, as the repository records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerIdentity {
    pub system_identifier: u64,
    pub major_version: u32,
    pub wal_segment_size: u32,
}

/// Asks the server who it is.
pub fn server_identity(client: &mut postgres::Client) -> Result<ServerIdentity> {
    let q = "SELECT (SELECT system_identifier FROM pg_control_system())::text, \
             current_setting('server_version_num')::int, \
             (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size')::bigint";
    let row = client
        .query_one(q, &[])
        .map_err(|e| Error::server(format!("cannot read the server's identity: {}", error_text(&e))))?;
    let sysid: String = row.get(0);
    let num: i32 = row.get(1);
    let seg: i64 = row.get(2);
    Ok(ServerIdentity {
        system_identifier: sysid
            .parse()
            .map_err(|_| Error::server(format!("server returned system identifier {sysid:?}")))?,
        major_version: (num / 10000) as u32,
        wal_segment_size: seg as u32,
    })
}

/// The server's data directory (`SHOW data_directory`: superusers and
/// pg_read_all_settings members). archive_command runs there.
pub fn data_directory(client: &mut postgres::Client) -> Result<std::path::PathBuf> {
    client
        .query_one("SHOW data_directory", &[])
        .map(|r| std::path::PathBuf::from(r.get::<_, String>(0)))
        .map_err(|e| Error::server(format!("cannot read data_directory: {}", error_text(&e))))
}

/// Runs `pg_ctl <action> -D <data_dir> ... -l <log>` and turns a failure into
/// an error that carries pg_ctl's own words.
pub fn run_pg_ctl(pg_ctl: &Path, action: &str, data_dir: &Path, extra: &[&str], log: &Path) -> Result<()> {
    let out = std::process::Command::new(pg_ctl)
        .arg(action)
        .arg("-D")
        .arg(data_dir)
        .args(extra)
        .arg("-l")
        .arg(log)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::server(format!("cannot run {}: {e}", pg_ctl.display())))?;
    if !out.status.success() {
        return Err(Error::server(format!(
            "{} {action} failed: {} {}",
            pg_ctl.display(),
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}
