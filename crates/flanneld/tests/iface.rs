//! External interface selection against real kernel state: a lab node with `eth0` (default
//! route), `eth1` on a second underlay network, and IPv6 addresses on both.

use std::net::IpAddr;

use flannel_lab::{Lab, Node};
use flannel_netlink::Netlink;
use flannel_types::IpStack;
use flanneld::iface::{ExternalInterface, HostView, IfaceError, Selection, select};

/// Runs interface selection inside the node's namespace, as flanneld would there.
fn select_in(node: &Node, stack: IpStack, sel: Selection) -> Result<ExternalInterface, IfaceError> {
    node.netns()
        .in_thread(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let nl = Netlink::new().expect("netlink");
                let view = HostView::load(&nl, sel.iface_can_reach).await?;
                select(&view, stack, &sel)
            })
        })
        .expect("thread in node namespace")
}

/// Selection on an IPv4 node with the flags `set` gives.
fn v4(node: &Node, set: impl FnOnce(&mut Selection)) -> Result<ExternalInterface, IfaceError> {
    let mut sel = Selection::default();
    set(&mut sel);
    select_in(node, IpStack::V4, sel)
}

fn lab() -> Lab {
    Lab::builder()
        .nodes(1)
        .extra_networks(1)
        .ipv6(true)
        .build()
        .expect("lab")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn picks_default_route_interface_and_its_address() {
    let lab = lab();
    let n = lab.node(0);
    let e = select_in(n, IpStack::V4, Selection::default()).unwrap();
    assert_eq!(e.name, "eth0");
    assert_eq!(e.iface_addr, Some(n.ip()));
    assert_eq!(e.ext_addr, Some(n.ip()));
    assert_eq!(e.mtu, 1500);

    let e = select_in(n, IpStack::Dual, Selection::default()).unwrap();
    assert_eq!(e.name, "eth0");
    assert_eq!(e.iface_v6_addr, n.ipv6());
}

#[test]
fn iface_by_name_by_ip_and_in_order() {
    let lab = lab();
    let n = lab.node(0);
    let eth1 = n.interface("eth1").expect("eth1").ipv4();

    let e = v4(n, |s| s.iface = vec!["eth1".into()]).unwrap();
    assert_eq!(e.name, "eth1");
    assert_eq!(e.iface_addr, Some(eth1));

    let e = v4(n, |s| s.iface = vec![eth1.to_string()]).unwrap();
    assert_eq!(e.name, "eth1");

    // The first that exists wins; unknown names and foreign IPs are skipped.
    let order = ["wlan7", "203.0.113.1", "eth0", "eth1"];
    let e = v4(n, |s| s.iface = order.map(String::from).to_vec()).unwrap();
    assert_eq!(e.name, "eth0");
}

#[test]
fn regex_on_addresses_then_names() {
    let lab = lab();
    let n = lab.node(0);
    let eth1 = n.interface("eth1").expect("eth1").ipv4();
    // An address regex: 198.18.1.x lives on eth1.
    let e = v4(n, |s| s.iface_regex = vec![r"^198\.18\.1\.".into()]).unwrap();
    assert_eq!(e.name, "eth1");
    assert_eq!(e.iface_addr, Some(eth1));
    // A name regex.
    let e = v4(n, |s| s.iface_regex = vec!["^eth1$".into()]).unwrap();
    assert_eq!(e.name, "eth1");
}

#[test]
fn can_reach_follows_the_kernel_route() {
    let lab = lab();
    let n = lab.node(0);
    let eth1 = n.interface("eth1").expect("eth1").ipv4();
    let e = v4(n, |s| s.iface_can_reach = Some(ip("198.18.1.200"))).unwrap();
    assert_eq!(e.name, "eth1");
    assert_eq!(e.iface_addr, Some(eth1));
    // Anything else goes out of the default route.
    let e = v4(n, |s| s.iface_can_reach = Some(ip("203.0.113.7"))).unwrap();
    assert_eq!(e.name, "eth0");
}

#[test]
fn public_ip_alone_must_be_owned() {
    let lab = lab();
    let n = lab.node(0);
    let eth1 = n.interface("eth1").expect("eth1").ipv4();
    let e = v4(n, |s| s.public_ip = eth1.to_string()).unwrap();
    assert_eq!(e.name, "eth1");
    let err = v4(n, |s| s.public_ip = "203.0.113.50".into()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Failed to find any valid interface to use:"),
        "{err}"
    );
}

#[test]
fn no_match_lists_every_attempt() {
    let lab = lab();
    let n = lab.node(0);
    let err = v4(n, |s| {
        s.iface = vec!["eth9".into()];
        s.iface_regex = vec!["^wl".into()];
    })
    .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(
            "Failed to find interface to use that matches the interfaces and/or regexes provided"
        ),
        "{msg}"
    );
    assert!(msg.contains("eth9"), "{msg}");
    // The regex failure lists what was available, including our real interfaces.
    assert!(msg.contains("eth1:["), "{msg}");
}

/// The real binary: `FLANNELD_IFACE` picks the interface when `--iface` is absent, and the flag
/// wins when both are given (upstream's precedence).
#[test]
fn flanneld_env_iface_and_flag_precedence() {
    use flannel_lab::{Cluster, ClusterSpec, PodCni, wait_for};
    use std::time::Duration;
    let mut c = Cluster::start(ClusterSpec {
        nodes: 1,
        extra_networks: 1,
        pod_cni: PodCni::Bridge,
        ..Default::default()
    })
    .expect("cluster");
    c.stop_flanneld(0).unwrap();
    let base: Vec<String> = c
        .flanneld_args(0)
        .into_iter()
        .filter(|a| a != "--iface=eth0")
        .collect();
    let bin = c.bin_dir().join("flanneld");
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(&bin);
        cmd.args(&base).args(extra).env("FLANNELD_IFACE", "eth1");
        let child = c.lab().spawn_in(c.lab().node(0).netns(), cmd).unwrap();
        let line = wait_for(
            "interface log line",
            Duration::from_secs(15),
            Duration::from_millis(100),
            || {
                Ok::<_, String>(
                    child
                        .log()
                        .lines()
                        .find(|l| l.contains("Using interface with name"))
                        .map(str::to_string),
                )
            },
        )
        .unwrap();
        drop(child);
        line
    };
    let by_env = run(&[]);
    assert!(
        by_env.contains("name eth1 and address 198.18.1.1"),
        "{by_env}"
    );
    let by_flag = run(&["--iface=eth0"]);
    assert!(
        by_flag.contains("name eth0 and address 198.18.0.1"),
        "{by_flag}"
    );
}
