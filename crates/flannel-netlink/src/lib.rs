//! Typed wrapper over rtnetlink: the only crate of flannel-rs that names netlink types.
