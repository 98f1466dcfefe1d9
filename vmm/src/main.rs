//! `hyper-vmm`: boots one microVM and serves its control socket until the guest resets or
//! is stopped. Exit status 0 on a guest reset or a requested stop, 1 on any error.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use hyper_vmm::config::{self, SerialOutputConfig, Validate, VmConfig, VsockConfig};
use hyper_vmm::inherited_fds::InheritedFds;
use hyper_vmm::persist::{Snapshot, SnapshotFiles};

#[derive(Parser, Debug)]
#[command(name = "hyper-vmm", version, about = "hyper's KVM microVM monitor")]
struct Cli {
    /// Uncompressed ELF kernel (vmlinux).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initramfs to load.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (virtio_mmio.device= entries are appended).
    #[arg(long)]
    cmdline: Option<String>,
    #[arg(long)]
    vcpus: Option<u8>,
    #[arg(long = "memory-mib")]
    memory_mib: Option<u64>,
    /// Guest console: a file path, "stdout" or "none".
    #[arg(long)]
    serial: Option<String>,
    /// Host unix socket for the hybrid vsock device.
    #[arg(long = "vsock-uds", requires = "vsock_cid")]
    vsock_uds: Option<PathBuf>,
    /// Guest CID for the vsock device (≥ 3).
    #[arg(long = "vsock-cid", requires = "vsock_uds")]
    vsock_cid: Option<u64>,
    /// path=P[,ro=true][,serial=S]; repeatable.
    #[arg(long)]
    block: Vec<String>,
    /// tap=NAME[,mac=MAC] or fd=N[,mac=MAC]; repeatable.
    #[arg(long)]
    net: Vec<String>,
    /// tag=T,path=DIR[,cache=none|auto|always][,writeback=B][,xattr=B]: share DIR with
    /// virtio-fs; repeatable.
    #[arg(long)]
    fs: Vec<String>,
    /// Add a virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// Control socket (line-based JSON: ping, pause, resume, stop, poweroff, metrics).
    #[arg(long = "api-socket")]
    api_socket: Option<PathBuf>,
    /// Run without seccomp filters (debugging only).
    #[arg(long = "no-seccomp")]
    no_seccomp: bool,
    /// JSON config file; flags given as well override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Boot no VM: time guest kernel-mode code in a tiny VM and print the result as one
    /// JSON line (`hyperctl check` reads it).
    #[arg(long = "probe-kvm", exclusive = true)]
    probe_kvm: bool,
}

/// The config file first, then every flag given on top of it.
fn to_config(cli: Cli) -> anyhow::Result<VmConfig> {
    let mut cfg = match &cli.config {
        Some(p) => config::load_file(p)?,
        None => VmConfig::new(PathBuf::new()),
    };
    if let Some(k) = cli.kernel {
        cfg.kernel = k;
    }
    if cli.initrd.is_some() {
        cfg.initrd = cli.initrd;
    }
    if cli.cmdline.is_some() {
        cfg.cmdline = cli.cmdline;
    }
    if let Some(v) = cli.vcpus {
        cfg.vcpus = v;
    }
    if let Some(m) = cli.memory_mib {
        cfg.memory_mib = m;
    }
    if let Some(s) = cli.serial {
        cfg.serial = SerialOutputConfig::parse(&s);
    }
    if let (Some(uds), Some(cid)) = (cli.vsock_uds, cli.vsock_cid) {
        cfg.vsock = Some(VsockConfig { uds, cid });
    }
    for b in &cli.block {
        cfg.block.push(config::parse_block(b)?);
    }
    for n in &cli.net {
        cfg.net.push(config::parse_net(n)?);
    }
    for f in &cli.fs {
        cfg.fs.push(config::parse_fs(f)?);
    }
    if cli.rng {
        cfg.rng = true;
    }
    if cli.api_socket.is_some() {
        cfg.api_socket = cli.api_socket;
    }
    if cli.no_seccomp {
        cfg.seccomp = false;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// User + system CPU time this process has used so far, in µs.
fn process_cpu_us() -> u64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_SELF is always valid.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return 0;
    }
    // SAFETY: zero-initialised and filled by a successful getrusage.
    let u = unsafe { usage.assume_init() };
    let us = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    us(u.ru_utime) + us(u.ru_stime)
}

/// The snapshot files the config names, opened now: the jail has no place for them.
struct OpenSnapshots {
    save_to: Option<SnapshotFiles>,
    restore_from: Option<(Snapshot, std::fs::File)>,
}

impl OpenSnapshots {
    /// The fds the jail must keep open.
    fn raw_fds(&self) -> Vec<std::os::fd::RawFd> {
        use std::os::fd::AsRawFd;
        let saved = self.save_to.iter().flat_map(|f| [&f.state, &f.memory]);
        let restored = self.restore_from.iter().map(|(_, memory)| memory);
        saved.chain(restored).map(|f| f.as_raw_fd()).collect()
    }
}

fn open_snapshots(cfg: &VmConfig) -> anyhow::Result<OpenSnapshots> {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(s) = &cfg.snapshot else {
        return Ok(OpenSnapshots {
            save_to: None,
            restore_from: None,
        });
    };
    let create = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(p)
            .with_context(|| format!("snapshot.save_to: cannot create {}", p.display()))
    };
    let open = |p: &std::path::Path| {
        std::fs::File::open(p)
            .with_context(|| format!("snapshot.restore_from: cannot open {}", p.display()))
    };
    let save_to = match &s.save_to {
        Some(f) => Some(SnapshotFiles {
            state: create(&f.state)?,
            memory: create(&f.memory)?,
        }),
        None => None,
    };
    let restore_from = match &s.restore_from {
        Some(f) => {
            let snapshot = hyper_vmm::persist::read_state(&open(&f.state)?)
                .with_context(|| format!("snapshot.restore_from: {}", f.state.display()))?;
            Some((snapshot, open(&f.memory)?))
        }
        None => None,
    };
    Ok(OpenSnapshots {
        save_to,
        restore_from,
    })
}

fn run(start: Instant) -> anyhow::Result<i32> {
    let cli = Cli::parse();
    if cli.probe_kvm {
        let probe = hyper_vmm::vstate::probe::probe_kvm().context("KVM probe")?;
        println!("{}", serde_json::to_string(&probe)?);
        return Ok(0);
    }
    let cfg = to_config(cli)?;
    // Before anything else takes an fd number.
    let mut fds = InheritedFds::claim(&cfg)?;
    let snapshots = open_snapshots(&cfg)?;
    // Jailed, only the child comes back from here; the parent waits for it and exits.
    if let Some(jail) = &cfg.jail {
        let keep = [fds.raw_fds(), snapshots.raw_fds()].concat();
        hyper_vmm::jail::enter(&cfg, jail, &keep).context("jail")?;
    }
    hyper_vmm::vmm::install_termination_handlers().context("cannot install signal handlers")?;
    if cfg.jail.is_some() {
        hyper_vmm::jail::termination_signals_ready();
    }
    let mut vmm = match &snapshots.restore_from {
        Some((snapshot, memory)) => {
            hyper_vmm::builder::restore(&cfg, start, snapshot, memory, &mut fds)
                .context("cannot restore the VM")?
        }
        None => hyper_vmm::builder::build(&cfg, start, &mut fds).context("cannot build the VM")?,
    };
    vmm.snapshot_to = snapshots.save_to;
    if !cfg.fs.is_empty() {
        let n = hyper_vmm::privileges::raise_open_files_limit();
        tracing::debug!("open-file limit for the shares: {n}");
    }
    // Everything is open now; keep only what serving the VM still needs.
    hyper_vmm::privileges::drop_privileges(!cfg.fs.is_empty())?;
    vmm.start().context("cannot start the vCPUs")?;
    // The startup cost Firecracker specifies (process start -> first KVM_RUN); read by
    // vmm/bench/startup.sh and, through `metrics`, by the shim's start-up trace. Wall
    // time counts from main(), CPU time from exec.
    let wall_us = vmm
        .metrics
        .vcpus_started_us
        .load(std::sync::atomic::Ordering::Relaxed);
    tracing::info!(
        "vcpus-started wall-us={wall_us} cpu-us={}",
        process_cpu_us()
    );
    if !cfg.seccomp {
        tracing::warn!("seccomp is off: debugging only, a compromised VMM is unconfined");
    }
    vmm.lock_down_main_thread()
        .context("cannot install the main thread's seccomp filter")?;
    let why = vmm.run();
    match &why {
        hyper_vmm::vstate::vcpu::VmExit::Error(msg) => tracing::error!("VM failed: {msg}"),
        other => tracing::info!("VM ended: {other:?}"),
    }
    Ok(why.exit_code())
}

fn main() -> ExitCode {
    let start = Instant::now();
    // SAFETY: isatty only inspects fd 2.
    let tty = unsafe { libc::isatty(2) } == 1;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(tty)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYPER_VMM_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match run(start) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("hyper-vmm: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
