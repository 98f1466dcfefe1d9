//! virtio-vsock with the hybrid unix-socket host side.
