//! The engine's error type.
//!
//! Every error carries a kind (what the binary maps to an exit code) and a
//! complete one-line message naming the object, the cause and, where it
//! helps, the fix. Messages are written where the failure is understood,
//! not reassembled at the edge.

use std::fmt;

use crate::storage::StorageError;

/// What went wrong, coarsely: enough to choose an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The thing asked for does not exist (`wal fetch` exits 1 on this).
    NotFound,
    /// Stored data failed verification: corrupt, truncated, tampered.
    Integrity,
    /// Missing, malformed or wrong encryption key.
    Key,
    /// The repository or input belongs to another cluster or version.
    Identity,
    /// Invalid input or state that the user must fix.
    Invalid,
    /// An archived object exists with different content.
    Conflict,
    /// Reading or writing failed.
    Io,
    /// The store did not answer, was overloaded or broke a transfer off,
    /// after its retries: trying again later may succeed.
    Unavailable,
    /// The PostgreSQL server refused or could not be reached.
    Server,
}

/// An engine error.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }
    pub fn not_found(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::NotFound, m)
    }
    pub fn integrity(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Integrity, m)
    }
    pub fn key(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Key, m)
    }
    pub fn identity(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Identity, m)
    }
    pub fn invalid(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Invalid, m)
    }
    pub fn io(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Io, m)
    }
    pub fn server(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Server, m)
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `context: ` in front of its message.
    pub fn context(self, context: impl fmt::Display) -> Error {
        Error { kind: self.kind, message: format!("{context}: {}", self.message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Error {
        let kind = match e {
            StorageError::NotFound { .. } => ErrorKind::NotFound,
            StorageError::AlreadyExists { .. } => ErrorKind::Conflict,
            // Its message already says it is temporary.
            StorageError::Io { .. } if e.is_temporary() => ErrorKind::Unavailable,
            StorageError::Io { .. } => ErrorKind::Io,
        };
        Error::new(kind, e.to_string())
    }
}

/// Turns an I/O error from a decoding pipeline into an engine error: data
/// errors (bad chunks, corrupt streams) are integrity failures.
pub fn pipeline_error(object: &str, e: std::io::Error) -> Error {
    use std::io::ErrorKind as K;
    let kind = match e.kind() {
        K::InvalidData | K::UnexpectedEof | K::InvalidInput | K::Other => ErrorKind::Integrity,
        _ => ErrorKind::Io,
    };
    let wrong_key = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<crate::crypto::CryptoError>())
        .is_some_and(|c| matches!(c, crate::crypto::CryptoError::WrongKey { .. }));
    let kind = if wrong_key { ErrorKind::Key } else { kind };
    // The codec libraries' own words ("Data corruption detected", "failed
    // to fill whole buffer") say little to a DBA on their own.
    let what = if kind == ErrorKind::Integrity && !wrong_key && !e.to_string().contains("corrupt") {
        "the stored object is corrupt or truncated: "
    } else {
        ""
    };
    Error::new(kind, format!("{object}: {what}{e}"))
}
