//! `snapfs --repo R serve` started by a test that plays its client, and
//! spoken to in its framed protocol (a little-endian u32 length, then the
//! payload; answers start with 0 for success or 1 for an error text).

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use super::*;

pub(crate) struct ServeProcess {
    pub(crate) child: Child,
    to: Option<ChildStdin>,
    from: ChildStdout,
}

impl ServeProcess {
    pub(crate) fn start(repo: &Path, extra: &[&str]) -> ServeProcess {
        let mut cmd = snapfs();
        cmd.arg("--repo").arg(repo).arg("serve").args(extra);
        ServeProcess::spawn(cmd)
    }

    /// `cmd` (which runs serve some other way, e.g. under a shell that
    /// sets its umask) with its standard streams piped.
    pub(crate) fn spawn(mut cmd: Command) -> ServeProcess {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn snapfs serve");
        let to = child.stdin.take();
        let from = child.stdout.take().expect("piped stdout");
        ServeProcess { child, to, from }
    }

    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        let to = self.to.as_mut().expect("stdin open");
        to.write_all(bytes).expect("write to serve");
        to.flush().expect("flush to serve");
    }

    /// One request; Ok(answer body) or Err(error text). Panics, with what
    /// serve said on stderr, if it hangs up instead of answering.
    pub(crate) fn call(&mut self, payload: &[u8]) -> Result<Vec<u8>, String> {
        let mut frame = (payload.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(payload);
        self.send_raw(&frame);
        let mut len = [0u8; 4];
        if let Err(e) = self.from.read_exact(&mut len) {
            let stderr = self.finish();
            panic!("serve hung up instead of answering ({e}); its stderr:\n{stderr}");
        }
        let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
        self.from.read_exact(&mut body).expect("read answer");
        match body.first() {
            Some(0) => Ok(body[1..].to_vec()),
            Some(1) => Err(String::from_utf8_lossy(&body[1..]).into_owned()),
            other => panic!("serve answered with status {other:?}"),
        }
    }

    /// Close its input, wait for it, and return what it said on stderr.
    pub(crate) fn finish(&mut self) -> String {
        drop(self.to.take());
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut err) = self.child.stderr.take() {
            let _ = err.read_to_string(&mut s);
        }
        s
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        drop(self.to.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
