//! hyperctl: hyper without containerd, for debugging.
//!
//! `run` boots a VM for an OCI bundle and runs its process with the terminal's stdio;
//! `list` shows the sandboxes on this host; `console` prints a sandbox's guest console;
//! `agent` calls the agent of a running VM directly.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hyper_agent_protocol::agent_ttrpc::AgentServiceClient;
use hyper_agent_protocol::{AGENT_VSOCK_PORT, agent};
use hyper_shim::config::Config;
use hyper_shim::hypervisor::process_alive;
use hyper_shim::sandbox::Sandbox;
use tokio::io::AsyncWriteExt;
use ttrpc::context;

#[derive(Parser)]
#[command(version, about = "Debugging CLI for hyper sandboxes")]
struct Cli {
    /// The shim's config file (default: /etc/hyper/config.toml, else built-in defaults).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM for an OCI bundle, run its process, print its output, exit with its status.
    Run {
        /// Sandbox id (default: the bundle directory's name).
        #[arg(long)]
        id: Option<String>,
        /// Directory holding config.json and the rootfs.
        bundle: PathBuf,
    },
    /// List the sandboxes in the state directory and whether their VMM runs.
    List,
    /// Print a sandbox's guest console (needs hypervisor.debug_console = true).
    Console { sandbox: String },
    /// Send a control request to a running hyper-vmm: ping, pause, resume, stop, metrics.
    Vmm {
        /// The VMM's control socket (`--api-socket`).
        #[arg(long, conflicts_with = "sandbox")]
        api_socket: Option<PathBuf>,
        /// A sandbox id from `hyperctl list` (its control socket is in the state dir).
        #[arg(long)]
        sandbox: Option<String>,
        command: String,
    },
    /// Talk to the agent inside a running VM.
    Agent {
        /// The VMM's hybrid vsock unix socket.
        #[arg(long, conflicts_with = "sandbox")]
        vsock_uds: Option<PathBuf>,
        /// A sandbox id from `hyperctl list` (its vsock socket is in the state dir).
        #[arg(long)]
        sandbox: Option<String>,
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

fn ctx() -> context::Context {
    context::with_timeout(10_000_000_000)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // One readable line, not anyhow's debug form with a backtrace.
    if let Err(e) = real_main().await {
        eprintln!("hyperctl: error: {e:#}");
        std::process::exit(1);
    }
}

async fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Run { id, bundle } => {
            let status = run_bundle(&config, id, &bundle).await?;
            std::process::exit(status);
        }
        Command::List => list(&config),
        Command::Console { sandbox } => {
            let path = config.runtime.state_dir.join(&sandbox).join("console.log");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{} (is hypervisor.debug_console on?)", path.display()))?;
            print!("{text}");
            Ok(())
        }
        Command::Vmm {
            api_socket,
            sandbox,
            command,
        } => {
            let socket = match (api_socket, sandbox) {
                (Some(p), _) => p,
                (None, Some(s)) => config.runtime.state_dir.join(s).join("vmm.sock"),
                (None, None) => bail!("give --api-socket PATH or --sandbox ID"),
            };
            let answer = hyper_shim::hypervisor::hyper_vmm::control(&socket, &command).await?;
            print!("{answer}");
            Ok(())
        }
        Command::Agent {
            vsock_uds,
            sandbox,
            port,
            wait,
            call,
        } => {
            let uds = match (vsock_uds, sandbox) {
                (Some(p), _) => p,
                (None, Some(s)) => config.runtime.state_dir.join(s).join("vsock.sock"),
                (None, None) => bail!("give --vsock-uds PATH or --sandbox ID"),
            };
            let wait = Duration::try_from_secs_f64(wait).context("--wait must be >= 0")?;
            let client = hyper_shim::agent::connect_with_retry(&uds, port, wait).await?;
            agent_call(&client, call).await
        }
    }
}

async fn agent_call(client: &AgentServiceClient, call: AgentCall) -> Result<()> {
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
    Ok(())
}

fn list(config: &Config) -> Result<()> {
    let dir = &config.runtime.state_dir;
    println!("{:<40} {:>8} STATE", "SANDBOX", "VMM PID");
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("read {}", dir.display())),
    };
    for e in entries.flatten().filter(|e| e.path().is_dir()) {
        let pid = std::fs::read_to_string(e.path().join("vmm.pid"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        let state = match pid {
            Some(p) if process_alive(p) => "running",
            Some(_) => "dead",
            None => "booting",
        };
        let pid = pid.map_or("-".to_string(), |p| p.to_string());
        println!("{:<40} {pid:>8} {state}", e.file_name().to_string_lossy());
    }
    Ok(())
}

/// Boots a VM for `bundle`, runs its process with our stdout/stderr, tears everything down.
async fn run_bundle(config: &Config, id: Option<String>, bundle: &Path) -> Result<i32> {
    let bundle = bundle
        .canonicalize()
        .with_context(|| format!("bundle {}", bundle.display()))?;
    let spec_path = bundle.join("config.json");
    let spec = oci_spec::runtime::Spec::load(&spec_path)
        .with_context(|| format!("OCI spec {}", spec_path.display()))?;
    let spec_json = std::fs::read(&spec_path)?;
    let id = id.unwrap_or_else(|| {
        bundle
            .file_name()
            .map_or("hyperctl".into(), |n| n.to_string_lossy().into_owned())
    });
    let root = spec
        .root()
        .as_ref()
        .map_or_else(|| PathBuf::from("rootfs"), |r| r.path().clone());
    let rootfs_dir = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    let hostname = spec.hostname().clone().unwrap_or_default();
    let size = hyper_shim::sizing::vm_size(&config.hypervisor, &spec)?;
    let sandbox = Sandbox::boot(config, &id, &hostname, &rootfs_dir, size).await?;
    let result = run_in(&sandbox, config, &id, &rootfs_dir, spec_json).await;
    sandbox.release_container(&id);
    sandbox.shutdown().await;
    result
}

async fn run_in(
    sandbox: &Sandbox,
    config: &Config,
    id: &str,
    rootfs: &Path,
    spec_json: Vec<u8>,
) -> Result<i32> {
    let agent = &sandbox.agent;
    let create_ctx = context::with_timeout(config.create_container_timeout().as_nanos() as i64);
    let create = sandbox.container_request(id, rootfs, spec_json, false)?;
    agent.create_container(create_ctx, &create).await?;
    let start = agent::StartContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    agent.start_container(sandbox.ctx(), &start).await?;
    let out = tokio::spawn(relay(agent.clone(), id.to_string(), false));
    let err = tokio::spawn(relay(agent.clone(), id.to_string(), true));
    let wait = agent::WaitProcessRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let status = agent
        .wait_process(context::Context::default(), &wait)
        .await?
        .status;
    for h in [out, err] {
        let _ = tokio::time::timeout(Duration::from_secs(2), h).await;
    }
    let remove = agent::RemoveContainerRequest {
        container_id: id.to_string(),
        ..Default::default()
    };
    let _ = agent.remove_container(sandbox.ctx(), &remove).await;
    Ok(status)
}

/// Copies the container's stdout (or stderr) to ours until the stream ends.
async fn relay(agent: AgentServiceClient, id: String, stderr: bool) {
    let req = agent::ReadStreamRequest {
        container_id: id,
        len: 32 * 1024,
        ..Default::default()
    };
    let mut stdout = tokio::io::stdout();
    let mut errout = tokio::io::stderr();
    loop {
        let ctx = context::Context::default();
        let r = if stderr {
            agent.read_stderr(ctx, &req).await
        } else {
            agent.read_stdout(ctx, &req).await
        };
        match r {
            Ok(r) if !r.data.is_empty() => {
                let w = if stderr {
                    errout.write_all(&r.data).await
                } else {
                    stdout.write_all(&r.data).await
                };
                if w.is_err() {
                    break;
                }
            }
            _ => break,
        }
    }
    let _ = stdout.flush().await;
}
