//! Authenticated encryption of stored objects: AES-256-GCM in chunks.
//!
//! Layout (docs/FORMAT.md, "Encrypted objects"): a 64-byte header
//! (`DBBKENC1` magic, version, chunk size exponent, key fingerprint, random
//! salt), then chunks of `chunk_size` plaintext bytes, each sealed with its
//! own 16-byte tag. The object key is HKDF-SHA256(master key, salt); the
//! nonce of chunk `i` is `i` (big-endian u64), three zero bytes and a final
//! flag byte, so reordered, dropped or appended chunks fail to open. The
//! associated data of every chunk is the header plus the object's logical
//! name, so an object renamed to another name fails too.

use std::io::{self, Read, Write};

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use dbbackup_format::key::Key;
use hkdf::Hkdf;
use sha2::Sha256;

use crate::codec::Sink;
use crate::object::read_full;

pub const MAGIC: &[u8; 8] = b"DBBKENC1";
pub const VERSION: u8 = 1;
pub const HEADER_LEN: usize = 64;
pub const TAG_LEN: usize = 16;
/// 64 KiB plaintext chunks.
pub const CHUNK_SHIFT: u8 = 16;

/// Why an encrypted object cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("not an encrypted dbbackup object (bad magic)")]
    BadMagic,
    #[error("encrypted with format version {0}, which this dbbackup does not know")]
    BadVersion(u8),
    #[error("encrypted with key {object}, but the key given has fingerprint {given}")]
    WrongKey { object: String, given: String },
    #[error("chunk {0} failed authentication: the object is corrupt, tampered with, or stored under another name")]
    BadChunk(u64),
    #[error("the object is truncated: it ends before its final chunk")]
    Truncated,
    #[error("the object has data after its final chunk")]
    TrailingData,
    #[error("unreadable header: {0}")]
    Header(&'static str),
}

impl From<CryptoError> for io::Error {
    fn from(e: CryptoError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

fn fingerprint_bytes(key: &Key) -> [u8; 16] {
    let mut fp = [0u8; 16];
    hex::decode_to_slice(key.fingerprint(), &mut fp).expect("fingerprint is 32 hex digits");
    fp
}

fn object_cipher(key: &Key, salt: &[u8]) -> Aes256Gcm {
    let hk = Hkdf::<Sha256>::new(Some(salt), &key.0);
    let mut okm = [0u8; 32];
    hk.expand(b"dbbackup object key v1", &mut okm).expect("32 bytes is a valid HKDF length");
    Aes256Gcm::new_from_slice(&okm).expect("32-byte key")
}

fn nonce(index: u64, last: bool) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..8].copy_from_slice(&index.to_be_bytes());
    n[11] = u8::from(last);
    n
}

/// Encrypts everything written to it into `inner`.
pub struct EncryptSink<'a> {
    inner: Box<dyn Sink + 'a>,
    cipher: Aes256Gcm,
    aad: Vec<u8>,
    buf: Vec<u8>,
    chunk: usize,
    index: u64,
}

impl<'a> EncryptSink<'a> {
    pub fn new(key: &Key, name: &str, mut inner: Box<dyn Sink + 'a>) -> io::Result<EncryptSink<'a>> {
        let mut header = [0u8; HEADER_LEN];
        header[..8].copy_from_slice(MAGIC);
        header[8] = VERSION;
        header[9] = CHUNK_SHIFT;
        header[12..28].copy_from_slice(&fingerprint_bytes(key));
        getrandom::fill(&mut header[28..60]).map_err(|e| io::Error::other(e.to_string()))?;
        inner.write_all(&header)?;
        let cipher = object_cipher(key, &header[28..60]);
        let mut aad = header.to_vec();
        aad.extend_from_slice(name.as_bytes());
        let chunk = 1usize << CHUNK_SHIFT;
        Ok(EncryptSink { inner, cipher, aad, buf: Vec::with_capacity(chunk + TAG_LEN), chunk, index: 0 })
    }

    fn seal(&mut self, last: bool) -> io::Result<()> {
        let n = nonce(self.index, last);
        self.cipher
            .encrypt_in_place(Nonce::from_slice(&n), &self.aad, &mut self.buf)
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.inner.write_all(&self.buf)?;
        self.buf.clear();
        self.index += 1;
        Ok(())
    }
}

impl Write for EncryptSink<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A full chunk is sealed only once more data arrives, so the final
        // chunk (sealed in `finish`) is never empty unless the object is.
        if self.buf.len() == self.chunk && !data.is_empty() {
            self.seal(false)?;
        }
        let take = data.len().min(self.chunk - self.buf.len());
        self.buf.extend_from_slice(&data[..take]);
        Ok(take)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Sink for EncryptSink<'_> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.seal(true)?;
        self.inner.finish()
    }
}

/// Reads the header of an encrypted object: its key fingerprint.
pub fn header_fingerprint(header: &[u8]) -> Result<String, CryptoError> {
    if header.len() < HEADER_LEN {
        return Err(CryptoError::Truncated);
    }
    if &header[..8] != MAGIC {
        return Err(CryptoError::BadMagic);
    }
    if header[8] != VERSION {
        return Err(CryptoError::BadVersion(header[8]));
    }
    Ok(hex::encode(&header[12..28]))
}

/// Decrypts and authenticates an object as it is read.
pub struct DecryptReader<R: Read> {
    inner: R,
    cipher: Aes256Gcm,
    aad: Vec<u8>,
    chunk: usize,
    /// Ciphertext read ahead (one byte past a chunk tells it is not last).
    pending: Vec<u8>,
    plain: Vec<u8>,
    pos: usize,
    index: u64,
    done: bool,
}

impl<R: Read> DecryptReader<R> {
    pub fn new(key: &Key, name: &str, mut inner: R) -> io::Result<DecryptReader<R>> {
        let mut header = [0u8; HEADER_LEN];
        let n = read_full(&mut inner, &mut header)?;
        let fp = header_fingerprint(&header[..n])?;
        if fp != key.fingerprint() {
            return Err(CryptoError::WrongKey { object: fp, given: key.fingerprint() }.into());
        }
        let shift = header[9];
        if !(10..=24).contains(&shift) {
            return Err(CryptoError::Header("chunk size out of range").into());
        }
        let cipher = object_cipher(key, &header[28..60]);
        let mut aad = header.to_vec();
        aad.extend_from_slice(name.as_bytes());
        Ok(DecryptReader {
            inner,
            cipher,
            aad,
            chunk: 1 << shift,
            pending: Vec::new(),
            plain: Vec::new(),
            pos: 0,
            index: 0,
            done: false,
        })
    }

    fn next_chunk(&mut self) -> io::Result<()> {
        let want = self.chunk + TAG_LEN + 1;
        let have = self.pending.len();
        self.pending.resize(want, 0);
        let n = read_full(&mut self.inner, &mut self.pending[have..])?;
        self.pending.truncate(have + n);
        let last = self.pending.len() < want;
        let take = self.pending.len().min(self.chunk + TAG_LEN);
        if take < TAG_LEN {
            return Err(CryptoError::Truncated.into());
        }
        let mut sealed: Vec<u8> = self.pending.drain(..take).collect();
        // Keep a copy of a would-be final chunk: if it fails as final but
        // opens as non-final, the object was cut after it.
        let copy = if last { Some(sealed.clone()) } else { None };
        let n = nonce(self.index, last);
        if self.cipher.decrypt_in_place(Nonce::from_slice(&n), &self.aad, &mut sealed).is_err() {
            if let Some(mut copy) = copy {
                let not_last = nonce(self.index, false);
                if self.cipher.decrypt_in_place(Nonce::from_slice(&not_last), &self.aad, &mut copy).is_ok() {
                    return Err(CryptoError::Truncated.into());
                }
            }
            return Err(CryptoError::BadChunk(self.index).into());
        }
        self.index += 1;
        self.plain = sealed;
        self.pos = 0;
        self.done = last;
        Ok(())
    }
}

impl<R: Read> Read for DecryptReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.plain.len() {
            if self.done {
                return Ok(0);
            }
            self.next_chunk()?;
        }
        let n = out.len().min(self.plain.len() - self.pos);
        out[..n].copy_from_slice(&self.plain[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::Shared;
    use crate::codec::Plain;
    use proptest::prelude::*;

    fn seal(key: &Key, name: &str, data: &[u8]) -> Vec<u8> {
        let out = Shared::default();
        let mut s: Box<dyn Sink> = Box::new(EncryptSink::new(key, name, Box::new(Plain(out.clone()))).unwrap());
        for c in data.chunks(10_000) {
            s.write_all(c).unwrap();
        }
        s.finish().unwrap();
        let v = out.0.lock().unwrap().clone();
        v
    }

    fn open(key: &Key, name: &str, sealed: &[u8]) -> io::Result<Vec<u8>> {
        let mut r = DecryptReader::new(key, name, io::Cursor::new(sealed.to_vec()))?;
        let mut out = Vec::new();
        r.read_to_end(&mut out)?;
        Ok(out)
    }

    fn err_text(r: io::Result<Vec<u8>>) -> String {
        r.unwrap_err().to_string()
    }

    const CHUNK: usize = 1 << CHUNK_SHIFT;

    #[test]
    fn detects_every_kind_of_damage() {
        let key = Key([7; 32]);
        let data: Vec<u8> = (0..3 * CHUNK + 100).map(|i| (i * 31 % 256) as u8).collect();
        let sealed = seal(&key, "000000010000000000000001", &data);
        assert_eq!(open(&key, "000000010000000000000001", &sealed).unwrap(), data);
        // Another name (a renamed object).
        assert!(err_text(open(&key, "000000010000000000000002", &sealed)).contains("failed authentication"));
        // Wrong key.
        let e = err_text(open(&Key([8; 32]), "000000010000000000000001", &sealed));
        assert!(e.contains("encrypted with key") && e.contains(&key.fingerprint()), "{e}");
        // One flipped byte anywhere in the body.
        for pos in [HEADER_LEN, HEADER_LEN + CHUNK + 20, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[pos] ^= 1;
            assert!(err_text(open(&key, "000000010000000000000001", &bad)).contains("failed authentication"));
        }
        // Flipped salt changes the key: authentication fails.
        let mut bad = sealed.clone();
        bad[40] ^= 1;
        assert!(open(&key, "000000010000000000000001", &bad).is_err());
        // Truncated at a chunk boundary and mid-chunk.
        let full = CHUNK + TAG_LEN;
        let at_boundary = &sealed[..HEADER_LEN + 2 * full];
        assert!(err_text(open(&key, "000000010000000000000001", at_boundary)).contains("truncated"));
        let mid = &sealed[..HEADER_LEN + full + 100];
        assert!(open(&key, "000000010000000000000001", mid).is_err());
        assert!(err_text(open(&key, "000000010000000000000001", &sealed[..30])).contains("truncated"));
        // Two chunks swapped.
        let mut swapped = sealed.clone();
        let (a, b) = (HEADER_LEN, HEADER_LEN + full);
        let first: Vec<u8> = sealed[a..a + full].to_vec();
        swapped.copy_within(b..b + full, a);
        swapped[b..b + full].copy_from_slice(&first);
        assert!(err_text(open(&key, "000000010000000000000001", &swapped)).contains("failed authentication"));
        // Appended data.
        let mut longer = sealed.clone();
        longer.extend_from_slice(&sealed[HEADER_LEN..HEADER_LEN + full]);
        assert!(open(&key, "000000010000000000000001", &longer).is_err());
        // Not encrypted at all.
        assert!(err_text(open(&key, "x", &[0u8; 100])).contains("bad magic"));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn round_trips_at_chunk_boundaries(extra in 0usize..3, chunks in 0usize..3, delta in -2i64..3) {
            let len = (chunks * CHUNK) as i64 + delta + extra as i64;
            let len = len.max(0) as usize;
            let key = Key([3; 32]);
            let data: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
            let sealed = seal(&key, "n", &data);
            prop_assert_eq!(open(&key, "n", &sealed).unwrap(), data);
            let chunks_out = len.div_ceil(CHUNK).max(1);
            prop_assert_eq!(sealed.len(), HEADER_LEN + len + chunks_out * TAG_LEN);
        }
    }
}
