//! Encryption keys as text: parsing and fingerprints.
//!
//! A key is 32 bytes written as 64 hex digits (what `openssl rand -hex 32`
//! prints) or as base64. Anything else is refused with a message that says
//! what was found; a key is never derived from arbitrary text.

use base64::Engine;
use sha2::{Digest, Sha256};
use std::fmt;

/// Bytes in an AES-256 key.
pub const KEY_LEN: usize = 32;

/// A 32-byte key. `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; KEY_LEN]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key(fingerprint {})", self.fingerprint())
    }
}

/// Why text is not a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyParseError {
    #[error("the key is empty: expected 64 hex digits or base64 of 32 bytes (dbbackup key generate writes one)")]
    Empty,
    #[error("the key is {len} characters of hex: expected exactly 64 hex digits (32 bytes)")]
    HexLength { len: usize },
    #[error("the key is base64 of {bytes} bytes: expected 32 bytes")]
    Base64Length { bytes: usize },
    #[error("the key is not hex or base64 ({len} characters, contains {bad:?}): expected 64 hex digits or base64 of 32 bytes")]
    NotKeyText { len: usize, bad: char },
}

impl Key {
    /// Parses key text, tolerating exactly one trailing newline.
    pub fn parse(text: &str) -> Result<Key, KeyParseError> {
        let t = text.strip_suffix('\n').map(|t| t.strip_suffix('\r').unwrap_or(t)).unwrap_or(text);
        if t.is_empty() {
            return Err(KeyParseError::Empty);
        }
        if t.bytes().all(|b| b.is_ascii_hexdigit()) {
            if t.len() == 2 * KEY_LEN {
                let mut k = [0u8; KEY_LEN];
                hex::decode_to_slice(t, &mut k).expect("64 hex digits");
                return Ok(Key(k));
            }
            // 44 characters of pure hex digits cannot be 32-byte base64 (it
            // needs '=' padding), so any other length is a hex length error.
            if t.len() != 43 {
                return Err(KeyParseError::HexLength { len: t.len() });
            }
        }
        if let Some(bad) = t.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=' | '-' | '_')))
        {
            return Err(KeyParseError::NotKeyText { len: t.chars().count(), bad });
        }
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let decoded = engines.iter().find_map(|e| e.decode(t).ok());
        match decoded {
            Some(d) if d.len() == KEY_LEN => Ok(Key(d.try_into().expect("32 bytes"))),
            Some(d) => Err(KeyParseError::Base64Length { bytes: d.len() }),
            None => Err(KeyParseError::NotKeyText { len: t.chars().count(), bad: t.chars().next().unwrap_or(' ') }),
        }
    }

    /// A short public identifier of the key: the first 16 bytes of
    /// SHA-256("dbbackup key fingerprint v1\0" || key), as hex. It tells keys
    /// apart without revealing them.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"dbbackup key fingerprint v1\0");
        h.update(self.0);
        hex::encode(&h.finalize()[..16])
    }

    /// The key as 64 hex digits and a newline, the form `key generate` writes.
    pub fn to_hex_line(&self) -> String {
        format!("{}\n", hex::encode(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF";

    #[test]
    fn hex_and_base64() {
        let k = Key::parse(HEX).unwrap();
        assert_eq!(Key::parse(&format!("{HEX}\n")).unwrap(), k);
        assert_eq!(Key::parse(&format!("{HEX}\r\n")).unwrap(), k);
        let b64 = base64::engine::general_purpose::STANDARD.encode(k.0);
        assert_eq!(Key::parse(&b64).unwrap(), k);
        assert_eq!(Key::parse(&format!("{b64}\n")).unwrap(), k);
        assert_eq!(Key::parse(b64.trim_end_matches('=')).unwrap(), k);
        assert_eq!(Key::parse(&k.to_hex_line()).unwrap(), k);
    }

    #[test]
    fn rejects_everything_else() {
        assert_eq!(Key::parse(""), Err(KeyParseError::Empty));
        assert_eq!(Key::parse("\n"), Err(KeyParseError::Empty));
        assert_eq!(Key::parse(&HEX[..62]), Err(KeyParseError::HexLength { len: 62 }));
        assert_eq!(Key::parse(&format!("{HEX}00")), Err(KeyParseError::HexLength { len: 66 }));
        assert!(matches!(Key::parse(&format!("{HEX}\n\n")), Err(KeyParseError::NotKeyText { .. })));
        assert!(matches!(Key::parse(&format!(" {HEX}")), Err(KeyParseError::NotKeyText { bad: ' ', .. })));
        assert!(matches!(Key::parse("correct horse battery staple"), Err(KeyParseError::NotKeyText { .. })));
        let short = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert_eq!(Key::parse(&short), Err(KeyParseError::Base64Length { bytes: 16 }));
    }

    #[test]
    fn fingerprints_differ_and_are_stable() {
        let a = Key::parse(HEX).unwrap();
        let b = Key([1; 32]);
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint().len(), 32);
        assert_eq!(a.fingerprint(), Key::parse(HEX).unwrap().fingerprint());
        assert!(!format!("{a:?}").contains("0011"));
    }
}
