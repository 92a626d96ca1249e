//! The client's TCP connections: ureq's own, except that every read asks
//! the kernel to acknowledge at once (`TCP_QUICKACK`).
//!
//! Why: ureq already sets `TCP_NODELAY`, but the server may not. An S3
//! server (Garage, for one) sends an answer's headers, then its body; with
//! Nagle's algorithm on the server, the body waits for the headers to be
//! acknowledged, and a Linux client in request/answer ("pingpong") mode
//! delays that acknowledgement by 40 ms. Every small GET then took 43 ms on
//! loopback. `TCP_QUICKACK` is not sticky (the kernel goes back to delayed
//! acknowledgements after a while), so it is set again before each read;
//! it is one `setsockopt` beside a `recv`.
//!
//! TLS, when asked for, wraps these connections exactly as it wraps ureq's
//! (rustls, chained after this connector). Proxies are not supported here:
//! the client never configured one.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ureq::Error;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, ShutdownHandle, Transport,
};

/// Opens plain TCP connections with `TCP_NODELAY`, whose reads acknowledge
/// at once.
#[derive(Debug, Default)]
pub struct QuickAckConnector;

impl<In: Transport> Connector<In> for QuickAckConnector {
    type Out = QuickAckTransport;

    fn connect(
        &self,
        details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        if chained.is_some() {
            // Nothing comes before this connector in the client's chain.
            return Err(Error::ConnectionFailed);
        }
        let timeout = details.timeout.not_zero().map(|d| *d);
        let mut last = None;
        let mut stream = None;
        for addr in details.addrs.iter() {
            let r = match timeout {
                Some(t) => TcpStream::connect_timeout(addr, t),
                None => TcpStream::connect(addr),
            };
            match r {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        let stream = match (stream, last) {
            (Some(s), _) => s,
            (None, Some(e)) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(Error::Timeout(ureq::Timeout::Connect));
            }
            (None, Some(e)) => return Err(Error::Io(e)),
            (None, None) => return Err(Error::HostNotFound),
        };
        stream.set_nodelay(true)?;
        let stream = Arc::new(stream);
        (details.register_shutdown)(Arc::downgrade(&stream) as Weak<dyn ShutdownHandle>)?;
        let config = details.config;
        Ok(Some(QuickAckTransport {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            read_timeout: None,
            write_timeout: None,
        }))
    }
}

pub struct QuickAckTransport {
    stream: Arc<TcpStream>,
    buffers: LazyBuffers,
    /// The socket's timeouts as last set, so they are set only on change.
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl std::fmt::Debug for QuickAckTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuickAckTransport")
            .field("peer", &self.stream.peer_addr().ok())
            .finish()
    }
}

/// The timeout a read or write may take, or an error if none is left.
fn left(t: NextTimeout) -> Result<Option<Duration>, Error> {
    if !t.after.is_not_happening() && t.after.is_zero() {
        return Err(Error::Timeout(t.reason));
    }
    Ok(t.not_zero().map(|d| *d))
}

fn timed_out(e: io::Error, t: NextTimeout) -> Error {
    match e.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Error::Timeout(t.reason),
        _ => Error::Io(e),
    }
}

/// Ask for the next segments to be acknowledged at once. Failure only
/// costs the delay this avoids, so it is not an error.
fn quick_ack(s: &TcpStream) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a c_int and
    // its size.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl Transport for QuickAckTransport {
    fn buffers(&mut self) -> &mut dyn Buffers {
        &mut self.buffers
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let t = timeout.for_write();
        let wanted = left(t)?;
        if wanted != self.write_timeout {
            self.stream.set_write_timeout(wanted)?;
            self.write_timeout = wanted;
        }
        let output = &self.buffers.output()[..amount];
        (&*self.stream)
            .write_all(output)
            .map_err(|e| timed_out(e, t))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        let t = timeout.for_read();
        let wanted = left(t)?;
        if wanted != self.read_timeout {
            self.stream.set_read_timeout(wanted)?;
            self.read_timeout = wanted;
        }
        quick_ack(&self.stream);
        let input = self.buffers.input_append_buf();
        let n = loop {
            match (&*self.stream).read(input) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r.map_err(|e| timed_out(e, t))?,
            }
        };
        self.buffers.input_appended(n);
        Ok(n > 0)
    }

    /// Open if nothing is waiting to be read and the peer has not closed:
    /// a pooled connection the server closed must not be used again.
    fn is_open(&mut self) -> bool {
        let s = &*self.stream;
        if s.set_nonblocking(true).is_err() {
            return false;
        }
        let mut b = [0u8; 1];
        let open = matches!(s.peek(&mut b), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        s.set_nonblocking(false).is_ok() && open
    }
}
