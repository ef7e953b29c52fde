//! The etcd side of the subnet manager (upstream `registry.go`): the key layout, reading keys
//! into typed entries, and the few conditional writes the allocator needs.
//!
//! Every write that replaces or removes an existing key is a transaction guarded by the key's
//! `mod_revision` as we last read it, so a decision taken on a listing can never clobber a
//! change made after it (another node's lease, an operator's reservation); the caller re-lists
//! and decides again.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, KeyValue, LeaseTimeToLiveOptions, PutOptions, Txn,
    TxnOp,
};
use flannel_types::{LeaseAttrs, LeaseError, SubnetKey};

use crate::SubnetError;

/// How long one etcd request may take before it counts as failed.
///
/// etcd answers in milliseconds; a request that takes this long is stuck on a dead connection
/// or a cluster without quorum, and the caller's retry policy is the better place to wait.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs one etcd request with [`RPC_TIMEOUT`], turning failures into
/// [`SubnetError::Datastore`] that name the operation.
pub async fn rpc<T, F>(operation: impl FnOnce() -> String, fut: F) -> Result<T, SubnetError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    match tokio::time::timeout(RPC_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(SubnetError::datastore(operation(), super::tls::cause(e))),
        Err(_) => Err(SubnetError::datastore(
            operation(),
            format!("etcd did not answer within {RPC_TIMEOUT:?}"),
        )),
    }
}

/// How many times [`rpc_resend`] sends a request that never reached a server.
///
/// The client balances requests over every `--etcd-endpoints` member and keeps offering a dead
/// member's endpoint (its connection is retried lazily, on use), so after a member dies about
/// one request in N fails to connect. Sending again picks again: ten tries miss every live
/// member of a 3-member cluster with one dead with probability (1/3)^10, about 2e-5.
pub const UNSENT_ATTEMPTS: u32 = 10;

/// gRPC's UNAVAILABLE status code.
const GRPC_UNAVAILABLE: i32 = 14;

/// Whether a failed request certainly never reached an etcd server, so sending it again cannot
/// apply it twice: an UNAVAILABLE status for a TCP connection that could not be made (the
/// message hyper gives its connect errors, or a refused connection anywhere in the cause).
/// Anything else (a reset mid-request, a timeout, an etcd error) may have been applied and is
/// left to the caller's own retry policy.
pub fn never_sent(code: i32, message: &str, refused: bool) -> bool {
    code == GRPC_UNAVAILABLE && (message.contains("tcp connect error") || refused)
}

/// [`never_sent`] for an etcd client error.
fn error_never_sent(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    let mut refused = false;
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        cause = c.source();
    }
    never_sent(i32::from(status.code()), status.message(), refused)
}

/// Runs one etcd request like [`rpc`], within the same [`RPC_TIMEOUT`] overall, but sends it
/// again (up to [`UNSENT_ATTEMPTS`] times) while it fails without having reached any server
/// (see [`never_sent`]): with several endpoints, one dead member must not fail a lease renewal
/// that any live member would have served. `request` makes the request anew on each call.
pub async fn rpc_resend<T, F>(
    operation: impl FnOnce() -> String,
    mut request: impl FnMut() -> F,
) -> Result<T, SubnetError>
where
    F: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + RPC_TIMEOUT;
    let mut attempt = 1;
    loop {
        match tokio::time::timeout_at(deadline, request()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if attempt < UNSENT_ATTEMPTS && error_never_sent(&e) => {
                tracing::debug!("etcd request not sent ({e}); sending it again");
                attempt += 1;
            }
            Ok(Err(e)) => return Err(SubnetError::datastore(operation(), super::tls::cause(e))),
            Err(_) => {
                return Err(SubnetError::datastore(
                    operation(),
                    format!("etcd did not answer within {RPC_TIMEOUT:?}"),
                ));
            }
        }
    }
}

/// Go's `path.Clean`, which upstream applies to the prefix through `path.Join`: repeated
/// slashes collapse, `.` and `..` elements resolve, a trailing slash goes.
pub fn go_path_clean(p: &str) -> String {
    if p.is_empty() {
        return ".".to_string();
    }
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for elem in p.split('/') {
        match elem {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            e => parts.push(e),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// Go's `path.Join(base, elem)` for one non-empty element.
fn go_path_join(base: &str, elem: &str) -> String {
    if base.is_empty() {
        go_path_clean(elem)
    } else {
        go_path_clean(&format!("{base}/{elem}"))
    }
}

/// Where flannel's data lives under `--etcd-prefix` (default `/coreos.com/network`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// `<prefix>/config`: the network config.
    pub config: String,
    /// `<prefix>/subnets/`: every lease key starts with this (note the trailing slash: keys
    /// such as `<prefix>/subnets2/...` are not ours, whatever upstream's looser prefix matches).
    pub subnets: String,
}

impl Keys {
    /// The layout for `prefix`, cleaned as upstream's `path.Join` does.
    pub fn new(prefix: &str) -> Self {
        Keys {
            config: go_path_join(prefix, "config"),
            subnets: format!("{}/", go_path_join(prefix, "subnets")),
        }
    }

    /// The etcd key of a lease: `<prefix>/subnets/10.5.52.0-24[&fc00::-64]`.
    pub fn subnet(&self, key: &SubnetKey) -> String {
        format!("{}{key}", self.subnets)
    }

    /// Reads the subnet out of an etcd key below [`Keys::subnets`].
    ///
    /// Only the canonical spelling that every flanneld writes is accepted, so that etcd keys and
    /// subnets map one to one (a second spelling of the same subnet would otherwise make two
    /// "different" leases for one route). A key with host bits set is not a subnet either.
    /// On error the second element is the subnet the key still covers, if it names one, so the
    /// allocator can keep away from it.
    pub fn parse_subnet(&self, etcd_key: &[u8]) -> Result<SubnetKey, (String, Option<SubnetKey>)> {
        let Ok(key) = std::str::from_utf8(etcd_key) else {
            return Err(("the key is not UTF-8".to_string(), None));
        };
        let Some(suffix) = key.strip_prefix(&self.subnets) else {
            return Err((format!("it is not below {}", self.subnets), None));
        };
        let parsed = SubnetKey::parse(suffix).map_err(|e| (e.reason.to_string(), None))?;
        let truncated = SubnetKey {
            ipv4: parsed.ipv4.map(|n| n.trunc()),
            ipv6: parsed.ipv6.map(|n| n.trunc()),
        };
        if truncated != parsed {
            return Err((
                "the subnet address has host bits set".to_string(),
                Some(truncated),
            ));
        }
        let canonical = parsed.to_string();
        if canonical != suffix {
            return Err((
                format!("it is not written in canonical form ({canonical})"),
                Some(parsed),
            ));
        }
        Ok(parsed)
    }
}

/// One key below `<prefix>/subnets/` that names a subnet.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The full etcd key.
    pub etcd_key: String,
    /// The subnets it names.
    pub key: SubnetKey,
    /// The parsed value, or why it could not be parsed (the key then still occupies its subnet).
    pub attrs: Result<LeaseAttrs, LeaseError>,
    /// The etcd lease the key is attached to; 0 for a reservation (no TTL).
    pub lease_id: i64,
    /// Revision of the last write, for guarded updates and deletes.
    pub mod_revision: i64,
    /// Revision at which the key was created; the older of two conflicting keys wins.
    pub create_revision: i64,
}

impl Entry {
    /// A key without an etcd lease: an operator's reservation, never expired or rewritten by us.
    pub fn is_reservation(&self) -> bool {
        self.lease_id == 0
    }
}

/// A key below `<prefix>/subnets/` that is not a valid lease key.
#[derive(Debug, Clone)]
pub struct BadKey {
    /// The key as found (lossy UTF-8).
    pub etcd_key: String,
    /// The key's mod revision, so it is warned about once per change.
    pub mod_revision: i64,
    /// What is wrong with it.
    pub reason: String,
    /// The subnet it still covers, if any.
    pub covers: Option<SubnetKey>,
}

/// What one key read from etcd turned out to be.
#[derive(Debug, Clone)]
pub enum Parsed {
    /// A lease key (its value may still be malformed).
    Entry(Entry),
    /// Not a lease key.
    Bad(BadKey),
}

/// Reads one etcd key-value into an [`Entry`] or a [`BadKey`]; never fails.
pub fn parse_kv(keys: &Keys, kv: &KeyValue) -> Parsed {
    let etcd_key = String::from_utf8_lossy(kv.key()).into_owned();
    match keys.parse_subnet(kv.key()) {
        Ok(key) => Parsed::Entry(Entry {
            etcd_key,
            key,
            attrs: LeaseAttrs::from_slice(kv.value()),
            lease_id: kv.lease(),
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        }),
        Err((reason, covers)) => Parsed::Bad(BadKey {
            etcd_key,
            mod_revision: kv.mod_revision(),
            reason,
            covers,
        }),
    }
}

/// All keys below `<prefix>/subnets/` at one revision.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// The store revision the listing reflects; a watch resumes at `revision + 1`.
    pub revision: i64,
    /// Lease keys.
    pub entries: Vec<Entry>,
    /// Keys that are not lease keys.
    pub bad: Vec<BadKey>,
}

/// Remembers which bad keys were already logged, so each one is warned about once (per value)
/// rather than on every re-list and by every caller.
#[derive(Debug, Default)]
pub struct Warned(Mutex<HashSet<(String, i64)>>);

/// Bound on [`Warned`]'s memory: past this many entries it starts over (and may repeat a
/// warning), which a hostile writer could only use to make us log more.
const WARNED_CAP: usize = 4096;

impl Warned {
    /// True the first time it is asked about `key` at `mod_revision`.
    pub fn first(&self, key: &str, mod_revision: i64) -> bool {
        let mut set = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() >= WARNED_CAP {
            set.clear();
        }
        set.insert((key.to_string(), mod_revision))
    }
}

/// Logs a bad key once.
pub fn warn_bad_key(warned: &Warned, bad: &BadKey) {
    if warned.first(&bad.etcd_key, bad.mod_revision) {
        tracing::warn!(
            "Ignoring bad subnet node {:?}: {}",
            bad.etcd_key,
            bad.reason
        );
    }
}

/// Logs a lease key with a malformed value once.
pub fn warn_bad_value(warned: &Warned, entry: &Entry, reason: &LeaseError) {
    if warned.first(&entry.etcd_key, entry.mod_revision) {
        tracing::warn!(
            "Ignoring bad subnet node {:?}: its value is not a lease: {reason}",
            entry.etcd_key
        );
    }
}

/// Thin typed wrapper over the etcd client for the manager's reads and guarded writes.
#[derive(Clone)]
pub struct Registry {
    client: Client,
    /// The key layout.
    pub keys: Keys,
}

impl Registry {
    /// Wraps a connected client.
    pub fn new(client: Client, keys: Keys) -> Self {
        Registry { client, keys }
    }

    /// The underlying client (a cheap handle on the same connections), for watches.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The network config's raw value, `None` when the key does not exist.
    pub async fn get_config(&self) -> Result<Option<Vec<u8>>, SubnetError> {
        let key = self.keys.config.as_str();
        let resp = rpc_resend(
            || format!("getting {key}"),
            || {
                let mut c = self.client.clone();
                async move { c.get(key, None).await }
            },
        )
        .await?;
        Ok(resp.kvs().first().map(|kv| kv.value().to_vec()))
    }

    /// Lists every key below `<prefix>/subnets/` in one consistent read.
    pub async fn list(&self) -> Result<Listing, SubnetError> {
        let prefix = self.keys.subnets.as_str();
        let resp = rpc_resend(
            || format!("listing {prefix}"),
            || {
                let mut c = self.client.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            },
        )
        .await?;
        let mut listing = Listing {
            revision: resp.header().map(|h| h.revision()).unwrap_or_default(),
            ..Listing::default()
        };
        for kv in resp.kvs() {
            match parse_kv(&self.keys, kv) {
                Parsed::Entry(e) => listing.entries.push(e),
                Parsed::Bad(b) => listing.bad.push(b),
            }
        }
        Ok(listing)
    }

    /// Reads one key.
    pub async fn get(&self, etcd_key: &str) -> Result<Option<KeyValue>, SubnetError> {
        let resp = rpc_resend(
            || format!("getting {etcd_key}"),
            || {
                let mut c = self.client.clone();
                async move { c.get(etcd_key, None).await }
            },
        )
        .await?;
        Ok(resp.kvs().first().cloned())
    }

    /// Grants an etcd lease of `ttl` (whole seconds, at least 1); returns its id and the TTL
    /// etcd actually granted (it raises values below its minimum).
    pub async fn grant(&self, ttl: Duration) -> Result<(i64, Duration), SubnetError> {
        let secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let resp = rpc_resend(
            || format!("granting an etcd lease of {secs}s"),
            || {
                let mut c = self.client.clone();
                async move { c.lease_grant(secs, None).await }
            },
        )
        .await?;
        let granted = u64::try_from(resp.ttl()).unwrap_or(0).max(1);
        Ok((resp.id(), Duration::from_secs(granted)))
    }

    /// Revokes an etcd lease, logging instead of failing: used to clean up after ourselves,
    /// where an error only means the lease lives on until its TTL ends.
    pub async fn revoke_quietly(&self, id: i64) {
        let revoke = || {
            let mut c = self.client.clone();
            async move { c.lease_revoke(id).await }
        };
        if let Err(e) = rpc_resend(|| format!("revoking etcd lease {id:x}"), revoke).await {
            tracing::warn!("{e}");
        }
    }

    /// Revokes `id` if no key is attached to it any more.
    ///
    /// Revoking deletes every key still attached, so an old lease is only revoked once our key
    /// has moved to its new lease and nothing else uses it.
    pub async fn revoke_if_orphaned(&self, id: i64) {
        if id == 0 {
            return;
        }
        let read = || {
            let mut c = self.client.clone();
            let opts = LeaseTimeToLiveOptions::new().with_keys();
            async move { c.lease_time_to_live(id, Some(opts)).await }
        };
        match rpc_resend(|| format!("reading etcd lease {id:x}"), read).await {
            Ok(r) if r.ttl() > 0 && r.keys().is_empty() => self.revoke_quietly(id).await,
            Ok(_) => {}
            Err(e) => tracing::debug!("{e}"),
        }
    }

    /// Creates `etcd_key` with `value` attached to etcd lease `lease_id`, only if the key does
    /// not exist. Returns the revision of the write, or `None` if the key already existed.
    pub async fn create(
        &self,
        etcd_key: &str,
        value: &str,
        lease_id: i64,
    ) -> Result<Option<i64>, SubnetError> {
        let txn = Txn::new()
            .when([Compare::create_revision(etcd_key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                etcd_key,
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let resp = rpc_resend(
            || format!("creating {etcd_key}"),
            || {
                let (mut c, txn) = (self.client.clone(), txn.clone());
                async move { c.txn(txn).await }
            },
        )
        .await?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map(|h| h.revision()).unwrap_or_default()))
    }

    /// Writes `value` to `etcd_key` (attached to `lease_id`, or to no lease when 0) only if the
    /// key is still at `mod_revision`. Returns whether it was written.
    pub async fn put_if_unchanged(
        &self,
        etcd_key: &str,
        value: &str,
        lease_id: i64,
        mod_revision: i64,
    ) -> Result<bool, SubnetError> {
        let opts = (lease_id != 0).then(|| PutOptions::new().with_lease(lease_id));
        let txn = Txn::new()
            .when([Compare::mod_revision(
                etcd_key,
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::put(etcd_key, value, opts)]);
        let resp = rpc_resend(
            || format!("updating {etcd_key}"),
            || {
                let (mut c, txn) = (self.client.clone(), txn.clone());
                async move { c.txn(txn).await }
            },
        )
        .await?;
        Ok(resp.succeeded())
    }

    /// Deletes `etcd_key` only if it is still at `mod_revision`. Returns whether it was deleted.
    pub async fn delete_if_unchanged(
        &self,
        etcd_key: &str,
        mod_revision: i64,
    ) -> Result<bool, SubnetError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(
                etcd_key,
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then([TxnOp::delete(etcd_key, None)]);
        let resp = rpc_resend(
            || format!("deleting {etcd_key}"),
            || {
                let (mut c, txn) = (self.client.clone(), txn.clone());
                async move { c.txn(txn).await }
            },
        )
        .await?;
        Ok(resp.succeeded())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_requests_that_never_connected_are_sent_again() {
        // tonic's status for a refused or failed TCP connect.
        assert!(never_sent(14, "tcp connect error", true));
        assert!(never_sent(14, "tcp connect error", false));
        assert!(never_sent(14, "transport error", true));
        // UNAVAILABLE for a broken connection mid-request: it may have been applied.
        assert!(!never_sent(
            14,
            "h2 protocol error: error reading a body from connection",
            false
        ));
        // etcd's own errors (no leader, timeouts) are answers, not unsent requests.
        assert!(!never_sent(14, "etcdserver: no leader", false));
        assert!(!never_sent(4, "context deadline exceeded", false));
        assert!(!never_sent(2, "tcp connect error", true));
    }

    #[test]
    fn prefix_is_cleaned_like_go_path_join() {
        let k = Keys::new("/coreos.com/network");
        assert_eq!(k.config, "/coreos.com/network/config");
        assert_eq!(k.subnets, "/coreos.com/network/subnets/");
        assert_eq!(
            Keys::new("/coreos.com/network/").config,
            "/coreos.com/network/config"
        );
        assert_eq!(Keys::new("//a//b/./c/../").config, "/a/b/config");
        assert_eq!(Keys::new("").config, "config");
        assert_eq!(Keys::new("").subnets, "subnets/");
        assert_eq!(Keys::new("/").subnets, "/subnets/");
        assert_eq!(Keys::new("rel/x").config, "rel/x/config");
        assert_eq!(go_path_clean("../a/.."), "..");
        assert_eq!(go_path_clean("/../a"), "/a");
    }

    #[test]
    fn subnet_keys_round_trip_and_only_canonical_forms_are_leases() {
        let k = Keys::new("/coreos.com/network");
        let key = SubnetKey::parse("10.5.52.0-24&fc00::-64").unwrap();
        let etcd_key = k.subnet(&key);
        assert_eq!(
            etcd_key,
            "/coreos.com/network/subnets/10.5.52.0-24&fc00::-64"
        );
        assert_eq!(k.parse_subnet(etcd_key.as_bytes()), Ok(key));

        let err = |s: &str| k.parse_subnet(s.as_bytes()).unwrap_err();
        assert_eq!(
            err("/coreos.com/network/subnets/garbage").0,
            "expected <a.b.c.d>-<len>[&<ipv6>-<len>]"
        );
        assert_eq!(err("/coreos.com/network/subnets/garbage").1, None);
        let (reason, covers) = err("/coreos.com/network/subnets/10.5.52.7-24");
        assert_eq!(reason, "the subnet address has host bits set");
        assert_eq!(covers, Some(SubnetKey::parse("10.5.52.0-24").unwrap()));
        let (reason, covers) = err("/coreos.com/network/subnets/x/10.5.52.0-024");
        assert_eq!(reason, "it is not written in canonical form (10.5.52.0-24)");
        assert_eq!(covers, Some(SubnetKey::parse("10.5.52.0-24").unwrap()));
        assert_eq!(
            err("/other/10.5.52.0-24").0,
            "it is not below /coreos.com/network/subnets/"
        );
        assert_eq!(
            k.parse_subnet(b"/coreos.com/network/subnets/\xff")
                .unwrap_err()
                .0,
            "the key is not UTF-8"
        );
    }

    #[test]
    fn warned_reports_each_key_and_revision_once() {
        let w = Warned::default();
        assert!(w.first("a", 1));
        assert!(!w.first("a", 1));
        assert!(w.first("a", 2));
        assert!(w.first("b", 1));
    }
}
