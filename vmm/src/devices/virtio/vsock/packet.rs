//! vsock packets: the 44-byte header and the checks that turn guest descriptor chains into
//! packets (TX) and write packets into guest buffers (RX). Every guest-controlled length
//! and address is validated here.

use std::io::{Read, Write};

use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

pub const HDR_SIZE: usize = 44;
/// Largest payload we accept from the guest in one packet (Linux sends at most 64 KiB).
pub const MAX_PKT_DATA: usize = 64 * 1024;

pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

pub const HOST_CID: u64 = 2;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

impl Header {
    pub fn from_bytes(b: &[u8; HDR_SIZE]) -> Self {
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or([0; 4]));
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap_or([0; 2]));
        Header {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            type_: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    pub fn to_bytes(&self) -> [u8; HDR_SIZE] {
        let mut b = [0u8; HDR_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketError {
    #[error("descriptor chain is not valid guest memory: {0}")]
    BadChain(String),
    #[error("buffer of {0} bytes is too small for a vsock header")]
    TooSmall(usize),
    #[error("packet claims {claimed} data bytes but the buffer holds {available}")]
    Truncated { claimed: usize, available: usize },
    #[error("packet data of {0} bytes exceeds the {MAX_PKT_DATA}-byte limit")]
    TooBig(usize),
    #[error("cannot copy packet bytes: {0}")]
    Io(String),
}

/// Reads a guest TX chain: header then `len` data bytes from the readable descriptors.
pub fn read_tx_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<(Header, Vec<u8>), PacketError> {
    let mut r = chain
        .reader(mem)
        .map_err(|e| PacketError::BadChain(e.to_string()))?;
    let available = r.available_bytes();
    if available < HDR_SIZE {
        return Err(PacketError::TooSmall(available));
    }
    let mut hb = [0u8; HDR_SIZE];
    r.read_exact(&mut hb)
        .map_err(|e| PacketError::Io(e.to_string()))?;
    let hdr = Header::from_bytes(&hb);
    let len = hdr.len as usize;
    if len > MAX_PKT_DATA {
        return Err(PacketError::TooBig(len));
    }
    if len > available - HDR_SIZE {
        return Err(PacketError::Truncated {
            claimed: len,
            available: available - HDR_SIZE,
        });
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)
        .map_err(|e| PacketError::Io(e.to_string()))?;
    Ok((hdr, data))
}

/// Room for payload in a guest RX chain (after the header), or an error if the chain is
/// unusable.
pub fn rx_capacity(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
) -> Result<usize, PacketError> {
    let w = chain
        .clone()
        .writer(mem)
        .map_err(|e| PacketError::BadChain(e.to_string()))?;
    let n = w.available_bytes();
    if n < HDR_SIZE {
        return Err(PacketError::TooSmall(n));
    }
    Ok((n - HDR_SIZE).min(MAX_PKT_DATA))
}

/// Writes header and data into a guest RX chain; returns the bytes written.
pub fn write_rx_packet(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    hdr: &Header,
    data: &[u8],
) -> Result<u32, PacketError> {
    let mut w = chain
        .writer(mem)
        .map_err(|e| PacketError::BadChain(e.to_string()))?;
    let need = HDR_SIZE + data.len();
    if w.available_bytes() < need {
        return Err(PacketError::TooSmall(w.available_bytes()));
    }
    w.write_all(&hdr.to_bytes())
        .and_then(|_| w.write_all(data))
        .map_err(|e| PacketError::Io(e.to_string()))?;
    Ok(need as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 1024,
            dst_port: 99,
            len: 5,
            type_: TYPE_STREAM,
            op: OP_RW,
            flags: 0,
            buf_alloc: 1 << 18,
            fwd_cnt: 7,
        };
        assert_eq!(Header::from_bytes(&h.to_bytes()), h);
        assert_eq!(&h.to_bytes()[24..28], &5u32.to_le_bytes());
    }
}
