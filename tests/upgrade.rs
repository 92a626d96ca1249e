//! A repository written in format 1 (a committed fixture, made by an
//! earlier release with `tests/fixtures/format1/make.sh`): refused with a
//! message that says to run `snapfs upgrade`, converted by it in place,
//! also when killed at any moment and run again, and afterwards restored,
//! verified and rebuilt like any format-2 repository.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/format1");

/// The fixture's repository, unpacked at DIR/repo, and its source tree at
/// DIR/src (the state of the second snapshot).
pub(crate) fn unpack(dir: &Path) -> (Repo, PathBuf) {
    require_tool("tar");
    let d = dir.as_os_str();
    tool(
        "tar",
        &[
            "-C".as_ref(),
            d,
            "-xzf".as_ref(),
            Path::new(FIXTURE).join("repo.tar.gz").as_os_str(),
        ],
    );
    tool(
        "tar",
        &[
            "--xattrs".as_ref(),
            "--xattrs-include=*".as_ref(),
            "-C".as_ref(),
            d,
            "-xf".as_ref(),
            Path::new(FIXTURE).join("source.tar").as_os_str(),
        ],
    );
    (Repo::at(&dir.join("repo")), dir.join("src"))
}

pub(crate) fn upgrade(repo: &Repo) -> Value {
    json_of("upgrade --json", repo.cmd().args(["upgrade", "--json"]))
}

/// The one source path the fixture's snapshots hold.
fn source_of(repo: &Repo) -> PathBuf {
    let s = &repo.snapshots()[0];
    PathBuf::from(s["sources"][0].as_str().expect("a source path"))
}

/// Everything a user would check after an upgrade.
fn assert_upgraded(repo: &Repo, src: &Path) {
    assert_eq!(repo.snapshot_names(), ["first", "second"]);
    let config = std::fs::read_to_string(repo.path.join("config")).expect("config");
    assert!(config.contains("format = 2"), "{config}");
    let scratch = tempdir();
    let target = canonical(scratch.path()).join("second");
    let source = source_of(repo);
    repo.restore(spec_of("second", &source), &target);
    assert_same_tree(src, &target);
    let first = canonical(scratch.path()).join("first");
    repo.restore(spec_of("first", &source), &first);
    assert!(first.join("docs/hello.txt").exists());
    assert!(!first.join("docs/changed-later").exists());
    assert_verify_read_data_ok(repo, "after the upgrade");
    // Nothing of format 1 is left for a rebuild to stumble on.
    let rebuilt = rebuild_catalog_ok(repo);
    assert_eq!(rebuilt["problems"], Value::Array(vec![]), "{rebuilt}");
    assert_eq!(repo.snapshot_names(), ["first", "second"]);
}

#[test]
fn a_format_1_repository_is_refused_with_the_way_to_upgrade_it() {
    let dir = tempdir();
    let (repo, _) = unpack(&canonical(dir.path()));
    let before = std::fs::read(repo.path.join("config")).expect("config");
    for args in [&["snapshots"][..], &["verify"], &["gc"]] {
        let out = output_of(repo.cmd().args(args));
        let err = stderr_of(&out);
        assert!(!out.status.success(), "{args:?} ran on format 1");
        assert!(
            err.contains("format 1") && err.contains("snapfs upgrade"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(
        std::fs::read(repo.path.join("config")).expect("config"),
        before,
        "a refused command changed the config"
    );
}

#[test]
fn upgrade_converts_a_format_1_repository_and_checks_every_entry() {
    let dir = tempdir();
    let (repo, src) = unpack(&canonical(dir.path()));
    let packs_before = repo.pack_files();
    let json = upgrade(&repo);
    assert_eq!(json_u64(&json, "from"), 1, "{json}");
    assert_eq!(json_u64(&json, "to"), 2, "{json}");
    assert_eq!(json_u64(&json, "snapshots"), 2, "{json}");
    assert!(json_u64(&json, "entries_checked") >= 15, "{json}");
    assert!(
        json["old_catalog"].as_str().is_some(),
        "the format-1 catalog was not kept aside: {json}"
    );
    assert!(
        json_u64(&json["gc"], "packs_rewritten") + json_u64(&json["gc"], "packs_removed") >= 1,
        "the format-1 metadata was not cleaned up: {json}"
    );
    assert_ne!(repo.pack_files(), packs_before);
    assert_upgraded(&repo, &src);
    // Run again: nothing to do, and it says so.
    let again = upgrade(&repo);
    assert_eq!(json_u64(&again, "from"), 2, "{again}");
    assert_eq!(json_u64(&again, "snapshots"), 0, "{again}");
    assert_upgraded(&repo, &src);
}

#[test]
fn killed_upgrade_runs_again_to_the_same_repository() {
    // How long one whole upgrade of the fixture takes here.
    let dir = tempdir();
    let (repo, _) = unpack(&canonical(dir.path()));
    let t0 = std::time::Instant::now();
    upgrade(&repo);
    let whole = t0.elapsed().as_micros() as u64;
    let mut rng = Rng::new(1414);
    let mut kills = 0;
    for round in 0..12 {
        let dir = tempdir();
        let (repo, src) = unpack(&canonical(dir.path()));
        // A few kills at random moments of a run, then a run to the end.
        for _ in 0..3 {
            let delay = Duration::from_micros(rng.below(whole * 4 / 5 + 1));
            if run_killed_after(repo.cmd().arg("upgrade"), delay, "upgrade").is_some() {
                continue;
            }
            kills += 1;
            // Whatever the moment, the repository is one format or the
            // other, and usable as that one.
            let config = std::fs::read_to_string(repo.path.join("config")).expect("config");
            if config.contains("format = 2") {
                assert_eq!(repo.snapshot_names(), ["first", "second"]);
            } else {
                assert!(config.contains("format = 1"), "{config}");
            }
        }
        upgrade(&repo);
        let leftovers: Vec<String> = std::fs::read_dir(&repo.path)
            .expect("repository")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("catalog.db.rebuild-"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: {leftovers:?}");
        if round % 4 == 3 {
            assert_upgraded(&repo, &src);
        }
    }
    eprintln!("{kills} kills in all");
    assert!(kills >= 10, "only {kills} kills landed");
}
