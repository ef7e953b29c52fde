//! `flannel-lab`: a whole flannel cluster on one machine.
fn main() {}
