//! Copies to another machine: `snapfs copy --to ssh://host/path` runs
//! `snapfs serve` on the far side over ssh and speaks a small framed
//! protocol on its stdin/stdout (as rsync and borg do). The far side does
//! everything a local target does: durable packs, verified and indexed at
//! once, a snapshot only once all its data is there.
//!
//! `serve` is also the far side of a repository reached over ssh
//! (`--repo ssh://…`, an encrypted copy): hello version 2 opens a store
//! session instead, in which only the store requests of
//! [`crate::repo::ssh::wire`] are understood, answered by a keyless
//! [`DirStore`]. A directory takes one kind of session only: a plain
//! repository indexed here (with its `catalog.db`) copy sessions, a
//! repository kept as a store (a `config` and no catalog) store sessions.
//!
//! ```text
//! frame    length u32 LE | payload
//! request  op u8 | body            response  0 | body   or   1 | error text
//! ops      0 hello(version: 1 copy, 2 store)  1 snapshots  2 missing_chunks(ids)  3 has_trees(hashes)
//!          4 put_pack(name, bytes)  5 commit(record id, added bytes)
//! ```
//!
//! Integers in bodies are LEB128 varints, ids and hashes 32 raw bytes, a
//! list is its count then its items, bytes are length-prefixed. Answers:
//! hello → the largest pack the server accepts (a varint; servers before
//! it answered nothing, read as "1 GiB"), snapshots → a list of hashes,
//! missing_chunks / has_trees → one byte (0 or 1) per id asked, put_pack and
//! commit → nothing.
//!
//! Each side treats the other's frames as hostile input: a frame's length
//! is checked against what that frame can legitimately be before anything
//! is read, its bytes are read as they arrive (a claimed length allocates
//! nothing), and every request and answer is decoded strictly
//! ([`decode_request`] is a pure function, ready for a fuzzer). What the
//! server then does with a pack or a commit is checked by
//! [`LocalTarget`](crate::commands::copy::LocalTarget).

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::commands::copy::{LocalTarget, ReceiveOptions, Target};
use crate::error::{Error, Result};
use crate::format::codec::{Decoder, Encoder};
use crate::ids::{ChunkId, Hash, PackName, TreeHash};
use crate::repo::Config;
use crate::repo::ssh::serve::{DirStore, MAX_PACK_LIMIT};
use crate::repo::ssh::wire::{
    STORE_PROTOCOL, SshUrl, decode_store_request, forward_stderr, peer_text, read_frame,
    shell_quote, write_frame,
};

const PROTOCOL: u64 = 1;

/// The largest request other than put_pack, and the largest frame read
/// before hello has opened the repository (whose pack limit bounds
/// put_pack).
const MAX_REQUEST: usize = 1 << 20;
/// Ids or hashes in one missing_chunks / has_trees request (clients ask
/// 1024 at a time).
const MAX_IDS: u64 = 16 * 1024;
/// The largest answer a client reads: a snapshot list of about two million.
const MAX_ANSWER: usize = 64 << 20;
/// What a server that does not say accepts (its old frame limit).
const OLD_PACK_LIMIT: u64 = (1 << 30) - 64;
/// Bytes of a put_pack frame besides the pack: op, name, length varint.
const PUT_OVERHEAD: u64 = 1 + 32 + 10;
/// Bytes of a store put frame besides the object: op, name with its
/// length, length varint.
const STORE_PUT_OVERHEAD: u64 = 1 + 2 + crate::repo::ssh::wire::MAX_NAME as u64 + 10;

fn hashes(e: &mut Encoder, hs: impl ExactSizeIterator<Item = Hash>) {
    e.u64(hs.len() as u64);
    for h in hs {
        e.hash(&h);
    }
}

/// A list of at most `max` hashes; the count is checked before anything
/// is allocated for it.
fn read_hashes(d: &mut Decoder, max: u64) -> Result<Vec<Hash>> {
    let n = d.u64()?;
    if n > max {
        return Err(Error::invalid(format!(
            "a list of {n} hashes; at most {max} are accepted"
        )));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        out.push(d.hash()?);
    }
    Ok(out)
}

/// A request of the copy protocol, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum Request<'a> {
    Hello { version: u64 },
    Snapshots,
    MissingChunks(Vec<ChunkId>),
    HasTrees(Vec<TreeHash>),
    PutPack { name: PackName, bytes: &'a [u8] },
    Commit { record: ChunkId, added_bytes: u64 },
}

impl Request<'_> {
    const HELLO: u8 = 0;
    const SNAPSHOTS: u8 = 1;
    const MISSING_CHUNKS: u8 = 2;
    const HAS_TREES: u8 = 3;
    const PUT_PACK: u8 = 4;
    const COMMIT: u8 = 5;

    /// The frame payload of this request. A put_pack's bytes are left out
    /// (the caller writes them after this prefix, without copying them).
    fn encode_prefix(&self) -> Vec<u8> {
        let mut e = Encoder::new();
        match self {
            Request::Hello { version } => {
                e.u8(Self::HELLO);
                e.u64(*version);
            }
            Request::Snapshots => e.u8(Self::SNAPSHOTS),
            Request::MissingChunks(ids) => {
                e.u8(Self::MISSING_CHUNKS);
                hashes(&mut e, ids.iter().map(|i| i.0));
            }
            Request::HasTrees(hs) => {
                e.u8(Self::HAS_TREES);
                hashes(&mut e, hs.iter().map(|h| h.0));
            }
            Request::PutPack { name, bytes } => {
                e.u8(Self::PUT_PACK);
                e.hash(&name.0);
                e.u64(bytes.len() as u64);
            }
            Request::Commit {
                record,
                added_bytes,
            } => {
                e.u8(Self::COMMIT);
                e.hash(&record.0);
                e.u64(*added_bytes);
            }
        }
        e.buf
    }
}

/// Decode one request frame strictly: a known op, a body that is exactly
/// what the op needs (no trailing bytes), bounded lists. Pure and
/// panic-free on any input, so it can serve as a fuzz target.
pub fn decode_request(frame: &[u8]) -> Result<Request<'_>> {
    let mut d = Decoder::new(frame);
    let op = d.u8()?;
    let req = match op {
        Request::HELLO => Request::Hello { version: d.u64()? },
        Request::SNAPSHOTS => Request::Snapshots,
        Request::MISSING_CHUNKS => Request::MissingChunks(
            read_hashes(&mut d, MAX_IDS)?
                .into_iter()
                .map(ChunkId)
                .collect(),
        ),
        Request::HAS_TREES => Request::HasTrees(
            read_hashes(&mut d, MAX_IDS)?
                .into_iter()
                .map(TreeHash)
                .collect(),
        ),
        Request::PUT_PACK => Request::PutPack {
            name: PackName(d.hash()?),
            bytes: d.bytes()?,
        },
        Request::COMMIT => Request::Commit {
            record: ChunkId(d.hash()?),
            added_bytes: d.u64()?,
        },
        _ => return Err(Error::invalid(format!("unknown request {op}"))),
    };
    if !d.is_empty() {
        return Err(Error::invalid(format!("request {op} has trailing bytes")));
    }
    Ok(req)
}

pub use crate::repo::ssh::wire::parse_ssh_url;

pub struct RemoteTarget {
    child: Child,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
    pack_limit: u64,
}

impl RemoteTarget {
    /// Start `snapfs serve` at the far end. `ssh` is the command to reach it
    /// (`$SNAPFS_SSH`, default `ssh`), `remote_snapfs` the program there.
    pub fn connect(url: &SshUrl, ssh: &str, remote_snapfs: &str) -> Result<RemoteTarget> {
        let dest = url.dest()?;
        let mut words: Vec<String> = ssh.split_whitespace().map(String::from).collect();
        if words.is_empty() {
            words.push("ssh".into());
        }
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        if let Some(p) = dest.port {
            cmd.arg("-p").arg(p.to_string());
        }
        // `--`: whatever the destination says, ssh reads no option from it.
        cmd.arg("--").arg(&dest.login).arg(format!(
            "{} --repo {} serve",
            remote_snapfs,
            shell_quote(&dest.path)
        ));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::invalid(format!("cannot run {}: {e}", words[0])))?;
        forward_stderr(child.stderr.take().expect("piped stderr"));
        let to = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let from = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut t = RemoteTarget {
            child,
            to,
            from,
            pack_limit: OLD_PACK_LIMIT,
        };
        let answer = t.call(&Request::Hello { version: PROTOCOL })?;
        if !answer.is_empty() {
            let mut d = Decoder::new(&answer);
            let limit = d.u64()?;
            if !d.is_empty() {
                return Err(Error::invalid("the remote snapfs answered hello oddly"));
            }
            // Never more than the frame length field can carry.
            t.pack_limit = limit.min(OLD_PACK_LIMIT);
        }
        Ok(t)
    }

    fn call(&mut self, req: &Request) -> Result<Vec<u8>> {
        let lost = |e: std::io::Error| {
            Error::invalid(format!("connection to the remote snapfs lost: {e}"))
        };
        let prefix = req.encode_prefix();
        let body: &[u8] = match req {
            Request::PutPack { bytes, .. } => bytes,
            _ => &[],
        };
        write_frame(&mut self.to, &[&prefix, body]).map_err(lost)?;
        let mut resp = read_frame(&mut self.from, MAX_ANSWER)
            .map_err(lost)?
            .ok_or_else(|| {
                Error::invalid("the remote snapfs closed the connection (see its message above)")
            })?;
        match resp.first() {
            Some(0) => {
                resp.remove(0);
                Ok(resp)
            }
            Some(1) => Err(Error::invalid(format!("remote: {}", peer_text(&resp[1..])))),
            Some(s) => Err(Error::invalid(format!(
                "the remote snapfs answered with status {s}, which is not in the protocol"
            ))),
            None => Err(Error::invalid("empty answer from the remote snapfs")),
        }
    }

    /// One answer byte per hash asked, each 0 or 1, or an error.
    fn ask_bits(&mut self, req: &Request, asked: usize) -> Result<Vec<bool>> {
        let answer = self.call(req)?;
        if answer.len() != asked || answer.iter().any(|b| *b > 1) {
            return Err(Error::invalid(format!(
                "the remote snapfs answered {} bytes for {asked} questions",
                answer.len()
            )));
        }
        Ok(answer.into_iter().map(|b| b == 1).collect())
    }

    /// An answer that must be empty.
    fn call_done(&mut self, req: &Request) -> Result<()> {
        if self.call(req)?.is_empty() {
            Ok(())
        } else {
            Err(Error::invalid(
                "the remote snapfs sent an answer where none belongs",
            ))
        }
    }
}

impl Drop for RemoteTarget {
    fn drop(&mut self) {
        let _ = self.to.flush();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Target for RemoteTarget {
    fn snapshots(&mut self) -> Result<HashSet<Hash>> {
        let body = self.call(&Request::Snapshots)?;
        let mut d = Decoder::new(&body);
        let list = read_hashes(&mut d, (MAX_ANSWER / 32) as u64)?;
        if !d.is_empty() {
            return Err(Error::invalid(
                "the remote snapfs sent a damaged snapshot list",
            ));
        }
        Ok(list.into_iter().collect())
    }

    fn missing_chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.ask_bits(&Request::MissingChunks(ids.to_vec()), ids.len())
    }

    fn has_trees(&mut self, hs: &[TreeHash]) -> Result<Vec<bool>> {
        self.ask_bits(&Request::HasTrees(hs.to_vec()), hs.len())
    }

    fn pack_limit(&self) -> u64 {
        self.pack_limit
    }

    fn put_pack(&mut self, name: &PackName, bytes: &[u8]) -> Result<()> {
        self.call_done(&Request::PutPack { name: *name, bytes })
    }

    fn commit_snapshot(&mut self, record: &ChunkId, added_bytes: u64) -> Result<()> {
        self.call_done(&Request::Commit {
            record: *record,
            added_bytes,
        })
    }
}

/// How `snapfs serve` runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServeOptions {
    /// Refuse anything that could destroy or replace history, whatever the
    /// client sends: in a copy session no repository is created and no
    /// file replaced (see [`ReceiveOptions`]); in a store session nothing
    /// is deleted (not even a lease), no key slot replaced, no lease replaced but
    /// by its holder, no doom notice taken.
    /// For a forced command in `authorized_keys`.
    pub append_only: bool,
}

/// What a connection's hello opened.
enum Session {
    /// Nothing yet: only hello is understood.
    None,
    /// Hello 1: the far end of a copy, into a repository opened here.
    Copy(Box<LocalTarget>),
    /// Hello 2: the repository's objects, kept without a key.
    Store(DirStore),
}

impl Session {
    /// The largest request frame this session takes.
    fn frame_limit(&self) -> usize {
        let pack = match self {
            Session::None => return MAX_REQUEST,
            Session::Copy(t) => copy_pack_limit(t).saturating_add(PUT_OVERHEAD),
            Session::Store(s) => s.pack_limit().saturating_add(STORE_PUT_OVERHEAD),
        };
        usize::try_from(pack).unwrap_or(usize::MAX).max(MAX_REQUEST)
    }
}

/// The largest pack a copy session takes: its repository's, never more
/// than a store session's bound, whatever the repository's `config` says.
fn copy_pack_limit(t: &LocalTarget) -> u64 {
    t.pack_limit().min(MAX_PACK_LIMIT)
}

/// What a served directory is, and so which session it takes.
#[derive(Debug, PartialEq, Eq)]
enum DirKind {
    /// A plain repository this machine indexes (`catalog.db` beside its
    /// objects): copy sessions only. A store session would let a client
    /// plant packs the catalog never checked, or delete indexed ones.
    Local,
    /// A `config` and no catalog: an encrypted repository, or one made
    /// through `--repo ssh://`, whose catalog lives with its clients.
    /// Store sessions only.
    Store,
    /// Neither (missing or not yet a repository): either session may
    /// make it.
    New,
}

fn kind_of(root: &Path) -> Result<DirKind> {
    let present = |name: &str| {
        let p = root.join(name);
        match std::fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                Ok(false)
            }
            Err(e) => Err(Error::Io { path: p, source: e }),
        }
    };
    Ok(if present("catalog.db")? {
        DirKind::Local
    } else if present("config")? {
        DirKind::Store
    } else {
        DirKind::New
    })
}

/// `snapfs serve`: the far end of a copy, or of a repository reached over
/// ssh, on stdin/stdout.
pub fn serve(repo_path: &Path, opts: ServeOptions) -> Result<()> {
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    let mut session = Session::None;
    loop {
        let Some(frame) = read_frame(&mut input, session.frame_limit()).map_err(|e| Error::Io {
            path: "<stdin>".into(),
            source: e,
        })?
        else {
            return Ok(());
        };
        let answer = answer(repo_path, opts, &mut session, &frame);
        let (status, body) = match answer {
            Ok(body) => (0u8, body),
            Err(err) => (1u8, err.to_string().into_bytes()),
        };
        write_frame(&mut output, &[&[status], &body]).map_err(|e| Error::Io {
            path: "<stdout>".into(),
            source: e,
        })?;
    }
}

/// The body of the answer to one request frame.
fn answer(
    repo_path: &Path,
    opts: ServeOptions,
    session: &mut Session,
    frame: &[u8],
) -> Result<Vec<u8>> {
    match session {
        Session::None => {
            let Request::Hello { version } = decode_request(frame)? else {
                return Err(Error::invalid("hello expected first"));
            };
            let mut e = Encoder::new();
            match version {
                PROTOCOL => {
                    if kind_of(repo_path)? == DirKind::Store {
                        return Err(Error::invalid(format!(
                            "{} is a repository kept as an object store (a config and no catalog: \
                             encrypted, or made through `--repo ssh://`); it takes store sessions \
                             (`--repo ssh://…`, or a copy sealed through one), not a copy session \
                             into a repository indexed here. (If it is a plain repository of this \
                             machine whose catalog.db was lost, run `snapfs --repo {} rebuild-catalog` \
                             here first.)",
                            repo_path.display(),
                            repo_path.display()
                        )));
                    }
                    let t = LocalTarget::open(
                        repo_path,
                        Config::default(),
                        ReceiveOptions {
                            append_only: opts.append_only,
                        },
                    )?;
                    e.u64(copy_pack_limit(&t));
                    *session = Session::Copy(Box::new(t));
                }
                STORE_PROTOCOL => {
                    if kind_of(repo_path)? == DirKind::Local {
                        return Err(Error::invalid(format!(
                            "{} is a plain repository indexed on this machine (it has a catalog); \
                             it takes copy sessions (`snapfs copy --to ssh://…`), whose packs are \
                             checked chunk by chunk, not a store session (`--repo ssh://…`)",
                            repo_path.display()
                        )));
                    }
                    let s = DirStore::open(repo_path, opts.append_only, super::pack_limit)?;
                    e.u64(s.pack_limit());
                    *session = Session::Store(s);
                }
                _ => {
                    return Err(Error::invalid(format!(
                        "protocol {version} not understood here (this snapfs speaks {PROTOCOL} and {STORE_PROTOCOL}); use matching versions"
                    )));
                }
            }
            Ok(e.buf)
        }
        Session::Store(s) => {
            if frame.first() == Some(&Request::HELLO) {
                return Err(Error::invalid("hello was already received"));
            }
            s.answer(decode_store_request(frame)?)
        }
        Session::Copy(t) => {
            let mut e = Encoder::new();
            match decode_request(frame)? {
                Request::Hello { .. } => return Err(Error::invalid("hello was already received")),
                Request::Snapshots => {
                    let list: Vec<Hash> = t.snapshots()?.into_iter().collect();
                    hashes(&mut e, list.into_iter());
                }
                Request::MissingChunks(ids) => {
                    e.buf = t.missing_chunks(&ids)?.into_iter().map(u8::from).collect();
                }
                Request::HasTrees(hs) => {
                    e.buf = t.has_trees(&hs)?.into_iter().map(u8::from).collect();
                }
                Request::PutPack { name, bytes } => t.put_pack(&name, bytes)?,
                Request::Commit {
                    record,
                    added_bytes,
                } => t.commit_snapshot(&record, added_bytes)?,
            }
            Ok(e.buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip() {
        let pack = b"pack bytes".to_vec();
        let reqs = [
            Request::Hello { version: 1 },
            Request::Snapshots,
            Request::MissingChunks(vec![ChunkId(Hash::of(b"a")), ChunkId(Hash::of(b"b"))]),
            Request::HasTrees(vec![TreeHash(Hash::of(b"t"))]),
            Request::PutPack {
                name: PackName(Hash::of(&pack)),
                bytes: &pack,
            },
            Request::Commit {
                record: ChunkId(Hash::of(b"r")),
                added_bytes: 77,
            },
        ];
        for req in reqs {
            let mut frame = req.encode_prefix();
            if let Request::PutPack { bytes, .. } = &req {
                frame.extend_from_slice(bytes);
            }
            assert_eq!(decode_request(&frame).unwrap(), req);
            frame.push(0);
            assert!(decode_request(&frame).is_err(), "trailing byte accepted");
        }
        let mut e = Encoder::new();
        e.u8(Request::MISSING_CHUNKS);
        e.u64(u64::MAX);
        assert!(decode_request(&e.buf).is_err());
    }

    /// Thousands of random and mutated frames through the request decoder:
    /// errors, never a panic or a huge allocation. (A stand-in for a fuzzer;
    /// `decode_request` is the target.)
    #[test]
    fn request_decoder_survives_random_and_mutated_frames() {
        let pack = vec![7u8; 300];
        let seeds: Vec<Vec<u8>> = [
            Request::Hello { version: 1 },
            Request::Snapshots,
            Request::MissingChunks(vec![ChunkId(Hash::of(b"a")); 3]),
            Request::HasTrees(vec![TreeHash(Hash::of(b"t")); 2]),
            Request::PutPack {
                name: PackName(Hash::of(&pack)),
                bytes: &pack,
            },
            Request::Commit {
                record: ChunkId(Hash::of(b"r")),
                added_bytes: 1 << 40,
            },
        ]
        .iter()
        .map(|r| {
            let mut f = r.encode_prefix();
            if let Request::PutPack { bytes, .. } = r {
                f.extend_from_slice(bytes);
            }
            f
        })
        .collect();
        let decoded =
            crate::repo::ssh::wire::mutated_frames(0x9e37_79b9_7f4a_7c15, &seeds, |frame| {
                decode_request(frame).is_ok()
            });
        assert!(decoded > 0, "no frame decoded at all: the seeds are wrong");
    }
}
