//! 401 and 403 answers from the API server, told so that an operator knows what to fix.
//!
//! kube-rs reports both as an `ApiError` with the server's Status; in a log line that reads
//! as any other failure. Both have one usual cause each: a 401 means the credentials (in a pod:
//! the ServiceAccount token) are missing, expired or revoked; a 403 means RBAC does not grant
//! what was asked, usually because the ClusterRole or its binding from the manifest was not
//! applied or was edited. The texts say which request was refused and that.

/// One kind of request: the verb and the resource (with its subresource) as RBAC names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// `get`, `list`, `watch`, `patch`, ...
    pub verb: &'static str,
    /// `nodes`, `nodes/status`, `pods`, ...
    pub resource: &'static str,
}

impl Access {
    /// `verb` on `resource`.
    pub const fn new(verb: &'static str, resource: &'static str) -> Access {
        Access { verb, resource }
    }
}

/// A request the API server refused for who we are (401) or for what we may do (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server did not accept the credentials.
    #[error(
        "401 Unauthorized: the API server did not accept our credentials to {} {}; the ServiceAccount token is missing, expired or revoked (the token file is re-read before every request)",
        .access.verb, .access.resource
    )]
    Unauthorized {
        /// What was asked.
        access: Access,
    },
    /// The server knows who we are and RBAC does not allow the request.
    #[error(
        "403 Forbidden: not allowed to {} {}: {message}; RBAC is the likely cause: the ClusterRole bound to this ServiceAccount must grant \"{}\" on \"{}\" (the ClusterRole \"flannel\" of deploy/kube-flannel.yml and of the chart grants what flannel-rs needs)",
        .access.verb, .access.resource, .access.verb, .access.resource
    )]
    Forbidden {
        /// What was asked.
        access: Access,
        /// The server's message (which user, which object).
        message: String,
    },
}

impl Refusal {
    /// The refusal `error` is, if it is one.
    pub fn of(access: Access, error: &kube::Error) -> Option<Refusal> {
        let kube::Error::Api(status) = error else {
            return None;
        };
        match status.code {
            401 => Some(Refusal::Unauthorized { access }),
            403 => Some(Refusal::Forbidden {
                access,
                message: status.message.clone(),
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, "Forbidden").with_code(code),
        ))
    }

    #[test]
    fn refusals_name_the_request_and_the_cause() {
        let patch = Access::new("patch", "nodes/status");
        let msg = "nodes \"n1\" is forbidden: User \"system:serviceaccount:kube-flannel:flannel\" cannot patch resource \"nodes/status\" in API group \"\" at the cluster scope";
        let r = Refusal::of(patch, &api(403, msg)).unwrap();
        assert_eq!(
            r.to_string(),
            format!(
                "403 Forbidden: not allowed to patch nodes/status: {msg}; RBAC is the likely cause: the ClusterRole bound to this ServiceAccount must grant \"patch\" on \"nodes/status\" (the ClusterRole \"flannel\" of deploy/kube-flannel.yml and of the chart grants what flannel-rs needs)"
            )
        );
        let r = Refusal::of(Access::new("watch", "nodes"), &api(401, "Unauthorized")).unwrap();
        assert!(
            r.to_string().starts_with(
                "401 Unauthorized: the API server did not accept our credentials to watch nodes; "
            ),
            "{r}"
        );
        assert_eq!(Refusal::of(patch, &api(409, "conflict")), None);
    }
}
