//! Where a passphrase comes from, in this order: `--password-file FILE`,
//! the file named by `SNAPFS_PASSWORD_FILE`, the output of the command in
//! `SNAPFS_PASSWORD_COMMAND`, or the terminal (echo off).
//!
//! Never from a command-line argument (every user sees it in `ps`) nor from
//! a variable holding the passphrase itself (every child inherits it, and it
//! ends up in logs and crash reports): the variables name a file or a
//! command, which hold or fetch the secret (a password manager, `pass`,
//! a file readable by one user).
//!
//! A passphrase is UTF-8 text, used as its bytes without normalization, so
//! the same text typed or stored gives the same key; bytes that are not
//! UTF-8 are refused rather than guessed at. From a file or a command,
//! exactly one trailing newline (`\n` or `\r\n`) is not part of it: `echo`
//! and editors add one. An empty passphrase, or one longer than
//! [`MAX_PASSPHRASE`] bytes, is refused.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use zeroize::Zeroizing;

use crate::error::{Error, IoContext, Result};

/// The variable naming a file that holds the passphrase.
pub const PASSWORD_FILE_ENV: &str = "SNAPFS_PASSWORD_FILE";
/// The variable holding a shell command that prints the passphrase.
pub const PASSWORD_COMMAND_ENV: &str = "SNAPFS_PASSWORD_COMMAND";
/// Longest passphrase, in bytes: far beyond any typed one, and a bound on
/// what is read from a file or a command that is not a passphrase.
pub const MAX_PASSPHRASE: usize = 4096;

const TTY: &str = "/dev/tty";

/// The variable naming a file that holds the passphrase of a copy's
/// destination (`copy --to`), which has its own key.
pub const TO_PASSWORD_FILE_ENV: &str = "SNAPFS_TO_PASSWORD_FILE";
/// The variable holding a command that prints the destination's passphrase.
pub const TO_PASSWORD_COMMAND_ENV: &str = "SNAPFS_TO_PASSWORD_COMMAND";

/// Where one repository's passphrase comes from: an option of the command
/// line, then two variables, then the terminal.
#[derive(Clone, Debug)]
pub struct PassphraseSource {
    /// The option's file (`--password-file FILE`).
    pub file: Option<PathBuf>,
    /// The option's name, for messages.
    option: &'static str,
    env_file: &'static str,
    env_command: &'static str,
}

impl Default for PassphraseSource {
    fn default() -> Self {
        PassphraseSource::repository(None)
    }
}

impl PassphraseSource {
    /// The repository a command works on: `--password-file`,
    /// `SNAPFS_PASSWORD_FILE`, `SNAPFS_PASSWORD_COMMAND`.
    pub fn repository(file: Option<PathBuf>) -> PassphraseSource {
        PassphraseSource {
            file,
            option: "--password-file",
            env_file: PASSWORD_FILE_ENV,
            env_command: PASSWORD_COMMAND_ENV,
        }
    }

    /// The destination of `copy --to`: `--to-password-file`,
    /// `SNAPFS_TO_PASSWORD_FILE`, `SNAPFS_TO_PASSWORD_COMMAND`. Never the
    /// source's: two repositories with one passphrase would share a secret
    /// without anybody having said so.
    pub fn destination(file: Option<PathBuf>) -> PassphraseSource {
        PassphraseSource {
            file,
            option: "--to-password-file",
            env_file: TO_PASSWORD_FILE_ENV,
            env_command: TO_PASSWORD_COMMAND_ENV,
        }
    }
}

/// Where a second, new passphrase is read from (`key add`, `key passwd`),
/// beside the one that opens the repository.
pub const NEW_PASSWORD_FILE_ENV: &str = "SNAPFS_NEW_PASSWORD_FILE";

/// A new passphrase for another key slot: from `file` (`--new-password-file`),
/// else `$SNAPFS_NEW_PASSWORD_FILE`, else asked twice on the terminal. Never
/// the sources of the current passphrase: a new slot with the old
/// passphrase would be no new key.
pub fn read_another_passphrase(file: Option<&Path>, prompt: &str) -> Result<Zeroizing<String>> {
    super::keep_out_of_dumps();
    let env = std::env::var_os(NEW_PASSWORD_FILE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if let Some(path) = file.map(Path::to_path_buf).or(env) {
        return from_file(&path);
    }
    let tty = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(TTY)
        .map_err(|_| {
            Error::invalid(format!(
                "no new passphrase: give --new-password-file FILE or set {NEW_PASSWORD_FILE_ENV}"
            ))
        })?;
    ask(&tty, prompt, true)
}

/// The passphrase of an existing key slot, from the first source given
/// (see the module's documentation); `prompt` is shown on a terminal.
pub fn read_passphrase(src: &PassphraseSource, prompt: &str) -> Result<Zeroizing<String>> {
    obtain(src, prompt, false)
}

/// A new passphrase, from the same sources; on a terminal it is asked for
/// twice, and two different answers are an error.
pub fn read_new_passphrase(src: &PassphraseSource, prompt: &str) -> Result<Zeroizing<String>> {
    obtain(src, prompt, true)
}

fn obtain(src: &PassphraseSource, prompt: &str, twice: bool) -> Result<Zeroizing<String>> {
    super::keep_out_of_dumps();
    let env = |name| std::env::var_os(name);
    match choose(src, env(src.env_file), env(src.env_command)) {
        Origin::File(path) => from_file(&path),
        Origin::Command(command) => from_command(&command, src.env_command),
        Origin::Terminal => {
            let tty = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
                .open(TTY)
                .map_err(|_| no_passphrase(src))?;
            // SAFETY: `tty` is open for the call.
            if unsafe { libc::isatty(tty.as_raw_fd()) } != 1 {
                return Err(no_passphrase(src));
            }
            ask(&tty, prompt, twice)
        }
    }
}

/// Where the passphrase is read from.
#[derive(Debug, PartialEq, Eq)]
enum Origin {
    File(PathBuf),
    Command(OsString),
    Terminal,
}

/// The first source given: the option, then the variables (an empty
/// variable counts as unset), then the terminal.
fn choose(
    src: &PassphraseSource,
    env_file: Option<OsString>,
    env_command: Option<OsString>,
) -> Origin {
    let set = |v: Option<OsString>| v.filter(|v| !v.is_empty());
    if let Some(f) = &src.file {
        Origin::File(f.clone())
    } else if let Some(f) = set(env_file) {
        Origin::File(PathBuf::from(f))
    } else if let Some(c) = set(env_command) {
        Origin::Command(c)
    } else {
        Origin::Terminal
    }
}

fn no_passphrase(src: &PassphraseSource) -> Error {
    Error::invalid(format!(
        "no passphrase: give {} FILE, or set {} or {}",
        src.option, src.env_file, src.env_command
    ))
}

/// The passphrase held by the file at `path`.
fn from_file(path: &Path) -> Result<Zeroizing<String>> {
    let what = format!("passphrase file {}", path.display());
    let mut f = File::open(path).at(path)?;
    match read_bounded(&mut f).at(path)? {
        Some(bytes) => passphrase_of(&bytes, &what),
        None => Err(too_long(&what)),
    }
}

/// The passphrase printed by `sh -c command`, the value of `variable`
/// (named in every error: the source's and a copy destination's are two).
/// Its stdin is empty and its stderr is ours (so it can ask or explain);
/// its output is never shown, even when it fails.
fn from_command(command: &OsString, variable: &str) -> Result<Zeroizing<String>> {
    let what = format!("the output of {variable}");
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::invalid(format!("cannot run {variable} with sh: {e}")))?;
    let mut out = child.stdout.take().expect("stdout is piped");
    let bytes = match read_bounded(&mut out) {
        Ok(Some(b)) => b,
        failed => {
            // It would block writing more, or reading failed: stop it.
            let _ = child.kill();
            let _ = child.wait();
            return Err(match failed {
                Err(e) => Error::invalid(format!("reading {what}: {e}")),
                Ok(_) => too_long(&what),
            });
        }
    };
    drop(out);
    let status = child
        .wait()
        .map_err(|e| Error::invalid(format!("waiting for {variable}: {e}")))?;
    if !status.success() {
        return Err(Error::invalid(format!(
            "{variable} failed ({status}); its output is not shown"
        )));
    }
    passphrase_of(&bytes, &what)
}

fn too_long(what: &str) -> Error {
    Error::invalid(format!(
        "{what} is longer than a passphrase ({MAX_PASSPHRASE} bytes at most); it must hold the passphrase alone"
    ))
}

/// All of `r` if it is short enough to be a passphrase and its newline,
/// `None` if it is longer (then not all of it has been read). The bytes
/// land in one buffer that is wiped when dropped, with no copy elsewhere.
fn read_bounded(r: &mut impl Read) -> io::Result<Option<Zeroizing<Vec<u8>>>> {
    let limit = MAX_PASSPHRASE + 2;
    let mut buf = Zeroizing::new(vec![0u8; limit + 1]);
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    if n > limit {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(Some(buf))
}

/// The passphrase in `bytes` (from `what`): one trailing newline taken
/// off, then checked to be UTF-8, not empty, not too long.
fn passphrase_of(bytes: &[u8], what: &str) -> Result<Zeroizing<String>> {
    let text = match bytes.strip_suffix(b"\n") {
        Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
        None => bytes,
    };
    if text.is_empty() {
        return Err(Error::invalid(format!(
            "{what} is empty; an empty passphrase is refused"
        )));
    }
    if text.len() > MAX_PASSPHRASE {
        return Err(too_long(what));
    }
    let text = std::str::from_utf8(text).map_err(|_| {
        Error::invalid(format!(
            "{what} is not UTF-8 text; a passphrase is text in UTF-8"
        ))
    })?;
    let mut out = Zeroizing::new(String::with_capacity(text.len()));
    out.push_str(text);
    Ok(out)
}

/// Ask on the terminal `tty`, once or twice.
fn ask(tty: &File, prompt: &str, twice: bool) -> Result<Zeroizing<String>> {
    let first = prompt_on(tty, prompt)?;
    if twice {
        let again = prompt_on(tty, "Enter the same passphrase again: ")?;
        if *first != *again {
            return Err(Error::invalid(
                "the two passphrases differ; nothing was changed",
            ));
        }
    }
    Ok(first)
}

/// Show `prompt` on the terminal `tty` and read one line with echo off
/// (the newline still shows). Echo comes back when this returns, on an
/// error too.
fn prompt_on(tty: &File, prompt: &str) -> Result<Zeroizing<String>> {
    let quiet = Quiet::new(tty)?;
    let mut w = tty;
    w.write_all(prompt.as_bytes())
        .and_then(|()| w.flush())
        .at(TTY)?;
    let line = read_line(tty)?;
    drop(quiet);
    passphrase_of(&line, "the passphrase typed")
}

/// One line from the terminal, with its newline if it has one. A longer
/// line than a passphrase is read to its end (so no part of it is left for
/// the shell to run) and refused.
fn read_line(tty: &File) -> Result<Zeroizing<Vec<u8>>> {
    let mut r = tty;
    let mut buf = Zeroizing::new(vec![0u8; MAX_PASSPHRASE + 2]);
    let mut n = 0;
    loop {
        if n == buf.len() {
            let mut rest = Zeroizing::new([0u8; 256]);
            loop {
                match r.read(&mut rest[..]) {
                    Ok(0) => break,
                    Ok(k) if rest[..k].contains(&b'\n') => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            return Err(too_long("the passphrase typed"));
        }
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if buf[..n].ends_with(b"\n") {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                return Err(Error::invalid("interrupted while reading the passphrase"));
            }
            Err(e) => return Err(e).at(TTY),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Echo turned off on a terminal, and back on when dropped.
struct Quiet<'a> {
    tty: &'a File,
    saved: libc::termios,
}

impl<'a> Quiet<'a> {
    /// Turn echo off on `tty` (and drop what was typed before the prompt).
    /// A file that is no terminal means there is no one to ask.
    fn new(tty: &'a File) -> Result<Quiet<'a>> {
        let fd = tty.as_raw_fd();
        // SAFETY: a plain C struct, filled by tcgetattr before any use.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `fd` is open while `tty` is borrowed.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return Err(Error::invalid(
                "no passphrase: none was given, and there is no terminal to ask for one",
            ));
        }
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        quiet.c_lflag |= libc::ECHONL;
        // SAFETY: as above; `quiet` is a valid termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSAFLUSH, &quiet) } != 0 {
            return Err(io::Error::last_os_error()).at(TTY);
        }
        Ok(Quiet { tty, saved })
    }
}

impl Drop for Quiet<'_> {
    fn drop(&mut self) {
        // SAFETY: the descriptor is open while `tty` is borrowed; `saved`
        // is what tcgetattr gave.
        unsafe { libc::tcsetattr(self.tty.as_raw_fd(), libc::TCSANOW, &self.saved) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn from_bytes(bytes: &[u8]) -> Result<String> {
        from_file(file_with(bytes).path()).map(|p| p.to_string())
    }

    fn from_cmd(cmd: &str) -> Result<String> {
        from_command(&OsString::from(cmd), PASSWORD_COMMAND_ENV).map(|p| p.to_string())
    }

    #[test]
    fn sources_are_taken_in_order_and_empty_variables_are_unset() {
        let opt = PassphraseSource::repository(Some("/opt/pw".into()));
        let none = PassphraseSource::default();
        let os = |s: &str| Some(OsString::from(s));
        assert_eq!(
            choose(&opt, os("/env/pw"), os("pass x")),
            Origin::File("/opt/pw".into())
        );
        assert_eq!(
            choose(&none, os("/env/pw"), os("pass x")),
            Origin::File("/env/pw".into())
        );
        assert_eq!(
            choose(&none, None, os("pass x")),
            Origin::Command("pass x".into())
        );
        assert_eq!(
            choose(&none, os(""), os("pass x")),
            Origin::Command("pass x".into())
        );
        assert_eq!(choose(&none, os(""), os("")), Origin::Terminal);
        assert_eq!(choose(&none, None, None), Origin::Terminal);
    }

    #[test]
    fn a_file_gives_its_text_without_one_trailing_newline() {
        assert_eq!(from_bytes(b"secret").unwrap(), "secret");
        assert_eq!(from_bytes(b"secret\n").unwrap(), "secret");
        assert_eq!(from_bytes(b"secret\r\n").unwrap(), "secret");
        assert_eq!(from_bytes(b"secret\n\n").unwrap(), "secret\n");
        assert_eq!(from_bytes(b" s e\tc \n").unwrap(), " s e\tc ");
        assert_eq!(from_bytes("pässwörd\n".as_bytes()).unwrap(), "pässwörd");
    }

    #[test]
    fn empty_long_or_binary_files_are_refused() {
        for bad in [&b""[..], b"\n", b"\r\n"] {
            let e = from_bytes(bad).unwrap_err().to_string();
            assert!(e.contains("empty"), "{e}");
        }
        let max = vec![b'a'; MAX_PASSPHRASE];
        assert_eq!(from_bytes(&max).unwrap().len(), MAX_PASSPHRASE);
        let mut max_nl = max.clone();
        max_nl.extend_from_slice(b"\r\n");
        assert_eq!(from_bytes(&max_nl).unwrap().len(), MAX_PASSPHRASE);
        for len in [MAX_PASSPHRASE + 1, MAX_PASSPHRASE + 3, 1 << 20] {
            let e = from_bytes(&vec![b'a'; len]).unwrap_err().to_string();
            assert!(e.contains("longer than a passphrase"), "{len}: {e}");
        }
        let e = from_bytes(b"\xff\xfe secret\n").unwrap_err().to_string();
        assert!(e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("nope");
        let e = from_file(&p).unwrap_err().to_string();
        assert!(e.contains(&p.display().to_string()), "{e}");
    }

    #[test]
    fn a_command_gives_its_output() {
        assert_eq!(from_cmd("printf secret").unwrap(), "secret");
        assert_eq!(from_cmd("echo secret").unwrap(), "secret");
        assert_eq!(from_cmd("printf 'a b\\r\\n'").unwrap(), "a b");
        // Its stdin is empty, not ours: this ends instead of waiting.
        let e = from_cmd("cat").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn a_failing_command_is_an_error_that_never_shows_its_output() {
        let e = from_cmd("printf leaked; exit 3").unwrap_err().to_string();
        assert!(e.contains("exit status: 3"), "{e}");
        assert!(e.contains(PASSWORD_COMMAND_ENV), "{e}");
        assert!(!e.contains("leaked"), "{e}");
        let e = from_cmd("printf leaked; kill -9 $$")
            .unwrap_err()
            .to_string();
        assert!(e.contains("signal"), "{e}");
        assert!(!e.contains("leaked"), "{e}");
    }

    #[test]
    fn endless_command_output_is_cut_off_and_refused() {
        let e = from_cmd("yes").unwrap_err().to_string();
        assert!(e.contains("longer than a passphrase"), "{e}");
        assert!(!e.contains("y\ny"), "{e}");
    }

    /// A pseudo-terminal: (controller, terminal).
    fn pty() -> (File, File) {
        use std::os::fd::FromRawFd;
        // SAFETY: plain libc calls on a descriptor this test owns.
        unsafe {
            let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
            assert!(m >= 0, "posix_openpt: {}", io::Error::last_os_error());
            assert_eq!(libc::grantpt(m), 0);
            assert_eq!(libc::unlockpt(m), 0);
            let mut name = [0 as libc::c_char; 128];
            assert_eq!(libc::ptsname_r(m, name.as_mut_ptr(), name.len()), 0);
            let path = std::ffi::CStr::from_ptr(name.as_ptr()).to_str().unwrap();
            let t = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_NOCTTY)
                .open(path)
                .unwrap();
            (File::from_raw_fd(m), t)
        }
    }

    /// What the terminal has shown so far, waiting until `until` appears
    /// (or briefly, if `until` is empty).
    fn shown(controller: &File, until: &[u8]) -> Vec<u8> {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            let mut pfd = libc::pollfd {
                fd: controller.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let ready = unsafe { libc::poll(&mut pfd, 1, 200) };
            if ready <= 0 {
                if until.is_empty() {
                    break;
                }
                continue;
            }
            let mut buf = [0u8; 1024];
            let n = match (&*controller).read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            seen.extend_from_slice(&buf[..n]);
            if !until.is_empty() && seen.windows(until.len()).any(|w| w == until) {
                break;
            }
        }
        seen
    }

    fn echo_on(t: &File) -> bool {
        // SAFETY: as in `Quiet::new`.
        let mut tio: libc::termios = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::tcgetattr(t.as_raw_fd(), &mut tio) }, 0);
        tio.c_lflag & libc::ECHO != 0
    }

    /// Type `lines` at the prompts of `ask` on a pseudo-terminal; returns
    /// its answer and what the terminal showed.
    fn typed(lines: &[&[u8]], twice: bool) -> (Result<String>, Vec<u8>) {
        let (mut controller, terminal) = pty();
        assert!(echo_on(&terminal));
        let asker = std::thread::spawn(move || {
            let r = ask(&terminal, "Passphrase: ", twice).map(|p| p.to_string());
            let echo = echo_on(&terminal);
            (r, echo, terminal)
        });
        let mut screen = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let prompt: &[u8] = if i == 0 { b"Passphrase: " } else { b"again: " };
            screen.extend(shown(&controller, prompt));
            controller.write_all(line).unwrap();
        }
        let (r, echo, terminal) = asker.join().unwrap();
        assert!(echo, "echo is back on");
        screen.extend(shown(&controller, b""));
        drop(terminal);
        (r, screen)
    }

    #[test]
    fn the_terminal_prompt_reads_without_echo_and_restores_it() {
        let (r, screen) = typed(&[b"hunter2\n"], false);
        assert_eq!(r.unwrap(), "hunter2");
        assert!(!screen.windows(7).any(|w| w == b"hunter2"), "{screen:?}");
        assert!(screen.starts_with(b"Passphrase: "), "{screen:?}");
    }

    #[test]
    fn a_new_passphrase_is_asked_twice_and_must_match() {
        let (r, _) = typed(&[b"one\n", b"one\n"], true);
        assert_eq!(r.unwrap(), "one");
        let (r, _) = typed(&[b"one\n", b"two\n"], true);
        assert!(r.unwrap_err().to_string().contains("differ"));
    }

    #[test]
    fn an_empty_typed_passphrase_is_refused_and_echo_restored() {
        let (r, _) = typed(&[b"\n"], false);
        assert!(r.unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn a_file_that_is_no_terminal_cannot_be_asked() {
        let f = file_with(b"secret\n");
        let e = ask(f.as_file(), "Passphrase: ", false)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("no passphrase: none was given"), "{e}");
    }

    #[test]
    fn a_copy_destination_names_its_own_option_and_variables() {
        let e = no_passphrase(&PassphraseSource::destination(None)).to_string();
        assert!(
            e.contains("--to-password-file")
                && e.contains(TO_PASSWORD_FILE_ENV)
                && e.contains(TO_PASSWORD_COMMAND_ENV),
            "{e}"
        );
    }
}
