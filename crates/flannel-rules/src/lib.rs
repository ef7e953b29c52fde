//! Masquerade and forward rules (iptables or nftables) behind one `RuleManager` trait.
