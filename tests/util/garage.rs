//! A real three-node Garage cluster on loopback (127.0.0.1, .2 and .3,
//! replication factor 3, one node per address), with a bucket and a key
//! made for the test; stopped and removed on drop.
//!
//! Each test gets a cluster of its own on ports nobody uses, so tests run
//! in parallel without sharing a bucket. Garage needs a quorum of two
//! nodes for reads and writes, so one node may be killed
//! ([`Garage::kill_node`]) and the cluster keeps answering through the
//! other endpoints, then started again ([`Garage::restart_node`]).

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

const KEY_ID: &str = "GKsnapfstest000000000001";
const SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
pub(crate) const BUCKET: &str = "snapfs-test";

pub(crate) struct Garage {
    nodes: Vec<Option<Child>>,
    /// The S3 port, the same on every node's address.
    pub(crate) s3_port: u16,
    /// The RPC port, likewise.
    rpc_port: u16,
    /// Each node's full id (`KEY@ADDRESS`), to connect to it.
    ids: Vec<String>,
    dir: TempDir,
}

/// The garage binary: on PATH, or where `cargo install` puts it.
fn garage_bin() -> PathBuf {
    let in_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("garage"))
            .find(|p| p.is_file())
    });
    let cargo = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/garage"));
    in_path.or(cargo.filter(|p| p.is_file())).expect(
        "this test needs the garage binary (scripts/test.sh installs it with cargo install garage)",
    )
}

/// A port free on all three loopback addresses.
fn port_free_everywhere() -> u16 {
    loop {
        let p = free_port();
        let free =
            (1..=3).all(|i| std::net::TcpListener::bind((format!("127.0.0.{i}"), p)).is_ok());
        if free {
            return p;
        }
    }
}

impl Garage {
    pub(crate) fn start() -> Garage {
        let dir = tempdir();
        let base = canonical(dir.path());
        let rpc_port = port_free_everywhere();
        let s3_port = loop {
            let p = port_free_everywhere();
            if p != rpc_port {
                break p;
            }
        };
        let secret = "7f".repeat(32);
        let mut nodes = Vec::new();
        for i in 1..=3 {
            let n = base.join(format!("n{i}"));
            mkdir(&n);
            write_file(
                &base.join(format!("n{i}.toml")),
                format!(
                    "metadata_dir = \"{n}/meta\"\n\
                     data_dir = \"{n}/data\"\n\
                     db_engine = \"lmdb\"\n\
                     replication_factor = 3\n\
                     compression_level = \"none\"\n\
                     consistency_mode = \"consistent\"\n\
                     rpc_secret = \"{secret}\"\n\
                     rpc_bind_addr = \"127.0.0.{i}:{rpc_port}\"\n\
                     rpc_public_addr = \"127.0.0.{i}:{rpc_port}\"\n\
                     [s3_api]\n\
                     api_bind_addr = \"127.0.0.{i}:{s3_port}\"\n\
                     s3_region = \"garage\"\n",
                    n = n.display()
                )
                .as_bytes(),
            );
            nodes.push(Some(spawn_node(&base, i)));
        }
        let mut g = Garage {
            nodes,
            s3_port,
            rpc_port,
            ids: Vec::new(),
            dir,
        };
        let up = eventually(Duration::from_secs(30), || {
            (1..=3)
                .all(|i| std::net::TcpStream::connect((format!("127.0.0.{i}"), rpc_port)).is_ok())
        });
        assert!(up, "garage did not start:\n{}", g.logs());
        let id = |i: u32| -> String {
            let out = g.cli(i, &["node", "id", "-q"]);
            out.trim().to_string()
        };
        let ids: Vec<String> = (1..=3).map(id).collect();
        for other in &ids[1..] {
            g.cli(1, &["node", "connect", other]);
        }
        for full in &ids {
            let short = full.split('@').next().expect("node id");
            g.cli(1, &["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        g.cli(1, &["layout", "apply", "--version", "1"]);
        g.ids = ids;
        let healthy = eventually(Duration::from_secs(60), || {
            g.try_cli(1, &["status"])
                .is_some_and(|s| s.contains("HEALTHY") || s.contains("Healthy"))
                && g.try_cli(1, &["bucket", "create", BUCKET]).is_some()
        });
        assert!(
            healthy,
            "the garage cluster did not become healthy:\n{}",
            g.logs()
        );
        g.cli(1, &["key", "import", "--yes", "-n", "test", KEY_ID, SECRET]);
        g.cli(
            1,
            &[
                "bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", KEY_ID,
            ],
        );
        g
    }

    fn config(&self, i: u32) -> PathBuf {
        canonical(self.dir.path()).join(format!("n{i}.toml"))
    }

    fn try_cli(&self, i: u32, args: &[&str]) -> Option<String> {
        let out = Command::new(garage_bin())
            .arg("-c")
            .arg(self.config(i))
            .args(args)
            .env("RUST_LOG", "garage=warn")
            .stdin(Stdio::null())
            .output()
            .expect("run garage");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn cli(&self, i: u32, args: &[&str]) -> String {
        self.try_cli(i, args)
            .unwrap_or_else(|| panic!("garage {args:?} failed:\n{}", self.logs()))
    }

    fn logs(&self) -> String {
        (1..=3)
            .map(|i| {
                let p = canonical(self.dir.path()).join(format!("n{i}.log"));
                format!(
                    "--- node {i} ---\n{}",
                    fs::read_to_string(&p).unwrap_or_default()
                )
            })
            .collect()
    }

    /// The endpoint of node `i` (1 to 3).
    pub(crate) fn endpoint(&self, i: u32) -> String {
        format!("http://127.0.0.{i}:{}", self.s3_port)
    }

    /// The S3 address of node `i` (1 to 3), for a proxy in front of it.
    pub(crate) fn s3_addr(&self, i: u32) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, i as u8], self.s3_port))
    }

    /// `AWS_*` variables that reach the cluster through `endpoints`.
    pub(crate) fn env(&self, endpoints: &[u32]) -> Vec<(&'static str, String)> {
        let list: Vec<String> = endpoints.iter().map(|i| self.endpoint(*i)).collect();
        vec![
            ("AWS_ACCESS_KEY_ID", KEY_ID.to_string()),
            ("AWS_SECRET_ACCESS_KEY", SECRET.to_string()),
            ("AWS_REGION", "garage".to_string()),
            ("AWS_ENDPOINT_URL", list.join(",")),
        ]
    }

    /// Stop node `i` at once (SIGKILL), as a crash would.
    pub(crate) fn kill_node(&mut self, i: u32) {
        if let Some(mut c) = self.nodes[(i - 1) as usize].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start node `i` again after [`Garage::kill_node`]: the same binary,
    /// configuration and data, its log appended to. Returns once its RPC
    /// port answers, it is connected to the other running nodes (it does
    /// not wait for them to find it) and `garage status` on it lists every
    /// running node as healthy.
    pub(crate) fn restart_node(&mut self, i: u32) {
        assert!(
            self.nodes[(i - 1) as usize].is_none(),
            "node {i} is running"
        );
        let base = canonical(self.dir.path());
        self.nodes[(i - 1) as usize] = Some(spawn_node(&base, i));
        let rpc = (format!("127.0.0.{i}"), self.rpc_port);
        let up = eventually(Duration::from_secs(30), || {
            std::net::TcpStream::connect(rpc.clone()).is_ok()
        });
        assert!(up, "garage node {i} did not start again:\n{}", self.logs());
        // It does not wait for the others to find it again: it asks them.
        for (j, id) in self.ids.clone().iter().enumerate() {
            if j as u32 + 1 != i && self.nodes[j].is_some() {
                let connected = eventually(Duration::from_secs(30), || {
                    self.try_cli(i, &["node", "connect", id]).is_some()
                });
                assert!(
                    connected,
                    "node {i} cannot reach node {}:\n{}",
                    j + 1,
                    self.logs()
                );
            }
        }
        // Every running node listed healthy (addresses are only shown for
        // those; the failed ones come after).
        let running = self.nodes.iter().flatten().count();
        let healthy = eventually(Duration::from_secs(60), || {
            self.try_cli(i, &["status"]).is_some_and(|s| {
                let healthy = s.split("FAILED").next().unwrap_or("");
                healthy.matches("127.0.0.").count() == running
            })
        });
        assert!(
            healthy,
            "the cluster is not healthy again after node {i} restarted:\n{}\n{}",
            self.try_cli(i, &["status"]).unwrap_or_default(),
            self.logs()
        );
    }

    /// An S3 request made with curl (SigV4), as another client holding the
    /// bucket's key would make it: `method` on `key` (inside the bucket),
    /// with `body` for a PUT. Returns the status and the answer's body.
    pub(crate) fn curl(&self, method: &str, key: &str, body: Option<&[u8]>) -> (u16, Vec<u8>) {
        use std::io::Write;
        require_tool("curl");
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}"])
            .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"])
            .args(["--aws-sigv4", "aws:amz:garage:s3"])
            .args(["--user", &format!("{KEY_ID}:{SECRET}")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if body.is_some() {
            cmd.args(["--data-binary", "@-"]);
        }
        cmd.arg(format!("{}/{BUCKET}/{key}", self.endpoint(1)));
        let mut child = cmd.spawn().expect("spawn curl");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(body.unwrap_or_default())
            .expect("write to curl");
        drop(stdin);
        let out = child.wait_with_output().expect("wait for curl");
        assert!(out.status.success(), "{}", describe("curl", &out));
        let at = out
            .stdout
            .iter()
            .rposition(|&b| b == b'\n')
            .expect("curl wrote the status");
        let code = String::from_utf8_lossy(&out.stdout[at + 1..])
            .trim()
            .parse()
            .expect("a status code");
        (code, out.stdout[..at].to_vec())
    }

    /// Whether some lease under `prefix` says its holder is writing: a
    /// command on another machine got as far as writing.
    pub(crate) fn has_writer_lease(&self, prefix: &str) -> bool {
        self.keys_under(&format!("{prefix}leases/"))
            .iter()
            .any(|k| {
                let (code, body) = self.curl("GET", k, None);
                code == 200 && String::from_utf8_lossy(&body).contains("\nwriter 1\n")
            })
    }

    /// The keys of the objects under `prefix` (ListObjectsV2 through curl;
    /// one page, enough for a test's bucket).
    pub(crate) fn keys_under(&self, prefix: &str) -> Vec<String> {
        let q = format!("?list-type=2&prefix={}", prefix.replace('/', "%2F"));
        let (code, body) = self.curl("GET", &q, None);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(code, 200, "listing {prefix}: {text}");
        text.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect()
    }

    /// The nodes' data and metadata directories: every byte the cluster
    /// stores is in a file under them (blocks are kept uncompressed, so a
    /// check that nothing readable is stored can fail).
    pub(crate) fn data_dirs(&self) -> Vec<PathBuf> {
        (1..=3)
            .map(|i| canonical(self.dir.path()).join(format!("n{i}")))
            .collect()
    }
}

/// Starts node `i` of the cluster under `base` (its configuration
/// `n{i}.toml`), logging to `n{i}.log` (appended to).
fn spawn_node(base: &std::path::Path, i: u32) -> Child {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(base.join(format!("n{i}.log")))
        .expect("log");
    Command::new(garage_bin())
        .arg("-c")
        .arg(base.join(format!("n{i}.toml")))
        .arg("server")
        .env("RUST_LOG", "garage=warn")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("start garage")
}

impl Drop for Garage {
    fn drop(&mut self) {
        for c in self.nodes.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A TLS front for one node of the cluster (stunnel4), with a CA of its
/// own made for the test: what snapfs must be given (`AWS_CA_BUNDLE`) to
/// trust it. Stopped on drop.
pub(crate) struct TlsProxy {
    child: Option<Child>,
    pub(crate) port: u16,
    pub(crate) ca: PathBuf,
    _dir: TempDir,
}

impl TlsProxy {
    /// `https://127.0.0.1:PORT` in front of `http://127.0.0.1:target`.
    pub(crate) fn start(target: u16) -> TlsProxy {
        require_tool("stunnel4");
        require_tool("openssl");
        let dir = tempdir();
        let d = canonical(dir.path());
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&d)
                .stdin(Stdio::null())
                .output()
                .expect("run openssl");
            assert!(out.status.success(), "{}", describe("openssl", &out));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=snapfs test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        write_file(&d.join("ext"), b"subjectAltName=IP:127.0.0.1\n");
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext",
            "-out",
            "server.pem",
        ]);
        let port = free_port();
        write_file(
            &d.join("stunnel.conf"),
            format!(
                "foreground = yes\npid =\n[s3]\naccept = 127.0.0.1:{port}\n\
                 connect = 127.0.0.1:{target}\ncert = {}\nkey = {}\n",
                d.join("server.pem").display(),
                d.join("server.key").display()
            )
            .as_bytes(),
        );
        let log = fs::File::create(d.join("stunnel.log")).expect("log");
        let mut child = Command::new("stunnel4")
            .arg(d.join("stunnel.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start stunnel4");
        if let Err(status) = wait_listening(&mut child, port, Duration::from_secs(20)) {
            panic!(
                "stunnel4 did not listen ({status:?}):\n{}",
                fs::read_to_string(d.join("stunnel.log")).unwrap_or_default()
            );
        }
        TlsProxy {
            child: Some(child),
            port,
            ca: d.join("ca.pem"),
            _dir: dir,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
