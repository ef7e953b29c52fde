//! Upstream netpol tests this suite does not port, with the reason: kept as data so the summary
//! and the report state them.

/// (where upstream has it, what, why not here).
pub const NOT_PORTED: &[(&str, &str, &str)] = &[
    (
        "network_policy_api.go",
        "should support creating NetworkPolicy API operations; should support creating NetworkPolicy API with endport field (and, in some releases, a Status-subresource test behind a feature gate)",
        "API-server behaviour (create/get/list/watch/patch/delete, validation of endPort, status), \
         not enforcement: it belongs to the emulator's own tests (crates/flannel-kube-emu)",
    ),
    (
        "network_legacy.go (NetworkPolicyLegacy)",
        "the retired predecessor suite (server pod behind a Service, netcat clients)",
        "upstream replaced it by network_policy.go, whose cases above cover the same policies; \
         it also needs Services (ClusterIP + kube-proxy), which the lab does not run",
    ),
];

/// Cases ported but not runnable on a test bed, and why (decided at run time).
pub const SKIP_SCTP: &str = "no SCTP servers here: the kernel has no SCTP (socket(AF_INET, \
     SOCK_STREAM, IPPROTO_SCTP) fails), or the cluster's pods serve only TCP and UDP (the lab's \
     `flannel-lab serve`)";
