//! Files that hold a secret (an encryption key, an object-store credential,
//! a config file with one inline) must be private to their owner: one rule
//! and one message for all of them.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How a secret file is open to others.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exposure {
    /// Permission bits (`0o644`).
    pub mode: u32,
}

impl Exposure {
    /// "readable", "writable" or "accessible" (execute or search only).
    pub fn how(&self) -> &'static str {
        if self.mode & 0o044 != 0 {
            "readable"
        } else if self.mode & 0o022 != 0 {
            "writable"
        } else {
            "accessible"
        }
    }
}

/// Whether group or others can open `path`. Symlinks are followed (the
/// target's mode protects the secret). Only regular files count: a pipe
/// (`--encryption-key-file <(vault read ...)`) holds the secret only while
/// it is read.
pub fn exposure(path: &Path) -> std::io::Result<Option<Exposure>> {
    let meta = std::fs::metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    Ok((meta.is_file() && mode & 0o077 != 0).then_some(Exposure { mode }))
}

/// The refusal: "`what` PATH is readable by group or others (mode 0644):
/// run `chmod 600 PATH`", then `hint` when given.
pub fn refusal(what: &str, path: &Path, e: Exposure, hint: &str) -> String {
    let quoted = dbbackup_format::guc::shell_join(&[path.display().to_string()]);
    format!(
        "{what} {} is {} by group or others (mode {:04o}): run `chmod 600 {quoted}`{}{hint}",
        path.display(),
        e.how(),
        e.mode,
        if hint.is_empty() { "" } else { " " }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_private_regular_files_pass() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k");
        std::fs::write(&f, "x").unwrap();
        for (mode, how) in
            [(0o644, Some("readable")), (0o620, Some("writable")), (0o601, Some("accessible")), (0o600, None)]
        {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = exposure(&f).unwrap();
            assert_eq!(e.map(|e| e.how()), how, "{mode:o}");
            if let Some(e) = e {
                let msg = refusal("key file", &f, e, "(or not)");
                assert!(
                    msg.contains(&format!("is {} by group or others (mode {mode:04o}): run `chmod 600 ", how.unwrap())),
                    "{msg}"
                );
                assert!(msg.ends_with(" (or not)"), "{msg}");
            }
        }
        // A directory is not a secret file (the caller's read fails instead).
        assert_eq!(exposure(dir.path()).unwrap(), None);
    }
}
