//! What an `archive_command` does, read from its text: whether it runs
//! dbbackup's `wal archive`, into which repository, and whether the
//! command's exit status is dbbackup's. PostgreSQL removes a segment once
//! archive_command exits 0, so a shape that turns dbbackup's failure into
//! success (`... || true`) loses WAL without a trace.
//!
//! Only what can be read for certain is claimed: a command that does not
//! run dbbackup directly (a wrapper script, another tool) or that uses
//! shell syntax beyond simple command lists is [`CommandShape::Opaque`],
//! and callers prove archiving with a real segment instead of guessing.

use std::path::{Path, PathBuf};

use dbbackup_format::guc::{shell_join, shell_tokens, ShellToken};

use crate::storage::location::StoreSettings;

/// One `dbbackup ... wal archive ...` inside an archive_command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Invocation {
    /// The simple command as written (for messages).
    pub text: String,
    /// The program it runs (resolved against the data directory when
    /// relative with a slash; a bare name is looked up in the server's PATH).
    pub program: String,
    /// The repository it archives into, when the text says.
    pub repo: Option<PathBuf>,
    /// Where `repo` came from: `--repo`, `DBBACKUP_REPO`, or the config
    /// file's `repo`.
    pub repo_source: Option<String>,
    /// Why the repository cannot be read from the text (a variable the
    /// shell expands, an unreadable config file, none given).
    pub repo_unknown: Option<String>,
    /// The key file it reads.
    pub key_file: Option<PathBuf>,
    /// It accepts a key file others can read (`--allow-shared-key-file`).
    pub allow_shared_key_file: bool,
    /// The config file it reads (`--config`, `DBBACKUP_CONFIG`): where an
    /// object-store repository's settings are.
    pub config: Option<PathBuf>,
    /// It archives asynchronously (`--async`): a worker pushes ahead and
    /// keeps its queue in a spool.
    #[serde(rename = "async")]
    pub async_archive: bool,
    /// `--spool-dir` (else the data directory's `dbbackup_spool`).
    pub spool_dir: Option<PathBuf>,
    /// `--jobs`.
    pub jobs: Option<String>,
}

/// What an archive_command is, as far as its text shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandShape {
    /// Empty (or `(disabled)`): nothing is archived.
    Empty,
    /// Runs dbbackup's `wal archive`, and fails when it fails.
    Dbbackup(Vec<Invocation>),
    /// Runs dbbackup's `wal archive`, but can exit 0 when it failed (or
    /// without running it): PostgreSQL would then drop a segment the
    /// repository never got.
    Swallowing {
        invocations: Vec<Invocation>,
        /// Why, naming the part of the command that does it.
        reason: String,
        /// What to change.
        fix: String,
    },
    /// Does not run dbbackup directly (a wrapper script, another tool) or
    /// cannot be read: neither accepted nor refused by its text.
    Opaque { reason: String },
}

impl CommandShape {
    /// The dbbackup invocations (none for `Empty` and `Opaque`).
    pub fn invocations(&self) -> &[Invocation] {
        match self {
            CommandShape::Dbbackup(i) | CommandShape::Swallowing { invocations: i, .. } => i,
            _ => &[],
        }
    }

    /// Whether the command is dbbackup's own (possibly in a swallowing
    /// shape): `pitr enable` and `pitr disable` may replace it.
    pub fn is_dbbackup(&self) -> bool {
        !self.invocations().is_empty()
    }

    /// The repositories named in the text.
    pub fn repos(&self) -> Vec<PathBuf> {
        self.invocations().iter().filter_map(|i| i.repo.clone()).collect()
    }

    /// The first key file named in the text.
    pub fn key_file(&self) -> Option<PathBuf> {
        self.invocations().iter().find_map(|i| i.key_file.clone())
    }

    /// Whether the command accepts a shared key file (a read-only secret mount).
    pub fn allows_shared_key_file(&self) -> bool {
        self.invocations().iter().any(|i| i.allow_shared_key_file)
    }
}

/// Reads an archive_command. `cwd` is the directory the server runs it in
/// (its data directory): relative paths are resolved against it.
pub fn analyze_archive_command(cmd: &str, cwd: Option<&Path>) -> CommandShape {
    let cmd_t = cmd.trim();
    if cmd_t.is_empty() || cmd_t == "(disabled)" {
        return CommandShape::Empty;
    }
    let tokens = match shell_tokens(cmd_t) {
        Ok(t) => t,
        Err(why) => return CommandShape::Opaque { reason: format!("its shell syntax ({why}) cannot be read here") },
    };
    // Simple commands and the operator after each.
    let mut cmds: Vec<(Vec<Word>, Option<&'static str>)> = Vec::new();
    let mut words = Vec::new();
    for t in tokens {
        match t {
            ShellToken::Word { text, expands } => words.push((text, expands)),
            ShellToken::Redirect(_) => {}
            ShellToken::Op(op) => cmds.push((std::mem::take(&mut words), Some(op))),
        }
    }
    cmds.push((words, None));
    // Empty commands are fine around `;` (blank lines, a trailing `;`),
    // a syntax error next to `&&`, `||`, `|` (PostgreSQL's shell says so).
    for i in 0..cmds.len() {
        let prev = if i == 0 { None } else { cmds[i - 1].1 };
        if cmds[i].0.is_empty()
            && (matches!(cmds[i].1, Some("&&" | "||" | "|")) || matches!(prev, Some("&&" | "||" | "|")))
        {
            return CommandShape::Opaque { reason: "its shell syntax (an empty command) cannot be read here".into() };
        }
    }
    let ops: Vec<Option<&str>> = cmds.iter().map(|c| c.1).collect();
    let text_of = |i: usize| shell_join(&cmds[i].0.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>());

    let mut invocations = Vec::new();
    let mut swallow: Option<(String, String)> = None;
    let mut other_programs = Vec::new();
    for (k, (words, _)) in cmds.iter().enumerate() {
        if words.is_empty() {
            continue;
        }
        let parsed = match parse_simple(words, cwd) {
            Simple::Invocation(inv, exec) => (*inv, exec),
            Simple::Other(program) => {
                other_programs.push(program);
                continue;
            }
            Simple::Unreadable(why) => return CommandShape::Opaque { reason: why },
        };
        let (inv, exec) = parsed;
        if swallow.is_none() {
            swallow = swallowed(k, exec, &ops, &text_of, &inv.text);
        }
        invocations.push(inv);
    }
    if invocations.is_empty() {
        let reason = match other_programs.first() {
            Some(p) if other_programs.len() == 1 => format!("it runs {p}, not dbbackup's `wal archive`"),
            Some(_) => format!("it runs {}, not dbbackup's `wal archive`", other_programs.join(", ")),
            None => "it runs no program".into(),
        };
        return CommandShape::Opaque { reason };
    }
    match swallow {
        Some((reason, fix)) => CommandShape::Swallowing { invocations, reason, fix },
        None => CommandShape::Dbbackup(invocations),
    }
}

/// Whether the dbbackup at simple command `k` can fail while the whole
/// command exits 0 (or be skipped while it exits 0): the reason and the
/// fix. `&&` and `||` bind left to right with equal precedence; a
/// pipeline's status is its last command's; `;`, `&` and newlines
/// separate lists, and the last list's status is the command's.
fn swallowed(
    k: usize,
    exec: bool,
    ops: &[Option<&str>],
    text_of: &dyn Fn(usize) -> String,
    me: &str,
) -> Option<(String, String)> {
    let n = ops.len();
    let after = ops[k];
    let rest = |from: usize| {
        let mut parts = Vec::new();
        for (i, op) in ops.iter().enumerate().take(n).skip(from) {
            let t = text_of(i);
            if !t.is_empty() {
                parts.push(t);
            }
            if let Some(op) = op {
                if i + 1 < n {
                    parts.push(op.to_string());
                }
            }
        }
        parts.join(" ").trim_end_matches([';', ' ']).to_string()
    };
    if after == Some("|") {
        let next = text_of(k + 1);
        return Some((
            format!("`{me} | {next}` is a pipeline, whose exit status is its last command's ({next}), not dbbackup's"),
            format!("run dbbackup alone (redirect its output with `>>FILE 2>&1` instead of `| {next}`)"),
        ));
    }
    if after == Some("&") {
        return Some((
            format!("`{me} &` runs dbbackup in the background: the command exits at once, before the segment is stored and whatever dbbackup's result (in /bin/sh, `&>` is `&` then `>`)"),
            "remove the `&` (redirect output with `>FILE 2>&1`)".into(),
        ));
    }
    // The start of the pipeline dbbackup ends, and the operator before it.
    let mut start = k;
    while start > 0 && ops[start - 1] == Some("|") {
        start -= 1;
    }
    if start > 0 && ops[start - 1] == Some("||") {
        let before = text_of(start - 1);
        return Some((
            format!("`{before} || {me}` runs dbbackup only when `{before}` fails: when it succeeds, PostgreSQL takes the segment as archived without dbbackup"),
            format!("run dbbackup unconditionally (`{before} && ...`, or dbbackup alone: it handles duplicates itself)"),
        ));
    }
    // `exec` replaces the shell: nothing after it runs (and a failed exec
    // ends a non-interactive shell with an error). Not inside a pipeline,
    // whose commands run in subshells.
    if exec && start == k {
        return None;
    }
    // The rest of dbbackup's and-or list, then anything after it.
    let mut i = k;
    while let Some(op) = ops[i] {
        match op {
            "||" => {
                let tail = rest(i + 1);
                return Some((
                    format!("`|| {tail}` runs when dbbackup fails, and the command's exit status is then that of `{tail}`: a failed archive reads as success to PostgreSQL, which removes the segment"),
                    format!("remove `|| {tail}` from archive_command"),
                ));
            }
            "&&" | "|" => i += 1,
            ";" | "&" => {
                let tail = rest(i + 1);
                if tail.is_empty() {
                    return None;
                }
                if op == "&" {
                    return Some((
                        format!(
                            "`... & {tail}` runs dbbackup's part of the command in the background: its result is lost"
                        ),
                        "remove the `&`".into(),
                    ));
                }
                return Some((
                    format!("`; {tail}` runs after dbbackup whatever its result, and the command's exit status is that of `{tail}`, not dbbackup's"),
                    format!("join with `&&` instead of `;` (`dbbackup ... && {tail}`), or remove `; {tail}`"),
                ));
            }
            _ => return None,
        }
        if i >= ops.len() {
            return None;
        }
    }
    None
}

/// A word and whether the shell expands it.
type Word = (String, bool);

enum Simple {
    /// dbbackup's `wal archive`; whether it is `exec`ed.
    Invocation(Box<Invocation>, bool),
    /// Another program (its name).
    Other(String),
    /// Not a command this module can read.
    Unreadable(String),
}

fn is_assignment(w: &str) -> bool {
    w.split_once('=').is_some_and(|(name, _)| {
        let mut c = name.chars();
        c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
    })
}

/// Whether `program` is dbbackup: a program named dbbackup*, or this
/// very binary under another name.
fn is_dbbackup_program(program: &str) -> bool {
    let p = Path::new(program);
    if p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("dbbackup")) {
        return true;
    }
    let own = std::env::current_exe().ok().and_then(|p| p.canonicalize().ok());
    own.is_some() && p.canonicalize().ok() == own
}

/// Options of the dbbackup CLI that take a value as the next word.
const VALUE_OPTIONS: &[&str] = &[
    "--repo",
    "--archive-dir",
    "--wal-archive",
    "--config",
    "-h",
    "--host",
    "-p",
    "--port",
    "-U",
    "--user",
    "-d",
    "--dbname",
    "-D",
    "--pgdata",
    "--encryption-key-file",
    "--encryption-key-env",
    "--compress-level",
    "--spool-dir",
    "--jobs",
    "-j",
];
const REPO_OPTIONS: &[&str] = &["--repo", "--archive-dir", "--wal-archive"];

fn parse_simple(words: &[Word], cwd: Option<&Path>) -> Simple {
    const SHELL_WORDS: &[&str] =
        &["if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac", "{", "}", "!"];
    let mut i = 0;
    let mut env: Vec<(String, String, bool)> = Vec::new();
    let mut exec = false;
    loop {
        let Some((w, expands)) = words.get(i) else {
            return Simple::Other("only variable assignments".into());
        };
        if is_assignment(w) {
            let (k, v) = w.split_once('=').expect("an assignment");
            env.push((k.to_string(), v.to_string(), *expands));
        } else if w == "exec" && i == 0 {
            exec = true;
        } else if w == "env" {
            // `env VAR=x program`; env's options change too much to follow.
            if words.get(i + 1).is_some_and(|(n, _)| n.starts_with('-')) {
                return Simple::Other("env with options".into());
            }
        } else {
            break;
        }
        i += 1;
    }
    let (program, expands) = &words[i];
    if SHELL_WORDS.contains(&program.as_str()) {
        return Simple::Unreadable(format!("its shell syntax (`{program}`) cannot be read here"));
    }
    if *expands || !is_dbbackup_program(program) {
        return Simple::Other(program.clone());
    }
    let args = &words[i + 1..];
    let mut positionals = Vec::new();
    let mut repo: Option<(String, bool, String)> = None;
    let mut config: Option<(String, bool)> = None;
    let mut key_file: Option<(String, bool)> = None;
    let mut allow_shared_key_file = false;
    let mut async_archive = false;
    let mut spool_dir: Option<(String, bool)> = None;
    let mut jobs: Option<String> = None;
    let mut j = 0;
    let mut only_positionals = false;
    while j < args.len() {
        let (w, expands) = &args[j];
        j += 1;
        if only_positionals || !w.starts_with('-') || w == "-" {
            positionals.push(w.clone());
            continue;
        }
        if w == "--" {
            only_positionals = true;
            continue;
        }
        let (name, value) = match w.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_string(), Some((v.to_string(), *expands))),
            _ if VALUE_OPTIONS.contains(&w.as_str()) => {
                let v = args.get(j).cloned();
                j += 1;
                (w.clone(), v)
            }
            _ => (w.clone(), None),
        };
        allow_shared_key_file |= name == "--allow-shared-key-file";
        async_archive |= name == "--async";
        let Some(value) = value else { continue };
        if REPO_OPTIONS.contains(&name.as_str()) {
            repo = Some((value.0, value.1, name));
        } else if name == "--config" {
            config = Some(value);
        } else if name == "--encryption-key-file" {
            key_file = Some(value);
        } else if name == "--spool-dir" {
            spool_dir = Some(value);
        } else if name == "--jobs" || name == "-j" {
            jobs = Some(value.0);
        }
    }
    if positionals.len() < 2 || positionals[0] != "wal" || positionals[1] != "archive" {
        let sub = positionals.iter().take(2).cloned().collect::<Vec<_>>().join(" ");
        return Simple::Other(format!("{program} {sub}").trim().to_string());
    }
    let resolve = |p: &str| {
        let url = p.contains("://");
        let p = PathBuf::from(p);
        match cwd {
            // An object-store URL is not a relative path.
            Some(d) if p.is_relative() && !url => d.join(p),
            _ => p,
        }
    };
    let from_env = |name: &str| env.iter().rev().find(|(k, _, _)| k == name).map(|(_, v, e)| (v.clone(), *e));
    let program_path = if program.contains('/') { resolve(program).display().to_string() } else { program.clone() };
    let mut inv = Invocation {
        text: shell_join(&words.iter().map(|(w, _)| w.as_str()).collect::<Vec<_>>()),
        program: program_path,
        repo: None,
        repo_source: None,
        repo_unknown: None,
        key_file: None,
        allow_shared_key_file,
        config: None,
        async_archive,
        spool_dir: spool_dir.filter(|(_, expands)| !expands).map(|(v, _)| resolve(&v)),
        jobs,
    };
    let expanded = |what: &str, v: &str| format!("{what} {v} holds a variable the shell expands");
    // As the CLI reads them: flag, then environment, then config file.
    if let Some((v, expands, flag)) = repo {
        if expands {
            inv.repo_unknown = Some(expanded(&flag, &v));
        } else {
            inv.repo = Some(resolve(&v));
            inv.repo_source = Some(flag);
        }
    } else if let Some((v, expands)) = from_env("DBBACKUP_REPO") {
        if expands {
            inv.repo_unknown = Some(expanded("DBBACKUP_REPO", &v));
        } else {
            inv.repo = Some(resolve(&v));
            inv.repo_source = Some("DBBACKUP_REPO".into());
        }
    }
    if let Some((v, expands)) = &key_file {
        if !expands {
            inv.key_file = Some(resolve(v));
        }
    }
    let config = config.or_else(|| from_env("DBBACKUP_CONFIG"));
    if let Some((v, false)) = &config {
        inv.config = Some(resolve(v));
    }
    match config {
        Some((v, true)) if inv.repo.is_none() && inv.repo_unknown.is_none() => {
            inv.repo_unknown = Some(expanded("config file", &v));
        }
        Some((v, false)) if (inv.repo.is_none() && inv.repo_unknown.is_none()) || inv.key_file.is_none() => {
            let file = resolve(&v);
            match read_config(&file) {
                Ok((r, k, _)) => {
                    if inv.repo.is_none() && inv.repo_unknown.is_none() {
                        match r {
                            Some(r) => {
                                inv.repo = Some(resolve(&r));
                                inv.repo_source = Some(format!("repo in config file {}", file.display()));
                            }
                            None => inv.repo_unknown = Some(format!("config file {} has no `repo`", file.display())),
                        }
                    }
                    if inv.key_file.is_none() {
                        inv.key_file = k.map(|k| resolve(&k));
                    }
                }
                Err(e) if inv.repo.is_none() && inv.repo_unknown.is_none() => inv.repo_unknown = Some(e),
                Err(_) => {}
            }
        }
        _ => {}
    }
    if inv.repo.is_none() && inv.repo_unknown.is_none() {
        inv.repo_unknown = Some(
            "it names no repository (no --repo, DBBACKUP_REPO or --config): the server's environment decides".into(),
        );
    }
    Simple::Invocation(Box::new(inv), exec)
}

/// `repo`, `encryption-key-file` and the store tables of a dbbackup config file.
fn read_config(file: &Path) -> std::result::Result<(Option<String>, Option<String>, StoreSettings), String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("config file {} cannot be read here: {e}", file.display()))?;
    let table: toml::Table = toml::from_str(&text)
        .map_err(|e| format!("config file {} is not valid TOML: {}", file.display(), e.to_string().trim_end()))?;
    let get = |keys: &[&str]| keys.iter().find_map(|k| table.get(*k).and_then(|v| v.as_str()).map(str::to_string));
    fn store<T: serde::de::DeserializeOwned + Default>(t: &toml::Table, name: &str) -> T {
        t.get(name).and_then(|v| v.clone().try_into().ok()).unwrap_or_default()
    }
    let stores = StoreSettings { s3: store(&table, "s3"), gcs: store(&table, "gcs"), azure: store(&table, "azure") };
    Ok((get(&["repo", "archive-dir", "wal-archive"]), get(&["encryption-key-file"]), stores))
}

/// The ID of the repository an invocation archives into, read from its
/// metadata with the invocation's own settings (its config file's store
/// tables); `None` when there is none or it cannot be read from here.
pub fn invocation_repo_id(inv: &Invocation) -> Option<String> {
    let repo = inv.repo.as_ref()?;
    let mut stores = match &inv.config {
        Some(c) => read_config(c).ok()?.2,
        None => StoreSettings::default(),
    };
    // A lookup, not the archive: an unreachable store must not hold a
    // status report for minutes.
    for t in [&mut stores.s3.request_timeout, &mut stores.gcs.request_timeout, &mut stores.azure.request_timeout] {
        *t = Some(t.unwrap_or(LOOKUP_TIMEOUT_SECS).min(LOOKUP_TIMEOUT_SECS));
    }
    let storage = crate::storage::location::open_path(repo, &stores).ok()?;
    crate::repo::Repository::read_meta(storage.as_ref()).ok()?.id
}

const LOOKUP_TIMEOUT_SECS: u64 = 10;

/// The store settings an invocation reads from its config file (`None`:
/// it names none, or the file cannot be read from here).
pub fn invocation_stores(inv: &Invocation) -> Option<StoreSettings> {
    read_config(inv.config.as_ref()?).ok().map(|c| c.2)
}

/// Whether an invocation archives into the repository at `location`, whose
/// metadata ID is `id` (`None`: no repository there yet).
///
/// A repository is who its ID says: the same directory reached through
/// another path (`file://`, a bind mount) is the same repository, and the
/// same `s3://` text in a config file for another endpoint is not. When
/// the invocation's repository cannot be read from here, the locations are
/// compared as written.
pub fn archives_into(inv: &Invocation, location: &Path, id: Option<&str>) -> bool {
    let Some(named) = &inv.repo else { return false };
    let same_text = same_location(named, location);
    // One local directory holds one repository: no need to read it twice.
    if same_text && !named.to_string_lossy().contains("://") {
        return true;
    }
    match (id, invocation_repo_id(inv)) {
        (Some(ours), Some(theirs)) => ours == theirs,
        // Theirs exists where ours does not: another store.
        (None, Some(_)) => false,
        _ => same_text,
    }
}

/// Whether two repository locations are the same directory (through
/// symlinks and relative paths).
pub fn same_location(a: &Path, b: &Path) -> bool {
    // Object-store URLs compare as parsed (`s3://b/p/` is `s3://b/p`).
    let url = |p: &Path| {
        let s = p.to_string_lossy();
        s.contains("://")
            .then(|| crate::storage::location::Location::parse(&s, Path::new("/")).ok().map(|l| l.to_string()))
            .flatten()
    };
    if let (Some(x), Some(y)) = (url(a), url(b)) {
        return x == y;
    }
    let canon =
        |p: &Path| p.canonicalize().unwrap_or_else(|_| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    a == b || canon(a) == canon(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(cmd: &str) -> CommandShape {
        analyze_archive_command(cmd, Some(Path::new("/data")))
    }

    fn repo(cmd: &str) -> Option<PathBuf> {
        match shape(cmd) {
            CommandShape::Dbbackup(i) => i[0].repo.clone(),
            other => panic!("{cmd}: {other:?}"),
        }
    }

    fn swallow_reason(cmd: &str) -> String {
        match shape(cmd) {
            CommandShape::Swallowing { reason, .. } => reason,
            other => panic!("{cmd}: {other:?}"),
        }
    }

    #[test]
    fn accepted_shapes_name_their_repository() {
        let r = Some(PathBuf::from("/backups/pg"));
        assert_eq!(repo("/usr/bin/dbbackup wal archive %p %f --repo /backups/pg"), r);
        assert_eq!(repo("/usr/bin/dbbackup wal archive %p %f --archive-dir=/backups/pg --compress=lz4"), r);
        assert_eq!(repo("exec /usr/bin/dbbackup wal archive %p %f --wal-archive /backups/pg"), r);
        assert_eq!(repo("DBBACKUP_REPO=/backups/pg /usr/bin/dbbackup wal archive %p %f"), r);
        assert_eq!(repo("env DBBACKUP_REPO=/backups/pg dbbackup wal archive %p %f"), r);
        assert_eq!(repo("dbbackup --repo /backups/pg -v wal archive %p %f"), r);
        assert_eq!(repo("dbbackup -h /tmp --port 5432 --repo /backups/pg wal archive %p %f"), r);
        assert_eq!(repo("cp %p /x/%f && dbbackup wal archive /x/%f %f --repo /backups/pg"), r);
        assert_eq!(repo("test ! -f /x/%f && dbbackup wal archive %p %f --repo /backups/pg && rm -f /x/%f"), r);
        assert_eq!(repo("dbbackup wal archive %p %f --repo /backups/pg >>/var/log/archive.log 2>&1"), r);
        assert_eq!(repo("dbbackup wal archive %p %f --repo /backups/pg;"), r);
        assert_eq!(repo("exec dbbackup wal archive %p %f --repo /backups/pg || true"), r, "exec never returns");
        assert_eq!(repo("dbbackup wal archive %p %f --repo relative"), Some(PathBuf::from("/data/relative")));
        assert_eq!(repo("'/opt/my tools/dbbackup' wal archive %p %f --repo '/backups/pg'"), r);
        // A variable the shell expands: the repository is unknown.
        match shape("dbbackup wal archive %p %f --repo $HOME/pg") {
            CommandShape::Dbbackup(i) => {
                assert_eq!(i[0].repo, None);
                assert!(i[0].repo_unknown.as_ref().unwrap().contains("expands"), "{i:?}");
            }
            other => panic!("{other:?}"),
        }
        match shape("dbbackup wal archive %p %f") {
            CommandShape::Dbbackup(i) => assert!(i[0].repo_unknown.as_ref().unwrap().contains("environment")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn async_options_are_read_and_do_not_hide_the_repository() {
        let inv = |cmd: &str| match shape(cmd) {
            CommandShape::Dbbackup(i) => i[0].clone(),
            other => panic!("{cmd}: {other:?}"),
        };
        let i = inv("dbbackup wal archive %p %f --repo /backups/pg --async --jobs 8 --spool-dir /var/spool/pg");
        assert!(i.async_archive);
        assert_eq!(i.repo, Some(PathBuf::from("/backups/pg")));
        assert_eq!(i.spool_dir, Some(PathBuf::from("/var/spool/pg")));
        assert_eq!(i.jobs.as_deref(), Some("8"));
        // The values of --spool-dir and -j are not taken for positionals.
        let i = inv("dbbackup --async --spool-dir spool -j 2 wal archive %p %f --repo=/backups/pg");
        assert!(i.async_archive);
        assert_eq!(i.spool_dir, Some(PathBuf::from("/data/spool")));
        assert_eq!(i.repo, Some(PathBuf::from("/backups/pg")));
        assert!(!inv("dbbackup wal archive %p %f --repo /backups/pg").async_archive);
        assert!(swallow_reason("dbbackup wal archive %p %f --repo /r --async || true").contains("`|| true`"));
    }

    #[test]
    fn the_config_file_names_the_repository_and_key() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("main.toml");
        std::fs::write(&f, "repo = \"/backups/pg\"\nencryption-key-file = \"/etc/key\"\n[s3]\nregion = \"x\"\n")
            .unwrap();
        let cmd = format!("dbbackup wal archive %p %f --config {}", f.display());
        assert_eq!(repo(&cmd), Some(PathBuf::from("/backups/pg")));
        assert_eq!(shape(&cmd).key_file(), Some(PathBuf::from("/etc/key")));
        let cmd = format!("DBBACKUP_CONFIG={} dbbackup wal archive %p %f", f.display());
        assert_eq!(repo(&cmd), Some(PathBuf::from("/backups/pg")));
        // A flag wins over the file.
        let cmd = format!("dbbackup wal archive %p %f --config {} --repo /other", f.display());
        assert_eq!(repo(&cmd), Some(PathBuf::from("/other")));
        match shape(&format!("dbbackup wal archive %p %f --config {}/missing.toml", d.path().display())) {
            CommandShape::Dbbackup(i) => assert!(i[0].repo_unknown.as_ref().unwrap().contains("missing.toml")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shapes_that_swallow_failures_are_named() {
        let d = "dbbackup wal archive %p %f --repo /r";
        assert!(swallow_reason(&format!("{d} || true")).contains("`|| true`"));
        assert!(swallow_reason(&format!("{d} || exit 0")).contains("`|| exit 0`"));
        assert!(swallow_reason(&format!("{d}; true")).contains("`; true`"));
        assert!(swallow_reason(&format!("{d}; echo done >> /tmp/log")).contains("`; echo done`"));
        assert!(swallow_reason(&format!("{d}\necho done")).contains("`; echo done`"));
        assert!(swallow_reason(&format!("{d} | logger -t archive")).contains("pipeline"));
        assert!(swallow_reason(&format!("{d} &")).contains("background"));
        assert!(swallow_reason(&format!("{d} &> /tmp/log")).contains("background"));
        assert!(swallow_reason(&format!("{d} && echo ok || true")).contains("`|| true`"));
        assert!(swallow_reason(&format!("test -f /r/%f || {d}")).contains("only when"));
        assert!(swallow_reason(&format!("cp %p /x/%f && {d} || rm /x/%f")).contains("`|| rm /x/%f`"));
        assert!(swallow_reason(&format!("cat %p | exec {d} || true")).contains("`|| true`"));
        match shape(&format!("{d} || true")) {
            CommandShape::Swallowing { fix, invocations, .. } => {
                assert!(fix.contains("remove `|| true`"), "{fix}");
                assert_eq!(invocations[0].repo, Some(PathBuf::from("/r")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn wrappers_other_tools_and_unreadable_syntax_are_opaque() {
        for cmd in [
            "/usr/local/bin/archive.sh %p %f",
            "cp %p /mnt/server/archivedir/%f",
            "test ! -f /mnt/a/%f && cp %p /mnt/a/%f",
            "pgbackrest --stanza=main archive-push %p",
            "dbbackup wal fetch %f %p --repo /r",
            "$DBBACKUP wal archive %p %f --repo /r",
            "sh -c 'dbbackup wal archive %p %f --repo /r || true'",
            "dbbackup wal archive %p %f --repo $(cat /etc/repo)",
            "(dbbackup wal archive %p %f --repo /r)",
            "if true; then dbbackup wal archive %p %f --repo /r; fi",
            "dbbackup wal archive %p %f --repo '/r",
        ] {
            assert!(matches!(shape(cmd), CommandShape::Opaque { .. }), "{cmd}: {:?}", shape(cmd));
        }
        match shape("/usr/local/bin/archive.sh %p %f") {
            CommandShape::Opaque { reason } => assert!(reason.contains("/usr/local/bin/archive.sh"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(shape(""), CommandShape::Empty);
        assert_eq!(shape("(disabled)"), CommandShape::Empty);
    }
}
