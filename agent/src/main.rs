//! hyper-agent: the guest's PID 1 and the ttrpc server the shim talks to.
//!
//! As PID 1 it sets up the guest (see `init`) and serves on vsock port 1024.
//! Run as a normal process (tests, debugging) it serves on the address given with
//! `--address unix:///path`.
mod init;
mod rpc;

use anyhow::{Context, Result};
use hyper_agent_protocol::{AGENT_VSOCK_PORT, READY_MARKER, agent_ttrpc};
use std::sync::Arc;

fn main() {
    let is_init = std::process::id() == 1;
    if let Err(e) = run(is_init) {
        eprintln!("hyper-agent: fatal: {e:#}");
        if is_init {
            // PID 1 must not exit: that panics the kernel and hides the message.
            init::power_off();
        }
        std::process::exit(1);
    }
}

fn run(is_init: bool) -> Result<()> {
    let address = match parse_address(std::env::args().skip(1))? {
        Some(a) => a,
        None if is_init => format!("vsock://-1:{AGENT_VSOCK_PORT}"),
        None => anyhow::bail!("not PID 1: give --address unix:///path/to/socket"),
    };
    if is_init {
        init::setup_guest().context("guest setup as PID 1")?;
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HYPER_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    runtime.block_on(serve(&address, is_init))
}

async fn serve(address: &str, is_init: bool) -> Result<()> {
    let service = agent_ttrpc::create_agent_service(Arc::new(rpc::Agent::default()));
    let mut server = ttrpc::r#async::Server::new()
        .bind(address)
        .with_context(|| format!("bind {address}"))?
        .register_service(service);
    server.start().await.context("start ttrpc server")?;
    // The harness and the shim's console reader wait for this exact line.
    println!("{READY_MARKER} address={address}");
    if is_init {
        init::reap_forever().await
    } else {
        tokio::signal::ctrl_c().await.context("wait for ctrl-c")?;
        server.shutdown().await.context("shutdown")?;
        Ok(())
    }
}

/// `--address ADDR` (or `--address=ADDR`); anything else is an error naming the argument.
fn parse_address(mut args: impl Iterator<Item = String>) -> Result<Option<String>> {
    let mut address = None;
    while let Some(arg) = args.next() {
        if arg == "--address" {
            address = Some(args.next().context("--address needs a value")?);
        } else if let Some(v) = arg.strip_prefix("--address=") {
            address = Some(v.to_string());
        } else {
            anyhow::bail!("unknown argument {arg:?} (usage: hyper-agent [--address ADDR])");
        }
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::parse_address;

    fn args(v: &[&str]) -> impl Iterator<Item = String> {
        v.iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn address_forms() {
        assert_eq!(parse_address(args(&[])).unwrap(), None);
        assert_eq!(
            parse_address(args(&["--address", "unix:///a"])).unwrap(),
            Some("unix:///a".into())
        );
        assert_eq!(
            parse_address(args(&["--address=unix:///b"])).unwrap(),
            Some("unix:///b".into())
        );
        let err = parse_address(args(&["--bogus"])).unwrap_err().to_string();
        assert!(err.contains("--bogus"), "{err}");
        assert!(parse_address(args(&["--address"])).is_err());
    }
}
