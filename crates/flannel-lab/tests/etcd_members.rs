//! flanneld against a real 3-member etcd cluster (`--etcd-members 3`): killing the leader, and
//! later a second member (quorum lost), must not disturb pod traffic, lose or duplicate a lease,
//! or stop renewals and the watch once the cluster is back.
//!
//! flanneld runs with `--subnet-lease-renew-margin=1439` (minutes, upstream's largest): with
//! upstream's 24 h lease it renews every 60 s, and a renewal rewrites the lease key (a new etcd
//! lease, the old one revoked), so a key's mod revision moving on is the signal that renewals
//! continue.

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use flannel_lab::{
    Child, Cluster, ClusterSpec, EtcdCluster, pid_alive, run_ok, spawn_in, wait_for,
};

const SUBNETS: &str = "/coreos.com/network/subnets/";
/// 24 h lease minus a 1439 min margin: one renewal a minute.
const RENEW_MARGIN: &str = "--subnet-lease-renew-margin=1439";
/// One renewal interval plus slack for a retry after an error (flanneld's RENEW_RETRY is 60 s).
const RENEWAL_WAIT: Duration = Duration::from_secs(100);
/// Pings per stream (at 20/s, 15 s of traffic spanning each kill).
const PINGS: u32 = 300;
/// The error flanneld logs when a renewal fails (rate-limited to one a minute by its retry).
const RENEW_ERROR: &str = "Error renewing lease (trying again in 1 min)";
/// A fake peer added while the leader is dead: a subnet in the Network, an unused underlay IP.
const FAKE_KEY: &str = "/coreos.com/network/subnets/10.244.250.0-24";
const FAKE_SUBNET: &str = "10.244.250.0/24";
const FAKE_VALUE: &str = r#"{"PublicIP":"198.18.0.200","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:c8"}}"#;

/// A second fake peer, added once quorum is back.
const FAKE2_KEY: &str = "/coreos.com/network/subnets/10.244.251.0-24";
const FAKE2_SUBNET: &str = "10.244.251.0/24";
const FAKE2_VALUE: &str = r#"{"PublicIP":"198.18.0.201","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:c9"}}"#;
/// The warning the lease watch logs when its stream breaks (rate-limited to one a minute).
const WATCH_ERROR: &str = "etcd watch channel for /coreos.com/network/subnets/ closed";
/// What it logs when the stream is back after several failed attempts.
const WATCH_RESUMED: &str = "etcd watch for /coreos.com/network/subnets/ resumed at rev";

/// Adds a peer lease through etcdctl (attached to a fresh etcd lease, as a flanneld would) and
/// waits until every node routes to its subnet: the watch delivered it.
fn add_peer(c: &Cluster, key: &str, value: &str, subnet: &str, when: &str) {
    let lease = members(c).etcdctl(["lease", "grant", "3600"]).unwrap();
    let id = lease
        .split_whitespace()
        .nth(1)
        .expect("lease id")
        .to_string();
    members(c)
        .etcdctl(["put", &format!("--lease={id}"), key, value])
        .unwrap();
    for i in 0..c.spec().nodes {
        wait_for(
            &format!("node {i} to route to the peer added {when}"),
            Duration::from_secs(20),
            Duration::from_millis(100),
            || Ok::<_, String>(routes(c, i).contains(subnet).then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", flanneld_logs(c)));
    }
}

/// One key as `etcdctl get -w fields` prints it.
#[derive(Debug, Clone)]
struct Kv {
    key: String,
    value: String,
    lease: i64,
    mod_revision: i64,
}

/// Undoes Go's `%q` quoting of the `fields` output for the characters lease JSON contains.
fn unquote(s: &str) -> String {
    let inner = s.trim().trim_start_matches('"').trim_end_matches('"');
    inner.replace("\\\"", "\"").replace("\\\\", "\\")
}

/// Parses `etcdctl get -w fields` output: one `"Name" : value` line per field, `Key` first.
fn parse_fields(out: &str) -> Vec<Kv> {
    let mut kvs: Vec<Kv> = Vec::new();
    for line in out.lines() {
        let Some((name, value)) = line.split_once(" : ") else {
            continue;
        };
        match name.trim().trim_matches('"') {
            "Key" => kvs.push(Kv {
                key: unquote(value),
                value: String::new(),
                lease: 0,
                mod_revision: 0,
            }),
            "Value" => {
                if let Some(kv) = kvs.last_mut() {
                    kv.value = unquote(value);
                }
            }
            "Lease" => {
                if let Some(kv) = kvs.last_mut() {
                    kv.lease = value.trim().parse().unwrap_or(-1);
                }
            }
            "ModRevision" => {
                if let Some(kv) = kvs.last_mut() {
                    kv.mod_revision = value.trim().parse().unwrap_or(-1);
                }
            }
            _ => {}
        }
    }
    kvs
}

fn members(c: &Cluster) -> &EtcdCluster {
    c.etcd_cluster().expect("a multi-member etcd")
}

/// Every key below the subnets prefix, read through a live member.
fn leases(c: &Cluster) -> Vec<Kv> {
    let out = members(c)
        .etcdctl(["get", "--prefix", SUBNETS, "-w", "fields"])
        .expect("etcdctl get on a live member");
    parse_fields(&out)
}

/// The lease key node `i` holds according to its subnet.env.
fn own_key(c: &Cluster, i: usize) -> String {
    let sn = c.subnet_env(i).unwrap().subnet.unwrap().trunc();
    format!("{SUBNETS}{}-{}", sn.network(), sn.prefix_len())
}

/// Asserts that every node has exactly one key carrying its public IP, the key `want[i]`, and
/// returns each node's key's mod revision.
fn one_lease_per_node(c: &Cluster, want: &[String]) -> Vec<i64> {
    let all = leases(c);
    (0..c.spec().nodes)
        .map(|i| {
            let ip = format!("\"PublicIP\":\"{}\"", c.lab().node(i).ip());
            let mine: Vec<&Kv> = all.iter().filter(|kv| kv.value.contains(&ip)).collect();
            assert_eq!(
                mine.iter().map(|kv| kv.key.as_str()).collect::<Vec<_>>(),
                [want[i].as_str()],
                "node {i} must hold exactly its one lease; all keys: {all:#?}"
            );
            assert_ne!(mine[0].lease, 0, "node {i}'s key lost its etcd lease");
            mine[0].mod_revision
        })
        .collect()
}

/// Waits until every node's lease key was rewritten after `since` (a renewal), bounded.
fn wait_renewals(c: &Cluster, want: &[String], since: &[i64], what: &str) {
    wait_for(
        &format!("every node to renew its lease {what}"),
        RENEWAL_WAIT,
        Duration::from_millis(500),
        || -> Result<Option<()>, String> {
            let now = one_lease_per_node(c, want);
            let behind: Vec<usize> = (0..now.len()).filter(|&i| now[i] <= since[i]).collect();
            if behind.is_empty() {
                Ok(Some(()))
            } else {
                Err(format!(
                    "nodes {behind:?} not renewed yet (revisions {now:?})"
                ))
            }
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", flanneld_logs(c)));
}

fn flanneld_logs(c: &Cluster) -> String {
    (0..c.spec().nodes)
        .filter_map(|i| {
            c.flanneld(i)
                .map(|f| format!("--- flanneld {i}:\n{}", f.log_tail(40)))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Starts `ping` at 20/s from `pod` to `to` in the background.
fn start_ping(c: &Cluster, pod: &str, to: IpAddr, tag: &str) -> Child {
    let ns = c.lab().pod(pod).expect("pod").netns();
    let mut cmd = Command::new("ping");
    cmd.args(["-n", "-i", "0.05", "-W", "1", "-c"])
        .arg(PINGS.to_string())
        .arg(to.to_string());
    spawn_in(ns, cmd, c.lab().dir().join(format!("ping-{tag}.log"))).expect("ping")
}

/// Waits for a ping stream to end and returns (transmitted, received).
fn ping_result(mut p: Child) -> (u32, u32) {
    let status = p
        .wait_timeout(Duration::from_secs(60))
        .expect("waiting for ping")
        .expect("ping ends within 60 s");
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary ({status}):\n{log}"));
    let num = |word: &str| -> u32 {
        let words: Vec<&str> = line.split([' ', ',']).filter(|w| !w.is_empty()).collect();
        let at = words.iter().position(|w| *w == word).expect(word);
        words[at - 1].parse().expect("count")
    };
    (num("packets"), num("received"))
}

fn routes(c: &Cluster, i: usize) -> String {
    run_ok(
        c.lab().node(i).netns(),
        ["ip", "-4", "route", "show", "proto", "70"],
    )
    .unwrap()
}

fn count_in_log(c: &Cluster, i: usize, needle: &str) -> usize {
    c.flanneld(i)
        .expect("flanneld")
        .log()
        .matches(needle)
        .count()
}

#[test]
fn leader_and_quorum_loss_keep_traffic_leases_renewals_and_watch() {
    let mut c = Cluster::start(ClusterSpec {
        nodes: 3,
        etcd_members: 3,
        extra_args: vec![RENEW_MARGIN.into()],
        ..ClusterSpec::default()
    })
    .expect("cluster with 3 etcd members");
    let endpoints = c.etcd_endpoints().unwrap();
    assert_eq!(endpoints.split(',').count(), 3, "{endpoints}");
    assert!(
        c.flanneld_args(0)
            .contains(&format!("--etcd-endpoints={endpoints}"))
    );
    let mut pids: Vec<u32> = (0..3).map(|i| c.flanneld(i).unwrap().pid()).collect();
    let ips: Vec<IpAddr> = (0..3)
        .map(|i| c.add_pod(i, &format!("p{i}")).expect("pod"))
        .collect();
    let keys: Vec<String> = (0..3).map(|i| own_key(&c, i)).collect();
    one_lease_per_node(&c, &keys);

    // 1. Kill the leader under cross-node traffic: no packet lost, a new leader elected.
    let streams = [
        start_ping(&c, "p0", ips[1], "1a"),
        start_ping(&c, "p1", ips[2], "1b"),
    ];
    std::thread::sleep(Duration::from_secs(2));
    let leader = members(&c)
        .wait_leader(None, Duration::from_secs(10))
        .unwrap();
    c.etcd_cluster_mut().unwrap().kill(leader).unwrap();
    let second = members(&c)
        .wait_leader(Some(leader), Duration::from_secs(15))
        .expect("a new leader after the kill");
    assert_ne!(second, leader);
    for p in streams {
        assert_eq!(
            ping_result(p),
            (PINGS, PINGS),
            "packets lost over the leader kill"
        );
    }

    // 2. Every lease still there exactly once with its subnet; renewals go on.
    let after_kill = one_lease_per_node(&c, &keys);
    wait_renewals(&c, &keys, &after_kill, "after the leader was killed");

    // 3. The watch goes on: a peer added now reaches every node.
    add_peer(
        &c,
        FAKE_KEY,
        FAKE_VALUE,
        FAKE_SUBNET,
        "after the leader was killed",
    );
    // A flanneld started now (one member dead) comes up on its old lease, not a second one.
    c.stop_flanneld(2).unwrap();
    c.start_flanneld(2).unwrap();
    c.wait_ready(2)
        .unwrap_or_else(|e| panic!("{e}\n{}", flanneld_logs(&c)));
    pids[2] = c.flanneld(2).unwrap().pid();
    one_lease_per_node(&c, &keys);
    c.wait_mesh()
        .expect("the restarted node routes to every peer");
    assert!(routes(&c, 2).contains(FAKE_SUBNET));

    // 4. Quorum lost: traffic still flows, flanneld stays up and reports renewals failing.
    let errors_before: Vec<usize> = (0..3).map(|i| count_in_log(&c, i, RENEW_ERROR)).collect();
    let watch_before: Vec<usize> = (0..3).map(|i| count_in_log(&c, i, WATCH_ERROR)).collect();
    let third = (0..3).find(|k| *k != leader && *k != second).unwrap();
    c.etcd_cluster_mut().unwrap().kill(second).unwrap();
    let lost_at = std::time::Instant::now();
    let stream = start_ping(&c, "p2", ips[0], "4");
    assert_eq!(
        ping_result(stream),
        (PINGS, PINGS),
        "packets lost without quorum"
    );
    assert_eq!(
        members(&c).leader(),
        None,
        "one member of three cannot lead"
    );
    for (i, before) in errors_before.iter().enumerate() {
        wait_for(
            &format!("flanneld on node {i} to report a failed renewal"),
            RENEWAL_WAIT,
            Duration::from_millis(500),
            || Ok::<_, String>((count_in_log(&c, i, RENEW_ERROR) > *before).then_some(())),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", flanneld_logs(&c)));
    }
    let outage = lost_at.elapsed();
    for (i, pid) in pids.iter().enumerate() {
        assert!(pid_alive(*pid), "flanneld {i} exited without quorum");
        let errors = count_in_log(&c, i, RENEW_ERROR) - errors_before[i];
        // One failed renewal a minute (the retry interval), not a flood.
        let allowed = 1 + usize::try_from(outage.as_secs() / 60).unwrap();
        assert!(
            errors <= allowed,
            "node {i}: {errors} renewal errors in {outage:?}"
        );
        // The watch retries every 5 s but says so once a minute (plus the first failure).
        let watch = count_in_log(&c, i, WATCH_ERROR) - watch_before[i];
        assert!(
            (1..=allowed + 1).contains(&watch),
            "node {i}: {watch} watch warnings in {outage:?}\n{}",
            flanneld_logs(&c)
        );
    }
    let health = c.etcd_cluster_mut().unwrap().health();
    assert_eq!(
        health
            .iter()
            .filter(|h| h.pid.is_some())
            .map(|h| h.index)
            .collect::<Vec<_>>(),
        [third],
        "{health:?}"
    );
    assert!(
        health.iter().all(|h| !h.healthy),
        "no member is healthy without quorum: {health:?}"
    );

    // Both members back: they rejoin, renewals resume, no lease duplicated.
    let before_back = one_lease_per_node_relaxed(&c);
    c.etcd_cluster_mut().unwrap().restart(leader).unwrap();
    c.etcd_cluster_mut().unwrap().restart(second).unwrap();
    let health = c.etcd_cluster_mut().unwrap().health();
    assert!(health.iter().all(|h| h.healthy), "{health:?}");
    members(&c)
        .wait_leader(None, Duration::from_secs(15))
        .unwrap();
    wait_renewals(&c, &keys, &before_back, "after quorum came back");
    one_lease_per_node(&c, &keys);
    for i in 0..3 {
        let resumed = c.flanneld(i).unwrap().log();
        assert!(
            resumed.contains(WATCH_RESUMED),
            "node {i} did not log the watch's recovery\n{}",
            flanneld_logs(&c)
        );
    }
    add_peer(
        &c,
        FAKE2_KEY,
        FAKE2_VALUE,
        FAKE2_SUBNET,
        "after quorum came back",
    );
    assert!(
        leases(&c)
            .iter()
            .any(|kv| kv.key == FAKE_KEY && kv.value == FAKE_VALUE)
    );
    for (i, pid) in pids.iter().enumerate() {
        assert!(pid_alive(*pid), "flanneld {i} exited");
        assert!(
            routes(&c, i).contains(FAKE_SUBNET),
            "node {i} lost the fake peer"
        );
    }
    c.wait_mesh()
        .expect("every node still routes to every peer");
    assert_eq!(c.unreachable(), Vec::<(String, String)>::new());
}

/// Each node key's mod revision while quorum is lost, read from the last member's store
/// (serializable: no leader needed); the leases cannot have changed without quorum.
fn one_lease_per_node_relaxed(c: &Cluster) -> Vec<i64> {
    let out = members(c)
        .etcdctl([
            "get",
            "--consistency=s",
            "--prefix",
            SUBNETS,
            "-w",
            "fields",
        ])
        .expect("serializable read on the live member");
    let all = parse_fields(&out);
    (0..c.spec().nodes)
        .map(|i| {
            let key = own_key(c, i);
            all.iter()
                .find(|kv| kv.key == key)
                .unwrap_or_else(|| panic!("node {i}'s key {key} missing: {all:#?}"))
                .mod_revision
        })
        .collect()
}

#[test]
fn fields_output_parses() {
    let out = concat!(
        "\"ClusterID\" : 1\n\"MemberID\" : 2\n\"Revision\" : 9\n\"RaftTerm\" : 2\n",
        "\"Key\" : \"/coreos.com/network/subnets/10.244.1.0-24\"\n\"CreateRevision\" : 4\n",
        "\"ModRevision\" : 7\n\"Version\" : 2\n",
        "\"Value\" : \"{\\\"PublicIP\\\":\\\"198.18.0.1\\\"}\"\n\"Lease\" : 7587869\n",
        "\"Key\" : \"/k\"\n\"ModRevision\" : 8\n\"Value\" : \"v\"\n\"Lease\" : 0\n",
        "\"More\" : false\n\"Count\" : 2\n",
    );
    let kvs = parse_fields(out);
    assert_eq!(kvs.len(), 2);
    assert_eq!(kvs[0].key, "/coreos.com/network/subnets/10.244.1.0-24");
    assert_eq!(kvs[0].value, r#"{"PublicIP":"198.18.0.1"}"#);
    assert_eq!((kvs[0].lease, kvs[0].mod_revision), (7587869, 7));
    assert_eq!(
        (kvs[1].key.as_str(), kvs[1].lease, kvs[1].mod_revision),
        ("/k", 0, 8)
    );
}
