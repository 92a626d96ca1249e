//! A scratch area for tests that keep changing one source tree in place
//! (one forget group, one kill loop) and still check every older snapshot
//! later: each snapshot is compared with a frozen copy of its source
//! (`cp -a` right after the ingest), not with the source as it is now.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;

/// A canonical base directory with a source tree `src`, frozen copies of
/// it, and room for restores in `scratch`.
pub(crate) struct Work {
    _dir: TempDir,
    pub(crate) base: PathBuf,
    pub(crate) src: PathBuf,
    pub(crate) scratch: PathBuf,
}

impl Work {
    pub(crate) fn new() -> Work {
        let dir = tempdir();
        let base = canonical(dir.path());
        let src = base.join("src");
        let scratch = base.join("scratch");
        mkdir(&src);
        mkdir(&scratch);
        Work {
            _dir: dir,
            base,
            src,
            scratch,
        }
    }

    /// A frozen copy of the source as it is now (`cp -a`, hard links kept).
    pub(crate) fn freeze(&self, label: &str) -> PathBuf {
        self.freeze_of(&self.src, label)
    }

    /// The same for another tree than the main source.
    pub(crate) fn freeze_of(&self, src: &Path, label: &str) -> PathBuf {
        let dest = self.base.join(format!("ref-{label}"));
        assert!(!dest.exists(), "{} exists already", dest.display());
        tool("cp", &[OsStr::new("-a"), src.as_os_str(), dest.as_os_str()]);
        dest
    }

    /// Restores snapshot `spec` whole and asserts that the source inside
    /// it reproduces `reference` ([`assert_same_tree`]).
    pub(crate) fn assert_restores(&self, repo: &Repo, spec: &str, reference: &Path) {
        self.assert_restores_of(repo, spec, &self.src, reference);
    }

    /// The same for a snapshot of `src` rather than of the main source.
    pub(crate) fn assert_restores_of(&self, repo: &Repo, spec: &str, src: &Path, reference: &Path) {
        assert_restores_as(repo, spec, &[(src, reference)], &format!("snapshot {spec}"));
    }
}
