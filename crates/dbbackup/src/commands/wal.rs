//! `dbbackup wal archive` and `wal fetch`: PostgreSQL's hooks.
//!
//! Their stderr goes to the server log: one line per message, prefixed
//! `dbbackup:`, naming the file and the cause. No progress output.

use std::process::ExitCode;

use anyhow::{anyhow, bail, Result};
use dbbackup_core::codec::CodecSettings;
use dbbackup_core::error::{Error, ErrorKind};
use dbbackup_core::repo::{check_level, InitOptions, Repository};
use dbbackup_core::wal::archive::{archive, Archived};
use dbbackup_core::wal::fetch::fetch;

use crate::cli::{ArchiveArgs, FetchArgs, WalCommand};
use crate::context::Ctx;
use crate::output::one_line;
use crate::EXIT_FETCH_FATAL;

pub fn run(ctx: &Ctx, c: WalCommand) -> Result<ExitCode> {
    match c {
        WalCommand::Archive(a) => run_archive(ctx, a),
        WalCommand::Fetch(a) => Ok(run_fetch(ctx, a)),
    }
}

/// Opens the repository, creating a missing one with the archive's options.
fn open_or_create(ctx: &Ctx, a: &ArchiveArgs) -> Result<Repository> {
    match ctx.open_repo() {
        Ok(repo) => {
            if a.encrypt && repo.key().is_none() {
                bail!(
                    "--encrypt was given but repository {} is not encrypted: encryption is chosen when the repository is created",
                    repo.location()
                );
            }
            Ok(repo)
        }
        Err(e) => match e.downcast_ref::<Error>() {
            Some(err) if err.kind() == ErrorKind::NotFound && !ctx.storage()?.root_exists().unwrap_or(true) => {
                let key = ctx.keys().load()?;
                if a.encrypt && key.is_none() {
                    bail!("--encrypt needs a key: {}", ctx.keys().hint());
                }
                let opts = InitOptions {
                    codec: a.compress.unwrap_or_default(),
                    level: a.compress_level,
                    key: if a.encrypt { key } else { None },
                    identity: None,
                };
                match Repository::init(ctx.storage()?, opts) {
                    Ok(r) => {
                        tracing::info!("created repository {}", r.location());
                        Ok(r)
                    }
                    // Another archiver created it first.
                    Err(e) if e.kind() == ErrorKind::Conflict => ctx.open_repo(),
                    Err(e) => Err(e.into()),
                }
            }
            _ => Err(e),
        },
    }
}

fn run_archive(ctx: &Ctx, a: ArchiveArgs) -> Result<ExitCode> {
    let name = match &a.filename {
        Some(n) => n.clone(),
        None => a
            .path
            .file_name()
            .ok_or_else(|| {
                anyhow!("{} has no file name: give the WAL file name as the second argument", a.path.display())
            })?
            .to_string_lossy()
            .to_string(),
    };
    let mut repo = open_or_create(ctx, &a).map_err(|e| anyhow!("wal archive {name}: {e:#}"))?;
    let codec = match (a.compress, a.compress_level) {
        (None, None) => None,
        (c, l) => {
            let codec = c.unwrap_or(repo.meta().compression.algorithm);
            check_level(codec, l)?;
            Some(CodecSettings::new(codec, l.or((c.is_none()).then_some(repo.meta().compression.level))))
        }
    };
    let outcome = archive(&mut repo, &a.path, &name, codec).map_err(|e| anyhow!("wal archive {name}: {e}"))?;
    match outcome {
        Archived::Stored { path, original_size, stored_size, .. } => {
            tracing::debug!("archived {name} as {path} ({original_size} bytes, {stored_size} stored)");
        }
        Archived::AlreadyArchived { path, .. } => {
            tracing::warn!("{name} was already archived with identical content as {path}: nothing to do");
        }
        Archived::Repaired { path, damage, .. } => {
            tracing::warn!(
                "{name} was archived but the stored copy was damaged ({}); replaced it with this good copy",
                one_line(&damage)
            );
            let _ = path;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_fetch(ctx: &Ctx, a: FetchArgs) -> ExitCode {
    let fatal = |msg: String| {
        eprintln!("dbbackup: wal fetch {}: {}", a.filename, one_line(&msg));
        ExitCode::from(EXIT_FETCH_FATAL)
    };
    // Any problem with the repository itself is fatal: "not found" must
    // mean only that this file is not archived.
    let repo = match ctx.open_repo() {
        Ok(r) => r,
        Err(e) => return fatal(format!("{e:#}")),
    };
    match fetch(&repo, &a.filename, &a.destination) {
        Ok(f) => {
            tracing::debug!("restored {} from {} ({} bytes)", a.filename, f.path, f.size);
            ExitCode::SUCCESS
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            tracing::info!("{}", e);
            ExitCode::FAILURE
        }
        Err(e) => fatal(e.to_string()),
    }
}
