//! virtio-block (file-backed).
