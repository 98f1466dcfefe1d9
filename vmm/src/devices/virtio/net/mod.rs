//! virtio-net (file-backed). Not implemented yet.

use std::sync::Arc;

use crate::config::NetConfig;
use crate::metrics::DeviceCounters;

pub struct Net;

impl Net {
    pub fn create(
        _name: &str,
        _cfg: &NetConfig,
        _c: Arc<DeviceCounters>,
    ) -> Result<Box<dyn crate::devices::virtio::VirtioDevice>, String> {
        Err("virtio-net is not implemented yet".into())
    }
}
