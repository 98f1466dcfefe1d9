//! virtio-vsock. Not implemented yet.

use std::path::Path;
use std::sync::Arc;

use crate::metrics::DeviceCounters;

pub struct Vsock;

impl Vsock {
    pub fn create(
        _cid: u64,
        _uds: &Path,
        _c: Arc<DeviceCounters>,
    ) -> Result<Box<dyn crate::devices::virtio::VirtioDevice>, String> {
        Err("virtio-vsock is not implemented yet".into())
    }
}
