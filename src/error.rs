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
    Catalog(CatalogError),

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

    /// A snapshot with extended attributes, made after a mount decided to
    /// serve none because no snapshot had any: served after a remount,
    /// never without its attributes (nor its ACLs unchecked).
    #[error(
        "snapshot {0} has extended attributes, and this mount serves none (the repository had none when it started); mount again to see it"
    )]
    XattrsAfterMount(String),

    /// A repository of an earlier format, which this release converts.
    #[error(
        "repository {} has format {found}, an earlier format than this snapfs reads ({supported}); convert it with `snapfs upgrade --repo {}` (nothing in it is changed until then)",
        path.display(), path.display()
    )]
    OldFormat {
        path: PathBuf,
        found: u32,
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

    /// An inode number the mount does not know (any more): the kernel asked
    /// after a name it was given long ago, of a snapshot since forgotten.
    #[error("no such inode {0} in the mount (its snapshot may have been forgotten)")]
    NoSuchInode(u64),

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
            Error::NoSuchSnapshot(_) | Error::NoSuchPath { .. } | Error::NoSuchInode(_) => {
                libc::ENOENT
            }
            Error::Invalid(_) => libc::EINVAL,
            Error::CatalogReplaced(_) => libc::ESTALE,
            Error::XattrsAfterMount(_) => libc::EACCES,
            _ => libc::EIO,
        }
    }

    /// True when the error says the disk is full, so callers can say so plainly.
    pub fn is_disk_full(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.raw_os_error() == Some(libc::ENOSPC),
            Error::Catalog(e) => e.kind == CatalogErrorKind::DiskFull,
            _ => false,
        }
    }
}

/// A catalog error, in terms of what callers act on; the catalog module
/// makes these from its database library's errors (no third-party type
/// crosses this module's boundary).
#[derive(Debug)]
pub struct CatalogError {
    pub kind: CatalogErrorKind,
    /// The database's own words.
    pub message: String,
    /// Which query failed, on which object (`chunk_loc (chunk 3fa2…)`):
    /// filled in by the catalog method that ran it.
    pub during: String,
}

impl std::fmt::Display for CatalogError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        if !self.during.is_empty() {
            write!(f, " (in {})", self.during)?;
        }
        Ok(())
    }
}

/// What a caller may do about a catalog error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CatalogErrorKind {
    /// The disk (or quota) is full.
    DiskFull,
    /// Another process holds the database, or the system ran short (I/O,
    /// memory, permission): says nothing about the catalog's contents.
    Transient,
    /// Anything else: a query failed on what the catalog holds.
    Other,
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
