//! Building the Kubernetes client from flanneld's flags, as client-go's
//! `clientcmd.BuildConfigFromFlags(--kube-api-url, --kubeconfig-file)` does, and finding our
//! node's name.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use tracing::warn;

use super::KubeError;
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

/// Awaits one API request for at most [`REQUEST_TIMEOUT`].
pub(super) async fn within_timeout<T>(
    fut: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, DatastoreCause> {
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(result) => result.map_err(DatastoreCause::from),
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
    let got = within_timeout(pods.get(pod))
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
