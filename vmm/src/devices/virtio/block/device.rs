//! The block device: one request queue over a host file.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use virtio_queue::QueueT;

use super::request::*;
use crate::config::BlockConfig;
use crate::devices::virtio::device::{
    ActivateContext, ActivateError, DeviceError, VirtioDevice, read_config_bytes,
};
use crate::devices::virtio::{Activation, TYPE_BLOCK, VIRTIO_F_VERSION_1};
use crate::event_loop::EventCtl;
use crate::metrics::{DeviceCounters, add, inc};

const QUEUE_SIZE: u16 = 256;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const REQUESTQ: usize = 0;

pub struct Block {
    name: String,
    file: File,
    disk_bytes: u64,
    read_only: bool,
    id: [u8; ID_BYTES],
    config: [u8; 8],
    active: Activation<ActivateContext>,
    counters: Arc<DeviceCounters>,
}

impl Block {
    pub fn new(
        name: &str,
        cfg: &BlockConfig,
        counters: Arc<DeviceCounters>,
    ) -> std::io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .write(!cfg.read_only)
            .open(&cfg.path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", cfg.path.display())))?;
        let disk_bytes = file.metadata()?.len();
        if disk_bytes % SECTOR_SIZE != 0 {
            tracing::warn!(
                "{name}: {} is not a whole number of sectors; the tail is ignored",
                cfg.path.display()
            );
        }
        let sectors = disk_bytes / SECTOR_SIZE;
        let mut id = [0u8; ID_BYTES];
        if let Some(s) = &cfg.serial {
            let n = s.len().min(ID_BYTES);
            id[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        Ok(Block {
            name: name.to_string(),
            file,
            disk_bytes: sectors * SECTOR_SIZE,
            read_only: cfg.read_only,
            id,
            config: sectors.to_le_bytes(),
            active: Activation::new(),
            counters,
        })
    }

    /// Serves one request; returns the status and the data bytes written to the guest.
    fn serve(&self, req: &mut Request) -> (u8, usize) {
        match req.kind {
            T_IN => {
                let len = req.writer.available_bytes();
                let Some(offset) = req.data_range(len, self.disk_bytes) else {
                    return (S_IOERR, 0);
                };
                let mut buf = vec![0u8; len];
                if self.file.read_exact_at(&mut buf, offset).is_err()
                    || req.writer.write_all(&buf).is_err()
                {
                    return (S_IOERR, 0);
                }
                add(&self.counters.rx_bytes, len as u64);
                (S_OK, len)
            }
            T_OUT => {
                if self.read_only {
                    return (S_IOERR, 0);
                }
                let len = req.reader.available_bytes();
                let Some(offset) = req.data_range(len, self.disk_bytes) else {
                    return (S_IOERR, 0);
                };
                let mut buf = vec![0u8; len];
                if req.reader.read_exact(&mut buf).is_err()
                    || self.file.write_all_at(&buf, offset).is_err()
                {
                    return (S_IOERR, 0);
                }
                add(&self.counters.tx_bytes, len as u64);
                (S_OK, 0)
            }
            T_FLUSH => {
                if self.read_only || self.file.sync_data().is_ok() {
                    (S_OK, 0)
                } else {
                    (S_IOERR, 0)
                }
            }
            T_GET_ID => {
                let n = req.writer.available_bytes().min(ID_BYTES);
                match req.writer.write_all(&self.id[..n]) {
                    Ok(()) => (S_OK, n),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        }
    }

    fn process_queue(&mut self) -> Result<(), DeviceError> {
        // Lent out, so serving a request can borrow the whole device.
        Activation::lend(self, |b| &mut b.active, |b, a| b.process(a)).unwrap_or(Ok(()))
    }

    fn process(&self, a: &mut ActivateContext) -> Result<(), DeviceError> {
        let mut used = false;
        while let Some(chain) = a.queues[REQUESTQ].pop_descriptor_chain(&a.mem) {
            let head = chain.head_index();
            inc(&self.counters.requests);
            let len = match Request::parse(&a.mem, chain) {
                Ok(mut req) => {
                    let (status, n) = self.serve(&mut req);
                    if status != S_OK {
                        inc(&self.counters.errors);
                    }
                    match req.status.write_all(&[status]) {
                        Ok(()) => n as u32 + 1,
                        Err(_) => 0,
                    }
                }
                Err(e) => {
                    crate::rate_limited_debug!("{}: bad request: {e}", self.name);
                    inc(&self.counters.errors);
                    0
                }
            };
            a.queues[REQUESTQ].add_used(&a.mem, head, len)?;
            used = true;
        }
        if used {
            a.interrupt.signal_used_queue();
        }
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn name(&self) -> &str {
        &self.name
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }
    fn ack_features(&mut self, _features: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext, _ctl: &EventCtl) -> Result<(), ActivateError> {
        self.active.activate(ctx.into_single_queue()?);
        Ok(())
    }
    fn queue_notify(&mut self, _index: usize, _ctl: &EventCtl) -> Result<(), DeviceError> {
        self.process_queue()
    }
    fn reset(&mut self, _ctl: &EventCtl) {
        self.active.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::virtio::Interrupt;
    use crate::devices::virtio::test_utils::*;
    use virtio_queue::desc::{RawDescriptor, split::Descriptor as SplitDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    const W: u16 = VRING_DESC_F_WRITE;
    const N: u16 = VRING_DESC_F_NEXT;

    fn d(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn hdr(mem: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&kind.to_le_bytes());
        b[8..].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&b, GuestAddress(at)).unwrap();
    }

    fn status(mem: &GuestMemoryMmap, at: u64) -> u8 {
        mem.read_obj(GuestAddress(at)).unwrap()
    }

    fn block(ro: bool) -> (Block, tempfile::NamedTempFile) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let mut data = vec![0u8; 8 * 512];
        data[512..1024].fill(0xab);
        f.write_all(&data).unwrap();
        let cfg = BlockConfig {
            path: f.path().to_path_buf(),
            read_only: ro,
            serial: Some("disk-serial-0".into()),
        };
        (
            Block::new("block0", &cfg, Arc::new(DeviceCounters::default())).unwrap(),
            f,
        )
    }

    fn activate(b: &mut Block, mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>) {
        let ctx = ActivateContext {
            mem: mem.clone(),
            queues: vec![vq.create_queue().unwrap()],
            interrupt: Interrupt::new(test_irq()),
        };
        b.activate(ctx, &test_ctl()).unwrap();
    }

    #[test]
    fn read_write_flush_get_id() {
        let mem = test_memory();
        let vq = MockSplitQueue::new(&mem, 16);
        let (mut b, f) = block(false);
        activate(&mut b, &mem, &vq);
        let mut cfg = [0u8; 8];
        b.read_config(0, &mut cfg);
        assert_eq!(u64::from_le_bytes(cfg), 8);

        hdr(&mem, 0x10_0000, T_IN, 1);
        hdr(&mem, 0x11_0000, T_OUT, 2);
        mem.write_slice(&[0x5a; 512], GuestAddress(0x11_1000))
            .unwrap();
        hdr(&mem, 0x12_0000, T_FLUSH, 0);
        hdr(&mem, 0x13_0000, T_GET_ID, 0);
        hdr(&mem, 0x14_0000, 99, 0);
        vq.add_desc_chains(
            &[
                d(0x10_0000, 16, N, 1),
                d(0x10_1000, 512, W | N, 2),
                d(0x10_2000, 1, W, 0),
                d(0x11_0000, 16, N, 4),
                d(0x11_1000, 512, N, 5),
                d(0x11_2000, 1, W, 0),
                d(0x12_0000, 16, N, 7),
                d(0x12_2000, 1, W, 0),
                d(0x13_0000, 16, N, 9),
                d(0x13_1000, 20, W | N, 10),
                d(0x13_2000, 1, W, 0),
                d(0x14_0000, 16, N, 12),
                d(0x14_2000, 1, W, 0),
            ],
            0,
        )
        .unwrap();
        b.queue_notify(0, &test_ctl()).unwrap();
        let used = used_elems(&mem, &vq);
        assert_eq!(used, vec![(0, 513), (3, 1), (6, 1), (8, 21), (11, 1)]);
        let mut buf = [0u8; 512];
        mem.read_slice(&mut buf, GuestAddress(0x10_1000)).unwrap();
        assert_eq!(buf, [0xab; 512]);
        for at in [0x10_2000, 0x11_2000, 0x12_2000, 0x13_2000] {
            assert_eq!(status(&mem, at), S_OK);
        }
        assert_eq!(status(&mem, 0x14_2000), S_UNSUPP);
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(0x13_1000)).unwrap();
        assert_eq!(&id[..13], b"disk-serial-0");
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(&on_disk[1024..1536], &[0x5a; 512][..]);
    }

    /// What a hostile request must get back.
    enum Want {
        /// An IOERR in the status byte at this address.
        IoErr(u64),
        /// Its chain back with nothing written.
        Nothing,
        /// Its chain back (a loop has no status byte to check).
        Returned,
    }

    #[test]
    fn read_only_and_hostile_requests() {
        let mem = test_memory();
        let vq = MockSplitQueue::new(&mem, 32);
        let (mut b, f) = block(true);
        assert_ne!(b.features() & F_RO, 0);
        activate(&mut b, &mem, &vq);
        // (name, header (at, type, sector), chain, want). The chains go on the queue in
        // this order for one notify, so `next` indexes count from the first chain.
        let cases = [
            (
                "write to a read-only disk",
                Some((0x10_0000, T_OUT, 0)),
                vec![
                    d(0x10_0000, 16, N, 1),
                    d(0x10_1000, 512, N, 2),
                    d(0x10_2000, 1, W, 0),
                ],
                Want::IoErr(0x10_2000),
            ),
            (
                // Last sector + 1 more.
                "read past the end",
                Some((0x11_0000, T_IN, 7)),
                vec![
                    d(0x11_0000, 16, N, 4),
                    d(0x11_1000, 1024, W | N, 5),
                    d(0x11_2000, 1, W, 0),
                ],
                Want::IoErr(0x11_2000),
            ),
            (
                // sector * 512 overflows.
                "overflowing sector",
                Some((0x12_0000, T_IN, u64::MAX / 4)),
                vec![
                    d(0x12_0000, 16, N, 7),
                    d(0x12_1000, 512, W | N, 8),
                    d(0x12_2000, 1, W, 0),
                ],
                Want::IoErr(0x12_2000),
            ),
            (
                "length not a multiple of the sector size",
                Some((0x13_0000, T_IN, 0)),
                vec![
                    d(0x13_0000, 16, N, 10),
                    d(0x13_1000, 100, W | N, 11),
                    d(0x13_2000, 1, W, 0),
                ],
                Want::IoErr(0x13_2000),
            ),
            (
                "no status byte at all",
                None,
                vec![d(0x14_0000, 16, 0, 0)],
                Want::Nothing,
            ),
            (
                "header outside guest memory",
                None,
                vec![d(0x7fff_0000_0000, 16, N, 14), d(0x14_2000, 1, W, 0)],
                Want::Nothing,
            ),
            (
                "zero-length header",
                None,
                vec![d(0x15_0000, 0, N, 16), d(0x15_2000, 1, W, 0)],
                Want::Nothing,
            ),
            (
                "a loop",
                None,
                vec![d(0x16_0000, 16, N, 17), d(0x16_1000, 16, N, 17)],
                Want::Returned,
            ),
        ];
        for (_, header, _, _) in &cases {
            if let &Some((at, kind, sector)) = header {
                hdr(&mem, at, kind, sector);
            }
        }
        let table: Vec<_> = cases.iter().flat_map(|c| c.2.iter().copied()).collect();
        vq.add_desc_chains(&table, 0).unwrap();
        b.queue_notify(0, &test_ctl()).unwrap();
        let used = used_elems(&mem, &vq);
        // Chain i comes back as used entry i.
        check_cases(
            cases.iter().enumerate().map(|(i, c)| (c.0, (i, &c.3))),
            |(i, want)| {
                let Some(&(_, len)) = used.get(i) else {
                    panic!("chain not returned: {used:?}");
                };
                match *want {
                    Want::IoErr(at) => assert_eq!(status(&mem, at), S_IOERR, "{at:#x}"),
                    Want::Nothing => assert_eq!(len, 0),
                    Want::Returned => {}
                }
            },
        );
        assert_eq!(used.len(), cases.len(), "{used:?}");
        // The disk is untouched.
        assert_eq!(std::fs::read(f.path()).unwrap()[..512], [0u8; 512]);
    }
}
