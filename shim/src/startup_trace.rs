//! A pod's start-up trace: when each step between containerd starting the shim and the
//! pod's state being removed happened, for the pod's first container. Logged once, as
//! one line, when the pod's state is gone ("startup trace pod=… steps=shim_spawned=0 …",
//! milliseconds since containerd ran `containerd-shim-hyper-v1 start`); bench-ctr-run
//! takes the median of every step from it.
//!
//! Times are CLOCK_MONOTONIC, which the `start` process and the shim it spawns share.
use std::fmt;
use std::sync::{Mutex, OnceLock};

/// The steps, in the order a pod passes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// containerd ran `containerd-shim-hyper-v1 start` (that process's `main`).
    ShimSpawned,
    /// The long-running shim that `start` spawned reached `main`.
    ShimServing,
    /// containerd's first Create arrived.
    CreateReceived,
    ConfigLoaded,
    /// The pod's VM template was found, or built (config `factory.template`).
    TemplateReady,
    VmmSpawned,
    /// The VMM had restored the VM from its template (the VMM's own clock; a VM that
    /// booted has none): VM restore time alone is this less `VmmSpawned`.
    VmRestored,
    /// The VMM's vCPU threads entered KVM_RUN (the VMM's own clock).
    VcpusStarted,
    /// The guest kernel handed over to `/init` (the VMM's boot timer).
    GuestInit,
    AgentReady,
    SandboxCreated,
    /// The first container's rootfs and volumes are in the guest's view.
    ShareReady,
    ContainerCreated,
    ProcessStarted,
    /// The first byte of the container's stdout or stderr reached containerd.
    FirstOutput,
    ExitSeen,
    /// containerd's Delete of the pod's last container arrived.
    DeleteReceived,
    VmStopped,
    StateRemoved,
}

impl Step {
    pub const ALL: [Step; 19] = [
        Step::ShimSpawned,
        Step::ShimServing,
        Step::CreateReceived,
        Step::ConfigLoaded,
        Step::TemplateReady,
        Step::VmmSpawned,
        Step::VmRestored,
        Step::VcpusStarted,
        Step::GuestInit,
        Step::AgentReady,
        Step::SandboxCreated,
        Step::ShareReady,
        Step::ContainerCreated,
        Step::ProcessStarted,
        Step::FirstOutput,
        Step::ExitSeen,
        Step::DeleteReceived,
        Step::VmStopped,
        Step::StateRemoved,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Step::ShimSpawned => "shim_spawned",
            Step::ShimServing => "shim_serving",
            Step::CreateReceived => "create_received",
            Step::ConfigLoaded => "config_loaded",
            Step::TemplateReady => "template_ready",
            Step::VmmSpawned => "vmm_spawned",
            Step::VmRestored => "vm_restored",
            Step::VcpusStarted => "vcpus_started",
            Step::GuestInit => "guest_init",
            Step::AgentReady => "agent_ready",
            Step::SandboxCreated => "sandbox_created",
            Step::ShareReady => "share_ready",
            Step::ContainerCreated => "container_created",
            Step::ProcessStarted => "process_started",
            Step::FirstOutput => "first_output",
            Step::ExitSeen => "exit_seen",
            Step::DeleteReceived => "delete_received",
            Step::VmStopped => "vm_stopped",
            Step::StateRemoved => "state_removed",
        }
    }

    /// Its place in [`Step::ALL`], which lists the steps in their declared order.
    fn index(self) -> usize {
        self as usize
    }
}

/// The environment variable through which `start` tells the shim it spawns when it began.
pub const SPAWNED_ENV: &str = "HYPER_SHIM_SPAWNED_US";

/// CLOCK_MONOTONIC now, in µs.
pub fn now_us() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000
}

static PROCESS_START_US: OnceLock<u64> = OnceLock::new();

/// When this process started; the first call (first thing in `main`) fixes it.
pub fn process_start_us() -> u64 {
    *PROCESS_START_US.get_or_init(now_us)
}

pub struct StartupTrace {
    /// Per step, when it happened (µs, CLOCK_MONOTONIC); the first mark wins.
    at: Mutex<[Option<u64>; Step::ALL.len()]>,
    /// The container the trace follows: the pod's first.
    container: OnceLock<String>,
}

impl Default for StartupTrace {
    fn default() -> Self {
        Self::new()
    }
}

impl StartupTrace {
    /// An empty trace; mark its steps as they happen.
    pub fn new() -> Self {
        Self {
            at: Mutex::new([None; Step::ALL.len()]),
            container: OnceLock::new(),
        }
    }

    /// The trace of the long-running shim: spawned when `start` says (its environment
    /// value, if it is a time between boot and this process's start), serving since
    /// this process's `main`.
    pub fn for_shim(spawned_env: Option<&str>) -> Self {
        let trace = Self::new();
        let serving = process_start_us();
        let spawned = spawned_env
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|us| *us <= serving)
            .unwrap_or(serving);
        trace.mark_at(Step::ShimSpawned, spawned);
        trace.mark_at(Step::ShimServing, serving);
        trace
    }

    pub fn mark(&self, step: Step) {
        self.mark_at(step, now_us());
    }

    /// Marks `step` at `us` unless it was marked before.
    pub fn mark_at(&self, step: Step, us: u64) {
        let mut at = self.at.lock().unwrap_or_else(|e| e.into_inner());
        at[step.index()].get_or_insert(us);
    }

    /// Marks a step the VMM timed, `offset_us` after its spawn. The VMM is as untrusted
    /// as the guest it runs: its number only places the step between the VMM's spawn
    /// and the agent's answer, as the shim saw them.
    pub fn mark_vmm_reported(&self, step: Step, offset_us: u64) {
        let (Some(spawned), Some(ready)) = (self.at(Step::VmmSpawned), self.at(Step::AgentReady))
        else {
            return;
        };
        if offset_us == 0 {
            return;
        }
        self.mark_at(step, spawned.saturating_add(offset_us).min(ready));
    }

    /// Marks the boot steps the VMM timed (see [`StartupTrace::mark_vmm_reported`]).
    pub fn mark_boot_times(&self, t: &crate::hypervisor::BootTimes) {
        self.mark_vmm_reported(Step::VmRestored, t.restored_us);
        self.mark_vmm_reported(Step::VcpusStarted, t.vcpus_started_us);
        self.mark_vmm_reported(Step::GuestInit, t.guest_init_us);
    }

    /// Makes `container` the one whose steps count: the first one offered wins.
    pub fn follow(&self, container: &str) {
        let _ = self.container.set(container.to_string());
    }

    /// Marks `step` if it happened to the container this trace follows.
    pub fn mark_container(&self, container: &str, step: Step) {
        if self.container.get().is_some_and(|c| c == container) {
            self.mark(step);
        }
    }

    pub fn at(&self, step: Step) -> Option<u64> {
        self.at.lock().unwrap_or_else(|e| e.into_inner())[step.index()]
    }

    /// The steps that happened, each with its µs since the first of them (containerd
    /// spawning the shim).
    pub fn since_start(&self) -> Vec<(Step, u64)> {
        let at = *self.at.lock().unwrap_or_else(|e| e.into_inner());
        let origin = at.iter().flatten().min().copied().unwrap_or(0);
        Step::ALL
            .into_iter()
            .zip(at)
            .filter_map(|(step, us)| Some((step, us? - origin)))
            .collect()
    }
}

/// `shim_spawned=0 shim_serving=12 …`: ms since the shim was spawned, for the steps
/// that happened (a pod whose container printed nothing has no `first_output`).
impl fmt::Display for StartupTrace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (step, us)) in self.since_start().into_iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{}={}", step.name(), us / 1000)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_step_at_its_index() {
        for (i, step) in Step::ALL.into_iter().enumerate() {
            assert_eq!(step.index(), i, "{step:?}");
        }
    }

    #[test]
    fn steps_are_ms_since_the_first_and_the_first_mark_wins() {
        let t = StartupTrace::new();
        t.mark_at(Step::ShimSpawned, 1_000_000);
        t.mark_at(Step::ConfigLoaded, 1_012_400);
        t.mark_at(Step::ConfigLoaded, 1_900_000);
        t.mark_at(Step::AgentReady, 3_500_000);
        assert_eq!(
            t.to_string(),
            "shim_spawned=0 config_loaded=12 agent_ready=2500"
        );
    }

    #[test]
    fn the_spawn_time_from_start_is_taken_only_when_it_can_be_true() {
        let serving = process_start_us();
        let earlier = (serving - 5_000).to_string();
        let later = (serving + 5_000).to_string();
        let cases = [
            (
                "earlier than this process",
                Some(earlier.as_str()),
                serving - 5_000,
            ),
            ("later than this process", Some(later.as_str()), serving),
            ("not a number", Some("soon"), serving),
            ("absent", None, serving),
        ];
        for (case, env, want) in cases {
            let t = StartupTrace::for_shim(env);
            assert_eq!(t.at(Step::ShimSpawned), Some(want), "{case}");
            assert_eq!(t.at(Step::ShimServing), Some(serving), "{case}");
        }
    }

    #[test]
    fn a_step_the_vmm_reports_stays_between_its_spawn_and_the_agent() {
        // (case, agent ready at, step, the VMM's offset, marked at); spawned at 1000.
        let cases = [
            ("agent not ready", None, Step::GuestInit, 5, None),
            ("0 means not yet", Some(9_000), Step::VcpusStarted, 0, None),
            ("within", Some(9_000), Step::VcpusStarted, 30, Some(1_030)),
            (
                "past the agent",
                Some(9_000),
                Step::GuestInit,
                u64::MAX,
                Some(9_000),
            ),
        ];
        for (case, ready, step, offset, want) in cases {
            let t = StartupTrace::new();
            t.mark_at(Step::VmmSpawned, 1_000);
            if let Some(ready) = ready {
                t.mark_at(Step::AgentReady, ready);
            }
            t.mark_vmm_reported(step, offset);
            assert_eq!(t.at(step), want, "{case}");
        }
    }

    #[test]
    fn only_the_followed_container_marks_its_steps() {
        let t = StartupTrace::new();
        t.mark_container("app", Step::ExitSeen);
        t.follow("pause");
        t.follow("app");
        t.mark_container("app", Step::ExitSeen);
        assert_eq!(t.at(Step::ExitSeen), None);
        t.mark_container("pause", Step::ExitSeen);
        assert!(t.at(Step::ExitSeen).is_some());
    }
}
