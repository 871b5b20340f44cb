//! The `--config` TOML file: defaults for the global options.
//!
//! Precedence is flag, then environment variable, then file. Unknown keys
//! and wrong types are errors naming the file, line and key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::parser::ValueSource;
use clap::ArgMatches;
use serde::Deserialize;

use dbbackup_core::storage::location::{AzureSettings, GcsSettings, S3Settings};

use crate::cli::GlobalOpts;

/// Keys accepted in the config file (the long option names).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    #[serde(alias = "archive-dir", alias = "wal-archive")]
    repo: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    dbname: Option<String>,
    pgdata: Option<PathBuf>,
    encryption_key_file: Option<PathBuf>,
    encryption_key_env: Option<String>,
    allow_shared_key_file: Option<bool>,
    json: Option<bool>,
    /// 0 to 2, as many as `-v` flags.
    verbose: Option<u8>,
    quiet: Option<bool>,
    s3: Option<S3Settings>,
    gcs: Option<GcsSettings>,
    azure: Option<AzureSettings>,
}

pub fn load(path: &Path) -> Result<FileConfig> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
    let f: FileConfig = toml::from_str(&text)
        .map_err(|e| anyhow::anyhow!("config file {}: {}", path.display(), e.to_string().trim_end()))?;
    // A file holding a store's secret is as private as a key file.
    let secret = f.s3.as_ref().is_some_and(|s| s.secret_access_key.is_some() || s.session_token.is_some())
        || f.azure.as_ref().is_some_and(|a| a.access_key.is_some() || a.sas_token.is_some());
    if secret && !f.allow_shared_key_file.unwrap_or(false) {
        if let Some(e) = dbbackup_core::secret::exposure(path)? {
            anyhow::bail!(dbbackup_core::secret::refusal(
                "config file",
                path,
                e,
                "(it holds an object-store secret; owned by the user that runs dbbackup: for archive_command, the PostgreSQL OS user)"
            ));
        }
    }
    Ok(f)
}

fn from_user(m: &ArgMatches, id: &str) -> bool {
    matches!(m.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable))
}

/// Fills options the user did not give (by flag or env) from the file.
pub fn apply(g: &mut GlobalOpts, m: &ArgMatches, f: FileConfig) {
    macro_rules! fill {
        ($field:ident, $id:literal) => {
            if !from_user(m, $id) {
                if let Some(v) = f.$field {
                    g.$field = Some(v);
                }
            }
        };
    }
    fill!(repo, "repo");
    fill!(host, "host");
    fill!(port, "port");
    fill!(user, "user");
    fill!(dbname, "dbname");
    fill!(pgdata, "pgdata");
    fill!(encryption_key_file, "encryption_key_file");
    fill!(encryption_key_env, "encryption_key_env");
    // Flags only: a file can turn these on, a flag cannot turn them off.
    if let (false, Some(v)) = (from_user(m, "allow_shared_key_file"), f.allow_shared_key_file) {
        g.allow_shared_key_file |= v;
    }
    if let (false, Some(v)) = (from_user(m, "json"), f.json) {
        g.json |= v;
    }
    if let (false, Some(v)) = (from_user(m, "verbose"), f.verbose) {
        g.verbose = g.verbose.max(v);
    }
    if let (false, Some(v)) = (from_user(m, "quiet"), f.quiet) {
        g.quiet |= v;
    }
    g.stores.s3 = f.s3.unwrap_or_default();
    g.stores.gcs = f.gcs.unwrap_or_default();
    g.stores.azure = f.azure.unwrap_or_default();
}
