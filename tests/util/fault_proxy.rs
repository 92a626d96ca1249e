//! A fault-injecting HTTP proxy between snapfs and one S3 endpoint on
//! loopback ([`FaultProxy`]): it relays each client connection over a
//! fresh connection of its own to the endpoint, request by request, and
//! spoils a share of the requests on the way, as a bad link or a busy
//! server would.
//!
//! The client (ureq) does not pipeline: it sends a request on a connection
//! only once it has read the whole answer to the one before. So the proxy
//! reads a request (head and `Content-Length` body), decides what to do
//! with it, and either answers it itself or relays it and its answer
//! before it reads the next one. What it does is drawn from a seeded
//! generator by the [`Policy`] in force, which a test may change while
//! snapfs runs; [`FaultProxy::injected`] says what was done, so a test can
//! check that faults were really injected.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::*;

/// What the proxy does to the requests it relays: shares in percent of
/// the requests it sees (drawn in that order, their sum at most 100).
#[derive(Clone, Debug, Default)]
pub(crate) struct Policy {
    /// Close the connection without an answer: before the request reaches
    /// the server, after the server answered (the request took effect,
    /// the client never learns it), or half way through the answer.
    pub(crate) drop_pct: u64,
    /// Answer `503 Service Unavailable` (S3 `SlowDown`) without asking the
    /// server.
    pub(crate) slow_down_pct: u64,
    /// Wait [`Policy::delay`] before relaying.
    pub(crate) delay_pct: u64,
    pub(crate) delay: Duration,
    /// The shares above apply to requests of this method only (`"PUT"`);
    /// None: to every request.
    pub(crate) only_method: Option<&'static str>,
    /// Answer every DELETE `403 Forbidden` (S3 `AccessDenied`), as for
    /// credentials that may read and write but not delete.
    pub(crate) deny_delete: bool,
}

impl Policy {
    /// Relay everything untouched.
    pub(crate) fn healthy() -> Policy {
        Policy::default()
    }
}

/// What the proxy did so far, request by request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Injected {
    /// Relayed to the server and its answer back whole (delayed or not).
    pub(crate) relayed: u64,
    pub(crate) dropped: u64,
    pub(crate) slowed_down: u64,
    pub(crate) delayed: u64,
    pub(crate) denied_deletes: u64,
}

/// What to do with one request.
enum Fault {
    Relay,
    Delay(Duration),
    SlowDown,
    DenyDelete,
    /// Close: 0 before relaying, 1 after the server answered, 2 half way
    /// through the answer.
    Drop(u64),
}

struct Shared {
    upstream: SocketAddr,
    policy: Mutex<Policy>,
    rng: Mutex<Rng>,
    stop: AtomicBool,
    /// Every open socket (both sides), by connection: shut down when the
    /// proxy stops.
    open: Mutex<HashMap<u64, Vec<TcpStream>>>,
    relayed: AtomicU64,
    dropped: AtomicU64,
    slowed_down: AtomicU64,
    delayed: AtomicU64,
    denied_deletes: AtomicU64,
}

/// The proxy, listening on `127.0.0.1:port`; stopped on drop.
pub(crate) struct FaultProxy {
    pub(crate) port: u16,
    shared: Arc<Shared>,
    accept: Option<thread::JoinHandle<()>>,
}

/// The most a request's or an answer's head may hold.
const MAX_HEAD: usize = 64 << 10;
/// How long the proxy waits for the server's answer before giving up on
/// the connection (longer than any request of a test takes).
const UPSTREAM_WAIT: Duration = Duration::from_secs(120);

impl FaultProxy {
    /// A proxy in front of `upstream` (an S3 port), doing what `policy`
    /// says with random draws from `seed`.
    pub(crate) fn start(upstream: SocketAddr, seed: u64, policy: Policy) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        let port = listener.local_addr().expect("local addr").port();
        let shared = Arc::new(Shared {
            upstream,
            policy: Mutex::new(policy),
            rng: Mutex::new(Rng::new(seed)),
            stop: AtomicBool::new(false),
            open: Mutex::new(HashMap::new()),
            relayed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            slowed_down: AtomicU64::new(0),
            delayed: AtomicU64::new(0),
            denied_deletes: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let accept = thread::spawn(move || {
            let mut next_id = 0u64;
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let id = next_id;
                next_id += 1;
                let s = Arc::clone(&s);
                thread::spawn(move || {
                    if let Ok(c) = conn.try_clone() {
                        s.open.lock().expect("open sockets").insert(id, vec![c]);
                    }
                    let _ = s.serve(id, conn);
                    if let Some(socks) = s.open.lock().expect("open sockets").remove(&id) {
                        for sock in socks {
                            let _ = sock.shutdown(Shutdown::Both);
                        }
                    }
                });
            }
        });
        FaultProxy {
            port,
            shared,
            accept: Some(accept),
        }
    }

    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT_URL`.
    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Do what `policy` says from the next request on.
    pub(crate) fn set(&self, policy: Policy) {
        *self.shared.policy.lock().expect("policy") = policy;
    }

    /// What the proxy did so far.
    pub(crate) fn injected(&self) -> Injected {
        let s = &self.shared;
        Injected {
            relayed: s.relayed.load(Ordering::SeqCst),
            dropped: s.dropped.load(Ordering::SeqCst),
            slowed_down: s.slowed_down.load(Ordering::SeqCst),
            delayed: s.delayed.load(Ordering::SeqCst),
            denied_deletes: s.denied_deletes.load(Ordering::SeqCst),
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accepting thread up so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        for socks in self.shared.open.lock().expect("open sockets").values() {
            for sock in socks {
                let _ = sock.shutdown(Shutdown::Both);
            }
        }
    }
}

/// A request or answer head as read: its bytes, the first line's words,
/// and the headers that frame a body.
struct Head {
    raw: Vec<u8>,
    first: Vec<String>,
    content_length: Option<u64>,
    chunked: bool,
    close: bool,
}

/// Reads a head up to its empty line; None at a clean end of stream.
fn read_head(r: &mut impl BufRead) -> io::Result<Option<Head>> {
    let mut raw = Vec::new();
    loop {
        let start = raw.len();
        let n = r.take(MAX_HEAD as u64).read_until(b'\n', &mut raw)?;
        if n == 0 {
            if raw.is_empty() {
                return Ok(None);
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "head cut"));
        }
        if raw.len() > MAX_HEAD {
            return Err(io::Error::other("head too long"));
        }
        if &raw[start..] == b"\r\n" || &raw[start..] == b"\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let mut lines = text.lines();
    let first = lines
        .next()
        .unwrap_or("")
        .split_whitespace()
        .map(String::from)
        .collect();
    let (mut content_length, mut chunked, mut close) = (None, false, false);
    for line in lines {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        let (k, v) = (k.trim().to_ascii_lowercase(), v.trim().to_ascii_lowercase());
        match k.as_str() {
            "content-length" => content_length = v.parse().ok(),
            "transfer-encoding" => chunked = v.contains("chunked"),
            "connection" => close = v.contains("close"),
            _ => {}
        }
    }
    Ok(Some(Head {
        raw,
        first,
        content_length,
        chunked,
        close,
    }))
}

/// Copies exactly `n` bytes from `r` to `w`.
fn copy_exact(r: &mut impl Read, w: &mut impl Write, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), w)?;
    if copied < n {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut"));
    }
    Ok(())
}

/// Copies a chunked body from `r` to `w` as it is, up to its last chunk
/// and trailer.
fn copy_chunked(r: &mut impl BufRead, w: &mut impl Write) -> io::Result<()> {
    loop {
        let mut line = Vec::new();
        r.take(4096).read_until(b'\n', &mut line)?;
        w.write_all(&line)?;
        let size = String::from_utf8_lossy(&line);
        let size = size.trim().split(';').next().unwrap_or("");
        let size = u64::from_str_radix(size, 16)
            .map_err(|_| io::Error::other(format!("bad chunk size {size:?}")))?;
        if size == 0 {
            // Trailer lines, then the empty line.
            loop {
                let mut t = Vec::new();
                if r.take(4096).read_until(b'\n', &mut t)? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "trailer"));
                }
                w.write_all(&t)?;
                if t == b"\r\n" || t == b"\n" {
                    return Ok(());
                }
            }
        }
        copy_exact(r, w, size + 2)?;
    }
}

/// Whether the server has not closed `up` (nothing waits to be read on
/// a connection between answers, so a readable one has reached its end).
fn still_open(up: &TcpStream) -> bool {
    if up.set_nonblocking(true).is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    let open = matches!(up.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    up.set_nonblocking(false).is_ok() && open
}

/// An answer the proxy makes itself, with an S3 XML error body.
fn s3_error(status: &str, code: &str, message: &str) -> Vec<u8> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>{code}</Code><Message>{message}</Message></Error>"
    );
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/xml\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl Shared {
    fn decide(&self, method: &str) -> Fault {
        let p = self.policy.lock().expect("policy").clone();
        if p.deny_delete && method == "DELETE" {
            return Fault::DenyDelete;
        }
        if p.only_method.is_some_and(|m| m != method) {
            return Fault::Relay;
        }
        let mut rng = self.rng.lock().expect("rng");
        let roll = rng.below(100);
        let how = rng.below(3);
        if roll < p.drop_pct {
            Fault::Drop(how)
        } else if roll < p.drop_pct + p.slow_down_pct {
            Fault::SlowDown
        } else if roll < p.drop_pct + p.slow_down_pct + p.delay_pct {
            Fault::Delay(p.delay)
        } else {
            Fault::Relay
        }
    }

    fn count(&self, what: &AtomicU64) {
        what.fetch_add(1, Ordering::SeqCst);
    }

    /// Serves one client connection, request by request, until either
    /// side closes or a fault closes it.
    fn serve(&self, id: u64, client: TcpStream) -> io::Result<()> {
        let mut from_client = BufReader::new(client.try_clone()?);
        let mut to_client = client;
        let mut upstream: Option<(TcpStream, BufReader<TcpStream>)> = None;
        loop {
            let Some(req) = read_head(&mut from_client)? else {
                return Ok(());
            };
            if req.chunked {
                // snapfs never sends one; a test that needs it must say so.
                return Err(io::Error::other("chunked request bodies are not relayed"));
            }
            let method = req.first.first().cloned().unwrap_or_default();
            let body = req.content_length.unwrap_or(0);
            let fault = self.decide(&method);
            match fault {
                Fault::SlowDown | Fault::DenyDelete => {
                    copy_exact(&mut from_client, &mut io::sink(), body)?;
                    let answer = if matches!(fault, Fault::SlowDown) {
                        self.count(&self.slowed_down);
                        s3_error(
                            "503 Service Unavailable",
                            "SlowDown",
                            "Please reduce your request rate (injected by the test's proxy).",
                        )
                    } else {
                        self.count(&self.denied_deletes);
                        s3_error(
                            "403 Forbidden",
                            "AccessDenied",
                            "Access Denied (these credentials may not delete).",
                        )
                    };
                    to_client.write_all(&answer)?;
                    continue;
                }
                Fault::Drop(0) => {
                    self.count(&self.dropped);
                    return Ok(());
                }
                Fault::Delay(d) => {
                    self.count(&self.delayed);
                    thread::sleep(d);
                }
                _ => {}
            }
            // The server may have closed an idle connection meanwhile.
            if upstream.as_ref().is_some_and(|(up, _)| !still_open(up)) {
                upstream = None;
            }
            if upstream.is_none() {
                let up = TcpStream::connect_timeout(&self.upstream, Duration::from_secs(5))?;
                up.set_nodelay(true)?;
                up.set_read_timeout(Some(UPSTREAM_WAIT))?;
                if let Some(socks) = self.open.lock().expect("open sockets").get_mut(&id) {
                    socks.push(up.try_clone()?);
                }
                let reader = BufReader::new(up.try_clone()?);
                upstream = Some((up, reader));
            }
            let (to_up, from_up) = upstream.as_mut().expect("upstream connection");
            to_up.write_all(&req.raw)?;
            copy_exact(&mut from_client, to_up, body)?;
            // The answer, after any interim (1xx) ones.
            let answer = loop {
                let head = read_head(from_up)?
                    .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no answer"))?;
                let status: u16 = head.first.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                if (100..200).contains(&status) {
                    to_client.write_all(&head.raw)?;
                    continue;
                }
                break head;
            };
            let status: u16 = answer
                .first
                .get(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            let no_body = method == "HEAD" || status == 204 || status == 304;
            if let Fault::Drop(how) = fault {
                // After the server answered: none of the answer, or (when
                // it has a body) its head and half the body.
                self.count(&self.dropped);
                if how == 2 && !no_body {
                    if answer.chunked {
                        to_client.write_all(&answer.raw)?;
                    } else if let Some(n) = answer.content_length.filter(|n| *n >= 2) {
                        to_client.write_all(&answer.raw)?;
                        copy_exact(from_up, &mut to_client, n / 2)?;
                    }
                }
                return Ok(());
            }
            to_client.write_all(&answer.raw)?;
            if !no_body {
                if answer.chunked {
                    copy_chunked(from_up, &mut to_client)?;
                } else if let Some(n) = answer.content_length {
                    copy_exact(from_up, &mut to_client, n)?;
                } else {
                    // Delimited by the end of the connection.
                    io::copy(from_up, &mut to_client)?;
                    self.count(&self.relayed);
                    return Ok(());
                }
            }
            self.count(&self.relayed);
            if answer.close || req.close {
                return Ok(());
            }
        }
    }
}
