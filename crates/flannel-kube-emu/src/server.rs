//! HTTP/1.1 front end: routing, query parameters, content negotiation, and the `/emu/` test
//! controls (watch streams are in `watch_stream`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::discovery::{self, AGGREGATED_CONTENT_TYPE, Media, negotiate};
use crate::metrics::{Counter, RequestLabels};
use crate::selector::Selector;
use crate::store::{Kind, ListQuery, PatchType, Propagation, Subresource, WatchFrom};
use crate::table::{IncludeObject, TableOptions, table};
use crate::watch_stream::{WatchSpec, watch_response};
use crate::{ApiError, Emulator};

/// The response body type: a full body or a watch stream.
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// Largest request body accepted.
const MAX_BODY: usize = 1 << 20;

pub(crate) async fn accept_loop(
    emu: Emulator,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let emu = emu.clone();
        let stop = shutdown.clone();
        let tls = emu
            .inner
            .security
            .tls
            .as_ref()
            .map(crate::TlsIdentity::acceptor);
        tokio::spawn(async move {
            match tls {
                None => serve_connection(emu, stream, peer, stop).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => serve_connection(emu, stream, peer, stop).await,
                        Ok(Err(e)) => debug!("TLS handshake with {peer}: {e}"),
                        Err(_) => debug!("TLS handshake with {peer}: timed out"),
                    }
                }
            }
        });
    }
}

/// How long a client may take to complete its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves HTTP/1.1 on one accepted (and, with TLS, decrypted) connection until it closes or
/// the server stops.
async fn serve_connection<S>(
    emu: Emulator,
    stream: S,
    peer: std::net::SocketAddr,
    mut stop: watch::Receiver<bool>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let emu = emu.clone();
        async move { Ok::<_, std::convert::Infallible>(handle(emu, req).await) }
    });
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
    tokio::select! {
        r = conn => if let Err(e) = r {
            debug!("connection from {peer}: {e}");
        },
        _ = stop.changed() => {}
    }
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn error_response(e: &ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &e.to_status())
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (percent_decode(k), percent_decode(v)),
            None => (percent_decode(p), String::new()),
        })
        .collect()
}

fn parse_rv(q: &HashMap<String, String>) -> Result<Option<u64>, ApiError> {
    match q.get("resourceVersion").map(String::as_str) {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {s:?}"))),
    }
}

fn truthy(q: &HashMap<String, String>, key: &str) -> bool {
    matches!(q.get(key).map(String::as_str), Some("1" | "true"))
}

async fn read_json(req: Request<Incoming>) -> Result<(String, Value), ApiError> {
    let content_type = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let body = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    let v = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
    Ok((content_type, v))
}

fn header(req: &Request<Incoming>, name: hyper::header::HeaderName) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn handle(emu: Emulator, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    debug!("{method} {}", req.uri());
    let counter = request_labels(&req).map(|l| emu.inner.metrics.counter(l));
    let mut req = req;
    let checked = crate::gate::check(&emu, &req, &query(&req));
    let response = match checked {
        Ok(user) => {
            if let Some(user) = user {
                req.extensions_mut().insert(user);
            }
            route(&emu, req).await
        }
        Err(e) => Err(e),
    };
    let response = match response {
        Ok(r) => r,
        Err(e) => {
            debug!("{method} {path}: {e}");
            error_response(&e)
        }
    };
    match counter {
        Some(c) => counted(c, response),
        None => response,
    }
}

/// The metrics labels of a request; `None` for `/metrics` and the `/emu/` controls.
fn request_labels(req: &Request<Incoming>) -> Option<RequestLabels> {
    let segs: Vec<&str> = req.uri().path().trim_matches('/').split('/').collect();
    if matches!(segs.first(), Some(&("emu" | "metrics"))) {
        return None;
    }
    let method = req.method().as_str().to_ascii_lowercase();
    let Some(t) = Target::parse(&segs) else {
        return Some(RequestLabels {
            verb: method,
            resource: String::new(),
            subresource: String::new(),
        });
    };
    let verb = match (req.method(), t.name.is_some()) {
        (&Method::GET, false) if truthy(&query(req), "watch") => "watch".to_string(),
        (&Method::GET, false) => "list".to_string(),
        (&Method::GET, true) => "get".to_string(),
        (&Method::POST, _) => "create".to_string(),
        (&Method::PUT, _) => "update".to_string(),
        (&Method::PATCH, _) => "patch".to_string(),
        (&Method::DELETE, _) => "delete".to_string(),
        _ => method,
    };
    Some(RequestLabels {
        verb,
        resource: t.kind.resource().to_string(),
        subresource: match t.sub {
            Subresource::Status => "status".to_string(),
            Subresource::Main => String::new(),
        },
    })
}

/// Counts the request and every body frame sent (a watch's events as they go out).
fn counted(counter: Arc<Counter>, response: Response<Body>) -> Response<Body> {
    counter.requests.fetch_add(1, Ordering::Relaxed);
    response.map(|body| {
        body.map_frame(move |frame| {
            if let Some(data) = frame.data_ref() {
                counter
                    .bytes
                    .fetch_add(data.len() as u64, Ordering::Relaxed);
                counter.frames.fetch_add(1, Ordering::Relaxed);
            }
            frame
        })
        .boxed_unsync()
    })
}

/// The emulator's `/version`: a 1.33 server, named so nobody mistakes it for a real one.
fn version() -> Value {
    json!({
        "major": "1", "minor": "33", "gitVersion": "v1.33.0-flannel-kube-emu",
        "platform": "linux/amd64"
    })
}

async fn route(emu: &Emulator, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let accept = header(&req, hyper::header::ACCEPT);
    let accept = accept.as_deref();
    match (segs.as_slice(), &method) {
        (["healthz" | "readyz" | "livez"], &Method::GET) => {
            Ok(full(StatusCode::OK, "text/plain", "ok"))
        }
        (["version"], &Method::GET) => Ok(json_response(StatusCode::OK, &version())),
        (["metrics"], &Method::GET) => Ok(full(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            emu.inner.metrics.render(),
        )),
        ([root @ ("api" | "apis")], &Method::GET) => {
            let host = header(&req, hyper::header::HOST).unwrap_or_default();
            Ok(match (negotiate(accept, false, true)?, *root) {
                (Media::Aggregated, "api") => full(
                    StatusCode::OK,
                    AGGREGATED_CONTENT_TYPE,
                    discovery::aggregated_core().to_string(),
                ),
                (Media::Aggregated, _) => full(
                    StatusCode::OK,
                    AGGREGATED_CONTENT_TYPE,
                    discovery::aggregated_groups().to_string(),
                ),
                (_, "api") => json_response(StatusCode::OK, &discovery::api_versions(&host)),
                _ => json_response(StatusCode::OK, &discovery::api_group_list()),
            })
        }
        (["api", "v1"], &Method::GET) => {
            negotiate(accept, false, false)?;
            Ok(json_response(
                StatusCode::OK,
                &discovery::api_resource_list(""),
            ))
        }
        (["apis", group], &Method::GET) if discovery::GROUPS.contains(group) => {
            negotiate(accept, false, false)?;
            let doc = discovery::api_group(group).ok_or_else(ApiError::no_route)?;
            Ok(json_response(StatusCode::OK, &doc))
        }
        (["apis", group, "v1"], &Method::GET) if discovery::GROUPS.contains(group) => {
            negotiate(accept, false, false)?;
            Ok(json_response(
                StatusCode::OK,
                &discovery::api_resource_list(group),
            ))
        }
        (["api"] | ["apis"] | ["api", "v1"], _) => Err(ApiError::method_not_allowed()),
        (["apis", group] | ["apis", group, "v1"], _) if discovery::GROUPS.contains(group) => {
            Err(ApiError::method_not_allowed())
        }
        (["emu", ..], _) => control(emu, req, &segs).await,
        (
            [
                "api",
                "v1",
                "namespaces",
                ns,
                "serviceaccounts",
                name,
                "token",
            ],
            &Method::POST,
        ) => {
            let (ns, name) = (ns.to_string(), name.to_string());
            let body = read_token_request(req).await?;
            let answer = crate::token_request::token_request(emu, &ns, &name, &body)?;
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        (["api", "v1", "namespaces", _, "serviceaccounts", _, "token"], _) => {
            Err(ApiError::method_not_allowed())
        }
        (["apis", "authentication.k8s.io", "v1", "selfsubjectreviews"], &Method::POST) => {
            let user = req.extensions().get::<crate::UserInfo>().cloned();
            Ok(json_response(
                StatusCode::CREATED,
                &crate::review::self_subject_review(user),
            ))
        }
        (
            [
                "apis",
                "authorization.k8s.io",
                "v1",
                "selfsubjectaccessreviews",
            ],
            &Method::POST,
        ) => {
            let user = req.extensions().get::<crate::UserInfo>().cloned();
            let body = read_review(req).await?;
            let answer = crate::review::self_subject_access_review(emu, user, body)?;
            Ok(json_response(StatusCode::CREATED, &answer))
        }
        _ => match Target::parse(&segs) {
            Some(t) => resource(emu, req, t, accept).await,
            None => Err(ApiError::no_route()),
        },
    }
}

/// The object or collection a path under `/api/v1` or `/apis/<group>/v1` addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    kind: Kind,
    /// The namespace in the path (`/api/v1/namespaces/<ns>/pods...`).
    namespace: Option<String>,
    /// The object's name; `None` for the collection.
    name: Option<String>,
    sub: Subresource,
}

impl Target {
    fn parse(segs: &[&str]) -> Option<Target> {
        let (group, rest) = match segs {
            ["api", "v1", rest @ ..] => ("", rest),
            ["apis", group, "v1", rest @ ..] if !group.is_empty() => (*group, rest),
            _ => return None,
        };
        let kind_of = |res: &str| {
            Kind::ALL
                .into_iter()
                .find(|k| k.group() == group && k.resource() == res)
        };
        let target = |kind: Kind, ns: Option<&str>, name: Option<&str>, status: bool| {
            if status && !kind.has_status() {
                return None;
            }
            Some(Target {
                kind,
                namespace: ns.map(str::to_string),
                name: name.map(str::to_string),
                sub: if status {
                    Subresource::Status
                } else {
                    Subresource::Main
                },
            })
        };
        match rest {
            ["namespaces", ns, res, rest @ ..] if kind_of(res).is_some() => {
                let kind = kind_of(res)?;
                if !kind.namespaced() {
                    return None;
                }
                match rest {
                    [] => target(kind, Some(ns), None, false),
                    [name] => target(kind, Some(ns), Some(name), false),
                    [name, "status"] => target(kind, Some(ns), Some(name), true),
                    _ => None,
                }
            }
            [res, rest @ ..] => {
                let kind = kind_of(res)?;
                match rest {
                    [] => target(kind, None, None, false),
                    [name] if !kind.namespaced() => target(kind, None, Some(name), false),
                    [name, "status"] if !kind.namespaced() => target(kind, None, Some(name), true),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}

/// The body of a create or replace, which must be JSON: protobuf (what client-go's typed
/// clients send, e.g. `kubectl create namespace`) is `415`, as from a server without it.
async fn read_object(req: Request<Incoming>) -> Result<(String, Value), ApiError> {
    let ct = header(&req, hyper::header::CONTENT_TYPE).unwrap_or_default();
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !matches!(mime, "" | "application/json") {
        return Err(ApiError::unsupported_media_type(mime));
    }
    read_json(req).await
}

/// A JSON body as is, or the protobuf one client-go's typed clients send, decoded by
/// `decode` (`None`: JSON).
async fn read_json_or_protobuf(
    req: Request<Incoming>,
    decode: fn(&[u8]) -> Result<Value, ApiError>,
) -> Result<Value, ApiError> {
    let ct = header(&req, hyper::header::CONTENT_TYPE).unwrap_or_default();
    if ct.split(';').next().unwrap_or("").trim() != "application/vnd.kubernetes.protobuf" {
        return Ok(read_object(req).await?.1);
    }
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    decode(&bytes)
}

/// A TokenRequest body (`kubectl create token` sends protobuf).
async fn read_token_request(req: Request<Incoming>) -> Result<Value, ApiError> {
    read_json_or_protobuf(req, crate::protobuf::token_request).await
}

/// A SelfSubjectAccessReview body (`kubectl auth can-i` sends protobuf).
async fn read_review(req: Request<Incoming>) -> Result<Value, ApiError> {
    read_json_or_protobuf(req, crate::protobuf::self_subject_access_review).await
}

fn patch_type(content_type: &str) -> Result<PatchType, ApiError> {
    match content_type {
        "application/merge-patch+json" => Ok(PatchType::Merge),
        "application/strategic-merge-patch+json" => Ok(PatchType::Strategic),
        other => Err(ApiError::unsupported_media_type(other)),
    }
}

/// Get, list, watch, create, replace, patch and delete of any kind.
async fn resource(
    emu: &Emulator,
    req: Request<Incoming>,
    t: Target,
    accept: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let ns = t.namespace.clone().unwrap_or_default();
    let (kind, sub) = (t.kind, t.sub);
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match (t.name.as_deref(), req.method().clone()) {
        (None, Method::GET) => list_or_watch(emu, &query(&req), &t, accept),
        (None, Method::POST) if t.namespace.is_some() || !kind.namespaced() => {
            let (_, body) = read_object(req).await?;
            let created = emu.store().create(kind, &ns, body)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Some(name), Method::GET) => {
            let q = query(&req);
            let obj = emu.store().get(kind, &ns, name)?;
            match table_options(accept, &q)? {
                Some(opts) => {
                    let rv = obj["metadata"]["resourceVersion"]
                        .as_str()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    ok(table(kind, &[obj], rv, None, &opts))
                }
                None => ok(obj),
            }
        }
        (Some(name), Method::PUT) => {
            let (_, body) = read_object(req).await?;
            ok(emu.store().replace(kind, &ns, name, body, sub)?)
        }
        (Some(name), Method::PATCH) => {
            let (ct, body) = read_json(req).await?;
            let pt = patch_type(&ct)?;
            ok(emu.store().patch(kind, &ns, name, &body, pt, sub)?)
        }
        (Some(name), Method::DELETE) if sub == Subresource::Main => {
            let propagation = propagation(req).await?;
            ok(emu.store().delete_with(kind, &ns, name, propagation)?)
        }
        _ => Err(ApiError::method_not_allowed()),
    }
}

/// The `propagationPolicy` of a DELETE, from the query or a `DeleteOptions` body (kubectl sends
/// the body); `Background` when neither says.
async fn propagation(req: Request<Incoming>) -> Result<Propagation, ApiError> {
    let mut policy = query(&req).get("propagationPolicy").cloned();
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?
        .to_bytes();
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let options: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::bad_request(format!("the request body is not JSON: {e}")))?;
        if let Some(p) = options["propagationPolicy"].as_str() {
            policy = Some(p.to_string());
        }
    }
    match policy.as_deref() {
        None | Some("" | "Background" | "Foreground") => Ok(Propagation::Background),
        Some("Orphan") => Ok(Propagation::Orphan),
        Some(other) => Err(ApiError::bad_request(format!(
            "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
        ))),
    }
}

/// The Table rendering a GET asked for in its `Accept` header, if any.
fn table_options(
    accept: Option<&str>,
    q: &HashMap<String, String>,
) -> Result<Option<TableOptions>, ApiError> {
    Ok(match negotiate(accept, true, false)? {
        Media::Table(api_version) => Some(TableOptions {
            api_version,
            include: IncludeObject::parse(q.get("includeObject").map(String::as_str))?,
            no_headers: false,
        }),
        Media::Json | Media::Aggregated => None,
    })
}

fn list_or_watch(
    emu: &Emulator,
    q: &HashMap<String, String>,
    t: &Target,
    accept: Option<&str>,
) -> Result<Response<Body>, ApiError> {
    let kind = t.kind;
    let table_opts = table_options(accept, q)?;
    let selector = Selector::parse(
        kind,
        q.get("labelSelector").map(String::as_str),
        q.get("fieldSelector").map(String::as_str),
    )?;
    if truthy(q, "sendInitialEvents") {
        return Err(ApiError::bad_request(
            "sendInitialEvents (streaming lists) is not emulated by flannel-kube-emu",
        ));
    }
    let rv = parse_rv(q)?;
    if truthy(q, "watch") {
        let timeout = match q.get("timeoutSeconds") {
            Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
            })?)),
            None => None,
        };
        return Ok(watch_response(
            emu,
            WatchSpec {
                kind,
                namespace: t.namespace.clone(),
                selector,
                from: match rv {
                    None | Some(0) => WatchFrom::Now,
                    Some(n) => WatchFrom::After(n),
                },
                bookmarks: truthy(q, "allowWatchBookmarks"),
                timeout,
                table: table_opts,
            },
        ));
    }
    let limit = match q.get("limit") {
        Some(l) if !l.is_empty() => Some(
            l.parse::<usize>()
                .map_err(|_| ApiError::bad_request(format!("invalid limit {l:?}")))?,
        ),
        _ => None,
    };
    emu.inner.stats.lists.fetch_add(1, Ordering::SeqCst);
    let page = emu.store().list(
        kind,
        &ListQuery {
            namespace: t.namespace.as_deref(),
            selector,
            resource_version: rv,
            exact: q.get("resourceVersionMatch").map(String::as_str) == Some("Exact"),
            limit,
            continue_token: q
                .get("continue")
                .map(String::as_str)
                .filter(|c| !c.is_empty()),
        },
    )?;
    if let Some(opts) = table_opts {
        let t = table(
            kind,
            &page.items,
            page.resource_version,
            page.continue_token.as_deref(),
            &opts,
        );
        return Ok(json_response(StatusCode::OK, &t));
    }
    let mut metadata = json!({ "resourceVersion": page.resource_version.to_string() });
    if let Some(c) = page.continue_token {
        metadata["continue"] = json!(c);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": kind.api_version(),
            "metadata": metadata,
            "items": page.items,
        }),
    ))
}

/// The `/emu/` test controls.
async fn control(
    emu: &Emulator,
    req: Request<Incoming>,
    segs: &[&str],
) -> Result<Response<Body>, ApiError> {
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match (segs, req.method().clone()) {
        (["emu", "state"], Method::GET) => ok(emu.state()),
        (["emu", "revoke-token"], Method::POST) => {
            let (_, body) = read_json(req).await?;
            let token = body["token"]
                .as_str()
                .ok_or_else(|| ApiError::bad_request("expected {\"token\": \"...\"}"))?;
            ok(json!({ "revoked": emu.revoke_token(token) }))
        }
        (["emu", "drop-watches"], Method::POST) => {
            emu.drop_watches();
            ok(emu.state())
        }
        (["emu", "expire-watches"], Method::POST) => {
            emu.expire_watches();
            ok(emu.state())
        }
        (["emu", "compact"], Method::POST) => {
            emu.compact();
            ok(emu.state())
        }
        (["emu", "history"], Method::PUT) => {
            let (_, body) = read_json(req).await?;
            let n = body
                .as_u64()
                .ok_or_else(|| ApiError::bad_request("expected a number"))?;
            emu.set_history(usize::try_from(n).unwrap_or(usize::MAX));
            ok(emu.state())
        }
        (["emu", "nodes", name, "pod-cidrs"], Method::PUT) => {
            let name = name.to_string();
            let (_, body) = read_json(req).await?;
            let cidrs: Vec<String> = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("expected a list of CIDRs: {e}")))?;
            ok(emu.store().force_pod_cidrs(&name, &cidrs)?)
        }
        (["emu", "churn", "annotations"], Method::POST) => {
            let (_, body) = read_json(req).await?;
            let k = body["count"]
                .as_u64()
                .ok_or_else(|| ApiError::bad_request("expected {\"count\": K}"))?;
            let churn = emu.churn_annotations(usize::try_from(k).unwrap_or(usize::MAX))?;
            let changes: Vec<Value> = churn
                .changes
                .iter()
                .map(|c| {
                    json!({
                        "name": c.name, "vtepMAC": c.vtep_mac,
                        "resourceVersion": c.resource_version,
                    })
                })
                .collect();
            ok(json!({ "unixNanos": churn.unix_nanos.to_string(), "changes": changes }))
        }
        (["emu", _] | ["emu", "nodes", _, "pod-cidrs"] | ["emu", "churn", "annotations"], _) => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::no_route()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab"), "a:b");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
