//! containerd-shim-hyper-v1: the shim containerd runs for `io.containerd.hyper.v1`.
use hyper_shim::service::{RUNTIME_ID, Service};

#[tokio::main]
async fn main() {
    // The start-up trace counts from here.
    hyper_shim::startup_trace::process_start_us();
    // containerd-shim's runner does not answer -v itself.
    if std::env::args().any(|a| a == "-v" || a == "--version" || a == "-version") {
        println!(
            "containerd-shim-hyper-v1:\n  Runtime: {RUNTIME_ID}\n  Version: {}",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    containerd_shim::asynchronous::run::<Service>(RUNTIME_ID, None).await;
    // Exit now rather than when the runtime drops: dropping it would wait for blocking
    // tasks, e.g. a stdin FIFO open whose writer never came, and keep the shim alive.
    std::process::exit(0);
}
