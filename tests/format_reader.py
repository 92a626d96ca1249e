#!/usr/bin/env python3
"""An independent reader of snapfs repositories, written from docs/FORMAT.md.

It knows nothing of snapfs but that document: it finds every chunk through
the packs' own tables, lists snapshots from the snapshot and forget records
in the packs, reads directories from their pages, extracts a snapshot with
its metadata, verifies every chunk it reads against its BLAKE3 id,
cross-checks the catalog (catalog.db) against the packs, and checks that
directory pages end where the document says a writer ends them. Section
numbers (§) refer to docs/FORMAT.md.

Usage:
    format_reader.py [--password-file FILE] REPO list [--json]
    format_reader.py REPO extract [--numeric-owner] SNAPSHOT TARGET
    format_reader.py REPO verify
    format_reader.py REPO check-catalog
    format_reader.py REPO check-pages

SNAPSHOT is a snapshot's name or its id (64 hex digits, or a unique prefix of
at least 8). TARGET must be a new or empty directory.

An encrypted repository (§15) is read with its passphrase from
--password-file FILE; its catalog is not in the repository, so check-catalog
does not apply to it.

Needs Python 3.8+ and the `blake3` and `zstandard` modules, and for
encrypted repositories `pynacl` (XChaCha20-Poly1305) and `argon2-cffi`. Exit status: 0 on
success, 1 when the repository is damaged or something cannot be done (the
message says what, naming the pack, chunk or path), 2 on a usage error.
"""

import argparse
import grp
import io
import json
import os
import pwd
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
REPO_FORMAT = 2
PACK_MAGIC = b"SNAPFSPK"
TABLE_MAGIC = b"SNAPFSTB"
PACK_FORMAT_PLAIN = 1
HEADER_LEN = 16
FOOTER_LEN = 28
ROW_LEN = 49
BLOB_VERSION = 1
FRAME_REC = 36
RAW_FLAG = 1 << 31
KIND_DATA, KIND_PAGE, KIND_RECORD, KIND_LIST = 0, 1, 2, 3
CHUNK_KINDS = (KIND_DATA, KIND_PAGE, KIND_RECORD, KIND_LIST)
MAX_DATA_CHUNK = 16777216
MAX_META_CHUNK = 1 << 30
PAGE_FORMAT = 2
MAX_LEVEL = 12
MIN_TRIPLE_LEN = 3
MIN_ENTRY_LEN = 10
MIN_CHILD_LEN = 37
MAX_NODES = 1 << 48
MAX_DEPTH = 2500
NANOS = 1_000_000_000
RECORD_SNAPSHOT, RECORD_FORGET = 1, 2
CHUNK_REC = 36
CATALOG_VERSION = 2
MAX_OWNER_NAME = 255

# Entry flags (§8.3).
F_XATTRS, F_LINK, F_CTIME, F_ATIME, F_NLINK, F_RDEV = 1, 2, 4, 8, 16, 32
F_ALL = 63

# File content tags (§8.6).
TAG_EMPTY, TAG_CHUNK, TAG_LIST = 0, 1, 2

# Kinds, from a mode's type bits (§8.2).
E_FILE, E_DIR, E_SYMLINK, E_FIFO, E_CHR, E_BLK = 1, 2, 3, 4, 5, 6
KIND_OF_TYPE = {
    0o100000: E_FILE,
    0o040000: E_DIR,
    0o120000: E_SYMLINK,
    0o010000: E_FIFO,
    0o020000: E_CHR,
    0o060000: E_BLK,
}

# Where pages end (§8.11).
BOUNDARY_CONTEXT = "snapfs 2026 directory page boundaries"
LEAF_CUT_MASK = 63
LEAF_MAX_ENTRIES = 256
LEAF_MAX_WEIGHT = 32768
INDEX_CUT_MASK = 31
INDEX_MAX_CHILDREN = 128

MASK64 = (1 << 64) - 1

# Encrypted repositories (§15).
PACK_FORMAT_SEALED = 2
SEALED_VERSION = 2
SEALED_REC = 4
SEAL_OVERHEAD = 40
SLOT_AAD = b"snapfs key slot v1"


class Keys:
    """The keys of an encrypted repository, derived from its master key."""

    def __init__(self, master):
        derive = lambda ctx: blake3.blake3(master, derive_key_context=ctx).digest()
        self.id = derive("snapfs 2 chunk id")
        self.blob = derive("snapfs 2 blob seal")
        self.table = derive("snapfs 2 pack table seal")
        self.page = derive("snapfs 2 page boundary")


# Set when the repository is encrypted; everything below then reads sealed
# blobs and tables, and computes ids and boundaries with keyed BLAKE3.
KEYS = None


def b3(data):
    return blake3.blake3(data).digest()


def b3_id(data):
    """§4 and §15.2: the hash of chunk ids and frame digests."""
    if KEYS is None:
        return b3(data)
    return blake3.blake3(data, key=KEYS.id).digest()


def open_sealed(key, aad, sealed, what):
    """nonce[24] ‖ ciphertext ‖ tag[16] under XChaCha20-Poly1305 (§15)."""
    import nacl.bindings
    import nacl.exceptions

    if len(sealed) < SEAL_OVERHEAD:
        raise Damaged(f"{what}: sealed object shorter than its nonce and tag")
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            bytes(sealed[24:]), bytes(aad), bytes(sealed[:24]), key
        )
    except nacl.exceptions.CryptoError:
        raise Damaged(f"{what}: does not authenticate (damaged, or not sealed under this key)")


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


def chunk_id(data):
    """§4: BLAKE3 of the concatenated BLAKE3 digests of the frames (keyed
    BLAKE3 in an encrypted repository, §15.2)."""
    frames = [data[i : i + FRAME] for i in range(0, len(data), FRAME)] or [b""]
    return b3_id(b"".join(b3_id(f) for f in frames))


def i64(v):
    """A 64-bit pattern read as signed (two's complement)."""
    v &= MASK64
    return v - (1 << 64) if v >= 1 << 63 else v


# ---------------------------------------------------------------- chunks of zeros (§4.1)

_zero_ids = {}


def zero_id(length):
    """The id of a chunk of `length` zero bytes, from its frame structure."""
    z = _zero_ids.get(length)
    if z is None:
        digests = [b3_id(bytes(frame_len(length, i))) for i in range(frame_count(length))]
        z = b3_id(b"".join(digests))
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


def decode_sealed_blob(blob, cid, raw_len, what):
    """§15.2: a sealed blob's raw bytes; each frame opened in its place."""
    n = frame_count(raw_len)
    hlen = 3 + SEALED_REC * n
    if len(blob) < hlen or blob[0] != SEALED_VERSION or struct.unpack_from("<H", blob, 1)[0] != n:
        raise Damaged(f"{what}: damaged sealed blob header")
    out = []
    pos = hlen
    for i in range(n):
        (word,) = struct.unpack_from("<I", blob, 3 + SEALED_REC * i)
        raw = bool(word & RAW_FLAG)
        slen = word & ~RAW_FLAG & 0xFFFFFFFF
        want = frame_len(raw_len, i)
        plen = slen - SEAL_OVERHEAD
        if plen < 0 or (raw and plen != want) or (not raw and (plen == 0 or plen > want)):
            raise Damaged(f"{what}: frame {i} has an impossible sealed length {slen}")
        if pos + slen > len(blob):
            raise Damaged(f"{what}: frame {i} runs past the blob")
        aad = b"snapfs frame" + cid + struct.pack("<QII", raw_len, i, word)
        payload = open_sealed(KEYS.blob, aad, blob[pos : pos + slen], f"{what} frame {i}")
        data = payload if raw else inflate(payload, want, f"{what} frame {i}")
        if len(data) != want:
            raise Damaged(f"{what} frame {i}: {len(data)} bytes, not {want}")
        out.append(data)
        pos += slen
    if pos != len(blob):
        raise Damaged(f"{what}: blob is {len(blob)} bytes, its header says {pos}")
    data = b"".join(out)
    if chunk_id(data) != cid:
        raise Damaged(f"{what}: content is not what its id names")
    return data


def decode_blob(blob, cid, raw_len, kind, what):
    """The raw bytes of chunk `cid` from its blob, every check of §5 made."""
    if raw_len > kind_limit(kind):
        raise Damaged(f"{what}: raw length {raw_len} exceeds the limit {kind_limit(kind)}")
    if KEYS is not None:
        return decode_sealed_blob(blob, cid, raw_len, what)
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
    if b3_id(b"".join(f[3] for f in frames)) != cid:
        raise Damaged(f"{what}: blob header does not match the chunk id")
    if pos != len(blob):
        raise Damaged(f"{what}: blob is {len(blob)} bytes, its header says {pos}")
    out = []
    for i, (start, slen, raw, digest, want) in enumerate(frames):
        stored = blob[start : start + slen]
        data = stored if raw else inflate(stored, want, f"{what} frame {i}")
        if len(data) != want or b3_id(data) != digest:
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
    fmt = PACK_FORMAT_PLAIN if KEYS is None else PACK_FORMAT_SEALED
    if header[8] != fmt:
        raise Damaged(f"{what}: pack format {header[8]}, not {fmt} as this repository's packs are")
    if header[9] > 22:
        raise Damaged(f"{what}: compression level byte {header[9]} is above 22")
    if header[10:16] != bytes(6):
        raise Damaged(f"{what}: reserved header bytes are not zero")
    footer = read_at(size - FOOTER_LEN, FOOTER_LEN)
    if footer[20:28] != TABLE_MAGIC:
        raise Damaged(f"{what}: footer is missing or damaged")
    table_offset, count = struct.unpack_from("<QI", footer, 0)
    check = footer[12:20]
    table_len = ROW_LEN * count + (0 if KEYS is None else SEAL_OVERHEAD)
    if table_offset < HEADER_LEN or table_offset + table_len + FOOTER_LEN != size:
        raise Damaged(
            f"{what}: table ({count} rows at offset {table_offset}) does not fit the pack size {size}"
        )
    table = read_at(table_offset, table_len)
    if b3(table)[:8] != check:
        raise Damaged(f"{what}: table checksum mismatch")
    if KEYS is not None:
        aad = b"snapfs pack table" + struct.pack("<I", count)
        table = open_sealed(KEYS.table, aad, table, f"{what}: table")
    per_frame = 36 if KEYS is None else SEALED_REC + SEAL_OVERHEAD
    rows = []
    for i in range(count):
        r = table[ROW_LEN * i : ROW_LEN * (i + 1)]
        cid = r[:32]
        kind = r[32]
        offset, stored_len, raw_len = struct.unpack_from("<QII", r, 33)
        bad = f"{what}: table row for chunk {hx(cid)}"
        if kind not in CHUNK_KINDS:
            raise Damaged(f"{bad}: unknown chunk kind {kind}")
        if offset < HEADER_LEN or offset + stored_len > table_offset:
            raise Damaged(f"{bad}: blob at {offset} (+{stored_len}) lies outside the blob area")
        if raw_len > kind_limit(kind):
            raise Damaged(f"{bad}: raw length {raw_len} exceeds the limit {kind_limit(kind)}")
        hl = 3 + per_frame * frame_count(raw_len)
        if stored_len < hl or stored_len > hl + raw_len:
            raise Damaged(f"{bad}: stored length {stored_len} is impossible for raw length {raw_len}")
        rows.append(Row(cid, kind, offset, stored_len, raw_len, name))
    return rows


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
    """Why `name` cannot be an entry name (§8.4), or None."""
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


def take_name(c, prev):
    """A prefix-compressed name (§8.4): `shared` bytes of `prev`, then a suffix;
    valid, and after `prev` when there is one."""
    base = prev if prev is not None else b""
    shared = c.varint()
    if shared > len(base):
        c.fail(f"a name shares {shared} bytes with the {len(base)}-byte name before it")
    name = base[:shared] + c.bytes()
    why = name_problem(name)
    if why:
        c.fail(f"name {show(name)} {why}")
    if prev is not None and name <= prev:
        c.fail(f"name {show(name)}: names are duplicated or out of order")
    return name


def take_time(c, ref):
    """A time stored against reference seconds `ref` (§8.5): (secs, nanos)."""
    secs = i64(ref + c.zigzag())
    nanos = c.u32()
    if nanos >= NANOS:
        c.fail(f"{nanos} nanoseconds is not within a second")
    return secs, nanos


def decode_xattrs(raw, what):
    """§8.8: a count, then (name, value) pairs, nothing after."""
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
    """§8.7: 36 bytes per chunk, (id, u32 raw length)."""
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


# ---------------------------------------------------------------- pages (§8)


class Entry:
    """One directory entry, with every field of §8.3."""

    __slots__ = (
        "name", "kind", "mode", "uid", "gid", "size", "mtime", "ctime", "atime",
        "ino", "nlink", "blocks", "link_key", "rdev", "xattrs", "tag", "ref",
        "subdir", "nodes", "target",
    )

    def span(self):
        return 1 + self.nodes if self.kind == E_DIR else 1


class Leaf:
    __slots__ = ("entries", "nodes")
    level = 0

    def __init__(self, entries, nodes):
        self.entries, self.nodes = entries, nodes

    def first_name(self):
        return self.entries[0].name if self.entries else None

    def count(self):
        return len(self.entries)


class Child:
    __slots__ = ("first_name", "page", "entries", "nodes")


class Index:
    __slots__ = ("level", "children", "entries", "nodes")

    def __init__(self, level, children, entries, nodes):
        self.level, self.children, self.entries, self.nodes = level, children, entries, nodes

    def first_name(self):
        return self.children[0].first_name

    def count(self):
        return self.entries


def decode_page(data, what):
    """One page, checked as far as a page alone can be (§8.2-§8.9)."""
    c = Cursor(data, what)
    fmt = c.u8()
    if fmt != PAGE_FORMAT:
        c.fail(f"unknown page format {fmt}")
    level = c.u8()
    if level > MAX_LEVEL:
        c.fail(f"page level {level} is above {MAX_LEVEL}")
    page = decode_leaf(c) if level == 0 else decode_index(c, level)
    c.finish()
    return page


def decode_leaf(c):
    palette = []
    for _ in range(c.count(MIN_TRIPLE_LEN)):
        mode, uid, gid = c.u32(), c.u32(), c.u32()
        kind = KIND_OF_TYPE.get(mode & 0o170000)
        if kind is None:
            c.fail(f"palette mode {mode:o} is of no kind a repository keeps")
        palette.append((kind, mode, uid, gid))
    n = c.count(MIN_ENTRY_LEN)
    base = c.zigzag()
    entries = []
    nodes = 0
    prev_ino = 0
    for _ in range(n):
        e = Entry()
        flags = c.u8()
        if flags & ~F_ALL:
            c.fail(f"unknown entry flags {flags:#x}")
        e.name = take_name(c, entries[-1].name if entries else None)
        bad = lambda why, e=e: c.fail(f"entry {show(e.name)}: {why}")
        i = c.varint()
        if i >= len(palette):
            bad(f"triple {i} is not in the palette of {len(palette)}")
        e.kind, e.mode, e.uid, e.gid = palette[i]
        e.size = c.varint()
        e.mtime = take_time(c, base)
        e.ctime = take_time(c, e.mtime[0]) if flags & F_CTIME else e.mtime
        e.atime = take_time(c, e.mtime[0]) if flags & F_ATIME else e.mtime
        e.ino = (prev_ino + c.zigzag()) & MASK64
        prev_ino = e.ino
        e.nlink = c.varint() if flags & F_NLINK else 1
        e.blocks = c.varint()
        e.link_key = c.varint() if flags & F_LINK else 0
        e.rdev = c.varint() if flags & F_RDEV else 0
        e.xattrs = decode_xattrs(c.bytes(), f"{c.what}, entry {show(e.name)}") if flags & F_XATTRS else []
        e.tag, e.ref, e.subdir, e.nodes, e.target = None, None, None, 0, None
        if e.kind == E_FILE:
            e.tag = c.u8()
            if e.tag == TAG_EMPTY:
                if e.size != 0:
                    bad(f"a file of {e.size} bytes has no content")
            elif e.tag == TAG_CHUNK:
                if not 0 < e.size <= MAX_DATA_CHUNK:
                    bad(f"a file of {e.size} bytes cannot be one chunk")
                e.ref = c.hash()
            elif e.tag == TAG_LIST:
                e.ref = c.hash()
            else:
                bad(f"unknown file content tag {e.tag}")
        elif e.kind == E_DIR:
            e.subdir = c.hash()
            e.nodes = c.varint()
        elif e.kind == E_SYMLINK:
            e.target = c.bytes()
        nodes += e.span()
        if nodes > MAX_NODES:
            bad("node count overflows")
        entries.append(e)
    return Leaf(entries, nodes)


def decode_index(c, level):
    n = c.count(MIN_CHILD_LEN)
    if n == 0:
        c.fail("index page without children")
    children = []
    entries = nodes = 0
    for _ in range(n):
        ch = Child()
        ch.first_name = take_name(c, children[-1].first_name if children else None)
        ch.page = c.hash()
        ch.entries, ch.nodes = c.varint(), c.varint()
        if ch.entries == 0 or ch.nodes < ch.entries:
            c.fail(f"child {hx(ch.page)} claims {ch.entries} entries and {ch.nodes} nodes")
        entries += ch.entries
        nodes += ch.nodes
        if entries > MAX_NODES or nodes > MAX_NODES:
            c.fail("entry or node count overflows")
        children.append(ch)
    return Index(level, children, entries, nodes)


class Directory:
    """A directory read whole from its pages (§8.10)."""

    __slots__ = ("hash", "pages", "entries", "nodes")

    def __init__(self, h, pages, entries, nodes):
        self.hash, self.pages, self.entries, self.nodes = h, pages, entries, nodes


# ---------------------------------------------------------------- writing pages (§8.11)
# Used only to check that snapfs's pages end where the document says; a
# reader needs none of this.


class Writer:
    def __init__(self):
        self.b = bytearray()

    def u8(self, v):
        self.b.append(v)

    def varint(self, v):
        while True:
            byte = v & 0x7F
            v >>= 7
            if v:
                self.b.append(byte | 0x80)
            else:
                self.b.append(byte)
                return

    def zigzag(self, v):
        v = i64(v)
        self.varint(((v << 1) ^ (v >> 63)) & MASK64)

    def bytes(self, s):
        self.varint(len(s))
        self.b += s

    def name(self, prev, name):
        shared = 0
        while shared < min(len(prev), len(name)) and prev[shared] == name[shared]:
            shared += 1
        self.varint(shared)
        self.bytes(name[shared:])


def encode_xattrs(pairs):
    if not pairs:
        return b""
    w = Writer()
    w.varint(len(pairs))
    for k, v in pairs:
        w.bytes(k)
        w.bytes(v)
    return bytes(w.b)


def encode_leaf(entries):
    w = Writer()
    w.u8(PAGE_FORMAT)
    w.u8(0)
    palette = []
    for e in entries:
        if (e.mode, e.uid, e.gid) not in palette:
            palette.append((e.mode, e.uid, e.gid))
    w.varint(len(palette))
    for t in palette:
        for v in t:
            w.varint(v)
    w.varint(len(entries))
    base = entries[0].mtime[0] if entries else 0
    w.zigzag(base)
    prev, prev_ino = b"", 0
    for e in entries:
        flags = (
            (F_XATTRS if e.xattrs else 0)
            | (F_LINK if e.link_key else 0)
            | (F_CTIME if e.ctime != e.mtime else 0)
            | (F_ATIME if e.atime != e.mtime else 0)
            | (F_NLINK if e.nlink != 1 else 0)
            | (F_RDEV if e.rdev else 0)
        )
        w.u8(flags)
        w.name(prev, e.name)
        prev = e.name
        w.varint(palette.index((e.mode, e.uid, e.gid)))
        w.varint(e.size)
        w.zigzag(e.mtime[0] - base)
        w.varint(e.mtime[1])
        for flag, t in ((F_CTIME, e.ctime), (F_ATIME, e.atime)):
            if flags & flag:
                w.zigzag(t[0] - e.mtime[0])
                w.varint(t[1])
        w.zigzag(e.ino - prev_ino)
        prev_ino = e.ino
        if flags & F_NLINK:
            w.varint(e.nlink)
        w.varint(e.blocks)
        if flags & F_LINK:
            w.varint(e.link_key)
        if flags & F_RDEV:
            w.varint(e.rdev)
        if flags & F_XATTRS:
            w.bytes(encode_xattrs(e.xattrs))
        if e.kind == E_FILE:
            w.u8(e.tag)
            if e.tag != TAG_EMPTY:
                w.b += e.ref
        elif e.kind == E_DIR:
            w.b += e.subdir
            w.varint(e.nodes)
        elif e.kind == E_SYMLINK:
            w.bytes(e.target)
    return bytes(w.b)


def encode_index(level, children):
    w = Writer()
    w.u8(PAGE_FORMAT)
    w.u8(level)
    w.varint(len(children))
    prev = b""
    for ch in children:
        w.name(prev, ch.first_name)
        prev = ch.first_name
        w.b += ch.page
        w.varint(ch.entries)
        w.varint(ch.nodes)
    return bytes(w.b)


def boundary_key():
    if KEYS is not None:
        return KEYS.page
    return blake3.blake3(b"", derive_key_context=BOUNDARY_CONTEXT).digest()


def canonical_pages(entries, key):
    """The pages a writer makes of `entries` (§8.11): [(hash, bytes)], root last."""
    pages = []
    refs = []
    leaf, weight = [], 0

    def close(page_bytes, first, count, nodes):
        h = chunk_id(page_bytes)
        pages.append((h, page_bytes))
        ch = Child()
        ch.first_name, ch.page, ch.entries, ch.nodes = first, h, count, nodes
        return ch

    for i, e in enumerate(entries):
        weight += 64 + len(e.name) + sum(len(k) + len(v) for k, v in e.xattrs)
        if e.kind == E_SYMLINK:
            weight += len(e.target)
        leaf.append(e)
        cut = blake3.blake3(e.name, key=key).digest()[0] & LEAF_CUT_MASK == 0
        if cut or len(leaf) >= LEAF_MAX_ENTRIES or weight >= LEAF_MAX_WEIGHT or i + 1 == len(entries):
            refs.append(close(encode_leaf(leaf), leaf[0].name, len(leaf), sum(x.span() for x in leaf)))
            leaf, weight = [], 0
    if not refs:
        close(encode_leaf([]), None, 0, 0)
        return pages
    level = 0
    while len(refs) > 1:
        level += 1
        above, group = [], []
        # When nearly every child's hash would end a page, the level would
        # not shrink: then only the 128-child limit ends pages.
        by_hash = sum(1 for ch in refs if ch.page[0] & INDEX_CUT_MASK == 0) < len(refs) - 1
        for i, ch in enumerate(refs):
            group.append(ch)
            if (by_hash and ch.page[0] & INDEX_CUT_MASK == 0) or len(group) >= INDEX_MAX_CHILDREN or i + 1 == len(refs):
                above.append(
                    close(
                        encode_index(level, group),
                        group[0].first_name,
                        sum(g.entries for g in group),
                        sum(g.nodes for g in group),
                    )
                )
                group = []
        refs = above
    return pages


# ---------------------------------------------------------------- records (§9)


def decode_paths(raw, what):
    c = Cursor(raw, what)
    paths = [c.bytes() for _ in range(c.count(1))]
    c.finish()
    return paths


def decode_owners(c):
    """§9.1: users, then groups; ids strictly increasing, names restricted."""
    lists = []
    for which in ("user", "group"):
        out = []
        for _ in range(c.count(2)):
            oid, name = c.u32(), c.bytes()
            if out and out[-1][0] >= oid:
                c.fail(f"{which} {oid}: ids are duplicated or out of order")
            if not name or len(name) > MAX_OWNER_NAME or any(b in name for b in (b"\0", b":", b"/", b"\n")):
                c.fail(f"{which} {oid}: {show(name)} cannot be a {which} name")
            out.append((oid, name))
        lists.append(out)
    return lists


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
        at = c.p
        rec["users"], rec["groups"] = decode_owners(c)
        rec["owners_raw"] = data[at : c.p]
    elif t == RECORD_FORGET:
        rec = {"type": t, "id": cid, "when_ns": c.zigzag()}
        rec["hashes"] = [c.hash() for _ in range(c.count(32))]
    else:
        c.fail(f"unknown record type {t}")
    c.finish()
    return rec


# ---------------------------------------------------------------- a repository (§2, §10)


class Repo:
    def __init__(self, root):
        self.root = os.fsencode(root)
        self.config = self.read_config()
        self.packs = {}  # pack name (hex) -> (path, size)
        self.rows = {}  # pack name -> [Row]
        self.index = {}  # chunk id -> [Row] (every copy)
        self.problems = []
        self._fds = {}
        self._dirs = {}

    # ---- config (§3, §12.1)

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
        fmt = values.get("format")
        if fmt == "1":
            raise Damaged(
                f"config: repository format '1' is the previous format, which this reader does not "
                f"read; convert it with `snapfs upgrade --repo {show(self.root)}`"
            )
        if fmt != str(REPO_FORMAT):
            raise Damaged(f"config: repository format {fmt!r} is not one this reader knows ({REPO_FORMAT})")
        if values.get("frame", str(FRAME)) != str(FRAME):
            raise Damaged(f"config: frame {values.get('frame')!r} is not {FRAME}")
        return values

    # ---- keys (§15.1)

    def unlock(self, password_file):
        """For an encrypted repository, the master key from the key slot the
        passphrase opens; sets KEYS."""
        global KEYS
        enc = self.config.get("encryption", "none")
        if enc == "none":
            return
        if enc != "xchacha20-poly1305":
            raise Damaged(f"config: unknown encryption {enc!r}")
        rid = self.config.get("id", "")
        if len(rid) != 64 or any(c not in "0123456789abcdef" for c in rid):
            raise Damaged("config: an encrypted repository needs an id of 64 hex digits")
        if password_file is None:
            raise Usage("the repository is encrypted: give --password-file FILE")
        with open(password_file, "rb") as f:
            passphrase = f.read()
        if passphrase.endswith(b"\n"):
            passphrase = passphrase[:-1]
            if passphrase.endswith(b"\r"):
                passphrase = passphrase[:-1]
        import argon2.low_level as a2

        keys_dir = os.path.join(self.root, b"keys")
        slots = []
        for fname in sorted(os.listdir(keys_dir)):
            if fname.startswith(b"."):
                continue
            with open(os.path.join(keys_dir, fname), "rb") as f:
                slot = json.loads(f.read(8192))
            expect = {"version", "id", "created", "host", "kdf", "m_kib", "t", "p", "salt", "wrapped"}
            if set(slot) != expect or slot["version"] != 1 or slot["kdf"] != "argon2id":
                raise Damaged(f"key slot {show(fname)}: not a version 1 argon2id slot")
            if fname != slot["id"].encode() + b".key":
                raise Damaged(f"key slot {show(fname)}: its name is not its id")
            if not (8192 <= slot["m_kib"] <= 4 << 20 and 1 <= slot["t"] <= 20 and 1 <= slot["p"] <= 16):
                raise Damaged(f"key slot {show(fname)}: Argon2id settings out of bounds")
            slots.append(slot)
        slots.sort(key=lambda sl: (sl["m_kib"] * sl["t"], sl["created"], sl["id"]))
        for slot in slots:
            kek = a2.hash_secret_raw(
                passphrase,
                bytes.fromhex(slot["salt"]),
                time_cost=slot["t"],
                memory_cost=slot["m_kib"],
                parallelism=slot["p"],
                hash_len=32,
                type=a2.Type.ID,
                version=19,
            )
            aad = SLOT_AAD + bytes.fromhex(rid) + slot["id"].encode()
            try:
                master = open_sealed(kek, aad, bytes.fromhex(slot["wrapped"]), "key slot")
            except Damaged:
                continue
            KEYS = Keys(master)
            return
        raise Usage("wrong passphrase: no key slot opens with it")

    # ---- packs (§2, §6)

    def list_packs(self):
        top = os.path.join(self.root, b"packs")
        found = {}
        if not os.path.isdir(top):
            return found
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

    def kinds_of(self, cid):
        return {r.kind for r in self.index.get(cid, [])}

    def note(self, msg):
        sys.stderr.write(f"format_reader: {msg}\n")

    # ---- chunks (§5, §6.5)

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

    def has_chunk(self, cid, raw_len):
        return any(r.raw_len == raw_len for r in self.index.get(cid, []))

    # ---- directories (§8.10)

    def directory(self, h, where=b"/"):
        """The directory whose root page is `h`: its pages and entries, every
        page checked against its parent, names rising across pages."""
        d = self._dirs.get(h)
        if d is not None:
            return d
        what = f"directory {show(where)}"
        pages = []
        entries = []
        stack = [(h, None)]
        while stack:
            ph, parent = stack.pop()
            pw = f"{what}: page {hx(ph)}"
            page = decode_page(self.chunk(ph, what=pw), pw)
            if parent is not None:
                want, level = parent
                if page.level + 1 != level:
                    raise Damaged(f"{pw}: level {page.level} under a page of level {level}")
                if (page.first_name(), page.count(), page.nodes) != (want.first_name, want.entries, want.nodes):
                    raise Damaged(f"{pw}: its first name or counts differ from what its parent page says")
            pages.append((ph, page))
            if isinstance(page, Leaf):
                if entries and page.entries and entries[-1].name >= page.entries[0].name:
                    raise Damaged(f"{pw}: names are out of order across pages")
                entries.extend(page.entries)
            else:
                for ch in reversed(page.children):
                    stack.append((ch.page, (ch, page.level)))
        root = pages[0][1]
        d = Directory(h, pages, entries, root.nodes)
        self._dirs[h] = d
        return d

    def chunk_list(self, lid, what):
        """A file's chunk list (§8.7), fetched by its list id."""
        return decode_chunk_list(self.chunk(lid, what=f"{what}: chunk list {hx(lid)}"), what)

    def file_chunks(self, e, what):
        """[(chunk id, length)] of a file entry, its lengths adding up to its size."""
        if e.tag == TAG_EMPTY:
            return []
        if e.tag == TAG_CHUNK:
            return [(e.ref, e.size)]
        chunks = self.chunk_list(e.ref, what)
        total = sum(n for _, n in chunks)
        if total != e.size:
            raise Damaged(f"{what}: size {e.size}, but its chunk list {hx(e.ref)} holds {total} bytes")
        return chunks

    def walk(self, root):
        """Every (path, entry, position) of a snapshot, depth first in name
        order (§8.13); the root is position 0 and has no entry. Each
        directory's node count is checked against the entry that names it,
        and nesting is bounded (§8.15)."""
        stack = [(root, b"", 0, 0)]
        while stack:
            h, path, pos, depth = stack.pop()
            d = self.directory(h, path or b"/")
            subdirs = []
            offset = 0
            for e in d.entries:
                p = path + b"/" + e.name
                epos = pos + 1 + offset
                yield p, e, epos
                if e.kind == E_DIR:
                    if depth + 1 > MAX_DEPTH:
                        raise Damaged(f"{show(p)}: directories nested deeper than {MAX_DEPTH} levels")
                    sub = self.directory(e.subdir, p)
                    if sub.nodes != e.nodes:
                        raise Damaged(
                            f"directory {show(p)} claims {e.nodes} nodes beneath it, "
                            f"its pages hold {sub.nodes}"
                        )
                    subdirs.append((e.subdir, p, epos, depth + 1))
                offset += e.span()
            stack.extend(reversed(subdirs))

    # ---- records and snapshots (§9)

    def records(self):
        """(snapshots, forgotten ids, forget record ids) from the kind-2 chunks."""
        snaps, forgotten, forgets = {}, set(), set()
        for cid in sorted(c for c in self.index if KIND_RECORD in self.kinds_of(c)):
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

    def check_snapshot(self, s):
        """A snapshot's tree read whole: every page, list and count (§8.10, §8.13)."""
        root = self.directory(s["root"])
        if root.nodes != s["nodes"]:
            raise Damaged(f"its record claims {s['nodes']} nodes, its root directory holds {root.nodes}")
        for rel, e, _pos in self.walk(s["root"]):
            if e.kind == E_FILE:
                for cid, n in self.file_chunks(e, show(rel)):
                    if not self.has_chunk(cid, n):
                        raise Damaged(f"{show(rel)}: chunk {hx(cid)} ({n} bytes) is in no pack")


# ---------------------------------------------------------------- list


def owners_json(pairs):
    return {str(i): n.decode("utf-8", "backslashreplace") for i, n in pairs}


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
                "users": owners_json(s["users"]),
                "groups": owners_json(s["groups"]),
            }
            for s in live
        ]
        print(json.dumps(out, indent=1))
    else:
        for s in live:
            print(f"{hx(s['id'])[:16]}  {s['name']}  {s['files']} files  {s['size']} bytes")


# ---------------------------------------------------------------- extract (§10)


def owner_map(snap, numeric):
    """Recorded ids to this machine's, by the names the snapshot recorded
    (§9.1); ids whose name is unknown here stay as they are."""
    users, groups = {}, {}
    if numeric:
        return users, groups
    for table, pairs, look in (
        (users, snap["users"], lambda n: pwd.getpwnam(n).pw_uid),
        (groups, snap["groups"], lambda n: grp.getgrnam(n).gr_gid),
    ):
        for oid, name in pairs:
            try:
                table[oid] = look(os.fsdecode(name))
            except (KeyError, ValueError):
                pass
    return users, groups


def apply_meta(repo, path, e, owners):
    """Attributes, owner, mode, then times; never through a symlink."""
    for k, v in e.xattrs:
        try:
            os.setxattr(path, k, v, follow_symlinks=False)
        except OSError as err:
            repo.note(f"{show(path)}: extended attribute {show(k)} not set: {err}")
    users, groups = owners
    os.chown(path, users.get(e.uid, e.uid), groups.get(e.gid, e.gid), follow_symlinks=False)
    if e.kind != E_SYMLINK:
        os.chmod(path, e.mode & 0o7777)
    # Python's integers do not overflow: seconds * 10^9 + nanoseconds reaches
    # utimensat as the same seconds and nanoseconds, for any year (§8.5).
    ns = lambda t: t[0] * NANOS + t[1]
    os.utime(path, ns=(ns(e.atime), ns(e.mtime)), follow_symlinks=False)


def write_file(repo, path, e, shown):
    chunks = repo.file_chunks(e, shown)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        pos = 0
        for i, (cid, n) in enumerate(chunks):
            what = f"{shown}: chunk {i} ({hx(cid)})"
            if cid == zero_id(n):
                # Zeros: a hole, once the chunk is known to be in a pack.
                if not repo.has_chunk(cid, n):
                    raise Damaged(f"{what} is in no pack")
                pos += n
                continue
            data = memoryview(repo.chunk(cid, n, what))
            while data:
                w = os.pwrite(fd, data, pos)
                data = data[w:]
                pos += w
        os.ftruncate(fd, e.size)
    finally:
        os.close(fd)


def cmd_extract(repo, args):
    snap = repo.find_snapshot(args.snapshot)
    target = os.fsencode(args.target)
    os.makedirs(target, exist_ok=True)
    if os.listdir(target):
        raise Usage(f"{args.target} is not empty")
    owners = owner_map(snap, args.numeric_owner)
    links = {}
    dirs = []
    for rel, e, _pos in repo.walk(snap["root"]):
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
        apply_meta(repo, path, e, owners)
    # Children first: their creation changed their directory's mtime, and a
    # read-only directory could not have received them.
    for path, e in reversed(dirs):
        apply_meta(repo, path, e, owners)
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
                if r.kind == KIND_PAGE:
                    decode_page(data, where)
                elif r.kind == KIND_RECORD:
                    decode_record(data, r.cid)
                elif r.kind == KIND_LIST:
                    decode_chunk_list(data, where)
            except Damaged as e:
                problems.append(str(e))
    live = []
    try:
        live = repo.snapshots()
    except Damaged as e:
        problems.append(str(e))
    for s in live:
        try:
            repo.check_snapshot(s)
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


# ---------------------------------------------------------------- check-pages (§8.11)


def cmd_check_pages(repo, args):
    """Every directory of every snapshot is stored as the pages a writer
    following §8.11 makes of its entries."""
    key = boundary_key()
    seen = set()
    dirs = pages = levels = 0
    problems = []
    for s in repo.snapshots():
        for h, where in [(s["root"], b"/")] + [
            (e.subdir, rel) for rel, e, _ in repo.walk(s["root"]) if e.kind == E_DIR
        ]:
            if h in seen:
                continue
            seen.add(h)
            d = repo.directory(h, where)
            dirs += 1
            pages += len(d.pages)
            levels = max(levels, d.pages[0][1].level)
            want = canonical_pages(d.entries, key)
            got = {ph for ph, _ in d.pages}
            if want[-1][0] != h or {ph for ph, _ in want} != got:
                problems.append(
                    f"snapshot {s['name']}: directory {show(where)}: stored as {len(got)} page(s) "
                    f"under {hx(h)}, the document's rules make {len(want)} under {hx(want[-1][0])}"
                )
    for p in problems:
        sys.stderr.write(f"format_reader: {p}\n")
    print(
        f"{dirs} directories, {pages} pages, highest root level {levels}: "
        f"{'not as the document says' if problems else 'as the document says'}"
    )
    if problems:
        raise Damaged(f"{len(problems)} directories are not stored as section 8.11 says")


# ---------------------------------------------------------------- check-catalog (§11)


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

    # chunks: every row is a row of its pack's own table (§6.5 for the kind).
    nchunks = 0
    for cid, pid, off, slen, rlen, kind in db.execute(
        "SELECT id, pack, offset, stored_len, raw_len, kind FROM chunks"
    ):
        nchunks += 1
        here = [r for r in repo.index.get(cid, []) if r.pack == pack_ids.get(pid)]
        if not here:
            bad(f"chunks: {hx(cid)} is not in the table of pack {pack_ids.get(pid)}")
            continue
        r = here[0]
        if (r.offset, r.stored_len, r.raw_len) != (off, slen, rlen):
            bad(f"chunks: {hx(cid)}: catalog ({off}, {slen}, {rlen}) != pack ({r.offset}, {r.stored_len}, {r.raw_len})")
        kinds = repo.kinds_of(cid)
        meta = kinds - {KIND_DATA}
        if kind not in kinds or (meta and kind == KIND_DATA):
            bad(f"chunks: {hx(cid)}: kind {kind}, the packs say {sorted(kinds)}")

    # pages and contents: every row holds the bytes its hash names.
    npages = 0
    for h, level, entries, nodes, body in db.execute("SELECT hash, level, entries, nodes, body FROM pages"):
        npages += 1
        if chunk_id(body) != h:
            bad(f"pages: {hx(h)}: its body is not the page its hash names")
            continue
        try:
            p = decode_page(body, f"pages: {hx(h)}")
        except Damaged as e:
            bad(str(e))
            continue
        if (level, entries, nodes) != (p.level, p.count(), p.nodes):
            bad(f"pages: {hx(h)}: (level, entries, nodes) ({level}, {entries}, {nodes}) != page ({p.level}, {p.count()}, {p.nodes})")
    ncontents = 0
    for h, size, chunks in db.execute("SELECT hash, size, chunks FROM contents"):
        ncontents += 1
        if chunk_id(chunks) != h:
            bad(f"contents: {hx(h)}: its chunks are not the list its hash names")
            continue
        total = sum(n for _, n in decode_chunk_list(chunks, f"contents: {hx(h)}"))
        if size != total:
            bad(f"contents: {hx(h)}: size {size}, its list holds {total}")

    # snapshots: exactly the live records, field by field.
    _snaps, _forgotten, forgets = repo.records()
    live = {s["id"]: s for s in repo.snapshots()}
    rows = db.execute(
        "SELECT s.id, s.hash, s.name, s.started_ns, s.finished_ns, s.host, s.sources, s.tags, "
        "p.hash, s.files, s.dirs, s.size, s.read_bytes, s.warnings, s.owners "
        "FROM snapshots s LEFT JOIN pages p ON p.id = s.root_tree"
    ).fetchall()
    seen = set()
    for sid, h, name, st, fin, host, sources, tags, root, files, dirs, size, rb, warn, owners in rows:
        seen.add(h)
        rec = live.get(h)
        if rec is None:
            bad(f"snapshots: {name} ({hx(h)}) has no live record in the packs")
            continue
        got = (name, st, fin, host, sources, json.loads(tags), root, files, dirs, size, rb, warn, owners)
        want = (
            rec["name"], rec["started_ns"], rec["finished_ns"], rec["host"], rec["sources_raw"],
            rec["tags"], rec["root"], rec["files"], rec["dirs"], rec["size"], rec["read_bytes"],
            rec["warnings"], rec["owners_raw"],
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
        f"catalog: {len(pack_ids)} packs, {nchunks} chunks, {npages} pages, {ncontents} chunk lists, "
        f"{len(rows)} snapshots, {len(tomb)} tombstones: "
        f"{'differs from the packs' if problems else 'agrees with the packs'}"
    )
    if problems:
        raise Damaged(f"the catalog disagrees with the packs in {len(problems)} place(s)")


def check_snapshot_rows(repo, db, sid, rec, bad):
    """Every page and chunk list one snapshot reaches has its row, and the
    snapshot's hard link groups are what its pages say."""
    name = rec["name"]
    page_rows = {}
    lists = set()
    groups = {}

    def page_row(ph, body):
        if ph in page_rows:
            return
        row = db.execute("SELECT body FROM pages WHERE hash = ?", (ph,)).fetchone()
        page_rows[ph] = row is not None
        if row is None:
            bad(f"pages: {hx(ph)} (snapshot {name}) is missing")
        elif row[0] != body:
            bad(f"pages: {hx(ph)} (snapshot {name}) does not hold the page's bytes")

    def directory_rows(h):
        for ph, _page in repo.directory(h).pages:
            if ph not in page_rows:
                page_row(ph, repo.chunk(ph))

    directory_rows(rec["root"])
    for rel, e, pos in repo.walk(rec["root"]):
        if e.link_key and e.kind != E_DIR:
            g = groups.setdefault(e.link_key, [pos, 0])
            g[0] = min(g[0], pos)
            g[1] += 1
        if e.kind == E_DIR:
            directory_rows(e.subdir)
        elif e.kind == E_FILE and e.tag == TAG_LIST and e.ref not in lists:
            lists.add(e.ref)
            row = db.execute("SELECT size, chunks FROM contents WHERE hash = ?", (e.ref,)).fetchone()
            raw = repo.chunk(e.ref)
            if row is None or row != (e.size, raw):
                bad(f"contents: snapshot {name}: {show(rel)}: chunk list {hx(e.ref)} has no row, or another")
    want_links = {(i64(k), first, count) for k, (first, count) in groups.items() if count > 1}
    got_links = set(db.execute("SELECT link_key, first_node, count FROM hardlinks WHERE snapshot = ?", (sid,)))
    if got_links != want_links:
        bad(f"hardlinks: snapshot {name}: catalog {sorted(got_links)} != pages {sorted(want_links)}")


# ---------------------------------------------------------------- main


def main(argv):
    ap = argparse.ArgumentParser(prog="format_reader.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--password-file", help="the passphrase of an encrypted repository (§15)")
    ap.add_argument("repo")
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="list the snapshots the packs hold")
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("extract", help="extract one snapshot into an empty directory")
    p.add_argument("--numeric-owner", action="store_true", help="keep recorded ids, map no names")
    p.add_argument("snapshot")
    p.add_argument("target")
    sub.add_parser("verify", help="check every pack, chunk, page, list and record")
    sub.add_parser("check-catalog", help="cross-check catalog.db against the packs")
    sub.add_parser("check-pages", help="check that directory pages end where section 8.11 says")
    args = ap.parse_args(argv)
    try:
        repo = Repo(args.repo)
        repo.unlock(args.password_file)
        if KEYS is not None and args.command == "check-catalog":
            raise Usage("an encrypted repository keeps its catalog outside it (§15)")
        repo = repo.load(strict=args.command != "verify")
        {
            "list": cmd_list,
            "extract": cmd_extract,
            "verify": cmd_verify,
            "check-catalog": cmd_check_catalog,
            "check-pages": cmd_check_pages,
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
