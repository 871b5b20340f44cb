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

/// Why `pump` stopped.
#[derive(Debug)]
pub enum PumpError {
    /// Reading (decoding, decrypting) failed.
    Read(io::Error),
    /// The consumer refused a chunk.
    Sink(Error),
}

/// Reads `reader` on a second thread while `sink` consumes on this one, so
/// decoding and checksumming run in parallel. Memory: a few 1 MiB buffers.
pub fn pump(
    mut reader: Box<dyn Read + Send + '_>,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> std::result::Result<u64, PumpError> {
    use std::sync::mpsc::sync_channel;
    std::thread::scope(move |s| {
        // The channels live in this closure: when it returns (also early,
        // on an error) they are dropped before the scope joins the reader,
        // so a reader blocked on either channel wakes up and ends.
        let (full_tx, full_rx) = sync_channel::<io::Result<(Vec<u8>, usize)>>(2);
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(4);
        for _ in 0..3 {
            empty_tx.send(vec![0u8; BUF]).expect("room for three buffers");
        }
        s.spawn(move || {
            while let Ok(mut buf) = empty_rx.recv() {
                match read_full(&mut reader, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        if full_tx.send(Ok((buf, n))).is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = full_tx.send(Err(e));
                        break;
                    }
                }
            }
        });
        let mut total = 0u64;
        for msg in full_rx.iter() {
            let (buf, n) = msg.map_err(PumpError::Read)?;
            sink(&buf[..n]).map_err(PumpError::Sink)?;
            total += n as u64;
            // The reader may have finished: a closed return channel is fine.
            let _ = empty_tx.send(buf);
        }
        Ok(total)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that yields `ok` chunks of 1 MiB, then fails.
    struct Failing {
        ok: usize,
    }
    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.ok == 0 {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "corrupt"));
            }
            self.ok -= 1;
            buf.fill(1);
            Ok(buf.len())
        }
    }

    #[test]
    fn pump_ends_on_read_errors_and_sink_errors_without_hanging() {
        let r = pump(Box::new(Failing { ok: 5 }), |_| Ok(()));
        assert!(matches!(r, Err(PumpError::Read(_))));
        // The sink refuses the first chunk while the reader still has more.
        let r = pump(Box::new(io::Cursor::new(vec![0u8; 10 << 20])), |_| Err(Error::integrity("bad header")));
        assert!(matches!(r, Err(PumpError::Sink(_))));
        let mut seen = 0usize;
        let r = pump(Box::new(io::Cursor::new(vec![7u8; (5 << 20) + 3])), |c| {
            seen += c.len();
            Ok(())
        });
        assert_eq!(r.unwrap(), (5 << 20) + 3);
        assert_eq!(seen, (5 << 20) + 3);
    }
}
