//! A small synchronous S3 client: rusty-s3 signs each request (SigV4,
//! presigned URLs; no signing code of ours), ureq sends it over a pooled
//! connection with rustls.
//!
//! Object stores fail in passing (a node restarting, a 503 "slow down", a
//! connection reset), so every request is retried with exponential backoff
//! and full jitter on timeouts, resets, refused connections, 5xx, 408 and
//! 429, for at most `retry_for`; then the error says what was tried. When
//! several endpoints of one cluster are given, a request whose endpoint
//! does not answer moves to the next at once, and later requests stay
//! there. Other answers (403, 404, 400) are final and named.
//!
//! Everything an answer holds is bounded before it is read: a body by the
//! length asked for, a listing by a page's size, an error text by a few KiB.

use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};
use ureq::unversioned::transport::Connector;

use super::settings::{S3Location, S3Settings};
use super::socket::QuickAckConnector;
use super::throttle::Throttle;
use crate::error::{Error, Result};

/// How long a presigned request stays valid: far longer than one request
/// takes, short enough to be useless if it leaks into a log.
const SIGNED_FOR: Duration = Duration::from_secs(600);
/// The most error text read from an answer.
const MAX_ERROR_BODY: u64 = 4096;
/// The most bytes of one listing page (1000 keys of about 100 bytes, with
/// the XML around them, is under 400 KiB).
const MAX_LIST_PAGE: u64 = 8 << 20;
/// The most objects one listing may name: four million packs are 128 TiB
/// of data; a server that keeps naming more (fresh continuation tokens for
/// ever) is stopped here instead of filling memory.
const MAX_LISTED: usize = 4_000_000;
/// The longest a read may wait for a single byte: a server (or a network)
/// that stalls in the middle of an answer fails the attempt, which is then
/// tried again, instead of holding the request until the global timeout.
const IDLE_READ: Duration = Duration::from_secs(30);
/// Backoff between attempts: from this, doubling, up to `MAX_DELAY`.
const FIRST_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(10);

/// One bucket (and the prefix of one repository in it), reached through
/// one or more endpoints.
pub struct S3Client {
    pub(crate) location: S3Location,
    buckets: Vec<Bucket>,
    endpoints: Vec<String>,
    credentials: Credentials,
    agent: ureq::Agent,
    /// The endpoint requests go to now (index into `buckets`).
    current: AtomicUsize,
    retry_for: Duration,
    upload: Throttle,
    download: Throttle,
}

/// What one attempt came to.
enum Attempt<T> {
    Done(T),
    /// Worth trying again; `moved`: try another endpoint first.
    Again {
        why: String,
        moved: bool,
    },
    Fail(Error),
}

impl S3Client {
    pub fn new(location: S3Location, settings: &S3Settings, retry_for: Duration) -> Result<Self> {
        let style = if settings.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let buckets = settings
            .endpoints
            .iter()
            .map(|e| {
                let url = e.parse().map_err(|err| {
                    Error::invalid(format!("S3 endpoint {e:?} is not a URL: {err}"))
                })?;
                Bucket::new(url, style, location.bucket.clone(), settings.region.clone())
                    .map_err(|err| Error::invalid(format!("S3 endpoint {e:?}: {err}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let credentials = match &settings.key.token {
            Some(t) => Credentials::new_with_token(
                settings.key.id.clone(),
                settings.key.secret.to_string(),
                t.to_string(),
            ),
            None => Credentials::new(settings.key.id.clone(), settings.key.secret.to_string()),
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = trusted_cas(settings.ca_file.as_deref())? {
            tls = tls.root_certs(ca);
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_per_read(Some(IDLE_READ))
            .timeout_global(Some(Duration::from_secs(300)))
            .tls_config(tls.build())
            .user_agent(concat!("snapfs/", env!("CARGO_PKG_VERSION")))
            .build();
        // ureq's own chain, with our TCP connections (see `socket`).
        let connector = ()
            .chain(QuickAckConnector)
            .chain(ureq::unversioned::transport::RustlsConnector::default());
        let agent = ureq::Agent::with_parts(
            config,
            connector,
            ureq::unversioned::resolver::DefaultResolver::default(),
        );
        Ok(S3Client {
            location,
            buckets,
            endpoints: settings.endpoints.clone(),
            credentials,
            agent,
            current: AtomicUsize::new(0),
            retry_for,
            upload: Throttle::new(settings.limit_upload),
            download: Throttle::new(settings.limit_download),
        })
    }

    /// The endpoints requests may go to, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// `s3://bucket/key` of `name`, for messages; control characters of a
    /// key a listing named are escaped (it goes to a terminal).
    pub fn shown(&self, name: &str) -> String {
        let key: String = self
            .location
            .key(name)
            .chars()
            .flat_map(|c| {
                let escaped = c.is_control().then(|| c.escape_default());
                escaped
                    .into_iter()
                    .flatten()
                    .chain((!c.is_control()).then_some(c))
            })
            .collect();
        format!("s3://{}/{key}", self.location.bucket)
    }

    fn io_error(&self, name: &str, msg: String) -> Error {
        Error::Io {
            path: PathBuf::from(self.shown(name)),
            source: std::io::Error::other(msg),
        }
    }

    /// Run `attempt` until it is done, fails for good, or `retry_for` has
    /// passed; moves to the next endpoint when one does not answer.
    fn run<T>(
        &self,
        name: &str,
        what: &str,
        mut attempt: impl FnMut(&Bucket) -> Attempt<T>,
    ) -> Result<T> {
        let started = Instant::now();
        let mut delay = FIRST_DELAY;
        let n = self.buckets.len();
        // Endpoints tried since the last pause: all of them get a chance
        // before waiting.
        let mut tried = 0usize;
        loop {
            let at = self.current.load(Ordering::Relaxed) % n;
            match attempt(&self.buckets[at]) {
                Attempt::Done(v) => return Ok(v),
                Attempt::Fail(e) => return Err(e),
                Attempt::Again { why, moved } => {
                    if started.elapsed() >= self.retry_for {
                        return Err(self.io_error(
                            name,
                            format!(
                                "{what}: no answer after {:.0} s ({why}; endpoints {})",
                                started.elapsed().as_secs_f64(),
                                self.endpoints.join(", ")
                            ),
                        ));
                    }
                    if moved && n > 1 {
                        let next = (at + 1) % n;
                        if self
                            .current
                            .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                        {
                            log::warn!(
                                "S3 endpoint {} does not answer ({why}); using {}",
                                self.endpoints[at],
                                self.endpoints[next]
                            );
                        }
                        tried += 1;
                        if tried < n {
                            continue;
                        }
                    }
                    tried = 0;
                    log::info!("{what} {}: {why}; trying again", self.shown(name));
                    let left = self.retry_for.saturating_sub(started.elapsed());
                    std::thread::sleep(jitter(delay).min(left));
                    delay = (delay * 2).min(MAX_DELAY);
                }
            }
        }
    }

    /// Store `body` under `name` (replacing any object of that name).
    pub fn put(&self, name: &str, body: &[u8]) -> Result<()> {
        let key = self.location.key(name);
        // Small objects (leases, marks, key slots) are not held back behind
        // the packs' debt: a lease that waits to be renewed can lapse.
        if body.len() >= 64 << 10 {
            self.upload.take(body.len() as u64);
        }
        self.run(name, "PUT", |b| {
            let url = b.put_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
            match self.agent.put(url.as_str()).send(body) {
                Ok(mut r) => match r.status().as_u16() {
                    200..=299 => Attempt::Done(()),
                    code => self.answer(name, "PUT", code, &mut r),
                },
                Err(e) => transport(e),
            }
        })
    }

    /// The whole object `name`, if there is one; refused if it is longer
    /// than `limit` (config and key files are small).
    pub fn get(&self, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let key = self.location.key(name);
        self.run(name, "GET", |b| {
            let url = b.get_object(Some(&self.credentials), &key).sign(SIGNED_FOR);
            match self.agent.get(url.as_str()).call() {
                Ok(mut r) => match r.status().as_u16() {
                    200 => match read_bounded(r.body_mut().as_reader(), limit) {
                        Ok(Some(v)) => {
                            self.download.take(v.len() as u64);
                            Attempt::Done(Some(v))
                        }
                        Ok(None) => Attempt::Fail(Error::corrupt(format!(
                            "{} is larger than {limit} bytes",
                            self.shown(name)
                        ))),
                        Err(e) => Attempt::Again {
                            why: e.to_string(),
                            moved: false,
                        },
                    },
                    404 => {
                        // No such object, unless the bucket itself is
                        // missing: that is said, not taken for an empty
                        // repository.
                        let text = error_text_of(&mut r);
                        if text.starts_with("NoSuchBucket") {
                            self.judge(name, "GET", 404, text)
                        } else {
                            Attempt::Done(None)
                        }
                    }
                    code => self.answer(name, "GET", code, &mut r),
                },
                Err(e) => transport(e),
            }
        })
    }

    /// `len` bytes of `name` from `offset`: exactly those, or an error.
    pub fn get_range(&self, name: &str, offset: u64, len: usize) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let key = self.location.key(name);
        let last = offset
            .checked_add(len as u64 - 1)
            .ok_or_else(|| Error::invalid("a read past the largest offset"))?;
        let range = format!("bytes={offset}-{last}");
        self.run(name, "GET", |b| {
            let mut action = b.get_object(Some(&self.credentials), &key);
            action.headers_mut().insert("range", range.clone());
            let url = action.sign(SIGNED_FOR);
            match self.agent.get(url.as_str()).header("range", &range).call() {
                Ok(mut r) => match r.status().as_u16() {
                    // 200: a server that ignores ranges sends it all; only
                    // a read of a whole object of exactly `len` is right.
                    206 if !range_is(r.headers(), offset, last) => {
                        Attempt::Fail(Error::corrupt(format!(
                            "{}: asked for bytes {offset}-{last}, the server sent {}",
                            self.shown(name),
                            content_range(r.headers()).unwrap_or("another range")
                        )))
                    }
                    code @ (200 | 206) => {
                        let got = read_bounded(r.body_mut().as_reader(), len as u64);
                        match got {
                            Ok(Some(v)) if v.len() == len && (code == 206 || offset == 0) => {
                                self.download.take(v.len() as u64);
                                Attempt::Done(v)
                            }
                            Ok(Some(v)) => Attempt::Fail(Error::corrupt(format!(
                                "{}: asked for {len} bytes at {offset}, got {}",
                                self.shown(name),
                                v.len()
                            ))),
                            Ok(None) => Attempt::Fail(Error::corrupt(format!(
                                "{}: more than the {len} bytes asked for at {offset}",
                                self.shown(name)
                            ))),
                            Err(e) => Attempt::Again {
                                why: e.to_string(),
                                moved: false,
                            },
                        }
                    }
                    416 => Attempt::Fail(Error::corrupt(format!(
                        "{}: no {len} bytes at {offset} (the object is shorter)",
                        self.shown(name)
                    ))),
                    code => self.answer(name, "GET", code, &mut r),
                },
                Err(e) => transport(e),
            }
        })
    }

    /// The size of `name`, if it exists.
    pub fn head(&self, name: &str) -> Result<Option<u64>> {
        let key = self.location.key(name);
        self.run(name, "HEAD", |b| {
            let url = b
                .head_object(Some(&self.credentials), &key)
                .sign(SIGNED_FOR);
            match self.agent.head(url.as_str()).call() {
                Ok(mut r) => match r.status().as_u16() {
                    200 => {
                        let len = r
                            .headers()
                            .get("content-length")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<u64>().ok());
                        match len {
                            Some(n) => Attempt::Done(Some(n)),
                            None => Attempt::Fail(Error::corrupt(format!(
                                "{}: the answer has no length",
                                self.shown(name)
                            ))),
                        }
                    }
                    404 => Attempt::Done(None),
                    code => self.answer(name, "HEAD", code, &mut r),
                },
                Err(e) => transport(e),
            }
        })
    }

    /// How many seconds the server's clock is ahead of this machine's, by
    /// the `Date` of its answer to a HEAD of `config` against this
    /// machine's time halfway through that request (one second's
    /// precision); None if the answer carries no date it can read.
    pub fn clock_offset(&self) -> Result<Option<i64>> {
        let key = self.location.key("config");
        self.run("config", "HEAD", |b| {
            let url = b
                .head_object(Some(&self.credentials), &key)
                .sign(SIGNED_FOR);
            let t0 = crate::time::now_ns();
            match self.agent.head(url.as_str()).call() {
                Ok(mut r) => match r.status().as_u16() {
                    200 | 404 => {
                        let mid = t0 + (crate::time::now_ns() - t0) / 2;
                        let date = r
                            .headers()
                            .get("date")
                            .and_then(|v| v.to_str().ok())
                            .and_then(crate::time::parse_http_date);
                        Attempt::Done(date.map(|d| d - mid.div_euclid(1_000_000_000)))
                    }
                    code => self.answer("config", "HEAD", code, &mut r),
                },
                Err(e) => transport(e),
            }
        })
    }

    /// Every object under `dir/` of the repository's prefix: names relative
    /// to the prefix, with sizes. Names that do not lie under `dir/` (a
    /// server's mistake) are refused.
    pub fn list(&self, dir: &str) -> Result<Vec<(String, u64)>> {
        let base = self.location.key("");
        let prefix = self.location.key(&format!("{dir}/"));
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        // Tokens already followed: a server that hands one out again would
        // have the listing go round for ever.
        let mut seen = std::collections::HashSet::new();
        loop {
            let page = self.run(dir, "LIST", |b| {
                let mut action = b.list_objects_v2(Some(&self.credentials));
                action.with_prefix(prefix.clone());
                if let Some(t) = &token {
                    action.with_continuation_token(t.clone());
                }
                let url = action.sign(SIGNED_FOR);
                match self.agent.get(url.as_str()).call() {
                    Ok(mut r) => match r.status().as_u16() {
                        200 => match read_bounded(r.body_mut().as_reader(), MAX_LIST_PAGE) {
                            Ok(Some(v)) => Attempt::Done(v),
                            Ok(None) => Attempt::Fail(Error::corrupt(format!(
                                "a listing of {} is larger than {MAX_LIST_PAGE} bytes",
                                self.shown(dir)
                            ))),
                            Err(e) => Attempt::Again {
                                why: e.to_string(),
                                moved: false,
                            },
                        },
                        code => self.answer(dir, "LIST", code, &mut r),
                    },
                    Err(e) => transport(e),
                }
            })?;
            let text = String::from_utf8_lossy(&page);
            let parsed = rusty_s3::actions::ListObjectsV2::parse_response(&text)
                .map_err(|e| Error::corrupt(format!("a listing of {}: {e}", self.shown(dir))))?;
            for c in parsed.contents {
                let name = c
                    .key
                    .strip_prefix(&prefix)
                    .map(|rest| format!("{dir}/{rest}"))
                    .ok_or_else(|| {
                        Error::corrupt(format!(
                            "a listing of {} names {:?}, outside it",
                            self.shown(dir),
                            c.key
                        ))
                    })?;
                debug_assert!(base.is_empty() || prefix.starts_with(&base));
                out.push((name, c.size.unwrap_or(0)));
                if out.len() > MAX_LISTED {
                    return Err(Error::corrupt(format!(
                        "a listing of {} names more than {MAX_LISTED} objects (a repository \
                         holds far fewer; the server's answer is not to be believed)",
                        self.shown(dir)
                    )));
                }
            }
            match parsed.next_continuation_token {
                Some(t) if !t.is_empty() => {
                    if !seen.insert(t.clone()) {
                        return Err(Error::corrupt(format!(
                            "a listing of {} repeats a continuation token (the server goes round in circles)",
                            self.shown(dir)
                        )));
                    }
                    token = Some(t);
                }
                _ => break,
            }
        }
        Ok(out)
    }

    /// Remove `name` (nothing if it is not there).
    pub fn delete(&self, name: &str) -> Result<()> {
        let key = self.location.key(name);
        self.run(name, "DELETE", |b| {
            let url = b
                .delete_object(Some(&self.credentials), &key)
                .sign(SIGNED_FOR);
            match self.agent.delete(url.as_str()).call() {
                Ok(mut r) => match r.status().as_u16() {
                    200..=299 | 404 => Attempt::Done(()),
                    code => self.answer(name, "DELETE", code, &mut r),
                },
                Err(e) => transport(e),
            }
        })
    }

    /// An answer other than success: retried if the server is busy or
    /// failing, else an error with the server's own code and message.
    fn answer<T>(
        &self,
        name: &str,
        what: &str,
        code: u16,
        r: &mut ureq::http::Response<ureq::Body>,
    ) -> Attempt<T> {
        let text = error_text_of(r);
        self.judge(name, what, code, text)
    }

    /// What an answer `code` whose error text is `text` comes to (see
    /// [`S3Client::answer`]).
    fn judge<T>(&self, name: &str, what: &str, code: u16, text: String) -> Attempt<T> {
        match code {
            408 | 429 | 500..=599 => Attempt::Again {
                why: format!("{code} {text}"),
                moved: code == 502 || code == 503 || code == 504,
            },
            403 => Attempt::Fail(Error::invalid(format!(
                "{what} {}: access denied (403 {text}): check the credentials and what they may do",
                self.shown(name)
            ))),
            _ => Attempt::Fail(Error::invalid(format!(
                "{what} {}: the server answered {code} {text}{}",
                self.shown(name),
                // Signatures carry the time: a clock far off fails them all.
                if text.contains("RequestTimeTooSkewed") || text.contains("Date is too old") {
                    " (this machine's clock is far off the server's: set it right)"
                } else {
                    ""
                }
            ))),
        }
    }
}

/// A failure to reach the server or to get its answer: worth another try,
/// on another endpoint first.
fn transport<T>(e: ureq::Error) -> Attempt<T> {
    match e {
        ureq::Error::Io(_)
        | ureq::Error::Timeout(_)
        | ureq::Error::ConnectionFailed
        | ureq::Error::HostNotFound
        | ureq::Error::Protocol(_) => Attempt::Again {
            why: e.to_string(),
            moved: true,
        },
        other => Attempt::Fail(Error::invalid(format!("S3 request: {other}"))),
    }
}

/// The `Content-Range` of an answer, if it has a printable one.
fn content_range(h: &ureq::http::HeaderMap) -> Option<&str> {
    h.get("content-range")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 100)
}

/// Whether a 206 answer's `Content-Range` is `bytes FIRST-LAST/…`, the
/// range asked for; a 206 without one is taken at its word (its length is
/// still checked).
fn range_is(h: &ureq::http::HeaderMap, first: u64, last: u64) -> bool {
    if h.get("content-range").is_none() {
        return true;
    }
    content_range(h)
        .and_then(|v| v.strip_prefix("bytes "))
        .and_then(|v| v.split_once('/'))
        .and_then(|(r, _)| r.split_once('-'))
        .is_some_and(|(a, b)| a.parse() == Ok(first) && b.parse() == Ok(last))
}

/// Up to `limit` bytes of `r`; None if it holds more.
fn read_bounded(r: impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut out = Vec::new();
    r.take(limit.saturating_add(1)).read_to_end(&mut out)?;
    Ok((out.len() as u64 <= limit).then_some(out))
}

/// The error text of an answer's body (see [`error_text`]), read up to
/// [`MAX_ERROR_BODY`].
fn error_text_of(r: &mut ureq::http::Response<ureq::Body>) -> String {
    let body = read_bounded(r.body_mut().as_reader(), MAX_ERROR_BODY)
        .ok()
        .flatten()
        .unwrap_or_default();
    error_text(&body)
}

/// `Code: Message` of an S3 XML error, or the first line of any other
/// text, without control characters (it is shown on a terminal).
fn error_text(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let tag = |t: &str| -> Option<String> {
        let start = text.find(&format!("<{t}>"))? + t.len() + 2;
        let end = text[start..].find(&format!("</{t}>"))? + start;
        Some(text[start..end].to_string())
    };
    let raw = match (tag("Code"), tag("Message")) {
        (Some(c), Some(m)) => format!("{c}: {m}"),
        (Some(c), None) => c,
        _ => text.lines().next().unwrap_or("").to_string(),
    };
    // Some servers echo the request's URL, whose query holds the
    // signature and the key's id: never shown.
    let raw = raw
        .split(char::is_whitespace)
        .map(|word| match word.to_ascii_lowercase().find("x-amz-") {
            Some(at) => {
                let keep = word[..at].rfind('?').unwrap_or(at);
                format!("{}…", &word[..keep])
            }
            None => word.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ");
    raw.chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect::<String>()
}

/// Backoff with full jitter: a random time up to `delay`, so clients that
/// failed together do not come back together.
fn jitter(delay: Duration) -> Duration {
    let mut b = [0u8; 8];
    if crate::crypto::random_bytes(&mut b).is_err() {
        return delay;
    }
    let f = (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64;
    delay.mul_f64(0.5 + f / 2.0)
}

/// The CAs to trust: those of `AWS_CA_BUNDLE` if given, else the system's
/// bundle (Debian's `/etc/ssl/certs/ca-certificates.crt`, or
/// `SSL_CERT_FILE`); None leaves ureq's built-in roots.
fn trusted_cas(file: Option<&std::path::Path>) -> Result<Option<ureq::tls::RootCerts>> {
    let system = std::env::var_os("SSL_CERT_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let (path, required) = match file {
        Some(f) => (f.to_path_buf(), true),
        None => (system, false),
    };
    let pem = match std::fs::read(&path) {
        Ok(p) => p,
        Err(_) if !required => return Ok(None),
        Err(e) => {
            return Err(Error::Io { path, source: e });
        }
    };
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        if required {
            return Err(Error::invalid(format!(
                "{} holds no PEM certificate",
                path.display()
            )));
        }
        return Ok(None);
    }
    Ok(Some(ureq::tls::RootCerts::new_with_certs(&certs)))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn s3_error_text_is_code_and_message_without_control_characters() {
        let xml = b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The bucket\x1b[31m does not exist</Message></Error>";
        assert_eq!(
            error_text(xml),
            "NoSuchBucket: The bucket[31m does not exist"
        );
        assert_eq!(error_text(b"plain failure\nsecond"), "plain failure");
        assert!(error_text(&[b'x'; 5000]).len() <= 300);
        let echoed = b"<Error><Code>Bad</Code><Message>no /b/p/config?X-Amz-Algorithm=AWS4&X-Amz-Credential=id%2F1&X-Amz-Signature=b1035fb6 here</Message></Error>";
        assert_eq!(error_text(echoed), "Bad: no /b/p/config… here");
        let bare = b"<Error><Code>Bad</Code><Message>x-amz-signature=b1035fb6</Message></Error>";
        assert_eq!(error_text(bare), "Bad: …");
    }

    #[test]
    fn jitter_stays_between_half_and_the_whole_delay() {
        for _ in 0..100 {
            let d = jitter(Duration::from_millis(800));
            assert!(d >= Duration::from_millis(400) && d <= Duration::from_millis(800));
        }
    }

    /// A server on loopback that answers every request with `answer(method
    /// and target)`, a whole HTTP answer, and closes the connection.
    pub(crate) fn hostile_server(answer: impl Fn(&str) -> String + Send + 'static) -> S3Client {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let line = text.lines().next().unwrap_or("").to_string();
                let _ = std::io::Write::write_all(&mut conn, answer(&line).as_bytes());
            }
        });
        let settings = S3Settings {
            endpoints: vec![format!("http://127.0.0.1:{port}")],
            region: "test".into(),
            path_style: true,
            key: super::super::settings::AccessKey {
                id: "id".into(),
                secret: zeroize::Zeroizing::new("secret".into()),
                token: None,
            },
            ca_file: None,
            limit_upload: 0,
            limit_download: 0,
        };
        let location = S3Location {
            bucket: "bucket".into(),
            prefix: "p".into(),
        };
        S3Client::new(location, &settings, Duration::from_secs(2)).unwrap()
    }

    pub(crate) fn http(status: &str, headers: &str, body: &str) -> String {
        format!(
            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n{headers}\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn s3_object_names_are_shown_without_control_characters() {
        let client = hostile_server(|_| http("500 Internal Server Error", "", ""));
        assert_eq!(
            client.shown("keys/\u{1b}[2Jx\n"),
            "s3://bucket/p/keys/\\u{1b}[2Jx\\n"
        );
    }

    #[test]
    fn s3_listing_whose_continuation_tokens_go_round_is_an_error() {
        let pages = std::sync::atomic::AtomicUsize::new(0);
        let client = hostile_server(move |_| {
            // Tokens a, b, a, b, …: never the one just followed, yet endless.
            let n = pages.fetch_add(1, Ordering::Relaxed);
            let token = if n.is_multiple_of(2) { "a" } else { "b" };
            let body = format!(
                "<?xml version=\"1.0\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bucket</Name><Prefix>p/keys/</Prefix>\
                 <KeyCount>1</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>\
                 <Contents><Key>p/keys/{n:016x}.key</Key><Size>1</Size></Contents>\
                 <NextContinuationToken>{token}</NextContinuationToken></ListBucketResult>"
            );
            http("200 OK", "", &body)
        });
        let err = client.list("keys").unwrap_err().to_string();
        assert!(
            err.contains("s3://bucket/p/keys") && err.contains("continuation token"),
            "{err}"
        );
    }

    #[test]
    fn s3_listing_that_never_ends_is_stopped_at_its_cap() {
        let pages = std::sync::atomic::AtomicUsize::new(0);
        let client = hostile_server(move |_| {
            // A thousand new names and a fresh token on every page.
            let n = pages.fetch_add(1, Ordering::Relaxed);
            let keys: String = (0..1000)
                .map(|i| {
                    format!("<Contents><Key>p/packs/{n:08x}{i:04x}</Key><Size>1</Size></Contents>")
                })
                .collect();
            let body = format!(
                "<?xml version=\"1.0\"?><ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>bucket</Name>\
                 <IsTruncated>true</IsTruncated>{keys}<NextContinuationToken>t{n}</NextContinuationToken></ListBucketResult>"
            );
            http("200 OK", "", &body)
        });
        let err = client.list("packs").unwrap_err().to_string();
        assert!(err.contains("more than 4000000 objects"), "{err}");
    }

    #[test]
    fn s3_partial_answer_of_another_range_is_an_error() {
        let client = hostile_server(|_| {
            http(
                "206 Partial Content",
                "content-range: bytes 0-3/100\r\n",
                "abcd",
            )
        });
        let err = client.get_range("packs/x", 50, 4).unwrap_err().to_string();
        assert!(
            err.contains("s3://bucket/p/packs/x")
                && err.contains("bytes 50-53")
                && err.contains("0-3/100"),
            "{err}"
        );
        assert!(!err.contains("X-Amz-Signature"), "{err}");
        let right = hostile_server(|_| {
            http(
                "206 Partial Content",
                "content-range: bytes 50-53/100\r\n",
                "abcd",
            )
        });
        assert_eq!(right.get_range("packs/x", 50, 4).unwrap(), b"abcd");
    }

    #[test]
    fn s3_get_of_a_missing_bucket_is_an_error_not_a_missing_object() {
        let xml = |code: &str| {
            format!(
                "<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>not here</Message></Error>"
            )
        };
        let (no_bucket, no_key) = (xml("NoSuchBucket"), xml("NoSuchKey"));
        let client = hostile_server(move |_| http("404 Not Found", "", &no_bucket));
        let err = client.get("config", 4096).unwrap_err().to_string();
        assert!(
            err.contains("s3://bucket/p/config") && err.contains("NoSuchBucket"),
            "{err}"
        );
        let client = hostile_server(move |_| http("404 Not Found", "", &no_key));
        assert_eq!(client.get("config", 4096).unwrap(), None);
    }

    #[test]
    fn bounded_reads_refuse_more_than_the_limit() {
        assert_eq!(read_bounded(&b"abc"[..], 3).unwrap(), Some(b"abc".to_vec()));
        assert_eq!(read_bounded(&b"abcd"[..], 3).unwrap(), None);
    }
}
