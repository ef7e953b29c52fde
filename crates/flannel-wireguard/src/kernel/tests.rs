//! Tests of the kernel messages: golden bytes against the kernel's uapi layout, round trips,
//! splitting, dumps. (This machine has no WireGuard module, so no live kernel test.)

use std::net::SocketAddr;
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_MULTIPART, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_generic::GenlMessage;
use netlink_packet_wireguard::{
    WireguardAttribute, WireguardCmd, WireguardDeviceFlags, WireguardMessage, WireguardPeer,
    WireguardPeerAttribute, WireguardPeerFlags, WireguardTimeSpec,
};

use super::msg::{self, MESSAGE_LIMIT};
use crate::device::{DeviceState, DeviceUpdate, PeerConfig, PeerState, PeerUpdate};
use crate::key::{Key, Secret};

// include/uapi/linux/wireguard.h
const WG_CMD_SET_DEVICE: u8 = 1;
const WGDEVICE_A_IFNAME: u16 = 2;
const WGDEVICE_A_LISTEN_PORT: u16 = 6;
const WGDEVICE_A_PEERS: u16 = 8;
const WGPEER_A_PUBLIC_KEY: u16 = 1;
const WGPEER_A_PRESHARED_KEY: u16 = 2;
const WGPEER_A_FLAGS: u16 = 3;
const WGPEER_A_ENDPOINT: u16 = 4;
const WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL: u16 = 5;
const WGPEER_A_ALLOWEDIPS: u16 = 9;
const WGPEER_F_REPLACE_ALLOWEDIPS: u32 = 2;
const WGALLOWEDIP_A_FAMILY: u16 = 1;
const WGALLOWEDIP_A_IPADDR: u16 = 2;
const WGALLOWEDIP_A_CIDR_MASK: u16 = 3;
const NLA_F_NESTED: u16 = 0x8000;

/// One attribute as the kernel lays it out: length (header included), type, value, padding.
fn nla(kind: u16, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&u16::try_from(4 + value.len()).unwrap().to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(value);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn config(n: u8, ips: &[&str]) -> PeerConfig {
    PeerConfig {
        public_key: Key([n; 32]),
        preshared_key: None,
        endpoint: None,
        persistent_keepalive: 0,
        allowed_ips: ips.iter().map(|s| net(s)).collect(),
    }
}

fn decode(bytes: &[u8]) -> NetlinkMessage<GenlMessage<WireguardMessage>> {
    NetlinkMessage::deserialize(bytes).unwrap()
}

fn payload(m: NetlinkMessage<GenlMessage<WireguardMessage>>) -> WireguardMessage {
    match m.payload {
        NetlinkPayload::InnerMessage(g) => g.payload,
        other => panic!("{other:?}"),
    }
}

#[test]
fn one_small_request_has_the_kernels_layout() {
    let mut c = config(0xaa, &["10.5.1.0/24"]);
    c.endpoint = Some("192.0.2.1:51820".parse().unwrap());
    c.persistent_keepalive = 25;
    let update = DeviceUpdate {
        listen_port: Some(51820),
        peers: vec![PeerUpdate::Upsert {
            config: c,
            replace_allowed_ips: true,
        }],
        ..DeviceUpdate::default()
    };
    let msgs = msg::set_messages("wg0", &update, MESSAGE_LIMIT);
    assert_eq!(msgs.len(), 1);
    let got = msg::frame(msgs[0].clone(), 0x1c, 7, NLM_F_REQUEST | NLM_F_ACK);

    let mut endpoint = vec![2, 0, 0xca, 0x6c, 192, 0, 2, 1];
    endpoint.extend_from_slice(&[0; 8]);
    let ip = [
        nla(WGALLOWEDIP_A_FAMILY, &2u16.to_ne_bytes()),
        nla(WGALLOWEDIP_A_IPADDR, &[10, 5, 1, 0]),
        nla(WGALLOWEDIP_A_CIDR_MASK, &[24]),
    ]
    .concat();
    let peer = [
        nla(WGPEER_A_PUBLIC_KEY, &[0xaa; 32]),
        nla(WGPEER_A_FLAGS, &WGPEER_F_REPLACE_ALLOWEDIPS.to_ne_bytes()),
        nla(WGPEER_A_PRESHARED_KEY, &[0; 32]),
        nla(WGPEER_A_ENDPOINT, &endpoint),
        nla(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, &25u16.to_ne_bytes()),
        nla(WGPEER_A_ALLOWEDIPS | NLA_F_NESTED, &nla(NLA_F_NESTED, &ip)),
    ]
    .concat();
    let body = [
        vec![WG_CMD_SET_DEVICE, 1, 0, 0],
        nla(WGDEVICE_A_IFNAME, b"wg0\0"),
        nla(WGDEVICE_A_LISTEN_PORT, &51820u16.to_ne_bytes()),
        nla(WGDEVICE_A_PEERS | NLA_F_NESTED, &nla(NLA_F_NESTED, &peer)),
    ]
    .concat();
    let mut want = Vec::new();
    want.extend_from_slice(&u32::try_from(16 + body.len()).unwrap().to_ne_bytes());
    want.extend_from_slice(&0x1cu16.to_ne_bytes());
    want.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    want.extend_from_slice(&7u32.to_ne_bytes());
    want.extend_from_slice(&0u32.to_ne_bytes());
    want.extend_from_slice(&body);
    assert_eq!(want.len(), 184);
    assert_eq!(got, want);
}

#[test]
fn every_field_round_trips() {
    let mut a = config(1, &["10.5.1.0/24", "fd00:1::/64"]);
    a.preshared_key = Some(Secret::from_bytes([9; 32]));
    a.endpoint = Some("[2001:db8::1]:51821".parse().unwrap());
    a.persistent_keepalive = 5;
    let update = DeviceUpdate {
        private_key: Some(Secret::from_bytes([3; 32])),
        listen_port: Some(51820),
        fwmark: Some(0x4000),
        replace_peers: true,
        peers: vec![
            PeerUpdate::Upsert {
                config: a.clone(),
                replace_allowed_ips: false,
            },
            PeerUpdate::Remove(Key([2; 32])),
        ],
    };
    let msgs = msg::set_messages("flannel-wg", &update, MESSAGE_LIMIT);
    assert_eq!(msgs.len(), 1);
    let back = payload(decode(&msg::frame(msgs[0].clone(), 30, 1, NLM_F_REQUEST)));
    assert_eq!(back, msgs[0]);
    assert_eq!(back.cmd, WireguardCmd::SetDevice);
    let a_ = &back.attributes;
    assert!(a_.contains(&WireguardAttribute::IfName("flannel-wg".into())));
    assert!(a_.contains(&WireguardAttribute::PrivateKey([3; 32])));
    assert!(a_.contains(&WireguardAttribute::ListenPort(51820)));
    assert!(a_.contains(&WireguardAttribute::Fwmark(0x4000)));
    assert!(a_.contains(&WireguardAttribute::Flags(
        WireguardDeviceFlags::ReplacePeers
    )));
    let Some(WireguardAttribute::Peers(peers)) = a_.last() else {
        panic!("{a_:?}")
    };
    assert_eq!(peers.len(), 2);
    let p = &peers[0].0;
    assert!(p.contains(&WireguardPeerAttribute::PresharedKey([9; 32])));
    assert!(p.contains(&WireguardPeerAttribute::Endpoint(a.endpoint.unwrap())));
    assert!(p.contains(&WireguardPeerAttribute::PersistentKeepalive(5)));
    assert!(
        !p.iter()
            .any(|x| matches!(x, WireguardPeerAttribute::Flags(_))),
        "no flags when allowed IPs are added: {p:?}"
    );
    assert_eq!(
        peers[1].0,
        vec![
            WireguardPeerAttribute::PublicKey([2; 32]),
            WireguardPeerAttribute::Flags(WireguardPeerFlags::RemoveMe),
        ]
    );
    // The same attributes read back as the device a dump would show.
    let dumped = msg::parse_dump(&[WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![
            WireguardAttribute::ListenPort(51820),
            WireguardAttribute::Peers(vec![peers[0].clone()]),
        ],
    }])
    .unwrap();
    assert_eq!(dumped.peers[0].config, a);
    // An empty update is one message naming the device.
    let empty = msg::set_messages("x", &DeviceUpdate::default(), MESSAGE_LIMIT);
    assert_eq!(empty.len(), 1);
    assert_eq!(
        empty[0].attributes,
        vec![WireguardAttribute::IfName("x".into())]
    );
}

/// Peers of a split request, a continued peer merged as the kernel merges it.
fn reassemble(msgs: &[WireguardMessage]) -> Vec<Vec<WireguardPeerAttribute>> {
    let mut out: Vec<Vec<WireguardPeerAttribute>> = Vec::new();
    for m in msgs {
        for a in &m.attributes {
            if let WireguardAttribute::Peers(peers) = a {
                for p in peers {
                    let same = out.last().is_some_and(|l| l[0] == p.0[0]);
                    if same {
                        assert_eq!(
                            p.0.len(),
                            2,
                            "a continuation carries key and IPs only: {p:?}"
                        );
                        let WireguardPeerAttribute::AllowedIps(more) = &p.0[1] else {
                            panic!("{p:?}")
                        };
                        let last = out.last_mut().unwrap();
                        let Some(WireguardPeerAttribute::AllowedIps(ips)) = last.last_mut() else {
                            panic!("{last:?}")
                        };
                        ips.extend(more.iter().cloned());
                    } else {
                        out.push(p.0.clone());
                    }
                }
            }
        }
    }
    out
}

#[test]
fn a_5000_peer_update_is_split_under_the_limit() {
    let peers: Vec<PeerUpdate> = (0..5000u32)
        .map(|i| {
            let [_, _, hi, lo] = i.to_be_bytes();
            let mut c = PeerConfig {
                public_key: Key(Secret::from_bytes([(i % 251) as u8; 32])
                    .bytes()
                    .map(|b| b ^ lo ^ hi)),
                ..config(
                    0,
                    &[&format!("10.{hi}.{lo}.0/24"), &format!("fd00:{i:x}::/64")],
                )
            };
            c.public_key.0[0] = hi;
            c.public_key.0[1] = lo;
            c.endpoint = Some(SocketAddr::from(([192, 168, hi, lo], 51820)));
            c.persistent_keepalive = 25;
            PeerUpdate::Upsert {
                config: c,
                replace_allowed_ips: true,
            }
        })
        .collect();
    let update = DeviceUpdate {
        private_key: Some(Secret::from_bytes([1; 32])),
        listen_port: Some(51820),
        peers: peers.clone(),
        ..DeviceUpdate::default()
    };
    let msgs = msg::set_messages("flannel-wg", &update, MESSAGE_LIMIT);
    assert!(msgs.len() > 100, "{} messages", msgs.len());
    for (i, m) in msgs.iter().enumerate() {
        let bytes = msg::frame(m.clone(), 30, 1, NLM_F_REQUEST | NLM_F_ACK);
        assert!(
            bytes.len() <= MESSAGE_LIMIT,
            "message {i}: {} bytes",
            bytes.len()
        );
        if i + 1 < msgs.len() {
            assert!(
                bytes.len() > MESSAGE_LIMIT - 300,
                "message {i} is badly filled: {}",
                bytes.len()
            );
        }
        assert_eq!(payload(decode(&bytes)), *m);
        let has_key = m
            .attributes
            .iter()
            .any(|a| matches!(a, WireguardAttribute::PrivateKey(_)));
        assert_eq!(
            has_key,
            i == 0,
            "device attributes only in the first message"
        );
    }
    let got = reassemble(&msgs);
    let want = reassemble(&msg::set_messages("flannel-wg", &update, usize::MAX));
    assert_eq!(got.len(), 5000);
    assert_eq!(got, want);
}

#[test]
fn a_peer_with_many_allowed_ips_continues_in_the_next_messages() {
    let ips: Vec<String> = (0..1000)
        .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
        .collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let update = DeviceUpdate {
        peers: vec![
            PeerUpdate::Remove(Key([7; 32])),
            PeerUpdate::Upsert {
                config: config(1, &refs),
                replace_allowed_ips: true,
            },
            PeerUpdate::Upsert {
                config: config(2, &["10.200.0.0/24"]),
                replace_allowed_ips: false,
            },
        ],
        ..DeviceUpdate::default()
    };
    let msgs = msg::set_messages("wg0", &update, MESSAGE_LIMIT);
    assert!(msgs.len() >= 7, "{} messages", msgs.len());
    for m in &msgs {
        assert!(msg::frame(m.clone(), 1, 1, 0).len() <= MESSAGE_LIMIT);
    }
    let peers = reassemble(&msgs);
    assert_eq!(peers.len(), 3);
    let Some(WireguardPeerAttribute::AllowedIps(all)) = peers[1].last() else {
        panic!()
    };
    assert_eq!(all.len(), 1000);
    // Only the first piece replaces; continuations add.
    assert!(peers[1].contains(&WireguardPeerAttribute::Flags(
        WireguardPeerFlags::ReplaceAllowedIps
    )));
}

fn dump_peer(key: u8, extra: Vec<WireguardPeerAttribute>) -> WireguardPeer {
    let mut v = vec![WireguardPeerAttribute::PublicKey([key; 32])];
    v.extend(extra);
    WireguardPeer(v)
}

fn ips(list: &[&str]) -> WireguardPeerAttribute {
    let c = config(0, list);
    let framed = msg::set_messages(
        "x",
        &DeviceUpdate {
            peers: vec![PeerUpdate::Upsert {
                config: c,
                replace_allowed_ips: false,
            }],
            ..DeviceUpdate::default()
        },
        usize::MAX,
    );
    let Some(WireguardAttribute::Peers(p)) = framed[0].attributes.last() else {
        panic!()
    };
    p[0].0.last().unwrap().clone()
}

#[test]
fn a_dump_over_several_messages_is_one_device() {
    let full = |n: u8, psk: [u8; 32], hs: (i64, i64)| {
        vec![
            WireguardPeerAttribute::PresharedKey(psk),
            WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                seconds: hs.0,
                nano_seconds: hs.1,
            }),
            WireguardPeerAttribute::PersistentKeepalive(u16::from(n)),
            WireguardPeerAttribute::RxBytes(u64::from(n) * 100),
            WireguardPeerAttribute::TxBytes(u64::from(n) * 200),
            WireguardPeerAttribute::ProtocolVersion(1),
            WireguardPeerAttribute::Endpoint(SocketAddr::from(([192, 0, 2, n], 51820))),
        ]
    };
    let mut b_first = full(2, [0; 32], (0, 0));
    b_first.push(ips(&["10.2.0.0/24", "10.2.1.0/24"]));
    let mut a = full(1, [5; 32], (1_700_000_000, 42));
    a.push(ips(&["10.1.0.0/24"]));
    let first = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![
            WireguardAttribute::ListenPort(51820),
            WireguardAttribute::Fwmark(0),
            WireguardAttribute::IfIndex(7),
            WireguardAttribute::IfName("flannel-wg".into()),
            WireguardAttribute::PrivateKey([3; 32]),
            WireguardAttribute::PublicKey(Secret::from_bytes([3; 32]).public_key().0),
            WireguardAttribute::Peers(vec![dump_peer(1, a), dump_peer(2, b_first)]),
        ],
    };
    let second = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::Peers(vec![
            dump_peer(2, vec![ips(&["fd00:2::/64"])]),
            dump_peer(3, full(3, [0; 32], (0, 0))),
        ])],
    };
    // Through bytes, as they come from the kernel.
    let msgs: Vec<WireguardMessage> = [first, second]
        .into_iter()
        .map(|m| payload(decode(&msg::frame(m, 30, 9, NLM_F_MULTIPART))))
        .collect();
    let state = msg::parse_dump(&msgs).unwrap();
    let peer = |n: u8, list: &[&str], psk: Option<Secret>, hs| PeerState {
        config: PeerConfig {
            preshared_key: psk,
            endpoint: Some(SocketAddr::from(([192, 0, 2, n], 51820))),
            persistent_keepalive: u16::from(n),
            ..config(n, list)
        },
        last_handshake: hs,
        rx_bytes: u64::from(n) * 100,
        tx_bytes: u64::from(n) * 200,
    };
    let want = DeviceState {
        private_key: Some(Secret::from_bytes([3; 32])),
        listen_port: 51820,
        fwmark: 0,
        peers: vec![
            peer(
                1,
                &["10.1.0.0/24"],
                Some(Secret::from_bytes([5; 32])),
                Some(UNIX_EPOCH + Duration::new(1_700_000_000, 42)),
            ),
            peer(
                2,
                &["10.2.0.0/24", "10.2.1.0/24", "fd00:2::/64"],
                None,
                None,
            ),
            peer(3, &[], None, None),
        ],
    };
    assert_eq!(state, want);
    // Malformed dumps are errors, not panics.
    let bad = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::Peers(vec![WireguardPeer(vec![
            WireguardPeerAttribute::RxBytes(1),
        ])])],
    };
    assert!(msg::parse_dump(&[bad]).is_err());
    let bad_time = WireguardMessage {
        cmd: WireguardCmd::GetDevice,
        attributes: vec![WireguardAttribute::Peers(vec![dump_peer(
            1,
            vec![WireguardPeerAttribute::LastHandshake(WireguardTimeSpec {
                seconds: -1,
                nano_seconds: 0,
            })],
        )])],
    };
    assert!(msg::parse_dump(&[bad_time]).is_err());
}

#[test]
fn replace_peers_becomes_explicit_removals() {
    let current = DeviceState {
        peers: [1u8, 2, 3]
            .iter()
            .map(|&n| PeerState {
                config: config(n, &[]),
                last_handshake: None,
                rx_bytes: 0,
                tx_bytes: 0,
            })
            .collect(),
        ..DeviceState::default()
    };
    let upsert = PeerUpdate::Upsert {
        config: config(2, &["10.2.0.0/24"]),
        replace_allowed_ips: true,
    };
    let update = DeviceUpdate {
        listen_port: Some(1),
        replace_peers: true,
        peers: vec![upsert.clone()],
        ..DeviceUpdate::default()
    };
    let got = crate::replace::explicit_removals(&update, &current);
    assert_eq!(
        got,
        DeviceUpdate {
            listen_port: Some(1),
            replace_peers: false,
            peers: vec![
                PeerUpdate::Remove(Key([1; 32])),
                PeerUpdate::Remove(Key([3; 32])),
                upsert
            ],
            ..DeviceUpdate::default()
        }
    );
}

#[test]
fn without_the_module_the_device_is_reported_not_found_or_refused() {
    use crate::device::{WgDevice, WgError};
    // This machine has no WireGuard module: resolving the family fails with ENOENT (or,
    // where the module exists, the made-up device does not: ENODEV).
    let e = super::KernelDevice::new("flrsnowg0").get().unwrap_err();
    match e {
        WgError::NoDevice(_) => {}
        WgError::Kernel { errno, .. } => assert_eq!(errno, nix::errno::Errno::ENOENT, "{e}"),
        other => panic!("{other}"),
    }
}
