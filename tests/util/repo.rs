//! A repository driven through the real `snapfs` binary, and the commands
//! tests run on one (ingest, snapshots, restore, gc, forget, verify,
//! rebuild-catalog) with their `--json` answers parsed.
//!
//! Every repository lives in its own `TempDir`, so tests can run in parallel.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;
use tempfile::TempDir;

use super::*;

/// A repository in its own temporary directory.
pub(crate) struct Repo {
    _dir: Option<TempDir>,
    pub(crate) path: PathBuf,
    /// An encrypted repository's passphrase file and catalog cache.
    pub(crate) secret: Option<Secret>,
    /// More variables for every command (a bucket's endpoint and key).
    pub(crate) env: Vec<(&'static str, String)>,
}

/// Where an encrypted test repository's passphrase and catalog are.
#[derive(Clone)]
pub(crate) struct Secret {
    pub(crate) password_file: PathBuf,
    pub(crate) cache_dir: PathBuf,
}

/// Argon2id memory for the key slots of test repositories: every command
/// of a test opens the repository, and 64 MiB a time would dominate.
const TEST_KDF_MEMORY_KIB: &str = "8192";

impl Repo {
    /// Creates and initializes a fresh repository.
    pub(crate) fn new() -> Repo {
        let dir = tempdir();
        let path = canonical(dir.path()).join("repo");
        let repo = Repo {
            _dir: Some(dir),
            path,
            secret: None,
            env: Vec::new(),
        };
        repo.init();
        repo
    }

    /// Creates an encrypted repository, its passphrase in a file (0600)
    /// and its catalog in a cache directory of its own, all under one
    /// temporary directory.
    pub(crate) fn new_encrypted() -> Repo {
        let dir = tempdir();
        let base = canonical(dir.path());
        let password_file = base.join("passphrase");
        write_file(&password_file, b"correct horse battery staple\n");
        chmod(&password_file, 0o600);
        let repo = Repo {
            _dir: Some(dir),
            path: base.join("repo"),
            secret: Some(Secret {
                password_file,
                cache_dir: base.join("cache"),
            }),
            env: Vec::new(),
        };
        run_ok(
            repo.cmd()
                .args(["init", "--encryption", "xchacha20-poly1305"]),
        );
        assert!(repo.path.join("keys").is_dir(), "init made no keys/");
        assert!(
            !repo.path.join("catalog.db").exists(),
            "an encrypted repository keeps no catalog inside"
        );
        repo
    }

    /// A handle on an encrypted repository at `path` that something else
    /// makes (a copy), with `passphrase` in a file of its own (0600) and its
    /// catalog in `cache_dir`.
    pub(crate) fn encrypted_at(path: &Path, cache_dir: &Path, passphrase: &str) -> Repo {
        let dir = tempdir();
        let password_file = canonical(dir.path()).join("passphrase");
        write_file(&password_file, format!("{passphrase}\n").as_bytes());
        chmod(&password_file, 0o600);
        Repo {
            _dir: Some(dir),
            path: path.to_path_buf(),
            secret: Some(Secret {
                password_file,
                cache_dir: cache_dir.to_path_buf(),
            }),
            env: Vec::new(),
        }
    }

    /// A new encrypted repository in `garage`'s bucket under `prefix`,
    /// reached through the nodes `endpoints` (in that order), with its
    /// passphrase and local state in a temporary directory of its own.
    pub(crate) fn new_in_bucket(garage: &Garage, prefix: &str, endpoints: &[u32]) -> Repo {
        let repo = Repo::bucket_handle(garage, prefix, endpoints);
        run_ok(repo.cmd().arg("init"));
        repo
    }

    /// A handle on the repository in `garage`'s bucket under `prefix`, as
    /// another machine would have it: its own cache, the same passphrase.
    pub(crate) fn bucket_handle(garage: &Garage, prefix: &str, endpoints: &[u32]) -> Repo {
        let dir = tempdir();
        let base = canonical(dir.path());
        let password_file = base.join("passphrase");
        write_file(&password_file, b"correct horse battery staple\n");
        chmod(&password_file, 0o600);
        Repo {
            _dir: Some(dir),
            path: PathBuf::from(format!("s3://{BUCKET}/{prefix}")),
            secret: Some(Secret {
                password_file,
                cache_dir: base.join("cache"),
            }),
            env: garage
                .env(endpoints)
                .into_iter()
                .chain(SHORT_LEASES.iter().map(|(k, v)| (*k, v.to_string())))
                .collect(),
        }
    }

    /// A handle on a copy of this repository at `path` (made with `cp -a`,
    /// say): the same passphrase, cache and environment.
    pub(crate) fn copy_at(&self, path: &Path) -> Repo {
        Repo {
            _dir: None,
            path: path.to_path_buf(),
            secret: self.secret.clone(),
            env: self.env.clone(),
        }
    }

    /// A handle on a repository at `path` that this handle does not own.
    pub(crate) fn at(path: &Path) -> Repo {
        Repo {
            _dir: None,
            path: path.to_path_buf(),
            secret: None,
            env: Vec::new(),
        }
    }

    pub(crate) fn init(&self) {
        run_ok(self.cmd().args(["init", "--encryption", "none"]));
        assert!(
            self.path.join("catalog.db").is_file(),
            "init did not create {}",
            self.path.join("catalog.db").display()
        );
    }

    /// `snapfs --repo PATH` ready for a subcommand.
    pub(crate) fn cmd(&self) -> Command {
        let mut cmd = snapfs();
        cmd.arg("--repo").arg(&self.path);
        if let Some(s) = &self.secret {
            cmd.env("SNAPFS_PASSWORD_FILE", &s.password_file)
                .env("SNAPFS_CACHE_DIR", &s.cache_dir)
                .env("SNAPFS_TEST_KDF_MEMORY_KIB", TEST_KDF_MEMORY_KIB);
        }
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd
    }

    /// `cmd` gets the passphrase `secs` seconds late, as from a person at
    /// a prompt: what a command does while it waits for the key shows.
    pub(crate) fn passphrase_late(&self, cmd: &mut Command, secs: u32) {
        let pw = &self
            .secret
            .as_ref()
            .expect("an encrypted repository")
            .password_file;
        cmd.env_remove("SNAPFS_PASSWORD_FILE").env(
            "SNAPFS_PASSWORD_COMMAND",
            format!("sleep {secs}; cat '{}'", pw.display()),
        );
    }

    /// `snapfs --repo PATH ingest --json EXTRA... SOURCES...` as a command.
    pub(crate) fn ingest_cmd<S: AsRef<OsStr>>(&self, extra: &[&str], sources: &[S]) -> Command {
        let mut cmd = self.cmd();
        cmd.arg("ingest").arg("--json").args(extra);
        for s in sources {
            cmd.arg(s.as_ref());
        }
        cmd
    }

    /// Starts an ingest of `src` as snapshot `name` with uploads held to
    /// `kib` KiB/s, so that it lasts long enough for something to happen
    /// meanwhile; its output is piped.
    pub(crate) fn spawn_slow_ingest(&self, name: &str, src: &Path, kib: u32) -> Child {
        self.ingest_cmd(&["--name", name], &[src])
            .args(["--limit-upload", &kib.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ingest")
    }

    /// Ingests `sources`, expecting success, and returns the JSON summary.
    pub(crate) fn ingest<S: AsRef<OsStr>>(&self, extra: &[&str], sources: &[S]) -> Ingested {
        let out = run_ok(&mut self.ingest_cmd(extra, sources));
        Ingested::from_output(&out)
    }

    /// The parsed `snapshots --json` list.
    pub(crate) fn snapshots(&self) -> Vec<Value> {
        let out = run_ok(self.cmd().args(["snapshots", "--json"]));
        match parse_json("snapshots --json", &out.stdout) {
            Value::Array(items) => items,
            other => panic!("snapshots --json is not an array: {other}"),
        }
    }

    /// Ids of the listed snapshots, in the order listed (oldest first).
    pub(crate) fn snapshot_ids(&self) -> Vec<String> {
        self.snapshots()
            .iter()
            .map(|s| json_str(s, "id").to_string())
            .collect()
    }

    /// Names of the listed snapshots, in the order listed (oldest first).
    pub(crate) fn snapshot_names(&self) -> Vec<String> {
        self.snapshots()
            .iter()
            .map(|s| json_str(s, "name").to_string())
            .collect()
    }

    /// [`Repo::snapshot_ids`] as a set.
    pub(crate) fn id_set(&self) -> BTreeSet<String> {
        self.snapshot_ids().into_iter().collect()
    }

    /// [`Repo::snapshot_names`] as a set.
    pub(crate) fn name_set(&self) -> BTreeSet<String> {
        self.snapshot_names().into_iter().collect()
    }

    /// `snapfs --repo PATH restore SPEC TARGET` as a command.
    pub(crate) fn restore_cmd(&self, spec: impl AsRef<OsStr>, target: &Path) -> Command {
        let mut cmd = self.cmd();
        cmd.arg("restore").arg(spec.as_ref()).arg(target);
        cmd
    }

    /// Restores `spec` (SNAPSHOT or SNAPSHOT:PATH) into `target`, expecting success.
    pub(crate) fn restore(&self, spec: impl AsRef<OsStr>, target: &Path) -> Output {
        run_ok(&mut self.restore_cmd(spec, target))
    }

    /// Every `*.pack` file of the repository.
    pub(crate) fn pack_files(&self) -> BTreeSet<PathBuf> {
        let dir = self.path.join("packs");
        if !dir.exists() {
            return BTreeSet::new();
        }
        walk(&dir)
            .into_iter()
            .filter(|p| p.extension() == Some(OsStr::new("pack")) && p.is_file())
            .collect()
    }

    /// Total bytes of the files under `packs/`.
    pub(crate) fn packs_bytes(&self) -> u64 {
        dir_bytes(&self.path.join("packs"))
    }
}

/// What `ingest --json` reported.
#[derive(Debug, Clone)]
pub(crate) struct Ingested {
    pub(crate) json: Value,
    pub(crate) id: String,
    pub(crate) name: String,
}

impl Ingested {
    pub(crate) fn from_output(out: &Output) -> Ingested {
        let json = parse_json("ingest --json", &out.stdout);
        let snap = json
            .get("snapshot")
            .unwrap_or_else(|| panic!("ingest --json has no \"snapshot\": {json}"));
        let id = json_str(snap, "id").to_string();
        let name = json_str(snap, "name").to_string();
        Ingested { json, id, name }
    }

    pub(crate) fn num(&self, key: &str) -> u64 {
        json_u64(&self.json, key)
    }
}

/// `SNAPSHOT:PATH`, the reference to one path of a snapshot (PATH may
/// hold any byte, colons included).
pub(crate) fn spec_of(snapshot: &str, path: &Path) -> OsString {
    let mut spec = OsString::from(format!("{snapshot}:"));
    spec.push(path.as_os_str());
    spec
}

/// Where restoring a whole snapshot into `target` puts the source `source`
/// (snapshots keep sources at their absolute paths).
pub(crate) fn restored_path(target: &Path, source: &Path) -> PathBuf {
    let rel = source
        .strip_prefix("/")
        .unwrap_or_else(|_| panic!("{} is not absolute", source.display()));
    target.join(rel)
}

// ---------------------------------------------------------------- maintenance commands

/// `gc --json EXTRA`, expecting success.
pub(crate) fn gc(repo: &Repo, extra: &[&str]) -> Value {
    json_of("gc --json", repo.cmd().args(["gc", "--json"]).args(extra))
}

/// `forget --json ARGS`, expecting success.
pub(crate) fn forget(repo: &Repo, args: &[&str]) -> Value {
    json_of(
        "forget --json",
        repo.cmd().args(["forget", "--json"]).args(args),
    )
}

/// `verify --json EXTRA`, whatever its outcome: the output and its report.
pub(crate) fn verify(repo: &Repo, extra: &[&str]) -> (Output, Value) {
    let out = output_of(repo.cmd().args(["verify", "--json"]).args(extra));
    let json = parse_json(&describe("verify --json", &out), &out.stdout);
    (out, json)
}

/// Asserts `verify --read-data` exits 0 and reports no problem; `when`
/// says at which point of the test.
pub(crate) fn assert_verify_read_data_ok(repo: &Repo, when: &str) {
    let (out, json) = verify(repo, &["--read-data"]);
    assert!(
        out.status.code() == Some(0) && json["ok"] == Value::Bool(true),
        "{when}: verify --read-data of {} should pass\n{}",
        repo.path.display(),
        describe("verify --read-data --json", &out)
    );
}

/// `rebuild-catalog --json EXTRA`, whatever its outcome: the output and
/// its report.
pub(crate) fn rebuild_catalog(repo: &Repo, extra: &[&str]) -> (Output, Value) {
    let out = output_of(repo.cmd().args(["rebuild-catalog", "--json"]).args(extra));
    let json = parse_json(&describe("rebuild-catalog --json", &out), &out.stdout);
    (out, json)
}

/// `rebuild-catalog --json`, expecting success (exit 0: nothing lost,
/// nothing damaged): its report.
pub(crate) fn rebuild_catalog_ok(repo: &Repo) -> Value {
    json_of(
        "rebuild-catalog --json",
        repo.cmd().args(["rebuild-catalog", "--json"]),
    )
}

/// Leases and gc marks in a bucket on a test's time scale: leases live 3 s
/// (renewed every second), clocks are taken to agree, and gc deletes a
/// marked pack 4 s after marking it at the earliest.
pub(crate) const SHORT_LEASES: [(&str, &str); 3] = [
    ("SNAPFS_LEASE_SECONDS", "3"),
    ("SNAPFS_CLOCK_SKEW_SECONDS", "0"),
    ("SNAPFS_GC_GRACE_SECONDS", "4"),
];

/// How long a test waits for a mark to become old enough to act on.
pub(crate) const PAST_GRACE: std::time::Duration = std::time::Duration::from_millis(4500);
