//! The lab: network namespaces as nodes and pods on one machine, shared by the
//! `flannel-lab` command and the integration tests.
