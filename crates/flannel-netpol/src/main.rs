//! `flannel-netpol`: see the library.
fn main() {}
