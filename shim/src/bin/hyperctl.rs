//! hyperctl: hyper without containerd, for debugging.
//!
//! `run` boots a VM for an OCI bundle and runs its process with the terminal's stdio;
//! `list` shows the sandboxes on this host; `console` prints a sandbox's guest console;
//! `agent` calls the agent of a running VM directly; `exec` opens a pod's guest debug
//! console; `check` tells whether this host can run hyper; `metrics` prints the pods'
//! Prometheus metrics and `monitor` serves them on one HTTP endpoint.
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use std::sync::Arc;

use hyper_agent_protocol::AGENT_VSOCK_PORT;
use hyper_shim::agent::{Agent, AgentTimeouts, ProcessRef, TtrpcAgent};
use hyper_shim::config::Config;
use hyper_shim::hypervisor::hyper_vmm::{CONTROL_TIMEOUT, api_socket_in, request, vsock_uds_in};
use hyper_shim::identifier;
use hyper_shim::metrics;
use hyper_shim::pid_file::{self, Recorded};
use hyper_shim::pod::{Exit, NewContainer, Pod, PodEvents, Stdio};
use hyper_shim::sandbox::HyperVmmBackend;
use hyper_vmm_api::{Reply, Request};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;

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
        /// Pass our stdin to the process (EOF when ours ends).
        #[arg(short = 'i', long)]
        stdin: bool,
        /// Directory holding config.json and the rootfs.
        bundle: PathBuf,
    },
    /// List the sandboxes in the state directory and whether their VMM runs.
    List,
    /// Print a sandbox's guest console (needs hypervisor.debug_console = true).
    Console { sandbox: String },
    /// Send a control request to a running hyper-vmm: ping, pause, resume, stop, poweroff, metrics.
    Vmm {
        /// The VMM's control socket (`--api-socket`).
        #[arg(long, conflicts_with = "sandbox")]
        api_socket: Option<PathBuf>,
        /// A sandbox id from `hyperctl list` (its control socket is in the state dir).
        #[arg(long)]
        sandbox: Option<String>,
        /// Print `metrics` in the Prometheus text format instead of the JSON reply.
        #[arg(long)]
        prometheus: bool,
        command: Request,
    },
    /// A shell (or CMD) in a pod's guest itself, outside every container, on a terminal:
    /// the agent's debug console, on only for pods started with agent.debug_console = true.
    Exec {
        /// A sandbox id from `hyperctl list`.
        #[arg(long)]
        sandbox: String,
        /// The command and its arguments (default: the guest's shell).
        #[arg(trailing_var_arg = true)]
        command: Vec<String>,
    },
    /// Print the Prometheus metrics of one pod, or of every pod on this host merged.
    Metrics {
        /// A sandbox id from `hyperctl list` (default: every pod).
        #[arg(long)]
        sandbox: Option<String>,
    },
    /// Serve every pod's metrics on one HTTP endpoint (GET /metrics), for Prometheus.
    Monitor {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8090")]
        listen: std::net::SocketAddr,
    },
    /// Tell whether this host can run hyper: one line per check, OK, WARN or FAIL with
    /// what to do. Exit status 1 if any check failed.
    Check {
        /// containerd's config file (default: containerd's own default).
        #[arg(long)]
        containerd_config: Option<PathBuf>,
        /// Run only these checks (and what they need): root, kvm, vmm, kvm-guest-code,
        /// cgroup2, overlayfs, tun, shim, containerd, containerd-config, guest-kernel,
        /// guest-image, guest-boot.
        checks: Vec<String>,
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
        Command::Run { id, bundle, stdin } => {
            let status = run_bundle(&config, id, &bundle, stdin).await?;
            std::process::exit(status);
        }
        Command::List => list(&config),
        Command::Exec { sandbox, command } => {
            let dir = sandbox_dir(&config, &sandbox, "--sandbox")?;
            exec_in_guest(&dir, &sandbox, command).await?;
            std::process::exit(0);
        }
        Command::Metrics { sandbox } => {
            let page = match sandbox {
                Some(id) => {
                    let socket = sandbox_dir(&config, &id, "--sandbox")?.join(metrics::SOCKET);
                    metrics::http::fetch_unix(&socket, metrics::FETCH_TIMEOUT).await?
                }
                None => {
                    let dir = &config.runtime.state_dir;
                    metrics::monitor::scrape_all(dir, metrics::FETCH_TIMEOUT).await
                }
            };
            print!("{page}");
            Ok(())
        }
        Command::Monitor { listen } => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listen on {listen}"))?;
            eprintln!(
                "hyperctl: serving the metrics of the pods in {} on http://{listen}{}",
                config.runtime.state_dir.display(),
                metrics::http::PATH
            );
            let dir = config.runtime.state_dir.clone();
            metrics::monitor::serve(listener, dir, metrics::FETCH_TIMEOUT).await?;
            Ok(())
        }
        Command::Check {
            containerd_config,
            checks,
        } => {
            let failed = check(&config, containerd_config.as_deref(), &checks).await?;
            std::process::exit(i32::from(failed));
        }
        Command::Console { sandbox } => {
            let path = sandbox_dir(&config, &sandbox, "the console argument")?.join("console.log");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("{} (is hypervisor.debug_console on?)", path.display()))?;
            print!("{text}");
            Ok(())
        }
        Command::Vmm {
            api_socket,
            sandbox,
            prometheus,
            command,
        } => {
            if prometheus && command != Request::Metrics {
                bail!("--prometheus goes with the metrics request only");
            }
            let socket = match (api_socket, sandbox) {
                (Some(p), _) => p,
                (None, Some(s)) => api_socket_in(&sandbox_dir(&config, &s, "--sandbox")?),
                (None, None) => bail!("give --api-socket PATH or --sandbox ID"),
            };
            let success = request(&socket, command, CONTROL_TIMEOUT).await?;
            match success.metrics {
                Some(m) if prometheus => print!("{}", m.to_prometheus()),
                _ => print!("{}", Reply::Ok(success).to_line()),
            }
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
                (None, Some(s)) => vsock_uds_in(&sandbox_dir(&config, &s, "--sandbox")?),
                (None, None) => bail!("give --vsock-uds PATH or --sandbox ID"),
            };
            let wait = Duration::try_from_secs_f64(wait).context("--wait must be >= 0")?;
            let client =
                hyper_shim::agent::connect_with_retry(&uds, port, wait, AgentTimeouts::default())
                    .await?;
            agent_call(&client, call).await
        }
    }
}

/// Runs `argv` on the pod's debug console with our terminal, raw, as its terminal; ends
/// when the guest's side ends. Our stdin's end does not end the session (a script piped
/// in still gets its output); closing the terminal does.
async fn exec_in_guest(dir: &Path, pod: &str, argv: Vec<String>) -> Result<()> {
    use hyper_agent_protocol::debug_console::Request;
    use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let (rows, cols) = terminal_size(&stdin).unwrap_or((0, 0));
    let req = Request { rows, cols, argv };
    let stream = hyper_shim::agent::debug_console::open(dir, pod, &req).await?;
    // Raw: keys such as Ctrl-C go to the guest's terminal, not to us.
    let saved = tcgetattr(&stdin).ok();
    if let Some(t) = &saved {
        let mut raw = t.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).context("raw mode on our terminal")?;
    }
    let (mut from_guest, mut to_guest) = stream.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut to_guest).await;
        // The write half lives on here, open: the session ends from the guest's side.
        std::future::pending::<()>().await
    });
    let mut stdout = tokio::io::stdout();
    let copied = tokio::io::copy(&mut from_guest, &mut stdout).await;
    let _ = stdout.flush().await;
    if let Some(t) = &saved {
        let _ = tcsetattr(&stdin, SetArg::TCSANOW, t);
    }
    copied.context("the guest's terminal output")?;
    Ok(())
}

/// Rows and columns of the terminal on `fd`, if it is one.
fn terminal_size(fd: &impl std::os::fd::AsRawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize it is given.
    let ok = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut ws) } == 0;
    ok.then_some((ws.ws_row, ws.ws_col))
}

/// Prints each finding as it comes, then a verdict; true if anything failed.
async fn check(config: &Config, containerd_config: Option<&Path>, only: &[String]) -> Result<bool> {
    use hyper_shim::host_check::{self, Status};
    let findings = host_check::run(config, containerd_config, only, |f| println!("{f}"))
        .await
        .map_err(anyhow::Error::msg)?;
    let count = |s| findings.iter().filter(|f| f.status == s).count();
    let (fail, warn) = (count(Status::Fail), count(Status::Warn));
    if fail == 0 {
        println!("hyper can run on this host ({warn} warning(s))");
    } else {
        println!("hyper cannot run on this host: {fail} check(s) failed, {warn} warning(s)");
    }
    Ok(fail > 0)
}

/// The state dir of sandbox `id`, which must be an identifier (not a path elsewhere).
fn sandbox_dir(config: &Config, id: &str, origin: &str) -> Result<PathBuf> {
    identifier::check("sandbox id", id, origin)?;
    Ok(config.runtime.state_dir.join(id))
}

async fn agent_call(client: &TtrpcAgent, call: AgentCall) -> Result<()> {
    match call {
        AgentCall::Health => {
            client.health().await?;
            println!("SERVING");
        }
        AgentCall::Version => {
            let r = client.version().await?;
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
    let pods =
        hyper_shim::state_dir::pod_dirs(dir).with_context(|| format!("read {}", dir.display()))?;
    for (pod, pod_dir) in pods {
        let file = pod_dir.join(hyper_shim::sandbox::VMM_PID_FILE);
        let pid = pid_file::read(&file).map(|r| r.pid);
        let state = match (pid, pid_file::read_live(&file, "hyper-vmm")) {
            (_, Recorded::Live(_) | Recorded::Unverified(_)) => "running",
            (Some(_), Recorded::Gone) => "dead",
            (None, Recorded::Gone) => "booting",
        };
        let pid = pid.map_or("-".to_string(), |p| p.to_string());
        println!("{pod:<40} {pid:>8} {state}");
    }
    Ok(())
}

/// Runs `bundle` as the pod's only container through the same pod layer the shim uses,
/// with stdio through FIFOs as containerd would; tears everything down.
async fn run_bundle(
    config: &Config,
    id: Option<String>,
    bundle: &Path,
    stdin: bool,
) -> Result<i32> {
    let bundle = bundle
        .canonicalize()
        .with_context(|| format!("bundle {}", bundle.display()))?;
    let (id, origin) = match id {
        Some(id) => (id, "--id"),
        None => (
            bundle
                .file_name()
                .map_or("hyperctl".into(), |n| n.to_string_lossy().into_owned()),
            "the bundle directory's name (give --id)",
        ),
    };
    identifier::check("container id", &id, origin)?;
    let fifos = tempfile::Builder::new().prefix("hyperctl-").tempdir()?;
    let fifo = |name: &str| -> Result<String> {
        let path = fifos.path().join(name);
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .with_context(|| format!("mkfifo {}", path.display()))?;
        Ok(path.display().to_string())
    };
    let stdio = Stdio {
        stdin: if stdin { fifo("stdin")? } else { String::new() },
        stdout: fifo("stdout")?,
        stderr: fifo("stderr")?,
        terminal: false,
    };
    // Our read ends first: the pod opens the write ends at create.
    let out = pipe::OpenOptions::new().open_receiver(&stdio.stdout)?;
    let err = pipe::OpenOptions::new().open_receiver(&stdio.stderr)?;
    let pod = Pod::new(
        config.clone(),
        Arc::new(HyperVmmBackend::new(config)),
        Arc::new(NoEvents),
        Arc::new(hyper_shim::startup_trace::StartupTrace::for_shim(None)),
    );
    pod.create(NewContainer {
        id: id.clone(),
        bundle,
        rootfs_mounts: Vec::new(),
        stdio: stdio.clone(),
    })
    .await?;
    let init = ProcessRef::new(&id, "");
    let relays = [
        tokio::spawn(relay(out, tokio::io::stdout())),
        tokio::spawn(relay(err, tokio::io::stderr())),
    ];
    if stdin {
        let input = pipe::OpenOptions::new().open_sender(&stdio.stdin)?;
        let pod = pod.clone();
        let init = init.clone();
        tokio::spawn(async move {
            relay(tokio::io::stdin(), input).await;
            let _ = pod.close_stdin(&init).await;
        });
    }
    let status = match pod.start(&init).await {
        Ok(()) => Ok(pod.wait(&init).await?.status as i32),
        Err(e) => Err(e),
    };
    for r in relays {
        let _ = r.await;
    }
    pod.delete(&init).await?;
    pod.shutdown().await;
    Ok(status?)
}

/// The pod's events need no one here: `run` waits for its process itself.
struct NoEvents;

#[async_trait::async_trait]
impl PodEvents for NoEvents {
    async fn exited(&self, _: &ProcessRef, _: Exit) {}
    async fn oom(&self, container_id: &str) {
        eprintln!("hyperctl: container {container_id} was OOM-killed");
    }
}

/// Copies `from` to `to` until `from` ends.
async fn relay(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    if let Err(e) = tokio::io::copy(&mut from, &mut to).await {
        tracing::debug!("relay: {e}");
    }
    let _ = to.flush().await;
}
