//! Streaming compression and decompression for each `Codec`.
//!
//! Encoders are `Sink`s: writers that must be `finish`ed so the codec can
//! write its trailer. Decoders wrap readers. Nothing here buffers a whole
//! object.

use std::io::{self, Read, Write};

use dbbackup_format::Codec;

/// A writer that has a final step (a codec trailer, a last encrypted chunk).
pub trait Sink: Write {
    /// Writes whatever the format needs at the end, then finishes the inner sink.
    fn finish(self: Box<Self>) -> io::Result<()>;
}

/// The bottom of a sink chain: a plain writer that needs no trailer.
pub struct Plain<W: Write>(pub W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> Sink for Plain<W> {
    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.0.flush()
    }
}

struct ZstdSink<'a>(zstd::stream::write::Encoder<'static, Box<dyn Sink + 'a>>);
struct Lz4Sink<'a>(lz4_flex::frame::FrameEncoder<Box<dyn Sink + 'a>>);
struct GzipSink<'a>(flate2::write::GzEncoder<Box<dyn Sink + 'a>>);

macro_rules! forward_write {
    ($t:ident) => {
        impl<'a> Write for $t<'a> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.write(buf)
            }
            fn flush(&mut self) -> io::Result<()> {
                self.0.flush()
            }
        }
    };
}
forward_write!(ZstdSink);
forward_write!(Lz4Sink);
forward_write!(GzipSink);

impl Sink for ZstdSink<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}
impl Sink for Lz4Sink<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish().map_err(io::Error::other)?.finish()
    }
}
impl Sink for GzipSink<'_> {
    fn finish(self: Box<Self>) -> io::Result<()> {
        self.0.finish()?.finish()
    }
}

/// Compression settings for one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodecSettings {
    pub codec: Codec,
    pub level: i32,
    /// Workers compressing independent zstd frames in parallel
    /// (`object::encode`); 0: one thread compresses the whole stream.
    pub threads: u32,
}

impl CodecSettings {
    pub fn new(codec: Codec, level: Option<i32>) -> CodecSettings {
        CodecSettings { codec, level: level.unwrap_or(codec.default_level()), threads: 0 }
    }
}

/// Wraps `inner` in the encoder for `settings`.
pub fn encoder<'a>(settings: CodecSettings, inner: Box<dyn Sink + 'a>) -> io::Result<Box<dyn Sink + 'a>> {
    Ok(match settings.codec {
        Codec::None => inner,
        Codec::Zstd => {
            let mut e = zstd::stream::write::Encoder::new(inner, settings.level)?;
            // Content checksum lets `zstd -t` verify an object by itself.
            e.include_checksum(true)?;
            Box::new(ZstdSink(e))
        }
        Codec::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new().content_checksum(true);
            Box::new(Lz4Sink(lz4_flex::frame::FrameEncoder::with_frame_info(info, inner)))
        }
        Codec::Gzip => {
            let level = flate2::Compression::new(settings.level.clamp(1, 9) as u32);
            Box::new(GzipSink(flate2::write::GzEncoder::new(inner, level)))
        }
    })
}

/// Wraps `inner` in the decoder for `codec`.
pub fn decoder<'a>(codec: Codec, inner: Box<dyn Read + Send + 'a>) -> io::Result<Box<dyn Read + Send + 'a>> {
    Ok(match codec {
        Codec::None => inner,
        Codec::Zstd => Box::new(zstd::stream::read::Decoder::new(inner)?),
        Codec::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(inner)),
        Codec::Gzip => Box::new(flate2::read::MultiGzDecoder::new(io::BufReader::with_capacity(64 << 10, inner))),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    pub(crate) struct Shared(pub Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn round_trip(codec: Codec, data: &[u8]) {
        let out = Shared::default();
        let mut enc = encoder(CodecSettings::new(codec, None), Box::new(Plain(out.clone()))).unwrap();
        for chunk in data.chunks(7777) {
            enc.write_all(chunk).unwrap();
        }
        enc.finish().unwrap();
        let stored = out.0.lock().unwrap().clone();
        let mut dec = decoder(codec, Box::new(io::Cursor::new(stored))).unwrap();
        let mut back = Vec::new();
        dec.read_to_end(&mut back).unwrap();
        assert_eq!(back, data, "{codec}");
    }

    #[test]
    fn every_codec_round_trips() {
        let data: Vec<u8> = (0..300_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect();
        for codec in Codec::ALL {
            round_trip(codec, &data);
            round_trip(codec, b"");
        }
    }
}
