//! The codec pipeline every stored object goes through, WAL and backup
//! files alike: plaintext → SHA-256 → compress → encrypt → storage, and
//! back.

use std::io::{self, Read, Write};

use dbbackup_format::Codec;
use sha2::{Digest, Sha256};

use crate::codec::{decoder, encoder, CodecSettings, Plain, Sink};
use crate::crypto::{DecryptReader, EncryptSink};
use crate::error::{pipeline_error, Error, Result};
use crate::repo::Repository;
use crate::storage::ObjectWriter;

const BUF: usize = 1 << 20;

/// What `encode` wrote.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// SHA-256 of the plaintext, lower-case hex.
    pub sha256: String,
    pub plain_size: u64,
    pub stored_size: u64,
}

/// Counts bytes on their way to storage.
struct Counting<'a> {
    inner: &'a mut dyn ObjectWriter,
    n: u64,
}

impl Write for Counting<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Streams `first` and then the rest of `reader` into `writer` through the
/// repository's pipeline. `aad` is the name bound into encrypted objects;
/// `source` names the input in errors.
pub fn encode(
    repo: &Repository,
    writer: &mut dyn ObjectWriter,
    aad: &str,
    settings: CodecSettings,
    first: &[u8],
    reader: &mut dyn Read,
    source: &str,
) -> Result<Encoded> {
    let write_err = |e: io::Error| Error::io(format!("cannot write {aad} to repository {}: {e}", repo.location()));
    let mut counting = Counting { inner: writer, n: 0 };
    let mut h = Sha256::new();
    let mut total = 0u64;
    {
        let bottom: Box<dyn Sink + '_> = Box::new(Plain(&mut counting));
        let bottom: Box<dyn Sink + '_> = match repo.key() {
            Some(key) => Box::new(EncryptSink::new(key, aad, bottom).map_err(write_err)?),
            None => bottom,
        };
        let mut sink = encoder(settings, bottom).map_err(write_err)?;
        h.update(first);
        sink.write_all(first).map_err(write_err)?;
        total += first.len() as u64;
        let mut buf = vec![0u8; BUF];
        loop {
            let n = read_full(reader, &mut buf).map_err(|e| Error::io(format!("cannot read {source}: {e}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            sink.write_all(&buf[..n]).map_err(write_err)?;
            total += n as u64;
        }
        sink.finish().map_err(write_err)?;
    }
    Ok(Encoded { sha256: hex::encode(h.finalize()), plain_size: total, stored_size: counting.n })
}

/// Opens a stored object as a stream of its plaintext. The caller hashes
/// what it reads and compares.
pub fn open_decoded(
    repo: &Repository,
    path: &str,
    codec: Codec,
    encrypted: bool,
    aad: &str,
) -> Result<Box<dyn Read + Send>> {
    let raw = repo.storage().open(path).map_err(|e| Error::from(e).context("cannot open stored object"))?;
    let raw = io::BufReader::with_capacity(256 << 10, raw);
    let inner: Box<dyn Read + Send> = if encrypted {
        let key = repo
            .key()
            .ok_or_else(|| Error::key(format!("{path} is encrypted but the repository has no key configured")))?;
        Box::new(DecryptReader::new(key, aad, raw).map_err(|e| pipeline_error(path, e))?)
    } else {
        Box::new(raw)
    };
    decoder(codec, inner).map_err(|e| pipeline_error(path, e))
}
