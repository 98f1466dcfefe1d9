//! The shim's record of one container: its bundle, its rootfs on the host, its init
//! process and its exec'd processes.
use std::collections::HashMap;
use std::path::PathBuf;

use super::process::Process;

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// Where containerd's rootfs mounts were mounted on the host (unmounted on delete).
    pub host_rootfs: Option<PathBuf>,
    pub init: Process,
    pub execs: HashMap<String, Process>,
}

impl Container {
    pub fn process(&self, exec_id: &str) -> Option<&Process> {
        if exec_id.is_empty() {
            Some(&self.init)
        } else {
            self.execs.get(exec_id)
        }
    }

    pub fn process_mut(&mut self, exec_id: &str) -> Option<&mut Process> {
        if exec_id.is_empty() {
            Some(&mut self.init)
        } else {
            self.execs.get_mut(exec_id)
        }
    }

    /// Every process of the container, init first.
    pub fn processes_mut(&mut self) -> impl Iterator<Item = &mut Process> {
        std::iter::once(&mut self.init).chain(self.execs.values_mut())
    }

    /// Unmounts what `Create` mounted on the host, once.
    pub fn unmount_rootfs(&mut self) {
        if let Some(r) = self.host_rootfs.take() {
            crate::rootfs::unmount(&r);
        }
    }
}
