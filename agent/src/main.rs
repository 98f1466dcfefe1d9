//! hyper-agent: the guest's PID 1 and the ttrpc server the shim talks to.
//!
//! As PID 1 it sets up the guest (see `pid1`) and serves on vsock port 1024 (ttrpc), 1025
//! (its log), 1027 (port forwarding) and, when the kernel command line asks, 1026 (the
//! debug console).
//! Run as a normal process (tests, debugging) it serves on the address given with
//! `--address unix:///path`. Run as `hyper-agent __init` it is the helper that creates
//! one container process (see `container::child`).
mod cgroups;
mod container;
mod debug_console;
mod error;
mod guest_metrics;
mod log_stream;
mod mount;
mod network;
mod pid1;
mod port_forward;
mod process;
mod reaper;
mod rpc;
mod sandbox;
mod seccomp;
mod storage;

use anyhow::{Context, Result};
use hyper_agent_protocol::{
    AGENT_LOG_VSOCK_PORT, AGENT_READY_VSOCK_PORT, AGENT_VSOCK_PORT, DEBUG_CONSOLE_VSOCK_PORT,
    PORT_FORWARD_VSOCK_PORT, READY_MARKER, agent_ttrpc, guest,
};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

fn main() {
    if std::env::args().nth(1).as_deref() == Some(container::child::ARG) {
        container::child::main();
    }
    let is_init = std::process::id() == 1;
    if let Err(e) = run(is_init) {
        eprintln!("hyper-agent: fatal: {e:#}");
        if is_init {
            // PID 1 must not exit: that panics the kernel and hides the message.
            pid1::power_off();
        }
        std::process::exit(1);
    }
}

#[derive(Debug, PartialEq, Default)]
struct Args {
    address: Option<String>,
    state_dir: Option<PathBuf>,
    cgroup_root: Option<PathBuf>,
    allow_roots: Vec<PathBuf>,
    log_address: Option<String>,
    /// Unknown arguments, tolerated when `lenient`.
    ignored: Vec<String>,
}

fn run(is_init: bool) -> Result<()> {
    // As PID 1 the kernel hands over whatever follows "--" on its command line, and VMMs
    // append their own entries there: ignore what is not ours.
    let args = parse_args(std::env::args().skip(1), is_init)?;
    for a in &args.ignored {
        eprintln!("hyper-agent: ignoring argument {a:?}");
    }
    let address = match args.address {
        Some(a) => a,
        None if is_init => format!("vsock://-1:{AGENT_VSOCK_PORT}"),
        None => anyhow::bail!("not PID 1: give --address unix:///path/to/socket"),
    };
    if is_init {
        if let Err(e) = pid1::leave_initramfs() {
            // Containers still work (chroot instead of pivot_root); say why.
            eprintln!("hyper-agent: staying on the initramfs: {e:#}");
        }
        pid1::setup_guest().context("guest setup as PID 1")?;
    }
    let log = log_stream::LogStream::default();
    let log_address = args
        .log_address
        .or_else(|| is_init.then(|| format!("vsock://-1:{AGENT_LOG_VSOCK_PORT}")));
    let tee = log.clone();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || tee.writer())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYPER_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let opts = sandbox::Options {
        state_dir: args.state_dir.unwrap_or_else(|| guest::STATE_DIR.into()),
        cgroup_root: args
            .cgroup_root
            .unwrap_or_else(|| "/sys/fs/cgroup/hyper".into()),
        allow_roots: args.allow_roots,
        is_init,
    };
    std::fs::create_dir_all(&opts.state_dir)
        .with_context(|| format!("create {}", opts.state_dir.display()))?;
    if !is_init {
        // Orphans of our containers come back to us, not to the host's init.
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(async {
        if let Some(a) = &log_address
            && let Err(e) = log.serve(a).await
        {
            // The agent works without it; the shim then only misses the agent's log.
            tracing::warn!("no log stream: {e:#}");
        }
        if is_init && let Err(e) = port_forward::serve(PORT_FORWARD_VSOCK_PORT) {
            // Only `kubectl port-forward` needs it.
            tracing::warn!("no port forwarding: {e:#}");
        }
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if is_init
            && debug_console::enabled(&cmdline)
            && let Err(e) = debug_console::serve(DEBUG_CONSOLE_VSOCK_PORT)
        {
            tracing::warn!("no debug console: {e:#}");
        }
        serve(&address, opts).await
    })
}

/// Tells the host the ttrpc server listens (see [`AGENT_READY_VSOCK_PORT`]). A shim that
/// does not listen for it still finds the agent, by polling.
async fn announce_ready() {
    let host = tokio_vsock::VsockAddr::new(tokio_vsock::VMADDR_CID_HOST, AGENT_READY_VSOCK_PORT);
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio_vsock::VsockStream::connect(host),
    )
    .await
    {
        Ok(Ok(stream)) => drop(stream),
        Ok(Err(e)) => tracing::debug!("ready call to the host: {e}"),
        Err(_) => tracing::debug!("ready call to the host: no answer in 2 s"),
    }
}

async fn serve(address: &str, opts: sandbox::Options) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let is_init = opts.is_init;
    tokio::spawn(reaper::Reaper::global().run());
    let sandbox = Arc::new(sandbox::Sandbox::new(opts));
    let (shutdown_tx, mut shutdown_rx) = tokio::sync::mpsc::unbounded_channel();
    let agent = rpc::Agent {
        sandbox: sandbox.clone(),
        shutdown: shutdown_tx,
    };
    let service = agent_ttrpc::create_agent_service(Arc::new(agent));
    let mut server = ttrpc::r#async::Server::new()
        .bind(address)
        .with_context(|| format!("bind {address}"))?
        .register_service(service);
    server.start().await.context("start ttrpc server")?;
    if is_init {
        tokio::spawn(announce_ready());
    }
    // The harness and the shim's console reader wait for this exact line.
    println!("{READY_MARKER} address={address}");
    if is_init {
        pid1::signal_boot_done();
    }
    let mut sigterm = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    loop {
        tokio::select! {
            _ = shutdown_rx.recv() => {
                tracing::info!("shutdown requested");
                // Let the Shutdown reply go out first.
                tokio::time::sleep(Duration::from_millis(100)).await;
                break;
            }
            _ = sigterm.recv() => {
                if is_init {
                    tracing::info!("SIGTERM: forwarding to the containers");
                    sandbox.signal_all(nix::sys::signal::Signal::SIGTERM);
                } else {
                    tracing::info!("SIGTERM: exiting");
                    break;
                }
            }
            _ = sigint.recv() => {
                // As PID 1 this is the VMM's Ctrl-Alt-Del: a graceful stop of the VM.
                tracing::info!("SIGINT: stopping");
                break;
            }
        }
    }
    sandbox.teardown().await;
    if is_init {
        pid1::power_off();
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown()).await;
    if let Some(p) = address.strip_prefix("unix://") {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// `--address ADDR`, `--state-dir DIR`, `--cgroup-root DIR`, `--allow-root DIR` (repeatable);
/// also as `--flag=value`. Anything else is an error naming the argument, or, when
/// `lenient`, is returned in `ignored`.
fn parse_args(mut args: impl Iterator<Item = String>, lenient: bool) -> Result<Args> {
    let mut out = Args::default();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || -> Result<String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => args.next().with_context(|| format!("{flag} needs a value")),
            }
        };
        match flag.as_str() {
            "--address" => out.address = Some(value()?),
            "--state-dir" => out.state_dir = Some(value()?.into()),
            "--cgroup-root" => out.cgroup_root = Some(value()?.into()),
            "--allow-root" => out.allow_roots.push(value()?.into()),
            "--log-address" => out.log_address = Some(value()?),
            _ if lenient => out.ignored.push(arg),
            _ => anyhow::bail!(
                "unknown argument {arg:?} (usage: hyper-agent [--address ADDR] [--log-address ADDR] \
                 [--state-dir DIR] [--cgroup-root DIR] [--allow-root DIR]...)"
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse_args;

    fn args(v: &[&str]) -> impl Iterator<Item = String> {
        v.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    fn parse_args_strict(a: impl Iterator<Item = String>) -> anyhow::Result<super::Args> {
        parse_args(a, false)
    }

    #[test]
    fn pid1_ignores_foreign_arguments() {
        let a = parse_args(
            args(&[
                "--allow-root",
                "/images",
                "virtio_mmio.device=4K@0xd0001000:5",
            ]),
            true,
        )
        .unwrap();
        assert_eq!(a.allow_roots, vec![std::path::PathBuf::from("/images")]);
        assert_eq!(
            a.ignored,
            vec!["virtio_mmio.device=4K@0xd0001000:5".to_string()]
        );
    }

    #[test]
    fn argument_forms() {
        assert_eq!(parse_args_strict(args(&[])).unwrap().address, None);
        assert_eq!(
            parse_args_strict(args(&["--address", "unix:///a"]))
                .unwrap()
                .address,
            Some("unix:///a".into())
        );
        let a = parse_args_strict(args(&[
            "--address=unix:///b",
            "--state-dir",
            "/s",
            "--cgroup-root=/c",
            "--allow-root",
            "/x",
            "--allow-root=/y",
        ]))
        .unwrap();
        assert_eq!(a.address, Some("unix:///b".into()));
        assert_eq!(a.state_dir, Some("/s".into()));
        assert_eq!(a.cgroup_root, Some("/c".into()));
        assert_eq!(
            a.allow_roots,
            vec![std::path::PathBuf::from("/x"), "/y".into()]
        );
        let err = parse_args_strict(args(&["--bogus"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--bogus"), "{err}");
        assert!(parse_args_strict(args(&["--address"])).is_err());
    }
}
