//! virtio-block (file-backed). Not implemented yet.

use std::sync::Arc;

use crate::config::BlockConfig;
use crate::metrics::DeviceCounters;

pub struct Block;

impl Block {
    pub fn create(
        _name: &str,
        _cfg: &BlockConfig,
        _c: Arc<DeviceCounters>,
    ) -> Result<Box<dyn crate::devices::virtio::VirtioDevice>, String> {
        Err("virtio-block is not implemented yet".into())
    }
}
