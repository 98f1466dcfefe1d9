//! hyperctl: poke at a hyper sandbox by hand.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hyper_agent_protocol::{AGENT_VSOCK_PORT, agent};
use ttrpc::context;

#[derive(Parser)]
#[command(version, about = "Debugging CLI for hyper sandboxes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Talk to the agent inside a running VM.
    Agent {
        /// The VMM's hybrid vsock unix socket.
        #[arg(long)]
        vsock_uds: PathBuf,
        /// Guest vsock port of the agent.
        #[arg(long, default_value_t = AGENT_VSOCK_PORT)]
        port: u32,
        /// Keep retrying the connection this long (seconds): the guest may still be booting.
        #[arg(long, default_value_t = 10.0)]
        wait: f64,
        #[command(subcommand)]
        call: AgentCall,
    },
}

#[derive(Subcommand)]
enum AgentCall {
    /// Health check: prints SERVING when the agent answers.
    Health,
    /// Agent version, protocol version and guest kernel release.
    Version,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent {
            vsock_uds,
            port,
            wait,
            call,
        } => {
            let wait = Duration::try_from_secs_f64(wait).context("--wait must be >= 0")?;
            let client = hyper_shim::agent::connect_with_retry(&vsock_uds, port, wait).await?;
            let ctx = || context::with_timeout(10_000_000_000);
            match call {
                AgentCall::Health => {
                    let r = client
                        .health(ctx(), &agent::HealthRequest::default())
                        .await?;
                    println!("{:?}", r.status.enum_value_or_default());
                }
                AgentCall::Version => {
                    let r = client
                        .version(ctx(), &agent::VersionRequest::default())
                        .await?;
                    println!(
                        "agent {} protocol {} kernel {}",
                        r.agent_version, r.protocol_version, r.kernel_release
                    );
                }
            }
        }
    }
    Ok(())
}
