//! Where the encryption key comes from: a file or an environment variable.
//!
//! A key that is named but missing or malformed is an error before any
//! work; no key is ever invented. A key file others can read is refused
//! unless the user says it is shared on purpose (a read-only secret mount).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
    /// Accept a key file that group or others may read (`--allow-shared-key-file`).
    pub allow_shared_file: bool,
}

impl KeySource {
    pub fn env_name(&self) -> &str {
        self.env.as_deref().unwrap_or(DEFAULT_KEY_ENV)
    }

    /// Whether the user asked for a key: a key file, or a variable named
    /// with --encryption-key-env. The default variable merely being set is
    /// not: a stray variable in the server's environment must not stop
    /// `wal archive` (WAL would pile up in pg_wal).
    pub fn explicit(&self) -> bool {
        self.file.is_some() || self.env.is_some()
    }

    /// How the key was given, for messages: `--encryption-key-file K`.
    pub fn given_as(&self) -> String {
        match (&self.file, &self.env) {
            (Some(f), _) => format!("--encryption-key-file {}", f.display()),
            (None, Some(v)) => format!("--encryption-key-env {v}"),
            (None, None) => format!("the environment variable {DEFAULT_KEY_ENV}"),
        }
    }

    /// Loads the key if one was given. A file wins over the variable.
    pub fn load(&self) -> Result<Option<Key>> {
        if let Some(path) = &self.file {
            check_key_file(path, self.allow_shared_file)?;
            let text = std::fs::read(path).map_err(|e| read_error(path, &e))?;
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

/// Refuses a key file that group or others can open (the key is every
/// backup's secret), unless `allow_shared` says it is a shared secret mount.
/// Symlinks are followed: the target's mode is what protects the key. Only
/// regular files: a pipe (`--encryption-key-file <(vault read ...)`) holds
/// the key only while it is read.
fn check_key_file(path: &Path, allow_shared: bool) -> Result<()> {
    match crate::secret::exposure(path).map_err(|e| read_error(path, &e))? {
        Some(e) if !allow_shared => Err(Error::key(crate::secret::refusal(
            "encryption key file",
            path,
            e,
            "(or give --allow-shared-key-file for a key on a read-only secret mount)",
        ))),
        _ => Ok(()),
    }
}

/// A key file that cannot be read: says who owns it and who asked, since
/// the usual cause is a key readable by root but not by the PostgreSQL OS
/// user that runs archive_command.
fn read_error(path: &Path, e: &std::io::Error) -> Error {
    let mut msg = format!("cannot read encryption key file {}: {e}", path.display());
    if e.kind() == std::io::ErrorKind::PermissionDenied {
        // /proc/self belongs to the effective user of this process.
        let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if let (Ok(m), Some(me)) = (std::fs::metadata(path), me) {
            msg.push_str(&format!(
                " (owner uid {}, mode {:04o}; dbbackup runs as uid {me}): make it owned by the user that runs dbbackup \
                 (for archive_command and restore_command, the PostgreSQL OS user) with mode 0600",
                m.uid(),
                m.permissions().mode() & 0o7777
            ));
        } else if let Some(me) = me {
            msg.push_str(&format!(
                " (dbbackup runs as uid {me}): the user that runs dbbackup must be able to reach and read it"
            ));
        }
    }
    Error::key(msg)
}

/// Generates a new random key.
pub fn generate() -> Result<Key> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| Error::io(format!("cannot get random bytes for a key: {e}")))?;
    Ok(Key(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_at(dir: &Path, name: &str, mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("{}\n", "ab".repeat(32))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    fn source(file: &Path, allow_shared_file: bool) -> KeySource {
        KeySource { file: Some(file.to_path_buf()), env: None, allow_shared_file }
    }

    #[test]
    fn a_key_file_others_can_open_is_refused_unless_allowed() {
        let d = tempfile::tempdir().unwrap();
        let private = key_at(d.path(), "private", 0o600);
        assert!(source(&private, false).load().unwrap().is_some());
        assert!(key_at(d.path(), "owner-read-only", 0o400).exists());
        assert!(source(&d.path().join("owner-read-only"), false).load().is_ok());
        for (name, mode, how) in [("world", 0o644, "readable"), ("group", 0o640, "readable"), ("gw", 0o620, "writable")]
        {
            let p = key_at(d.path(), name, mode);
            let e = source(&p, false).load().unwrap_err().to_string();
            assert!(e.contains(&format!("{how} by group or others (mode {mode:04o})")), "{e}");
            assert!(e.contains(&format!("chmod 600 {}", p.display())) && e.contains("--allow-shared-key-file"), "{e}");
            assert!(source(&p, true).load().unwrap().is_some());
        }
        // A secret mount's symlink: the target's mode counts.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("world"), &link).unwrap();
        assert!(source(&link, false).load().unwrap_err().to_string().contains("mode 0644"));
        assert!(source(&link, true).load().is_ok());
        let e = source(d.path(), false).load().unwrap_err().to_string();
        assert!(e.contains("cannot read encryption key file"), "{e}");
    }

    #[test]
    fn only_a_named_key_is_explicit() {
        assert!(!KeySource::default().explicit());
        assert!(KeySource { env: Some("K".into()), ..Default::default() }.explicit());
        let k = KeySource { file: Some("/k".into()), ..Default::default() };
        assert!(k.explicit());
        assert_eq!(k.given_as(), "--encryption-key-file /k");
    }
}
