//! The guest drives the virtio-net queues with arbitrary descriptors and buffers.
#![no_main]
use hyper_vmm::devices::virtio::fuzzing::{FuzzDevice, run};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| run(FuzzDevice::Net, data));
