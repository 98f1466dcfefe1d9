//! VM templates (config `factory.template`, Kata's VM factory): a VM of a pod's shape
//! boots once to its agent's ready point, before any workload, and hyper-vmm saves it;
//! later pods of that shape restore from it (guest memory mapped copy-on-write) instead
//! of booting. Templates live in `<runtime.state_dir>/.templates/<key>/`, the key hashing
//! what the VM was built from ([`key`]), so a rebuilt kernel, image or VMM gets a new
//! template. The pod gives the restored VM its own identity (`sandbox`).
//!
//! A template for pods with network interfaces has as many virtio-net devices, saved on
//! taps with nothing behind them ([`isolated_taps`]); a restored VM's devices are the
//! pod's taps, but the guest keeps the MACs it read at boot ([`template_mac`]), so the
//! agent gives each interface the pod's.
mod key;

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::agent::ready::ReadyListener;
use crate::config::Config;
use crate::hypervisor::{HypervisorError, SnapshotFiles, SnapshotUse, Stop};
use crate::network::isolated_taps;
use crate::sandbox::{self, SandboxBackend, SandboxError};
use crate::share::{Share, remove_tree};
use crate::sizing::VmSize;
use crate::state_dir::{create_pod_dir, make_private_dir};

/// Under the state dir; the dot keeps it apart from pod ids (containerd's never start
/// with one) and out of `hyperctl list`.
pub const TEMPLATES_DIR: &str = ".templates";
const STATE_FILE: &str = "state.json";
const MEMORY_FILE: &str = "memory";
/// What the template was built from ([`key::inputs`]), for whoever looks.
const INPUTS_FILE: &str = "inputs.txt";

#[derive(Debug, thiserror::Error)]
pub enum FactoryError {
    #[error("template input {what} {path:?}: {cause}")]
    Input {
        what: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("template store {path:?}: {cause}")]
    Store {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("build the VM template: {0}")]
    Build(Box<SandboxError>),
    #[error(transparent)]
    Hypervisor(#[from] HypervisorError),
}

/// What a template is for: pods of this size with this many network interfaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub size: VmSize,
    pub nics: usize,
}

/// The MAC a template's `index`th network device had when the guest probed it (locally
/// administered, "hy"): what a restored guest's interface carries until the agent gives
/// it the pod's.
pub fn template_mac(index: usize) -> String {
    format!(
        "02:68:79:00:{:02x}:{:02x}",
        (index >> 8) & 0xff,
        index & 0xff
    )
}

fn store(path: &Path) -> impl FnOnce(std::io::Error) -> FactoryError + '_ {
    move |cause| FactoryError::Store {
        path: path.to_path_buf(),
        cause,
    }
}

/// A snapshot's files in `dir`: where a build saves them and a template keeps them.
fn snapshot_files(dir: &Path) -> SnapshotFiles {
    SnapshotFiles {
        state: dir.join(STATE_FILE),
        memory: dir.join(MEMORY_FILE),
    }
}

/// A saved VM, ready to restore.
#[derive(Debug, Clone)]
pub struct Template {
    pub key: String,
    dir: PathBuf,
}

impl Template {
    pub fn files(&self) -> SnapshotFiles {
        snapshot_files(&self.dir)
    }

    /// Removes a template that could not be restored; the next pod builds it anew.
    pub fn discard(&self) {
        remove_tree(&self.dir);
    }

    fn is_complete(&self) -> bool {
        let f = self.files();
        f.state.is_file() && f.memory.is_file()
    }
}

/// The template for pods of `shape`: the cached one, else one built now. Shims that
/// need the same missing template take turns (a lock file per key): one builds it, the
/// others then find it.
pub async fn template_for(
    config: &Config,
    backend: &dyn SandboxBackend,
    shape: Shape,
) -> Result<Template, FactoryError> {
    let inputs = key::inputs(config, shape)?;
    let key = key::key(&inputs);
    let state_dir = &config.runtime.state_dir;
    let root = create_pod_dir(state_dir, TEMPLATES_DIR).map_err(store(state_dir))?;
    let template = Template {
        dir: root.join(&key),
        key,
    };
    if template.is_complete() {
        return Ok(template);
    }
    let _turn = lock(&root.join(format!("{}.lock", template.key))).await?;
    if !template.is_complete() {
        build(config, backend, shape, &root, &template, &inputs).await?;
        prune_stale(&root, &inputs);
    }
    Ok(template)
}

/// Removes the templates built from a kernel, image or VMM file that has changed since
/// (their keys can never come up again); templates of other shapes or other files stay.
fn prune_stale(root: &Path, current: &str) {
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        let Ok(inputs) = std::fs::read_to_string(dir.join(INPUTS_FILE)) else {
            continue;
        };
        if key::is_stale(&inputs, current) {
            let key = entry.file_name().to_string_lossy().into_owned();
            remove_tree(&dir);
            let _ = std::fs::remove_file(root.join(format!("{key}.lock")));
            tracing::info!(template = %key, "removed a VM template whose inputs changed");
        }
    }
}

/// Waits for the exclusive lock on `path` (created if need be); held until dropped.
async fn lock(path: &Path) -> Result<Flock<File>, FactoryError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(store(path))?;
    let locked = tokio::task::spawn_blocking(move || {
        Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| std::io::Error::from(e))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()));
    locked.and_then(|l| l).map_err(store(path))
}

/// Builds `template` in a work dir of its own and moves the saved files into place only
/// once complete, so no reader ever sees half a template.
async fn build(
    config: &Config,
    backend: &dyn SandboxBackend,
    shape: Shape,
    root: &Path,
    template: &Template,
    inputs: &str,
) -> Result<(), FactoryError> {
    let work = root.join(format!("{}.build-{}", template.key, std::process::id()));
    remove_tree(&work);
    make_private_dir(&work).map_err(store(&work))?;
    let started = std::time::Instant::now();
    // The first pod of a shape waits for this: say so in containerd's log.
    tracing::info!(
        template = %template.key,
        vcpus = shape.size.vcpus,
        memory_mib = shape.size.memory_mib,
        "building a VM template: this pod waits for one boot to its agent, later pods of its shape restore"
    );
    let built = match save_template_vm(config, backend, shape, &work).await {
        Ok(saved) => std::fs::write(saved.join(INPUTS_FILE), inputs)
            .and_then(|()| std::fs::rename(&saved, &template.dir))
            .map_err(store(&template.dir)),
        Err(e) => Err(FactoryError::Build(Box::new(e))),
    };
    remove_tree(&work);
    if built.is_ok() {
        tracing::info!(
            template = %template.key,
            build_ms = started.elapsed().as_millis() as u64,
            "VM template built"
        );
    }
    built
}

/// Boots a VM in `work` with the pod's devices (an empty share, the pod's number of
/// network devices on isolated taps, no disk) and saves it once its agent answers;
/// returns the directory that holds the snapshot.
async fn save_template_vm(
    config: &Config,
    backend: &dyn SandboxBackend,
    shape: Shape,
    work: &Path,
) -> Result<PathBuf, SandboxError> {
    let share = Share::create(work)?;
    let saved = work.join("snapshot");
    make_private_dir(&saved)?;
    let mut spec = sandbox::vm_spec(config, shape.size, work);
    spec.shares = vec![sandbox::share_device(config, &share)];
    spec.snapshot = Some(SnapshotUse::SaveTo(snapshot_files(&saved)));
    // Held until the template VM is gone: the namespace and its taps go with it.
    let (_netns, taps) = isolated_taps((0..shape.nics).map(template_mac).collect())?;
    spec.nets = sandbox::net_devices(&taps);
    let mut vm = backend.hypervisor(config, work);
    let ready = ReadyListener::bind(&vm.vsock_uds()).ok();
    let started = vm.start(&spec).await;
    // The VMM holds the taps now (or failed without them).
    drop(taps);
    started?;
    let snapshot = async {
        let ready = ready;
        let agent = sandbox::wait_for_agent(
            backend,
            vm.as_ref(),
            ready.as_ref(),
            config.boot_timeout(),
            work,
        )
        .await?;
        // Our connections end here: the VMM saves none, and each restored guest gets
        // a transport reset that closes the guest's side of them.
        drop(agent);
        drop(ready);
        vm.snapshot().await.map_err(SandboxError::from)
    }
    .await;
    if let Err(e) = vm.stop(Stop::PowerOff).await {
        tracing::warn!("stop the template VM: {e}");
    }
    snapshot.map(|()| saved)
}
