//! Building the Kubernetes client from flanneld's flags, as client-go's
//! `clientcmd.BuildConfigFromFlags(--kube-api-url, --kubeconfig-file)` does, and finding our
//! node's name.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tower::util::MapRequestLayer;
use tracing::warn;

use super::KubeError;
use super::refusal::{Access, Refusal};
use super::token_file::TokenFile;
use crate::DatastoreCause;

/// How long one API request may take before it counts as failed. The node watch is not
/// affected: it has its own deadline (`watch::WATCH_TIMEOUT_SECS` and a margin).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds the client configuration:
/// * `--kubeconfig-file` given: that file's current context, with its server replaced by
///   `--kube-api-url` when that is given too;
/// * only `--kube-api-url`: that server, no credentials, system trust roots (an `http://` URL
///   is accepted, as client-go accepts it);
/// * neither: the in-cluster service-account config (`KUBERNETES_SERVICE_HOST`/`PORT`, token
///   and CA under `/var/run/secrets/kubernetes.io/serviceaccount`).
pub async fn client_config(api_url: &str, kubeconfig: &str) -> Result<Config, KubeError> {
    let url = if api_url.is_empty() {
        None
    } else {
        Some(
            api_url
                .parse::<http::Uri>()
                .map_err(config_failed(format!("invalid --kube-api-url {api_url:?}")))?,
        )
    };
    let mut config = if !kubeconfig.is_empty() {
        let file = Kubeconfig::read_from(kubeconfig)
            .map_err(config_failed(format!("reading {kubeconfig}")))?;
        Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
            .await
            .map_err(config_failed(kubeconfig))?
    } else if let Some(url) = &url {
        Config::new(url.clone())
    } else {
        warn!(
            "Neither --kubeconfig-file nor --kube-api-url was specified. Using the inClusterConfig."
        );
        Config::incluster().map_err(config_failed("in-cluster config"))?
    };
    if let Some(url) = url {
        config.cluster_url = url;
    }
    Ok(config)
}

/// Builds the client from flanneld's flags (see [`client_config`]). A bearer token from a file
/// (in-cluster config, or a kubeconfig's `tokenFile`) is sent through [`TokenFile`], which
/// picks up a replaced file at the next request instead of within a minute as kube-rs would:
/// a rotated token whose predecessor was revoked at once then costs no failed request.
pub async fn client(api_url: &str, kubeconfig: &str) -> Result<Client, KubeError> {
    let mut config = client_config(api_url, kubeconfig).await?;
    // An inline token takes precedence over the file, as in kube-rs and client-go.
    let token_file = if config.auth_info.token.is_none() {
        config.auth_info.token_file.take()
    } else {
        None
    };
    let builder = ClientBuilder::try_from(config).map_err(KubeError::Client)?;
    let Some(path) = token_file else {
        return Ok(builder.build());
    };
    let tokens = std::sync::Arc::new(TokenFile::open(&path).map_err(|e| KubeError::Config {
        context: "in-cluster config".into(),
        source: e.into(),
    })?);
    let layer = MapRequestLayer::new(move |mut req: http::Request<kube::client::Body>| {
        req.headers_mut()
            .insert(http::header::AUTHORIZATION, tokens.header());
        req
    });
    Ok(builder.with_layer(&layer).build())
}

/// [`KubeError::Config`] for a failure while reading `context`.
fn config_failed<E>(context: impl Into<String>) -> impl FnOnce(E) -> KubeError
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let context = context.into();
    move |e| KubeError::Config {
        context,
        source: e.into(),
    }
}

/// Awaits one API request (`access`, for telling a 401 or 403) for at most [`REQUEST_TIMEOUT`].
pub(super) async fn within_timeout<T>(
    access: Access,
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, DatastoreCause> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(result) => result.map_err(|e| match Refusal::of(access, &e) {
            Some(r) => DatastoreCause::Refused(r),
            None => DatastoreCause::from(e),
        }),
        Err(_) => Err(format!("timed out after {REQUEST_TIMEOUT:?}").into()),
    }
}

/// Our node's name (upstream's rules): `NODE_NAME`; otherwise `POD_NAME` and `POD_NAMESPACE`
/// must both be set and the pod's `spec.nodeName` is used (why RBAC grants `pods get`).
pub async fn node_name(
    client: &Client,
    node_name: Option<&str>,
    pod_name: Option<&str>,
    pod_namespace: Option<&str>,
) -> Result<String, KubeError> {
    if let Some(n) = node_name.filter(|n| !n.is_empty()) {
        return Ok(n.to_string());
    }
    let (Some(pod), Some(ns)) = (
        pod_name.filter(|s| !s.is_empty()),
        pod_namespace.filter(|s| !s.is_empty()),
    ) else {
        return Err(KubeError::NodeName(
            "env variables POD_NAME and POD_NAMESPACE must be set".into(),
        ));
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let got = within_timeout(Access::new("get", "pods"), pods.get(pod))
        .await
        .map_err(|source| KubeError::PodLookup {
            pod: format!("{ns}/{pod}"),
            source,
        })?;
    got.spec
        .and_then(|s| s.node_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            KubeError::NodeName(format!("node name not present in pod spec '{ns}/{pod}'"))
        })
}
