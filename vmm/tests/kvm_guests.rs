//! Tiny hand-assembled guests run under real KVM: port I/O and MMIO exits, the serial port,
//! the boot timer, the i8042 reset, virtio-mmio registers, pause/resume/stop and the
//! control socket. Skipped (not failed) where /dev/kvm is unusable.
//!
//! The guests run in flat 32-bit protected mode without paging, so they can reach the MMIO
//! range above 3 GiB with plain moves.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper_vmm::api::{Reply, Request, VmState};
use hyper_vmm::devices::legacy::SerialOutput;
use hyper_vmm::devices::virtio::rng::Rng;
use hyper_vmm::metrics::DeviceCounters;
use hyper_vmm::vmm::Vmm;
use hyper_vmm::vstate::vcpu::VmExit;
use kvm_bindings::kvm_segment;
use vm_memory::{Bytes, GuestAddress};

const CODE: u64 = 0x1000;
const MAGIC_ADDR: u32 = 0xd000_1000;

fn kvm_usable() -> bool {
    match kvm_ioctls::Kvm::new() {
        Ok(_) => true,
        Err(e) => {
            println!("skipped: no /dev/kvm ({e})");
            false
        }
    }
}

#[derive(Clone, Default)]
struct Console(Arc<Mutex<Vec<u8>>>);
impl Write for Console {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Console {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// A few x86 instructions, 32-bit operand size.
#[derive(Default)]
struct Asm(Vec<u8>);
impl Asm {
    fn serial(&mut self, ch: u8) -> &mut Self {
        self.0.extend_from_slice(&[0xb0, ch]); // mov al, ch
        self.out_al_com1()
    }
    fn out_al_com1(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0x66, 0xba, 0xf8, 0x03, 0xee]); // mov dx, 0x3f8; out dx, al
        self
    }
    fn mmio_write8(&mut self, addr: u32, v: u8) -> &mut Self {
        self.0.extend_from_slice(&[0xc6, 0x05]); // mov byte [addr], v
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0.push(v);
        self
    }
    /// Prints 'Y' if the 32-bit value at `addr` equals `want`, else 'N'.
    fn check_mmio32(&mut self, addr: u32, want: u32) -> &mut Self {
        self.0.push(0xa1); // mov eax, [addr]
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0.push(0x3d); // cmp eax, want
        self.0.extend_from_slice(&want.to_le_bytes());
        self.0
            .extend_from_slice(&[0xb0, b'Y', 0x74, 0x02, 0xb0, b'N']); // mov al,'Y'; je +2; mov al,'N'
        self.out_al_com1()
    }
    fn reset(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0xb0, 0xfe, 0xe6, 0x64]); // mov al, 0xfe; out 0x64, al
        self
    }
    fn spin(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0xeb, 0xfe]); // jmp $
        self
    }
    /// Does what Linux's i8042 driver does first: writes the controller config byte.
    fn init_i8042(&mut self) -> &mut Self {
        // mov al,0x60; out 0x64,al; mov al,0x01; out 0x60,al
        self.0
            .extend_from_slice(&[0xb0, 0x60, 0xe6, 0x64, 0xb0, 0x01, 0xe6, 0x60]);
        self
    }
    /// Waits for a byte from the keyboard controller (status bit 0), then reads it.
    fn wait_key(&mut self) -> &mut Self {
        // poll: in al,0x64; test al,1; jz poll; in al,0x60
        self.0
            .extend_from_slice(&[0xe4, 0x64, 0xa8, 0x01, 0x74, 0xfa, 0xe4, 0x60]);
        self
    }
    fn mmio_write32(&mut self, addr: u32, v: u32) -> &mut Self {
        self.0.extend_from_slice(&[0xc7, 0x05]); // mov dword [addr], v
        self.0.extend_from_slice(&addr.to_le_bytes());
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    /// What a virtio driver does up to DRIVER_OK for the device at `base`: VERSION_1,
    /// `queues` queues of 16 entries with rings from `rings` on.
    fn virtio_activate(&mut self, base: u32, queues: u32, rings: u32) -> &mut Self {
        self.mmio_write32(base + 0x70, 1) // ACKNOWLEDGE
            .mmio_write32(base + 0x70, 3) // DRIVER
            .mmio_write32(base + 0x24, 1) // DriverFeaturesSel: bits 32..
            .mmio_write32(base + 0x20, 1) // VERSION_1
            .mmio_write32(base + 0x70, 11); // FEATURES_OK
        for q in 0..queues {
            let at = rings + q * 0x1000;
            self.mmio_write32(base + 0x30, q) // QueueSel
                .mmio_write32(base + 0x38, 16) // QueueNum
                .mmio_write32(base + 0x80, at) // desc
                .mmio_write32(base + 0x90, at + 0x400) // avail
                .mmio_write32(base + 0xa0, at + 0x800) // used
                .mmio_write32(base + 0x44, 1); // QueueReady
        }
        self.mmio_write32(base + 0x70, 15) // DRIVER_OK
    }
    fn ud2(&mut self) -> &mut Self {
        self.0.extend_from_slice(&[0x0f, 0x0b]);
        self
    }
}

fn flat(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// A VM with `code` at 0x1000 and the boot vCPU in flat 32-bit protected mode.
fn guest_vm(code: &[u8], console: &Console) -> Vmm {
    let out = SerialOutput::new(
        Some(Box::new(console.clone())),
        Arc::new(DeviceCounters::default()),
    );
    let mut vmm = Vmm::new(32 << 20, 1, out, Instant::now()).expect("build VM");
    // The vCPU runs under its seccomp filter, as in production (this thread does not).
    vmm.seccomp = Some(hyper_vmm::seccomp::Filters::compile().unwrap());
    vmm.mem.write_slice(code, GuestAddress(CODE)).unwrap();
    let vcpu = &vmm.vcpus[0];
    let mut sregs = vcpu.fd.get_sregs().unwrap();
    sregs.cs = flat(0x8, 0xb);
    for s in [
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.fs,
        &mut sregs.gs,
        &mut sregs.ss,
    ] {
        *s = flat(0x10, 0x3);
    }
    sregs.cr0 |= 1;
    vcpu.fd.set_sregs(&sregs).unwrap();
    let regs = kvm_bindings::kvm_regs {
        rip: CODE,
        rflags: 2,
        rsp: 0x8000,
        ..Default::default()
    };
    vcpu.fd.set_regs(&regs).unwrap();
    vmm
}

fn add_rng(vmm: &mut Vmm) {
    let mem = vmm.mem.clone();
    let dev = Box::new(Rng::new(vmm.metrics.device("rng")));
    vmm.devices
        .add_virtio(&vmm.vm, &mem, &mut vmm.event_loop, dev)
        .unwrap();
}

#[test]
fn serial_output_then_i8042_reset_exits_cleanly() {
    if !kvm_usable() {
        return;
    }
    let console = Console::default();
    let mut asm = Asm::default();
    asm.serial(b'H').serial(b'i').reset().spin();
    let mut vmm = guest_vm(&asm.0, &console);
    vmm.start().unwrap();
    let why = vmm.run();
    assert_eq!(why, VmExit::Reset);
    assert_eq!(why.exit_code(), 0);
    assert_eq!(console.text(), "Hi");
    let m = vmm.metrics.snapshot();
    assert!(m.exits.io_out >= 3, "{m:?}");
}

#[test]
fn boot_timer_and_virtio_mmio_registers() {
    if !kvm_usable() {
        return;
    }
    let console = Console::default();
    let mut asm = Asm::default();
    asm.mmio_write8(0xd000_0000, 123)
        .check_mmio32(MAGIC_ADDR, 0x7472_6976)
        .check_mmio32(MAGIC_ADDR + 4, 2)
        .check_mmio32(MAGIC_ADDR + 8, 4) // virtio-rng
        .check_mmio32(MAGIC_ADDR + 0x34, 256) // QueueNumMax
        .check_mmio32(MAGIC_ADDR + 8, 5) // must print N
        .check_mmio32(0xd000_8000, 0xffff_ffff) // no device: all ones
        .reset()
        .spin();
    let mut vmm = guest_vm(&asm.0, &console);
    add_rng(&mut vmm);
    vmm.start().unwrap();
    assert_eq!(vmm.run(), VmExit::Reset);
    assert_eq!(console.text(), "YYYYNY");
    let m = vmm.metrics.snapshot();
    assert!(m.boot_time_us > 0, "{m:?}");
    assert!(m.vcpus_started_us > 0, "{m:?}");
    assert!(m.exits.mmio_read >= 6, "{m:?}");
    assert!(m.exits.unhandled_mmio >= 1, "{m:?}");
}

#[test]
fn triple_fault_is_an_error() {
    if !kvm_usable() {
        return;
    }
    let console = Console::default();
    let mut asm = Asm::default();
    // No IDT: #UD cannot be delivered, which escalates to a triple fault.
    asm.serial(b'x').ud2();
    let mut vmm = guest_vm(&asm.0, &console);
    vmm.vcpus[0]
        .fd
        .set_sregs(&{
            let mut s = vmm.vcpus[0].fd.get_sregs().unwrap();
            s.idt.limit = 0;
            s
        })
        .unwrap();
    vmm.start().unwrap();
    let why = vmm.run();
    assert!(matches!(why, VmExit::Error(_)), "{why:?}");
    assert_ne!(why.exit_code(), 0);
    println!("{why:?}");
}

/// A started guest that has set up its keyboard controller (so `stop` types
/// Ctrl-Alt-Del and waits up to `stop_timeout`) and then spins, ignoring the keys.
fn keyboard_guest_started(stop_timeout: Duration) -> Vmm {
    let console = Console::default();
    let mut asm = Asm::default();
    asm.init_i8042().serial(b's').spin();
    let mut vmm = guest_vm(&asm.0, &console);
    vmm.stop_timeout = stop_timeout;
    vmm.start().unwrap();
    let t = Instant::now();
    while !console.text().contains('s') {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "guest never got ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    vmm
}

#[test]
fn pause_resume_and_stop_with_timeout() {
    if !kvm_usable() {
        return;
    }
    let mut vmm = keyboard_guest_started(Duration::from_millis(300));
    assert_eq!(vmm.handle_request(Request::Pause), Reply::done());
    assert_eq!(
        vmm.handle_request(Request::Ping).state(),
        Some(VmState::Paused)
    );
    assert_eq!(vmm.handle_request(Request::Resume), Reply::done());
    assert_eq!(
        vmm.handle_request(Request::Ping).state(),
        Some(VmState::Running)
    );
    // The spinning guest ignores Ctrl-Alt-Del, so the hard stop follows the timeout.
    let t = Instant::now();
    assert_eq!(vmm.handle_request(Request::Stop), Reply::done());
    assert_eq!(vmm.run(), VmExit::Stopped);
    assert!(t.elapsed() >= Duration::from_millis(250));
}

#[test]
fn poweroff_stops_at_once_a_guest_that_would_ignore_ctrl_alt_del() {
    if !kvm_usable() {
        return;
    }
    // `stop` would wait this long for a reset that never comes.
    let mut vmm = keyboard_guest_started(Duration::from_secs(30));
    let t = Instant::now();
    assert_eq!(vmm.handle_request(Request::PowerOff), Reply::done());
    assert_eq!(vmm.run(), VmExit::Stopped);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "poweroff took {:?}",
        t.elapsed()
    );
}

/// A guest that counts in ebx forever, storing each value at `COUNTER` and reading the
/// i8042 status port after each (a port-I/O exit the snapshot must complete).
fn counting_guest() -> Vec<u8> {
    let mut asm = Asm::default();
    asm.serial(b's');
    asm.0.extend_from_slice(&[0xbb, 0, 0, 0, 0]); // mov ebx, 0
    asm.0.push(0x43); // loop: inc ebx
    asm.0.extend_from_slice(&[0x89, 0x1d]); // mov [COUNTER], ebx
    asm.0.extend_from_slice(&(COUNTER as u32).to_le_bytes());
    asm.0.extend_from_slice(&[0xe4, 0x64]); // in al, 0x64
    asm.0.extend_from_slice(&[0xeb, 0xf5]); // jmp loop
    asm.0
}
const COUNTER: u64 = 0x5000;

fn counter(vmm: &Vmm) -> u32 {
    vmm.mem.read_obj(GuestAddress(COUNTER)).unwrap()
}

/// Waits until the guest's counter passes `past`.
fn counts_past(vmm: &Vmm, past: u32) {
    let t = Instant::now();
    while counter(vmm) <= past {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the guest stopped counting at {}",
            counter(vmm)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_snapshot_restores_into_new_vms_that_go_on_from_it() {
    use hyper_vmm::persist::{SnapshotFiles, read_state};
    if !kvm_usable() {
        return;
    }
    let console = Console::default();
    let mut vmm = guest_vm(&counting_guest(), &console);
    vmm.start().unwrap();
    counts_past(&vmm, 1000);
    let dir = tempfile::tempdir().unwrap();
    let create = |name| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join(name))
            .unwrap()
    };
    let files = SnapshotFiles {
        state: create("state.json"),
        memory: create("memory"),
    };
    vmm.snapshot(&files).unwrap();
    let saved = counter(&vmm);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(counter(&vmm), saved, "the VM runs on after its snapshot");
    assert_eq!(vmm.handle_request(Request::PowerOff), Reply::done());
    assert_eq!(vmm.run(), VmExit::Stopped);
    drop(vmm);

    // Two VMs from one snapshot, opened read-only: each goes on from the saved count.
    let open = |name| std::fs::File::open(dir.path().join(name)).unwrap();
    let restore = || {
        let snapshot = read_state(&open("state.json")).unwrap();
        let out = SerialOutput::new(
            Some(Box::new(Console::default())),
            Arc::new(DeviceCounters::default()),
        );
        let mut vmm = Vmm::restore(&snapshot, &open("memory"), out, Instant::now(), |_| Ok(()))
            .expect("restore");
        vmm.seccomp = Some(hyper_vmm::seccomp::Filters::compile().unwrap());
        vmm
    };
    let mut clones = [restore(), restore()];
    for c in &clones {
        assert_eq!(counter(c), saved);
        // Saved between two instructions of the loop: ebx is the stored count or one more.
        let rbx = c.vcpus[0].fd.get_regs().unwrap().rbx;
        assert!(
            rbx == u64::from(saved) || rbx == u64::from(saved) + 1,
            "rbx {rbx}, counter {saved}"
        );
    }
    for c in &mut clones {
        c.start().unwrap();
    }
    for c in &clones {
        counts_past(c, saved + 1000);
    }
    for c in &mut clones {
        assert_eq!(c.handle_request(Request::PowerOff), Reply::done());
        assert_eq!(c.run(), VmExit::Stopped);
    }
    // Their writes went to their own pages, never to the snapshot.
    let mut word = [0u8; 4];
    std::os::unix::fs::FileExt::read_exact_at(&open("memory"), &mut word, COUNTER).unwrap();
    assert_eq!(u32::from_le_bytes(word), saved);
}

/// The rng test's queue: descriptor table, then avail and used rings (as `virtio_activate`).
const RINGS: u32 = 0x10000;
const AVAIL: u64 = RINGS as u64 + 0x400;
const USED: u64 = RINGS as u64 + 0x800;
/// Where descriptor `i` asks for 16 random bytes.
fn rng_buf(i: u64) -> u64 {
    0x20000 + i * 0x100
}

/// Puts descriptor `i` (16 device-writable bytes at `rng_buf(i)`) on the avail ring, as
/// a driver does, and makes the avail index `i + 1`.
fn post_rng_request(mem: &vm_memory::GuestMemoryMmap, i: u16) {
    let desc = u64::from(RINGS) + 16 * u64::from(i);
    mem.write_obj(rng_buf(u64::from(i)), GuestAddress(desc))
        .unwrap();
    mem.write_obj(16u32, GuestAddress(desc + 8)).unwrap();
    mem.write_obj(2u16, GuestAddress(desc + 12)).unwrap(); // VIRTQ_DESC_F_WRITE
    mem.write_obj(i, GuestAddress(AVAIL + 4 + 2 * u64::from(i)))
        .unwrap();
    mem.write_obj(i + 1, GuestAddress(AVAIL + 2)).unwrap();
}

/// Serves device events until the used index reaches `want`, then a little longer so an
/// extra (wrong) completion would show.
fn serve_until_used(vmm: &Vmm, want: u16) -> u16 {
    let used = || vmm.mem.read_obj::<u16>(GuestAddress(USED + 2)).unwrap();
    let t = Instant::now();
    while used() < want {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "used index stuck at {}",
            used()
        );
        vmm.event_loop.run_once(10).unwrap();
    }
    for _ in 0..5 {
        vmm.event_loop.run_once(10).unwrap();
    }
    used()
}

#[test]
fn a_restored_virtio_device_goes_on_from_the_saved_ring_positions() {
    use hyper_vmm::devices::bus::lock;
    use hyper_vmm::persist::{SnapshotFiles, read_state};
    if !kvm_usable() {
        return;
    }
    // The guest activates the rng, posts request 0, notifies, and counts.
    let mut asm = Asm::default();
    asm.virtio_activate(MAGIC_ADDR, 1, RINGS);
    asm.mmio_write32(RINGS, rng_buf(0) as u32) // desc 0: addr
        .mmio_write32(RINGS + 8, 16) // len
        .mmio_write32(RINGS + 12, 2) // flags WRITE, next 0
        .mmio_write32(AVAIL as u32 + 4, 0) // ring[0] = desc 0
        .mmio_write32(AVAIL as u32, 1 << 16) // idx 1
        .mmio_write32(MAGIC_ADDR + 0x50, 0); // QueueNotify
    let mut code = asm.0;
    code.extend_from_slice(&counting_guest());
    let console = Console::default();
    let mut vmm = guest_vm(&code, &console);
    add_rng(&mut vmm);
    vmm.start().unwrap();
    assert_eq!(serve_until_used(&vmm, 1), 1);
    let first = vmm.mem.read_obj::<u128>(GuestAddress(rng_buf(0))).unwrap();
    assert_ne!(first, 0);
    counts_past(&vmm, 100);

    let dir = tempfile::tempdir().unwrap();
    let path = |name| dir.path().join(name);
    let files = SnapshotFiles {
        state: std::fs::File::create(path("state.json")).unwrap(),
        memory: std::fs::File::create(path("memory")).unwrap(),
    };
    vmm.snapshot(&files).unwrap();
    assert_eq!(vmm.handle_request(Request::PowerOff), Reply::done());
    assert_eq!(vmm.run(), VmExit::Stopped);
    drop(vmm);

    let snapshot = read_state(&std::fs::File::open(path("state.json")).unwrap()).unwrap();
    let memory = std::fs::File::open(path("memory")).unwrap();
    let out = SerialOutput::new(None, Arc::new(DeviceCounters::default()));
    let mut restored = Vmm::restore(&snapshot, &memory, out, Instant::now(), |vmm| {
        add_rng(vmm);
        Ok(())
    })
    .expect("restore");
    restored.start().unwrap();
    // Request 1, made after the restore, is the only one served: the device knew it had
    // already answered request 0.
    post_rng_request(&restored.mem, 1);
    let (_, transport) = &restored.devices.virtio[0];
    lock(transport).queue_evts()[0].write(1).unwrap();
    assert_eq!(serve_until_used(&restored, 2), 2);
    let mem = &restored.mem;
    assert_ne!(mem.read_obj::<u128>(GuestAddress(rng_buf(1))).unwrap(), 0);
    let again = mem.read_obj::<u128>(GuestAddress(rng_buf(0))).unwrap();
    assert_eq!(again, first, "request 0 was served a second time");
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(USED + 4 + 8)).unwrap(),
        1,
        "used[1].id"
    );
    assert_eq!(
        mem.read_obj::<u32>(GuestAddress(USED + 8 + 8)).unwrap(),
        16,
        "used[1].len"
    );
    assert_eq!(restored.handle_request(Request::PowerOff), Reply::done());
    assert_eq!(restored.run(), VmExit::Stopped);

    // A snapshot's device list must match the restored VM's.
    let err = Vmm::restore(
        &snapshot,
        &memory,
        SerialOutput::new(None, Arc::new(DeviceCounters::default())),
        Instant::now(),
        |_| Ok(()),
    )
    .err()
    .expect("a VM without the rng must not restore")
    .to_string();
    assert!(err.contains("1 virtio devices, this VM has 0"), "{err}");
}

#[test]
fn control_socket_end_to_end() {
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let console = Console::default();
    let mut asm = Asm::default();
    asm.spin();
    let mut vmm = guest_vm(&asm.0, &console);
    vmm.stop_timeout = Duration::from_millis(100);
    let api = hyper_vmm::api::ApiServer::bind(&sock, &vmm.event_loop.own_ctl()).unwrap();
    vmm.set_api(api);
    vmm.start().unwrap();
    let client = std::thread::spawn(move || {
        let s = UnixStream::connect(&sock).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = BufReader::new(s.try_clone().unwrap());
        let mut w = s;
        // Raw lines on purpose: this is the wire format, including the hand-typed forms.
        let mut ask = |line: &str| -> Reply {
            w.write_all(format!("{line}\n").as_bytes()).unwrap();
            let mut resp = String::new();
            r.read_line(&mut resp).unwrap();
            Reply::from_line(&resp).unwrap_or_else(|e| panic!("reply {resp:?}: {e}"))
        };
        let mut replies = vec![
            ask(Request::Ping.to_line().trim_end()),
            ask("pause"),
            ask(r#"{"cmd":"ping"}"#),
            ask("resume"),
            ask("metrics"),
            ask("bogus"),
            ask("{not json"),
        ];
        replies.push(ask(r#"{"cmd":"stop"}"#));
        replies
    });
    assert_eq!(vmm.run(), VmExit::Stopped);
    let replies = client.join().unwrap();
    assert_eq!(replies[0].state(), Some(VmState::Running));
    assert_eq!(replies[1], Reply::done());
    assert_eq!(replies[2].state(), Some(VmState::Paused));
    assert_eq!(replies[3], Reply::done());
    let metrics = replies[4].clone().into_result().unwrap().metrics;
    assert!(metrics.is_some(), "{:?}", replies[4]);
    assert!(
        matches!(&replies[5], Reply::Error(e) if e.contains("bogus")),
        "{:?}",
        replies[5]
    );
    assert!(
        matches!(&replies[6], Reply::Error(e) if e.contains("bad JSON")),
        "{:?}",
        replies[6]
    );
    assert_eq!(replies[7], Reply::done());
}

#[test]
fn stop_types_ctrl_alt_del_and_a_listening_guest_resets() {
    if !kvm_usable() {
        return;
    }
    let console = Console::default();
    let mut asm = Asm::default();
    // The guest prints 'r', waits for a key, prints 'k' and resets.
    asm.init_i8042()
        .serial(b'r')
        .wait_key()
        .serial(b'k')
        .reset()
        .spin();
    let mut vmm = guest_vm(&asm.0, &console);
    vmm.stop_timeout = Duration::from_secs(20);
    vmm.start().unwrap();
    let t = Instant::now();
    while !console.text().contains('r') {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "guest never got ready"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    vmm.request_stop();
    assert_eq!(vmm.run(), VmExit::Reset);
    assert_eq!(console.text(), "rk");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn stop_without_a_keyboard_driver_is_immediate() {
    if !kvm_usable() {
        return;
    }
    let console = Console::default();
    let mut asm = Asm::default();
    asm.spin();
    let mut vmm = guest_vm(&asm.0, &console);
    vmm.stop_timeout = Duration::from_secs(30);
    vmm.start().unwrap();
    let t = Instant::now();
    vmm.request_stop();
    assert_eq!(vmm.run(), VmExit::Stopped);
    assert!(t.elapsed() < Duration::from_secs(5));
}

/// The guest activates and resets a vsock and a virtio-fs device twice: the transports'
/// activate and reset run on the vCPU, under its seccomp filter (the vsock device accepts
/// a waiting host connection then; the fs worker gets and gives back its session).
#[test]
fn virtio_activation_and_reset_run_under_the_vcpu_filter() {
    use hyper_vmm::config::{FsCacheMode, FsConfig};
    use hyper_vmm::devices::virtio::fs::Fs;
    use hyper_vmm::devices::virtio::vsock::Vsock;
    if !kvm_usable() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).unwrap();
    let uds = dir.path().join("v.sock");
    let (vsock, fs) = (MAGIC_ADDR, MAGIC_ADDR + 0x1000);
    let console = Console::default();
    let mut asm = Asm::default();
    for _ in 0..2 {
        asm.virtio_activate(vsock, 3, 0x10_0000)
            .virtio_activate(fs, 2, 0x20_0000)
            .mmio_write32(vsock + 0x70, 0) // reset
            .mmio_write32(fs + 0x70, 0);
    }
    asm.check_mmio32(fs + 0x70, 0).reset().spin();
    let mut vmm = guest_vm(&asm.0, &console);
    let mem = vmm.mem.clone();
    let dev = Vsock::new(3, &uds, vmm.metrics.device("vsock")).unwrap();
    vmm.devices
        .add_virtio(&vmm.vm, &mem, &mut vmm.event_loop, Box::new(dev))
        .unwrap();
    let cfg = FsConfig {
        tag: "t".into(),
        shared_dir: share,
        cache: FsCacheMode::Auto,
        writeback: false,
        xattr: true,
    };
    let (dev, worker) = Fs::new("fs0", &cfg, vmm.metrics.device("fs0")).unwrap();
    vmm.fs_workers.push(worker);
    vmm.devices
        .add_virtio(&vmm.vm, &mem, &mut vmm.event_loop, Box::new(dev))
        .unwrap();
    // Waits in the backlog until the guest activates the device.
    let mut host = UnixStream::connect(&uds).unwrap();
    vmm.start().unwrap();
    assert_eq!(vmm.run(), VmExit::Reset);
    assert_eq!(console.text(), "Y");
    // Accepted on activation, dropped on reset: end of stream, not a timeout.
    host.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(std::io::Read::read(&mut host, &mut b).unwrap(), 0);
}

#[test]
fn the_kvm_probe_times_a_loop_of_guest_kernel_code() {
    if !kvm_usable() {
        return;
    }
    let p = hyper_vmm::vstate::probe::probe_kvm().expect("probe");
    assert_eq!(p.api_version, 12);
    assert_eq!(p.iterations, hyper_vmm::vstate::probe::PROBE_ITERATIONS);
    // No CPU runs an iteration (two instructions, one taken branch) in under 0.2 ns.
    assert!(p.loop_ns >= u64::from(p.iterations) / 5, "{p:?}");
    println!(
        "{:.1} ns per iteration: guest kernel code {}",
        p.ns_per_iteration(),
        if p.emulates_kernel_mode() {
            "emulated"
        } else {
            "on the CPU"
        }
    );
}
