//! Subnet managers: where this node's lease comes from and how peers' leases are watched.
