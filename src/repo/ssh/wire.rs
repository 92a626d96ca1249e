//! What travels between a client and `snapfs serve`: frames, ssh
//! destinations, the store operations and the names they may touch.
//!
//! ```text
//! frame    length u32 LE | payload
//! request  op u8 | body            response  0 | body   or   1 | error text
//! ```
//!
//! The copy operations (0 to 5) are decoded in `commands::copy::remote`;
//! the store operations (6 to 11) here, by a pure function
//! ([`decode_store_request`]) that either side may run on hostile bytes.

use std::io::{Read, Write};

use crate::error::{Error, Result};
use crate::format::codec::{Decoder, Encoder};
use crate::ids::PackName;

/// Characters of a remote error message shown.
pub const MAX_ERROR_TEXT: usize = 2000;
/// The most bytes of an object name.
pub const MAX_NAME: usize = 128;
/// The most bytes of `config` or of one key slot.
pub const MAX_SMALL_OBJECT: u64 = 64 << 10;
/// The most bytes of a lease or a doom notice.
pub const MAX_NOTE: u64 = 4 << 10;
/// The most key slots a repository may have.
pub const MAX_SLOTS: usize = 64;
/// The most names one list answer carries (about 900 KiB of packs).
pub const LIST_PAGE: usize = 10_000;

pub fn write_frame(w: &mut impl Write, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let len = u32::try_from(len)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    w.write_all(&len.to_le_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    w.flush()
}

/// One frame of at most `limit` bytes, or None at a clean end of stream.
/// The bytes are read as they arrive, so a peer that claims a large frame
/// and sends little makes us allocate little.
pub fn read_frame(r: &mut impl Read, limit: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < len.len() {
        match r.read(&mut len[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > limit {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the peer announced a frame of {n} bytes; at most {limit} are accepted here"),
        ));
    }
    let mut buf = Vec::with_capacity(n.min(64 << 10));
    r.take(n as u64).read_to_end(&mut buf)?;
    if buf.len() != n {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("the peer ended a frame after {} of {n} bytes", buf.len()),
        ));
    }
    Ok(Some(buf))
}

/// An error text from the peer, made safe to print: bounded in length,
/// control characters (terminal escapes) shown escaped.
pub fn peer_text(b: &[u8]) -> String {
    let text = String::from_utf8_lossy(&b[..b.len().min(MAX_ERROR_TEXT * 4)]);
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i >= MAX_ERROR_TEXT {
            out.push_str("...");
            break;
        }
        if c.is_control() || is_bidi_or_format(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that reorder or hide text on a terminal (bidirectional
/// embeddings, overrides, isolates and marks): escaped like control
/// characters, so that a peer's text reads as what it is.
fn is_bidi_or_format(c: char) -> bool {
    matches!(
        c,
        '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
    )
}

/// The most bytes of the far side's stderr shown, in all (all connections
/// of this process together).
const MAX_REMOTE_STDERR: usize = 64 << 10;
static REMOTE_STDERR_SHOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// The most bytes of one line of it read at once (a longer line is shown
/// in pieces).
const MAX_REMOTE_LINE: u64 = 4 << 10;

/// Show what the far side (ssh, or snapfs there) writes on stderr: line by
/// line behind `remote: `, escaped by [`peer_text`], at most
/// [`MAX_REMOTE_STDERR`] bytes in all, over every connection (the rest
/// is read and dropped). A
/// thread of its own, ending when the pipe closes.
pub fn forward_stderr(stderr: std::process::ChildStderr) {
    let spawned = std::thread::Builder::new()
        .name("remote-stderr".into())
        .spawn(move || {
            use std::io::BufRead;
            let mut from = std::io::BufReader::new(stderr);
            use std::sync::atomic::Ordering;
            let mut line = Vec::new();
            loop {
                line.clear();
                match (&mut from)
                    .take(MAX_REMOTE_LINE)
                    .read_until(b'\n', &mut line)
                {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                let text = peer_text(line.strip_suffix(b"\n").unwrap_or(&line));
                let shown = format!("remote: {text}\n");
                let before = REMOTE_STDERR_SHOWN.fetch_add(shown.len(), Ordering::Relaxed);
                if before < MAX_REMOTE_STDERR {
                    eprint!("{shown}");
                    if before + shown.len() >= MAX_REMOTE_STDERR {
                        eprintln!("remote: (more dropped)");
                    }
                }
            }
        });
    if let Err(e) = spawned {
        log::debug!("cannot start a thread for the far side's stderr: {e}");
    }
}

/// An ssh destination as typed: `ssh://[user@]host[:port]/path`. Anything
/// that starts with `ssh://` is one, and is checked when connecting (see
/// [`SshUrl::dest`]), so that a malformed URL is an error and never taken
/// for a local path.
pub struct SshUrl {
    text: String,
}

/// The parts of a checked ssh destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshDest {
    /// `[user@]host`, as given to ssh after `--`.
    pub login: String,
    pub port: Option<u16>,
    pub path: String,
}

pub fn parse_ssh_url(s: &str) -> Option<SshUrl> {
    s.starts_with("ssh://").then(|| SshUrl {
        text: s.to_string(),
    })
}

impl SshUrl {
    /// Check and split the URL. A host or user starting with `-` would be
    /// read by ssh as an option (`ssh://-oProxyCommand=...` runs a command
    /// here), so it is refused, as are empty parts, port 0, and blanks or
    /// control characters in `user@host`.
    pub fn dest(&self) -> Result<SshDest> {
        let bad = |why: &str| {
            Error::invalid(format!(
                "{:?} is not a usable ssh://[user@]host[:port]/path destination: {why}",
                self.text
            ))
        };
        let rest = self
            .text
            .strip_prefix("ssh://")
            .ok_or_else(|| bad("it does not start with ssh://"))?;
        let (hostport, path) = rest.split_once('/').ok_or_else(|| bad("it has no /path"))?;
        let (login, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => {
                let port: u16 = p.parse().map_err(|_| bad("the port is not a number"))?;
                if port == 0 {
                    return Err(bad("port 0"));
                }
                (h, Some(port))
            }
            None => (hostport, None),
        };
        let (user, host) = match login.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, login),
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if host.starts_with('-') || user.is_some_and(|u| u.starts_with('-')) {
            return Err(bad("a host or user may not start with '-'"));
        }
        if user.is_some_and(str::is_empty) {
            return Err(bad("an empty user"));
        }
        if login.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("blanks or control characters in user@host"));
        }
        Ok(SshDest {
            login: login.to_string(),
            port,
            path: format!("/{path}"),
        })
    }
}

impl SshDest {
    /// `ssh://[user@]host[:port]/path` with the path's repeated and
    /// trailing slashes dropped: one repository, one spelling.
    pub fn normalized(&self) -> String {
        let parts: Vec<&str> = self.path.split('/').filter(|p| !p.is_empty()).collect();
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        format!("ssh://{}{port}/{}", self.login, parts.join("/"))
    }
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What an object name is, once checked. Only these names exist in a
/// repository kept as objects; a server refuses every other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// `config`
    Config,
    /// `keys/<16 hex>.key`
    Key,
    /// `packs/<2 hex>/<64 hex>.pack`, the two digits the name's first two
    Pack(PackName),
    /// `leases/<32 lowercase hex>.lease`
    Lease,
    /// `doomed/<64 lowercase hex>.doom`
    Doom,
}

/// The directories a listing may name.
pub const LISTABLE: [&str; 4] = ["keys", "packs", "leases", "doomed"];

fn hex_of(s: &str, len: usize, lower_only: bool) -> bool {
    s.len() == len
        && s.bytes().all(|b| {
            b.is_ascii_digit()
                || (b'a'..=b'f').contains(&b)
                || (!lower_only && (b'A'..=b'F').contains(&b))
        })
}

/// Check an object name: exactly one of the shapes of [`ObjectKind`];
/// anything else (`..`, other prefixes, odd bytes) is refused.
pub fn check_name(name: &str) -> Result<ObjectKind> {
    let kind = (|| {
        if name == "config" {
            return Some(ObjectKind::Config);
        }
        let (dir, rest) = name.split_once('/')?;
        match dir {
            "keys" => {
                let h = rest.strip_suffix(".key")?;
                hex_of(h, 16, false).then_some(ObjectKind::Key)
            }
            "leases" => {
                let h = rest.strip_suffix(".lease")?;
                hex_of(h, 32, true).then_some(ObjectKind::Lease)
            }
            "doomed" => {
                let h = rest.strip_suffix(".doom")?;
                hex_of(h, 64, true).then_some(ObjectKind::Doom)
            }
            "packs" => {
                let (sub, file) = rest.split_once('/')?;
                let h = file.strip_suffix(".pack")?;
                if !hex_of(h, 64, true) || sub != &h[..2] {
                    return None;
                }
                h.parse::<PackName>().ok().map(ObjectKind::Pack)
            }
            _ => None,
        }
    })();
    kind.ok_or_else(|| {
        Error::invalid(format!(
            "{:?} is not the name of a repository object (config, keys/<16 hex>.key, \
             packs/<2 hex>/<64 hex>.pack, leases/<32 hex>.lease, doomed/<64 hex>.doom)",
            peer_text(name.as_bytes())
        ))
    })
}

/// The most bytes an object of this kind may hold, packs aside.
pub fn small_limit(kind: ObjectKind) -> Option<u64> {
    match kind {
        ObjectKind::Config | ObjectKind::Key => Some(MAX_SMALL_OBJECT),
        ObjectKind::Lease | ObjectKind::Doom => Some(MAX_NOTE),
        ObjectKind::Pack(_) => None,
    }
}

/// A store request (the protocol's ops 6 to 12), decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum StoreRequest<'a> {
    /// The whole object, refused if it is longer than `limit`.
    Get {
        name: &'a str,
        limit: u64,
    },
    /// Exactly `len` bytes at `offset`.
    GetRange {
        name: &'a str,
        offset: u64,
        len: u64,
    },
    /// The object's size, if there is one.
    Head {
        name: &'a str,
    },
    /// Objects under `dir/` whose names sort after `after`, in order.
    List {
        dir: &'a str,
        after: &'a str,
    },
    Put {
        name: &'a str,
        bytes: &'a [u8],
    },
    Delete {
        name: &'a str,
    },
    /// The far side's clock (nanoseconds since the epoch, i64): the hosts
    /// that share a store compare their clocks with it (`store_lease`).
    Clock,
}

pub const HELLO: u8 = 0;
/// The hello version that opens a store session (1 opens a copy session).
pub const STORE_PROTOCOL: u64 = 2;

impl StoreRequest<'_> {
    pub const GET: u8 = 6;
    pub const GET_RANGE: u8 = 7;
    pub const HEAD: u8 = 8;
    pub const LIST: u8 = 9;
    pub const PUT: u8 = 10;
    pub const DELETE: u8 = 11;
    pub const CLOCK: u8 = 12;

    /// The frame payload of this request. A put's bytes are left out (the
    /// caller writes them after this prefix, without copying them).
    pub fn encode_prefix(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        match self {
            StoreRequest::Get { name, limit } => {
                e.u8(Self::GET);
                e.bytes(name.as_bytes());
                e.u64(*limit);
            }
            StoreRequest::GetRange { name, offset, len } => {
                e.u8(Self::GET_RANGE);
                e.bytes(name.as_bytes());
                e.u64(*offset);
                e.u64(*len);
            }
            StoreRequest::Head { name } => {
                e.u8(Self::HEAD);
                e.bytes(name.as_bytes());
            }
            StoreRequest::List { dir, after } => {
                e.u8(Self::LIST);
                e.bytes(dir.as_bytes());
                e.bytes(after.as_bytes());
            }
            StoreRequest::Put { name, bytes } => {
                e.u8(Self::PUT);
                e.bytes(name.as_bytes());
                e.u64(bytes.len() as u64);
            }
            StoreRequest::Delete { name } => {
                e.u8(Self::DELETE);
                e.bytes(name.as_bytes());
            }
            StoreRequest::Clock => e.u8(Self::CLOCK),
        }
        e.buf
    }

    /// The bytes a put carries after its prefix.
    pub fn payload(&self) -> &[u8] {
        match self {
            StoreRequest::Put { bytes, .. } => bytes,
            _ => &[],
        }
    }
}

/// A name of at most [`MAX_NAME`] bytes of UTF-8 (checked for its shape
/// by [`check_name`] where it is used).
fn name<'a>(d: &mut Decoder<'a>) -> Result<&'a str> {
    let b = d.bytes()?;
    if b.len() > MAX_NAME {
        return Err(Error::invalid(format!(
            "an object name of {} bytes; at most {MAX_NAME} are accepted",
            b.len()
        )));
    }
    std::str::from_utf8(b).map_err(|_| Error::invalid("an object name that is not UTF-8"))
}

/// Decode one store request frame strictly: a known op, a body that is
/// exactly what the op needs (no trailing bytes), bounded names. Pure and
/// panic-free on any input, so it can serve as a fuzz target.
pub fn decode_store_request(frame: &[u8]) -> Result<StoreRequest<'_>> {
    let mut d = Decoder::new(frame);
    let op = d.u8()?;
    let req = match op {
        StoreRequest::GET => StoreRequest::Get {
            name: name(&mut d)?,
            limit: d.u64()?,
        },
        StoreRequest::GET_RANGE => StoreRequest::GetRange {
            name: name(&mut d)?,
            offset: d.u64()?,
            len: d.u64()?,
        },
        StoreRequest::HEAD => StoreRequest::Head {
            name: name(&mut d)?,
        },
        StoreRequest::LIST => StoreRequest::List {
            dir: name(&mut d)?,
            after: name(&mut d)?,
        },
        StoreRequest::PUT => StoreRequest::Put {
            name: name(&mut d)?,
            bytes: d.bytes()?,
        },
        StoreRequest::DELETE => StoreRequest::Delete {
            name: name(&mut d)?,
        },
        StoreRequest::CLOCK => StoreRequest::Clock,
        _ => return Err(Error::invalid(format!("unknown store request {op}"))),
    };
    if !d.is_empty() {
        return Err(Error::invalid(format!("request {op} has trailing bytes")));
    }
    Ok(req)
}

/// One page of a listing: names with sizes, and whether more follow.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListPage {
    pub entries: Vec<(String, u64)>,
    pub more: bool,
}

impl ListPage {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        e.u64(self.entries.len() as u64);
        for (n, size) in &self.entries {
            e.bytes(n.as_bytes());
            e.u64(*size);
        }
        e.u8(u8::from(self.more));
        e.buf
    }

    /// Decode a page strictly: at most [`LIST_PAGE`] names, each a valid
    /// object name under `dir/`, in increasing order after `after`.
    pub fn decode(body: &[u8], dir: &str, after: &str) -> Result<ListPage> {
        let mut d = Decoder::new(body);
        let n = d.u64()?;
        if n > LIST_PAGE as u64 {
            return Err(Error::invalid(format!(
                "a listing page of {n} names; at most {LIST_PAGE} are accepted"
            )));
        }
        let mut page = ListPage::default();
        let mut last = after.to_string();
        for _ in 0..n {
            let name = name(&mut d)?;
            check_name(name)?;
            if !name.starts_with(dir) || name.as_bytes().get(dir.len()) != Some(&b'/') {
                return Err(Error::invalid(format!(
                    "a listing of {dir}/ named {}",
                    peer_text(name.as_bytes())
                )));
            }
            if name <= last.as_str() {
                return Err(Error::invalid(
                    "a listing whose names are out of order or repeated",
                ));
            }
            last = name.to_string();
            page.entries.push((last.clone(), d.u64()?));
        }
        page.more = match d.u8()? {
            0 => false,
            1 => true,
            b => return Err(Error::invalid(format!("a listing ending with {b}"))),
        };
        d.finish("listing")?;
        Ok(page)
    }
}

/// For decoder tests: random frames and `seeds` mutated (bits flipped,
/// bytes replaced, cut, inserted), from a fixed xorshift `seed`; calls
/// `each` with every one and returns how many it accepted (a decoder test
/// that accepts none has wrong seeds).
#[cfg(test)]
pub(crate) fn mutated_frames(
    seed: u64,
    seeds: &[Vec<u8>],
    mut each: impl FnMut(&[u8]) -> bool,
) -> usize {
    let mut state = seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut accepted = 0;
    for round in 0..6000 {
        let mut frame: Vec<u8> = if round % 3 == 0 {
            let len = (next() % 200) as usize;
            (0..len).map(|_| next() as u8).collect()
        } else {
            seeds[(next() % seeds.len() as u64) as usize].clone()
        };
        for _ in 0..(next() % 4) {
            if frame.is_empty() {
                break;
            }
            let at = (next() as usize) % frame.len();
            match next() % 4 {
                0 => frame[at] ^= 1 << (next() % 8),
                1 => frame[at] = 0xff,
                2 => frame.truncate(at),
                _ => frame.insert(at, next() as u8),
            }
        }
        accepted += usize::from(each(&frame));
    }
    accepted
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash;

    fn dest(s: &str) -> Result<SshDest> {
        parse_ssh_url(s).expect("an ssh:// URL").dest()
    }

    #[test]
    fn ssh_urls_parse() {
        assert_eq!(
            dest("ssh://backup@nas:2222/srv/snapfs").unwrap(),
            SshDest {
                login: "backup@nas".into(),
                port: Some(2222),
                path: "/srv/snapfs".into()
            }
        );
        assert_eq!(
            dest("ssh://nas/x").unwrap(),
            SshDest {
                login: "nas".into(),
                port: None,
                path: "/x".into()
            }
        );
        assert!(parse_ssh_url("/local/path").is_none());
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn ssh_urls_normalize_to_one_spelling() {
        assert_eq!(
            dest("ssh://u@h:22//srv//repo/").unwrap().normalized(),
            dest("ssh://u@h:22/srv/repo").unwrap().normalized()
        );
        assert_ne!(
            dest("ssh://u@h/srv/repo").unwrap().normalized(),
            dest("ssh://u@h:2222/srv/repo").unwrap().normalized()
        );
    }

    #[test]
    fn ssh_urls_that_ssh_would_misread_are_refused() {
        for bad in [
            "ssh:///x",
            "ssh://nas",
            "ssh://-oProxyCommand=touch%20x/path",
            "ssh://-oProxyCommand=x@nas/path",
            "ssh://user@-oProxyCommand=x/path",
            "ssh://@nas/path",
            "ssh://nas:0/path",
            "ssh://nas:99999/path",
            "ssh://nas:/path",
            "ssh://na s/path",
            "ssh://nas\n/path",
        ] {
            assert!(dest(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &[b"hel", b"lo"]).unwrap();
        write_frame(&mut buf, &[]).unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r, 5).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r, 5).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r, 5).unwrap().is_none());
        // Over the limit, cut short, or a torn length: errors, not frames.
        let mut r = &buf[..];
        assert!(read_frame(&mut r, 4).is_err());
        let mut r = &buf[..7];
        assert!(read_frame(&mut r, 5).is_err());
        let mut r = &buf[..2];
        assert!(read_frame(&mut r, 5).is_err());
    }

    #[test]
    fn a_claimed_length_allocates_only_what_arrives() {
        let mut claim = (1u32 << 30).to_le_bytes().to_vec();
        claim.extend_from_slice(b"tiny");
        let mut r = &claim[..];
        let err = read_frame(&mut r, usize::MAX).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn peer_error_text_is_bounded_and_cannot_drive_the_terminal() {
        let t = peer_text(b"bad\x1b[2Jthing\n");
        assert!(!t.contains('\x1b') && !t.contains('\n'), "{t:?}");
        let long = vec![b'x'; 1 << 20];
        assert!(peer_text(&long).len() < MAX_ERROR_TEXT + 10);
    }

    #[test]
    fn only_repository_object_names_pass() {
        let hex = Hash::of(b"p").to_hex();
        let pack = format!("packs/{}/{hex}.pack", &hex[..2]);
        assert!(matches!(check_name(&pack), Ok(ObjectKind::Pack(_))));
        assert_eq!(check_name("config").unwrap(), ObjectKind::Config);
        assert_eq!(
            check_name("keys/0123456789abcDEF.key").unwrap(),
            ObjectKind::Key
        );
        assert_eq!(
            check_name(&format!("leases/{}.lease", &hex[..32])).unwrap(),
            ObjectKind::Lease
        );
        assert_eq!(
            check_name(&format!("doomed/{hex}.doom")).unwrap(),
            ObjectKind::Doom
        );
        for bad in [
            String::new(),
            "/config".into(),
            "config/".into(),
            "./config".into(),
            "catalog.db".into(),
            "lock".into(),
            "keys/../config".into(),
            "keys/0123456789abcdef.key/".into(),
            "keys/0123456789abcdeg.key".into(),
            "keys/0123456789abcdef0.key".into(),
            "../keys/0123456789abcdef.key".into(),
            format!("packs/zz/{hex}.pack"),
            format!("packs/{hex}.pack"),
            format!("packs/{}/{hex}.pack.tmp", &hex[..2]),
            format!("packs/{}/../{hex}.pack", &hex[..2]),
            format!("packs/{}/{}.pack", &hex[..2], hex.to_uppercase()),
            format!("leases/{}.lease", hex[..32].to_uppercase()),
            format!("leases/{}.lease", &hex[..31]),
            format!("doomed/{hex}.doom\0"),
            format!("tmp/{hex}.pack"),
        ] {
            assert!(check_name(&bad).is_err(), "{bad:?} accepted");
        }
    }

    fn seeds() -> Vec<Vec<u8>> {
        let body = b"object bytes".to_vec();
        let reqs = [
            StoreRequest::Get {
                name: "config",
                limit: 65536,
            },
            StoreRequest::GetRange {
                name: "packs/ab/x.pack",
                offset: 1 << 33,
                len: 4096,
            },
            StoreRequest::Head { name: "keys/a.key" },
            StoreRequest::List {
                dir: "packs",
                after: "packs/00/0.pack",
            },
            StoreRequest::Put {
                name: "leases/x.lease",
                bytes: &body,
            },
            StoreRequest::Delete { name: "doomed/x" },
            StoreRequest::Clock,
        ];
        reqs.iter()
            .map(|r| {
                let mut f = r.encode_prefix();
                f.extend_from_slice(r.payload());
                assert_eq!(&decode_store_request(&f).unwrap(), r);
                f
            })
            .collect()
    }

    #[test]
    fn store_requests_round_trip_and_refuse_trailing_bytes() {
        for mut f in seeds() {
            f.push(0);
            assert!(decode_store_request(&f).is_err(), "trailing byte accepted");
        }
        let mut e = Encoder::new();
        e.u8(StoreRequest::HEAD);
        e.bytes(&[b'a'; MAX_NAME + 1]);
        assert!(decode_store_request(&e.buf).is_err(), "long name accepted");
        let mut e = Encoder::new();
        e.u8(StoreRequest::HEAD);
        e.bytes(b"\xff\xfe");
        assert!(decode_store_request(&e.buf).is_err(), "non-UTF-8 accepted");
        assert!(decode_store_request(&[13]).is_err());
        assert!(decode_store_request(&[]).is_err());
    }

    /// Random and mutated frames through the store request decoder: errors,
    /// never a panic. (A stand-in for a fuzzer.)
    #[test]
    fn store_request_decoder_survives_random_and_mutated_frames() {
        let seeds = seeds();
        let decoded = mutated_frames(0x2545_f491_4f6c_dd1d, &seeds, |frame| {
            let _ = ListPage::decode(frame, "packs", "");
            decode_store_request(frame).is_ok()
        });
        assert!(decoded > 0, "no frame decoded at all: the seeds are wrong");
    }

    #[test]
    fn list_pages_are_checked_for_names_and_order() {
        let hex = Hash::of(b"a").to_hex();
        let hex2 = Hash::of(b"b").to_hex();
        let mut names = [
            format!("packs/{}/{hex}.pack", &hex[..2]),
            format!("packs/{}/{hex2}.pack", &hex2[..2]),
        ];
        names.sort();
        let page = ListPage {
            entries: names.iter().map(|n| (n.clone(), 7)).collect(),
            more: true,
        };
        assert_eq!(ListPage::decode(&page.encode(), "packs", "").unwrap(), page);
        // Out of order, under another directory, or not after `after`.
        let mut rev = ListPage {
            entries: page.entries.clone(),
            more: false,
        };
        rev.entries.reverse();
        assert!(ListPage::decode(&rev.encode(), "packs", "").is_err());
        assert!(ListPage::decode(&page.encode(), "keys", "").is_err());
        assert!(ListPage::decode(&page.encode(), "packs", &names[1]).is_err());
        let mut trailing = page.encode();
        trailing.push(1);
        assert!(ListPage::decode(&trailing, "packs", "").is_err());
    }
}
