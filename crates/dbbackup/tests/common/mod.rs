//! Shared helpers for the binary's integration tests: the built binary as
//! the PostgreSQL OS user runs it, and clusters that archive with it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use dbbackup_testkit::*;

mod restored;
#[allow(unused_imports)] // not every test binary restores
pub use restored::*;

/// The built `dbbackup`, copied where the `postgres` user can run it.
pub fn bin() -> PathBuf {
    install_bin(Path::new(env!("CARGO_BIN_EXE_dbbackup")))
}

/// A command running `dbbackup` with `args`.
pub fn dbb<I, S>(args: I) -> Cmd
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let mut c = Cmd::new(bin());
    c.args(args);
    c
}

pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

/// A started cluster whose archive_command is `dbbackup wal archive %p %f
/// --repo <repo> <extra>`.
pub fn archiving_cluster(version: PgVersion, segsize_mb: Option<u32>, repo: &Path, extra: &str) -> Cluster {
    let mut opts = ClusterOptions::new(version);
    opts.wal_segsize_mb = segsize_mb;
    opts.extra_conf = vec!["archive_mode = on".into(), archive_command_line(repo, extra)];
    Cluster::new(opts)
}

pub fn archive_command_line(repo: &Path, extra: &str) -> String {
    format!("archive_command = '{} wal archive %p %f --repo {} {extra}'", bin().display(), repo.display())
}

/// Writes some rows and finishes a segment; returns its name once archived.
pub fn make_archived_segment(c: &Cluster) -> String {
    c.sql("CREATE TABLE IF NOT EXISTS filler(i int, t text); INSERT INTO filler SELECT g, md5(g::text) FROM generate_series(1, 2000) g");
    let name = c.switch_wal();
    c.wait_archived(&name, Duration::from_secs(60));
    name
}

/// BLAKE3 of a file, as b3sum prints it: the checksum dbbackup records.
pub fn b3_file(p: &Path) -> String {
    blake3::hash(&std::fs::read(p).unwrap()).to_hex().to_string()
}

/// SHA-256 of a file, as sha256sum prints it (to compare contents).
pub fn sha256_file(p: &Path) -> String {
    let out = Cmd::new("sha256sum").arg(p).as_root().assert_success();
    out.stdout.split_whitespace().next().unwrap().to_string()
}

/// Every stored object file under the repository's wal/ directory.
pub fn wal_objects(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let wal = repo.join("wal");
    if let Ok(dirs) = std::fs::read_dir(&wal) {
        for d in dirs.flatten() {
            for f in std::fs::read_dir(d.path()).unwrap().flatten() {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// The stored object for WAL file `name`.
pub fn object_for(repo: &Path, name: &str) -> PathBuf {
    wal_objects(repo)
        .into_iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&format!("{name}.")))
        .unwrap_or_else(|| panic!("no object for {name} in {}", repo.display()))
}

/// Writes a key file (mode 0600) owned by the run-as user; returns its path.
pub fn key_file(dir: &TestDir, name: &str, hex_byte: u8) -> PathBuf {
    private_file(dir, name, format!("{}\n", format!("{hex_byte:02x}").repeat(32)))
}

/// A repository holding two timelines of one cluster, made as a DBA would
/// by hand: a cluster archiving on timeline 1, a `pg_basebackup` copy of it
/// recovered from the archive through `dbbackup wal fetch` and promoted
/// (timeline 2), archiving into the same repository. The original is
/// stopped; the promoted copy keeps running.
pub struct TwoTimelines {
    pub repo_dir: TestDir,
    pub repo: PathBuf,
    pub original: Cluster,
    pub promoted: Cluster,
    /// Segments archived on timeline 1 (in order).
    pub tl1: Vec<String>,
    /// Segments archived on timeline 2 (in order).
    pub tl2: Vec<String>,
}

pub fn two_timelines(version: PgVersion, segsize_mb: Option<u32>, extra: &str) -> TwoTimelines {
    let repo_dir = TestDir::new();
    let repo = repo_dir.join("repo");
    let original = archiving_cluster(version, segsize_mb, &repo, extra);
    let mut tl1 = vec![make_archived_segment(&original), make_archived_segment(&original)];
    let copy = TestDir::new();
    original.base_backup_into(&copy);
    for _ in 0..3 {
        tl1.push(make_archived_segment(&original));
    }
    original.stop();
    let promoted = Cluster::adopt(
        version,
        copy,
        vec![
            "archive_mode = on".into(),
            archive_command_line(&repo, extra),
            format!("restore_command = '{} wal fetch %f %p --repo {} {extra}'", bin().display(), repo.display()),
        ],
    );
    promoted.dir().write("data/recovery.signal", "");
    promoted.start();
    promoted.wait_for("SELECT pg_is_in_recovery()", "f", Duration::from_secs(120));
    promoted.wait_for(
        "SELECT substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8)",
        "00000002",
        Duration::from_secs(60),
    );
    let tl2 = vec![make_archived_segment(&promoted), make_archived_segment(&promoted)];
    TwoTimelines { repo_dir, repo, original, promoted, tl1, tl2 }
}

/// `wal archive PATH [NAME] --repo REPO`, as PostgreSQL's archive_command runs it.
pub fn archive_cmd(path: &Path, name: Option<&str>, repo: &Path) -> Cmd {
    let mut c = dbb(["wal", "archive"]);
    c.arg(path);
    if let Some(n) = name {
        c.arg(n);
    }
    c.arg("--repo").arg(repo);
    c
}

/// `pitr ARGS` against cluster `c`.
pub fn pitr(c: &Cluster, args: &[&str]) -> Cmd {
    let mut cmd = dbb(["pitr"]);
    cmd.args(args).args(c.conn_args());
    cmd
}

/// The findings of a `pitr status --json` report, one per line.
pub fn findings(v: &serde_json::Value) -> String {
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("{}: {}", f["level"], f["message"]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Writes a file only its owner (the run-as user) can read, as key files
/// must be; returns its path.
pub fn private_file(dir: &TestDir, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.write(name, contents);
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

// Object-store repositories: every command names the repository through
// a config file (`--config`), as archive_command does.

/// A cluster whose archive_command is `dbbackup wal archive %p %f --config FILE`.
pub fn cluster_on(version: PgVersion, cfg: &Path) -> Cluster {
    let mut opts = ClusterOptions::new(version);
    opts.extra_conf = vec![
        "archive_mode = on".into(),
        format!("archive_command = '{} wal archive %p %f --config {}'", bin().display(), cfg.display()),
    ];
    Cluster::new(opts)
}

/// `dbbackup ARGS --config CFG`.
pub fn with_config(cfg: &Path, args: &[&str]) -> Cmd {
    let mut c = dbb(args);
    c.arg("--config").arg(cfg);
    c
}

/// `restore pitr --json --auto-start --monitor <args>` of `c`'s repository
/// (named by the config file) into `dir`, on a free port.
pub fn restore_on(cfg: &Path, c: &Cluster, dir: &Path, args: &[&str]) -> Restored {
    let port = free_port();
    let out = with_config(cfg, &["restore", "pitr", "--json", "--auto-start", "--monitor"])
        .args(args)
        .arg("--target-dir")
        .arg(dir)
        .args(["--port", &port.to_string()])
        .timeout(std::time::Duration::from_secs(300))
        .output();
    Restored { out, dir: dir.to_path_buf(), sock: c.socket_dir().to_path_buf(), port, bindir: c.bindir() }
}
