#!/usr/bin/env bash
# A repository in a bucket of a real three-node Garage cluster on loopback
# (replication factor 3, one node per 127.0.0.x) against the same
# repository on the local disk, same data, same run: first ingest of a tree
# and of a big file, a no-change re-ingest, restore of the tree, the mount
# (from the mount command to the first `ls`, `find` over the tree, `cat`
# of the file), and a second machine's first command (its catalog made
# from the bucket). Both repositories are encrypted, as new
# ones are. A benchmark, not a test.
#
#   scripts/bench_s3.sh
#   S3_TREE=/usr/share/man S3_BIG_MIB=256 scripts/bench_s3.sh
#
# Environment: S3_DIR (scratch, default /var/tmp/snapfs-s3), S3_TREE
# (default /usr/share/man), S3_BIG_MIB (default 512), S3_BUILD=0 to skip
# the build, S3_SECOND=0 to skip the second machine's first command (the
# slowest step, for quicker runs of the read measures), S3_MOUNT_ARGS for
# the bucket's mount (e.g. "--disk-cache-size 0"). Needs the garage
# binary (scripts/test.sh installs it).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
S3_DIR=${S3_DIR:-/var/tmp/snapfs-s3}
S3_TREE=${S3_TREE:-/usr/share/man}
S3_BIG_MIB=${S3_BIG_MIB:-512}
BENCH_CACHE=${BENCH_CACHE:-cold}
BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-30}
BENCH_IDLE_BUDGET=${BENCH_IDLE_BUDGET:-300}
LOGS=$S3_DIR/logs

log() { printf '[bench-s3 %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
. "$ROOT/scripts/bench_lib.sh"

install_missing fusermount3:fuse3 mountpoint:util-linux /usr/bin/time:time
GARAGE=$(command -v garage || echo "$HOME/.cargo/bin/garage")
[[ -x $GARAGE ]] || die "no garage binary: run scripts/test.sh once, or cargo install garage"
[[ ${S3_BUILD:-1} == 0 ]] || (cd "$ROOT" && cargo build --release >/dev/null)
mnt=$S3_DIR/mnt
fusermount3 -u "$mnt" 2>/dev/null || true
rm -rf --one-file-system "$S3_DIR"
mkdir -p "$S3_DIR/bin" "$LOGS" "$mnt"
cp "$ROOT/target/release/snapfs" "$S3_DIR/bin/snapfs"
SNAPFS=$S3_DIR/bin/snapfs
PW=$S3_DIR/passphrase
(umask 077; printf 'a passphrase for the benchmark\n' >"$PW")
export SNAPFS_PASSWORD_FILE=$PW

# The cluster: three nodes, one bucket, one key.
rpc=39011 s3=39010
secret=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
pids=()
stop_cluster() {
    fusermount3 -u "$mnt" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap stop_cluster EXIT
for i in 1 2 3; do
    n=$S3_DIR/garage/n$i
    mkdir -p "$n"
    cat >"$n.toml" <<EOF
metadata_dir = "$n/meta"
data_dir = "$n/data"
db_engine = "lmdb"
replication_factor = 3
consistency_mode = "consistent"
compression_level = "none"
rpc_secret = "$secret"
rpc_bind_addr = "127.0.0.$i:$rpc"
rpc_public_addr = "127.0.0.$i:$rpc"
[s3_api]
api_bind_addr = "127.0.0.$i:$s3"
s3_region = "garage"
EOF
    RUST_LOG=garage=warn "$GARAGE" -c "$n.toml" server >"$LOGS/garage-$i.log" 2>&1 &
    pids+=($!)
done
g() { "$GARAGE" -c "$S3_DIR/garage/n1.toml" "$@"; }
for _ in $(seq 60); do g status >/dev/null 2>&1 && break; sleep 0.5; done
for i in 2 3; do g node connect "$("$GARAGE" -c "$S3_DIR/garage/n$i.toml" node id -q)" >/dev/null; done
for i in 1 2 3; do
    id=$("$GARAGE" -c "$S3_DIR/garage/n$i.toml" node id -q | cut -d@ -f1)
    g layout assign -z dc1 -c 1G "$id" >/dev/null
done
g layout apply --version 1 >/dev/null
for _ in $(seq 60); do g bucket create bench >/dev/null 2>&1 && break; sleep 1; done
g key import --yes -n bench GKsnapfsbench00000000001 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef >/dev/null
g bucket allow --read --write --owner bench --key GKsnapfsbench00000000001 >/dev/null
export AWS_ACCESS_KEY_ID=GKsnapfsbench00000000001
export AWS_SECRET_ACCESS_KEY=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
export AWS_REGION=garage
export AWS_ENDPOINT_URL=http://127.0.0.1:$s3,http://127.0.0.2:$s3,http://127.0.0.3:$s3
log "cluster up"

SRC=$S3_DIR/src
mkdir -p "$SRC/big"
{ find /usr/lib /usr/bin /usr/share -xdev -type f -size +0 -print0 2>/dev/null \
    | sort -z | xargs -0 cat 2>/dev/null || true; } | head -c $((S3_BIG_MIB << 20)) >"$SRC/big/data.bin" || true
[[ $(stat -c %s "$SRC/big/data.bin") -eq $((S3_BIG_MIB << 20)) ]] || die "could not collect $S3_BIG_MIB MiB"

TSV=$S3_DIR/results.tsv
printf 'measure\tlocal disk\tbucket\tratio\n' >"$TSV"
# timed LABEL CMD...: timeit, and stop if the command failed.
timed() {
    timeit "$@"
    [[ $T_RC == 0 ]] || die "$1 failed ($T_RC): see $LOGS/$1.log"
}
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) / 1e6 }'; }
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$(awk -v a="$3" -v b="$2" 'BEGIN { if (b + 0 == 0) print "-"; else printf "%.2f", a / b }')" >>"$TSV"; }
declare -A R
for kind in local bucket; do
    if [[ $kind == local ]]; then repo=$S3_DIR/repo; else repo=s3://bench/host1; fi
    export SNAPFS_CACHE_DIR=$S3_DIR/cache-$kind
    log "$kind: ingest"
    "$SNAPFS" --repo "$repo" init >/dev/null
    timed "$kind-tree" "$SNAPFS" --repo "$repo" ingest --name tree "$S3_TREE"; R[$kind/tree]=$T_WALL
    R[$kind/tree_cpu]=$T_CPU R[$kind/tree_other]=$T_OTHER
    timed "$kind-big" "$SNAPFS" --repo "$repo" ingest --name big "$SRC/big"; R[$kind/big]=$T_WALL
    R[$kind/big_cpu]=$T_CPU R[$kind/big_other]=$T_OTHER
    timed "$kind-again" "$SNAPFS" --repo "$repo" ingest --name again "$S3_TREE"; R[$kind/again]=$T_WALL
    log "$kind: restore"
    rm -rf "$S3_DIR/restored"
    timed "$kind-restore" "$SNAPFS" --repo "$repo" restore tree "$S3_DIR/restored"; R[$kind/restore]=$T_WALL
    rm -rf "$S3_DIR/restored"
    log "$kind: mount"
    margs=()
    [[ $kind == bucket ]] && read -ra margs <<<"${S3_MOUNT_ARGS:-}"
    drop_caches
    t0=$(date +%s%N)
    "$SNAPFS" --repo "$repo" mount "${margs[@]}" "$mnt" >"$LOGS/$kind-mount.log" 2>&1 &
    mpid=$!
    # The first `ls`: from the mount command to the snapshot list.
    until mountpoint -q "$mnt" && ls "$mnt" >/dev/null 2>&1; do
        kill -0 "$mpid" 2>/dev/null || die "the mount did not come up: see $LOGS/$kind-mount.log"
        sleep 0.005
    done
    ls "$mnt/tree" >/dev/null
    t1=$(date +%s%N)
    R[$kind/ls]=$(ms "$t0" "$t1")
    drop_caches
    t0=$(date +%s%N); find "$mnt/tree/" >/dev/null; t1=$(date +%s%N)
    R[$kind/find]=$(ms "$t0" "$t1")
    f=$(find -L "$mnt/big" -name data.bin -print -quit)
    drop_caches
    t0=$(date +%s%N); cat "$f" >/dev/null; t1=$(date +%s%N)
    R[$kind/cat]=$(awk -v a="$t0" -v b="$t1" -v n=$((S3_BIG_MIB << 20)) 'BEGIN { printf "%.0f", n / ((b - a) / 1e9) / 1e6 }')
    fusermount3 -u "$mnt"; wait "$mpid" 2>/dev/null || true
    if [[ ${S3_SECOND:-1} == 0 ]]; then R[$kind/second]=1; continue; fi
    log "$kind: a second machine's first command"
    export SNAPFS_CACHE_DIR=$S3_DIR/cache-$kind-second
    if [[ $kind == local ]]; then
        # The local repository's catalog, made again from its packs.
        timed "$kind-second" "$SNAPFS" --repo "$repo" rebuild-catalog --force
    else
        timed "$kind-second" "$SNAPFS" --repo "$repo" snapshots
    fi
    R[$kind/second]=$T_WALL
done
trap - EXIT
stop_cluster

row "first ingest, $S3_TREE (s)" "${R[local/tree]}" "${R[bucket/tree]}"
row "  its CPU: snapfs (s)" "${R[local/tree_cpu]}" "${R[bucket/tree_cpu]}"
row "  its CPU: everything else, the cluster (s)" "${R[local/tree_other]}" "${R[bucket/tree_other]}"
row "first ingest, $S3_BIG_MIB MiB file (s)" "${R[local/big]}" "${R[bucket/big]}"
row "  its CPU: snapfs (s)" "${R[local/big_cpu]}" "${R[bucket/big_cpu]}"
row "  its CPU: everything else, the cluster (s)" "${R[local/big_other]}" "${R[bucket/big_other]}"
row "no-change re-ingest (s)" "${R[local/again]}" "${R[bucket/again]}"
row "restore of the tree (s)" "${R[local/restore]}" "${R[bucket/restore]}"
row "mount to the first ls, cold (ms)" "${R[local/ls]}" "${R[bucket/ls]}"
row "find over the mounted tree, cold (ms)" "${R[local/find]}" "${R[bucket/find]}"
row "cat of the file through the mount (MB/s)" "${R[local/cat]}" "${R[bucket/cat]}"
row "second machine: catalog from the packs (s)" "${R[local/second]}" "${R[bucket/second]}"
column -t -s $'\t' "$TSV"
