//! A virtio-blk request parsed from a descriptor chain: the 16-byte header in readable
//! descriptors, data, and a 1-byte status in the last writable byte.

use std::io::Read;

use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::GuestMemoryMmap;

pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer per request we accept.
pub const MAX_REQUEST_BYTES: usize = 4 << 20;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

/// Bytes of the GET_ID answer.
pub const ID_BYTES: usize = 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("descriptor chain is not valid guest memory: {0}")]
    BadChain(String),
    #[error("no writable status byte")]
    NoStatus,
    #[error("request header is truncated")]
    ShortHeader,
}

pub struct Request<'a> {
    pub kind: u32,
    pub sector: u64,
    /// Guest data for writes.
    pub reader: Reader<'a>,
    /// Guest buffers for reads and GET_ID (status byte excluded).
    pub writer: Writer<'a>,
    /// The status byte.
    pub status: Writer<'a>,
}

impl<'a> Request<'a> {
    pub fn parse(
        mem: &'a GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Self, RequestError> {
        let bad = |e: virtio_queue::Error| RequestError::BadChain(e.to_string());
        let mut reader = chain.clone().reader(mem).map_err(bad)?;
        let mut writer = chain.writer(mem).map_err(bad)?;
        let writable = writer.available_bytes();
        if writable == 0 {
            return Err(RequestError::NoStatus);
        }
        let status = writer.split_at(writable - 1).map_err(bad)?;
        let mut hdr = [0u8; 16];
        reader
            .read_exact(&mut hdr)
            .map_err(|_| RequestError::ShortHeader)?;
        let kind = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes(hdr[8..16].try_into().unwrap_or([0; 8]));
        Ok(Request {
            kind,
            sector,
            reader,
            writer,
            status,
        })
    }

    /// Byte offset and length of a read or write, if inside a disk of `disk_bytes`.
    pub fn data_range(&self, len: usize, disk_bytes: u64) -> Option<u64> {
        if len > MAX_REQUEST_BYTES || !(len as u64).is_multiple_of(SECTOR_SIZE) {
            return None;
        }
        let offset = self.sector.checked_mul(SECTOR_SIZE)?;
        let end = offset.checked_add(len as u64)?;
        (end <= disk_bytes).then_some(offset)
    }
}
