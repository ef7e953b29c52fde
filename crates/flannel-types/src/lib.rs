//! Upstream-compatible data formats shared by `flanneld` and the `flannel` CNI plugin.
//!
//! This crate is synchronous and free of netlink, etcd and Kubernetes so that the CNI
//! plugin can link it without pulling in an async runtime.
