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
    /// Checksum (BLAKE3) of the plaintext, lower-case hex (`None`: not
    /// asked for, see [`encode_unhashed`]).
    pub checksum: Option<String>,
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

/// The sink chain an object's plaintext goes into: compress → encrypt (when
/// the repository has a key) → `out`.
fn sink_chain<'a>(
    repo: &Repository,
    aad: &str,
    settings: CodecSettings,
    out: &'a mut Counting<'_>,
) -> io::Result<Box<dyn Sink + 'a>> {
    let bottom: Box<dyn Sink + 'a> = Box::new(Plain(out));
    let bottom: Box<dyn Sink + 'a> = match repo.key() {
        Some(key) => Box::new(EncryptSink::new(key, aad, bottom)?),
        None => bottom,
    };
    encoder(settings, bottom)
}

/// Streams `first` and then the rest of `reader` into `writer` through the
/// repository's pipeline. `aad` is the name bound into encrypted objects;
/// `source` names the input in errors.
///
/// An input larger than one buffer is read and checksummed on this thread
/// while others compress, encrypt and write, so a segment costs about as
/// long as the slowest stage. With `settings.threads > 0` and zstd, that
/// many workers compress 1 MiB chunks as independent zstd frames (one
/// stream of concatenated frames, as `zstd -d` reads it; about 0.4% larger
/// than one frame); otherwise one thread compresses the stream. Memory: a
/// few 1 MiB buffers and the compressors' state, whatever the input size.
pub fn encode(
    repo: &Repository,
    writer: &mut dyn ObjectWriter,
    aad: &str,
    settings: CodecSettings,
    first: &[u8],
    reader: &mut dyn Read,
    source: &str,
) -> Result<Encoded> {
    encode_with(repo, writer, aad, settings, first, reader, source, Some(Checksum::new()))
}

/// [`encode`] without checksumming the plaintext on the way: for an input
/// whose checksum is known already and that cannot have changed since (a
/// finished WAL segment), one BLAKE3 pass over 16 MiB less.
pub fn encode_unhashed(
    repo: &Repository,
    writer: &mut dyn ObjectWriter,
    aad: &str,
    settings: CodecSettings,
    first: &[u8],
    reader: &mut dyn Read,
    source: &str,
) -> Result<Encoded> {
    encode_with(repo, writer, aad, settings, first, reader, source, None)
}

#[allow(clippy::too_many_arguments)]
fn encode_with(
    repo: &Repository,
    writer: &mut dyn ObjectWriter,
    aad: &str,
    settings: CodecSettings,
    first: &[u8],
    reader: &mut dyn Read,
    source: &str,
    mut h: Option<Checksum>,
) -> Result<Encoded> {
    let write_err = |e: io::Error| Error::io(format!("cannot write {aad} to repository {}: {e}", repo.location()));
    let read_err = |e: io::Error| Error::io(format!("cannot read {source}: {e}"));
    if let Some(h) = h.as_mut() {
        h.update(first);
    }
    let mut buf = vec![0u8; BUF];
    let n = read_full(reader, &mut buf).map_err(read_err)?;
    if let Some(h) = h.as_mut() {
        h.update(&buf[..n]);
    }
    let mut counting = Counting { inner: writer, n: 0 };
    // One thread for an input that is all in hand already.
    let single = CodecSettings { threads: 0, ..settings };
    if n < BUF {
        let mut sink = sink_chain(repo, aad, single, &mut counting).map_err(write_err)?;
        sink.write_all(first).map_err(write_err)?;
        sink.write_all(&buf[..n]).map_err(write_err)?;
        sink.finish().map_err(write_err)?;
        let plain_size = (first.len() + n) as u64;
        return Ok(Encoded { checksum: h.map(|h| h.hex()), plain_size, stored_size: counting.n });
    }
    let workers = if settings.codec == Codec::Zstd { settings.threads as usize } else { 0 };
    let (read, written) = std::thread::scope(|s| {
        let pipe = Pipeline::start(s, repo, aad, settings, workers, first, &mut counting);
        let read = pipe.feed(buf, n, reader, h.as_mut()).map_err(read_err);
        (read, pipe.finish())
    });
    // A read error comes first: the writer's is its consequence.
    let plain_size = read?;
    written.map_err(write_err)?;
    Ok(Encoded { checksum: h.map(|h| h.hex()), plain_size: first.len() as u64 + plain_size, stored_size: counting.n })
}

/// A chunk on its way from the reader to the writer: its position in the
/// input, the compressed bytes (parallel zstd) or nothing (the writer
/// compresses), and the input buffer with its length.
struct Chunk {
    seq: u64,
    frame: Option<Vec<u8>>,
    input: Vec<u8>,
    len: usize,
}

enum ToWriter {
    Chunk(Chunk),
    /// The input ended after this many chunks.
    End(u64),
}

/// The threads behind `encode` for one large input.
struct Pipeline<'scope> {
    /// To the compressors (parallel zstd); `None`: the writer compresses.
    work: Option<std::sync::mpsc::SyncSender<Chunk>>,
    to_writer: std::sync::mpsc::SyncSender<ToWriter>,
    empty: std::sync::mpsc::Receiver<Vec<u8>>,
    writer: std::thread::ScopedJoinHandle<'scope, io::Result<()>>,
    compressors: Vec<std::thread::ScopedJoinHandle<'scope, ()>>,
}

/// Input buffers in flight: enough to keep every thread busy.
const IN_FLIGHT: usize = 6;

impl<'scope> Pipeline<'scope> {
    fn start<'env>(
        s: &'scope std::thread::Scope<'scope, 'env>,
        repo: &'env Repository,
        aad: &'env str,
        settings: CodecSettings,
        workers: usize,
        first: &'env [u8],
        out: &'env mut Counting<'_>,
    ) -> Pipeline<'scope>
    where
        'env: 'scope,
    {
        use std::sync::mpsc::sync_channel;
        use std::sync::{Arc, Mutex};
        let (to_writer, from_workers) = sync_channel::<ToWriter>(IN_FLIGHT);
        let (empty_tx, empty) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let mut compressors = Vec::new();
        let mut work = None;
        if workers > 0 {
            let (work_tx, work_rx) = sync_channel::<Chunk>(IN_FLIGHT);
            work = Some(work_tx);
            let work_rx = Arc::new(Mutex::new(work_rx));
            for _ in 0..workers {
                let (work_rx, to_writer, empty_tx) = (Arc::clone(&work_rx), to_writer.clone(), empty_tx.clone());
                compressors.push(s.spawn(move || {
                    let Ok(mut z) = zstd::bulk::Compressor::new(settings.level) else { return };
                    if z.include_checksum(true).is_err() {
                        return;
                    }
                    loop {
                        let next = work_rx.lock().expect("no panics while locked").recv();
                        let Ok(mut chunk) = next else { return };
                        let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk.len));
                        if z.compress_to_buffer(&chunk.input[..chunk.len], &mut frame).is_err() {
                            return; // the writer sees a chunk missing and fails
                        }
                        chunk.frame = Some(frame);
                        let input = std::mem::take(&mut chunk.input);
                        if to_writer.send(ToWriter::Chunk(chunk)).is_err() {
                            return;
                        }
                        let _ = empty_tx.send(input);
                    }
                }));
            }
        }
        let writer = s.spawn(move || -> io::Result<()> {
            // Frames arrive compressed: the writer only encrypts and writes.
            let codec = if workers > 0 { CodecSettings { codec: Codec::None, ..settings } } else { settings };
            let mut sink = sink_chain(repo, aad, CodecSettings { threads: 0, ..codec }, out)?;
            if workers > 0 && !first.is_empty() {
                sink.write_all(&zstd_frame(settings.level, first)?)?;
            } else {
                sink.write_all(first)?;
            }
            let mut pending = std::collections::BTreeMap::new();
            let (mut next, mut end) = (0u64, None);
            for msg in from_workers {
                match msg {
                    ToWriter::Chunk(c) => {
                        pending.insert(c.seq, c);
                    }
                    ToWriter::End(n) => end = Some(n),
                }
                while let Some(c) = pending.remove(&next) {
                    match c.frame {
                        Some(frame) => sink.write_all(&frame)?,
                        None => {
                            sink.write_all(&c.input[..c.len])?;
                            let _ = empty_tx.send(c.input);
                        }
                    }
                    next += 1;
                }
                if end == Some(next) {
                    return sink.finish();
                }
            }
            // The reader or a compressor stopped early: nothing is finished,
            // and the uncommitted object is never seen.
            Err(io::Error::other("the input ended early"))
        });
        Pipeline { work, to_writer, empty, writer, compressors }
    }

    /// Sends the first chunk, then reads and checksums the rest. Returns
    /// the bytes read (after `first`).
    fn feed(&self, buf: Vec<u8>, n: usize, reader: &mut dyn Read, mut h: Option<&mut Checksum>) -> io::Result<u64> {
        use std::sync::mpsc::TryRecvError;
        let mut total = n as u64;
        let mut seq = 0u64;
        if !self.send(Chunk { seq, frame: None, input: buf, len: n }) {
            return Ok(total); // a later stage failed: its error is reported
        }
        let mut allocated = 1;
        loop {
            let mut b = match self.empty.try_recv() {
                Ok(b) => b,
                Err(TryRecvError::Empty) if allocated < IN_FLIGHT => {
                    allocated += 1;
                    vec![0u8; BUF]
                }
                Err(_) => match self.empty.recv() {
                    Ok(b) => b,
                    Err(_) => return Ok(total),
                },
            };
            let n = read_full(reader, &mut b)?;
            if n == 0 {
                let _ = self.to_writer.send(ToWriter::End(seq + 1));
                return Ok(total);
            }
            if let Some(h) = h.as_mut() {
                h.update(&b[..n]);
            }
            total += n as u64;
            seq += 1;
            if !self.send(Chunk { seq, frame: None, input: b, len: n }) {
                return Ok(total);
            }
        }
    }

    /// Hands a chunk on; false when the next stage has stopped.
    fn send(&self, chunk: Chunk) -> bool {
        match &self.work {
            Some(work) => work.send(chunk).is_ok(),
            None => self.to_writer.send(ToWriter::Chunk(chunk)).is_ok(),
        }
    }

    /// Waits for every thread; the writer's result.
    fn finish(self) -> io::Result<()> {
        let Pipeline { work, to_writer, empty, writer, compressors } = self;
        drop(work);
        drop(to_writer);
        for c in compressors {
            c.join().expect("a compressor does not panic");
        }
        drop(empty);
        writer.join().expect("the writer does not panic")
    }
}

/// One independent zstd frame of `data`, with its content checksum.
fn zstd_frame(level: i32, data: &[u8]) -> io::Result<Vec<u8>> {
    let mut z = zstd::bulk::Compressor::new(level)?;
    z.include_checksum(true)?;
    z.compress(data)
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

    /// A repository in a temporary directory.
    fn repo(dir: &std::path::Path, codec: Codec, key: Option<dbbackup_format::key::Key>) -> Repository {
        let storage = std::sync::Arc::new(crate::storage::LocalStorage::new(dir.join("repo")));
        Repository::init(storage, crate::repo::InitOptions { codec, level: None, key, identity: None }).unwrap()
    }

    /// Input that compresses somewhat, as WAL does.
    fn data(len: usize) -> Vec<u8> {
        (0..len).map(|i| ((i / 3) % 251) as u8 ^ ((i % 4096 == 0) as u8)).collect()
    }

    fn encode_into(
        repo: &Repository,
        settings: CodecSettings,
        input: &[u8],
        reader: &mut dyn Read,
    ) -> Result<(Encoded, Vec<u8>)> {
        let mut w = repo.storage().create("t/obj", crate::storage::Commit::Replace).unwrap();
        let enc = encode(repo, w.as_mut(), "obj", settings, &input[..1000], reader, "input")?;
        w.commit().unwrap();
        let mut back = Vec::new();
        open_decoded(repo, "t/obj", settings.codec, repo.key().is_some(), "obj")?.read_to_end(&mut back).unwrap();
        Ok((enc, back))
    }

    #[test]
    fn encode_round_trips_through_every_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let key = dbbackup_format::key::Key::parse(&"ab".repeat(32)).unwrap();
        let input = data((5 << 20) + 12345);
        for (encrypted, codec, threads) in [
            (false, Codec::Zstd, 2),
            (false, Codec::Zstd, 0),
            (true, Codec::Zstd, 2),
            (false, Codec::Lz4, 0),
            (false, Codec::Gzip, 0),
            (true, Codec::None, 0),
        ] {
            let sub = dir.path().join(format!("{encrypted}-{codec}-{threads}"));
            let r = repo(&sub, codec, encrypted.then(|| key.clone()));
            let settings = CodecSettings { threads, ..CodecSettings::new(codec, None) };
            let (enc, back) = encode_into(&r, settings, &input, &mut io::Cursor::new(&input[1000..])).unwrap();
            assert_eq!(back, input, "{encrypted} {codec} {threads}");
            assert_eq!(enc.plain_size, input.len() as u64);
            assert_eq!(enc.checksum, Some(crate::checksum::of(&input)));
        }
    }

    #[test]
    fn encode_reports_read_and_write_failures_without_hanging() {
        let dir = tempfile::tempdir().unwrap();
        let r = repo(dir.path(), Codec::Zstd, None);
        for threads in [0, 2] {
            let settings = CodecSettings { threads, ..CodecSettings::new(Codec::Zstd, None) };
            let mut w = r.storage().create("t/obj", crate::storage::Commit::Replace).unwrap();
            let e = encode(&r, w.as_mut(), "obj", settings, b"head", &mut Failing { ok: 5 }, "the input").unwrap_err();
            assert!(e.to_string().contains("cannot read the input"), "{e}");
        }
        /// Accepts `budget` bytes, then fails.
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if buf.len() > self.0 {
                    return Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        impl ObjectWriter for Full {
            fn commit(self: Box<Self>) -> crate::storage::StorageResult<()> {
                Ok(())
            }
        }
        // Incompressible: xorshift64.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..(8 << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        for threads in [0, 2] {
            let settings = CodecSettings { threads, ..CodecSettings::new(Codec::Zstd, None) };
            let mut w = Full(3 << 20);
            let e = encode(&r, &mut w, "obj", settings, b"", &mut io::Cursor::new(&noise), "noise").unwrap_err();
            assert!(e.to_string().contains("disk full"), "{e}");
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
