//! One module per command group, named as the commands are.

mod backup;
mod key;
mod monitor;
mod pitr;
mod repo;
mod restore;
mod wal;

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::Command;
use crate::context::Ctx;

pub fn run(ctx: &Ctx, command: Command) -> Result<ExitCode> {
    match command {
        Command::Repo(c) => repo::run(ctx, c),
        Command::Key(c) => key::run(ctx, c),
        Command::Wal(c) => wal::run(ctx, c),
        Command::Pitr(c) => pitr::run(ctx, c),
        Command::Backup(c) => backup::run(ctx, c),
        Command::Restore(c) => restore::run(ctx, c),
        Command::Monitor(a) => monitor::run(ctx, a),
    }
}
