//! HTTP/1.1 front end: routing, query parameters, watch streams and the `/emu/` test controls.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tracing::{debug, warn};

use crate::store::{Change, Kind, PatchType, Subresource, WatchFrom};
use crate::{ApiError, Emulator};

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

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
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let emu = emu.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(emu, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!("connection from {peer}: {e}");
                },
                _ = stop.changed() => {}
            }
        });
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

async fn handle(emu: Emulator, req: Request<Incoming>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    debug!("{method} {}", req.uri());
    match route(&emu, req).await {
        Ok(r) => r,
        Err(e) => {
            debug!("{method} {path}: {e}");
            error_response(&e)
        }
    }
}

async fn route(emu: &Emulator, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let ok = |v: Value| Ok(json_response(StatusCode::OK, &v));
    match (segs.as_slice(), &method) {
        (["healthz" | "readyz" | "livez"], &Method::GET) => {
            Ok(full(StatusCode::OK, "text/plain", "ok"))
        }
        (["version"], &Method::GET) => ok(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-flannel-kube-emu",
            "platform": "linux/amd64"
        })),

        // ---- nodes ------------------------------------------------------------------------
        (["api", "v1", "nodes"], &Method::GET) => list_or_watch(emu, req, Kind::Node, None).await,
        (["api", "v1", "nodes"], &Method::POST) => {
            let (_, body) = read_json(req).await?;
            let created = emu.store().create_node(body)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (["api", "v1", "nodes", name] | ["api", "v1", "nodes", name, "status"], m) => {
            let sub = if segs.len() == 5 {
                Subresource::Status
            } else {
                Subresource::Main
            };
            let name = name.to_string();
            match *m {
                Method::GET => ok(emu.store().get_node(&name)?),
                Method::PUT => {
                    let (_, body) = read_json(req).await?;
                    ok(emu.store().replace_node(&name, body, sub)?)
                }
                Method::PATCH => {
                    let (ct, body) = read_json(req).await?;
                    let pt = match ct.as_str() {
                        "application/merge-patch+json" => PatchType::Merge,
                        "application/strategic-merge-patch+json" => PatchType::Strategic,
                        other => return Err(ApiError::unsupported_media_type(other)),
                    };
                    ok(emu.store().patch_node(&name, &body, pt, sub)?)
                }
                Method::DELETE if sub == Subresource::Main => ok(emu.store().delete_node(&name)?),
                _ => Err(ApiError::method_not_allowed()),
            }
        }

        // ---- pods -------------------------------------------------------------------------
        (["api", "v1", "pods"], &Method::GET) => list_or_watch(emu, req, Kind::Pod, None).await,
        (["api", "v1", "namespaces", ns, "pods"], &Method::GET) => {
            let ns = ns.to_string();
            list_or_watch(emu, req, Kind::Pod, Some(ns)).await
        }
        (["api", "v1", "namespaces", ns, "pods"], &Method::POST) => {
            let ns = ns.to_string();
            let (_, body) = read_json(req).await?;
            let created = emu.store().create_pod(&ns, body)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (["api", "v1", "namespaces", ns, "pods", name], &Method::GET) => {
            ok(emu.store().get_pod(ns, name)?)
        }
        (["api", "v1", "namespaces", ns, "pods", name], &Method::DELETE) => {
            ok(emu.store().delete_pod(ns, name)?)
        }

        // ---- test controls ----------------------------------------------------------------
        (["emu", "state"], &Method::GET) => ok(emu.state()),
        (["emu", "drop-watches"], &Method::POST) => {
            emu.drop_watches();
            ok(emu.state())
        }
        (["emu", "expire-watches"], &Method::POST) => {
            emu.expire_watches();
            ok(emu.state())
        }
        (["emu", "compact"], &Method::POST) => {
            emu.compact();
            ok(emu.state())
        }
        (["emu", "history"], &Method::PUT) => {
            let (_, body) = read_json(req).await?;
            let n = body
                .as_u64()
                .ok_or_else(|| ApiError::bad_request("expected a number"))?;
            emu.set_history(usize::try_from(n).unwrap_or(usize::MAX));
            ok(emu.state())
        }
        (["emu", "nodes", name, "pod-cidrs"], &Method::PUT) => {
            let name = name.to_string();
            let (_, body) = read_json(req).await?;
            let cidrs: Vec<String> = serde_json::from_value(body)
                .map_err(|e| ApiError::bad_request(format!("expected a list of CIDRs: {e}")))?;
            ok(emu.store().force_pod_cidrs(&name, &cidrs)?)
        }
        (["api", "v1", ..] | ["emu", ..], _) if known_path(&segs) => {
            Err(ApiError::method_not_allowed())
        }
        _ => Err(ApiError::no_route()),
    }
}

fn known_path(segs: &[&str]) -> bool {
    matches!(
        segs,
        ["api", "v1", "nodes"]
            | ["api", "v1", "nodes", _]
            | ["api", "v1", "nodes", _, "status"]
            | ["api", "v1", "pods"]
            | ["api", "v1", "namespaces", _, "pods"]
            | ["api", "v1", "namespaces", _, "pods", _]
            | ["emu", _]
            | ["emu", "nodes", _, "pod-cidrs"]
    )
}

async fn list_or_watch(
    emu: &Emulator,
    req: Request<Incoming>,
    kind: Kind,
    namespace: Option<String>,
) -> Result<Response<Body>, ApiError> {
    let q = query(&req);
    for unsupported in ["labelSelector", "fieldSelector"] {
        if q.get(unsupported).is_some_and(|v| !v.is_empty()) {
            return Err(ApiError::bad_request(format!(
                "{unsupported} is not emulated by flannel-kube-emu"
            )));
        }
    }
    if truthy(&q, "sendInitialEvents") {
        return Err(ApiError::bad_request(
            "sendInitialEvents (streaming lists) is not emulated by flannel-kube-emu",
        ));
    }
    let rv = parse_rv(&q)?;
    if truthy(&q, "watch") {
        let from = match rv {
            None | Some(0) => WatchFrom::Now,
            Some(n) => WatchFrom::After(n),
        };
        let timeout = match q.get("timeoutSeconds") {
            Some(t) => Some(Duration::from_secs(t.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid timeoutSeconds {t:?}"))
            })?)),
            None => None,
        };
        return Ok(watch_response(
            emu,
            kind,
            namespace,
            from,
            truthy(&q, "allowWatchBookmarks"),
            timeout,
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
    let exact = q.get("resourceVersionMatch").map(String::as_str) == Some("Exact");
    let page = emu.store().list(
        kind,
        namespace.as_deref(),
        rv,
        exact,
        limit,
        q.get("continue")
            .map(String::as_str)
            .filter(|c| !c.is_empty()),
    )?;
    let mut metadata = json!({ "resourceVersion": page.resource_version.to_string() });
    if let Some(c) = page.continue_token {
        metadata["continue"] = json!(c);
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", kind.name()),
            "apiVersion": "v1",
            "metadata": metadata,
            "items": page.items,
        }),
    ))
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({ "type": kind, "object": object }).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// Starts a watch: the response is sent at once (200, chunked) and a task feeds it.
fn watch_response(
    emu: &Emulator,
    kind: Kind,
    namespace: Option<String>,
    from: WatchFrom,
    bookmarks: bool,
    timeout: Option<Duration>,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let subscribed = emu.store().watch(kind, from);
    emu.inner.stats.watches.fetch_add(1, Ordering::SeqCst);
    let inner = emu.inner.clone();
    tokio::spawn(async move {
        inner.watchers.fetch_add(1, Ordering::SeqCst);
        let _count = WatcherCount(inner.clone());
        let (first, live, seen) = match subscribed {
            Ok(x) => x,
            Err(e) => {
                // The watch cache answers 200 and reports the expiry as the stream's only event.
                inner.stats.expired.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(Ok(event_line("ERROR", &e.to_status()))).await;
                return;
            }
        };
        let floor = match from {
            WatchFrom::After(n) => n,
            WatchFrom::Now => 0,
        };
        feed_watch(
            inner, kind, namespace, first, live, seen, floor, bookmarks, timeout, tx,
        )
        .await;
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item.map(Frame::data), rx))
    });
    let mut r = Response::new(StreamBody::new(stream).boxed_unsync());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

struct WatcherCount(Arc<crate::Inner>);

impl Drop for WatcherCount {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

#[allow(clippy::too_many_arguments)]
async fn feed_watch(
    inner: Arc<crate::Inner>,
    kind: Kind,
    namespace: Option<String>,
    first: Vec<Arc<Change>>,
    mut live: broadcast::Receiver<Arc<Change>>,
    mut seen: u64,
    floor: u64,
    bookmarks: bool,
    timeout: Option<Duration>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let wanted =
        |c: &Change| c.kind == kind && namespace.as_deref().is_none_or(|ns| ns == c.namespace);
    for c in first.iter().filter(|c| wanted(c)) {
        if tx
            .send(Ok(event_line(c.event.as_str(), &c.object)))
            .await
            .is_err()
        {
            return;
        }
    }
    seen = seen.max(floor);
    let mut control = inner.control.subscribe();
    let start = *control.borrow_and_update();
    let mut last_bookmark = 0;
    let mut tick = tokio::time::interval(inner.config.bookmark_interval);
    tick.tick().await;
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            ev = live.recv() => match ev {
                Ok(c) => {
                    if c.rv <= floor {
                        continue;
                    }
                    seen = seen.max(c.rv);
                    if wanted(&c)
                        && tx.send(Ok(event_line(c.event.as_str(), &c.object))).await.is_err()
                    {
                        return;
                    }
                }
                // Too slow a reader: end the stream; the client resumes from its last RV.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick(), if bookmarks => {
                if seen > last_bookmark {
                    last_bookmark = seen;
                    let obj = json!({
                        "kind": kind.name(),
                        "apiVersion": "v1",
                        "metadata": { "resourceVersion": seen.to_string() }
                    });
                    if tx.send(Ok(event_line("BOOKMARK", &obj))).await.is_err() {
                        return;
                    }
                }
            }
            r = control.changed() => {
                if r.is_err() {
                    return;
                }
                let now = *control.borrow_and_update();
                if now.expiries != start.expiries {
                    let compacted = inner
                        .store
                        .lock()
                        .map(|s| s.compacted())
                        .unwrap_or_else(|p| p.into_inner().compacted());
                    let e = ApiError::too_old(seen, compacted);
                    inner.stats.expired.fetch_add(1, Ordering::SeqCst);
                    let _ = tx.send(Ok(event_line("ERROR", &e.to_status()))).await;
                    return;
                }
                if now.drops != start.drops {
                    // An error frame makes hyper abort the connection without finishing the
                    // chunked body: to the client this is a broken connection.
                    let _ = tx
                        .send(Err(std::io::Error::other("watch dropped by flannel-kube-emu")))
                        .await;
                    return;
                }
            }
            _ = &mut deadline => return,
            _ = tx.closed() => return,
        }
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
