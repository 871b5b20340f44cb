//! What every command needs from the global options.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{anyhow, Result};
use dbbackup_core::keys::KeySource;
use dbbackup_core::pg::ConnOptions;
use dbbackup_core::pitr::read_postmaster_pid;
use dbbackup_core::repo::Repository;
use dbbackup_core::storage::location::{open_storage, Location};
use dbbackup_core::storage::Storage;

use crate::cli::GlobalOpts;

pub struct Ctx {
    pub g: GlobalOpts,
    /// --port was given on the command line (not from PGPORT or a file).
    pub port_on_cli: bool,
}

impl Ctx {
    pub fn new(g: GlobalOpts, port_on_cli: bool) -> Ctx {
        Ctx { g, port_on_cli }
    }

    /// The repository's location (`--repo`: a path or an object-store URL).
    pub fn location(&self) -> Result<Location> {
        let repo = self.g.repo.as_ref().ok_or_else(|| {
            anyhow!(
                "no repository given: use --repo PATH|s3://BUCKET/PREFIX|gs://...|az://..., the DBBACKUP_REPO variable, or `repo` in the --config file"
            )
        })?;
        Ok(Location::parse(&repo.to_string_lossy(), &std::env::current_dir()?)?)
    }

    /// The repository as it is written into commands and messages: a local
    /// path made absolute, or the object-store URL.
    pub fn repo_path(&self) -> Result<PathBuf> {
        Ok(match self.location()? {
            Location::Local(p) => p,
            other => PathBuf::from(other.to_string()),
        })
    }

    pub fn storage(&self) -> Result<Arc<dyn Storage>> {
        Ok(open_storage(&self.location()?, &self.g.stores)?)
    }

    /// An object-store repository's settings and secrets reach the server's
    /// archive_command and restore_command only through the config file.
    pub fn config_for_server_commands(&self) -> Result<()> {
        if self.location()?.is_object_store() && self.g.config.is_none() {
            anyhow::bail!(
                "repository {} is in an object store: give its settings with --config FILE, which the server's commands then read (secrets never go into archive_command or restore_command, where every role could read them)",
                self.location()?
            );
        }
        Ok(())
    }

    pub fn keys(&self) -> KeySource {
        KeySource {
            file: self.g.encryption_key_file.clone(),
            env: self.g.encryption_key_env.clone(),
            allow_shared_file: self.g.allow_shared_key_file,
        }
    }

    /// The default key variable is set but not used: the repository is not
    /// encrypted. Not a refusal (the variable may be meant for another
    /// repository), but an interactive user hears that nothing is encrypted.
    pub fn warn_unused_default_key(&self, repo_encrypted: bool, what: &str) {
        let keys = self.keys();
        if !repo_encrypted && !keys.explicit() && std::env::var_os(keys.env_name()).is_some() {
            eprintln!(
                "dbbackup: warning: {} is set, but {what} is not encrypted: the variable is not used",
                keys.env_name()
            );
        }
    }

    pub fn open_repo(&self) -> Result<Repository> {
        Ok(Repository::open(self.storage()?, &self.keys())?)
    }

    pub fn conn(&self) -> ConnOptions {
        ConnOptions {
            host: self.g.host.clone(),
            port: self.g.port,
            user: self.g.user.clone(),
            dbname: self.g.dbname.clone(),
            password: std::env::var("PGPASSWORD").ok(),
            passfile: std::env::var_os("PGPASSFILE").map(Into::into),
            connect_timeout: None,
        }
    }

    /// Connection options, filled from `--pgdata`'s postmaster.pid (socket
    /// directory and port of the server running there) when not given.
    /// Without postmaster.pid (the server is down), what the configuration
    /// files name, so errors name the right server.
    pub fn conn_for_pgdata(&self) -> ConnOptions {
        let mut c = self.conn();
        let Some(pgdata) = self.g.pgdata.as_deref() else { return c };
        let (port, dir) = match read_postmaster_pid(pgdata) {
            Some(pm) => (pm.port, pm.socket_dir),
            None => dbbackup_core::pitr::configured_endpoint(pgdata),
        };
        if c.host.is_none() {
            c.host = dir;
        }
        if c.port.is_none() {
            c.port = port;
        }
        c
    }

    /// Refuses paths that cannot go into archive_command or
    /// restore_command: PostgreSQL's configuration files hold one setting
    /// per line, so a control character (a newline) would break them.
    pub fn check_command_paths(&self) -> Result<()> {
        let repo = self.repo_path()?;
        let paths = [Some(repo.as_path()), self.g.encryption_key_file.as_deref(), self.g.config.as_deref()];
        for p in paths.into_iter().flatten() {
            if p.to_string_lossy().chars().any(char::is_control) {
                anyhow::bail!(
                    "{:?} holds a control character (a newline?): it cannot be written into PostgreSQL's configuration; use another path",
                    p
                );
            }
        }
        Ok(())
    }

    /// A progress or status line for the user on stderr; `--quiet` leaves
    /// only errors there.
    pub fn note(&self, msg: impl std::fmt::Display) {
        if !self.g.quiet {
            eprintln!("{msg}");
        }
    }

    /// Whether the user said where a server is (we never guess one).
    pub fn conn_given(&self) -> bool {
        self.g.host.is_some() || self.g.port.is_some()
    }
}
