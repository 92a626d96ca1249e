//! `snapfs upgrade` handed a hostile format-1 repository: the fixture with
//! crafted format-1 trees and records planted beside its packs. Whatever
//! they claim, the upgrade converts what is sound or refuses with an error
//! naming the object, and never loses or alters a snapshot.

use snapfs::format::codec::Encoder;
use snapfs::format::pack::ChunkKind;
use snapfs::format::tree::Kind;
use snapfs::ids::ChunkId;

use crate::upgrade::{unpack, upgrade};
use crate::util::*;

/// A format-1 tree of fifos named `names` (sorted), as format 1 wrote it.
fn v1_fifo_tree(names: &[&[u8]]) -> Vec<u8> {
    let mut e = Encoder::new();
    e.u8(1);
    e.u64(names.len() as u64);
    for name in names {
        e.bytes(name);
        e.u8(Kind::Fifo as u8);
        for v in [0o10644u64, 0, 0, 0] {
            e.u64(v);
        }
        for _ in 0..3 {
            e.i64(1_700_000_000_000_000_000);
        }
        for v in [0u64, 7, 1, 0, 0] {
            e.u64(v);
        }
        e.bytes(&[]);
    }
    e.buf
}

/// A format-1 snapshot record: a format-2 one without its owner lists.
fn v1_record(name: &str, root: ChunkId, nodes: u64) -> Vec<u8> {
    let mut r = snapshot_record(name, "/crafted", root, nodes, &[0, 1, 0, 0, 0]);
    // Two empty owner lists: two zero counts.
    assert_eq!(r.split_off(r.len() - 2), [0, 0]);
    r
}

/// The fixture's format-1 repository with one more pack: a one-fifo tree
/// and a format-1 snapshot record of it per (name, node count) given;
/// upgraded, with the upgrade's answer.
fn upgraded_with_records(records: &[(&str, u64)]) -> (tempfile::TempDir, Repo, serde_json::Value) {
    let dir = tempdir();
    let (repo, _) = unpack(&canonical(dir.path()));
    let tree = v1_fifo_tree(&[b"p"]);
    let (root, _, _) = honest_blob(&tree);
    let mut rows = vec![honest_row(ChunkKind::Page, &tree)];
    for (name, nodes) in records {
        rows.push(honest_row(
            ChunkKind::Snapshot,
            &v1_record(name, root, *nodes),
        ));
    }
    plant_pack(&repo.path, &craft_pack(&rows).bytes);
    let json = upgrade(&repo);
    (dir, repo, json)
}

#[test]
fn upgrade_of_records_that_differ_only_in_their_node_count() {
    // Two format-1 records of one snapshot, one claiming a false node
    // count: format 2 counts nodes itself, so both become the same record.
    // The upgrade must still convert the repository, keeping the snapshot
    // once, not refuse it for ever.
    let (_dir, repo, json) = upgraded_with_records(&[("crafted", 1), ("crafted", 999)]);
    assert_eq!(json_u64(&json, "snapshots"), 3, "{json}");
    assert_eq!(repo.snapshot_names(), ["crafted", "first", "second"]);
    assert_verify_read_data_ok(&repo, "after the upgrade");
}

#[test]
fn upgrade_of_a_config_whose_format_line_is_spaced_otherwise() {
    // `format=1` is format 1 to every reader of the config, and the error
    // each command gives says to run `snapfs upgrade`: that must work,
    // not answer with the same error.
    for line in ["format=1", "format  =  1", "\tformat =1 "] {
        let dir = tempdir();
        let (repo, _) = unpack(&canonical(dir.path()));
        let path = repo.path.join("config");
        let config = std::fs::read_to_string(&path).expect("config");
        assert!(config.contains("\nformat = 1\n"), "{config}");
        write_file(
            &path,
            config
                .replace("\nformat = 1\n", &format!("\n{line}\n"))
                .as_bytes(),
        );
        let json = upgrade(&repo);
        assert_eq!(json_u64(&json, "snapshots"), 2, "{line:?}: {json}");
        assert_eq!(repo.snapshot_names(), ["first", "second"], "{line:?}");
        let after = std::fs::read_to_string(&path).expect("config");
        assert!(after.contains("format = 2"), "{line:?}: {after}");
    }
}

#[test]
fn upgrade_of_snapshot_names_format_2_refuses() {
    // Format 1 took names format 2 refuses (a ':' of a time, a '/', a
    // leading '.'): the upgrade mends them and says so, instead of
    // stopping with the repository left in format 1 for ever.
    let (_dir, repo, json) = upgraded_with_records(&[("12:30", 1), ("../up", 1), ("latest", 1)]);
    assert_eq!(json_u64(&json, "snapshots"), 5, "{json}");
    let renamed: Vec<(String, String)> = json["renamed"]
        .as_array()
        .expect("renamed list")
        .iter()
        .map(|r| {
            (
                r["from"].as_str().unwrap().into(),
                r["to"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(renamed.len(), 3, "{json}");
    assert!(
        renamed.contains(&("12:30".into(), "12_30".into())),
        "{renamed:?}"
    );
    assert!(
        renamed.contains(&("../up".into(), "_._up".into())),
        "{renamed:?}"
    );
    let latest = renamed
        .iter()
        .find(|r| r.0 == "latest")
        .expect("latest renamed");
    assert!(latest.1.starts_with("upgraded-"), "{renamed:?}");
    let mut names = repo.snapshot_names();
    names.sort();
    let mut want = vec![
        "12_30".to_string(),
        "_._up".into(),
        latest.1.clone(),
        "first".into(),
        "second".into(),
    ];
    want.sort();
    assert_eq!(names, want);
    assert_verify_read_data_ok(&repo, "after the upgrade");
}
