//! The repository's `config` file: format, chunking, compression, pack
//! size, append-only. Read from disk, so every value is range-checked.

use std::collections::HashSet;
use std::path::Path;

use super::FORMAT;
use crate::error::{Error, Result};
use crate::format::blob;
use crate::format::chunker::ChunkerParams;

/// Repository settings, fixed at `init` (the chunker limits must never change:
/// dedup depends on them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub format: u32,
    pub chunker: ChunkerParams,
    pub pack_size: u64,
    pub compression: i32,
    pub append_only: bool,
    /// The repository's identity: random at `init`, bound into its key
    /// slots and naming its local cache. Repositories made before it
    /// existed have none (and cannot be encrypted).
    pub id: Option<RepoId>,
    pub encryption: Encryption,
}

/// A repository's random identity, 32 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepoId(pub [u8; 32]);

impl RepoId {
    pub fn random() -> Result<RepoId> {
        let mut b = [0u8; 32];
        crate::crypto::random_bytes(&mut b)?;
        Ok(RepoId(b))
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// How a repository's objects are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encryption {
    /// Readable by whoever can read the files.
    None,
    /// Sealed with XChaCha20-Poly1305 under keys of a master key that
    /// key slots (`keys/`) wrap under passphrases.
    XChaCha20Poly1305,
}

impl Encryption {
    pub const NAMES: [&'static str; 2] = ["none", "xchacha20-poly1305"];

    pub fn name(self) -> &'static str {
        match self {
            Encryption::None => Self::NAMES[0],
            Encryption::XChaCha20Poly1305 => Self::NAMES[1],
        }
    }

    pub fn from_name(name: &str) -> Option<Encryption> {
        match name {
            "none" => Some(Encryption::None),
            "xchacha20-poly1305" => Some(Encryption::XChaCha20Poly1305),
            _ => None,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            format: FORMAT,
            chunker: ChunkerParams::default(),
            pack_size: 32 << 20,
            compression: 3,
            append_only: false,
            id: None,
            encryption: Encryption::None,
        }
    }
}

impl Config {
    /// The config file's text, as `init` writes it. Public for fuzzing and tests.
    pub fn render(&self) -> String {
        let mut text = self.render_settings();
        if let Some(id) = &self.id {
            text.push_str(&format!("id = {}\n", id.to_hex()));
        }
        if self.encryption != Encryption::None {
            text.push_str(&format!("encryption = {}\n", self.encryption.name()));
        }
        text
    }

    fn render_settings(&self) -> String {
        format!(
            "# snapfs repository configuration\nformat = {}\nchunk_min = {}\nchunk_avg = {}\nchunk_max = {}\nframe = {}\npack_size = {}\ncompression = {}\nappend_only = {}\n",
            self.format,
            self.chunker.min,
            self.chunker.avg,
            self.chunker.max,
            blob::FRAME,
            self.pack_size,
            self.compression,
            self.append_only
        )
    }

    /// Parse and check a config file. Every key is known, given once and
    /// within its range; an error names the file and the key. The file is
    /// input like any other: a zero `chunk_avg` once made every ingest panic.
    pub fn parse(text: &str, path: &Path) -> Result<Config> {
        let mut c = Config::default();
        let bad = |what: &str| Error::UnsupportedFormat {
            path: path.to_path_buf(),
            found: what.to_string(),
            supported: FORMAT,
        };
        let invalid =
            |key: &str, why: String| Error::invalid(format!("{}: {key}: {why}", path.display()));
        let mut saw_format = false;
        let mut seen = HashSet::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .map(|(k, v)| (k.trim(), v.trim()))
                .ok_or_else(|| {
                    Error::invalid(format!(
                        "{}: unreadable line {line:?} (expected key = value)",
                        path.display()
                    ))
                })?;
            if !seen.insert(k.to_string()) {
                return Err(invalid(k, "given more than once".into()));
            }
            let num = |lo: u64, hi: u64| match v.parse::<u64>() {
                Ok(n) if (lo..=hi).contains(&n) => Ok(n),
                _ => Err(invalid(k, format!("{v:?} is not a number in {lo}..={hi}"))),
            };
            let size = |lo: u64, hi: u64| num(lo, hi).map(|n| n as usize);
            match k {
                "format" => {
                    saw_format = true;
                    c.format = v.parse::<u32>().map_err(|_| bad(v))?;
                    if c.format == 1 {
                        return Err(Error::OldFormat {
                            path: path.parent().unwrap_or(path).to_path_buf(),
                            found: 1,
                            supported: FORMAT,
                        });
                    }
                    if c.format != FORMAT {
                        return Err(bad(v));
                    }
                }
                "chunk_min" => c.chunker.min = size(0, u32::MAX.into())?,
                "chunk_avg" => c.chunker.avg = size(0, u32::MAX.into())?,
                "chunk_max" => c.chunker.max = size(0, u32::MAX.into())?,
                "frame" => {
                    let f = blob::FRAME as u64;
                    num(f, f)?;
                }
                "pack_size" => c.pack_size = num(MIN_PACK_SIZE, MAX_PACK_SIZE)?,
                "compression" => {
                    let range = blob::compression_levels();
                    c.compression =
                        v.parse()
                            .ok()
                            .filter(|l| range.contains(l))
                            .ok_or_else(|| {
                                invalid(
                                    k,
                                    format!(
                                        "{v:?} is not a zstd level in {}..={}",
                                        range.start(),
                                        range.end()
                                    ),
                                )
                            })?;
                }
                "append_only" => {
                    c.append_only = match v {
                        "true" => true,
                        "false" => false,
                        _ => return Err(invalid(k, format!("{v:?} is neither true nor false"))),
                    }
                }
                "id" => {
                    let bytes: Option<Vec<u8>> = (v.len() == 64)
                        .then(|| {
                            (0..32)
                                .map(|i| u8::from_str_radix(&v[2 * i..2 * i + 2], 16).ok())
                                .collect()
                        })
                        .flatten();
                    let bytes = bytes
                        .filter(|_| {
                            v.bytes()
                                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                        })
                        .ok_or_else(|| {
                            invalid(k, format!("{v:?} is not 64 lowercase hex digits"))
                        })?;
                    c.id = Some(RepoId(bytes.try_into().expect("32 bytes")));
                }
                "encryption" => {
                    c.encryption = Encryption::from_name(v).ok_or_else(|| {
                        invalid(
                            k,
                            format!("{v:?} is not one of {}", Encryption::NAMES.join(", ")),
                        )
                    })?;
                }
                _ => return Err(invalid(k, "unknown key".into())),
            }
        }
        if !saw_format {
            return Err(bad("no format line"));
        }
        if let Some((key, why)) = c.chunker.problem() {
            return Err(invalid(key, why));
        }
        if c.encryption != Encryption::None && c.id.is_none() {
            return Err(invalid("id", "an encrypted repository needs one".into()));
        }
        Ok(c)
    }
}

/// Smallest `pack_size`: below this, packs are mostly table and footer.
const MIN_PACK_SIZE: u64 = 64 << 10;

/// Largest `pack_size`: a pack is read whole by verify and copy.
const MAX_PACK_SIZE: u64 = 4 << 30;

#[cfg(test)]
mod config_tests {
    use super::*;
    use crate::format::codec::mutate;
    use proptest::prelude::*;

    fn with(key: &str, value: &str) -> String {
        Config::default()
            .render()
            .lines()
            .map(|l| match l.split_once(" = ") {
                Some((k, _)) if k == key => format!("{k} = {value}\n"),
                _ => format!("{l}\n"),
            })
            .collect()
    }

    fn error(key: &str, value: &str) -> String {
        match Config::parse(&with(key, value), Path::new("/r/config")) {
            Ok(c) => panic!("{key} = {value} accepted: {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn config_with_zero_chunk_avg_is_a_clear_error() {
        let e = error("chunk_avg", "0");
        assert!(e.contains("/r/config") && e.contains("chunk_avg"), "{e}");
    }

    #[test]
    fn every_config_value_is_range_checked() {
        for (k, v) in [
            ("chunk_min", "0"),
            ("chunk_min", "2097152"),
            ("chunk_max", "18446744073709551615"),
            ("chunk_max", "65536"),
            ("chunk_avg", "1048577"),
            ("chunk_avg", "-1"),
            ("frame", "1"),
            ("pack_size", "0"),
            ("pack_size", "18446744073709551615"),
            ("compression", "1000"),
            ("compression", "x"),
            ("append_only", "yes"),
            ("format", "4294967297"),
        ] {
            let e = error(k, v);
            assert!(e.contains("/r/config"), "{k}: {e}");
        }
        let dup = format!("{}chunk_avg = 1048576\n", Config::default().render());
        assert!(Config::parse(&dup, Path::new("c")).is_err());
        let unknown = format!("{}apend_only = true\n", Config::default().render());
        let e = Config::parse(&unknown, Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("apend_only"), "{e}");
        let small = with("chunk_min", "64")
            .replace("chunk_avg = 1048576", "chunk_avg = 256")
            .replace("chunk_max = 4194304", "chunk_max = 1024");
        assert!(Config::parse(&small, Path::new("c")).is_ok());
    }

    proptest! {
        #![proptest_config(mutate::config())]

        #[test]
        fn config_parse_never_panics(b in mutate::bytes()) {
            if let Ok(c) = Config::parse(&String::from_utf8_lossy(&b), Path::new("c")) {
                prop_assert_eq!(Config::parse(&c.render(), Path::new("c")).unwrap(), c);
            }
        }

        #[test]
        fn damaged_configs_parse_to_usable_values_or_fail(
            b in mutate::damaged(Config::default().render().into_bytes())
        ) {
            if let Ok(c) = Config::parse(&String::from_utf8_lossy(&b), Path::new("c")) {
                prop_assert!(c.chunker.problem().is_none());
                prop_assert_eq!(Config::parse(&c.render(), Path::new("c")).unwrap(), c);
            }
        }
    }
}
