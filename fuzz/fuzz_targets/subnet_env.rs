//! subnet.env: the CNI plugin's reader, flanneld's start-up reader, and flanneld's writer.
//!
//! Every input is read as a file's text by both readers: neither may panic, every CIDR they
//! return is a network address (host bits cleared), and their error texts render.
//!
//! An input whose first byte is 0 also drives the writer: the rest is decoded with `arbitrary`
//! into a `SubnetEnv` (network addresses as flanneld's config holds them; lease subnets with
//! or without host bits, as etcd keys may carry them), rendered, and read back by both readers,
//! which must see the same networks, subnets, MTU and IPMASQ flag.
//!
//! Known and accepted exceptions, both upstream's behaviour too: a /32 (IPv6: /128) subnet is
//! written as its first address plus one, which lies outside it; and IPv6 addresses that
//! upstream prints as dotted IPv4 (`::a00:0`) are written in a form no reader takes as IPv6.

#![no_main]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use arbitrary::{Arbitrary, Unstructured};
use flannel_types::goip;
use flannel_types::subnet_env::{
    CniSubnetEnv, PreviousSubnetEnv, SubnetEnv, SubnetEnvV4, SubnetEnvV6,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/run/flannel/subnet.env";

#[derive(Debug, Arbitrary)]
struct V4 {
    network: u32,
    network_len: u8,
    subnet: u32,
    subnet_len: u8,
}

#[derive(Debug, Arbitrary)]
struct V6 {
    network: u128,
    network_len: u8,
    subnet: u128,
    subnet_len: u8,
}

#[derive(Debug, Arbitrary)]
struct Spec {
    v4: Option<V4>,
    v6: Option<V6>,
    mtu: u32,
    ip_masq: bool,
}

fn net4(addr: u32, len: u8) -> Ipv4Net {
    Ipv4Net::new(Ipv4Addr::from(addr), len % 33).expect("prefix in range")
}

fn net6(addr: u128, len: u8) -> Ipv6Net {
    Ipv6Net::new(Ipv6Addr::from(addr), len % 129).expect("prefix in range")
}

fn prints_as_ipv6(ip: Ipv6Addr) -> bool {
    goip::ip6_string(ip).contains(':')
}

fn read_text(text: &str) {
    let path = Path::new(PATH);
    match CniSubnetEnv::parse(path, text) {
        Ok(env) => {
            let all = env.networks.iter().chain(&env.ipv6_networks);
            for n in all.chain(env.subnet.iter()).chain(env.ipv6_subnet.iter()) {
                assert_eq!(*n, n.trunc(), "CNI reader returned {n} with host bits");
            }
            assert!(!env.networks.is_empty() || !env.ipv6_networks.is_empty());
            assert!(env.subnet.is_some() || env.ipv6_subnet.is_some());
        }
        Err(e) => drop(e.to_string()),
    }
    let prev = PreviousSubnetEnv::parse(path, text);
    for n in &prev.networks {
        assert_eq!(*n, n.trunc());
    }
    for n in &prev.ipv6_networks {
        assert_eq!(*n, n.trunc());
    }
    assert!(prev.subnet.is_none_or(|n| n == n.trunc()));
    assert!(prev.ipv6_subnet.is_none_or(|n| n == n.trunc()));
    let _ = (prev.network(), prev.ipv6_network());
    for p in &prev.problems {
        drop(p.to_string());
    }
}

fn round_trip(spec: Spec) {
    let env = SubnetEnv {
        ipv4: spec.v4.as_ref().map(|v| SubnetEnvV4 {
            network: net4(v.network, v.network_len).trunc(),
            subnet: net4(v.subnet, v.subnet_len),
        }),
        ipv6: spec.v6.as_ref().map(|v| SubnetEnvV6 {
            network: net6(v.network, v.network_len).trunc(),
            subnet: net6(v.subnet, v.subnet_len),
        }),
        mtu: spec.mtu,
        ip_masq: spec.ip_masq,
    };
    let text = env.render();
    read_text(&text);

    let v4_exact = env.ipv4.is_none_or(|v| v.subnet.prefix_len() < 32);
    let v6_exact = env.ipv6.is_none_or(|v| {
        let first = Ipv6Addr::from(u128::from(v.subnet.network()).wrapping_add(1));
        v.subnet.prefix_len() < 128 && prints_as_ipv6(v.network.addr()) && prints_as_ipv6(first)
    });
    if !(v4_exact && v6_exact) {
        return;
    }

    let path = Path::new(PATH);
    let cni = CniSubnetEnv::parse(path, &text);
    if env.ipv4.is_none() && env.ipv6.is_none() {
        assert!(
            cni.is_err(),
            "a file without networks was accepted:\n{text}"
        );
        return;
    }
    let cni = cni.unwrap_or_else(|e| panic!("rendered file rejected: {e}\n{text}"));
    let want_nets: Vec<IpNet> = env.ipv4.iter().map(|v| IpNet::V4(v.network)).collect();
    let want_nets6: Vec<IpNet> = env.ipv6.iter().map(|v| IpNet::V6(v.network)).collect();
    assert_eq!(cni.networks, want_nets, "{text}");
    assert_eq!(cni.ipv6_networks, want_nets6, "{text}");
    assert_eq!(
        cni.subnet,
        env.ipv4.map(|v| IpNet::V4(v.subnet.trunc())),
        "{text}"
    );
    assert_eq!(
        cni.ipv6_subnet,
        env.ipv6.map(|v| IpNet::V6(v.subnet.trunc())),
        "{text}"
    );
    assert_eq!(cni.mtu, env.mtu);
    assert_eq!(cni.ip_masq, env.ip_masq);

    let prev = PreviousSubnetEnv::parse(path, &text);
    assert!(prev.problems.is_empty(), "{:?}\n{text}", prev.problems);
    assert_eq!(prev.network(), env.ipv4.map(|v| v.network));
    assert_eq!(prev.subnet, env.ipv4.map(|v| v.subnet.trunc()));
    assert_eq!(prev.ipv6_network(), env.ipv6.map(|v| v.network));
    assert_eq!(prev.ipv6_subnet, env.ipv6.map(|v| v.subnet.trunc()));
}

fuzz_target!(|data: &[u8]| {
    read_text(&String::from_utf8_lossy(data));
    if let Some((&0, rest)) = data.split_first() {
        if let Ok(spec) = Spec::arbitrary_take_rest(Unstructured::new(rest)) {
            round_trip(spec);
        }
    }
});
