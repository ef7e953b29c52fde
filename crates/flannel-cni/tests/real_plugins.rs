//! The plugin driving Debian's real `bridge` + `host-local` inside a lab node, per CNI
//! version: addresses, routes, CHECK on healthy and broken pods, DEL cleanup.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{NodeSetup, ipv4_of};
use flannel_cni::delegate;
use flannel_cni::netconf::NetConf;
use flannel_lab::cni;
use flannel_types::subnet_env::CniSubnetEnv;
use serde_json::{Value, json};

/// The delegate bytes the plugin must have saved for `conf`.
fn expected_saved(setup: &NodeSetup, conf: &Value) -> String {
    let nc = NetConf::parse(conf.to_string().as_bytes()).unwrap();
    let env = CniSubnetEnv::load(&setup.files.subnet_file).unwrap();
    delegate::build(&nc, &env).unwrap().json
}

/// Adds lab pod `name` on node 0; returns its container ID (the netns name) and netns path.
fn add_pod(setup: &mut NodeSetup, name: &str) -> (String, PathBuf) {
    let pod = setup.lab.add_pod(0, name).unwrap();
    (pod.netns_name().to_string(), pod.netns_path())
}

#[test]
fn add_check_del_with_real_bridge_for_each_version() {
    let mut setup = NodeSetup::new(1);
    for (i, version) in ["0.3.1", "0.4.0", "1.0.0"].into_iter().enumerate() {
        let pod_name = format!("v{i}");
        let (cid, netns) = add_pod(&mut setup, &pod_name);
        let conf = setup.files.netconf(version);
        let out = setup.add(&cid, &netns, &conf);
        assert!(out.ok(), "ADD {version}: {} {}", out.stdout, out.stderr);
        let result = out.json();
        assert_eq!(result["cniVersion"], version, "{result}");
        let ip = ipv4_of(&result);
        assert!(ip.to_string().starts_with("10.244.1."), "{ip}");
        assert!(
            result["routes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["dst"] == "10.244.0.0/16"),
            "{result}"
        );

        // Inside the pod: the address and the cluster route via the bridge gateway.
        let pod = setup.lab.pod(&pod_name).unwrap();
        let addrs = pod
            .netns()
            .ip(["-4", "-o", "addr", "show", "dev", "eth0"])
            .unwrap();
        assert!(addrs.contains(&format!("inet {ip}/24")), "{addrs}");
        let routes = pod.netns().ip(["-4", "route"]).unwrap();
        assert!(
            routes.contains("10.244.0.0/16 via 10.244.1.1 dev eth0"),
            "{routes}"
        );
        assert!(
            routes.contains("default via 10.244.1.1 dev eth0"),
            "{routes}"
        );

        // The saved delegate config: exact bytes, private mode, and the reservation.
        let saved = setup.files.saved_config(&cid);
        assert_eq!(
            std::fs::read_to_string(&saved).unwrap(),
            expected_saved(&setup, &conf)
        );
        assert_eq!(
            std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(setup.files.reservations().contains(&ip.to_string()));

        // CHECK: passes on the healthy pod (0.4.0+); refused by version for 0.3.1.
        let check = setup.check(&cid, &netns, &conf, &result);
        if version == "0.3.1" {
            assert_eq!(check.error_code(), Some(1), "{}", check.stdout);
            assert_eq!(check.error_msg(), "config version does not allow CHECK");
        } else {
            assert!(
                check.ok(),
                "CHECK {version}: {} {}",
                check.stdout,
                check.stderr
            );
        }

        // DEL removes the veth, the reservation and the saved file; twice is fine.
        let del = setup.del(&cid, &netns, &conf);
        assert!(del.ok(), "DEL {version}: {} {}", del.stdout, del.stderr);
        assert!(setup.node_veths().is_empty(), "{:?}", setup.node_veths());
        assert!(!setup.files.reservations().contains(&ip.to_string()));
        assert!(!saved.exists());
        let pod = setup.lab.pod(&pod_name).unwrap();
        assert!(pod.netns().ip(["link", "show", "dev", "eth0"]).is_err());
        let again = setup.del(&cid, &netns, &conf);
        assert!(again.ok(), "second DEL: {}", again.stdout);
    }
}

#[test]
fn check_fails_for_broken_pods_and_unknown_containers() {
    let mut setup = NodeSetup::new(2);
    let conf = setup.files.netconf("1.0.0");
    let mut pods = Vec::new();
    for name in ["addr", "veth", "ipam", "drift"] {
        let (cid, netns) = add_pod(&mut setup, name);
        let out = setup.add(&cid, &netns, &conf);
        assert!(out.ok(), "ADD: {}", out.stdout);
        pods.push((name, cid, netns, out.json()));
    }
    let check = |cid: &str, netns: &Path, result: &Value| setup.check(cid, netns, &conf, result);
    for (_, cid, netns, result) in &pods {
        let ok = check(cid, netns, result);
        assert!(ok.ok(), "healthy CHECK: {} {}", ok.stdout, ok.stderr);
    }
    let host_veth = |result: &Value| {
        result["interfaces"][1]["name"]
            .as_str()
            .unwrap()
            .to_string()
    };

    // 1. The pod lost its address.
    let (_, cid, netns, result) = &pods[0];
    let ip = format!("{}/24", ipv4_of(result));
    setup
        .lab
        .pod("addr")
        .unwrap()
        .netns()
        .ip(["addr", "del", ip.as_str(), "dev", "eth0"])
        .unwrap();
    let out = check(cid, netns, result);
    assert_eq!(out.error_code(), Some(100), "{}", out.stdout);
    assert!(
        out.error_msg()
            .contains(&format!("address {ip} is missing on eth0")),
        "{}",
        out.stdout
    );

    // 2. The veth pair is gone (deleted from the node side).
    let (_, cid, netns, result) = &pods[1];
    setup
        .lab
        .node(0)
        .netns()
        .ip(["link", "del", host_veth(result).as_str()])
        .unwrap();
    let out = check(cid, netns, result);
    assert_eq!(out.error_code(), Some(100), "{}", out.stdout);
    assert!(
        out.error_msg().contains("interface eth0 does not exist"),
        "{}",
        out.stdout
    );

    // 3. The IPAM reservation vanished: only the delegate's own CHECK (host-local) sees it.
    let (_, cid, netns, result) = &pods[2];
    let ip = ipv4_of(result).to_string();
    std::fs::remove_file(setup.files.ipam_dir.join(cni::NETWORK_NAME).join(&ip)).unwrap();
    let out = check(cid, netns, result);
    assert!(
        !out.ok(),
        "CHECK must fail without the reservation: {}",
        out.stdout
    );
    assert!(out.stdout.contains("host-local"), "{}", out.stdout);

    // 4. subnet.env changed (flanneld now has another MTU): the pod is stale.
    let (_, cid, netns, result) = &pods[3];
    setup.write_subnet_env("10.244.2.1/24", 1400).unwrap();
    let out = check(cid, netns, result);
    assert_eq!(out.error_code(), Some(100), "{}", out.stdout);
    assert!(
        out.error_msg().contains("different delegate config"),
        "{}",
        out.stdout
    );
    setup.write_subnet_env("10.244.2.1/24", 1450).unwrap();

    // Unknown container: code 3. No prevResult: code 7.
    let out = check("never-added", netns, result);
    assert_eq!(out.error_code(), Some(3), "{}", out.stdout);
    assert!(
        out.error_msg()
            .contains("container never-added is unknown to flannel")
    );
    let out = setup.call("CHECK", cid, netns, &conf);
    assert_eq!(out.error_code(), Some(7), "{}", out.stdout);

    for (_, cid, netns, _) in &pods {
        let del = setup.del(cid, netns, &conf);
        assert!(del.ok(), "DEL: {}", del.stdout);
    }
    setup.assert_clean();
}

#[test]
fn del_after_the_netns_is_gone_succeeds() {
    let mut setup = NodeSetup::new(3);
    let conf = setup.files.netconf("1.0.0");
    let (cid, netns) = add_pod(&mut setup, "gone");
    let out = setup.add(&cid, &netns, &conf);
    assert!(out.ok(), "ADD: {}", out.stdout);
    setup.lab.remove_pod("gone").unwrap();
    assert!(!netns.exists());
    let del = setup.del(&cid, &netns, &conf);
    assert!(del.ok(), "DEL: {} {}", del.stdout, del.stderr);
    assert!(setup.wait_no_veths(), "{:?}", setup.node_veths());
    setup.assert_clean();
    // Without CNI_NETNS at all (allowed for DEL) a second DEL is also fine.
    assert!(setup.del(&cid, Path::new(""), &conf).ok());
}

#[test]
fn dual_stack_pod_gets_both_families() {
    let mut setup = NodeSetup::new(4);
    setup
        .files
        .write_subnet_env(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.4.1/24\n\
             FLANNEL_IPV6_NETWORK=fd42::/56\nFLANNEL_IPV6_SUBNET=fd42:0:0:4::1/64\n\
             FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
    let conf = setup.files.netconf("1.0.0");
    let (cid, netns) = add_pod(&mut setup, "dual");
    let out = setup.add(&cid, &netns, &conf);
    assert!(out.ok(), "ADD: {} {}", out.stdout, out.stderr);
    let result = out.json();
    let v6 = cni::result_ip(&result, true).expect("v6 address");
    assert!(v6.to_string().starts_with("fd42:0:0:4::"), "{v6}");
    let routes = setup
        .lab
        .pod("dual")
        .unwrap()
        .netns()
        .ip(["-6", "route"])
        .unwrap();
    assert!(routes.contains("fd42::/56"), "{routes}");
    let del = setup.del(&cid, &netns, &conf);
    assert!(del.ok(), "DEL: {}", del.stdout);
    assert!(setup.files.reservations().is_empty());
}

#[test]
fn conflist_attaches_a_reachable_pod_and_detaches_it() {
    // The path a lab cluster's pods take: kube-flannel's conflist through the lab's CNI
    // emulator (flannel, then portmap), then traffic.
    let mut setup = NodeSetup::new(8);
    let (cid, netns) = add_pod(&mut setup, "hook");
    let result = setup.conflist_add(&cid, &netns, &json!({}));
    let pod_ip = ipv4_of(&result);
    assert!(pod_ip.to_string().starts_with("10.244.8."), "{pod_ip}");
    let node = setup.lab.node(0).netns();
    assert!(flannel_lab::ping(node, pod_ip, 2, Duration::from_secs(5)).unwrap());
    setup.conflist_del(&cid, &netns, &json!({}), &result);
    assert!(setup.files.reservations().is_empty());
    assert!(setup.saved_files().is_empty());
    assert!(!flannel_lab::ping(node, pod_ip, 1, Duration::from_secs(1)).unwrap());
}
