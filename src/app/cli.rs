//! Command-line syntax (clap derive types only; the work is in the library).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "snapfs",
    version,
    about = "Deduplicated backups where every snapshot is a read-only directory"
)]
pub struct Cli {
    /// Repository path [default: $SNAPFS_REPO, else ~/.local/share/snapfs]
    #[arg(long, global = true, env = "SNAPFS_REPO")]
    pub repo: Option<PathBuf>,

    /// More log output (repeat for more)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Seconds to wait for another command that holds the repository's
    /// writer lock before giving up (the message names the holder)
    #[arg(
        long,
        global = true,
        env = "SNAPFS_LOCK_WAIT",
        default_value_t = 300,
        value_name = "SECONDS"
    )]
    pub lock_wait: u64,

    /// File holding the passphrase of an encrypted repository (also
    /// $SNAPFS_PASSWORD_FILE, or $SNAPFS_PASSWORD_COMMAND; else it is asked
    /// for on the terminal). Never a passphrase on the command line.
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,

    /// Where the local catalogs of encrypted repositories live
    /// [default: $SNAPFS_CACHE_DIR, else $XDG_CACHE_HOME/snapfs, else ~/.cache/snapfs]
    #[arg(long, global = true, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// An endpoint of the object storage of an s3:// repository; repeat it
    /// for several nodes of one cluster, tried in turn when one stops
    /// answering [default: $AWS_ENDPOINT_URL, comma-separated]
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Vec<String>,

    /// Send at most this many KiB per second to object storage (a shared
    /// link keeps room for others) [default: no limit]
    #[arg(long, global = true, value_name = "KIB_PER_S")]
    pub limit_upload: Option<u64>,

    /// Receive at most this many KiB per second from object storage
    #[arg(long, global = true, value_name = "KIB_PER_S")]
    pub limit_download: Option<u64>,

    /// Program that reaches ssh:// repositories and copy targets
    /// (e.g. "ssh -i key")
    #[arg(long, global = true, env = "SNAPFS_SSH", default_value = "ssh")]
    pub ssh: String,

    /// snapfs on the far side of ssh://
    #[arg(
        long,
        global = true,
        env = "SNAPFS_REMOTE_SNAPFS",
        default_value = "snapfs"
    )]
    pub remote_snapfs: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// List the key slots (id, when and where made, KDF settings)
    List {
        #[arg(long)]
        json: bool,
    },
    /// Add a slot for a new passphrase
    Add {
        /// File holding the new passphrase [default: $SNAPFS_NEW_PASSWORD_FILE, else asked twice on the terminal]
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Remove a key slot (never the last one)
    Remove { id: String },
    /// Change the passphrase of the slot that opens the repository
    Passwd {
        /// File holding the new passphrase [default: $SNAPFS_NEW_PASSWORD_FILE, else asked twice on the terminal]
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
    /// Print the master key as text to keep on paper: whoever holds it can
    /// read every backup, and it opens the repository when every
    /// passphrase is lost (`key import`)
    Export {
        /// Write it to FILE (created 0600) instead of the terminal
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Add a key slot from a paper copy of the master key, with a new
    /// passphrase (no current passphrase needed)
    Import {
        /// Read the paper text from FILE [default: standard input]
        #[arg(long, value_name = "FILE")]
        input: Option<PathBuf>,
        /// File holding the new passphrase [default: $SNAPFS_NEW_PASSWORD_FILE, else asked twice on the terminal]
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository
    Init {
        /// Default zstd level for ingests
        #[arg(long, default_value_t = 3)]
        compression: i32,
        /// Refuse forget and gc unless given --allow-delete. This guards
        /// against mistakes on this machine; history is protected from a
        /// compromised client only when the client reaches the repository
        /// through `serve --append-only` (see SECURITY.md)
        #[arg(long)]
        append_only: bool,
        /// Share the repository read-only with this group (directories
        /// 2750, files 0640); without it only the owner can read anything
        #[arg(long, value_name = "GROUP")]
        group: Option<String>,
        /// xchacha20-poly1305 (the default): every object sealed under a
        /// key that a passphrase unlocks, the catalog kept in the cache
        /// directory outside the repository; or none, said explicitly, for
        /// a repository anyone who can read its files can read
        #[arg(long, default_value = "xchacha20-poly1305", value_name = "MODE")]
        encryption: String,
    },
    /// Make a snapshot of SOURCE paths
    Ingest(IngestArgs),
    /// List snapshots
    Snapshots {
        #[arg(long)]
        json: bool,
    },
    /// Copy a snapshot, or a path inside it, out to TARGET with full metadata
    Restore {
        /// SNAPSHOT[:PATH]; SNAPSHOT is a name, an id prefix, latest or latest~N
        spec: std::ffi::OsString,
        target: PathBuf,
        /// Keep the recorded numeric owner and group ids instead of giving
        /// files to the users and groups of the same names on this machine
        #[arg(long)]
        numeric_owner: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove snapshots: the named ones, or those a retention policy does not keep
    Forget(ForgetArgs),
    /// Reclaim the space of forgotten snapshots
    Gc {
        /// Report what would be done, change nothing
        #[arg(long)]
        dry_run: bool,
        /// Rewrite packs with more than this percentage unused
        #[arg(long, default_value_t = 10.0)]
        max_unused: f64,
        /// Run even on an append-only repository
        #[arg(long)]
        allow_delete: bool,
        /// Also rewrite the packs compressed below this zstd level (1-22),
        /// compressing them again at it: smaller packs for a one-time cost,
        /// with ingest kept at its faster level
        #[arg(long, value_name = "LEVEL")]
        recompress: Option<i32>,
        #[arg(long)]
        json: bool,
    },
    /// Check the catalog and, with --read-data, every stored byte
    Verify {
        /// Read and check every pack
        #[arg(long)]
        read_data: bool,
        /// Read and check this percentage of packs (a different part each day)
        #[arg(long, value_name = "PERCENT", conflicts_with = "read_data")]
        read_data_subset: Option<f64>,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild catalog.db from the packs (the old file is kept aside; a result holding fewer snapshots, entries or bytes is refused without --force)
    RebuildCatalog {
        /// Replace the catalog even when the rebuilt one holds fewer snapshots, entries or file bytes
        #[arg(long)]
        force: bool,
        #[arg(long)]
        json: bool,
    },
    /// Convert a repository of an earlier format to the current one, in place (only metadata is rewritten; killed, it can be run again)
    Upgrade {
        #[arg(long)]
        json: bool,
    },
    /// What was added, removed, modified or changed in metadata between two snapshots
    Diff {
        from: String,
        to: String,
        /// Only beneath this absolute path
        path: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Sizes, deduplication and compression of the repository or one snapshot
    Stats {
        snapshot: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Copy snapshots (default: all that REPO2 lacks) to another repository,
    /// sending only the data it lacks; REPO2 is a path or ssh://[user@]host[:port]/path
    Copy {
        #[arg(long = "to", value_name = "REPO2")]
        to: String,
        /// File holding the passphrase of an encrypted REPO2, which has its
        /// own key [env: SNAPFS_TO_PASSWORD_FILE, or SNAPFS_TO_PASSWORD_COMMAND]
        #[arg(long, value_name = "FILE")]
        to_password_file: Option<PathBuf>,
        /// Encryption of REPO2 when this creates it: none or
        /// xchacha20-poly1305 (default: the source's)
        #[arg(long, value_name = "MODE")]
        to_encryption: Option<String>,
        #[arg(long)]
        json: bool,
        snapshots: Vec<String>,
    },
    /// The far end of `copy --to ssh://...` and of `--repo ssh://...`
    /// (speaks on stdin/stdout; holds no key)
    #[command(hide = true)]
    Serve {
        /// For a forced command in authorized_keys: a copy never creates
        /// the repository; a client of the repository deletes nothing but
        /// leases, replaces no key slot and marks no pack for deletion
        #[arg(long)]
        append_only: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell)
    Completions { shell: clap_complete::Shell },
    /// Write man pages (snapfs.1, snapfs-ingest.1, ...) into DIR
    Man { dir: PathBuf },
    /// The key slots of an encrypted repository: each wraps its master key
    /// under one passphrase
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Serve every snapshot as a read-only directory at MOUNTPOINT (foreground;
    /// stop with `fusermount3 -u MOUNTPOINT` or Ctrl-C)
    Mount(MountArgs),
    /// Every version of one path across all snapshots
    Log {
        path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Names matching GLOB in all snapshots (a GLOB with '/' matches whole paths)
    Find {
        glob: String,
        /// Only in this snapshot
        #[arg(long)]
        snapshot: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum XattrStyle {
    Auto,
    Always,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum NameStyle {
    Plain,
    Gmt,
}

/// `512K`, `256M`, `1G`, or plain bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_uppercase();
            let m = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1u64 << 40,
                _ => return Err(format!("unknown size unit in {s:?}")),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("not a size: {s:?}"))
}

/// Policies apply to each group of snapshots with the same host and the
/// same sources (the paths given to ingest; for `--stdin`, the
/// `--stdin-name`), so one machine's or one stream's policy never removes
/// another's snapshots.
#[derive(Args, Debug)]
pub struct ForgetArgs {
    /// Keep the N newest snapshots
    #[arg(long, value_name = "N")]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the N newest hours
    #[arg(long, value_name = "N")]
    pub keep_hourly: Option<u32>,
    /// ... days
    #[arg(long, value_name = "N")]
    pub keep_daily: Option<u32>,
    /// ... ISO weeks
    #[arg(long, value_name = "N")]
    pub keep_weekly: Option<u32>,
    /// ... months
    #[arg(long, value_name = "N")]
    pub keep_monthly: Option<u32>,
    /// ... years
    #[arg(long, value_name = "N")]
    pub keep_yearly: Option<u32>,
    /// Keep everything within DURATION of the newest snapshot (e.g. 7d, 2w, 1y6m, 36h)
    #[arg(long, value_name = "DURATION")]
    pub keep_within: Option<String>,
    /// Keep snapshots with this tag (repeatable)
    #[arg(long = "keep-tag", value_name = "TAG")]
    pub keep_tags: Vec<String>,
    /// List every snapshot with keep/remove and the rules that decided, change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Run gc afterwards
    #[arg(long)]
    pub gc: bool,
    /// Run even on an append-only repository
    #[arg(long)]
    pub allow_delete: bool,
    #[arg(long)]
    pub json: bool,
    /// Snapshots to remove (instead of a policy)
    pub snapshots: Vec<String>,
}

#[derive(Args, Debug)]
pub struct IngestArgs {
    /// Snapshot name [default: the UTC start time, YYYY-MM-DDTHH-MM-SSZ]
    #[arg(long)]
    pub name: Option<String>,
    /// Tag the snapshot (repeatable)
    #[arg(long = "tag")]
    pub tags: Vec<String>,
    /// Leave out paths matching GLOB (repeatable); without '/', matches names anywhere
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Read exclude patterns from a file, one per line
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub exclude_files: Vec<PathBuf>,
    /// Leave out the contents of directories tagged with CACHEDIR.TAG
    #[arg(long)]
    pub exclude_caches: bool,
    /// Do not descend into other filesystems
    #[arg(long)]
    pub one_file_system: bool,
    /// zstd compression level (1-19) [default: the repository's]
    #[arg(long)]
    pub compression: Option<i32>,
    /// Store standard input as one file (see --stdin-name)
    #[arg(long)]
    pub stdin: bool,
    /// Path of the file that --stdin makes
    #[arg(long, default_value = "stdin", requires = "stdin")]
    pub stdin_name: PathBuf,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    pub sources: Vec<PathBuf>,
}

/// Write the completion script for `shell` to standard output.
pub fn print_completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "snapfs", &mut std::io::stdout());
}

/// Write one man page per command into `dir`; returns the files written.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    use clap::CommandFactory;
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut written = Vec::new();
    let mut write = |name: String, c: clap::Command| -> std::io::Result<()> {
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        clap_mangen::Man::new(c).render(&mut out)?;
        std::fs::write(&path, out)?;
        written.push(path);
        Ok(())
    };
    for sub in cmd.get_subcommands() {
        let name = format!("snapfs-{}", sub.get_name());
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        write(name, sub.clone().name(leaked))?;
    }
    write("snapfs".into(), cmd)?;
    Ok(written)
}

#[derive(Args, Debug)]
pub struct MountArgs {
    pub mountpoint: PathBuf,
    /// Let other users in (the kernel still enforces the original modes)
    #[arg(long)]
    pub allow_other: bool,
    /// Memory for decoded file data, e.g. 256M, 1G
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub cache_size: u64,
    /// Disk for pack bytes read from a repository in a bucket, kept in its
    /// local state directory so they are read once, e.g. 1G (the default
    /// there); 0 turns it off. Not for a local repository
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub disk_cache_size: Option<u64>,
    /// Threads serving requests (more than cores: a copy out of the
    /// mount waits less for a free one)
    #[arg(long, default_value_t = 16)]
    pub threads: usize,
    /// Snapshot directory names: `plain` (the snapshot's name) or `gmt`
    /// (@GMT-YYYY.MM.DD-HH.MM.SS, for Samba's shadow_copy2 "Previous Versions")
    #[arg(long, value_enum, default_value = "plain")]
    pub names: NameStyle,
    /// Seconds after which a file's chunk locations are let go once it
    /// is closed; gc keeps their packs meanwhile (an open file keeps its
    /// own until closed, however long)
    #[arg(long, default_value_t = crate::mount::snapshot_fs::DEFAULT_IDLE_EXPIRY.as_secs(), value_name = "SECONDS")]
    pub idle_expiry: u64,
    /// Extended attributes: `auto` tells the kernel they are not supported
    /// when no snapshot has any (one request for the whole mount instead of
    /// one per file; a snapshot with some made later shows after a
    /// remount); `always` serves them, answering "none" file by file
    /// (quieter for `tar --xattrs`, slower for `ls -l` and `cp -a`)
    #[arg(long, value_enum, default_value = "auto")]
    pub xattrs: XattrStyle,
}

impl MountArgs {
    pub fn request(&self) -> crate::mount::MountRequest {
        crate::mount::MountRequest {
            names: match self.names {
                NameStyle::Plain => crate::mount::snapshot_fs::Names::Plain,
                NameStyle::Gmt => crate::mount::snapshot_fs::Names::Gmt,
            },
            allow_other: self.allow_other,
            cache_bytes: self.cache_size as usize,
            disk_cache: self.disk_cache_size,
            threads: self.threads,
            idle_expiry: std::time::Duration::from_secs(self.idle_expiry),
            always_xattrs: matches!(self.xattrs, XattrStyle::Always),
        }
    }
}

impl IngestArgs {
    pub fn options(&self) -> crate::commands::ingest::IngestOptions {
        crate::commands::ingest::IngestOptions {
            name: self.name.clone(),
            tags: self.tags.clone(),
            excludes: self.excludes.clone(),
            exclude_files: self.exclude_files.clone(),
            exclude_caches: self.exclude_caches,
            one_file_system: self.one_file_system,
            compression: self.compression,
            stdin_name: self.stdin.then(|| self.stdin_name.clone()),
        }
    }
}

impl ForgetArgs {
    pub fn options(&self) -> crate::Result<crate::commands::forget::ForgetOptions> {
        use crate::commands::forget::{ForgetOptions, Policy, parse_duration};
        let policy = Policy {
            last: self.keep_last,
            hourly: self.keep_hourly,
            daily: self.keep_daily,
            weekly: self.keep_weekly,
            monthly: self.keep_monthly,
            yearly: self.keep_yearly,
            within_ns: self
                .keep_within
                .as_deref()
                .map(parse_duration)
                .transpose()?,
            tags: self.keep_tags.clone(),
        };
        Ok(ForgetOptions {
            policy,
            snapshots: self.snapshots.clone(),
            dry_run: self.dry_run,
            allow_delete: self.allow_delete,
        })
    }
}
