//! `/healthz`, `/readyz` and `/metrics` on `--healthz-ip:--healthz-port`.
//!
//! The texts and status codes are upstream's, because kubelet probes and operators' scripts
//! match on them: `/healthz` answers 200 `flanneld is running` while the process lives,
//! `/readyz` answers 503 `flanneld is not ready yet` until the rules are in place and
//! subnet.env is written, then 200 `flanneld is ready`. Paths match exactly and any method is
//! accepted, like Go's `ServeMux`. `/metrics` is ours (upstream has none).
//!
//! The server is plain hyper with bounds a probe endpoint needs: a header read timeout, a cap
//! on the request head (16 KiB: a longer request line or header block is answered 431), 405
//! for methods that are not HTTP's own, and a cap on connections that sheds the slowest client
//! rather than make a probe wait ([`admission`]; counted in `http_shed_connections_total`), so
//! clients that open connections and send half a request cannot starve the kubelet's probes.
//!
//! A program can serve more paths on the same port ([`Health::with_routes`]): flannel-netpol
//! serves its flow records (`/flows`) there, including a streamed `follow` response, which
//! is the one kind of connection allowed to outlive the 30 s connection cap.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::{Stream, StreamExt};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub mod admission;

use admission::{Admission, Admit, Answering, MAX_CONNECTIONS, Phase};

/// Bytes of request line and headers a client may send (hyper's smallest buffer is 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// A client must send its request headers within this time.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A whole connection (keep-alive included) is closed after this time.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

pub use hyper::StatusCode;
pub use hyper::body::Bytes;

/// Produces the `/metrics` body; the daemon plugs its registry in here.
pub type MetricsFn = Arc<dyn Fn() -> String + Send + Sync>;

/// A response body: whole ([`full_body`]) or streamed ([`stream_body`]).
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A whole body.
pub fn full_body(text: impl Into<Bytes>) -> Body {
    Full::new(text.into()).boxed_unsync()
}

/// A body sent chunk by chunk as `chunks` yields them (chunked transfer encoding); it ends
/// when the stream ends or the client goes.
pub fn stream_body(chunks: impl Stream<Item = Bytes> + Send + 'static) -> Body {
    StreamBody::new(chunks.map(|b| Ok::<_, Infallible>(Frame::data(b)))).boxed_unsync()
}

/// The answer of an extra route (see [`Health::with_routes`]).
pub struct Routed {
    /// Status code.
    pub status: StatusCode,
    /// `content-type` header.
    pub content_type: &'static str,
    /// The body.
    pub body: Body,
    /// Whether the response is a long-lived stream, exempt from the connection time cap.
    pub streaming: bool,
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routed")
            .field("status", &self.status)
            .field("content_type", &self.content_type)
            .field("streaming", &self.streaming)
            .finish()
    }
}

/// Serves paths beyond the probes: gets the path and the raw query string (without `?`),
/// returns `None` for a path it does not serve.
pub type RouteFn = Arc<dyn Fn(&str, Option<&str>) -> Option<Routed> + Send + Sync>;

/// Shared state the endpoints report.
#[derive(Clone)]
pub struct Health {
    program: &'static str,
    ready: Arc<AtomicBool>,
    metrics: Option<MetricsFn>,
    routes: Option<RouteFn>,
    shed: Counter,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health")
            .field("ready", &self.is_ready())
            .finish()
    }
}

impl Health {
    /// Not ready, with an optional metrics renderer.
    pub fn new(metrics: Option<MetricsFn>) -> Health {
        Health::for_program("flanneld", metrics)
    }

    /// Like [`Health::new`] for another program of the image (flannel-netpol), whose texts
    /// name it: `<program> is running`, `<program> is ready`.
    pub fn for_program(program: &'static str, metrics: Option<MetricsFn>) -> Health {
        Health {
            program,
            ready: Arc::new(AtomicBool::new(false)),
            metrics,
            routes: None,
            shed: Counter::default(),
        }
    }

    /// Counts shed connections in `counter` (the program registers it as
    /// `http_shed_connections`).
    pub fn with_shed_counter(mut self, counter: Counter) -> Health {
        self.shed = counter;
        self
    }

    /// Connections closed to make room, or refused, so far.
    pub fn shed_connections(&self) -> u64 {
        self.shed.get()
    }

    /// Adds paths served by `routes`, asked before the built-in 404.
    pub fn with_routes(mut self, routes: RouteFn) -> Health {
        self.routes = Some(routes);
        self
    }

    /// The response for a request: an extra route's, else [`Health::respond`]'s.
    pub fn route(&self, path: &str, query: Option<&str>) -> Routed {
        if let Some(routed) = self.routes.as_ref().and_then(|r| r(path, query)) {
            return routed;
        }
        let (status, content_type, body) = self.respond(path);
        Routed {
            status,
            content_type,
            body: full_body(body),
            streaming: false,
        }
    }

    /// Flips `/readyz` to 200 (after rules and subnet.env are in place).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Whether `/readyz` answers 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The response for a path: status, content type and body.
    pub fn respond(&self, path: &str) -> (StatusCode, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        match path {
            "/healthz" => (StatusCode::OK, TEXT, format!("{} is running", self.program)),
            "/readyz" if self.is_ready() => {
                (StatusCode::OK, TEXT, format!("{} is ready", self.program))
            }
            "/readyz" => (
                StatusCode::SERVICE_UNAVAILABLE,
                TEXT,
                format!("{} is not ready yet", self.program),
            ),
            "/metrics" => match &self.metrics {
                Some(render) => (
                    StatusCode::OK,
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    render(),
                ),
                None => (StatusCode::NOT_FOUND, TEXT, "404 page not found\n".into()),
            },
            _ => (StatusCode::NOT_FOUND, TEXT, "404 page not found\n".into()),
        }
    }
}

/// Binds the listener (so a taken port fails start-up with a clear error) and serves until
/// `shutdown` flips to true, then stops accepting and lets running requests finish for up to
/// 3 s, like upstream's graceful `Shutdown`.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding healthz server on {addr}: {e}"))
    })?;
    info!("Start healthz server on {addr}");
    Ok(tokio::spawn(async move {
        let epoch = std::time::Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut admission: Admission<tokio::task::Id, tokio::task::AbortHandle> =
            Admission::new(MAX_CONNECTIONS);
        loop {
            let (stream, _) = tokio::select! {
                _ = shutdown.changed() => break,
                r = listener.accept() => match r {
                    Ok(s) => s,
                    Err(e) => {
                        warn!("healthz accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // Forget connections that ended, then make room if full.
            while let Some(done) = tasks.try_join_next_with_id() {
                admission.ended(done.map_or_else(|e| e.id(), |(id, ())| id));
            }
            match admission.admit() {
                Admit::Room => {}
                Admit::Shed(slowest) => {
                    slowest.abort();
                    health.shed.inc();
                }
                Admit::Refuse => {
                    health.shed.inc();
                    continue;
                }
            }
            let phase = Arc::new(Phase::new(epoch));
            let abort = tasks.spawn(serve_connection(stream, health.clone(), phase.clone()));
            admission.hold(abort.id(), abort, phase);
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        tasks.abort_all();
    }))
}

/// Methods HTTP defines; others (extension methods) get 405.
const METHODS: [hyper::Method; 9] = [
    hyper::Method::GET,
    hyper::Method::HEAD,
    hyper::Method::POST,
    hyper::Method::PUT,
    hyper::Method::DELETE,
    hyper::Method::OPTIONS,
    hyper::Method::PATCH,
    hyper::Method::TRACE,
    hyper::Method::CONNECT,
];

/// Serves one connection; `phase` tells the admission whether it is answering.
async fn serve_connection(stream: tokio::net::TcpStream, health: Health, phase: Arc<Phase>) {
    let streaming = Arc::new(AtomicBool::new(false));
    let flag = streaming.clone();
    let svc = service_fn(move |req: Request<Incoming>| {
        let routed = if METHODS.contains(req.method()) {
            health.route(req.uri().path(), req.uri().query())
        } else {
            Routed {
                status: StatusCode::METHOD_NOT_ALLOWED,
                content_type: "text/plain; charset=utf-8",
                body: full_body("405 method not allowed\n"),
                streaming: false,
            }
        };
        if routed.streaming {
            flag.store(true, Ordering::SeqCst);
        }
        // Answering until the body is sent (or dropped): never shed meanwhile.
        let body = Answering::new(routed.body, phase.clone());
        async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(routed.status)
                    .header("content-type", routed.content_type)
                    .body(body)
                    .expect("static response parts are valid"),
            )
        }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    // A streamed response lives as long as its client; every other connection is cut after
    // CONNECTION_TIMEOUT.
    if tokio::time::timeout(CONNECTION_TIMEOUT, conn.as_mut())
        .await
        .is_err()
        && streaming.load(Ordering::SeqCst)
    {
        let _ = conn.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
            .await
            .expect("response in time")
            .unwrap();
        out
    }

    #[test]
    fn texts_and_codes_are_upstreams() {
        let h = Health::new(None);
        assert_eq!(
            h.respond("/healthz"),
            (
                StatusCode::OK,
                "text/plain; charset=utf-8",
                "flanneld is running".into()
            )
        );
        assert_eq!(h.respond("/readyz").0, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(h.respond("/readyz").2, "flanneld is not ready yet");
        h.set_ready();
        assert_eq!(h.respond("/readyz").2, "flanneld is ready");
        assert_eq!(h.respond("/healthz/").0, StatusCode::NOT_FOUND);
        assert_eq!(h.respond("/metrics").0, StatusCode::NOT_FOUND);
        let m = Health::new(Some(Arc::new(|| "# EOF\n".to_string())));
        assert_eq!(m.respond("/metrics").2, "# EOF\n");
        let np = Health::for_program("flannel-netpol", None);
        assert_eq!(np.respond("/healthz").2, "flannel-netpol is running");
        assert_eq!(np.respond("/readyz").2, "flannel-netpol is not ready yet");
    }

    /// Runs in a namespace of its own, so the server binds that namespace's loopback.
    #[test]
    fn serves_over_tcp_and_shuts_down() {
        flannel_lab::in_fresh_netns("healthz", || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(serves_over_tcp_and_shuts_down_body())
        })
        .expect("test namespace");
    }

    /// Extra routes come before the 404 and may stream; the probes stay as they are.
    #[test]
    fn extra_routes_serve_whole_and_streamed_bodies() {
        flannel_lab::in_fresh_netns("healthz-routes", || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(extra_routes_body())
        })
        .expect("test namespace");
    }

    async fn extra_routes_body() {
        let routes: RouteFn = Arc::new(|path, query| {
            let chunks = vec![Bytes::from("one\n"), Bytes::from("two\n")];
            match path {
                "/stream" => Some(Routed {
                    status: StatusCode::OK,
                    content_type: "application/x-ndjson",
                    body: stream_body(futures::stream::iter(chunks)),
                    streaming: true,
                }),
                "/echo" => Some(Routed {
                    status: StatusCode::BAD_REQUEST,
                    content_type: "text/plain",
                    body: full_body(format!("query {query:?}")),
                    streaming: false,
                }),
                _ => None,
            }
        });
        let h = Health::new(None).with_routes(routes);
        assert_eq!(h.route("/healthz", None).status, StatusCode::OK);
        assert_eq!(h.route("/nope", None).status, StatusCode::NOT_FOUND);
        let (tx, rx) = watch::channel(false);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let task = serve(addr, h, rx).await.unwrap();
        let r = get(
            addr,
            "GET /stream HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("transfer-encoding: chunked"), "{r}");
        assert!(r.contains("one\n") && r.contains("two\n"), "{r}");
        let r = get(
            addr,
            "GET /echo?a=b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 400"), "{r}");
        assert!(r.ends_with("query Some(\"a=b\")"), "{r}");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops")
            .unwrap();
    }

    async fn serves_over_tcp_and_shuts_down_body() {
        let (tx, rx) = watch::channel(false);
        let health = Health::new(None);
        // Port 0 is not possible through `serve`'s address (we want the bound port), so bind
        // a probe listener first to find a free port.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let task = serve(addr, health.clone(), rx).await.unwrap();
        let r = get(
            addr,
            "GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        assert!(r.ends_with("flanneld is not ready yet"), "{r}");
        health.set_ready();
        let r = get(
            addr,
            "POST /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.ends_with("flanneld is ready"), "{r}");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops")
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }

    /// Lets this process hold `n` descriptors (the abuse test needs over a thousand).
    fn raise_nofile(n: u64) {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit read and write the struct passed, which outlives them.
        #[allow(unsafe_code)]
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
            if lim.rlim_cur < n {
                lim.rlim_cur = n.min(lim.rlim_max);
                assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
            }
        }
    }

    /// Sends `req` (ignoring a write cut short by the server) and reads the answer.
    async fn ask(addr: SocketAddr, req: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(req).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }

    /// The abuse: with 1000 connections that send half a request line and stay, a
    /// probe is answered at once (the slowest are shed and counted) and a streaming response
    /// is not cut; an overlong request line or header block, garbage and a made-up method get
    /// a 4xx, and the server goes on answering.
    #[test]
    fn slow_clients_are_shed_so_probes_are_answered() {
        raise_nofile(4096);
        flannel_lab::in_fresh_netns("healthz-abuse", || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime")
                .block_on(abuse_body())
        })
        .expect("test namespace");
    }

    async fn abuse_body() {
        let ticks: RouteFn = Arc::new(|path, _| {
            (path == "/ticks").then(|| Routed {
                status: StatusCode::OK,
                content_type: "text/plain",
                body: stream_body(futures::stream::unfold(0u32, |n| async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some((Bytes::from(format!("tick {n}\n")), n + 1))
                })),
                streaming: true,
            })
        });
        let shed = Counter::default();
        let h = Health::new(None)
            .with_routes(ticks)
            .with_shed_counter(shed.clone());
        let (tx, rx) = watch::channel(false);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let task = serve(addr, h, rx).await.unwrap();

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"GET /ticks HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the stream starts")
            .unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

        let mut slow = Vec::with_capacity(1000);
        for _ in 0..1000 {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /heal").await.unwrap();
            slow.push(s);
        }
        // Let the server accept them all (each beyond the 64th sheds the slowest).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let start = std::time::Instant::now();
        let r = ask(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        let took = start.elapsed();
        assert!(
            r.starts_with("HTTP/1.1 200") && r.ends_with("flanneld is running"),
            "{r}"
        );
        eprintln!("probe answered in {took:?} with 1000 slow connections open");
        assert!(took < Duration::from_secs(1), "{took:?}");
        assert!(
            shed.get() >= 1000 - MAX_CONNECTIONS as u64,
            "{}",
            shed.get()
        );
        // The stream was answering, so it was never the one shed.
        let mut seen = String::new();
        while !seen.contains("tick") {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("the stream goes on")
                .unwrap();
            assert!(n > 0, "the stream was closed");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        drop(slow);

        let long_line = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100_000));
        let big_header = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "b".repeat(200_000)
        );
        let cases: [(&[u8], &str); 4] = [
            (long_line.as_bytes(), "HTTP/1.1 431"),
            (big_header.as_bytes(), "HTTP/1.1 431"),
            (b"\x00\x01\x02 garbage\r\n\r\n", "HTTP/1.1 400"),
            (
                b"FOO /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                "HTTP/1.1 405",
            ),
        ];
        for (req, want) in cases {
            let r = ask(addr, req).await;
            assert!(r.starts_with(want), "{want}: {r:?}");
        }
        let r = ask(
            addr,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        drop(stream);
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("server stops")
            .unwrap();
    }
}
