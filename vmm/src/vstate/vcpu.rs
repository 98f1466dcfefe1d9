//! vCPUs: initial state (CPUID, MSRs, FPU, registers, LAPIC) and the run loop that routes
//! exits to the buses.
//!
//! Each vCPU runs on its own thread. Pause and stop are requested through [`VmControl`];
//! a signal kicks the thread out of KVM_RUN so it notices.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{CpuId, kvm_lapic_state};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{Killable, SIGRTMIN, register_signal_handler};

use super::vcpu_state::VcpuState;
use crate::arch::x86_64::{cpuid, msrs, paging, regs};
use crate::devices::Bus;
use crate::metrics::{Metrics, inc};
use crate::seccomp::{BpfProgram, spawn_filtered};

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}: {source}")]
    Create {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot set up vCPU {id} ({what}): {source}")]
    Setup {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("cannot write boot structures for vCPU {0}: {1}")]
    Memory(u8, vm_memory::GuestMemoryError),
    #[error("cannot spawn the thread for vCPU {0}: {1}")]
    Spawn(u8, std::io::Error),
    #[error("cannot install the vCPU kick signal handler: {0}")]
    Signal(vmm_sys_util::errno::Error),
    #[error("snapshot: {0}")]
    Snapshot(String),
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest asked for a reset (i8042 0xFE, or a KVM reset event): a normal reboot.
    Reset,
    /// The VMM was asked to stop (control socket or signal).
    Stopped,
    /// Something went wrong; the message says what.
    Error(String),
}

impl VmExit {
    pub fn exit_code(&self) -> i32 {
        match self {
            VmExit::Reset | VmExit::Stopped => 0,
            VmExit::Error(_) => 1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunState {
    Running,
    Paused,
    Stopping,
}

/// Shared between the vCPU threads and the VMM: run state, the first exit reason, and an
/// eventfd that wakes the VMM's event loop when the VM ends.
pub struct VmControl {
    state: Mutex<RunState>,
    cv: Condvar,
    parked: AtomicUsize,
    exit: Mutex<Option<VmExit>>,
    pub exit_evt: EventFd,
    /// A request to the parked vCPUs to save their state (locked after `state`).
    save: Mutex<SaveRound>,
}

/// One round of saving every parked vCPU's state for a snapshot.
#[derive(Default)]
struct SaveRound {
    active: bool,
    /// The MSRs to save: the host's list, the same for every vCPU.
    msr_indices: Arc<Vec<u32>>,
    /// Each vCPU's answer, by id.
    states: Vec<Option<Result<VcpuState, String>>>,
}

impl VmControl {
    pub fn new() -> std::io::Result<Arc<Self>> {
        Ok(Arc::new(VmControl {
            state: Mutex::new(RunState::Running),
            cv: Condvar::new(),
            parked: AtomicUsize::new(0),
            exit: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            save: Mutex::new(SaveRound::default()),
        }))
    }

    /// Records why the VM ends (the first reason wins) and wakes the VMM.
    pub fn request_exit(&self, why: VmExit) {
        {
            let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
            if exit.is_none() {
                *exit = Some(why);
            }
        }
        self.set_state(RunState::Stopping);
        let _ = self.exit_evt.write(1);
    }

    pub fn exit_reason(&self) -> Option<VmExit> {
        self.exit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_state(&self, s: RunState) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *st != RunState::Stopping {
            *st = s;
        }
        self.cv.notify_all();
    }

    fn state(&self) -> RunState {
        *self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_paused(&self) -> bool {
        self.state() == RunState::Paused
    }

    /// Blocks while paused, saving `vcpu`'s state when a snapshot asks for it. Returns
    /// false when the vCPU must stop.
    fn wait_runnable(&self, vcpu: &mut Vcpu) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut counted = false;
        loop {
            match *st {
                RunState::Running => break,
                RunState::Stopping => break,
                RunState::Paused => {
                    if !counted {
                        self.parked.fetch_add(1, Ordering::SeqCst);
                        counted = true;
                    }
                    self.save_if_asked(vcpu);
                    st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
        if counted {
            self.parked.fetch_sub(1, Ordering::SeqCst);
        }
        *st != RunState::Stopping
    }
}

impl VmControl {
    /// On a parked vCPU's thread: answers the current save round, once.
    fn save_if_asked(&self, vcpu: &mut Vcpu) {
        let mut round = self.save.lock().unwrap_or_else(|e| e.into_inner());
        let id = usize::from(vcpu.id);
        if !round.active || round.states.get(id).is_none_or(Option::is_some) {
            return;
        }
        let msr_indices = round.msr_indices.clone();
        let saved = VcpuState::save(&mut vcpu.fd, vcpu.id, &msr_indices).map_err(|e| e.to_string());
        round.states[id] = Some(saved);
        self.cv.notify_all();
    }

    /// On the main thread, with every vCPU parked: each one's state, in id order.
    fn save_parked(
        &self,
        vcpus: usize,
        msr_indices: Vec<u32>,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, VcpuError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if *st != RunState::Paused {
            return Err(VcpuError::Snapshot("the vCPUs are not paused".into()));
        }
        *self.save.lock().unwrap_or_else(|e| e.into_inner()) = SaveRound {
            active: true,
            msr_indices: Arc::new(msr_indices),
            states: (0..vcpus).map(|_| None).collect(),
        };
        self.cv.notify_all();
        let deadline = std::time::Instant::now() + timeout;
        let states = loop {
            {
                let mut round = self.save.lock().unwrap_or_else(|e| e.into_inner());
                if round.states.iter().all(Option::is_some) {
                    round.active = false;
                    break std::mem::take(&mut round.states);
                }
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                self.save.lock().unwrap_or_else(|e| e.into_inner()).active = false;
                return Err(VcpuError::Snapshot(format!(
                    "the vCPUs did not save their state within {timeout:?}"
                )));
            }
            st = self
                .cv
                .wait_timeout(st, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        };
        drop(st);
        states
            .into_iter()
            .map(|s| s.expect("checked above").map_err(VcpuError::Snapshot))
            .collect()
    }
}

extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that interrupts KVM_RUN.
pub fn kick_signal() -> i32 {
    SIGRTMIN()
}

/// Installs the no-op handler for the kick signal (once per process).
pub fn install_kick_handler() -> Result<(), VcpuError> {
    register_signal_handler(kick_signal(), kick_handler).map_err(VcpuError::Signal)
}

/// The CPUID entries KVM can give a vCPU on this host ([`Vcpu::configure`] filters them).
pub fn supported_cpuid(kvm: &kvm_ioctls::Kvm) -> Result<CpuId, VcpuError> {
    kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(|source| VcpuError::Setup {
            id: 0,
            what: "supported CPUID",
            source,
        })
}

pub struct Vcpu {
    pub fd: VcpuFd,
    pub id: u8,
}

impl Vcpu {
    pub fn new(vm: &kvm_ioctls::VmFd, id: u8) -> Result<Vcpu, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Vcpu { fd, id })
    }

    fn setup_err(&self, what: &'static str) -> impl Fn(kvm_ioctls::Error) -> VcpuError {
        let id = self.id;
        move |source| VcpuError::Setup { id, what, source }
    }

    /// CPUID, MSRs, FPU and LAPIC for any vCPU.
    pub fn configure(&self, base_cpuid: &CpuId, num_cpus: u8) -> Result<(), VcpuError> {
        let mut c = base_cpuid.clone();
        cpuid::filter_cpuid(&mut c, self.id, num_cpus);
        self.fd.set_cpuid2(&c).map_err(self.setup_err("CPUID"))?;

        let wanted = msrs::boot_msr_entries().len();
        let list = msrs::boot_msrs().map_err(|_| VcpuError::Setup {
            id: self.id,
            what: "MSR list",
            source: kvm_ioctls::Error::new(libc::E2BIG),
        })?;
        let set = self.fd.set_msrs(&list).map_err(self.setup_err("MSRs"))?;
        if set != wanted {
            tracing::warn!("vCPU {}: KVM accepted {set} of {wanted} boot MSRs", self.id);
        }
        self.fd
            .set_fpu(&regs::boot_fpu())
            .map_err(self.setup_err("FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(self.setup_err("get LAPIC"))?;
        set_lint_modes(&mut lapic);
        self.fd
            .set_lapic(&lapic)
            .map_err(self.setup_err("set LAPIC"))?;
        Ok(())
    }

    /// 64-bit entry state for the boot vCPU.
    pub fn setup_boot_entry(&self, mem: &GuestMemoryMmap, entry: u64) -> Result<(), VcpuError> {
        let sregs = self.fd.get_sregs().map_err(self.setup_err("get sregs"))?;
        let sregs = regs::setup_long_mode(mem, sregs).map_err(|e| VcpuError::Memory(self.id, e))?;
        self.fd
            .set_sregs(&sregs)
            .map_err(self.setup_err("set sregs"))?;
        self.fd
            .set_regs(&regs::boot_regs(entry))
            .map_err(self.setup_err("set regs"))?;
        Ok(())
    }

    /// Starts the run loop on its own thread, under `filter` (the vCPU seccomp filter) if
    /// given: installed before the guest runs a single instruction.
    pub fn start(
        self,
        ctx: VcpuContext,
        filter: Option<Arc<BpfProgram>>,
    ) -> Result<JoinHandle<()>, VcpuError> {
        let id = self.id;
        let builder = std::thread::Builder::new().name(format!("vcpu{id}"));
        spawn_filtered(builder, filter, move || {
            let mut runner = VcpuRunner { vcpu: self, ctx };
            let why = runner.run();
            if let Some(why) = why {
                runner.ctx.control.request_exit(why);
            }
        })
        .map_err(|e| VcpuError::Spawn(id, e))
    }
}

// LVT LINT0/LINT1 register offsets in the LAPIC page, and their delivery-mode field.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let b = &lapic.regs[offset..offset + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        lapic.regs[offset + i] = *b as _;
    }
}

/// LINT0 delivers the legacy PIC's ExtINT, LINT1 delivers NMIs, as on a PC.
fn set_lint_modes(lapic: &mut kvm_lapic_state) {
    let with_mode = |reg: u32, mode: u32| (reg & !0x700) | (mode << 8);
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, with_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, with_mode(lvt1, APIC_MODE_NMI));
}

/// What a vCPU thread needs besides its fd.
#[derive(Clone)]
pub struct VcpuContext {
    pub io_bus: Bus,
    pub mmio_bus: Bus,
    pub mem: GuestMemoryMmap,
    pub control: Arc<VmControl>,
    pub metrics: Arc<Metrics>,
}

struct VcpuRunner {
    vcpu: Vcpu,
    ctx: VcpuContext,
}

/// Exits that need the vCPU fd after the exit borrow has ended.
enum After {
    Continue,
    Exit(VmExit),
    InternalError,
}

impl VcpuRunner {
    /// Runs until the VM must end. Returns the reason if this vCPU caused it.
    fn run(&mut self) -> Option<VmExit> {
        loop {
            if !self.ctx.control.wait_runnable(&mut self.vcpu) {
                return None;
            }
            let after = self.run_once();
            match after {
                After::Continue => {}
                After::Exit(why) => return Some(why),
                After::InternalError => return Some(self.describe_internal_error()),
            }
        }
    }

    fn run_once(&mut self) -> After {
        let m = &self.ctx.metrics.exits;
        let id = self.vcpu.id;
        match self.vcpu.fd.run() {
            Ok(exit) => match exit {
                VcpuExit::IoIn(port, data) => {
                    inc(&m.io_in);
                    if !self.ctx.io_bus.read(u64::from(port), data) {
                        inc(&m.unhandled_io);
                    }
                    After::Continue
                }
                VcpuExit::IoOut(port, data) => {
                    inc(&m.io_out);
                    if !self.ctx.io_bus.write(u64::from(port), data) {
                        inc(&m.unhandled_io);
                    }
                    After::Continue
                }
                VcpuExit::MmioRead(addr, data) => {
                    inc(&m.mmio_read);
                    if !self.ctx.mmio_bus.read(addr, data) {
                        inc(&m.unhandled_mmio);
                    }
                    After::Continue
                }
                VcpuExit::MmioWrite(addr, data) => {
                    inc(&m.mmio_write);
                    if !self.ctx.mmio_bus.write(addr, data) {
                        inc(&m.unhandled_mmio);
                    }
                    After::Continue
                }
                VcpuExit::Intr => {
                    inc(&m.intr);
                    After::Continue
                }
                VcpuExit::Hlt => {
                    inc(&m.hlt);
                    After::Exit(VmExit::Error(format!(
                        "vCPU {id} halted with interrupts off (HLT exit)"
                    )))
                }
                VcpuExit::Shutdown => {
                    inc(&m.shutdown);
                    After::Exit(VmExit::Error(format!(
                        "vCPU {id}: guest shutdown exit (triple fault)"
                    )))
                }
                VcpuExit::FailEntry(reason, cpu) => {
                    inc(&m.fail_entry);
                    After::Exit(VmExit::Error(format!(
                        "vCPU {id}: KVM entry failed, hardware reason {reason:#x} on host cpu {cpu}"
                    )))
                }
                VcpuExit::InternalError => {
                    inc(&m.internal_error);
                    After::InternalError
                }
                VcpuExit::SystemEvent(kind, _) => {
                    inc(&m.system_event);
                    match kind {
                        kvm_bindings::KVM_SYSTEM_EVENT_RESET => After::Exit(VmExit::Reset),
                        kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => After::Exit(VmExit::Stopped),
                        other => {
                            After::Exit(VmExit::Error(format!("vCPU {id}: system event {other}")))
                        }
                    }
                }
                other => {
                    inc(&m.other);
                    After::Exit(VmExit::Error(format!(
                        "vCPU {id}: unexpected exit {other:?}"
                    )))
                }
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                inc(&m.intr);
                self.vcpu.fd.set_kvm_immediate_exit(0);
                After::Continue
            }
            Err(e) => After::Exit(VmExit::Error(format!("vCPU {id}: KVM_RUN failed: {e}"))),
        }
    }

    /// Builds the error for a KVM internal error (usually an emulation failure): the
    /// suberror, RIP and the instruction bytes at RIP.
    fn describe_internal_error(&mut self) -> VmExit {
        let id = self.vcpu.id;
        // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, so `internal` is the active field.
        let (suberror, ndata) = unsafe {
            let internal = &self.vcpu.fd.get_kvm_run().__bindgen_anon_1.internal;
            (internal.suberror, internal.ndata)
        };
        let kind = match suberror {
            1 => "emulation failure",
            2 => "simultaneous exceptions",
            3 => "delivery event failure",
            4 => "unexpected exit reason",
            _ => "unknown",
        };
        let mut msg =
            format!("vCPU {id}: KVM internal error {suberror} ({kind}), {ndata} data words");
        if let (Ok(r), Ok(s)) = (self.vcpu.fd.get_regs(), self.vcpu.fd.get_sregs()) {
            msg.push_str(&format!(", rip={:#x} cs.base={:#x}", r.rip, s.cs.base));
            let linear = s.cs.base.wrapping_add(r.rip);
            const CR0_PG: u64 = 1 << 31;
            const EFER_LMA: u64 = 1 << 10;
            let phys = if s.cr0 & CR0_PG == 0 {
                Some(linear)
            } else if s.efer & EFER_LMA != 0 {
                paging::translate(&self.ctx.mem, s.cr3, linear)
            } else {
                None
            };
            match phys {
                Some(p) => {
                    let mut bytes = [0u8; 15];
                    match self.ctx.mem.read_slice(&mut bytes, GuestAddress(p)) {
                        Ok(()) => {
                            msg.push_str(&format!(", instruction bytes at {p:#x}: {}", hex(&bytes)))
                        }
                        Err(_) => msg.push_str(&format!(", rip maps to {p:#x} outside RAM")),
                    }
                }
                None => msg.push_str(", rip is not mapped"),
            }
        }
        VmExit::Error(msg)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The running vCPU threads and the shared control block.
pub struct VcpuSet {
    pub threads: Vec<JoinHandle<()>>,
    pub control: Arc<VmControl>,
}

impl VcpuSet {
    fn kick_all(&self) {
        for t in &self.threads {
            if !t.is_finished() {
                let _ = t.kill(kick_signal());
            }
        }
    }

    /// Pauses every vCPU and waits (up to `timeout`) until all are parked.
    pub fn pause(&self, timeout: Duration) -> bool {
        self.control.set_state(RunState::Paused);
        let deadline = std::time::Instant::now() + timeout;
        let running = || self.threads.iter().filter(|t| !t.is_finished()).count();
        // Kick repeatedly: a kick sent just before a thread re-enters KVM_RUN is lost.
        while self.control.parked.load(Ordering::SeqCst) < running() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            self.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        true
    }

    pub fn resume(&self) {
        self.control.set_state(RunState::Running);
    }

    /// Every vCPU's state, saved by its own thread; the vCPUs must be paused.
    pub fn save_states(
        &self,
        msr_indices: Vec<u32>,
        timeout: Duration,
    ) -> Result<Vec<VcpuState>, VcpuError> {
        self.control
            .save_parked(self.threads.len(), msr_indices, timeout)
    }

    /// Stops every vCPU thread and joins them.
    pub fn stop(&mut self) {
        self.control.set_state(RunState::Stopping);
        while self.threads.iter().any(|t| !t.is_finished()) {
            self.kick_all();
            std::thread::sleep(Duration::from_millis(2));
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
