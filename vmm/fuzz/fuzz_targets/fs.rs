//! The guest sends FUSE requests on the virtio-fs hiprio and request queues, served by
//! the device's worker thread over a fresh share.
#![no_main]
use hyper_vmm::devices::virtio::fuzzing::{FuzzDevice, fs, run};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fs::limit_file_size();
    run(FuzzDevice::Fs, data)
});
