#!/usr/bin/env bash
# Runs every test (unit and end-to-end) in release mode.
#
# The end-to-end tests need root (mknod, chown, mount), rsync, the attr and
# acl tools, and FUSE. What a fresh Debian machine lacks is installed here.
set -euo pipefail

cd "$(dirname "$0")/.."

need_install=()
for pair in fusermount3:fuse3 rsync:rsync getfattr:attr setfacl:acl setpriv:util-linux flock:util-linux \
    findmnt:mount python3:python3 systemd-analyze:systemd \
    smbd:samba smbclient:smbclient stunnel4:stunnel4 openssl:openssl \
    faketime:faketime curl:curl; do
    cmd=${pair%%:*}
    pkg=${pair#*:}
    if ! command -v "$cmd" >/dev/null 2>&1; then
        need_install+=("$pkg")
    fi
done
# Samba's shadow_copy2 module (the Previous Versions test) is packaged apart.
if ! compgen -G "/usr/lib/*/samba/vfs/shadow_copy2.so" >/dev/null; then
    need_install+=(samba-vfs-modules)
fi
# The copy tests start their own sshd on loopback (/usr/sbin/sshd, often not
# on PATH) and reach it with ssh; ssh-keygen makes their keys.
if [[ ! -x /usr/sbin/sshd ]]; then
    need_install+=(openssh-server)
fi
if ! command -v ssh >/dev/null 2>&1 || ! command -v ssh-keygen >/dev/null 2>&1; then
    need_install+=(openssh-client)
fi
if ((${#need_install[@]} > 0)); then
    echo "installing: ${need_install[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${need_install[@]}"
fi

# The independent reader of docs/FORMAT.md (tests/format_reader.py) needs
# BLAKE3 and zstd from Python, and for encrypted repositories
# XChaCha20-Poly1305 and Argon2id: the `blake3`, `zstandard`, `pynacl` and
# `argon2-cffi` modules, in a virtual environment of their own under
# target/, where tests/format_doc.rs looks for it. Debian has no
# python3-blake3, so all come from PyPI, for the one interpreter that runs
# the reader.
reader_venv=target/format-reader-venv
if ! "$reader_venv/bin/python3" -c 'import blake3, zstandard, nacl.bindings, argon2.low_level' >/dev/null 2>&1; then
    if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
        echo "installing: python3-venv"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update
        apt-get install -y --no-install-recommends python3-venv
    fi
    rm -rf "$reader_venv"
    python3 -m venv "$reader_venv"
    "$reader_venv/bin/python3" -m pip install --quiet --disable-pip-version-check \
        'blake3==1.0.11' 'zstandard==0.25.0' 'pynacl==1.5.0' 'argon2-cffi==25.1.0'
    "$reader_venv/bin/python3" -c 'import blake3, zstandard, nacl.bindings, argon2.low_level'
fi

# The object-storage tests start a real three-node Garage cluster on
# loopback. Its binary comes from crates.io (upstream's own crate); the
# first build takes 7 to 10 minutes on two cores, later runs reuse it.
# Only the LMDB metadata engine is built (with the C libraries Garage
# bundles): the tests need nothing else.
garage_version=2.5.0
garage_bin=$(command -v garage || echo "$HOME/.cargo/bin/garage")
if ! "$garage_bin" --version 2>/dev/null | grep -qF "$garage_version"; then
    echo "installing: garage $garage_version (cargo install; several minutes)"
    cargo install garage --locked --version "$garage_version" \
        --no-default-features --features lmdb,bundled-libs
    "$HOME/.cargo/bin/garage" --version
fi

if [[ ! -e /dev/fuse ]]; then
    echo "error: /dev/fuse does not exist; the mount tests need FUSE" >&2
    exit 1
fi
if [[ $(id -u) -ne 0 ]]; then
    echo "error: the end-to-end tests must run as root (mknod, chown, mount)" >&2
    exit 1
fi

# Doctests first (nextest does not run them), so that the summary printed
# last is the one of the whole suite.
if [[ -f src/lib.rs ]]; then
    cargo test --release --doc
fi
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --release --no-fail-fast
else
    cargo test --release --no-fail-fast --lib --bins --tests
fi
