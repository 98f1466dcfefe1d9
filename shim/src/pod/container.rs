//! The shim's record of one container: its bundle, its rootfs on the host, its init
//! process and its exec'd processes.
use std::collections::HashMap;
use std::path::PathBuf;

use tokio::task::JoinHandle;

use crate::process::Process;

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// Where containerd's rootfs mounts were mounted on the host (unmounted on delete).
    pub host_rootfs: Option<PathBuf>,
    pub init: Process,
    pub execs: HashMap<String, Process>,
    /// IO copy tasks per exec id ("" for init), awaited before an exit is reported.
    pub io: HashMap<String, Vec<JoinHandle<()>>>,
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
}
