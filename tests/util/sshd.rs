//! A real sshd on loopback, for copies over ssh: its own host key, config
//! and client key in a temporary directory, stopped on drop.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use super::*;

/// An sshd on 127.0.0.1 that lets root in with the client key it made.
pub(crate) struct Sshd {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    key: PathBuf,
}

impl Sshd {
    pub(crate) fn start() -> Sshd {
        require_tool("ssh");
        require_tool("ssh-keygen");
        assert!(
            Path::new("/usr/sbin/sshd").is_file(),
            "this test needs /usr/sbin/sshd (openssh-server; scripts/test.sh installs it)"
        );
        let dir = tempdir();
        let d = canonical(dir.path());
        let keygen = |path: &Path| {
            tool(
                "ssh-keygen",
                &[
                    OsStr::new("-q"),
                    OsStr::new("-t"),
                    OsStr::new("ed25519"),
                    OsStr::new("-N"),
                    OsStr::new(""),
                    OsStr::new("-f"),
                    path.as_os_str(),
                ],
            );
        };
        let host_key = d.join("host_key");
        let key = d.join("client_key");
        keygen(&host_key);
        keygen(&key);
        let authorized = d.join("authorized_keys");
        fs::copy(d.join("client_key.pub"), &authorized).expect("authorized_keys");
        chmod(&authorized, 0o600);
        let port = free_port();
        let conf = d.join("sshd_config");
        write_file(
            &conf,
            format!(
                "Port {port}\n\
                 ListenAddress 127.0.0.1\n\
                 HostKey {}\n\
                 AuthorizedKeysFile {}\n\
                 PermitRootLogin prohibit-password\n\
                 PubkeyAuthentication yes\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 PidFile {}\n",
                host_key.display(),
                authorized.display(),
                d.join("sshd.pid").display()
            )
            .as_bytes(),
        );
        // sshd's privilege separation directory.
        mkdir(Path::new("/run/sshd"));
        let log = fs::File::create(d.join("sshd.log")).expect("sshd log");
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn sshd");
        let mut sshd = Sshd {
            child: Some(child),
            port,
            dir,
            key,
        };
        let limit = Duration::from_secs(10);
        if let Err(status) = wait_listening(sshd.child.as_mut().expect("sshd"), port, limit) {
            panic!(
                "sshd did not listen on port {port} within {limit:?} (exit: {status:?})\n{}",
                sshd.log()
            );
        }
        sshd
    }

    /// What sshd logged so far.
    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    /// `ssh://root@127.0.0.1:PORT/PATH`.
    pub(crate) fn url(&self, path: &Path) -> String {
        format!("ssh://root@127.0.0.1:{}{}", self.port, path.display())
    }

    /// The ssh command line that reaches this sshd.
    fn ssh_program(&self) -> String {
        format!(
            "ssh -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -o LogLevel=ERROR",
            self.key.display()
        )
    }

    /// The `--ssh` program and `--remote-snapfs` options for a copy to this
    /// sshd.
    pub(crate) fn options(&self) -> Vec<String> {
        vec![
            "--ssh".to_string(),
            self.ssh_program(),
            "--remote-snapfs".to_string(),
            snapfs_bin().to_string(),
        ]
    }

    /// The same as variables (`SNAPFS_SSH`, `SNAPFS_REMOTE_SNAPFS`), for
    /// every command on an `ssh://` repository; `remote` stands in for
    /// snapfs on the far side.
    pub(crate) fn env(&self, remote: &str) -> Vec<(&'static str, String)> {
        vec![
            ("SNAPFS_SSH", self.ssh_program()),
            ("SNAPFS_REMOTE_SNAPFS", remote.to_string()),
        ]
    }

    /// A handle on the encrypted repository at `ssh://…/far` through this
    /// sshd, with a passphrase and local state of its own.
    pub(crate) fn repo_handle(&self, far: &Path) -> Repo {
        let url = self.url(far);
        let mut repo = Repo::encrypted_at(
            Path::new(&url),
            Path::new("unset"),
            "correct horse battery staple",
        );
        // The cache beside the passphrase, in the handle's own directory.
        let secret = repo.secret.as_mut().expect("encrypted");
        secret.cache_dir = secret
            .password_file
            .parent()
            .expect("in a directory")
            .join("cache");
        repo.env = self.env(snapfs_bin());
        repo
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
