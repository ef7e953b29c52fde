//! Watch streams: a chunked response of JSON lines fed by a task from the store's history and
//! live changes, filtered by namespace and selectors, rendered as objects or as Tables, with
//! bookmarks, `timeoutSeconds` and the `/emu/` controls that break or expire open streams.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{BodyExt, StreamBody};
use hyper::Response;
use hyper::body::{Bytes, Frame};
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};

use crate::selector::Selector;
use crate::server::Body;
use crate::store::{Change, Kind, WatchFrom};
use crate::table::{TableOptions, table};
use crate::{ApiError, Emulator, Inner};

/// What one watch asks for.
#[derive(Debug, Clone)]
pub(crate) struct WatchSpec {
    /// The kind watched.
    pub kind: Kind,
    /// Only this namespace (`/api/v1/namespaces/<ns>/pods?watch=1`).
    pub namespace: Option<String>,
    /// `labelSelector` / `fieldSelector`.
    pub selector: Selector,
    /// Where the stream starts.
    pub from: WatchFrom,
    /// `allowWatchBookmarks=true`.
    pub bookmarks: bool,
    /// `timeoutSeconds`.
    pub timeout: Option<Duration>,
    /// Render event objects as Tables (the first one with column definitions).
    pub table: Option<TableOptions>,
}

impl WatchSpec {
    fn wants(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(ns))
            && self.selector.matches(self.kind, obj)
    }
}

/// Renders event objects, flipping Tables to "no headers" after the first, as the API
/// server's watch encoder does.
struct Renderer {
    kind: Kind,
    table: Option<TableOptions>,
}

impl Renderer {
    fn line(&mut self, event: &str, object: &Value) -> Bytes {
        let object = match &mut self.table {
            Some(opts) => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                let t = table(self.kind, std::slice::from_ref(object), rv, None, opts);
                opts.no_headers = true;
                t
            }
            None => object.clone(),
        };
        event_line(event, &object)
    }
}

/// One watch event line. The fields are written in the API server's order (`type` first, as
/// Go encodes `metav1.WatchEvent`), not serde_json's sorted map order: clients rely on it, e.g.
/// kube-rs decodes the object straight into its type only when it already knows the event type,
/// and buffers the whole object first otherwise.
fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = format!("{{\"type\":{},\"object\":", Value::from(kind));
    line.push_str(&object.to_string());
    line.push_str("}\n");
    Bytes::from(line)
}

/// Starts a watch: the response is sent at once (200, chunked) and a task feeds it.
pub(crate) fn watch_response(emu: &Emulator, spec: WatchSpec) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(64);
    let subscribed = emu.store().watch(spec.kind, spec.from);
    emu.inner.stats.watches.fetch_add(1, Ordering::SeqCst);
    let inner = emu.inner.clone();
    tokio::spawn(async move {
        inner.watchers.fetch_add(1, Ordering::SeqCst);
        let _count = WatcherCount(inner.clone());
        match subscribed {
            Ok((first, live, seen)) => feed(inner, spec, first, live, seen, tx).await,
            Err(e) => {
                // The watch cache answers 200 and reports the expiry as the stream's only event.
                inner.stats.expired.fetch_add(1, Ordering::SeqCst);
                let _ = tx.send(Ok(event_line("ERROR", &e.to_status()))).await;
            }
        }
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

struct WatcherCount(Arc<Inner>);

impl Drop for WatcherCount {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Sends `c` if the watch sees it (see [`Change::filtered`]); false when the client is gone.
async fn send_change(
    spec: &WatchSpec,
    render: &mut Renderer,
    c: &Change,
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
) -> bool {
    // The live feed carries every kind's changes: a watch sees only its own kind's.
    if c.kind != spec.kind {
        return true;
    }
    match c.filtered(|o| spec.wants(o)) {
        Some(event) => tx
            .send(Ok(render.line(event.as_str(), &c.object)))
            .await
            .is_ok(),
        None => true,
    }
}

async fn feed(
    inner: Arc<Inner>,
    spec: WatchSpec,
    first: Vec<Arc<Change>>,
    mut live: broadcast::Receiver<Arc<Change>>,
    seen: u64,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let mut render = Renderer {
        kind: spec.kind,
        table: spec.table,
    };
    for c in &first {
        if !send_change(&spec, &mut render, c, &tx).await {
            return;
        }
    }
    let floor = match spec.from {
        WatchFrom::After(n) => n,
        WatchFrom::Now => 0,
    };
    let mut seen = seen.max(floor);
    let mut control = inner.control.subscribe();
    let start = *control.borrow_and_update();
    let mut last_bookmark = 0;
    let mut tick = tokio::time::interval(inner.config.bookmark_interval);
    tick.tick().await;
    let deadline = async {
        match spec.timeout {
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
                    if !send_change(&spec, &mut render, &c, &tx).await {
                        return;
                    }
                }
                // Too slow a reader: end the stream; the client resumes from its last RV.
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick(), if spec.bookmarks => {
                if seen > last_bookmark {
                    last_bookmark = seen;
                    let obj = json!({
                        "kind": spec.kind.name(),
                        "apiVersion": spec.kind.api_version(),
                        "metadata": { "resourceVersion": seen.to_string() }
                    });
                    if tx.send(Ok(render.line("BOOKMARK", &obj))).await.is_err() {
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

    /// `type` comes before `object`, as the API server writes it, and the line is valid JSON.
    #[test]
    fn event_line_has_the_api_servers_field_order() {
        let line = event_line(
            "MODIFIED",
            &json!({"kind": "Node", "metadata": {"name": "a\"b"}}),
        );
        let text = std::str::from_utf8(&line).unwrap();
        assert_eq!(
            text,
            "{\"type\":\"MODIFIED\",\"object\":{\"kind\":\"Node\",\"metadata\":{\"name\":\"a\\\"b\"}}}\n"
        );
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["object"]["metadata"]["name"], "a\"b");
    }
}
