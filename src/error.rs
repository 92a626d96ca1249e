//! One error type for the library, with the one errno mapping the mount uses.
//!
//! Rules: every I/O error carries the path it happened on (use [`IoContext::at`]);
//! messages say what to do when the user can do something; library code never
//! panics on bad input.

use std::io;
use std::path::{Path, PathBuf};

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("catalog: {0}")]
    Catalog(#[from] rusqlite::Error),

    #[error("{} is not a snapfs repository (create one with `snapfs init`, or pass --repo)", .0.display())]
    NotARepository(PathBuf),

    #[error("{} is not empty and is not a snapfs repository; choose an empty or new directory", .0.display())]
    NotEmpty(PathBuf),

    #[error(
        "repository {} has format {found}, this snapfs understands format {supported}; use a snapfs release that matches the repository",
        path.display()
    )]
    UnsupportedFormat {
        path: PathBuf,
        found: String,
        supported: u32,
    },

    /// The catalog file is there but holds no usable catalog (empty, not a
    /// database, tables without our schema): the packs still hold everything,
    /// so the way out is a rebuild, not another release.
    #[error(
        "catalog {} {why}; rebuild it from the packs with `snapfs rebuild-catalog` (which keeps this file aside)",
        path.display()
    )]
    DamagedCatalog { path: PathBuf, why: String },

    /// A reader found the catalog file replaced (by `rebuild-catalog`)
    /// under it: the new catalog's row ids mean other things, so reading on
    /// could mix two catalogs.
    #[error(
        "{} was replaced while being read (by rebuild-catalog?); run the command again, or unmount and mount again",
        .0.display()
    )]
    CatalogReplaced(PathBuf),

    #[error("no snapshot matches {0:?} (see `snapfs snapshots`)")]
    NoSuchSnapshot(String),

    #[error("{0:?} matches several snapshots ({1}); give more of the id or the full name")]
    AmbiguousSnapshot(String, String),

    #[error("{} does not exist in snapshot {snapshot}", path.display())]
    NoSuchPath { snapshot: String, path: PathBuf },

    #[error("damaged data: {0}")]
    Corrupt(String),

    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn corrupt(msg: impl Into<String>) -> Self {
        Error::Corrupt(msg.into())
    }

    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::Invalid(msg.into())
    }

    /// The message without the "damaged data" lead of [`Error::Corrupt`],
    /// for quoting an error inside another that already says so.
    pub fn detail(&self) -> String {
        match self {
            Error::Corrupt(m) => m.clone(),
            e => e.to_string(),
        }
    }

    /// The errno a filesystem caller sees for this error: damage is EIO,
    /// a missing name ENOENT, anything else the OS error or EIO.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            Error::NoSuchSnapshot(_) | Error::NoSuchPath { .. } => libc::ENOENT,
            Error::Invalid(_) => libc::EINVAL,
            Error::CatalogReplaced(_) => libc::ESTALE,
            _ => libc::EIO,
        }
    }

    /// True when the error says the disk is full, so callers can say so plainly.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            Error::Catalog(rusqlite::Error::SqliteFailure(e, _)) => {
                e.code == rusqlite::ErrorCode::DiskFull
            }
            _ => false,
        }
    }
}

/// Attach the path an I/O error happened on.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        })
    }
}
