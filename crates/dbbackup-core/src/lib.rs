//! The dbbackup engine.
//!
//! Everything a command does lives here, named as the commands are: `repo`
//! (metadata, identity, keys), `wal` (archive and fetch), with `storage`,
//! `codec` and `crypto` as the pipeline they share and `pg` as the one way
//! to talk to a server. This crate never prints: it returns values and
//! errors for the binary to render.

pub mod archive_command;
pub mod backup;
pub mod checksum;
pub mod codec;
pub mod crypto;
pub mod error;
pub mod info;
pub mod keys;
pub mod monitor;
pub mod object;
pub mod par;
pub mod pg;
pub mod pitr;
pub mod repo;
pub mod restore;
pub mod secret;
pub mod spool;
pub mod storage;
pub mod wal;

pub use error::{Error, Result};
