//! Pure PostgreSQL and repository format code for dbbackup.
//!
//! This crate owns everything that can be decided from bytes and strings
//! alone: LSNs, WAL file names and segment arithmetic for any segment size,
//! WAL page headers, `pg_control`, encryption keys as text, stored object
//! names and repository metadata types, WAL records of the transaction,
//! storage, database, relation map and heap resource managers (`walrmgr`),
//! and heap pages with the catalog rows read from them (`heap`). It never
//! touches a disk, a network or a clock, so every function here is unit- and
//! property-testable.

pub mod accident;
pub mod codec;
pub mod control;
pub mod guc;
pub mod heap;
pub mod history;
pub mod key;
pub mod lsn;
pub mod manifest;
pub mod meta;
pub mod object;
pub mod pagehdr;
pub mod recovery;
pub mod relfile;
pub mod wal;
pub mod walread;
pub mod walrmgr;
pub mod walwrite;

pub use codec::Codec;
pub use lsn::Lsn;
pub use wal::{SegmentSize, TimelineId, WalFileName, WalKind};
