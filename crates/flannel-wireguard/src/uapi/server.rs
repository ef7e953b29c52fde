//! Serving the control socket for a device of ours.
//!
//! One accept thread (this crate has no async runtime) and one short-lived thread per
//! connection, at most [`MAX_CONNECTIONS`] at a time. A connection may carry several requests,
//! as wg(8) and wireguard-go allow. Every read has a timeout and every request a size bound
//! and a deadline, so a stuck or hostile client holds one connection slot for a while, never
//! the device.

use std::collections::HashMap;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::text::{self, EINVAL};
use crate::device::{DeviceState, WgDevice, WgError};

/// How many connections are served at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 16;
/// The largest request accepted (a `set=1` for 5000 peers with every field is about 1.5 MB).
pub const MAX_REQUEST_BYTES: usize = 16 << 20;
/// The longest line accepted.
const MAX_LINE_BYTES: usize = 4096;
/// How long one read may wait for the client.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one whole request may take to arrive.
const REQUEST_DEADLINE: Duration = Duration::from_secs(30);

/// The control socket of one device: `wg show`/`wg set` talk to `device` through it.
///
/// Dropping it stops the accept thread, closes open connections and removes the socket file
/// (if it is still ours).
pub struct UapiServer {
    path: PathBuf,
    inode: (u64, u64),
    listener: Arc<UnixListener>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for UapiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UapiServer")
            .field("path", &self.path)
            .finish()
    }
}

impl UapiServer {
    /// Listens on `socket_path` (mode 0600; its directory is created 0755 if missing) and
    /// serves `device`. A stale socket file nobody listens on is replaced; a live one is an
    /// error (another process serves a device of that name).
    pub fn start(socket_path: &Path, device: Arc<dyn WgDevice>) -> Result<UapiServer, WgError> {
        let name = device.name().to_string();
        let listener = bind(socket_path, &name)?;
        let meta = fs::metadata(socket_path).map_err(|e| io(&name, "stat socket", e))?;
        let listener = Arc::new(listener);
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let listener = Arc::clone(&listener);
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("uapi-{name}"))
                .spawn(move || accept_loop(&listener, &stop, &device))
                .map_err(|e| io(&name, "spawn control socket thread", e))?
        };
        Ok(UapiServer {
            path: socket_path.to_path_buf(),
            inode: (meta.dev(), meta.ino()),
            listener,
            stop,
            thread: Some(thread),
        })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Shutting a listening unix socket down wakes a blocked accept() with EINVAL.
        let _ =
            nix::sys::socket::shutdown(self.listener.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Ok(m) = fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == self.inode
        {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn io(dev: &str, op: &'static str, source: std::io::Error) -> WgError {
    WgError::Io {
        dev: dev.to_string(),
        op,
        source,
    }
}

static BIND_SEQ: AtomicU64 = AtomicU64::new(0);

/// Binds in a private 0700 directory, sets the mode, then renames into place, so nobody can
/// connect while the socket still has the umask's mode.
fn bind(path: &Path, dev: &str) -> Result<UnixListener, WgError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| io(dev, "create socket directory", e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| io(dev, "chmod socket directory", e))?;
    }
    if fs::symlink_metadata(path).is_ok() {
        if UnixStream::connect(path).is_ok() {
            return Err(io(
                dev,
                "listen on control socket",
                std::io::Error::from(std::io::ErrorKind::AddrInUse),
            ));
        }
        fs::remove_file(path).map_err(|e| io(dev, "remove stale control socket", e))?;
    }
    let seq = BIND_SEQ.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".{dev}.{}.{seq}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(|e| io(dev, "create private directory", e))?;
    let sock = tmp.join("s");
    let result = UnixListener::bind(&sock)
        .map_err(|e| io(dev, "bind control socket", e))
        .and_then(|l| {
            fs::set_permissions(&sock, fs::Permissions::from_mode(0o600))
                .map_err(|e| io(dev, "chmod control socket", e))?;
            fs::rename(&sock, path).map_err(|e| io(dev, "rename control socket", e))?;
            Ok(l)
        });
    let _ = fs::remove_dir_all(&tmp);
    result
}

type Conns = Arc<Mutex<HashMap<u64, UnixStream>>>;

fn accept_loop(listener: &UnixListener, stop: &AtomicBool, device: &Arc<dyn WgDevice>) {
    let conns: Conns = Arc::default();
    let mut handles: Vec<JoinHandle<()>> = Vec::new();
    let mut next_id = 0u64;
    let mut failures = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // EMFILE and friends: back off instead of spinning.
                failures = failures.saturating_add(1);
                tracing::debug!(dev = device.name(), error = %e, "control socket accept failed");
                std::thread::sleep(Duration::from_millis(10 * u64::from(failures.min(100))));
                continue;
            }
        };
        failures = 0;
        handles.retain(|h| !h.is_finished());
        if handles.len() >= MAX_CONNECTIONS {
            tracing::debug!(dev = device.name(), "control socket: too many connections");
            continue;
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        next_id += 1;
        let id = next_id;
        lock(&conns).insert(id, clone);
        let (device, conns2) = (Arc::clone(device), Arc::clone(&conns));
        let spawned = std::thread::Builder::new()
            .name(format!("uapi-conn-{id}"))
            .spawn(move || {
                serve(stream, device.as_ref());
                lock(&conns2).remove(&id);
            });
        match spawned {
            Ok(h) => handles.push(h),
            Err(_) => {
                lock(&conns).remove(&id);
            }
        }
    }
    for s in lock(&conns).values() {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    for h in handles {
        let _ = h.join();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What one request turned out to be.
enum Request {
    Get,
    Set(String),
    /// Readable but not valid: answered with EINVAL, the connection stays usable.
    Invalid,
}

/// Why a connection ends.
enum Close {
    /// End of file, timeout, I/O error or an unknown operation.
    Done,
    /// Too large or too slow: answered with EINVAL, then closed.
    Refuse,
}

/// Serves the requests of one connection until it closes.
fn serve(stream: UnixStream, device: &dyn WgDevice) {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let _ = stream.set_write_timeout(Some(READ_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    // Bounded: each request takes at least one line, and requests are bounded in time.
    loop {
        let answer = match read_request(&mut reader) {
            Ok(Request::Get) => answer_get(device),
            Ok(Request::Set(body)) => text::format_errno(apply_set(device, &body)),
            Ok(Request::Invalid) => text::format_errno(EINVAL),
            Err(Close::Refuse) => {
                let _ = writer.write_all(text::format_errno(EINVAL).as_bytes());
                linger(&writer, reader);
                return;
            }
            Err(Close::Done) => return,
        };
        if writer.write_all(answer.as_bytes()).is_err() {
            return;
        }
    }
}

/// Closing a unix socket with unread input resets it, and the client would see the reset
/// instead of our answer: stop writing, then swallow a bounded amount of what is still coming.
fn linger(writer: &UnixStream, reader: BufReader<UnixStream>) {
    let _ = writer.shutdown(std::net::Shutdown::Write);
    let _ = writer.set_read_timeout(Some(Duration::from_millis(500)));
    let _ = std::io::copy(&mut reader.take(1 << 20), &mut std::io::sink());
}

/// Reads one line of at most [`MAX_LINE_BYTES`], without its newline. `Ok(None)` at a clean
/// end of file.
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> Result<Option<()>, Close> {
    buf.clear();
    let n = reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', buf)
        .map_err(|_| Close::Done)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        // A line too long, or the client closed mid-line.
        return Err(if n > MAX_LINE_BYTES {
            Close::Refuse
        } else {
            Close::Done
        });
    }
    buf.pop();
    Ok(Some(()))
}

fn read_request(reader: &mut impl BufRead) -> Result<Request, Close> {
    let mut line = Vec::with_capacity(128);
    if read_line(reader, &mut line)?.is_none() {
        return Err(Close::Done);
    }
    let op = match line.as_slice() {
        b"get=1" => false,
        b"set=1" => true,
        // As wireguard-go: an unknown operation ends the conversation.
        _ => return Err(Close::Done),
    };
    let started = Instant::now();
    let mut body = Vec::new();
    loop {
        if read_line(reader, &mut line)?.is_none() {
            return Err(Close::Done);
        }
        if line.is_empty() {
            break;
        }
        if !op {
            // `get=1` takes no arguments; read to the empty line to stay in step.
            body.push(b'!');
        } else {
            body.extend_from_slice(&line);
            body.push(b'\n');
        }
        if body.len() > MAX_REQUEST_BYTES || started.elapsed() > REQUEST_DEADLINE {
            return Err(Close::Refuse);
        }
    }
    if !op {
        return Ok(if body.is_empty() {
            Request::Get
        } else {
            Request::Invalid
        });
    }
    Ok(String::from_utf8(body).map_or(Request::Invalid, Request::Set))
}

fn answer_get(device: &dyn WgDevice) -> String {
    match device.get() {
        Ok(state) => {
            let mut s = text::format_get(&state);
            s.push_str(&text::format_errno(0));
            s
        }
        Err(e) => {
            tracing::debug!(dev = device.name(), error = %e, "control socket: get failed");
            text::format_errno(errno_of(&e))
        }
    }
}

fn apply_set(device: &dyn WgDevice, body: &str) -> i32 {
    let req = match text::parse_set(body) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!(dev = device.name(), error = %e, "control socket: invalid set request");
            return EINVAL;
        }
    };
    let current = if req.needs_current() {
        match device.get() {
            Ok(s) => s,
            Err(e) => return errno_of(&e),
        }
    } else {
        DeviceState::default()
    };
    match device.set(&req.resolve(&current)) {
        Ok(()) => 0,
        Err(e) => {
            tracing::debug!(dev = device.name(), error = %e, "control socket: set failed");
            errno_of(&e)
        }
    }
}

/// The errno a device error is reported as.
fn errno_of(e: &WgError) -> i32 {
    match e {
        WgError::NoDevice(_) => libc::ENODEV,
        WgError::Kernel { errno, .. } => *errno as i32,
        WgError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        WgError::Protocol { .. } => EINVAL,
        WgError::Refused { errno, .. } => *errno,
    }
}
