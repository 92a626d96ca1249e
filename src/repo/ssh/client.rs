//! The near side of an ssh repository: `ssh [-p PORT] -- [user@]host
//! snapfs --repo PATH serve`, spoken to in store requests.
//!
//! Every answer is hostile input: a frame's length is checked against what
//! that answer can legitimately be before it is read (a range: its length;
//! a whole object: the limit asked for; a listing page: 10 000 names), its
//! bytes decoded strictly, an error text bounded and escaped. A server that
//! falls silent is given up after `SNAPFS_SSH_TIMEOUT` seconds (default
//! 300) without a byte moving either way.
//!
//! Connections are opened when needed, up to four (`SNAPFS_SSH_CONNECTIONS`)
//! and kept for the command's life: a restore or a mount reads many ranges,
//! each a round trip, and one pipe would serialise them all. Restoring
//! 3000 files of 6 KB over a link of 20 ms round trips took 64 s with one
//! connection, 34 s with two, 18 s with four and 11 s with eight; on
//! loopback, where a round trip costs nothing, each connection only adds
//! its ssh handshake (1.5 s with one, 3.7 s with four, on two busy cores).
//! Four keeps most of the gain for a few sessions on the far machine.

use std::io::{BufReader, BufWriter, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::wire::{
    HELLO, LIST_PAGE, ListPage, MAX_NAME, ObjectKind, STORE_PROTOCOL, SshDest, StoreRequest,
    check_name, forward_stderr, parse_ssh_url, peer_text, read_frame, shell_quote, small_limit,
    write_frame,
};
use crate::error::{Error, Result};
use crate::format::codec::{Decoder, Encoder};

/// The most a server may announce as its pack limit: what a frame's
/// length field carries.
const MAX_PACK_LIMIT: u64 = (1 << 30) - 64;
/// The most objects one listing may name, as for a bucket.
const MAX_LISTED: usize = 4_000_000;
/// The most bytes of an error answer read.
const MAX_ERROR_FRAME: usize = 64 << 10;
const DEFAULT_CONNECTIONS: usize = 4;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

static PROGRAMS: OnceLock<(String, String)> = OnceLock::new();

/// The program that reaches the far side (`--ssh`, e.g. `ssh -i key`) and
/// snapfs there (`--remote-snapfs`); set once, before any repository is
/// opened.
pub fn set_programs(ssh: String, remote_snapfs: String) {
    let _ = PROGRAMS.set((ssh, remote_snapfs));
}

/// A repository directory on another machine, reached over ssh.
pub struct SshStore {
    dest: SshDest,
    /// `ssh://login[:port]/path`, normalized.
    url: String,
    ssh: String,
    remote_snapfs: String,
    timeout: Duration,
    max_conns: usize,
    pool: Mutex<Pool>,
    freed: Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Conn>,
    open: usize,
}

/// What one request came to: an answer, or the server's refusal (the
/// connection stays good either way).
type Answer = std::result::Result<Vec<u8>, String>;

impl SshStore {
    /// The store `text` (`ssh://…`) names, or None if it names none.
    pub fn parse(text: &str) -> Option<Result<SshStore>> {
        let url = parse_ssh_url(text)?;
        Some(url.dest().map(|dest| {
            let (ssh, remote) = PROGRAMS.get().cloned().unwrap_or_else(|| {
                (
                    std::env::var("SNAPFS_SSH").unwrap_or_else(|_| "ssh".into()),
                    std::env::var("SNAPFS_REMOTE_SNAPFS").unwrap_or_else(|_| "snapfs".into()),
                )
            });
            let env_num = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
            SshStore {
                url: dest.normalized(),
                dest,
                ssh,
                remote_snapfs: remote,
                timeout: env_num("SNAPFS_SSH_TIMEOUT").map_or(DEFAULT_TIMEOUT, Duration::from_secs),
                max_conns: env_num("SNAPFS_SSH_CONNECTIONS")
                    .map_or(DEFAULT_CONNECTIONS, |n| n.clamp(1, 64) as usize),
                pool: Mutex::new(Pool::default()),
                freed: Condvar::new(),
            }
        }))
    }

    fn escaped(name: &str) -> String {
        name.chars()
            .flat_map(|c| {
                let esc = c.is_control().then(|| c.escape_default());
                esc.into_iter()
                    .flatten()
                    .chain((!c.is_control()).then_some(c))
            })
            .collect()
    }

    fn fail(&self, name: &str, msg: impl Into<String>) -> Error {
        Error::Io {
            path: PathBuf::from(self.shown_name(name)),
            source: std::io::Error::other(msg.into()),
        }
    }

    fn shown_name(&self, name: &str) -> String {
        if name.is_empty() {
            self.url.clone()
        } else {
            format!("{}/{}", self.url, Self::escaped(name))
        }
    }

    /// Run `req` on a connection of the pool (opened if none is free),
    /// reading an answer of at most `limit` bytes. A connection that
    /// failed is dropped, never reused.
    fn call(&self, name: &str, req: &StoreRequest, limit: usize) -> Result<Vec<u8>> {
        let mut conn = self.take(name)?;
        match conn.call(&req.encode_prefix(), req.payload(), limit) {
            Ok(answer) => {
                self.give_back(Some(conn));
                answer.map_err(|text| self.fail(name, format!("refused by the far side: {text}")))
            }
            Err(why) => {
                self.give_back(None);
                Err(self.fail(name, why))
            }
        }
    }

    fn take(&self, name: &str) -> Result<Conn> {
        let mut pool = self.pool.lock().expect("pool lock");
        loop {
            if let Some(c) = pool.idle.pop() {
                return Ok(c);
            }
            if pool.open < self.max_conns {
                pool.open += 1;
                drop(pool);
                return self.connect().map_err(|why| {
                    self.give_back(None);
                    self.fail(name, why)
                });
            }
            pool = self.freed.wait(pool).expect("pool lock");
        }
    }

    fn give_back(&self, conn: Option<Conn>) {
        let mut pool = self.pool.lock().expect("pool lock");
        match conn {
            Some(c) => pool.idle.push(c),
            None => pool.open -= 1,
        }
        self.freed.notify_one();
    }

    /// Start `snapfs serve` at the far end and open a store session.
    fn connect(&self) -> std::result::Result<Conn, String> {
        let mut words: Vec<String> = self.ssh.split_whitespace().map(String::from).collect();
        if words.is_empty() {
            words.push("ssh".into());
        }
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        if let Some(p) = self.dest.port {
            cmd.arg("-p").arg(p.to_string());
        }
        // `--`: whatever the destination says, ssh reads no option from it.
        cmd.arg("--").arg(&self.dest.login).arg(format!(
            "{} --repo {} serve",
            self.remote_snapfs,
            shell_quote(&self.dest.path)
        ));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", words[0]))?;
        forward_stderr(child.stderr.take().expect("piped stderr"));
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut conn = Conn {
            to: BufWriter::with_capacity(256 << 10, Timed::new(stdin, self.timeout)),
            from: BufReader::with_capacity(256 << 10, Timed::new(stdout, self.timeout)),
            child,
            pack_limit: 0,
        };
        let mut hello = Encoder::new();
        hello.u8(HELLO);
        hello.u64(STORE_PROTOCOL);
        let answer = conn
            .call(&hello.buf, &[], 32)?
            .map_err(|text| format!("the far side refused a store session: {text}"))?;
        let mut d = Decoder::new(&answer);
        let limit = d
            .u64()
            .ok()
            .filter(|_| d.is_empty())
            .ok_or("the remote snapfs answered hello oddly")?;
        conn.pack_limit = limit.min(MAX_PACK_LIMIT);
        Ok(conn)
    }

    /// The largest range or pack this server deals in (asked of a
    /// connection, opening one if need be).
    fn pack_limit(&self, name: &str) -> Result<u64> {
        let conn = self.take(name)?;
        let limit = conn.pack_limit;
        self.give_back(Some(conn));
        Ok(limit)
    }

    fn checked(&self, name: &str) -> Result<ObjectKind> {
        check_name(name).map_err(|e| self.fail(name, e.to_string()))
    }

    fn get_object(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let kind = self.checked(name)?;
        let bound = match small_limit(kind) {
            Some(s) => s.min(limit),
            None => self.pack_limit(name)?.min(limit),
        };
        let answer = self.call(
            name,
            &StoreRequest::Get { name, limit: bound },
            bound as usize + 2,
        )?;
        match answer.split_first() {
            Some((0, [])) => Ok(None),
            Some((1, bytes)) if bytes.len() as u64 <= bound => Ok(Some(bytes.to_vec())),
            _ => Err(self.fail(name, "the remote snapfs answered a get oddly")),
        }
    }

    fn list_all(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let mut out: Vec<(String, u64)> = Vec::new();
        let page_bound = LIST_PAGE * (MAX_NAME + 2 + 10) + 16;
        loop {
            let after = out.last().map(|(n, _)| n.clone()).unwrap_or_default();
            let req = StoreRequest::List { dir, after: &after };
            let body = self.call(dir, &req, page_bound)?;
            let page = ListPage::decode(&body, dir, &after)
                .map_err(|e| self.fail(dir, format!("a damaged listing: {e}")))?;
            if page.more && page.entries.is_empty() {
                return Err(self.fail(
                    dir,
                    "the remote snapfs sent an empty page with more to come",
                ));
            }
            out.extend(page.entries);
            if out.len() > MAX_LISTED {
                return Err(self.fail(
                    dir,
                    format!("the listing names more than {MAX_LISTED} objects; stopped"),
                ));
            }
            if !page.more {
                return Ok(out);
            }
        }
    }
}

impl super::super::store::ObjectStore for SshStore {
    fn shown(&self, name: &str) -> String {
        self.shown_name(name)
    }
    fn state_name(&self) -> String {
        let h = blake3::hash(self.url.as_bytes());
        format!("ssh-{}", &h.to_hex()[..32])
    }
    fn put(&self, name: &str, body: &[u8]) -> Result<()> {
        self.checked(name)?;
        let answer = self.call(
            name,
            &StoreRequest::Put { name, bytes: body },
            MAX_ERROR_FRAME,
        )?;
        if !answer.is_empty() {
            return Err(self.fail(name, "the remote snapfs sent an answer where none belongs"));
        }
        Ok(())
    }
    fn get(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        self.get_object(name, limit)
    }
    fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.checked(name)?;
        let limit = self.pack_limit(name)?;
        if len as u64 > limit {
            return Err(self.fail(
                name,
                format!("a range of {len} bytes; the far side reads at most {limit} at once"),
            ));
        }
        let req = StoreRequest::GetRange {
            name,
            offset,
            len: len as u64,
        };
        let answer = self.call(name, &req, len.max(MAX_ERROR_FRAME) + 1)?;
        if answer.len() != len {
            return Err(self.fail(
                name,
                format!(
                    "the remote snapfs sent {} bytes for a range of {len}",
                    answer.len()
                ),
            ));
        }
        Ok(answer)
    }
    fn head(&self, name: &str) -> Result<Option<u64>> {
        self.checked(name)?;
        let answer = self.call(name, &StoreRequest::Head { name }, 32)?;
        let mut d = Decoder::new(&answer);
        let got = match d.u8() {
            Ok(0) => None,
            Ok(1) => d.u64().ok(),
            _ => return Err(self.fail(name, "the remote snapfs answered head oddly")),
        };
        match (answer.first(), got, d.is_empty()) {
            (Some(0), None, true) => Ok(None),
            (Some(1), Some(size), true) => Ok(Some(size)),
            _ => Err(self.fail(name, "the remote snapfs answered head oddly")),
        }
    }
    fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        self.list_all(dir)
    }
    fn delete(&self, name: &str) -> Result<()> {
        self.checked(name)?;
        let answer = self.call(name, &StoreRequest::Delete { name }, MAX_ERROR_FRAME)?;
        if !answer.is_empty() {
            return Err(self.fail(name, "the remote snapfs sent an answer where none belongs"));
        }
        Ok(())
    }
    /// From the far side's clock, halfway through the request. A far side
    /// too old to know the request is no reason to fail a command: its
    /// clock is then not known.
    fn clock_offset(&self) -> Result<Option<i64>> {
        let t0 = crate::time::now_ns();
        let answer = match self.call("", &StoreRequest::Clock, 16) {
            Ok(a) => a,
            Err(e) => {
                log::debug!("the far side's clock: {e}");
                return Ok(None);
            }
        };
        let mid = t0 + (crate::time::now_ns() - t0) / 2;
        let far = <[u8; 8]>::try_from(answer.as_slice())
            .map(i64::from_le_bytes)
            .map_err(|_| self.fail("", "a clock answer that is not 8 bytes"))?;
        Ok(Some(
            far.div_euclid(1_000_000_000) - mid.div_euclid(1_000_000_000),
        ))
    }
    /// Two: one pack crosses while the far side fsyncs the last; more
    /// only queue on the same link.
    fn parallel_puts(&self) -> usize {
        self.max_conns.min(2)
    }
    /// As many as there are connections: reads are round trips.
    fn parallel_reads(&self) -> usize {
        self.max_conns
    }
}

/// One `snapfs serve` at the far end.
struct Conn {
    child: Child,
    to: BufWriter<Timed<ChildStdin>>,
    from: BufReader<Timed<ChildStdout>>,
    pack_limit: u64,
}

impl Conn {
    /// Send one request; Err: the connection is lost or the answer broke
    /// the protocol (the connection is then dropped).
    fn call(
        &mut self,
        prefix: &[u8],
        payload: &[u8],
        limit: usize,
    ) -> std::result::Result<Answer, String> {
        let lost = |e: std::io::Error| format!("connection to the remote snapfs lost: {e}");
        write_frame(&mut self.to, &[prefix, payload]).map_err(lost)?;
        let frame = read_frame(&mut self.from, limit.max(MAX_ERROR_FRAME) + 1)
            .map_err(lost)?
            .ok_or("the remote snapfs closed the connection (see its message above)")?;
        match frame.split_first() {
            Some((0, body)) if body.len() <= limit => Ok(Ok(body.to_vec())),
            Some((0, body)) => Err(format!(
                "the remote snapfs sent {} bytes where at most {limit} belong",
                body.len()
            )),
            Some((1, text)) => Ok(Err(peer_text(text))),
            Some((s, _)) => Err(format!(
                "the remote snapfs answered with status {s}, which is not in the protocol"
            )),
            None => Err("empty answer from the remote snapfs".into()),
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        let _ = self.to.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pipe end, made non-blocking, that gives up when nothing moves for
/// `timeout` (a blocking write of a large frame to a server that stopped
/// reading would otherwise wait for ever).
struct Timed<T> {
    fd: RawFd,
    inner: T,
    timeout: Duration,
}

impl<T: AsRawFd> Timed<T> {
    fn new(inner: T, timeout: Duration) -> Timed<T> {
        let fd = inner.as_raw_fd();
        // SAFETY: fcntl on a descriptor this value owns.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
            }
        }
        Timed { fd, inner, timeout }
    }

    fn wait(&self, events: libc::c_short) -> std::io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events,
            revents: 0,
        };
        let ms = libc::c_int::try_from(self.timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        loop {
            // SAFETY: one valid pollfd, its count, a timeout.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n > 0 {
                return Ok(());
            }
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "nothing moved for {} s (SNAPFS_SSH_TIMEOUT)",
                        self.timeout.as_secs()
                    ),
                ));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl<T: Read + AsRawFd> Read for Timed<T> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.wait(libc::POLLIN)?,
                r => return r,
            }
        }
    }
}

impl<T: Write + AsRawFd> Write for Timed<T> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        loop {
            match self.inner.write(buf) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.wait(libc::POLLOUT)?,
                r => return r,
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
