//! The etcd subnet manager against a real etcd 3.4, started per test by flannel-lab inside a
//! fresh network namespace. Each test body runs on a thread inside that namespace (so the client
//! reaches etcd on the namespace's loopback) on a current-thread tokio runtime, bounded by
//! [`TEST_TIMEOUT`]; the namespace and etcd are removed by the lab's drop guards.
//!
//! Because the runtime has one thread, blocking calls in a test body (etcdctl, killing and
//! restarting etcd) run while the watch task is frozen: the compaction test uses that to make
//! changes and compact them away before the watcher can see them.

mod common;

use common::Logs;

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use flannel_lab::{Etcd, EtcdOptions, Netns};
use flannel_subnet::etcd::{EtcdConfig, EtcdManager, SUBNET_TTL};
use flannel_subnet::{PreviousSubnets, SubnetError, SubnetManager, WatchEvent};
use flannel_types::{Lease, LeaseAttrs, LeaseEvent, LeaseSet, NetConfig, RawJson, SubnetKey};
use ipnet::{Ipv4Net, Ipv6Net};
use tokio::sync::mpsc;

/// Upper bound for one whole test.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// How fast a change must reach a connected watcher.
const WITHIN: Duration = Duration::from_secs(1);
/// How long a watcher may take to come back after etcd restarts (its backoff tops at 5 s).
const RECONNECT: Duration = Duration::from_secs(15);
const PREFIX: &str = "/coreos.com/network";

// ---- harness ------------------------------------------------------------------------------

/// What a test body gets: the etcd (owned, so it stops when the body ends or is cancelled),
/// its endpoint, and the captured log.
struct Ctx {
    etcd: Etcd,
    endpoint: String,
    logs: Logs,
}

impl Ctx {
    fn ctl(&self, args: &[&str]) -> Result<String> {
        Ok(self.etcd.etcdctl(args)?)
    }

    fn put_config(&self, json: &str) -> Result<()> {
        self.ctl(&["put", &format!("{PREFIX}/config"), json])?;
        Ok(())
    }

    fn etcd_config(&self) -> EtcdConfig {
        EtcdConfig::new(vec![self.endpoint.clone()])
    }

    async fn manager(&self, previous: PreviousSubnets) -> Result<EtcdManager> {
        Ok(EtcdManager::connect(self.etcd_config(), previous).await?)
    }

    /// `etcdctl get -w json` of one key: (etcd lease id, mod revision), or `None` if absent.
    fn meta(&self, key: &str) -> Result<Option<(i64, i64)>> {
        let out = self.ctl(&["get", key, "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("etcdctl json")?;
        Ok(v["kvs"].as_array().and_then(|kvs| kvs.first()).map(|kv| {
            (
                kv["lease"].as_i64().unwrap_or(0),
                kv["mod_revision"].as_i64().unwrap_or(0),
            )
        }))
    }

    fn lease_of(&self, key: &str) -> Result<i64> {
        self.meta(key)?
            .map(|(lease, _)| lease)
            .ok_or_else(|| anyhow!("{key} does not exist"))
    }

    /// `etcdctl lease timetolive` of an etcd lease id.
    fn timetolive(&self, id: i64) -> Result<String> {
        self.ctl(&["lease", "timetolive", &format!("{id:x}")])
    }

    fn value(&self, key: &str) -> Result<String> {
        Ok(self
            .ctl(&["get", "--print-value-only", key])?
            .trim_end()
            .to_string())
    }

    fn keys(&self) -> Result<Vec<String>> {
        Ok(self
            .ctl(&[
                "get",
                "--prefix",
                "--keys-only",
                &format!("{PREFIX}/subnets/"),
            ])?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect())
    }

    /// Puts a key attached to a fresh etcd lease (like a flanneld would); returns the
    /// revision of the write.
    fn put_leased(&self, key: &str, value: &str) -> Result<i64> {
        let out = self.ctl(&["lease", "grant", "600"])?;
        let id = out
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("lease grant: {out}"))?
            .to_string();
        let out = self.ctl(&["put", "-w", "json", &format!("--lease={id}"), key, value])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["header"]["revision"]
            .as_i64()
            .ok_or_else(|| anyhow!("no revision in {out}"))
    }
}

/// Runs `body` against a fresh etcd in a fresh namespace; see the module documentation.
fn run_test<F>(role: &str, body: F) -> Result<()>
where
    F: AsyncFnOnce(Ctx) -> Result<()> + Send,
{
    let ns = Netns::new(role)?;
    let etcd = Etcd::start(&ns, EtcdOptions::new())?;
    let endpoint = etcd.endpoints();
    let logs = Logs::default();
    let ctx = Ctx {
        etcd,
        endpoint,
        logs: logs.clone(),
    };
    common::run_in(
        ns,
        logs,
        "info,flannel_subnet=debug",
        TEST_TIMEOUT,
        ctx,
        body,
    )
}

// ---- helpers ------------------------------------------------------------------------------

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

/// A vxlan node's attributes, with a VtepMAC derived from its IP.
fn vxlan(public_ip: &str) -> LeaseAttrs {
    let o = ip(public_ip).octets();
    LeaseAttrs {
        public_ip: ip(public_ip),
        public_ipv6: None,
        backend_type: "vxlan".into(),
        backend_data: Some(
            RawJson::parse(&format!(
                r#"{{"VNI":1,"VtepMAC":"0a:58:{:02x}:{:02x}:{:02x}:{:02x}"}}"#,
                o[0], o[1], o[2], o[3]
            ))
            .unwrap(),
        ),
        backend_v6_data: None,
    }
}

fn key_path(key: &SubnetKey) -> String {
    format!("{PREFIX}/subnets/{key}")
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap()
}

async fn next_event(rx: &mut mpsc::Receiver<WatchEvent>, within: Duration) -> Result<WatchEvent> {
    tokio::time::timeout(within, rx.recv())
        .await
        .map_err(|_| anyhow!("no watch event within {within:?}"))?
        .ok_or_else(|| anyhow!("the watch channel closed"))
}

/// Feeds watch events into `set` until `done(set, event)` holds; returns every event seen.
/// Fails after `within`, or on an unexpected OwnLeaseRevoked.
async fn feed_until(
    rx: &mut mpsc::Receiver<WatchEvent>,
    set: &mut LeaseSet,
    within: Duration,
    mut done: impl FnMut(&LeaseSet, &WatchEvent) -> bool,
) -> Result<Vec<WatchEvent>> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = next_event(rx, left)
            .await
            .with_context(|| format!("events so far: {seen:#?}"))?;
        match &ev {
            WatchEvent::Leases(e) => {
                set.apply(e.clone());
            }
            WatchEvent::OwnLeaseRevoked => bail!("unexpected OwnLeaseRevoked after {seen:#?}"),
        }
        let stop = done(set, &ev);
        seen.push(ev);
        if stop {
            return Ok(seen);
        }
    }
}

fn subnets(set: &LeaseSet) -> BTreeSet<Ipv4Net> {
    set.leases().filter_map(|l| l.subnet).collect()
}

fn expect_snapshot(ev: WatchEvent) -> Result<Vec<Lease>> {
    match ev {
        WatchEvent::Leases(LeaseEvent::Snapshot(l)) => Ok(l),
        other => bail!("expected a snapshot, got {other:?}"),
    }
}

fn assert_expires_in(lease: &Lease, ttl: Duration) -> Result<()> {
    let exp = lease.expiration.ok_or_else(|| anyhow!("no expiration"))?;
    let left = exp
        .duration_since(SystemTime::now())
        .map_err(|_| anyhow!("expiration already passed"))?;
    ensure!(
        left <= ttl && left + Duration::from_secs(60) >= ttl,
        "expires in {left:?}, expected about {ttl:?}"
    );
    Ok(())
}

const CONFIG_16: &str = r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#;

/// A config for 10.5.0.0/16 whose dynamic range starts at 10.5.1.0 and ends at `max`.
fn config_up_to(max: &str) -> String {
    format!(r#"{{"Network":"10.5.0.0/16","SubnetMin":"10.5.1.0","SubnetMax":"{max}"}}"#)
}

// ---- acquisition --------------------------------------------------------------------------

#[test]
fn nodes_get_distinct_subnets_and_keep_them_across_restarts() -> Result<()> {
    run_test("etcd-acquire", async |ctx: Ctx| {
        ctx.put_config(CONFIG_16)?;
        let m1 = ctx.manager(PreviousSubnets::default()).await?;
        assert_eq!(m1.name(), "Etcd Local Manager with Previous Subnet: None");
        let config = m1.network_config().await?;
        assert_eq!(config.subnet_len, 24);
        let (a1, a2) = (vxlan("198.18.0.1"), vxlan("198.18.0.2"));
        assert_eq!(m1.stored_attrs(Some(a1.public_ip)).await?, None);

        let l1 = m1.acquire_lease(&config, &a1).await?;
        let m2 = ctx.manager(PreviousSubnets::default()).await?;
        let l2 = m2.acquire_lease(&config, &a2).await?;
        let (s1, s2) = (l1.subnet.unwrap(), l2.subnet.unwrap());
        ensure!(s1 != s2, "both got {s1}");
        for (l, a) in [(&l1, &a1), (&l2, &a2)] {
            let s = l.subnet.unwrap();
            ensure!(net("10.244.0.0/16").contains(&s) && s.prefix_len() == 24);
            ensure!(
                s != net("10.244.0.0/24"),
                "the first subnet is never handed out"
            );
            assert_eq!(&l.attrs, a);
            assert_eq!(l.ipv6_subnet, None);
            assert_expires_in(l, SUBNET_TTL)?;
        }
        assert_eq!(ctx.keys()?.len(), 2);
        assert_eq!(m2.stored_attrs(Some(a1.public_ip)).await?, Some(a1.clone()));
        assert!(
            ctx.logs
                .count("Picking subnet in range 10.244.1.0 ... 10.244.255.0")
                >= 2
        );
        assert_eq!(ctx.logs.count("Allocated lease (ip: "), 2);

        // A restart (new manager, same public IP) keeps the subnet; the key moves to a fresh
        // etcd lease and the old one is revoked.
        let k1 = key_path(&l1.key());
        let old = ctx.lease_of(&k1)?;
        let m1b = ctx.manager(PreviousSubnets::default()).await?;
        let l1b = m1b.acquire_lease(&config, &a1).await?;
        assert_eq!(l1b.subnet, Some(s1));
        assert_expires_in(&l1b, SUBNET_TTL)?;
        let new = ctx.lease_of(&k1)?;
        ensure!(new != 0 && new != old, "lease {old:x} -> {new:x}");
        ensure!(
            ctx.timetolive(old)?.contains("already expired"),
            "old lease not revoked"
        );
        assert_eq!(ctx.keys()?.len(), 2);
        assert_eq!(ctx.logs.count("for current IP (198.18.0.1), reusing"), 1);

        // A restart with a new public IP after the old lease vanished gets the subnet from
        // the previous subnet.env.
        ctx.ctl(&["del", &k1])?;
        let prev = PreviousSubnets {
            ipv4: Some(s1),
            ipv6: None,
        };
        let m3 = ctx.manager(prev).await?;
        assert_eq!(
            m3.name(),
            format!("Etcd Local Manager with Previous Subnet: {s1}")
        );
        let l3 = m3.acquire_lease(&config, &vxlan("198.18.0.3")).await?;
        assert_eq!(l3.subnet, Some(s1));
        assert_eq!(
            ctx.logs
                .count(&format!("Found previously leased subnet ({s1}), reusing")),
            1
        );

        // ... but not if another node holds it, nor if it does not fit the config.
        let m4 = ctx
            .manager(PreviousSubnets {
                ipv4: Some(s2),
                ipv6: None,
            })
            .await?;
        let l4 = m4.acquire_lease(&config, &vxlan("198.18.0.4")).await?;
        ensure!(l4.subnet != Some(s2) && l4.subnet != Some(s1));
        let m5 = ctx
            .manager(PreviousSubnets {
                ipv4: Some(net("10.99.0.0/24")),
                ipv6: None,
            })
            .await?;
        let l5 = m5.acquire_lease(&config, &vxlan("198.18.0.5")).await?;
        ensure!(net("10.244.0.0/16").contains(&l5.subnet.unwrap()));
        assert_eq!(
            ctx.logs.count(
                "Found previously leased subnet (10.99.0.0/24) that is not compatible with the Etcd network config, ignoring"
            ),
            1
        );
        let all: BTreeSet<_> = [&l2, &l3, &l4, &l5].iter().map(|l| l.subnet).collect();
        assert_eq!(all.len(), 4);
        assert_eq!(ctx.keys()?.len(), 4);
        Ok(())
    })
}

#[test]
fn a_lease_that_no_longer_fits_is_replaced() -> Result<()> {
    run_test("etcd-refit", async |ctx: Ctx| {
        ctx.put_config(CONFIG_16)?;
        let m = ctx.manager(PreviousSubnets::default()).await?;
        let config = m.network_config().await?;
        let a = vxlan("198.18.0.1");
        let old = m.acquire_lease(&config, &a).await?;
        // The operator narrows the allocation range to exclude the old subnet.
        let s = old.subnet.unwrap();
        let other = if s == net("10.244.200.0/24") {
            "10.244.201.0"
        } else {
            "10.244.200.0"
        };
        ctx.put_config(&format!(
            r#"{{"Network":"10.244.0.0/16","SubnetMin":"{other}","SubnetMax":"{other}"}}"#
        ))?;
        let config = m.network_config().await?;
        let new = m.acquire_lease(&config, &a).await?;
        assert_eq!(new.subnet, Some(format!("{other}/24").parse()?));
        assert_eq!(ctx.keys()?, vec![key_path(&new.key())]);
        assert_eq!(
            ctx.logs
                .count("but not compatible with current config, deleting"),
            1
        );
        Ok(())
    })
}

#[test]
fn fifty_concurrent_managers_get_fifty_distinct_subnets() -> Result<()> {
    run_test("etcd-fifty", async |ctx: Ctx| {
        ctx.put_config(CONFIG_16)?;
        let config: NetConfig = ctx
            .manager(PreviousSubnets::default())
            .await?
            .network_config()
            .await?;
        let started = Instant::now();
        let tasks = (1..=50).map(|i| {
            let (etcd, config) = (ctx.etcd_config(), config.clone());
            async move {
                let m = EtcdManager::connect(etcd, PreviousSubnets::default()).await?;
                m.acquire_lease(&config, &vxlan(&format!("198.18.1.{i}")))
                    .await
            }
        });
        let results = futures::future::join_all(tasks).await;
        eprintln!("50 concurrent acquisitions took {:?}", started.elapsed());
        let mut got = BTreeSet::new();
        for (i, r) in results.into_iter().enumerate() {
            let lease = r.with_context(|| format!("manager {}", i + 1))?;
            let s = lease.subnet.unwrap();
            ensure!(net("10.244.0.0/16").contains(&s), "{s}");
            ensure!(got.insert(s), "{s} handed out twice");
        }
        assert_eq!(got.len(), 50);
        assert_eq!(ctx.keys()?.len(), 50);
        Ok(())
    })
}

#[test]
fn concurrent_dual_stack_managers_never_share_a_subnet_of_either_family() -> Result<()> {
    run_test("etcd-dual", async |ctx: Ctx| {
        // A small IPv6 range makes IPv6 collisions under different keys likely: the create
        // transaction cannot see those, the post-create overlap check must.
        ctx.put_config(
            r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:0:0:100::/58"}"#,
        )?;
        let config = ctx
            .manager(PreviousSubnets::default())
            .await?
            .network_config()
            .await?;
        let tasks = (1..=30).map(|i| {
            let (etcd, config) = (ctx.etcd_config(), config.clone());
            async move {
                let m = EtcdManager::connect(etcd, PreviousSubnets::default()).await?;
                let mut attrs = vxlan(&format!("198.18.2.{i}"));
                attrs.public_ipv6 = Some(format!("fd00::{i}").parse().unwrap());
                attrs.backend_v6_data = attrs.backend_data.clone();
                m.acquire_lease(&config, &attrs).await
            }
        });
        let results = futures::future::join_all(tasks).await;
        let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
        for r in results {
            let lease = r?;
            let s6: Ipv6Net = lease.ipv6_subnet.ok_or_else(|| anyhow!("no IPv6 subnet"))?;
            ensure!(s6.prefix_len() == 64 && "fc00:0:0:100::/58".parse::<Ipv6Net>()?.contains(&s6));
            ensure!(v4.insert(lease.subnet.unwrap()), "IPv4 subnet twice");
            ensure!(v6.insert(s6), "IPv6 subnet {s6} twice");
        }
        let keys = ctx.keys()?;
        assert_eq!(keys.len(), 30, "{keys:#?}");
        ensure!(keys.iter().all(|k| k.contains('&')), "{keys:#?}");
        Ok(())
    })
}

#[test]
fn a_full_network_is_out_of_subnets() -> Result<()> {
    run_test("etcd-full", async |ctx: Ctx| {
        ctx.put_config(r#"{"Network":"10.9.0.0/28","SubnetLen":30}"#)?;
        let m = ctx.manager(PreviousSubnets::default()).await?;
        let config = m.network_config().await?;
        let mut got = BTreeSet::new();
        for i in 1..=3 {
            got.insert(
                m.acquire_lease(&config, &vxlan(&format!("198.18.0.{i}")))
                    .await?
                    .subnet,
            );
        }
        let expected: BTreeSet<_> = ["10.9.0.4/30", "10.9.0.8/30", "10.9.0.12/30"]
            .iter()
            .map(|s| Some(net(s)))
            .collect();
        assert_eq!(got, expected);
        match m.acquire_lease(&config, &vxlan("198.18.0.4")).await {
            Err(SubnetError::OutOfSubnets) => {}
            other => bail!("expected OutOfSubnets, got {other:?}"),
        }
        assert_eq!(ctx.keys()?.len(), 3);
        Ok(())
    })
}

#[test]
fn stored_values_are_byte_compatible_with_upstream() -> Result<()> {
    run_test("etcd-bytes", async |ctx: Ctx| {
        ctx.put_config(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#)?;
        let m = ctx.manager(PreviousSubnets::default()).await?;
        let config = m.network_config().await?;
        let mut attrs = vxlan("198.18.0.1");
        attrs.backend_data = Some(RawJson::parse(
            r#"{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}"#,
        )?);
        let lease = m.acquire_lease(&config, &attrs).await?;
        let key = key_path(&lease.key());
        let s = lease.subnet.unwrap();
        assert_eq!(key, format!("/coreos.com/network/subnets/{}-24", s.addr()));
        assert_eq!(m.lease_key(&lease.key()), key);
        assert_eq!(ctx.keys()?, vec![key.clone()]);
        assert_eq!(
            ctx.value(&key)?,
            r#"{"PublicIP":"198.18.0.1","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}"#
        );
        let ttl = ctx.timetolive(ctx.lease_of(&key)?)?;
        ensure!(ttl.contains("granted with TTL(86400s)"), "{ttl}");

        // A value written by a Go flanneld (other field order, extra keys) is read back.
        ctx.put_leased(
            "/coreos.com/network/subnets/10.5.77.0-24",
            r#"{"BackendType":"host-gw","PublicIP":"198.18.0.77","PublicIPv6":null,"Extra":1}"#,
        )?;
        let stored = m.stored_attrs(Some(ip("198.18.0.77"))).await?.unwrap();
        assert_eq!(stored.backend_type, "host-gw");

        // Dual stack: `&` joins the families in the key, PublicIPv6 is a string.
        ctx.put_config(
            r#"{"Network":"10.6.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetMin":"fc00:0:0:7::","IPv6SubnetMax":"fc00:0:0:7::"}"#,
        )?;
        let config = m.network_config().await?;
        let mut dual = vxlan("198.18.0.2");
        dual.public_ipv6 = Some("fd00::2".parse()?);
        let lease = m.acquire_lease(&config, &dual).await?;
        let key = key_path(&lease.key());
        ensure!(key.ends_with("-24&fc00:0:0:7::-64"), "{key}");
        ensure!(
            ctx.value(&key)?
                .starts_with(r#"{"PublicIP":"198.18.0.2","PublicIPv6":"fd00::2","#),
            "{}",
            ctx.value(&key)?
        );
        Ok(())
    })
}

// ---- config -------------------------------------------------------------------------------

#[test]
fn config_missing_invalid_and_waited_for() -> Result<()> {
    run_test("etcd-config", async |ctx: Ctx| {
        let m = ctx.manager(PreviousSubnets::default()).await?;
        assert_eq!(m.config_key(), "/coreos.com/network/config");
        match m.network_config().await {
            Err(e @ SubnetError::ConfigNotFound) => assert_eq!(
                e.to_string(),
                "flannel config not found in etcd store. Did you create your config using etcdv3 API?"
            ),
            other => bail!("expected ConfigNotFound, got {other:?}"),
        }

        // Waiting is bounded by the cancellation future and retries once a second.
        let started = Instant::now();
        let got = m
            .wait_network_config(tokio::time::sleep(Duration::from_millis(2500)))
            .await;
        assert_eq!(got, None);
        ensure!(started.elapsed() < Duration::from_secs(4));
        let tries = ctx
            .logs
            .count("Couldn't fetch network config: flannel config not found");
        ensure!((2..=4).contains(&tries), "{tries} attempts in 2.5 s");

        ctx.put_config("{not json")?;
        match m.network_config().await {
            Err(SubnetError::InvalidConfig { location, source }) => {
                assert_eq!(location, "/coreos.com/network/config");
                ensure!(source.to_string().contains("invalid JSON"), "{source}");
                ensure!(
                    matches!(source, flannel_subnet::ConfigProblem::Parse(_)),
                    "{source:?}"
                );
            }
            other => bail!("expected InvalidConfig, got {other:?}"),
        }
        ctx.put_config(r#"{"Network":"10.0.0.0/30"}"#)?;
        match m.network_config().await {
            Err(e @ SubnetError::InvalidConfig { .. }) => assert_eq!(
                e.to_string(),
                "invalid network config at /coreos.com/network/config: network is too small. Minimum useful network prefix is /28"
            ),
            other => bail!("expected InvalidConfig, got {other:?}"),
        }

        // A config written while waiting is picked up.
        let etcd = &ctx.etcd;
        let (got, ()) = tokio::join!(m.wait_network_config(std::future::pending()), async {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            etcd.etcdctl(["put", "/coreos.com/network/config", CONFIG_16])
                .unwrap();
        });
        let got = got.ok_or_else(|| anyhow!("no config"))?;
        assert_eq!(got.network, Some(net("10.244.0.0/16")));
        assert_eq!(
            got.subnet_min,
            Some(ip("10.244.1.0")),
            "checked: computed fields filled"
        );
        assert_eq!(
            ctx.logs.count("Found network config - Backend type: vxlan"),
            1
        );
        Ok(())
    })
}

#[test]
fn prefix_and_credentials_are_honoured() -> Result<()> {
    run_test("etcd-auth", async |ctx: Ctx| {
        let custom = "/my/flannel/";
        ctx.ctl(&["put", "/my/flannel/config", CONFIG_16])?;
        ctx.ctl(&["user", "add", "root:rootpw"])?;
        ctx.ctl(&["role", "add", "root"])?;
        ctx.ctl(&["user", "grant-role", "root", "root"])?;
        ctx.ctl(&["role", "add", "flannel"])?;
        ctx.ctl(&[
            "role",
            "grant-permission",
            "flannel",
            "--prefix=true",
            "readwrite",
            "/my/flannel/",
        ])?;
        ctx.ctl(&["user", "add", "flannel:secret"])?;
        ctx.ctl(&["user", "grant-role", "flannel", "flannel"])?;
        ctx.ctl(&["auth", "enable"])?;

        let mut cfg = ctx.etcd_config();
        cfg.prefix = custom.into();
        cfg.username = Some("flannel".into());
        cfg.password = Some("secret".into());
        let m = EtcdManager::connect(cfg.clone(), PreviousSubnets::default()).await?;
        assert_eq!(m.config_key(), "/my/flannel/config");
        let config = m.network_config().await?;
        let lease = m.acquire_lease(&config, &vxlan("198.18.0.1")).await?;
        let key = format!("/my/flannel/subnets/{}", lease.key());
        let got = ctx.ctl(&["--user=root:rootpw", "get", "--print-value-only", &key])?;
        ensure!(got.contains("198.18.0.1"), "{got}");
        m.renew_lease(&lease).await?;

        cfg.password = Some("wrong".into());
        match EtcdManager::connect(cfg, PreviousSubnets::default()).await {
            Err(SubnetError::Datastore { operation, source }) => {
                ensure!(operation.starts_with("connecting to etcd"), "{operation}");
                ensure!(
                    source.to_string().contains("authentication failed"),
                    "{source}"
                );
                ensure!(
                    matches!(source, flannel_subnet::DatastoreCause::Etcd(_)),
                    "the etcd client's error is kept as the cause: {source:?}"
                );
            }
            Err(e) => bail!("unexpected error {e}"),
            Ok(_) => bail!("a wrong password was accepted"),
        }
        ctx.ctl(&["--user=root:rootpw", "auth", "disable"])?;
        Ok(())
    })
}

// ---- watch --------------------------------------------------------------------------------

/// Acquires `own` and starts the watch; returns the first snapshot already applied.
async fn own_and_watch(
    ctx: &Ctx,
    public_ip: &str,
) -> Result<(EtcdManager, Lease, mpsc::Receiver<WatchEvent>, LeaseSet)> {
    let m = ctx.manager(PreviousSubnets::default()).await?;
    let config = m.network_config().await?;
    let own = m.acquire_lease(&config, &vxlan(public_ip)).await?;
    let mut rx = m.watch_leases(&own);
    let mut set = LeaseSet::new(Some(own.clone()));
    let snap = expect_snapshot(next_event(&mut rx, WITHIN).await?)?;
    ensure!(
        snap.iter().any(|l| l.same_subnet(&own)),
        "own lease missing from {snap:?}"
    );
    set.apply(LeaseEvent::Snapshot(snap));
    Ok((m, own, rx, set))
}

#[test]
fn watch_sees_add_update_and_delete_within_a_second() -> Result<()> {
    run_test("etcd-watch", async |ctx: Ctx| {
        ctx.put_config(CONFIG_16)?;
        let (_m, _own, mut rx, mut set) = own_and_watch(&ctx, "198.18.0.1").await?;
        assert!(set.is_empty());

        // add: another node acquires a lease.
        let peer_m = ctx.manager(PreviousSubnets::default()).await?;
        let config = peer_m.network_config().await?;
        let peer = peer_m.acquire_lease(&config, &vxlan("198.18.0.2")).await?;
        let t = Instant::now();
        let evs = feed_until(&mut rx, &mut set, WITHIN, |s, _| s.len() == 1).await?;
        eprintln!("add seen after {:?}", t.elapsed());
        match &evs[..] {
            [WatchEvent::Leases(LeaseEvent::Added(l))] => {
                assert_eq!(l.subnet, peer.subnet);
                assert_eq!(l.attrs, peer.attrs);
                // Watched peers carry no expiration by design (see the watch module's
                // doc): their TTL lives on the etcd lease, checked here instead.
                ensure!(
                    l.expiration.is_none(),
                    "peer lease carries {:?}",
                    l.expiration
                );
                let ttl = ctx.timetolive(ctx.lease_of(&key_path(&peer.key()))?)?;
                ensure!(ttl.contains("granted with TTL(86400s)"), "{ttl}");
            }
            other => bail!("expected one Added, got {other:?}"),
        }

        // update: the peer's MAC changes (same etcd lease).
        let key = key_path(&peer.key());
        let lease_id = ctx.lease_of(&key)?;
        let new_value = r#"{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}"#;
        ctx.ctl(&["put", &format!("--lease={lease_id:x}"), &key, new_value])?;
        let t = Instant::now();
        let evs = feed_until(&mut rx, &mut set, WITHIN, |_, e| {
            matches!(e, WatchEvent::Leases(LeaseEvent::Added(_)))
        })
        .await?;
        eprintln!("update seen after {:?}", t.elapsed());
        let updated = set.get(&peer.key()).unwrap();
        assert_eq!(updated.attrs.to_json(), new_value);
        assert_eq!(evs.len(), 1);

        // delete: the Removed event names the subnet (etcd's Delete carries no value); the
        // daemon's LeaseSet reports the removal with the last known attributes.
        let mut before = set.clone();
        ctx.ctl(&["del", &key])?;
        let t = Instant::now();
        let evs = feed_until(&mut rx, &mut set, WITHIN, |s, _| s.is_empty()).await?;
        eprintln!("delete seen after {:?}", t.elapsed());
        match &evs[..] {
            [WatchEvent::Leases(LeaseEvent::Removed(l))] => {
                assert_eq!(l.subnet, peer.subnet);
                match &before.apply(LeaseEvent::Removed(l.clone()))[..] {
                    [LeaseEvent::Removed(r)] => assert_eq!(r.attrs.to_json(), new_value),
                    other => bail!("LeaseSet reported {other:?}"),
                }
            }
            other => bail!("expected one Removed, got {other:?}"),
        }
        // The task ends when the receiver is dropped.
        drop(rx);
        Ok(())
    })
}

#[test]
fn watch_survives_an_etcd_restart_and_a_compaction() -> Result<()> {
    run_test("etcd-restart", async |mut ctx: Ctx| {
        ctx.put_config(CONFIG_16)?;
        let (m, own, mut rx, mut set) = own_and_watch(&ctx, "198.18.0.1").await?;
        let a = key_path(&SubnetKey::v4(net("10.244.201.0/24")));
        ctx.put_leased(&a, &vxlan("198.18.0.201").to_json())?;
        feed_until(&mut rx, &mut set, WITHIN, |s, _| s.len() == 1).await?;

        // Crash etcd and leave it down for a while: the watcher fails and backs off, and the
        // manager's requests fail (quickly, with context) instead of hanging.
        ctx.etcd.kill()?;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let t = Instant::now();
        match m.renew_lease(&own).await {
            Err(SubnetError::Datastore { operation, .. }) => {
                ensure!(
                    operation.starts_with("getting /coreos.com/network/subnets/"),
                    "{operation}"
                )
            }
            other => bail!("renewal with etcd down: {other:?}"),
        }
        ensure!(
            t.elapsed() < Duration::from_secs(11),
            "took {:?}",
            t.elapsed()
        );
        ctx.etcd.restart()?;
        let t = Instant::now();
        // Changes after the restart reach the watcher.
        let b = key_path(&SubnetKey::v4(net("10.244.202.0/24")));
        ctx.put_leased(&b, &vxlan("198.18.0.202").to_json())?;
        ctx.ctl(&["del", &a])?;
        feed_until(&mut rx, &mut set, RECONNECT, |s, _| {
            subnets(s) == BTreeSet::from([net("10.244.202.0/24")])
        })
        .await?;
        eprintln!("watch resumed {:?} after the restart", t.elapsed());
        // The manager's own client reconnected too: renewal works.
        let renewed = m.renew_lease(&own).await?;
        assert_expires_in(&renewed, SUBNET_TTL)?;
        feed_until(
            &mut rx,
            &mut set,
            WITHIN,
            |_, e| matches!(e, WatchEvent::Leases(LeaseEvent::Added(l)) if l.same_subnet(&own)),
        )
        .await?;

        // Now crash etcd again and, while the (single-threaded) runtime cannot run the
        // watcher, change the leases and compact the history away. The watcher must re-list.
        ctx.etcd.kill()?;
        ctx.etcd.restart()?;
        let c = key_path(&SubnetKey::v4(net("10.244.203.0/24")));
        ctx.put_leased(&c, &vxlan("198.18.0.203").to_json())?;
        ctx.ctl(&["del", &b])?;
        let rev = ctx.put_leased(&c, &vxlan("198.18.0.213").to_json())?;
        ctx.ctl(&["compact", &rev.to_string()])?;
        let evs = feed_until(&mut rx, &mut set, RECONNECT, |s, _| {
            subnets(s) == BTreeSet::from([net("10.244.203.0/24")])
        })
        .await?;
        ensure!(
            evs.iter()
                .any(|e| matches!(e, WatchEvent::Leases(LeaseEvent::Snapshot(_)))),
            "no re-list after compaction: {evs:#?}"
        );
        assert_eq!(
            set.get(&SubnetKey::v4(net("10.244.203.0/24")))
                .unwrap()
                .attrs
                .public_ip,
            ip("198.18.0.213")
        );
        assert_eq!(ctx.logs.count("fell behind compaction"), 1);
        // Nothing lost or duplicated: the set equals etcd's view, and changes keep flowing.
        let d = key_path(&SubnetKey::v4(net("10.244.204.0/24")));
        ctx.put_leased(&d, &vxlan("198.18.0.204").to_json())?;
        feed_until(&mut rx, &mut set, WITHIN, |s, _| s.len() == 2).await?;
        let expected: BTreeSet<_> = ctx
            .keys()?
            .into_iter()
            .filter(|k| *k != key_path(&own.key()))
            .collect();
        let got: BTreeSet<_> = set.leases().map(|l| key_path(&l.key())).collect();
        assert_eq!(got, expected);
        Ok(())
    })
}

#[test]
fn own_lease_deletion_is_reported() -> Result<()> {
    run_test("etcd-revoke", async |ctx: Ctx| {
        ctx.put_config(CONFIG_16)?;
        let (m, own, mut rx, _set) = own_and_watch(&ctx, "198.18.0.1").await?;
        ctx.ctl(&["del", &key_path(&own.key())])?;
        let t = Instant::now();
        loop {
            match next_event(&mut rx, WITHIN).await? {
                WatchEvent::OwnLeaseRevoked => break,
                WatchEvent::Leases(LeaseEvent::Removed(l)) if l.same_subnet(&own) => {}
                other => bail!("unexpected {other:?}"),
            }
        }
        ensure!(t.elapsed() < WITHIN);
        match m.renew_lease(&own).await {
            Err(SubnetError::Datastore { source, .. }) => {
                ensure!(source.to_string().contains("no longer exists"), "{source}")
            }
            other => bail!("renewing a deleted lease: {other:?}"),
        }
        // A renewal never re-creates a deleted key (it may have been handed to someone else).
        assert!(ctx.keys()?.is_empty());
        Ok(())
    })
}

#[test]
fn renewal_extends_the_ttl_and_expiry_revokes_the_lease() -> Result<()> {
    run_test("etcd-renew", async |ctx: Ctx| {
        ctx.put_config(CONFIG_16)?;
        let ttl = Duration::from_secs(6);
        let m = ctx.manager(PreviousSubnets::default()).await?.with_ttl(ttl);
        let config = m.network_config().await?;
        let own = m.acquire_lease(&config, &vxlan("198.18.0.1")).await?;
        let key = key_path(&own.key());
        let first = ctx.lease_of(&key)?;
        ensure!(ctx.timetolive(first)?.contains("granted with TTL(6s)"));
        let mut rx = m.watch_leases(&own);
        let mut set = LeaseSet::new(Some(own.clone()));
        set.apply(LeaseEvent::Snapshot(expect_snapshot(
            next_event(&mut rx, WITHIN).await?,
        )?));

        tokio::time::sleep(Duration::from_secs(3)).await;
        let renewed = m.renew_lease(&own).await?;
        let (before, after) = (own.expiration.unwrap(), renewed.expiration.unwrap());
        let gain = after.duration_since(before)?;
        ensure!(
            gain >= Duration::from_secs(2),
            "renewal gained only {gain:?}"
        );
        assert_eq!(renewed.subnet, own.subnet);
        let second = ctx.lease_of(&key)?;
        ensure!(second != first);
        let out = ctx.timetolive(second)?;
        let remaining: u64 = out
            .split("remaining(")
            .nth(1)
            .and_then(|s| s.split('s').next())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("{out}"))?;
        ensure!(remaining >= 4, "{out}");
        ensure!(
            ctx.timetolive(first)?.contains("already expired"),
            "old lease leaked"
        );
        // The renewal's Put is seen (and filtered as our own by LeaseSet); no revocation.
        match next_event(&mut rx, WITHIN).await? {
            WatchEvent::Leases(LeaseEvent::Added(l)) if l.same_subnet(&own) => {}
            other => bail!("unexpected {other:?}"),
        }

        // Without further renewals the key expires and the watcher reports it.
        let t = Instant::now();
        loop {
            match next_event(&mut rx, ttl + Duration::from_secs(5)).await? {
                WatchEvent::OwnLeaseRevoked => break,
                WatchEvent::Leases(LeaseEvent::Removed(l)) if l.same_subnet(&own) => {}
                other => bail!("unexpected {other:?}"),
            }
        }
        eprintln!("expiry reported {:?} after the renewal window", t.elapsed());
        assert!(m.renew_lease(&renewed).await.is_err());
        Ok(())
    })
}

#[test]
fn a_dead_endpoint_among_several_fails_no_request() -> Result<()> {
    run_test("etcd-dead-ep", async |ctx: Ctx| {
        ctx.put_config(CONFIG_16)?;
        // Nothing listens on port 1: connections are refused, as by a killed etcd member. The
        // client keeps balancing requests onto it; each must still be served by the live one.
        let endpoints = vec!["http://127.0.0.1:1".to_string(), ctx.endpoint.clone()];
        let m =
            EtcdManager::connect(EtcdConfig::new(endpoints), PreviousSubnets::default()).await?;
        let config = m.network_config().await?;
        let mut lease = m.acquire_lease(&config, &vxlan("198.18.0.1")).await?;
        for i in 0..30 {
            lease = m
                .renew_lease(&lease)
                .await
                .with_context(|| format!("renewal {i} with one endpoint dead"))?;
        }
        ensure!(ctx.keys()? == [key_path(&lease.key())], "{:?}", ctx.keys()?);
        ensure!(
            ctx.logs.count("etcd request not sent") > 0,
            "the dead endpoint was never tried, so this test proved nothing"
        );
        Ok(())
    })
}

// ---- reservations and bad data ------------------------------------------------------------

#[test]
fn reservations_are_honoured() -> Result<()> {
    run_test("etcd-reserve", async |ctx: Ctx| {
        // Dynamic range: 10.5.1.0 and 10.5.2.0 only.
        ctx.put_config(&config_up_to("10.5.2.0"))?;
        let other = "/coreos.com/network/subnets/10.5.1.0-24";
        let other_value = r#"{"PublicIP":"198.18.0.9","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0a:58:c6:12:00:09"}}"#;
        ctx.ctl(&["put", other, other_value])?;
        let mine = "/coreos.com/network/subnets/10.5.200.0-24";
        ctx.ctl(&["put", mine, r#"{"PublicIP":"198.18.0.3"}"#])?;

        // Someone else's reservation is occupied: node A gets the only other subnet, node B
        // finds nothing, and the reservation is untouched.
        let m = ctx.manager(PreviousSubnets::default()).await?;
        let config = m.network_config().await?;
        let a = m.acquire_lease(&config, &vxlan("198.18.0.1")).await?;
        assert_eq!(a.subnet, Some(net("10.5.2.0/24")));
        let m_b = ctx
            .manager(PreviousSubnets {
                ipv4: Some(net("10.5.1.0/24")),
                ipv6: None,
            })
            .await?;
        match m_b.acquire_lease(&config, &vxlan("198.18.0.2")).await {
            Err(SubnetError::OutOfSubnets) => {}
            other => bail!("expected OutOfSubnets, got {other:?}"),
        }
        let (lease, rev) = ctx.meta(other)?.unwrap();
        assert_eq!(lease, 0);
        assert_eq!(ctx.value(other)?, other_value);

        // Our own reservation (outside SubnetMin..SubnetMax, inside Network) is adopted:
        // no expiration, the value refreshed with our attributes, still without a lease. A
        // stale TTL lease of ours is removed as a duplicate.
        let stale = "/coreos.com/network/subnets/10.5.3.0-24";
        ctx.put_leased(stale, &vxlan("198.18.0.3").to_json())?;
        let m_c = ctx.manager(PreviousSubnets::default()).await?;
        let attrs_c = vxlan("198.18.0.3");
        assert_eq!(
            m_c.stored_attrs(Some(attrs_c.public_ip))
                .await?
                .unwrap()
                .to_json(),
            r#"{"PublicIP":"198.18.0.3","PublicIPv6":null}"#,
            "the reservation wins over the lease for VtepMAC reuse"
        );
        let c = m_c.acquire_lease(&config, &attrs_c).await?;
        assert_eq!(c.subnet, Some(net("10.5.200.0/24")));
        assert_eq!(c.expiration, None);
        assert_eq!(ctx.value(mine)?, attrs_c.to_json());
        let (lease, mine_rev) = ctx.meta(mine)?.unwrap();
        assert_eq!(lease, 0, "a reservation must stay without TTL");
        assert_eq!(
            ctx.meta(stale)?,
            None,
            "duplicate lease of ours not removed"
        );

        // Renewing a reservation writes nothing; acquiring again with the same attributes
        // writes nothing either.
        let renewed = m_c.renew_lease(&c).await?;
        assert_eq!(renewed, c);
        let again = ctx
            .manager(PreviousSubnets::default())
            .await?
            .acquire_lease(&config, &attrs_c)
            .await?;
        assert_eq!(again, c);
        assert_eq!(ctx.meta(mine)?.unwrap().1, mine_rev);
        assert_eq!(ctx.meta(other)?.unwrap().1, rev);

        // Peers see reservations like any lease, without expiration.
        let mut rx = m.watch_leases(&a);
        let snap = expect_snapshot(next_event(&mut rx, WITHIN).await?)?;
        let r = snap
            .iter()
            .find(|l| l.subnet == Some(net("10.5.1.0/24")))
            .ok_or_else(|| anyhow!("reservation missing from {snap:?}"))?;
        assert_eq!(r.expiration, None);
        ensure!(snap.iter().any(|l| l.subnet == Some(net("10.5.200.0/24"))));

        // A reservation of ours that does not fit the config is an error, and stays.
        let misfit = "/coreos.com/network/subnets/10.6.0.0-24";
        ctx.ctl(&["put", misfit, r#"{"PublicIP":"198.18.0.4"}"#])?;
        match ctx
            .manager(PreviousSubnets::default())
            .await?
            .acquire_lease(&config, &vxlan("198.18.0.4"))
            .await
        {
            Err(SubnetError::LeaseRejected(msg)) => ensure!(msg.contains(misfit), "{msg}"),
            other => bail!("expected LeaseRejected, got {other:?}"),
        }
        assert_eq!(ctx.meta(misfit)?.unwrap().0, 0);

        // An operator may turn a running node's lease into a reservation: the next renewal
        // leaves it alone.
        ctx.put_config(&config_up_to("10.5.9.0"))?;
        let config = m.network_config().await?;
        let d = ctx.manager(PreviousSubnets::default()).await?;
        let dl = d.acquire_lease(&config, &vxlan("198.18.0.5")).await?;
        let dkey = key_path(&dl.key());
        ctx.ctl(&["put", &dkey, &ctx.value(&dkey)?])?;
        let dr = d.renew_lease(&dl).await?;
        assert_eq!(dr.expiration, None);
        assert_eq!(ctx.meta(&dkey)?.unwrap().0, 0);
        Ok(())
    })
}

#[test]
fn malformed_and_foreign_keys_are_skipped() -> Result<()> {
    run_test("etcd-garbage", async |ctx: Ctx| {
        ctx.put_config(&config_up_to("10.5.6.0"))?;
        let s = |k: &str| format!("{PREFIX}/subnets/{k}");
        ctx.ctl(&["put", &s("garbage"), "x"])?;
        ctx.ctl(&["put", &s("10.5.1.0-24"), "not json"])?;
        ctx.ctl(&["put", &s("10.5.2.7-24"), &vxlan("198.18.0.7").to_json()])?;
        ctx.ctl(&["put", &s("10.5.3.0-024"), &vxlan("198.18.0.8").to_json()])?;
        ctx.ctl(&["put", &s("192.168.7.0-24"), &vxlan("198.18.0.9").to_json()])?;
        ctx.ctl(&["put", &s("10.5.4.0-24"), r#"{"PublicIP":"fc00::1"}"#])?;
        ctx.put_leased(&s("10.5.9.0-24"), &vxlan("198.18.0.10").to_json())?;
        // Outside the prefix's subnets/ directory: not ours at all.
        ctx.ctl(&["put", &format!("{PREFIX}/subnets2/10.5.5.0-24"), "x"])?;

        // Acquisition works and avoids every subnet a key covers, however broken its value.
        let m = ctx.manager(PreviousSubnets::default()).await?;
        let config = m.network_config().await?;
        let mut got = BTreeSet::new();
        for i in 1..=2 {
            let l = m
                .acquire_lease(&config, &vxlan(&format!("198.18.0.{i}")))
                .await?;
            got.insert(l.subnet.unwrap());
        }
        assert_eq!(
            got,
            BTreeSet::from([net("10.5.5.0/24"), net("10.5.6.0/24")])
        );
        match m.acquire_lease(&config, &vxlan("198.18.0.3")).await {
            Err(SubnetError::OutOfSubnets) => {}
            other => bail!("expected OutOfSubnets, got {other:?}"),
        }
        let own = m.acquire_lease(&config, &vxlan("198.18.0.1")).await?;

        // The watch reports only the valid peer inside the Network (and the other node).
        let mut rx = m.watch_leases(&own);
        let mut set = LeaseSet::new(Some(own.clone()));
        set.apply(LeaseEvent::Snapshot(expect_snapshot(
            next_event(&mut rx, WITHIN).await?,
        )?));
        let other_node = *got.iter().find(|n| Some(**n) != own.subnet).unwrap();
        assert_eq!(
            subnets(&set),
            BTreeSet::from([net("10.5.9.0/24"), other_node])
        );

        // More garbage while watching does not break the watch.
        ctx.ctl(&["put", &s("more-garbage"), "x"])?;
        ctx.ctl(&["put", &s("172.16.0.0-24"), &vxlan("198.18.0.11").to_json()])?;
        ctx.ctl(&["put", &s("10.0.0.0-8"), &vxlan("198.18.0.12").to_json()])?;
        ctx.ctl(&[
            "put",
            &s(&format!("{}-25", own.subnet.unwrap().addr())),
            &vxlan("198.18.0.13").to_json(),
        ])?;
        // A valid peer that turns malformed is reported removed.
        ctx.ctl(&["put", &s("10.5.9.0-24"), "{"])?;
        feed_until(&mut rx, &mut set, WITHIN, |s, _| s.len() == 1).await?;
        ctx.put_leased(&s("10.5.20.0-24"), &vxlan("198.18.0.20").to_json())?;
        feed_until(&mut rx, &mut set, WITHIN, |s, _| {
            s.get(&SubnetKey::v4(net("10.5.20.0/24"))).is_some()
        })
        .await?;
        assert_eq!(set.len(), 2);

        // Each bad key was warned about exactly once, by acquisitions and the watch together.
        let logs = ctx.logs.text();
        for (needle, why) in [
            ("subnets/garbage\"", "expected <a.b.c.d>"),
            ("subnets/10.5.1.0-24\"", "its value is not a lease"),
            ("subnets/10.5.2.7-24\"", "host bits"),
            ("subnets/10.5.3.0-024\"", "canonical"),
            (
                "subnets/192.168.7.0-24\"",
                "outside the Network 10.5.0.0/16",
            ),
            ("subnets/10.5.4.0-24\"", "expected an IPv4 address"),
            ("subnets/more-garbage\"", "expected <a.b.c.d>"),
            ("subnets/172.16.0.0-24\"", "outside the Network"),
            ("subnets/10.0.0.0-8\"", "outside the Network"),
            ("-25\"", "overlaps this node's own subnet"),
        ] {
            let lines: Vec<&str> = logs.lines().filter(|l| l.contains(needle)).collect();
            ensure!(lines.len() == 1, "{needle}: {lines:#?}");
            ensure!(
                lines[0].contains("WARN") && lines[0].contains(why),
                "{}",
                lines[0]
            );
        }
        ensure!(
            !logs.contains("subnets2"),
            "a key outside subnets/ was looked at"
        );
        Ok(())
    })
}
