//! Writes the seed corpora under `seeds/<target>/`: small valid encodings
//! made with snapfs's own encoders, so the fuzzer starts from real shapes.
//! Run from `fuzz/`: `cargo run --bin gen_seeds`.
use std::path::{Path, PathBuf};

use snapfs::format::blob::Encoder;
use snapfs::format::keying::Keying;
use snapfs::format::pack::{ChunkKind, PackWriter};
use snapfs::format::page::build_dir;
use snapfs::format::record::SnapshotRow;
use snapfs::format::tree::{
    Body, ChunkList, ChunkRef, ContentRef, Entry, FileTime, Kind, Meta, encode_xattrs,
};
use snapfs::ids::{ChunkId, Hash, TreeHash, TreeId};

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).expect("create seed dir");
    std::fs::write(dir.join(name), bytes).expect("write seed");
}

fn blob(data: &[u8]) -> (ChunkId, Vec<u8>) {
    let keying = Keying::plain();
    let h = keying.hash_chunk(data);
    let b = Encoder::new(3, &keying)
        .expect("zstd")
        .encode(data, &h)
        .expect("encode");
    (h.id, b)
}

fn entries() -> Vec<Entry> {
    let mut list = ChunkList::default();
    for (name, len) in [(&b"a"[..], 7), (b"b", 9)] {
        list.push(ChunkRef {
            id: ChunkId(Hash::of(name)),
            len,
        });
    }
    vec![
        Entry {
            name: b"dir".to_vec(),
            kind: Kind::Dir,
            meta: Meta {
                mode: 0o40755,
                ..Meta::default()
            },
            link_key: 0,
            xattrs: vec![],
            body: Body::Dir {
                tree: TreeHash(Hash::of(b"t")),
                nodes: 2,
            },
        },
        Entry {
            name: b"file".to_vec(),
            kind: Kind::File,
            meta: Meta {
                mode: 0o100644,
                size: 16,
                mtime: FileTime::from_stat(-5, 7),
                ..Meta::default()
            },
            link_key: 3,
            xattrs: vec![(b"user.k".to_vec(), b"v".to_vec())],
            body: Body::File(ContentRef::of_list(&Keying::plain(), &list, 16)),
        },
        Entry {
            name: b"link".to_vec(),
            kind: Kind::Symlink,
            meta: Meta::default(),
            link_key: 0,
            xattrs: vec![],
            body: Body::Symlink(b"file".to_vec()),
        },
        Entry {
            name: b"pipe".to_vec(),
            kind: Kind::Fifo,
            meta: Meta::default(),
            link_key: 0,
            xattrs: vec![],
            body: Body::Special,
        },
    ]
}

fn main() {
    let seeds = PathBuf::from("seeds");
    // Directory pages: a leaf, and the empty directory.
    let tree = build_dir(entries(), &Keying::plain()).root().bytes.clone();
    write(&seeds.join("tree"), "tree", &tree);
    write(
        &seeds.join("tree"),
        "empty",
        &build_dir(Vec::new(), &Keying::plain()).root().bytes,
    );
    write(
        &seeds.join("tree"),
        "xattrs",
        &encode_xattrs(&[(b"user.a".to_vec(), b"1".to_vec())]),
    );

    for (name, data) in [
        ("text", b"all work and no play ".repeat(20).to_vec()),
        ("empty", Vec::new()),
        ("raw", (0..=255u8).collect()),
    ] {
        let (_, b) = blob(&data);
        let mut seed = (data.len() as u32).to_le_bytes().to_vec();
        seed.extend_from_slice(&b);
        write(&seeds.join("blob"), name, &seed);
    }

    let tmp = std::env::temp_dir().join(format!("snapfs-seeds-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).expect("tmp dir");
    let mut w = PackWriter::create(&tmp, 3, &Keying::plain()).expect("pack writer");
    let (id, b) = blob(&tree);
    w.append(id, ChunkKind::Page, tree.len() as u32, &b)
        .expect("append");
    let (id, b) = blob(b"data");
    w.append(id, ChunkKind::Data, 4, &b).expect("append");
    let sealed = w.seal().expect("seal");
    let pack = std::fs::read(&sealed.path).expect("read pack");
    write(&seeds.join("pack_table"), "pack", &pack);
    // The copy protocol: a pack as a peer sends it (first byte odd), and
    // request frames (first byte even): hello, snapshots, missing chunks,
    // a small put_pack.
    let mut sent = vec![1u8];
    sent.extend_from_slice(&pack);
    write(&seeds.join("frame"), "pack", &sent);
    write(&seeds.join("frame"), "hello", &[0, 0, 1]);
    write(&seeds.join("frame"), "snapshots", &[0, 1]);
    let mut missing = vec![0u8, 2, 2];
    missing.extend_from_slice(&Hash::of(b"a").0);
    missing.extend_from_slice(&Hash::of(b"b").0);
    write(&seeds.join("frame"), "missing", &missing);
    let mut put = vec![0u8, 4];
    put.extend_from_slice(&Hash::of(&pack).0);
    put.push(pack.len() as u8);
    put.extend_from_slice(&pack[..pack.len().min(100)]);
    write(&seeds.join("frame"), "put", &put);
    let _ = std::fs::remove_dir_all(&tmp);

    let row = SnapshotRow {
        finished_ns: 2,
        host: "host".into(),
        sources: vec![PathBuf::from("/home")],
        tags: vec!["daily".into()],
        files: 1,
        dirs: 2,
        size: 3,
        read_bytes: 4,
        ..SnapshotRow::new("2024-01-02T03-04-05".into(), 1, TreeId(0))
    };
    let root = TreeHash(Hash::of(b"root"));
    write(
        &seeds.join("record"),
        "snapshot",
        &snapfs::format::record::encode_record(&row, &root, 5, &[1, 2, 3, 4, 0]),
    );
    write(
        &seeds.join("record"),
        "forget",
        &snapfs::format::record::encode_forget_record(&[Hash::of(b"x")], 7),
    );

    let config = snapfs::untrusted::Config::default().render();
    write(&seeds.join("config"), "default", config.as_bytes());
}
