// TEMP STUB
use crate::lsn::Lsn;
use crate::relfile::RelFileLocator;
use crate::wal::SegmentSize;
pub struct WalReader;
impl WalReader {
    pub fn new(_s: SegmentSize, _l: Lsn) -> WalReader {
        WalReader
    }
    pub fn feed<E>(
        &mut self,
        _b: &[u8],
        _each: &mut dyn FnMut(&Record<'_>) -> Result<(), E>,
    ) -> Result<(), ReadError<E>> {
        Ok(())
    }
}
pub struct Record<'a> {
    pub lsn: Lsn,
    pub end: Lsn,
    pub prev: Lsn,
    pub xid: u32,
    pub rmid: u8,
    pub info: u8,
    pub total_len: u32,
    pub major: u32,
    pub blocks: &'a [BlockRef<'a>],
    pub main_data: &'a [u8],
}
pub struct BlockRef<'a> {
    pub id: u8,
    pub locator: RelFileLocator,
    pub fork: u8,
    pub block: u32,
    pub will_init: bool,
    pub data: &'a [u8],
    pub image: Option<BlockImage<'a>>,
}
pub struct BlockImage<'a> {
    pub bytes: &'a [u8],
}
impl BlockImage<'_> {
    pub fn page(&self) -> Result<Vec<u8>, String> {
        Ok(vec![])
    }
}
pub enum ReadError<E> {
    EndOfWal { lsn: Lsn },
    Corrupt { lsn: Lsn, reason: String },
    Callback(E),
}
