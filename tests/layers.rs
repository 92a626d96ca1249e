//! The layering of `src/` (docs/ARCHITECTURE.md), checked: each layer uses
//! only those below it, and each third-party crate that ties the code to one
//! concern stays in the layer that owns that concern. A file that crosses a
//! wall fails here, naming the file, the line and the wall.

use std::fs;
use std::path::{Path, PathBuf};

/// The layers, lowest first; `base` is the error type, ids and times.
const LAYERS: &[&str] = &[
    "base", "crypto", "format", "repo", "commands", "mount", "app",
];

/// Which layers each layer may use (besides itself).
fn may_use(layer: &str, other: &str) -> bool {
    let rank = |l: &str| LAYERS.iter().position(|x| *x == l).expect("a layer");
    match layer {
        // The mount serves snapshots; it runs no command.
        "mount" => other != "commands" && rank(other) <= rank(layer),
        _ => rank(other) <= rank(layer),
    }
}

/// Crates that belong to one place: (crate, the path prefix under `src/`
/// that may use it, why).
const OWNED: &[(&str, &str, &str)] = &[
    ("clap", "app/", "command-line syntax lives in app/"),
    ("rusqlite", "repo/catalog/", "SQL lives in the catalog"),
    ("fuser", "mount/", "FUSE lives in the mount"),
    ("zstd", "format/blob.rs", "compression is the blob format's"),
    (
        "chacha20poly1305",
        "crypto/",
        "the cipher is composed in crypto/",
    ),
    (
        "argon2",
        "crypto/",
        "the passphrase KDF is composed in crypto/",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap_or_else(|e| panic!("list {}: {e}", dir.display())) {
        let p = e.expect("entry").path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The layer of a module named at the crate root (`crate::<name>`).
fn layer_of_module(name: &str) -> Option<&'static str> {
    match name {
        "error" | "ids" | "time" | "units" | "Error" | "Result" => Some("base"),
        "crypto" => Some("crypto"),
        "format" => Some("format"),
        "repo" => Some("repo"),
        "commands" => Some("commands"),
        "mount" => Some("mount"),
        "app" => Some("app"),
        _ => None,
    }
}

/// The code of a line, without a trailing `//` comment (near enough: no
/// `//` inside the strings that name modules).
fn code(line: &str) -> &str {
    let t = line.trim_start();
    if t.starts_with("//") {
        return "";
    }
    match line.find("//") {
        Some(i) if !line[..i].contains('"') => &line[..i],
        _ => line,
    }
}

fn violations() -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(
        files.len() > 30,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut out = Vec::new();
    for f in &files {
        let rel = f
            .strip_prefix(&src)
            .expect("under src")
            .to_string_lossy()
            .into_owned();
        let layer = match rel.split('/').next().expect("a component") {
            "lib.rs" | "main.rs" => "app",
            first if first.ends_with(".rs") => "base",
            dir => dir,
        };
        assert!(
            LAYERS.contains(&layer),
            "{rel}: a folder that is no layer ({layer})"
        );
        let text = fs::read_to_string(f).unwrap_or_else(|e| panic!("read {rel}: {e}"));
        for (n, line) in text.lines().enumerate() {
            let line = code(line);
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                let after = &rest[i + "crate::".len()..];
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if let Some(other) = layer_of_module(&name)
                    && !may_use(layer, other)
                {
                    out.push(format!(
                        "src/{rel}:{}: {layer} uses {other} (crate::{name})",
                        n + 1
                    ));
                }
                rest = after;
            }
            for (krate, home, why) in OWNED {
                let uses = [format!("{krate}::"), format!("use {krate}")]
                    .iter()
                    .any(|p| line.contains(p.as_str()));
                if uses && !rel.starts_with(home) && !(*krate == "clap" && rel == "lib.rs") {
                    out.push(format!("src/{rel}:{}: uses {krate}; {why}", n + 1));
                }
            }
        }
    }
    out
}

#[test]
fn every_layer_uses_only_those_below_it_and_owned_crates_stay_home() {
    let v = violations();
    assert!(v.is_empty(), "walls crossed:\n{}", v.join("\n"));
}

#[test]
fn the_layer_check_sees_a_crossing() {
    assert!(may_use("commands", "repo") && !may_use("repo", "commands"));
    assert!(!may_use("mount", "commands") && may_use("mount", "repo"));
    assert!(!may_use("format", "repo") && may_use("format", "base"));
    assert_eq!(code("use crate::repo; // crate::app"), "use crate::repo; ");
    assert_eq!(code("  // crate::app"), "");
}
