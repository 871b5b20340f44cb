//! The codec pipeline every stored object goes through, WAL and backup
//! files alike: plaintext → checksum → compress → encrypt → storage, and
//! back.

use std::io::{self, Read, Write};

use dbbackup_format::Codec;

use crate::checksum::Checksum;
use crate::codec::{decoder, encoder, CodecSettings, Plain, Sink};
use crate::crypto::{DecryptReader, EncryptSink};
use crate::error::{pipeline_error, Error, Result};
use crate::repo::Repository;
use crate::storage::ObjectWriter;

const BUF: usize = 1 << 20;

/// What `encode` wrote.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Checksum (BLAKE3) of the plaintext, lower-case hex.
    pub checksum: String,
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
    let mut h = Checksum::new();
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
    Ok(Encoded { checksum: h.hex(), plain_size: total, stored_size: counting.n })
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
    /// The checker or the writer refused a chunk.
    Sink(Error),
}

/// Decodes, checks and writes in three stages on three threads: `reader`
/// (decryption, decompression) on one, `check` (checksum, header) on the
/// calling thread, `write` on a third, so a restored file costs about as
/// long as its slowest stage. Chunks go through each stage in order.
/// Memory: four 1 MiB buffers, whatever the object's size.
pub fn pump(
    mut reader: Box<dyn Read + Send + '_>,
    mut check: impl FnMut(&[u8]) -> Result<()>,
    mut write: impl FnMut(&[u8]) -> Result<()> + Send,
) -> std::result::Result<u64, PumpError> {
    use std::sync::mpsc::sync_channel;
    const BUFFERS: usize = 4;
    std::thread::scope(move |s| {
        // Every channel end lives in exactly one stage: when a stage stops
        // (done, or failed) its ends drop, and the stages next to it wake
        // from their blocking send or receive and stop too. Nothing hangs.
        let (empty_tx, empty_rx) = sync_channel::<Vec<u8>>(BUFFERS);
        let (full_tx, full_rx) = sync_channel::<io::Result<(Vec<u8>, usize)>>(BUFFERS);
        let (checked_tx, checked_rx) = sync_channel::<(Vec<u8>, usize)>(BUFFERS);
        for _ in 0..BUFFERS {
            empty_tx.send(vec![0u8; BUF]).expect("room for every buffer");
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
        let writer = s.spawn(move || -> Result<()> {
            for (buf, n) in checked_rx.iter() {
                write(&buf[..n])?;
                // The reader may have finished: a closed channel is fine.
                let _ = empty_tx.send(buf);
            }
            Ok(())
        });
        let mut total = 0u64;
        let checked = (|| {
            for msg in full_rx.iter() {
                let (buf, n) = msg.map_err(PumpError::Read)?;
                check(&buf[..n]).map_err(PumpError::Sink)?;
                total += n as u64;
                if checked_tx.send((buf, n)).is_err() {
                    break; // the writer failed: its error is reported below
                }
            }
            Ok(())
        })();
        drop(checked_tx);
        drop(full_rx);
        let written = writer.join().expect("the writer does not panic");
        checked?;
        written.map_err(PumpError::Sink)?;
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
    fn pump_ends_on_read_check_and_write_errors_without_hanging() {
        let r = pump(Box::new(Failing { ok: 5 }), |_| Ok(()), |_| Ok(()));
        assert!(matches!(r, Err(PumpError::Read(_))));
        // The checker refuses the first chunk while the reader still has more.
        let r =
            pump(Box::new(io::Cursor::new(vec![0u8; 10 << 20])), |_| Err(Error::integrity("bad header")), |_| Ok(()));
        assert!(matches!(r, Err(PumpError::Sink(e)) if e.to_string().contains("bad header")));
        // The writer fails on its second chunk.
        let mut calls = 0;
        let r = pump(
            Box::new(io::Cursor::new(vec![0u8; 10 << 20])),
            |_| Ok(()),
            move |_| {
                calls += 1;
                if calls == 2 {
                    Err(Error::io("disk full"))
                } else {
                    Ok(())
                }
            },
        );
        assert!(matches!(r, Err(PumpError::Sink(e)) if e.to_string().contains("disk full")));
        // Everything arrives, in order, at both stages.
        let data: Vec<u8> = (0..(5u32 << 20) + 3).map(|i| (i % 251) as u8).collect();
        let mut checked = Vec::new();
        let mut written = Vec::new();
        let r = pump(
            Box::new(io::Cursor::new(data.clone())),
            |c| {
                checked.extend_from_slice(c);
                Ok(())
            },
            |c| {
                written.extend_from_slice(c);
                Ok(())
            },
        );
        assert_eq!(r.unwrap(), data.len() as u64);
        assert_eq!(checked, data);
        assert_eq!(written, data);
    }
}
