//! A small WAL writer for tests: valid pages and records (page headers,
//! continuation flags, `MAXALIGN` padding, CRC-32C) in the layout
//! [`crate::walread`] reads, for any PostgreSQL 12-18 page magic and segment
//! size. Not a PostgreSQL: it writes whatever records it is given.

use crate::lsn::Lsn;
use crate::pagehdr::magic_for_major_version;
use crate::relfile::RelFileLocator;
use crate::wal::SegmentSize;
use crate::walread::*;

/// A full-page image to attach to a block reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// As stored (compressed, or the page without its hole).
    pub bytes: Vec<u8>,
    pub hole_offset: u16,
    pub hole_length: u16,
    pub compression: ImageCompression,
    pub apply: bool,
}

impl ImageSpec {
    /// Stores `page` (8192 bytes) with the hole `[hole_offset, hole_offset + hole_length)`
    /// removed (it must be zeros) and compressed with `compression`
    /// (pglz here: literals and runs only).
    pub fn from_page(page: &[u8], hole_offset: u16, hole_length: u16, compression: ImageCompression) -> ImageSpec {
        assert_eq!(page.len(), BLCKSZ);
        let (o, l) = (usize::from(hole_offset), usize::from(hole_length));
        let mut raw = page[..o].to_vec();
        raw.extend_from_slice(&page[o + l..]);
        let bytes = match compression {
            ImageCompression::None => raw,
            ImageCompression::Pglz => pglz_literals(&raw),
            ImageCompression::Lz4 => lz4_flex::block::compress(&raw),
            ImageCompression::Zstd => zstd::bulk::compress(&raw, 1).expect("zstd compress"),
        };
        ImageSpec { bytes, hole_offset, hole_length, compression, apply: true }
    }
}

/// A simple valid pglz encoding: literals, and runs of one byte as
/// back-references at offset 1 (enough to make a page with a zeroed gap small).
pub fn pglz_literals(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 8 + 1);
    let mut ctrl_at = 0;
    let mut items = 8;
    let mut i = 0;
    while i < raw.len() {
        if items == 8 {
            ctrl_at = out.len();
            out.push(0);
            items = 0;
        }
        let run = if i > 0 { raw[i..].iter().take(273).take_while(|&&b| b == raw[i - 1]).count() } else { 0 };
        if run >= 3 {
            out[ctrl_at] |= 1 << items;
            if run >= 18 {
                out.extend_from_slice(&[0x0F, 0x01, (run - 18) as u8]);
            } else {
                out.extend_from_slice(&[(run - 3) as u8, 0x01]);
            }
            i += run;
        } else {
            out.push(raw[i]);
            i += 1;
        }
        items += 1;
    }
    out
}

/// A block reference to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockSpec {
    pub id: u8,
    pub locator: RelFileLocator,
    pub fork: u8,
    pub block: u32,
    pub will_init: bool,
    pub data: Vec<u8>,
    pub image: Option<ImageSpec>,
}

/// A record to write.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordSpec {
    pub xid: u32,
    pub rmid: u8,
    pub info: u8,
    pub origin: Option<u16>,
    pub toplevel_xid: Option<u32>,
    pub blocks: Vec<BlockSpec>,
    pub main_data: Vec<u8>,
}

impl RecordSpec {
    /// The record's bytes (header with `prev` and CRC included), as PostgreSQL's
    /// `XLogRecordAssemble` lays them out for `major`.
    pub fn encode(&self, major: u32, prev: Lsn) -> Vec<u8> {
        let mut h = vec![0u8; RECORD_HEADER];
        let mut data = Vec::new();
        let mut last: Option<RelFileLocator> = None;
        for b in &self.blocks {
            let mut ff = b.fork & BKPBLOCK_FORK_MASK;
            if b.image.is_some() {
                ff |= BKPBLOCK_HAS_IMAGE;
            }
            if !b.data.is_empty() {
                ff |= BKPBLOCK_HAS_DATA;
            }
            if b.will_init {
                ff |= BKPBLOCK_WILL_INIT;
            }
            let same = last == Some(b.locator);
            if same {
                ff |= BKPBLOCK_SAME_REL;
            }
            h.push(b.id);
            h.push(ff);
            h.extend_from_slice(&(b.data.len() as u16).to_le_bytes());
            if let Some(img) = &b.image {
                let hole = img.hole_length > 0;
                let mut info = if hole { BKPIMAGE_HAS_HOLE } else { 0 };
                if major >= 15 {
                    info |= match img.compression {
                        ImageCompression::None => 0,
                        ImageCompression::Pglz => BKPIMAGE_COMPRESS_PGLZ_15,
                        ImageCompression::Lz4 => BKPIMAGE_COMPRESS_LZ4_15,
                        ImageCompression::Zstd => BKPIMAGE_COMPRESS_ZSTD_15,
                    };
                    if img.apply {
                        info |= BKPIMAGE_APPLY_15;
                    }
                } else {
                    if img.compression != ImageCompression::None {
                        info |= BKPIMAGE_IS_COMPRESSED_12;
                    }
                    if img.apply {
                        info |= BKPIMAGE_APPLY_12;
                    }
                }
                h.extend_from_slice(&(img.bytes.len() as u16).to_le_bytes());
                h.extend_from_slice(&img.hole_offset.to_le_bytes());
                h.push(info);
                if hole && img.compression != ImageCompression::None {
                    h.extend_from_slice(&img.hole_length.to_le_bytes());
                }
                data.extend_from_slice(&img.bytes);
            }
            if !same {
                for v in [b.locator.spc, b.locator.db, b.locator.rel] {
                    h.extend_from_slice(&v.to_le_bytes());
                }
            }
            h.extend_from_slice(&b.block.to_le_bytes());
            data.extend_from_slice(&b.data);
            last = Some(b.locator);
        }
        if let Some(o) = self.origin {
            h.push(XLR_BLOCK_ID_ORIGIN);
            h.extend_from_slice(&o.to_le_bytes());
        }
        if let Some(x) = self.toplevel_xid {
            h.push(XLR_BLOCK_ID_TOPLEVEL_XID);
            h.extend_from_slice(&x.to_le_bytes());
        }
        if !self.main_data.is_empty() {
            if self.main_data.len() < 256 {
                h.push(XLR_BLOCK_ID_DATA_SHORT);
                h.push(self.main_data.len() as u8);
            } else {
                h.push(XLR_BLOCK_ID_DATA_LONG);
                h.extend_from_slice(&(self.main_data.len() as u32).to_le_bytes());
            }
            data.extend_from_slice(&self.main_data);
        }
        h.extend_from_slice(&data);
        let total = h.len() as u32;
        h[0..4].copy_from_slice(&total.to_le_bytes());
        h[4..8].copy_from_slice(&self.xid.to_le_bytes());
        h[8..16].copy_from_slice(&prev.0.to_le_bytes());
        h[16] = self.info;
        h[17] = self.rmid;
        let crc = crc32c::crc32c_append(crc32c::crc32c(&h[RECORD_HEADER..]), &h[..20]);
        h[20..24].copy_from_slice(&crc.to_le_bytes());
        h
    }
}

/// Writes a WAL stream from a segment start.
#[derive(Debug, Clone)]
pub struct WalWriter {
    seg: u64,
    magic: u16,
    major: u32,
    pub tli: u32,
    pub sysid: u64,
    start: Lsn,
    out: Vec<u8>,
    prev: Lsn,
    overwrite_next_page: bool,
}

impl WalWriter {
    /// A writer of PostgreSQL `major` WAL from `start` (a segment start).
    pub fn new(segment_size: SegmentSize, start: Lsn, major: u32) -> WalWriter {
        assert_eq!(start.0 % u64::from(segment_size.bytes()), 0, "start at a segment start");
        WalWriter {
            seg: u64::from(segment_size.bytes()),
            magic: magic_for_major_version(major).expect("known major"),
            major,
            tli: 1,
            sysid: 7_000_000_000_000_000_001,
            start,
            out: Vec::new(),
            prev: Lsn(start.0.saturating_sub(0x28)),
            overwrite_next_page: false,
        }
    }

    pub fn pos(&self) -> Lsn {
        Lsn(self.start.0 + self.out.len() as u64)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.out
    }

    /// The LSN the next record's `xl_prev` names.
    pub fn prev(&self) -> Lsn {
        self.prev
    }

    pub fn set_prev(&mut self, prev: Lsn) {
        self.prev = prev;
    }

    fn page_header(&mut self, rem_len: u32) {
        let at = self.pos().0;
        debug_assert_eq!(at % XLOG_BLCKSZ, 0);
        let long = at.is_multiple_of(self.seg);
        let mut info = 0u16;
        if long {
            info |= XLP_LONG_HEADER;
        }
        if rem_len > 0 {
            info |= XLP_FIRST_IS_CONTRECORD;
        }
        if std::mem::take(&mut self.overwrite_next_page) {
            info |= XLP_FIRST_IS_OVERWRITE_CONTRECORD;
        }
        self.out.extend_from_slice(&self.magic.to_le_bytes());
        self.out.extend_from_slice(&info.to_le_bytes());
        self.out.extend_from_slice(&self.tli.to_le_bytes());
        self.out.extend_from_slice(&at.to_le_bytes());
        self.out.extend_from_slice(&rem_len.to_le_bytes());
        self.out.extend_from_slice(&[0; 4]);
        if long {
            self.out.extend_from_slice(&self.sysid.to_le_bytes());
            self.out.extend_from_slice(&(self.seg as u32).to_le_bytes());
            self.out.extend_from_slice(&(XLOG_BLCKSZ as u32).to_le_bytes());
        }
    }

    /// Writes record bytes from the current (aligned) position, with page
    /// headers where pages start; stops after `limit` bytes if given.
    fn write_record_bytes(&mut self, rec: &[u8], limit: Option<usize>) -> Lsn {
        if self.pos().0.is_multiple_of(XLOG_BLCKSZ) {
            self.page_header(0);
        }
        let lsn = self.pos();
        let limit = limit.unwrap_or(rec.len()).min(rec.len());
        let mut i = 0;
        while i < limit {
            let page_left = (XLOG_BLCKSZ - self.pos().0 % XLOG_BLCKSZ) as usize;
            let n = page_left.min(limit - i);
            self.out.extend_from_slice(&rec[i..i + n]);
            i += n;
            if i < limit && self.pos().0.is_multiple_of(XLOG_BLCKSZ) {
                self.page_header((rec.len() - i) as u32);
            }
        }
        lsn
    }

    fn align(&mut self) {
        while !self.pos().0.is_multiple_of(8) {
            self.out.push(0);
        }
    }

    /// Appends a record; returns its LSN.
    pub fn append(&mut self, rec: &RecordSpec) -> Lsn {
        let lsn_guess = self.next_record_lsn();
        let bytes = rec.encode(self.major, self.prev);
        let lsn = self.write_record_bytes(&bytes, None);
        debug_assert_eq!(lsn, lsn_guess);
        self.align();
        self.prev = lsn;
        lsn
    }

    /// Appends already encoded record bytes (header, prev and CRC as given).
    pub fn append_raw(&mut self, bytes: &[u8]) -> Lsn {
        let lsn = self.write_record_bytes(bytes, None);
        self.align();
        self.prev = lsn;
        lsn
    }

    /// Where the next record will start.
    pub fn next_record_lsn(&self) -> Lsn {
        let p = self.pos().0;
        if p.is_multiple_of(XLOG_BLCKSZ) {
            Lsn(p + if p.is_multiple_of(self.seg) { LONG_PAGE_HEADER as u64 } else { SHORT_PAGE_HEADER as u64 })
        } else {
            Lsn(p)
        }
    }

    /// Writes the start of `rec` up to the end of its first page and abandons
    /// it, as a crash does; the next page gets `XLP_FIRST_IS_OVERWRITE_CONTRECORD`
    /// (and the next record's `xl_prev` still names the last complete record).
    /// Returns the abandoned record's LSN.
    pub fn append_abandoned(&mut self, rec: &RecordSpec) -> Lsn {
        let bytes = rec.encode(self.major, self.prev);
        let start = self.next_record_lsn();
        let first_page = (XLOG_BLCKSZ - start.0 % XLOG_BLCKSZ) as usize;
        assert!(bytes.len() > first_page, "the abandoned record must cross a page");
        let lsn = self.write_record_bytes(&bytes, Some(first_page));
        self.overwrite_next_page = true;
        lsn
    }

    /// `XLOG_SWITCH`, then the rest of the segment as PostgreSQL leaves it
    /// (page headers, zeros). Returns the switch record's LSN.
    pub fn switch(&mut self) -> Lsn {
        let lsn = self.append(&RecordSpec { rmid: RM_XLOG_ID, info: XLOG_SWITCH, ..Default::default() });
        let end = self.pos().0.div_ceil(self.seg) * self.seg;
        self.pad_to(Lsn(end));
        lsn
    }

    /// Zeros (with page headers) up to `lsn`.
    pub fn pad_to(&mut self, lsn: Lsn) {
        while self.pos() < lsn {
            if self.pos().0.is_multiple_of(XLOG_BLCKSZ) {
                self.page_header(0);
            } else {
                let page_left = XLOG_BLCKSZ - self.pos().0 % XLOG_BLCKSZ;
                let n = page_left.min(lsn.0 - self.pos().0);
                self.out.resize(self.out.len() + n as usize, 0);
            }
        }
    }

    /// Zeros without page headers up to `lsn` (unwritten WAL, as in a `.partial` segment).
    pub fn zeros_to(&mut self, lsn: Lsn) {
        if lsn > self.pos() {
            let n = (lsn.0 - self.pos().0) as usize;
            self.out.resize(self.out.len() + n, 0);
        }
    }
}
