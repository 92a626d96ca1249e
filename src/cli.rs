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

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a repository
    Init {
        /// Default zstd level for ingests
        #[arg(long, default_value_t = 3)]
        compression: i32,
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
        spec: String,
        target: PathBuf,
        #[arg(long)]
        json: bool,
    },
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
