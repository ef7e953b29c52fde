//! A real multi-member etcd 3.4 cluster inside one lab namespace (`flannel-lab up
//! --etcd-members 3`).
//!
//! Production etcd runs three or five members, and flanneld is given all of them in
//! `--etcd-endpoints`; whether its subnet manager survives the loss of the leader (and of
//! quorum) can only be shown against a real cluster. Each member is an [`Etcd`] with its own data
//! directory, client port and peer port; they share the namespace and its addresses (the
//! underlay gateway and loopback) and differ by port, because ports are picked race-free inside
//! the namespace ([`crate::Netns::free_tcp_ports`]) while extra addresses would have to be carved
//! out of the underlay's address plan, and a killed member looks the same to clients either way
//! (its port refuses connections). Members are started with `--initial-cluster`,
//! `--initial-cluster-state new` and a token unique to the namespace; a member killed and
//! started again on its data directory rejoins the cluster (etcd ignores the initial flags
//! once it has data).

use std::net::IpAddr;
use std::time::Duration;

use serde_json::Value;

use crate::command::wait_for;
use crate::error::{LabError, Result};
use crate::etcd::{Etcd, EtcdOptions, PORT_ATTEMPTS, url};
use crate::netns::{Netns, temp_dir};

/// The cluster sizes the lab builds: etcd's advice is an odd number of members (an even one
/// tolerates no more failures than the odd one below it), and more than five only slows writes.
pub const ETCD_MEMBER_COUNTS: [usize; 3] = [1, 3, 5];

/// Checks a member count against [`ETCD_MEMBER_COUNTS`], naming the flag in the error so
/// `flannel-lab up` and [`crate::ClusterSpec::etcd_members`] say the same thing.
pub fn check_member_count(n: usize) -> Result<()> {
    if ETCD_MEMBER_COUNTS.contains(&n) {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "--etcd-members must be 1, 3 or 5 (an odd etcd cluster size), not {n}"
        )))
    }
}

/// What makes an [`Etcd`] a member of a cluster rather than a single-member one.
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// `--name`.
    pub(crate) name: String,
    /// The address peers reach it on (`--listen-peer-urls`).
    pub(crate) peer_ip: IpAddr,
    /// `--initial-cluster`: every member's `name=peer URL`.
    pub(crate) initial_cluster: String,
    /// `--initial-cluster-token`.
    pub(crate) token: String,
}

/// One member's state as [`EtcdCluster::health`] sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberHealth {
    /// Index in the cluster (as [`EtcdCluster::member`] takes it).
    pub index: usize,
    /// `--name`.
    pub name: String,
    /// Its client URLs, as flanneld gets them.
    pub endpoint: String,
    /// The process id when running.
    pub pid: Option<u32>,
    /// Whether `GET /health` says healthy: running, with a leader and no alarm.
    pub healthy: bool,
}

/// A running etcd cluster; every member is stopped on drop (each [`Etcd`] is a drop guard).
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Etcd>,
    // Field order matters: members stop before their directory goes.
    _temp: Option<tempfile::TempDir>,
}

/// The name of member `k`.
fn member_name(k: usize) -> String {
    format!("lab-{k}")
}

impl EtcdCluster {
    /// Starts `size` members inside `ns` (each under `<dir>/member-K`, with `opts`' addresses and
    /// start timeout) and waits until all are healthy. Ports are retried as in [`Etcd::start`].
    pub fn start(ns: &Netns, size: usize, opts: EtcdOptions) -> Result<EtcdCluster> {
        check_member_count(size)?;
        let (temp, base) = match opts.dir_path() {
            Some(d) => (None, d.to_path_buf()),
            None => {
                let t = temp_dir("etcd")?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let peer_ip = opts.peer_ip();
        let mut members = (0..size)
            .map(|k| Etcd::prepare(ns, &opts.clone().dir(base.join(format!("member-{k}")))))
            .collect::<Result<Vec<_>>>()?;
        let token = format!("flannel-lab-{}", ns.name());
        let mut last_err = None;
        let per = members[0].ports_needed();
        for _ in 0..PORT_ATTEMPTS {
            let ports = ns.free_tcp_ports(per * size)?;
            let ports: Vec<&[u16]> = ports.chunks(per).collect();
            let initial_cluster = (0..size)
                .map(|k| format!("{}={}", member_name(k), url(peer_ip, ports[k][1])))
                .collect::<Vec<_>>()
                .join(",");
            for (k, m) in members.iter_mut().enumerate() {
                let member = Member {
                    name: member_name(k),
                    peer_ip,
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                };
                m.set_member(member, ports[k]);
            }
            match launch_all(&mut members) {
                Ok(()) => {
                    return Ok(EtcdCluster {
                        members,
                        _temp: temp,
                    });
                }
                Err(e) => {
                    let busy = members.iter().any(Etcd::port_was_busy);
                    members.iter_mut().for_each(Etcd::kill_quietly);
                    if !busy {
                        return Err(e);
                    }
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| members[0].error("could not find free ports")))
    }

    /// Every member's client URLs, comma-separated: flanneld's `--etcd-endpoints` (as upstream
    /// takes them), and etcdctl's `--endpoints`.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Etcd::endpoints)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member (for clippy's `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// All members, in index order.
    pub fn members(&self) -> &[Etcd] {
        &self.members
    }

    /// Member `i`.
    ///
    /// # Panics
    /// If `i` is out of range (a test bug).
    pub fn member(&self, i: usize) -> &Etcd {
        &self.members[i]
    }

    /// Member `i`, mutably (to stop it gracefully, or for its log).
    ///
    /// # Panics
    /// If `i` is out of range.
    pub fn member_mut(&mut self, i: usize) -> &mut Etcd {
        &mut self.members[i]
    }

    /// Kills member `i` with SIGKILL (a crash; its data directory stays) and reaps it.
    pub fn kill(&mut self, i: usize) -> Result<()> {
        self.members[i].kill()
    }

    /// Starts member `i` again on its data directory and ports; it rejoins the cluster. Waits
    /// until it is healthy, which needs a quorum of members running.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.members[i].restart()
    }

    /// Each member's state, asked over HTTP (`GET /health`) from inside the namespace.
    pub fn health(&mut self) -> Vec<MemberHealth> {
        self.members
            .iter_mut()
            .enumerate()
            .map(|(index, m)| {
                let running = m.is_running();
                MemberHealth {
                    index,
                    name: m.name().to_string(),
                    endpoint: m.endpoints(),
                    pid: m.pid().filter(|_| running),
                    healthy: running && m.is_healthy(),
                }
            })
            .collect()
    }

    /// The index of the member that is leader now, asked of every started member with
    /// `etcdctl endpoint status -w json` (the one whose own id is the leader id it reports).
    /// `None` when no started member claims to lead (an election, or no quorum).
    pub fn leader(&self) -> Option<usize> {
        self.members
            .iter()
            .position(|m| m.pid().is_some() && status_of(m).is_some_and(|s| s.is_leader()))
    }

    /// Waits (bounded) until some member other than `not` leads, and returns its index.
    pub fn wait_leader(&self, not: Option<usize>, timeout: Duration) -> Result<usize> {
        wait_for(
            "an etcd member to be elected leader",
            timeout,
            Duration::from_millis(100),
            || -> std::result::Result<Option<usize>, String> {
                Ok(self.leader().filter(|l| Some(*l) != not))
            },
        )
    }

    /// Runs `etcdctl <args>` on one started member (a healthy one if any), from inside the
    /// namespace; see [`Etcd::etcdctl`].
    pub fn etcdctl<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let started = || self.members.iter().filter(|m| m.pid().is_some());
        let member = started()
            .find(|m| m.is_healthy())
            .or_else(|| started().next())
            .ok_or_else(|| self.members[0].error("no member of the etcd cluster is running"))?;
        member.etcdctl(args)
    }
}

/// Spawns every member, then waits for each to be healthy (none is before a quorum runs).
fn launch_all(members: &mut [Etcd]) -> Result<()> {
    for m in members.iter_mut() {
        m.spawn()?;
    }
    for m in members.iter_mut() {
        let timeout = m.start_timeout();
        m.wait_healthy(timeout)?;
    }
    Ok(())
}

/// What `etcdctl endpoint status -w json` says about the member it asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct EndpointStatus {
    member_id: u64,
    leader: u64,
}

impl EndpointStatus {
    fn is_leader(&self) -> bool {
        self.leader != 0 && self.member_id == self.leader
    }
}

/// Asks member `m` for its status; `None` if it does not answer.
fn status_of(m: &Etcd) -> Option<EndpointStatus> {
    let out = m.etcdctl(["endpoint", "status", "-w", "json"]).ok()?;
    parse_status(&out)
}

/// Parses `etcdctl endpoint status -w json` output for one endpoint.
fn parse_status(json: &str) -> Option<EndpointStatus> {
    let v: Value = serde_json::from_str(json.trim()).ok()?;
    let status = v.as_array()?.first()?.get("Status")?;
    Some(EndpointStatus {
        member_id: status.get("header")?.get("member_id")?.as_u64()?,
        leader: status.get("leader")?.as_u64()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_counts_are_odd_and_small() {
        for n in [1, 3, 5] {
            check_member_count(n).unwrap();
        }
        for n in [0, 2, 4, 7] {
            let e = check_member_count(n).unwrap_err().to_string();
            assert!(e.contains("--etcd-members must be 1, 3 or 5"), "{e}");
            assert!(e.contains(&format!("not {n}")), "{e}");
        }
    }

    #[test]
    fn endpoint_status_names_the_leader() {
        // As etcdctl 3.4 prints it (ids are uint64 and may exceed i64).
        let leader = r#"[{"Endpoint":"http://127.0.0.1:2379","Status":{"header":{"cluster_id":17237436991929493444,"member_id":13803658152347727308,"revision":5,"raft_term":2},"version":"3.4.23","dbSize":20480,"leader":13803658152347727308,"raftIndex":9,"raftTerm":2,"raftAppliedIndex":9,"dbSizeInUse":20480}}]"#;
        let s = parse_status(leader).unwrap();
        assert!(s.is_leader());
        let follower = leader.replace(
            r#""leader":13803658152347727308"#,
            r#""leader":9372538179322589801"#,
        );
        assert!(!parse_status(&follower).unwrap().is_leader());
        let no_leader = leader.replace(r#""leader":13803658152347727308"#, r#""leader":0"#);
        assert!(!parse_status(&no_leader).unwrap().is_leader());
        assert_eq!(parse_status("Error: context deadline exceeded"), None);
        assert_eq!(parse_status("[]"), None);
    }
}
