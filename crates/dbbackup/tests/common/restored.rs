//! A restored server started by `restore pitr --auto-start --monitor`, for
//! the restore tests: its report, SQL on it, and a stop on drop.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::*;

/// How long a restored server may take to archive or reach a state.
pub const WAIT: Duration = Duration::from_secs(120);

/// The rows of `t`, ordered, comma-separated.
pub const ROWS: &str = "SELECT coalesce(string_agg(i::text, ',' ORDER BY i), '') FROM t";

/// A restore run with `--auto-start --monitor`; the restored server is
/// stopped (immediate) on drop, panics included.
pub struct Restored {
    pub out: Output,
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub port: u16,
    pub bindir: PathBuf,
}

impl Restored {
    pub fn describe(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("restore.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect();
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}\n--- restore.log (tail)\n{}",
            self.out.status,
            self.out.stdout,
            self.out.stderr,
            tail.join("\n")
        )
    }

    /// Asserts exit 0 and returns the `--json` report.
    pub fn ok(&self) -> Value {
        assert_eq!(self.out.status, 0, "restore failed:\n{}", self.describe());
        serde_json::from_str(&self.out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.describe()))
    }

    /// Asserts exit 0, a promoted server with the target reached; returns the report.
    pub fn promoted(&self) -> Value {
        let v = self.ok();
        assert_eq!(v["recovery"]["state"], "promoted", "{}", self.describe());
        assert_eq!(v["recovery"]["target_reached"], true, "{}", self.describe());
        assert!(self.out.stderr.contains("recovery promoted: timeline"), "{}", self.describe());
        assert!(self.out.stderr.contains("target reached"), "{}", self.describe());
        v
    }

    pub fn sql_ok(&self, q: &str) -> Result<String, String> {
        psql(Cmd::new(self.bindir.join("psql")), &self.sock, self.port, q)
    }

    pub fn sql(&self, q: &str) -> String {
        self.sql_ok(q).unwrap_or_else(|e| panic!("SQL failed on the restored server: {q}\n{e}\n{}", self.describe()))
    }

    pub fn rows(&self) -> String {
        self.sql(ROWS)
    }

    pub fn wait_for(&self, q: &str, want: &str) {
        let start = std::time::Instant::now();
        let mut last = Err(String::new());
        while start.elapsed() < WAIT {
            last = self.sql_ok(q);
            if last.as_deref() == Ok(want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("{q} did not return {want:?} (last {last:?})\n{}", self.describe());
    }

    /// Finishes the restored server's current segment and waits until its
    /// archiver reports it archived; returns its name.
    pub fn finish_wal(&self) -> String {
        self.sql("SELECT txid_current()");
        let name = self.sql("SELECT pg_walfile_name(pg_switch_wal())");
        let start = Instant::now();
        loop {
            let last = self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            if last.len() >= 24 && last >= name {
                return name;
            }
            assert!(start.elapsed() < WAIT, "{name} not archived by the restored server:\n{}", self.describe());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the repository holds an object for WAL file `name`,
    /// which this server archives; fails at once when archiving it failed.
    pub fn wait_object(&self, repo: &Path, name: &str) -> PathBuf {
        let start = Instant::now();
        let prefix = format!("{name}.");
        loop {
            let found =
                wal_objects(repo).into_iter().find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix));
            if let Some(p) = found {
                return p;
            }
            let failed = self.sql("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver");
            assert_ne!(failed, name, "archiving {name} failed:\n{}", self.describe());
            assert!(start.elapsed() < WAIT, "{name} never reached {}:\n{}", repo.display(), self.describe());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop(&self) {
        if self.dir.join("postmaster.pid").exists() {
            let _ = Cmd::new(self.bindir.join("pg_ctl"))
                .arg("-D")
                .arg(&self.dir)
                .args(["-w", "-t", "60", "-m", "immediate", "stop"])
                .output();
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `restore pitr --json --auto-start --monitor --port <free> --repo R
/// --target-dir D <args>` for the source cluster `c` (whose socket
/// directory the restored server inherits).
pub fn restore(c: &Cluster, repo: &Path, dir: &Path, args: &[&str]) -> Restored {
    restore_env(c, repo, dir, args, &[])
}

pub fn restore_env(c: &Cluster, repo: &Path, dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> Restored {
    let port = free_port();
    let mut cmd = dbb(["restore", "pitr", "--json", "--auto-start", "--monitor", "--repo"]);
    cmd.arg(repo).arg("--target-dir").arg(dir).args(["--port", &port.to_string()]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.timeout(Duration::from_secs(300)).output();
    Restored { out, dir: dir.to_path_buf(), sock: c.socket_dir().to_path_buf(), port, bindir: c.bindir() }
}

/// `backup base --fast`, full unless `extra` gives `--type` (the tests that
/// use it are about full backups; chains are incremental.rs's); returns the
/// backup ID (the last stdout line).
pub fn backup(c: &Cluster, repo: &Path, extra: &[&str]) -> String {
    let full: &[&str] = if extra.contains(&"--type") { &[] } else { &["--type", "full"] };
    let out = dbb(["backup", "base", "--fast", "--repo"])
        .arg(repo)
        .args(c.conn_args())
        .args(full)
        .args(extra)
        .assert_success();
    out.stdout.lines().last().expect("backup ID on stdout").trim().to_string()
}

/// Finishes the current segment of `c` and waits until it is archived.
pub fn finish_wal(c: &Cluster) -> String {
    let name = c.switch_wal();
    c.wait_archived(&name, WAIT);
    name
}
