//! Kubernetes node annotation keys (upstream `pkg/subnet/kube/annotations.go`).
//!
//! In Kubernetes mode each node's lease lives in annotations on its Node object. The keys are
//! built from `--kube-annotation-prefix`, normalised and validated exactly as upstream does, so
//! Go and Rust nodes in one cluster read each other's annotations.

use std::sync::LazyLock;

use regex::Regex;

use crate::family::IpFamily;

/// Upstream's default `--kube-annotation-prefix`.
pub const DEFAULT_PREFIX: &str = "flannel.alpha.coreos.com";

/// Why an annotation prefix was rejected; `Display` is upstream's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    /// The prefix has more than one `/`.
    #[error("subnet/kube: prefix can contain at most single slash")]
    TooManySlashes,
    /// The normalised prefix does not look like `fqdn/[name-]`.
    #[error("subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*")]
    BadFormat,
}

/// Upstream's validation regex. Like Go's `regexp.MatchString` it is unanchored at the start,
/// so only a suffix has to look like `fqdn/[name-]`; the Rust `regex` crate matches with the
/// same leftmost-first semantics.
static PREFIX_RE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
        .unwrap_or_else(|e| unreachable!("constant regex: {e}"))
});

/// The full annotation keys for one prefix.
///
/// With the default prefix they read `flannel.alpha.coreos.com/backend-type` and so on; with
/// `example.com/net` they read `example.com/net-backend-type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationKeys {
    prefix: String,
    /// `kube-subnet-manager`: `"true"` marks a node as managed by flannel; other nodes are
    /// ignored by every watcher.
    pub kube_subnet_manager: String,
    /// `backend-type`: the lease's backend type, e.g. `vxlan`.
    pub backend_type: String,
    /// `backend-data`: the lease's backend data as JSON text.
    pub backend_data: String,
    /// `backend-v6-data`: backend data for the IPv6 device.
    pub backend_v6_data: String,
    /// `public-ip`: the node's underlay IPv4 address.
    pub public_ip: String,
    /// `public-ipv6`: the node's underlay IPv6 address.
    pub public_ipv6: String,
    /// `public-ip-overwrite`: set by the user (e.g. behind NAT); flannel publishes it as
    /// `public-ip`.
    pub public_ip_overwrite: String,
    /// `public-ipv6-overwrite`: the same for IPv6.
    pub public_ipv6_overwrite: String,
    /// `node-public-ip`: set by the user; used as `--public-ip` at start-up.
    pub node_public_ip: String,
    /// `node-public-ipv6`: set by the user; used as `--public-ipv6` at start-up.
    pub node_public_ipv6: String,
}

/// Normalises a prefix as upstream's `newAnnotations` does: at most one `/`; without a slash
/// one is appended; a prefix then ending in neither `/` nor `-` gets a `-`; the result must
/// match upstream's regex.
pub fn normalize_prefix(prefix: &str) -> Result<String, AnnotationError> {
    let mut prefix = prefix.to_string();
    match prefix.matches('/').count() {
        0 => prefix.push('/'),
        1 => {}
        _ => return Err(AnnotationError::TooManySlashes),
    }
    if !prefix.ends_with('/') && !prefix.ends_with('-') {
        prefix.push('-');
    }
    if PREFIX_RE.is_match(&prefix) {
        Ok(prefix)
    } else {
        Err(AnnotationError::BadFormat)
    }
}

impl AnnotationKeys {
    /// Builds the keys for `--kube-annotation-prefix` (see [`normalize_prefix`]).
    pub fn new(prefix: &str) -> Result<Self, AnnotationError> {
        let prefix = normalize_prefix(prefix)?;
        let key = |name: &str| format!("{prefix}{name}");
        Ok(AnnotationKeys {
            kube_subnet_manager: key("kube-subnet-manager"),
            backend_type: key("backend-type"),
            backend_data: key("backend-data"),
            backend_v6_data: key("backend-v6-data"),
            public_ip: key("public-ip"),
            public_ipv6: key("public-ipv6"),
            public_ip_overwrite: key("public-ip-overwrite"),
            public_ipv6_overwrite: key("public-ipv6-overwrite"),
            node_public_ip: key("node-public-ip"),
            node_public_ipv6: key("node-public-ipv6"),
            prefix,
        })
    }

    /// The normalised prefix every key starts with (`flannel.alpha.coreos.com/`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys that exist once per address family, for code written once for both.
    pub fn family(&self, family: IpFamily) -> FamilyAnnotationKeys<'_> {
        family.pick(
            FamilyAnnotationKeys {
                public_ip: &self.public_ip,
                backend_data: &self.backend_data,
                public_ip_overwrite: &self.public_ip_overwrite,
                node_public_ip: &self.node_public_ip,
            },
            FamilyAnnotationKeys {
                public_ip: &self.public_ipv6,
                backend_data: &self.backend_v6_data,
                public_ip_overwrite: &self.public_ipv6_overwrite,
                node_public_ip: &self.node_public_ipv6,
            },
        )
    }
}

/// One address family's annotation keys (`public-ip`, `backend-data`, ... or their `v6`
/// twins), see [`AnnotationKeys::family`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FamilyAnnotationKeys<'a> {
    /// `public-ip` / `public-ipv6`.
    pub public_ip: &'a str,
    /// `backend-data` / `backend-v6-data`.
    pub backend_data: &'a str,
    /// `public-ip-overwrite` / `public-ipv6-overwrite`.
    pub public_ip_overwrite: &'a str,
    /// `node-public-ip` / `node-public-ipv6`.
    pub node_public_ip: &'a str,
}

impl Default for AnnotationKeys {
    /// The keys for [`DEFAULT_PREFIX`].
    fn default() -> Self {
        AnnotationKeys::new(DEFAULT_PREFIX)
            .unwrap_or_else(|e| unreachable!("the default prefix is valid: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_prefix_keys() {
        let k = AnnotationKeys::default();
        assert_eq!(k.prefix(), "flannel.alpha.coreos.com/");
        assert_eq!(
            k.kube_subnet_manager,
            "flannel.alpha.coreos.com/kube-subnet-manager"
        );
        assert_eq!(k.backend_type, "flannel.alpha.coreos.com/backend-type");
        assert_eq!(k.backend_data, "flannel.alpha.coreos.com/backend-data");
        assert_eq!(
            k.backend_v6_data,
            "flannel.alpha.coreos.com/backend-v6-data"
        );
        assert_eq!(k.public_ip, "flannel.alpha.coreos.com/public-ip");
        assert_eq!(k.public_ipv6, "flannel.alpha.coreos.com/public-ipv6");
        assert_eq!(
            k.public_ip_overwrite,
            "flannel.alpha.coreos.com/public-ip-overwrite"
        );
        assert_eq!(
            k.public_ipv6_overwrite,
            "flannel.alpha.coreos.com/public-ipv6-overwrite"
        );
        assert_eq!(k.node_public_ip, "flannel.alpha.coreos.com/node-public-ip");
        assert_eq!(
            k.node_public_ipv6,
            "flannel.alpha.coreos.com/node-public-ipv6"
        );
    }

    #[test]
    fn reference_examples() {
        assert_eq!(
            AnnotationKeys::new("flannel.alpha.coreos.com")
                .unwrap()
                .backend_type,
            "flannel.alpha.coreos.com/backend-type"
        );
        assert_eq!(
            AnnotationKeys::new("flannel.alpha.coreos.com/prefix")
                .unwrap()
                .backend_type,
            "flannel.alpha.coreos.com/prefix-backend-type"
        );
    }

    #[test]
    fn upstream_test_cases() {
        for (prefix, backend_type) in [
            (
                "flannel.alpha.coreos.com",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/",
                "flannel.alpha.coreos.com/backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            (
                "flannel.alpha.coreos.com/prefix-",
                "flannel.alpha.coreos.com/prefix-backend-type",
            ),
            ("org.com", "org.com/backend-type"),
            ("org9.com", "org9.com/backend-type"),
            ("org.com/9", "org.com/9-backend-type"),
            ("org.com/a_b", "org.com/a_b-backend-type"),
        ] {
            assert_eq!(
                AnnotationKeys::new(prefix).unwrap().backend_type,
                backend_type,
                "{prefix}"
            );
        }
        for prefix in ["org", "org/", "org/prefix", "org.COM", "org.com/PREFIX"] {
            assert_eq!(
                AnnotationKeys::new(prefix).unwrap_err(),
                AnnotationError::BadFormat,
                "{prefix}"
            );
        }
    }

    #[test]
    fn too_many_slashes() {
        let e = AnnotationKeys::new("a.b/c/d").unwrap_err();
        assert_eq!(e, AnnotationError::TooManySlashes);
        assert_eq!(
            e.to_string(),
            "subnet/kube: prefix can contain at most single slash"
        );
        assert_eq!(
            normalize_prefix("//").unwrap_err(),
            AnnotationError::TooManySlashes
        );
    }

    #[test]
    fn bad_format_text() {
        let e = AnnotationKeys::new("").unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*"
        );
        // A lone "-" after the slash cannot match `(?:[a-z0-9_-]+-)?`.
        assert_eq!(normalize_prefix("a.b/-"), Err(AnnotationError::BadFormat));
        assert_eq!(normalize_prefix(".b"), Err(AnnotationError::BadFormat));
        assert_eq!(normalize_prefix("a..b"), Err(AnnotationError::BadFormat));
        assert_eq!(normalize_prefix("a.b./x"), Err(AnnotationError::BadFormat));
    }

    #[test]
    fn unanchored_match_like_go() {
        // Go's MatchString only needs a matching suffix, so a leading upper-case label or stray
        // characters before a valid FQDN are accepted upstream, and here.
        assert_eq!(
            normalize_prefix("Foo.example.com").unwrap(),
            "Foo.example.com/"
        );
        assert_eq!(normalize_prefix("@x.y").unwrap(), "@x.y/");
        assert_eq!(normalize_prefix("a..b.c").unwrap(), "a..b.c/");
    }
}
