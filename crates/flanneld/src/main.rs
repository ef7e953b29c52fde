//! `flanneld`: the flannel-rs node agent.
fn main() {}
