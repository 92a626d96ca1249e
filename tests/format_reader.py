#!/usr/bin/env python3
"""An independent reader of snapfs repositories, written from docs/FORMAT.md.

It knows nothing of snapfs but that document: it finds every chunk through
the packs' own tables, lists snapshots from the snapshot and forget records
in the packs, extracts a snapshot with its metadata, verifies every chunk it
reads against its BLAKE3 id, and cross-checks the catalog (catalog.db)
against the packs. Section numbers (§) refer to docs/FORMAT.md.

Usage:
    format_reader.py REPO list [--json]
    format_reader.py REPO extract SNAPSHOT TARGET
    format_reader.py REPO verify
    format_reader.py REPO check-catalog

SNAPSHOT is a snapshot's name or its id (64 hex digits, or a unique prefix of
at least 8). TARGET must be a new or empty directory.

Needs Python 3.8+ and the `blake3` and `zstandard` modules. Exit status: 0 on
success, 1 when the repository is damaged or something cannot be done (the
message says what, naming the pack, chunk or path), 2 on a usage error.
"""

import argparse
import io
import json
import os
import sqlite3
import stat
import struct
import sys

try:
    import blake3
    import zstandard
except ImportError as e:  # pragma: no cover - the message is the point
    sys.stderr.write(
        "format_reader: this reader needs the Python modules blake3 and zstandard "
        f"({e}); scripts/test.sh installs them in target/format-reader-venv\n"
    )
    sys.exit(1)


class Damaged(Exception):
    """The repository's bytes are not what the format allows."""


class Usage(Exception):
    """The caller asked for something that cannot be done."""


# ---------------------------------------------------------------- constants (§3-§12)

FRAME = 262144
REPO_FORMAT = 1
PACK_MAGIC = b"SNAPFSPK"
TABLE_MAGIC = b"SNAPFSTB"
PACK_FORMAT_PLAIN = 1
HEADER_LEN = 16
FOOTER_LEN = 28
ROW_LEN = 49
BLOB_VERSION = 1
FRAME_REC = 36
RAW_FLAG = 1 << 31
KIND_DATA, KIND_TREE, KIND_SNAPSHOT = 0, 1, 2
MAX_DATA_CHUNK = 16777216
MAX_META_CHUNK = 1 << 30
TREE_FORMAT = 1
MIN_ENTRY_LEN = 15
MAX_NODES = 1 << 48
MAX_DEPTH = 2500
RECORD_SNAPSHOT, RECORD_FORGET = 1, 2
E_FILE, E_DIR, E_SYMLINK, E_FIFO, E_CHR, E_BLK = 1, 2, 3, 4, 5, 6
KIND_NAMES = {1: "file", 2: "dir", 3: "symlink", 4: "fifo", 5: "char", 6: "block"}
CHUNK_REC = 36
CATALOG_VERSION = 1


def b3(data):
    return blake3.blake3(data).digest()


def hx(h):
    return h.hex()


def show(name):
    """A name or path of bytes, readable in a message."""
    return repr(bytes(name))[2:-1]


def frame_count(raw_len):
    return max(1, -(-raw_len // FRAME))


def header_len(raw_len):
    return 3 + FRAME_REC * frame_count(raw_len)


def frame_len(raw_len, i):
    return max(0, min(FRAME, raw_len - i * FRAME))


def kind_limit(kind):
    return MAX_DATA_CHUNK if kind == KIND_DATA else MAX_META_CHUNK


# ---------------------------------------------------------------- chunks of zeros (§4.1)

_ZERO_FRAME = b3(bytes(FRAME))
_zero_ids = {}


def zero_id(length):
    """The id of a chunk of `length` zero bytes, from its frame structure."""
    z = _zero_ids.get(length)
    if z is None:
        digests = [
            _ZERO_FRAME if frame_len(length, i) == FRAME else b3(bytes(frame_len(length, i)))
            for i in range(frame_count(length))
        ]
        z = b3(b"".join(digests))
        _zero_ids[length] = z
    return z


# ---------------------------------------------------------------- blobs (§5)

_dctx = zstandard.ZstdDecompressor()


def inflate(stored, want, what):
    """Decompress one zstd frame into at most want + 1 bytes: the content
    size in its header is never trusted to size anything."""
    out = bytearray()
    try:
        with _dctx.stream_reader(io.BytesIO(stored), read_across_frames=True) as r:
            while len(out) <= want:
                piece = r.read(want + 1 - len(out))
                if not piece:
                    break
                out += piece
    except zstandard.ZstdError as e:
        raise Damaged(f"{what}: zstd: {e}")
    return bytes(out)


def decode_blob(blob, cid, raw_len, kind, what):
    """The raw bytes of chunk `cid` from its blob, every check of §5 made."""
    if raw_len > kind_limit(kind):
        raise Damaged(f"{what}: raw length {raw_len} exceeds the limit {kind_limit(kind)}")
    n = frame_count(raw_len)
    hlen = header_len(raw_len)
    if len(blob) < hlen or blob[0] != BLOB_VERSION or struct.unpack_from("<H", blob, 1)[0] != n:
        raise Damaged(f"{what}: damaged blob header")
    frames = []
    pos = hlen
    for i in range(n):
        (word,) = struct.unpack_from("<I", blob, 3 + FRAME_REC * i)
        digest = blob[7 + FRAME_REC * i : 3 + FRAME_REC * (i + 1)]
        raw = bool(word & RAW_FLAG)
        slen = word & ~RAW_FLAG & 0xFFFFFFFF
        want = frame_len(raw_len, i)
        if (raw and slen != want) or (not raw and (slen == 0 or slen > want)):
            raise Damaged(f"{what}: frame {i} has an impossible stored length {slen}")
        frames.append((pos, slen, raw, digest, want))
        pos += slen
    if b3(b"".join(f[3] for f in frames)) != cid:
        raise Damaged(f"{what}: blob header does not match the chunk id")
    if pos != len(blob):
        raise Damaged(f"{what}: blob is {len(blob)} bytes, its header says {pos}")
    out = []
    for i, (start, slen, raw, digest, want) in enumerate(frames):
        stored = blob[start : start + slen]
        data = stored if raw else inflate(stored, want, f"{what} frame {i}")
        if len(data) != want or b3(data) != digest:
            raise Damaged(f"{what} frame {i}: content does not match its hash")
        out.append(data)
    return b"".join(out)


# ---------------------------------------------------------------- packs (§6)


class Row:
    __slots__ = ("cid", "kind", "offset", "stored_len", "raw_len", "pack")

    def __init__(self, cid, kind, offset, stored_len, raw_len, pack):
        self.cid, self.kind, self.offset = cid, kind, offset
        self.stored_len, self.raw_len, self.pack = stored_len, raw_len, pack


def parse_pack_tail(name, size, read_at):
    """The checked rows of a pack, from its header, footer and table (§6.1-6.3).
    `read_at(offset, length)` reads the pack's bytes."""
    what = f"pack {name}"
    if size < HEADER_LEN + FOOTER_LEN:
        raise Damaged(f"{what}: truncated ({size} bytes)")
    header = read_at(0, HEADER_LEN)
    if header[:8] != PACK_MAGIC:
        raise Damaged(f"{what}: not a pack (bad magic)")
    if header[8] != PACK_FORMAT_PLAIN:
        raise Damaged(f"{what}: unknown pack format {header[8]} (this reader knows format 1)")
    if header[9:16] != bytes(7):
        raise Damaged(f"{what}: reserved header bytes are not zero")
    footer = read_at(size - FOOTER_LEN, FOOTER_LEN)
    if footer[20:28] != TABLE_MAGIC:
        raise Damaged(f"{what}: footer is missing or damaged")
    table_offset, count = struct.unpack_from("<QI", footer, 0)
    check = footer[12:20]
    if table_offset < HEADER_LEN or table_offset + ROW_LEN * count + FOOTER_LEN != size:
        raise Damaged(
            f"{what}: table ({count} rows at offset {table_offset}) does not fit the pack size {size}"
        )
    table = read_at(table_offset, ROW_LEN * count)
    if b3(table)[:8] != check:
        raise Damaged(f"{what}: table checksum mismatch")
    rows = []
    for i in range(count):
        r = table[ROW_LEN * i : ROW_LEN * (i + 1)]
        cid = r[:32]
        kind = r[32]
        offset, stored_len, raw_len = struct.unpack_from("<QII", r, 33)
        bad = f"{what}: table row for chunk {hx(cid)}"
        if kind not in (KIND_DATA, KIND_TREE, KIND_SNAPSHOT):
            raise Damaged(f"{bad}: unknown chunk kind {kind}")
        if offset < HEADER_LEN or offset + stored_len > table_offset:
            raise Damaged(f"{bad}: blob at {offset} (+{stored_len}) lies outside the blob area")
        if raw_len > kind_limit(kind):
            raise Damaged(f"{bad}: raw length {raw_len} exceeds the limit {kind_limit(kind)}")
        hl = header_len(raw_len)
        if stored_len < hl or stored_len > hl + raw_len:
            raise Damaged(f"{bad}: stored length {stored_len} is impossible for raw length {raw_len}")
        rows.append(Row(cid, kind, offset, stored_len, raw_len, name))
    return rows


class Repo:
    def __init__(self, root):
        self.root = os.fsencode(root)
        self.config = self.read_config()
        self.packs = {}  # pack name (hex) -> (path, size)
        self.rows = {}  # pack name -> [Row]
        self.index = {}  # chunk id -> [Row] (every copy)
        self.problems = []
        self._fds = {}
        self._trees = {}
        self._nodes = {}

    # ---- config (§3)

    def read_config(self):
        path = os.path.join(self.root, b"config")
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except FileNotFoundError:
            raise Usage(f"{show(self.root)} is not a snapfs repository (no config file)")
        except UnicodeDecodeError:
            raise Damaged("config: not UTF-8 text")
        values = {}
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise Damaged(f"config: unreadable line {line!r}")
            k, v = (s.strip() for s in line.split("=", 1))
            if k in values:
                raise Damaged(f"config: {k} given more than once")
            values[k] = v
        if values.get("format") != str(REPO_FORMAT):
            raise Damaged(
                f"config: repository format {values.get('format')!r} is not one this reader knows (1)"
            )
        if values.get("frame", str(FRAME)) != str(FRAME):
            raise Damaged(f"config: frame {values.get('frame')!r} is not {FRAME}")
        return values

    # ---- packs (§2, §6)

    def list_packs(self):
        top = os.path.join(self.root, b"packs")
        found = {}
        for sub in sorted(os.listdir(top)):
            d = os.path.join(top, sub)
            if not os.path.isdir(d) or os.path.islink(d):
                self.note(f"ignoring {show(d)}: not a pack directory")
                continue
            for fname in sorted(os.listdir(d)):
                p = os.path.join(d, fname)
                stem = fname[:-5] if fname.endswith(b".pack") else b""
                ok = (
                    len(stem) == 64
                    and all(c in b"0123456789abcdef" for c in stem)
                    and stem[:2] == sub
                    and stat.S_ISREG(os.lstat(p).st_mode)
                )
                if not ok:
                    self.note(f"ignoring {show(p)}: not a pack file name")
                    continue
                found[stem.decode()] = (p, os.lstat(p).st_size)
        return found

    def read_at(self, name, offset, length):
        fd = self._fds.get(name)
        if fd is None:
            fd = os.open(self.packs[name][0], os.O_RDONLY | os.O_CLOEXEC)
            self._fds[name] = fd
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise Damaged(f"pack {name}: shorter than its table says")
        return data

    def load(self, strict=True):
        """Index every chunk of every pack through the packs' own tables."""
        self.packs = self.list_packs()
        for name, (path, size) in self.packs.items():
            try:
                rows = parse_pack_tail(name, size, lambda o, n, name=name: self.read_at(name, o, n))
            except Damaged as e:
                if strict:
                    raise
                self.problems.append(str(e))
                continue
            self.rows[name] = rows
            for r in rows:
                self.index.setdefault(r.cid, []).append(r)
        return self

    def kind_of(self, cid):
        """A chunk's kind: a metadata kind wins over data (§6.5)."""
        return max(r.kind for r in self.index[cid])

    def note(self, msg):
        sys.stderr.write(f"format_reader: {msg}\n")

    # ---- chunks

    def chunk(self, cid, raw_len=None, what=None):
        """The verified bytes of chunk `cid`, from the first copy that decodes."""
        what = what or f"chunk {hx(cid)}"
        copies = self.index.get(cid)
        if not copies:
            raise Damaged(f"{what}: chunk {hx(cid)} is in no pack")
        errors = []
        for r in copies:
            where = f"chunk {hx(cid)} in pack {r.pack} at offset {r.offset}"
            if raw_len is not None and r.raw_len != raw_len:
                errors.append(f"{where}: raw length {r.raw_len}, {raw_len} expected")
                continue
            try:
                blob = self.read_at(r.pack, r.offset, r.stored_len)
                data = decode_blob(blob, cid, r.raw_len, r.kind, where)
            except Damaged as e:
                errors.append(str(e))
                continue
            if len(copies) > 1 and errors:
                self.note(f"{errors[0]}; another copy was used")
            return data
        raise Damaged(f"{what}: " + "; ".join(errors))

    # ---- trees (§8)

    def tree(self, h, where=b"/"):
        t = self._trees.get(h)
        if t is None:
            what = f"tree {hx(h)} (directory {show(where)})"
            if h in self.index and self.kind_of(h) != KIND_TREE:
                raise Damaged(f"{what}: stored as chunk kind {self.kind_of(h)}, not a tree")
            t = decode_tree(self.chunk(h, what=what), what)
            self._trees[h] = t
        return t

    def nodes(self, root):
        """Entries beneath tree `root`, every directory's claim checked (§8.6),
        depth bounded and cycles refused (§8.8)."""
        stack = [(root, 0, False)]
        busy = set()
        while stack:
            h, depth, done = stack.pop()
            if done:
                total = 0
                for e in self.tree(h):
                    if e.kind == E_DIR:
                        sub = self._nodes[e.subtree]
                        if e.nodes != sub:
                            raise Damaged(
                                f"tree {hx(h)}: directory {show(e.name)} claims {e.nodes} nodes, "
                                f"its tree holds {sub}"
                            )
                        total += 1 + sub
                    else:
                        total += 1
                    if total > MAX_NODES:
                        raise Damaged(f"tree {hx(h)}: node count overflows")
                self._nodes[h] = total
                busy.discard(h)
                continue
            if h in self._nodes:
                continue
            if h in busy:
                raise Damaged(f"tree {hx(h)} contains itself")
            if depth >= MAX_DEPTH:
                raise Damaged(f"tree {hx(h)}: directories nested deeper than {MAX_DEPTH} levels")
            busy.add(h)
            stack.append((h, depth, True))
            for e in self.tree(h):
                if e.kind == E_DIR and e.subtree not in self._nodes:
                    stack.append((e.subtree, depth + 1, False))
        return self._nodes[root]

    def walk(self, root):
        """Every (path, entry, position) of a snapshot, depth first in name
        order (§8.6); the root is position 0 and has no entry."""
        self.nodes(root)
        stack = [(root, b"", 0)]
        while stack:
            h, path, pos = stack.pop()
            subdirs = []
            offset = 0
            for e in self.tree(h, path or b"/"):
                p = path + b"/" + e.name
                epos = pos + 1 + offset
                yield p, e, epos, offset
                if e.kind == E_DIR:
                    subdirs.append((e.subtree, p, epos))
                offset += e.span()
            stack.extend(reversed(subdirs))

    # ---- records and snapshots (§9)

    def records(self):
        """(snapshots, forgotten ids, forget record ids) from the kind-2 chunks."""
        snaps, forgotten, forgets = {}, set(), set()
        for cid in sorted(c for c in self.index if self.kind_of(c) == KIND_SNAPSHOT):
            rec = decode_record(self.chunk(cid), cid)
            if rec["type"] == RECORD_SNAPSHOT:
                snaps[cid] = rec
            else:
                forgets.add(cid)
                forgotten.update(rec["hashes"])
        return snaps, forgotten, forgets

    def snapshots(self):
        snaps, forgotten, _ = self.records()
        live = [s for cid, s in snaps.items() if cid not in forgotten]
        live.sort(key=lambda s: (s["started_ns"], s["name"], s["id"]))
        return live

    def find_snapshot(self, spec):
        live = self.snapshots()
        by_name = [s for s in live if s["name"] == spec]
        if by_name:
            return by_name[0]
        spec_l = spec.lower()
        if len(spec_l) >= 8 and all(c in "0123456789abcdef" for c in spec_l):
            by_id = [s for s in live if hx(s["id"]).startswith(spec_l)]
            if len(by_id) == 1:
                return by_id[0]
            if len(by_id) > 1:
                raise Usage(f"{spec} names more than one snapshot")
        raise Usage(f"no snapshot named {spec!r} in the packs")


# ---------------------------------------------------------------- the metadata encoding (§7)


class Cursor:
    def __init__(self, data, what):
        self.d, self.p, self.what = data, 0, what

    def left(self):
        return len(self.d) - self.p

    def fail(self, why):
        raise Damaged(f"{self.what}: {why}")

    def u8(self):
        if self.p >= len(self.d):
            self.fail("ends early")
        b = self.d[self.p]
        self.p += 1
        return b

    def varint(self):
        v = 0
        for shift in range(0, 64, 7):
            b = self.u8()
            if shift == 63 and b > 1:
                self.fail("varint overflows 64 bits")
            v |= (b & 0x7F) << shift
            if not b & 0x80:
                return v
        self.fail("varint too long")

    def u32(self):
        v = self.varint()
        if v > 0xFFFFFFFF:
            self.fail(f"value {v} does not fit 32 bits")
        return v

    def zigzag(self):
        u = self.varint()
        return (u >> 1) ^ -(u & 1)

    def bytes(self):
        n = self.varint()
        if n > self.left():
            self.fail("ends early")
        s = self.d[self.p : self.p + n]
        self.p += n
        return s

    def hash(self):
        if self.left() < 32:
            self.fail("ends early")
        s = self.d[self.p : self.p + 32]
        self.p += 32
        return s

    def count(self, min_len):
        n = self.varint()
        if n * max(min_len, 1) > self.left():
            self.fail(f"count {n} exceeds the {self.left()} bytes left")
        return n

    def finish(self):
        if self.left():
            self.fail(f"{self.left()} unexpected trailing byte(s)")


def name_problem(name):
    if not name:
        return "is empty"
    if name in (b".", b".."):
        return "is a dot entry"
    if b"/" in name:
        return "contains a slash"
    if b"\0" in name:
        return "contains a NUL byte"
    if len(name) > 255:
        return "is longer than 255 bytes"
    return None


class Entry:
    __slots__ = (
        "name", "kind", "mode", "uid", "gid", "size", "mtime_ns", "ctime_ns", "atime_ns",
        "rdev", "ino", "nlink", "blocks", "link_key", "xattrs_raw", "xattrs", "chunks_raw",
        "chunks", "subtree", "nodes", "target",
    )

    def span(self):
        return 1 + self.nodes if self.kind == E_DIR else 1

    def total(self):
        return sum(n for _, n in self.chunks)


def decode_xattrs(raw, what):
    if not raw:
        return []
    c = Cursor(raw, f"{what}: extended attributes")
    out = []
    for _ in range(c.count(2)):
        k, v = c.bytes(), c.bytes()
        if not k or b"\0" in k:
            c.fail(f"attribute name {show(k)} is invalid")
        out.append((k, v))
    c.finish()
    return out


def decode_chunk_list(raw, what):
    if len(raw) % CHUNK_REC:
        raise Damaged(f"{what}: chunk list has a partial record")
    out = []
    for i in range(0, len(raw), CHUNK_REC):
        cid = raw[i : i + 32]
        (n,) = struct.unpack_from("<I", raw, i + 32)
        if n > MAX_DATA_CHUNK:
            raise Damaged(f"{what}: chunk {hx(cid)} claims {n} bytes, more than any chunk holds")
        out.append((cid, n))
    return out


def decode_tree(data, what):
    c = Cursor(data, what)
    fmt = c.u8()
    if fmt != TREE_FORMAT:
        c.fail(f"unknown tree format {fmt}")
    out = []
    nodes = 0
    for _ in range(c.count(MIN_ENTRY_LEN)):
        e = Entry()
        e.name = c.bytes()
        why = name_problem(e.name)
        if why:
            c.fail(f"entry {show(e.name)} {why}")
        if out and out[-1].name >= e.name:
            c.fail(f"entry {show(e.name)}: names are duplicated or out of order")
        ew = f"{what}, entry {show(e.name)}"
        e.kind = c.u8()
        if e.kind not in KIND_NAMES:
            c.fail(f"entry {show(e.name)}: unknown entry kind {e.kind}")
        e.mode, e.uid, e.gid = c.u32(), c.u32(), c.u32()
        e.size = c.varint()
        e.mtime_ns, e.ctime_ns, e.atime_ns = c.zigzag(), c.zigzag(), c.zigzag()
        e.rdev, e.ino, e.nlink, e.blocks = c.varint(), c.varint(), c.varint(), c.varint()
        e.link_key = c.varint()
        e.xattrs_raw = c.bytes()
        e.xattrs = decode_xattrs(e.xattrs_raw, ew)
        e.chunks_raw, e.chunks, e.subtree, e.nodes, e.target = None, None, None, 0, None
        if e.kind == E_FILE:
            e.chunks_raw = c.bytes()
            e.chunks = decode_chunk_list(e.chunks_raw, ew)
        elif e.kind == E_DIR:
            e.subtree = c.hash()
            e.nodes = c.varint()
        elif e.kind == E_SYMLINK:
            e.target = c.bytes()
        nodes += e.span()
        if nodes > MAX_NODES:
            c.fail(f"entry {show(e.name)}: node count overflows")
        out.append(e)
    c.finish()
    return out


def decode_paths(raw, what):
    c = Cursor(raw, what)
    paths = [c.bytes() for _ in range(c.count(1))]
    c.finish()
    return paths


def decode_record(data, cid):
    c = Cursor(data, f"record {hx(cid)}")
    t = c.u8()
    if t == RECORD_SNAPSHOT:
        rec = {"type": t, "id": cid}
        rec["name"] = c.bytes().decode("utf-8", "replace")
        rec["started_ns"] = c.zigzag()
        rec["finished_ns"] = c.zigzag()
        rec["host"] = c.bytes().decode("utf-8", "replace")
        rec["sources_raw"] = c.bytes()
        rec["sources"] = decode_paths(rec["sources_raw"], f"record {hx(cid)}: sources")
        tags_raw = c.bytes()
        try:
            tags = json.loads(tags_raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            c.fail(f"tags do not decode: {e}")
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            c.fail("tags are not a JSON array of strings")
        rec["tags"] = tags
        rec["root"] = c.hash()
        for k in ("nodes", "files", "dirs", "size", "read_bytes", "warnings"):
            rec[k] = c.varint()
    elif t == RECORD_FORGET:
        rec = {"type": t, "id": cid, "when_ns": c.zigzag()}
        rec["hashes"] = [c.hash() for _ in range(c.count(32))]
    else:
        c.fail(f"unknown record type {t}")
    c.finish()
    return rec


# ---------------------------------------------------------------- list


def cmd_list(repo, args):
    live = repo.snapshots()
    if args.json:
        out = [
            {
                "id": hx(s["id"]),
                "name": s["name"],
                "started_ns": s["started_ns"],
                "finished_ns": s["finished_ns"],
                "host": s["host"],
                "sources": [p.decode("utf-8", "backslashreplace") for p in s["sources"]],
                "tags": s["tags"],
                "root": hx(s["root"]),
                "nodes": s["nodes"],
                "files": s["files"],
                "dirs": s["dirs"],
                "size": s["size"],
            }
            for s in live
        ]
        print(json.dumps(out, indent=1))
    else:
        for s in live:
            print(f"{hx(s['id'])[:16]}  {s['name']}  {s['files']} files  {s['size']} bytes")


# ---------------------------------------------------------------- extract (§10)


def apply_meta(repo, path, e):
    """Attributes, owner, mode, then times; never through a symlink."""
    for k, v in e.xattrs:
        try:
            os.setxattr(path, k, v, follow_symlinks=False)
        except OSError as err:
            repo.note(f"{show(path)}: extended attribute {show(k)} not set: {err}")
    os.chown(path, e.uid, e.gid, follow_symlinks=False)
    if e.kind != E_SYMLINK:
        os.chmod(path, e.mode & 0o7777)
    os.utime(path, ns=(e.atime_ns, e.mtime_ns), follow_symlinks=False)


def write_file(repo, path, e, shown):
    total = e.total()
    if total != e.size:
        raise Damaged(f"{shown}: size {e.size}, but its chunks hold {total} bytes")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        pos = 0
        for i, (cid, n) in enumerate(e.chunks):
            what = f"{shown}: chunk {i} ({hx(cid)})"
            if cid == zero_id(n):
                # Zeros: a hole, once the chunk is known to be in a pack.
                if not any(r.raw_len == n for r in repo.index.get(cid, [])):
                    raise Damaged(f"{what} is in no pack")
            else:
                data = memoryview(repo.chunk(cid, n, what))
                while data:
                    w = os.pwrite(fd, data, pos)
                    data = data[w:]
                    pos += w
                continue
            pos += n
        os.ftruncate(fd, total)
    finally:
        os.close(fd)


def cmd_extract(repo, args):
    snap = repo.find_snapshot(args.snapshot)
    target = os.fsencode(args.target)
    os.makedirs(target, exist_ok=True)
    if os.listdir(target):
        raise Usage(f"{args.target} is not empty")
    links = {}
    dirs = []
    for rel, e, _pos, _off in repo.walk(snap["root"]):
        path = target + rel
        shown = f"snapshot {snap['name']}: {show(rel)}"
        if e.link_key and e.kind != E_DIR:
            first = links.get(e.link_key)
            if first is not None:
                if first[1] != e.kind:
                    raise Damaged(f"{shown}: hard link group mixes kinds")
                os.link(first[0], path, follow_symlinks=False)
                continue
            links[e.link_key] = (path, e.kind)
        if e.kind == E_DIR:
            os.mkdir(path, 0o700)
            dirs.append((path, e))
            continue
        if e.kind == E_FILE:
            write_file(repo, path, e, shown)
        elif e.kind == E_SYMLINK:
            if b"\0" in e.target or not e.target:
                raise Damaged(f"{shown}: symlink target is empty or holds NUL")
            os.symlink(e.target, path)
        else:
            kind_bits = {E_FIFO: stat.S_IFIFO, E_CHR: stat.S_IFCHR, E_BLK: stat.S_IFBLK}[e.kind]
            os.mknod(path, kind_bits | 0o600, e.rdev if e.kind != E_FIFO else 0)
        apply_meta(repo, path, e)
    # Children first: their creation changed their directory's mtime, and a
    # read-only directory could not have received them.
    for path, e in reversed(dirs):
        apply_meta(repo, path, e)
    print(f"extracted snapshot {snap['name']} ({hx(snap['id'])}) into {args.target}")


# ---------------------------------------------------------------- verify


def cmd_verify(repo, args):
    problems = list(repo.problems)
    counts = {"packs": 0, "chunks": 0, "bytes": 0}
    for name, (path, size) in sorted(repo.packs.items()):
        if name not in repo.rows:
            continue
        counts["packs"] += 1
        counts["bytes"] += size
        with open(path, "rb") as f:
            whole = f.read()
        if b3(whole) != bytes.fromhex(name):
            problems.append(f"pack {name}: its bytes do not hash to its name")
        for r in repo.rows[name]:
            counts["chunks"] += 1
            where = f"chunk {hx(r.cid)} in pack {name} at offset {r.offset}"
            try:
                data = decode_blob(whole[r.offset : r.offset + r.stored_len], r.cid, r.raw_len, r.kind, where)
                if r.kind == KIND_TREE:
                    decode_tree(data, where)
                elif r.kind == KIND_SNAPSHOT:
                    decode_record(data, r.cid)
            except Damaged as e:
                problems.append(str(e))
    live = []
    try:
        live = repo.snapshots()
    except Damaged as e:
        problems.append(str(e))
    for s in live:
        try:
            for rel, e, _pos, _off in repo.walk(s["root"]):
                if e.kind != E_FILE:
                    continue
                if e.total() != e.size:
                    problems.append(f"snapshot {s['name']}: {show(rel)}: size {e.size}, chunks hold {e.total()}")
                for cid, n in e.chunks:
                    if not any(r.raw_len == n for r in repo.index.get(cid, [])):
                        problems.append(
                            f"snapshot {s['name']}: {show(rel)}: chunk {hx(cid)} ({n} bytes) is in no pack"
                        )
        except Damaged as e:
            problems.append(f"snapshot {s['name']}: {e}")
    for p in problems:
        sys.stderr.write(f"format_reader: {p}\n")
    print(
        f"{counts['packs']} packs, {counts['chunks']} chunks, {counts['bytes']} bytes, "
        f"{len(live)} snapshots: {'damaged' if problems else 'ok'}"
    )
    if problems:
        raise Damaged(f"{len(problems)} problem(s) found")


# ---------------------------------------------------------------- check-catalog (§11)


def i64(v):
    """A u64 as SQLite stores it: its two's-complement i64."""
    return v - (1 << 64) if v >= 1 << 63 else v


def cmd_check_catalog(repo, args):
    path = os.path.join(repo.root, b"catalog.db")
    if not os.path.exists(path):
        raise Usage("the repository has no catalog.db")
    db = sqlite3.connect(f"file:{os.fsdecode(path)}?mode=ro", uri=True)
    problems = []

    def bad(msg):
        problems.append(msg)

    (version,) = db.execute("PRAGMA user_version").fetchone()
    if version != CATALOG_VERSION:
        raise Damaged(f"catalog schema version {version} is not {CATALOG_VERSION}")

    # packs: every row is a pack file of that size.
    pack_ids = {}
    for pid, name, size in db.execute("SELECT id, name, size FROM packs"):
        n = hx(name)
        pack_ids[pid] = n
        if n not in repo.packs:
            bad(f"packs: {n} is not in packs/")
        elif repo.packs[n][1] != size:
            bad(f"packs: {n} is {repo.packs[n][1]} bytes, the catalog says {size}")
    doomed = {hx(n) for (n,) in db.execute("SELECT name FROM doomed_packs")}
    for n in repo.packs:
        if n not in pack_ids.values() and n not in doomed:
            repo.note(f"pack {n} is in no catalog row (left by an interrupted command?)")

    # chunks: every row is a row of its pack's own table.
    nchunks = 0
    for cid, pid, off, slen, rlen, kind in db.execute(
        "SELECT id, pack, offset, stored_len, raw_len, kind FROM chunks"
    ):
        nchunks += 1
        copies = repo.index.get(cid, [])
        here = [r for r in copies if r.pack == pack_ids.get(pid)]
        if not here:
            bad(f"chunks: {hx(cid)} is not in the table of pack {pack_ids.get(pid)}")
            continue
        r = here[0]
        if (r.offset, r.stored_len, r.raw_len) != (off, slen, rlen):
            bad(f"chunks: {hx(cid)}: catalog ({off}, {slen}, {rlen}) != pack ({r.offset}, {r.stored_len}, {r.raw_len})")
        if kind != repo.kind_of(cid):
            bad(f"chunks: {hx(cid)}: kind {kind}, the packs say {repo.kind_of(cid)}")

    # snapshots: exactly the live records, field by field.
    snaps, _forgotten, forgets = repo.records()
    live = {s["id"]: s for s in repo.snapshots()}
    rows = db.execute(
        "SELECT s.id, s.hash, s.name, s.started_ns, s.finished_ns, s.host, s.sources, s.tags, "
        "t.hash, s.files, s.dirs, s.size, s.read_bytes, s.warnings "
        "FROM snapshots s LEFT JOIN trees t ON t.id = s.root_tree"
    ).fetchall()
    seen = set()
    for sid, h, name, st, fin, host, sources, tags, root, files, dirs, size, rb, warn in rows:
        seen.add(h)
        rec = live.get(h)
        if rec is None:
            bad(f"snapshots: {name} ({hx(h)}) has no live record in the packs")
            continue
        got = (name, st, fin, host, sources, json.loads(tags), root, files, dirs, size, rb, warn)
        want = (
            rec["name"], rec["started_ns"], rec["finished_ns"], rec["host"], rec["sources_raw"],
            rec["tags"], rec["root"], rec["files"], rec["dirs"], rec["size"], rec["read_bytes"],
            rec["warnings"],
        )
        if got != want:
            bad(f"snapshots: {name}: catalog {got!r} != record {want!r}")
        check_snapshot_rows(repo, db, sid, rec, bad)
    for h, rec in live.items():
        if h not in seen:
            bad(f"snapshots: the record of {rec['name']} ({hx(h)}) is not in the catalog")

    # tombstones: exactly the forget records.
    tomb = {t for (t,) in db.execute("SELECT chunk FROM tombstones")}
    if tomb != forgets:
        bad(f"tombstones: {sorted(map(hx, tomb))} != forget records {sorted(map(hx, forgets))}")

    for p in problems:
        sys.stderr.write(f"format_reader: catalog: {p}\n")
    print(
        f"catalog: {len(pack_ids)} packs, {nchunks} chunks, {len(rows)} snapshots, "
        f"{len(tomb)} tombstones: {'differs from the packs' if problems else 'agrees with the packs'}"
    )
    if problems:
        raise Damaged(f"the catalog disagrees with the packs in {len(problems)} place(s)")


def check_snapshot_rows(repo, db, sid, rec, bad):
    """Every tree, entry and content row of one snapshot, and its hard link
    groups, against what its trees in the packs say."""
    name = rec["name"]
    tree_ids = {}
    groups = {}
    checked = set()

    def tree_row(h):
        if h not in tree_ids:
            row = db.execute("SELECT id, nodes FROM trees WHERE hash = ?", (h,)).fetchone()
            if row is None:
                bad(f"trees: {hx(h)} (snapshot {name}) is missing")
                tree_ids[h] = None
                return None
            if row[1] != repo.nodes(h):
                bad(f"trees: {hx(h)}: nodes {row[1]}, its tree holds {repo.nodes(h)}")
            tree_ids[h] = row[0]
        return tree_ids[h]

    tree_row(rec["root"])
    parents = {b"": rec["root"]}
    for rel, e, pos, off in repo.walk(rec["root"]):
        if e.link_key and e.kind != E_DIR:
            g = groups.setdefault(e.link_key, [pos, 0])
            g[0] = min(g[0], pos)
            g[1] += 1
        parent_h = parents[rel.rsplit(b"/", 1)[0]]
        if e.kind == E_DIR:
            parents[rel] = e.subtree
            tree_row(e.subtree)
        key = (parent_h, e.name)
        if key in checked:
            continue
        checked.add(key)
        tid = tree_ids.get(parent_h)
        if tid is None:
            continue
        row = db.execute(
            "SELECT kind, mode, uid, gid, size, mtime_ns, ctime_ns, atime_ns, rdev, ino, nlink, "
            "blocks, link_key, xattrs, target, content, subtree, node_offset "
            "FROM entries WHERE tree = ? AND name = ?",
            (tid, e.name),
        ).fetchone()
        shown = f"entries: snapshot {name}: {show(rel)}"
        if row is None:
            bad(f"{shown} is missing")
            continue
        want = (
            e.kind, e.mode, e.uid, e.gid, i64(e.size), e.mtime_ns, e.ctime_ns, e.atime_ns,
            i64(e.rdev), i64(e.ino), i64(e.nlink), i64(e.blocks), i64(e.link_key), e.xattrs_raw,
            e.target, off,
        )
        got = row[:15] + (row[17],)
        if got != want:
            bad(f"{shown}: catalog {got!r} != tree {want!r}")
        content, subtree = row[15], row[16]
        if e.kind == E_FILE:
            c = db.execute("SELECT hash, size, chunks FROM contents WHERE id = ?", (content,)).fetchone()
            if c is None or c != (b3(e.chunks_raw), e.total(), e.chunks_raw):
                bad(f"{shown}: content row {content} does not hold its chunk list")
        elif content is not None:
            bad(f"{shown}: a {KIND_NAMES[e.kind]} with a content row")
        if e.kind == E_DIR:
            t = db.execute("SELECT hash FROM trees WHERE id = ?", (subtree,)).fetchone()
            if t is None or t[0] != e.subtree:
                bad(f"{shown}: subtree row {subtree} is not tree {hx(e.subtree)}")
        elif subtree is not None:
            bad(f"{shown}: a {KIND_NAMES[e.kind]} with a subtree row")
    for h, tid in tree_ids.items():
        if tid is None:
            continue
        (n,) = db.execute("SELECT COUNT(*) FROM entries WHERE tree = ?", (tid,)).fetchone()
        if n != len(repo.tree(h)):
            bad(f"entries: tree {hx(h)} has {n} rows, {len(repo.tree(h))} entries")
    want_links = {(i64(k), first, count) for k, (first, count) in groups.items() if count > 1}
    got_links = set(db.execute("SELECT link_key, first_node, count FROM hardlinks WHERE snapshot = ?", (sid,)))
    if got_links != want_links:
        bad(f"hardlinks: snapshot {name}: catalog {sorted(got_links)} != trees {sorted(want_links)}")


# ---------------------------------------------------------------- main


def main(argv):
    ap = argparse.ArgumentParser(prog="format_reader.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("repo")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the snapshots the packs hold")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("extract", help="extract one snapshot into an empty directory")
    p.add_argument("snapshot")
    p.add_argument("target")
    sub.add_parser("verify", help="check every pack, chunk, tree and record")
    sub.add_parser("check-catalog", help="cross-check catalog.db against the packs")
    args = ap.parse_args(argv)
    try:
        repo = Repo(args.repo).load(strict=args.command != "verify")
        {
            "list": cmd_list,
            "extract": cmd_extract,
            "verify": cmd_verify,
            "check-catalog": cmd_check_catalog,
        }[args.command](repo, args)
    except Damaged as e:
        sys.stderr.write(f"format_reader: damaged repository: {e}\n")
        return 1
    except Usage as e:
        sys.stderr.write(f"format_reader: {e}\n")
        return 2
    except OSError as e:
        sys.stderr.write(f"format_reader: {e}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
