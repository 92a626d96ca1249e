#!/usr/bin/env bash
# An encrypted repository against an unencrypted one, on the same data in
# the same run: first ingest of a tree and of a big file, a no-change
# re-ingest, opening the repository (key derivation included), sequential
# and random 4 KiB reads through the mount, and repository bytes. Each
# measure alternates the two kinds, ENC_ROUNDS times, and keeps the best.
# A benchmark, not a test.
#
#   scripts/bench_encryption.sh
#   ENC_TREE=/usr/share/man ENC_BIG_MIB=512 scripts/bench_encryption.sh
#
# Environment: ENC_DIR (scratch, default /var/tmp/snapfs-enc), ENC_TREE
# (default /usr/share/man), ENC_BIG_MIB (default 1024: a file of real data
# from /usr), ENC_ROUNDS (default 2), ENC_BUILD=0 to skip the build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ENC_DIR=${ENC_DIR:-/var/tmp/snapfs-enc}
ENC_TREE=${ENC_TREE:-/usr/share/man}
ENC_BIG_MIB=${ENC_BIG_MIB:-1024}
ENC_ROUNDS=${ENC_ROUNDS:-2}
BENCH_CACHE=${BENCH_CACHE:-cold}
BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-30}
BENCH_IDLE_BUDGET=${BENCH_IDLE_BUDGET:-300}
LOGS=$ENC_DIR/logs

log() { printf '[bench-enc %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
. "$ROOT/scripts/bench_lib.sh"

install_missing fio:fio fusermount3:fuse3 mountpoint:util-linux /usr/bin/time:time
[[ ${ENC_BUILD:-1} == 0 ]] || (cd "$ROOT" && cargo build --release >/dev/null)
mkdir -p "$ENC_DIR/bin" "$LOGS"
# A private copy: a rebuild during the run must not change the binary.
cp "$ROOT/target/release/snapfs" "$ENC_DIR/bin/snapfs"
SNAPFS=$ENC_DIR/bin/snapfs
export SNAPFS_CACHE_DIR=$ENC_DIR/cache
PW=$ENC_DIR/passphrase
(umask 077; printf 'a passphrase for the benchmark\n' >"$PW")
export SNAPFS_PASSWORD_FILE=$PW

SRC=$ENC_DIR/src
if [[ ! -f $SRC/big/data.bin || $(stat -c %s "$SRC/big/data.bin") -ne $((ENC_BIG_MIB << 20)) ]]; then
    log "making a $ENC_BIG_MIB MiB file of real data"
    mkdir -p "$SRC/big"
    { find /usr/lib /usr/bin /usr/share -xdev -type f -size +0 -print0 2>/dev/null \
        | sort -z | xargs -0 cat 2>/dev/null || true; } | head -c $((ENC_BIG_MIB << 20)) >"$SRC/big/data.bin" || true
fi
[[ $(stat -c %s "$SRC/big/data.bin") -eq $((ENC_BIG_MIB << 20)) ]] || die "could not collect $ENC_BIG_MIB MiB"

TSV=$ENC_DIR/results.tsv
printf 'measure\tplain\tencrypted\tratio\n' >"$TSV"
declare -A BEST

# best KIND MEASURE VALUE: keep the lower value (or higher, for rates)
best() {
    local key="$1/$2" v=$3 higher=${4:-0} old
    old=${BEST[$key]:-}
    if [[ -z $old ]] || awk -v a="$v" -v b="$old" -v h="$higher" 'BEGIN { exit !((h && a > b) || (!h && a < b)) }'; then
        BEST[$key]=$v
    fi
}

init() {  # init KIND REPO
    rm -rf "$2"
    if [[ $1 == plain ]]; then
        "$SNAPFS" --repo "$2" init --encryption none >/dev/null
    else
        "$SNAPFS" --repo "$2" init --encryption xchacha20-poly1305 >/dev/null
    fi
}

mnt=$ENC_DIR/mnt
mkdir -p "$mnt"
trap 'fusermount3 -u "$mnt" 2>/dev/null || true' EXIT

for ((round = 1; round <= ENC_ROUNDS; round++)); do
    for kind in plain encrypted; do
        repo=$ENC_DIR/repo-$kind
        log "round $round: $kind"
        init "$kind" "$repo"
        timeit "$kind-tree" "$SNAPFS" --repo "$repo" ingest --name tree "$ENC_TREE"
        best "$kind" "first ingest, $ENC_TREE (s)" "$T_WALL"
        timeit "$kind-big" "$SNAPFS" --repo "$repo" ingest --name big "$SRC/big"
        best "$kind" "first ingest, $ENC_BIG_MIB MiB file (s)" "$T_WALL"
        timeit "$kind-again" "$SNAPFS" --repo "$repo" ingest --name again "$ENC_TREE"
        best "$kind" "no-change re-ingest, $ENC_TREE (s)" "$T_WALL"
        timeit "$kind-open" "$SNAPFS" --repo "$repo" snapshots
        best "$kind" "open and list snapshots (s)" "$T_WALL"
        best "$kind" "repository bytes, packs" "$(du -sb "$repo/packs" | cut -f1)"

        # A small frame cache, so random reads mostly decode (and open) frames.
        "$SNAPFS" --repo "$repo" mount --cache-size 16M "$mnt" >"$LOGS/$kind-mount.log" 2>&1 &
        for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
        mountpoint -q "$mnt" || die "the mount did not come up"
        f=$(find -L "$mnt/big" -name data.bin -print -quit)
        [[ -n $f ]] || die "no data.bin under the mount"
        drop_caches
        t0=$(date +%s%N); cat "$f" >/dev/null; t1=$(date +%s%N)
        best "$kind" "cat of the big file through the mount (MB/s)" \
            "$(awk -v a="$t0" -v b="$t1" -v n=$((ENC_BIG_MIB << 20)) 'BEGIN { printf "%.0f", n / ((b - a) / 1e9) / 1e6 }')" 1
        iops=$(fio --name=r --filename="$f" --rw=randread --bs=4k --runtime=15 --time_based \
            --numjobs=2 --ioengine=psync --group_reporting --readonly 2>/dev/null \
            | sed -n 's/.*IOPS=\([0-9.k]*\).*/\1/p' | head -1)
        iops=$(awk -v v="$iops" 'BEGIN { if (v ~ /k$/) { sub(/k$/, "", v); v *= 1000 } printf "%.0f", v }')
        best "$kind" "random 4 KiB reads through the mount (/s)" "$iops" 1
        fusermount3 -u "$mnt"; wait || true
    done
done
trap - EXIT

for m in "first ingest, $ENC_TREE (s)" "first ingest, $ENC_BIG_MIB MiB file (s)" \
         "no-change re-ingest, $ENC_TREE (s)" "open and list snapshots (s)" \
         "cat of the big file through the mount (MB/s)" "random 4 KiB reads through the mount (/s)" \
         "repository bytes, packs"; do
    p=${BEST[plain/$m]} e=${BEST[encrypted/$m]}
    printf '%s\t%s\t%s\t%s\n' "$m" "$p" "$e" "$(awk -v a="$e" -v b="$p" 'BEGIN { printf "%.3f", a / b }')" >>"$TSV"
done
column -t -s $'\t' "$TSV"
