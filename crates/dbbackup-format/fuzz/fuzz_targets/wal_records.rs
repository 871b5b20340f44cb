//! Fuzzes the WAL record reader two ways:
//! 1. raw bytes as a segment (mostly rejected at the page header), and
//! 2. valid synthetic WAL built from the input, then damaged at
//!    input-chosen places and fed in input-chosen chunk sizes: the reader
//!    must never panic, never return a record that was not written, and
//!    restore every image it returns without panicking.
#![no_main]

use dbbackup_format::lsn::Lsn;
use dbbackup_format::relfile::RelFileLocator;
use dbbackup_format::wal::SegmentSize;
use dbbackup_format::walread::{ImageCompression, Record, WalReader, BLCKSZ};
use dbbackup_format::walwrite::{BlockSpec, ImageSpec, RecordSpec, WalWriter};
use libfuzzer_sys::fuzz_target;

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from(self.byte()) | (u16::from(self.byte()) << 8)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let n = n.min(self.0.len());
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        a.to_vec()
    }
}

fn feed_all(bytes: &[u8], chunk: usize, mut each: impl FnMut(&Record<'_>)) -> Option<Lsn> {
    let seg = SegmentSize::new(1 << 20).unwrap();
    let mut r = WalReader::new(seg, Lsn(0));
    for c in bytes.chunks(chunk.max(1)) {
        let res = r.feed(c, &mut |rec: &Record<'_>| -> Result<(), ()> {
            each(rec);
            for b in rec.blocks {
                if let Some(img) = b.image {
                    let _ = img.page();
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            return Some(match e {
                dbbackup_format::walread::ReadError::EndOfWal { lsn } => lsn,
                dbbackup_format::walread::ReadError::Corrupt { lsn, .. } => lsn,
                dbbackup_format::walread::ReadError::Callback(()) => unreachable!(),
            });
        }
    }
    None
}

fuzz_target!(|data: &[u8]| {
    let mut inp = Input(data);
    let mode = inp.byte();
    let chunk = usize::from(inp.u16()) + 1;
    if mode % 4 == 0 {
        // Raw bytes with a valid-looking first header, the rest as given.
        let mut w = WalWriter::new(SegmentSize::new(1 << 20).unwrap(), Lsn(0), 12 + u32::from(mode / 4 % 7));
        w.pad_to(Lsn(40));
        let mut bytes = w.bytes().to_vec();
        bytes.extend_from_slice(inp.0);
        feed_all(&bytes, chunk, |_| {});
        return;
    }
    let major = 12 + u32::from(mode / 4 % 7);
    let mut w = WalWriter::new(SegmentSize::new(1 << 20).unwrap(), Lsn(0), major);
    let mut written = Vec::new();
    let nrec = inp.byte() % 12 + 1;
    for x in 0..nrec {
        let kind = inp.byte();
        let mut spec = RecordSpec { xid: u32::from(x), rmid: kind % 22, info: 0x10, ..Default::default() };
        if spec.rmid == 0 {
            spec.info = 0x00;
        }
        let nblocks = kind / 32 % 4;
        for id in 0..nblocks {
            let flags = inp.byte();
            let image = if flags & 1 != 0 {
                let mut page = vec![0u8; BLCKSZ];
                let fill = inp.bytes(64);
                for (i, b) in page[..2000].iter_mut().enumerate() {
                    *b = fill.get(i % 64).copied().unwrap_or(1);
                }
                let comp = match (flags >> 1) % 4 {
                    0 => ImageCompression::None,
                    1 => ImageCompression::Pglz,
                    2 if major >= 15 => ImageCompression::Lz4,
                    3 if major >= 15 => ImageCompression::Zstd,
                    _ => ImageCompression::None,
                };
                Some(ImageSpec::from_page(&page, 2000, 6000, comp))
            } else {
                None
            };
            let len = usize::from(inp.byte());
            spec.blocks.push(BlockSpec {
                id: id * 2,
                locator: RelFileLocator { spc: 1663, db: 5, rel: 16384 + u32::from(flags >> 4) },
                fork: flags >> 6,
                block: u32::from(inp.u16()),
                will_init: flags & 8 != 0,
                data: inp.bytes(len),
                image,
            });
        }
        let len = usize::from(inp.u16()) % 30_000;
        spec.main_data = inp.bytes(len);
        if kind & 16 != 0 && spec.main_data.len() < len {
            spec.main_data.resize(len, kind);
        }
        if kind == 255 {
            written.push(w.switch());
        } else {
            written.push(w.append(&spec));
        }
    }
    let good = w.bytes().to_vec();
    let mut want = Vec::new();
    feed_all(&good, usize::MAX, |r| want.push((r.lsn, r.total_len, r.main_data.to_vec())));
    assert_eq!(want.len(), written.len());
    // Damage: up to 4 bytes changed, and maybe zeros from some point on.
    let mut bad = good.clone();
    for _ in 0..(inp.byte() % 5) {
        let at = (usize::from(inp.u16()) << 4 | usize::from(inp.byte() & 15)) % bad.len();
        bad[at] ^= inp.byte() | 1;
    }
    let mut got = Vec::new();
    feed_all(&bad, chunk, |r| got.push((r.lsn, r.total_len, r.main_data.to_vec())));
    assert!(got.len() <= want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "a record that was not written");
    }
});
