//! virtio-net (tap-backed).
