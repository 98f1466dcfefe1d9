//! Randomised hostile-guest tests: every device and the transport are fed random
//! descriptor tables, rings, packet headers and register writes from a fixed-seed PRNG.
//! The property is simple: nothing panics, and the devices keep answering.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;

use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::block::Block;
use super::device::{ActivateContext, VirtioDevice};
use super::mmio::MmioTransport;
use super::net::Net;
use super::rng::Rng;
use super::test_utils::*;
use super::vsock::Vsock;
use super::vsock::packet::{HDR_SIZE, Header};
use super::{Interrupt, VIRTIO_F_VERSION_1};
use crate::config::BlockConfig;
use crate::devices::BusDevice;
use crate::metrics::DeviceCounters;

const MEM_SIZE: u64 = 16 << 20;
const QUEUE_SIZE: u16 = 16;

/// xorshift64*: small, deterministic, good enough to shake out edge cases.
struct Prng(u64);
impl Prng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[self.below(v.len() as u64) as usize]
    }
}

fn random_addr(r: &mut Prng) -> u64 {
    match r.below(6) {
        0 => 0,
        1 => MEM_SIZE - r.below(256),
        2 => MEM_SIZE + r.below(1 << 20),
        3 => u64::MAX - r.below(4096),
        _ => 0x10_0000 + r.below(MEM_SIZE - 0x20_0000),
    }
}

fn random_len(r: &mut Prng) -> u32 {
    match r.below(7) {
        0 => 0,
        1 => 1,
        2 => HDR_SIZE as u32,
        3 => u32::MAX - r.below(16) as u32,
        4 => 512 * (1 + r.below(16) as u32),
        _ => r.below(70_000) as u32,
    }
}

/// Fills a queue's descriptor table and avail ring with random entries, and scatters
/// plausible-looking headers at random places.
fn scramble(mem: &GuestMemoryMmap, vq: &MockSplitQueue<GuestMemoryMmap>, r: &mut Prng) {
    for i in 0..u64::from(QUEUE_SIZE) {
        let mut d = [0u8; 16];
        d[..8].copy_from_slice(&random_addr(r).to_le_bytes());
        d[8..12].copy_from_slice(&random_len(r).to_le_bytes());
        let flags = r.below(8) as u16; // NEXT, WRITE, INDIRECT in any mix
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&(r.below(20) as u16).to_le_bytes());
        mem.write_slice(&d, GuestAddress(vq.desc_table_addr().0 + i * 16))
            .unwrap();
    }
    let avail = vq.avail_addr().0;
    for i in 0..u64::from(QUEUE_SIZE) {
        mem.write_obj(r.below(20) as u16, GuestAddress(avail + 4 + i * 2))
            .unwrap();
    }
    // Mostly sane ring indexes, sometimes wildly ahead.
    let idx = if r.below(4) == 0 {
        r.next() as u16
    } else {
        r.below(u64::from(QUEUE_SIZE) + 1) as u16
    };
    mem.write_obj(idx, GuestAddress(avail + 2)).unwrap();
    for _ in 0..8 {
        let (any_cid, any_type) = (r.next(), r.next() as u16);
        let h = Header {
            src_cid: r.pick(&[3, 2, any_cid]),
            dst_cid: r.pick(&[2, 3, any_cid]),
            src_port: r.below(4) as u32,
            dst_port: r.below(4) as u32,
            len: random_len(r),
            type_: r.pick(&[1, 1, 2, any_type]),
            op: r.below(9) as u16,
            flags: r.below(4) as u32,
            buf_alloc: r.next() as u32,
            fwd_cnt: r.next() as u32,
        };
        let at = 0x10_0000 + r.below(MEM_SIZE - 0x20_0000);
        mem.write_slice(&h.to_bytes(), GuestAddress(at)).unwrap();
    }
}

/// Each seed is one case, so a failure names the seed that reproduces it.
fn seeds() -> impl Iterator<Item = (String, u64)> {
    (1..200).map(|seed| (format!("seed {seed}"), seed))
}

fn run_device(mut dev: Box<dyn VirtioDevice>, seed: u64, rounds: usize) {
    let mut r = Prng(seed);
    let mem = test_memory();
    let nq = dev.queue_max_sizes().len();
    let vqs: Vec<_> = (0..nq)
        .map(|i| MockSplitQueue::create(&mem, GuestAddress(i as u64 * 0x1_0000), QUEUE_SIZE))
        .collect();
    let ctl = test_ctl();
    let ctx = ActivateContext {
        mem: mem.clone(),
        queues: vqs.iter().map(|v| v.create_queue().unwrap()).collect(),
        interrupt: Interrupt::new(test_irq()),
    };
    dev.activate(ctx, &ctl).unwrap();
    for _ in 0..rounds {
        for vq in &vqs {
            scramble(&mem, vq, &mut r);
        }
        for q in 0..nq {
            // Errors are fine (the transport would mark the device broken); panics are not.
            let _ = dev.queue_notify(q, &ctl);
        }
        let mut cfg = [0u8; 8];
        dev.read_config(r.next(), &mut cfg[..r.below(9) as usize]);
    }
}

#[test]
fn rng_survives_random_queues() {
    check_cases(seeds(), |seed| {
        run_device(Box::new(Rng::new(Arc::default())), seed, 20);
    });
}

#[test]
fn block_survives_random_queues() {
    let f = tempfile::NamedTempFile::new().unwrap();
    f.as_file().set_len(64 * 1024).unwrap();
    let counters = Arc::new(DeviceCounters::default());
    let cases = seeds().zip([false, true].iter().cycle());
    let cases = cases.map(|((name, seed), ro)| (format!("{name}, ro={ro}"), (seed, *ro)));
    check_cases(cases, |(seed, ro)| {
        let cfg = BlockConfig {
            path: f.path().to_path_buf(),
            read_only: ro,
            serial: Some("x".into()),
        };
        let dev = Block::new("block0", &cfg, counters.clone()).unwrap();
        run_device(Box::new(dev), seed, 20);
    });
    // The random chains really reached the request parser, and most were rejected.
    let requests = counters.requests.load(std::sync::atomic::Ordering::Relaxed);
    let errors = counters.errors.load(std::sync::atomic::Ordering::Relaxed);
    assert!(requests > 100, "{requests} requests");
    assert!(errors > 0 && errors <= requests);
}

#[test]
fn net_survives_random_queues() {
    check_cases(seeds(), |seed| {
        let (ours, peer) = UnixDatagram::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        peer.set_nonblocking(true).unwrap();
        for _ in 0..3 {
            let _ = peer.send(&[0xab; 100]);
        }
        // SAFETY: into_raw_fd hands the fd over; the File is its only owner.
        let tap = unsafe { std::fs::File::from_raw_fd(ours.into_raw_fd()) };
        let dev = Net::with_tap("net0", tap, Some([2, 0, 0, 0, 0, 1]), Arc::default());
        run_device(Box::new(dev), seed, 20);
    });
}

#[test]
fn vsock_survives_random_queues() {
    let counters = Arc::new(DeviceCounters::default());
    check_cases(seeds(), |seed| {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("v.sock");
        // Something to connect to, so guest REQUESTs create real connections.
        let _l1 = std::os::unix::net::UnixListener::bind(format!("{}_1", uds.display()));
        let _l2 = std::os::unix::net::UnixListener::bind(format!("{}_2", uds.display()));
        let dev = Vsock::new(3, &uds, counters.clone()).unwrap();
        run_device(Box::new(dev), seed, 20);
    });
    let packets = counters.requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(packets > 20, "{packets} packets parsed");
}

#[test]
fn transport_survives_random_register_traffic() {
    let regs: Vec<u64> = (0..0x110).step_by(4).collect();
    check_cases(seeds(), |seed| {
        let mut r = Prng(seed);
        let mem = test_memory();
        let t = MmioTransport::new(
            Box::new(Rng::new(Arc::default())),
            mem,
            test_irq(),
            test_ctl(),
        );
        let mut t = t.unwrap();
        for _ in 0..300 {
            let off = if r.below(8) == 0 {
                r.below(0x2000)
            } else {
                r.pick(&regs)
            };
            let len = r.pick(&[4usize, 4, 4, 1, 2, 8, 0]);
            let v = match r.below(4) {
                0 => r.next(),
                1 => VIRTIO_F_VERSION_1 >> 32,
                _ => r.below(16),
            };
            if r.below(2) == 0 {
                let bytes = v.to_le_bytes();
                t.write(off, &bytes[..len]);
            } else {
                let mut b = [0u8; 8];
                t.read(off, &mut b[..len]);
            }
        }
    });
}
