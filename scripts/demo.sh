#!/usr/bin/env bash
# The main job on a fresh machine: build snapfs, back up a real directory into
# the default repository, mount the repository and show the snapshots.
#
#   scripts/demo.sh [SOURCE]      (default SOURCE: /usr/share/doc)
#
# Uses $SNAPFS_REPO if set, else ~/.local/share/snapfs. The repository is
# encrypted; its passphrase is $SNAPFS_PASSWORD_FILE (or the command in
# $SNAPFS_PASSWORD_COMMAND) if set, else a random one the demo keeps in
# ~/.config/snapfs/passphrase (0600). Leaves the repository in place;
# unmounts at the end unless DEMO_KEEP_MOUNTED=1.
set -euo pipefail
cd "$(dirname "$0")/.."

source_dir=${1:-/usr/share/doc}
repo=${SNAPFS_REPO:-$HOME/.local/share/snapfs}

missing=()
command -v fusermount3 >/dev/null 2>&1 || missing+=(fuse3)
if ((${#missing[@]} > 0)); then
    if [[ $(id -u) -eq 0 ]]; then
        echo "== installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "please install: ${missing[*]} (e.g. sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
fi

echo "== building"
cargo build --release --quiet
snapfs=$PWD/target/release/snapfs
export SNAPFS_REPO=$repo

if [[ -z ${SNAPFS_PASSWORD_FILE:-} && -z ${SNAPFS_PASSWORD_COMMAND:-} ]]; then
    keydir=${XDG_CONFIG_HOME:-$HOME/.config}/snapfs
    export SNAPFS_PASSWORD_FILE=$keydir/passphrase
    if [[ ! -s $SNAPFS_PASSWORD_FILE ]]; then
        (umask 077 && mkdir -p "$keydir" && head -c 33 /dev/urandom | base64 >"$SNAPFS_PASSWORD_FILE")
        echo "== made a random passphrase in $SNAPFS_PASSWORD_FILE (keep a copy elsewhere:"
        echo "   without it nothing in the repository can be read)"
    fi
fi

if [[ ! -f $repo/config ]]; then
    echo "== creating encrypted repository $repo"
    "$snapfs" init
elif grep -qx 'format = 1' "$repo/config"; then
    echo "== converting $repo, made by an earlier release, to the current format"
    "$snapfs" upgrade
fi

echo "== snapshot of $source_dir"
"$snapfs" ingest --tag demo "$source_dir"
echo "== the same again: unchanged files are not read"
"$snapfs" ingest --tag demo "$source_dir"

echo "== snapshots"
"$snapfs" snapshots

mnt=$(mktemp -d /tmp/snapfs-demo.XXXXXX)
log=$(mktemp /tmp/snapfs-demo-mount.XXXXXX)
"$snapfs" mount "$mnt" >"$log" 2>&1 &
pid=$!
cleanup() {
    if [[ ${DEMO_KEEP_MOUNTED:-0} != 1 ]]; then
        fusermount3 -u "$mnt" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        rmdir "$mnt" 2>/dev/null || true
    fi
    rm -f "$log"
}
trap cleanup EXIT
for _ in $(seq 1 100); do
    grep -q '^mounted' "$log" && break
    if ! kill -0 "$pid" 2>/dev/null; then
        cat "$log" >&2
        exit 1
    fi
    sleep 0.1
done
grep -q '^mounted' "$log" || { cat "$log" >&2; exit 1; }

echo "== mounted at $mnt"
ls -l "$mnt"
echo "== $mnt/latest$source_dir (first entries)"
ls -l "$mnt/latest$source_dir" | sed -n 1,15p
echo "== comparing the newest snapshot with the source (rsync -nac, no output = identical)"
if command -v rsync >/dev/null 2>&1; then
    rsync -nac --delete "$source_dir/" "$mnt/latest$source_dir/" | sed -n 1,20p
fi
if [[ ${DEMO_KEEP_MOUNTED:-0} == 1 ]]; then
    echo "== left mounted at $mnt (process $pid); unmount with: fusermount3 -u $mnt"
else
    echo "== unmounting; mount again with: $snapfs mount MOUNTPOINT"
fi
