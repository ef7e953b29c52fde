//! `flannel`: the flannel CNI plugin.
fn main() {}
