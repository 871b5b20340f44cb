//! Where the encryption key comes from: a file or an environment variable.
//!
//! A key that is named but missing or malformed is an error before any
//! work; no key is ever invented.

use std::path::PathBuf;

use dbbackup_format::key::Key;

use crate::error::{Error, Result};

/// Default environment variable for the key.
pub const DEFAULT_KEY_ENV: &str = "DBBACKUP_ENCRYPTION_KEY";

/// How the user told us to find the key.
#[derive(Debug, Clone, Default)]
pub struct KeySource {
    pub file: Option<PathBuf>,
    /// Variable name; `None` means the default.
    pub env: Option<String>,
}

impl KeySource {
    pub fn env_name(&self) -> &str {
        self.env.as_deref().unwrap_or(DEFAULT_KEY_ENV)
    }

    /// Loads the key if one was given. A file wins over the variable.
    pub fn load(&self) -> Result<Option<Key>> {
        if let Some(path) = &self.file {
            let text = std::fs::read(path)
                .map_err(|e| Error::key(format!("cannot read encryption key file {}: {e}", path.display())))?;
            let text = String::from_utf8(text).map_err(|_| {
                Error::key(format!(
                    "encryption key file {} is not text: expected 64 hex digits or base64 of 32 bytes",
                    path.display()
                ))
            })?;
            return Key::parse(&text)
                .map(Some)
                .map_err(|e| Error::key(format!("encryption key file {}: {e}", path.display())));
        }
        let name = self.env_name();
        match std::env::var(name) {
            Ok(text) => {
                Key::parse(&text).map(Some).map_err(|e| Error::key(format!("environment variable {name}: {e}")))
            }
            Err(std::env::VarError::NotPresent) => {
                if self.env.is_some() {
                    Err(Error::key(format!("environment variable {name} (named by --encryption-key-env) is not set")))
                } else {
                    Ok(None)
                }
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(Error::key(format!("environment variable {name} is not valid text: expected a hex or base64 key")))
            }
        }
    }

    /// Describes where a key would be looked for, for error messages.
    pub fn hint(&self) -> String {
        format!("give it with --encryption-key-file FILE or the environment variable {}", self.env_name())
    }
}

/// Generates a new random key.
pub fn generate() -> Result<Key> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| Error::io(format!("cannot get random bytes for a key: {e}")))?;
    Ok(Key(k))
}
