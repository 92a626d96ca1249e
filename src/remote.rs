//! Copies to another machine: `snapfs copy --to ssh://host/path` runs
//! `snapfs serve` on the far side over ssh and speaks a small framed
//! protocol on its stdin/stdout (as rsync and borg do). The far side does
//! everything a local target does: durable packs, indexed at once, a
//! snapshot only once all its data is there.
//!
//! ```text
//! frame    length u32 LE | payload
//! request  op u8 | body            response  0 | body   or   1 | error text
//! ops      0 hello(version)  1 snapshots  2 missing_chunks(ids)  3 has_trees(hashes)
//!          4 put_pack(name, bytes)  5 commit(record id, added bytes)
//! ```

use std::collections::HashSet;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use crate::codec::{Decoder, Encoder};
use crate::copy::{LocalTarget, Target};
use crate::error::{Error, Result};
use crate::ids::{ChunkId, Hash, PackName, TreeHash};
use crate::repo::Config;

const PROTOCOL: u64 = 1;
const MAX_FRAME: usize = 1 << 30;

fn write_frame(w: &mut impl Write, payload: &[u8]) -> std::io::Result<()> {
    w.write_all(&(payload.len() as u32).to_le_bytes())?;
    w.write_all(payload)?;
    w.flush()
}

fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_le_bytes(len) as usize;
    if n > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

fn hashes(e: &mut Encoder, hs: impl ExactSizeIterator<Item = Hash>) {
    e.u64(hs.len() as u64);
    for h in hs {
        e.hash(&h);
    }
}

fn read_hashes(d: &mut Decoder) -> Result<Vec<Hash>> {
    let n = d.u64()?;
    (0..n).map(|_| d.hash()).collect()
}

/// An ssh destination: `ssh://[user@]host[:port]/path`.
pub struct SshUrl {
    pub host: String,
    pub port: Option<u16>,
    pub path: String,
}

pub fn parse_ssh_url(s: &str) -> Option<SshUrl> {
    let rest = s.strip_prefix("ssh://")?;
    let (hostport, path) = rest.split_once('/')?;
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), Some(p.parse().ok()?)),
        None => (hostport.to_string(), None),
    };
    if host.is_empty() {
        return None;
    }
    Some(SshUrl {
        host,
        port,
        path: format!("/{path}"),
    })
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub struct RemoteTarget {
    child: Child,
    to: BufWriter<ChildStdin>,
    from: BufReader<ChildStdout>,
}

impl RemoteTarget {
    /// Start `snapfs serve` at the far end. `ssh` is the command to reach it
    /// (`$SNAPFS_SSH`, default `ssh`), `remote_snapfs` the program there.
    pub fn connect(url: &SshUrl, ssh: &str, remote_snapfs: &str) -> Result<RemoteTarget> {
        let mut words: Vec<String> = ssh.split_whitespace().map(String::from).collect();
        if words.is_empty() {
            words.push("ssh".into());
        }
        let mut cmd = Command::new(&words[0]);
        cmd.args(&words[1..]);
        if let Some(p) = url.port {
            cmd.arg("-p").arg(p.to_string());
        }
        cmd.arg(&url.host).arg(format!(
            "{} --repo {} serve",
            remote_snapfs,
            shell_quote(&url.path)
        ));
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| Error::invalid(format!("cannot run {}: {e}", words[0])))?;
        let to = BufWriter::new(child.stdin.take().expect("piped stdin"));
        let from = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut t = RemoteTarget { child, to, from };
        let mut e = Encoder::new();
        e.u8(0);
        e.u64(PROTOCOL);
        t.call(e.buf)?;
        Ok(t)
    }

    fn call(&mut self, req: Vec<u8>) -> Result<Vec<u8>> {
        let lost = |e: std::io::Error| {
            Error::invalid(format!("connection to the remote snapfs lost: {e}"))
        };
        write_frame(&mut self.to, &req).map_err(lost)?;
        let resp = read_frame(&mut self.from).map_err(lost)?.ok_or_else(|| {
            Error::invalid("the remote snapfs closed the connection (see its message above)")
        })?;
        match resp.first() {
            Some(0) => Ok(resp[1..].to_vec()),
            Some(_) => Err(Error::invalid(format!(
                "remote: {}",
                String::from_utf8_lossy(&resp[1..])
            ))),
            None => Err(Error::invalid("empty answer from the remote snapfs")),
        }
    }

    fn ask_bits(&mut self, op: u8, hs: Vec<Hash>) -> Result<Vec<bool>> {
        let mut e = Encoder::new();
        e.u8(op);
        hashes(&mut e, hs.into_iter());
        Ok(self.call(e.buf)?.into_iter().map(|b| b != 0).collect())
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
        let body = self.call(vec![1])?;
        Ok(read_hashes(&mut Decoder::new(&body))?.into_iter().collect())
    }

    fn missing_chunks(&mut self, ids: &[ChunkId]) -> Result<Vec<bool>> {
        self.ask_bits(2, ids.iter().map(|i| i.0).collect())
    }

    fn has_trees(&mut self, hs: &[TreeHash]) -> Result<Vec<bool>> {
        self.ask_bits(3, hs.iter().map(|h| h.0).collect())
    }

    fn put_pack(&mut self, name: &PackName, bytes: &[u8]) -> Result<()> {
        let mut e = Encoder::new();
        e.u8(4);
        e.hash(&name.0);
        e.bytes(bytes);
        self.call(e.buf).map(|_| ())
    }

    fn commit_snapshot(&mut self, record: &ChunkId, added_bytes: u64) -> Result<()> {
        let mut e = Encoder::new();
        e.u8(5);
        e.hash(&record.0);
        e.u64(added_bytes);
        self.call(e.buf).map(|_| ())
    }
}

/// `snapfs serve`: the far end of a copy, on stdin/stdout.
pub fn serve(repo_path: &Path) -> Result<()> {
    let mut input = BufReader::new(std::io::stdin().lock());
    let mut output = BufWriter::new(std::io::stdout().lock());
    let mut target: Option<LocalTarget> = None;
    while let Some(req) = read_frame(&mut input).map_err(|e| Error::Io {
        path: "<stdin>".into(),
        source: e,
    })? {
        let answer = (|| -> Result<Vec<u8>> {
            let mut d = Decoder::new(&req);
            let op = d.u8()?;
            if op == 0 {
                let v = d.u64()?;
                if v != PROTOCOL {
                    return Err(Error::invalid(format!(
                        "protocol {v} not understood here (this snapfs speaks {PROTOCOL}); use matching versions"
                    )));
                }
                target = Some(LocalTarget::open_or_init(repo_path, Config::default())?);
                return Ok(Vec::new());
            }
            let t = target
                .as_mut()
                .ok_or_else(|| Error::invalid("hello expected first"))?;
            let mut e = Encoder::new();
            match op {
                1 => hashes(
                    &mut e,
                    t.snapshots()?.into_iter().collect::<Vec<_>>().into_iter(),
                ),
                2 => {
                    let ids: Vec<ChunkId> = read_hashes(&mut d)?.into_iter().map(ChunkId).collect();
                    e.buf = t.missing_chunks(&ids)?.into_iter().map(u8::from).collect();
                }
                3 => {
                    let hs: Vec<TreeHash> =
                        read_hashes(&mut d)?.into_iter().map(TreeHash).collect();
                    e.buf = t.has_trees(&hs)?.into_iter().map(u8::from).collect();
                }
                4 => {
                    let name = PackName(d.hash()?);
                    t.put_pack(&name, d.bytes()?)?;
                }
                5 => {
                    let record = ChunkId(d.hash()?);
                    t.commit_snapshot(&record, d.u64()?)?;
                }
                _ => return Err(Error::invalid(format!("unknown request {op}"))),
            }
            Ok(e.buf)
        })();
        let frame = match answer {
            Ok(mut body) => {
                body.insert(0, 0);
                body
            }
            Err(err) => {
                let mut b = vec![1];
                b.extend_from_slice(err.to_string().as_bytes());
                b
            }
        };
        write_frame(&mut output, &frame).map_err(|e| Error::Io {
            path: "<stdout>".into(),
            source: e,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_urls_parse() {
        let u = parse_ssh_url("ssh://backup@nas:2222/srv/snapfs").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("backup@nas", Some(2222), "/srv/snapfs")
        );
        let u = parse_ssh_url("ssh://nas/x").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("nas", None, "/x")
        );
        assert!(parse_ssh_url("/local/path").is_none());
        assert!(parse_ssh_url("ssh:///x").is_none());
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello").unwrap();
        write_frame(&mut buf, b"").unwrap();
        let mut r = &buf[..];
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"hello");
        assert_eq!(read_frame(&mut r).unwrap().unwrap(), b"");
        assert!(read_frame(&mut r).unwrap().is_none());
    }
}
