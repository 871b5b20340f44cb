//! `dbbackup key generate`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::process::ExitCode;

use anyhow::{Context, Result};
use dbbackup_core::keys;

use crate::cli::KeyCommand;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, c: KeyCommand) -> Result<ExitCode> {
    match c {
        KeyCommand::Generate { output } => {
            let key = keys::generate()?;
            match output {
                None => print!("{}", key.to_hex_line()),
                Some(path) => {
                    let mut f =
                        OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|e| {
                            if e.kind() == std::io::ErrorKind::AlreadyExists {
                                anyhow::anyhow!("{} already exists: refusing to overwrite a key file", path.display())
                            } else {
                                anyhow::anyhow!("cannot create key file {}: {e}", path.display())
                            }
                        })?;
                    f.write_all(key.to_hex_line().as_bytes())
                        .and_then(|_| f.sync_all())
                        .with_context(|| format!("cannot write key file {}", path.display()))?;
                    ctx.note(format_args!("wrote a new key to {} (fingerprint {})", path.display(), key.fingerprint()));
                    ctx.note("keep a copy somewhere safe: without it, encrypted backups cannot be restored");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
