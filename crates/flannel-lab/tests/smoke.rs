//! A 3-node lab: every node reaches every other over the underlay, nodes look like hosts
//! (address, default route, forwarding), and nothing is left behind after drop.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use flannel_lab::{Lab, netns_exists, ping, run_ok};

fn root_ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default()
}

#[test]
fn three_nodes_reach_each_other_and_vanish_on_drop() -> anyhow::Result<()> {
    let root_forward_before = root_ip_forward();
    let lab = Lab::builder().nodes(3).build()?;
    let names = lab.netns_names();
    assert_eq!(names.len(), 4, "3 nodes + underlay: {names:?}");
    for n in &names {
        assert!(netns_exists(n), "{n} should exist while the lab lives");
    }

    for (i, node) in lab.nodes().iter().enumerate() {
        assert_eq!(node.name(), format!("n{}", i + 1));
        assert_eq!(node.ip(), Ipv4Addr::new(198, 18, 0, i as u8 + 1));
        let addrs = node
            .netns()
            .ip(["-4", "-o", "addr", "show", "dev", "eth0"])?;
        assert!(addrs.contains(&format!("{}/24", node.ip())), "{addrs}");
        let routes = node.netns().ip(["route", "show", "default"])?;
        assert!(routes.contains("via 198.18.0.254 dev eth0"), "{routes}");
        let link = node.netns().ip(["link", "show", "dev", "eth0"])?;
        assert!(link.contains("mtu 1500"), "{link}");
        assert_eq!(node.netns().sysctl("net.ipv4.ip_forward")?, "1");
        assert_eq!(
            run_ok(node.netns(), ["cat", "/proc/sys/net/ipv4/ip_forward"])?.trim(),
            "1"
        );
    }
    let br = lab
        .underlay()
        .netns()
        .ip(["-o", "addr", "show", "dev", "br0"])?;
    assert!(br.contains("198.18.0.254/24"), "{br}");

    for a in lab.nodes() {
        for b in lab.nodes() {
            if a.name() == b.name() {
                continue;
            }
            assert!(
                ping(a.netns(), IpAddr::V4(b.ip()), 1, Duration::from_secs(3))?,
                "{} cannot ping {} ({})",
                a.name(),
                b.name(),
                b.ip()
            );
        }
        assert!(ping(
            a.netns(),
            lab.underlay().gateway().into(),
            1,
            Duration::from_secs(3)
        )?);
    }
    // A negative answer must be possible: nobody has 198.18.0.99.
    assert!(!ping(
        lab.node(0).netns(),
        "198.18.0.99".parse()?,
        1,
        Duration::from_secs(1)
    )?);

    // Forwarding was enabled inside the nodes only.
    assert_eq!(root_ip_forward(), root_forward_before);

    let dir = lab.dir().to_path_buf();
    assert!(dir.exists());
    drop(lab);
    for n in &names {
        assert!(!netns_exists(n), "{n} survived the lab's drop");
    }
    assert!(!dir.exists(), "lab directory {} survived", dir.display());
    Ok(())
}
