#!/usr/bin/env bash
# Mount, integrity and history benchmarks: `snapfs mount` against
# `restic mount` and `borg mount` (and ext4, and a bare FUSE filesystem
# serving memory) on the same data, in one run; `snapfs verify --read-data`
# against `restic check --read-data`; `snapfs gc` against restic and borg
# pruning; and the history view, `snapfs log` and `snapfs find` on a
# repository of many snapshots.
#
#   scripts/bench_mount.sh                 # full run (~20 min on a 2-core machine)
#   BENCH_QUICK=1 scripts/bench_mount.sh   # small data sets, 40 snapshots of history
#
# See BENCHMARKS.md ("Mount, integrity and history") for what is measured.
#
# Environment (the same as scripts/bench.sh where the names are the same):
#   BENCH_DIR        scratch directory (default /var/tmp/snapfs-bench); this
#                    script works under $BENCH_DIR/mount, apart from bench.sh's
#                    sources and repositories; it copies bench.sh's generated
#                    tree, /usr/share copy and big file from $BENCH_DIR/src
#                    when they are there and pristine, else makes them the same way
#   BENCH_OUT        results directory (default <project>/target/bench):
#                    mount-results.md and mount-results.tsv
#   BENCH_QUICK=1    small data sets, 40 history snapshots, 10 s fio runs
#   BENCH_MOUNT_SECTIONS  which sections (default "mount integrity history")
#   BENCH_TOOLS      which peers beside snapfs (default "restic borg")
#   BENCH_CACHE      cold (default: drop the page cache before every timed
#                    command) or warm (never drop it)
#   BENCH_BUILD=0    do not run `cargo build --release` first
#   BENCH_REV        benchmark this committed revision instead of the work
#                    tree (built from `git archive` under $BENCH_DIR/mount/build)
#   BENCH_FLOOR_RUNS ext4 floors are the best of this many runs (default 3)
#   BENCH_IDLE_WAIT  before each timed command, wait up to this many seconds
#                    (default 60) for the machine to be idle; BENCH_IDLE_BUDGET
#                    (default 300) caps the waiting over the whole run;
#                    BENCH_START_WAIT (default 300): before starting, wait up
#                    to this long for the 1-minute load average to fall below 1
#   BENCH_REUSE=1    keep the repositories an earlier run made from the same
#                    sources with the same snapfs (default: make them afresh)
#   BENCH_MOUNT_CACHE    snapfs mount --cache-size (default 256M)
#   BENCH_FIO_RUNTIME    seconds per fio run (default 20, quick 10)
#   BENCH_HISTORY_SNAPSHOTS  snapshots in the history repository (200, quick 40)
#   BENCH_GC_FILES   files of the tree the gc repositories are made of (10000)
#   BENCH_GEN_FILES, BENCH_REAL_SRC, BENCH_BIG_MIB   data set sizes
set -euo pipefail

# --------------------------------------------------------------------------
# configuration

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/snapfs-bench}
BENCH_OUT=${BENCH_OUT:-$ROOT/target/bench}
BENCH_QUICK=${BENCH_QUICK:-0}
BENCH_MOUNT_SECTIONS=${BENCH_MOUNT_SECTIONS:-mount integrity history}
BENCH_TOOLS=${BENCH_TOOLS:-restic borg}
BENCH_CACHE=${BENCH_CACHE:-cold}
BENCH_BUILD=${BENCH_BUILD:-1}
FLOOR_RUNS=${BENCH_FLOOR_RUNS:-3}
BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-60}
BENCH_IDLE_BUDGET=${BENCH_IDLE_BUDGET:-300}
BENCH_START_WAIT=${BENCH_START_WAIT:-300}
BENCH_REUSE=${BENCH_REUSE:-0}
MOUNT_CACHE=${BENCH_MOUNT_CACHE:-256M}
GC_FILES=${BENCH_GC_FILES:-10000}
GC_ROUNDS=10

if [[ $BENCH_QUICK == 1 ]]; then
    GEN_FILES=${BENCH_GEN_FILES:-5000}
    REAL_SRC=${BENCH_REAL_SRC:-/usr/share/man}
    BIG_MIB=${BENCH_BIG_MIB:-256}
    FIO_RUNTIME=${BENCH_FIO_RUNTIME:-10}
    HIST_SNAPS=${BENCH_HISTORY_SNAPSHOTS:-40}
    BENCH_SRC=$BENCH_DIR/src-quick
    MD=$BENCH_DIR/mount-quick
else
    GEN_FILES=${BENCH_GEN_FILES:-50000}
    REAL_SRC=${BENCH_REAL_SRC:-/usr/share}
    BIG_MIB=${BENCH_BIG_MIB:-1024}
    FIO_RUNTIME=${BENCH_FIO_RUNTIME:-20}
    HIST_SNAPS=${BENCH_HISTORY_SNAPSHOTS:-200}
    BENCH_SRC=$BENCH_DIR/src
    MD=$BENCH_DIR/mount
fi
BIG_BYTES=$((BIG_MIB * 1048576))

SRC=$MD/src
TREE=$SRC/tree                   # gen/ and the /usr/share copy side by side
BIG=$SRC/big/data.bin
GCTREE=$SRC/gctree
REPOS=$MD/repos
CACHES=$MD/cache
LOGS=$MD/logs
MNT=$MD/mnt
OUT=$MD/out
BIN=$MD/bin
SNAPFS=$ROOT/target/release/snapfs
BARE=$ROOT/target/release/examples/bare_fuse
TSV=$BENCH_OUT/mount-results.tsv
REPORT=$BENCH_OUT/mount-results.md

export RESTIC_PASSWORD=snapfs-bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR=$CACHES/borg
export RESTIC_CACHE_DIR=$CACHES/restic
export LC_ALL=C

log() { printf '[bench-mount %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shared helpers: the generated data set, cache dropping, idle waiting
. "$ROOT/scripts/bench_lib.sh"

have_tool() { [[ $1 == snapfs || " $BENCH_TOOLS " == *" $1 "* ]]; }
TOOLS="snapfs"
for t in restic borg; do if have_tool "$t"; then TOOLS+=" $t"; fi; done

# --------------------------------------------------------------------------
# prerequisites

ensure_packages() {
    install_missing restic:restic borg:borgbackup fio:fio /usr/bin/time:time perl:perl \
        fusermount3:fuse3 mountpoint:util-linux
    # borg mount needs llfuse (or pyfuse3) for the python that runs borg
    if have_tool borg && ! /usr/bin/python3 -c 'import llfuse' 2>/dev/null \
        && ! /usr/bin/python3 -c 'import pyfuse3' 2>/dev/null; then
        install_packages python3-llfuse
    fi
}

# Build snapfs and the bare FUSE example, and run private copies (a rebuild
# by someone else during the run must not change the binaries).
ensure_snapfs() {
    mkdir -p "$BIN"
    if [[ -n ${BENCH_REV:-} ]]; then
        local rev build=$MD/build
        rev=$(cd "$ROOT" && git rev-parse --short "$BENCH_REV") || die "no revision $BENCH_REV"
        log "building snapfs $rev in $build"
        rm -rf "$build"; mkdir -p "$build"
        (cd "$ROOT" && git archive "$rev") | tar -x -C "$build"
        (cd "$build" && CARGO_TARGET_DIR=$BENCH_DIR/target cargo build --release --quiet \
            --bin snapfs --example bare_fuse) || die "snapfs $rev does not build"
        SNAPFS=$BENCH_DIR/target/release/snapfs
        BARE=$BENCH_DIR/target/release/examples/bare_fuse
        SNAPFS_VERSION=$rev
    else
        if [[ $BENCH_BUILD != 0 ]]; then
            log "cargo build --release (snapfs and the bare_fuse example)"
            (cd "$ROOT" && cargo build --release --quiet --bin snapfs --example bare_fuse) \
                || die "snapfs does not build"
        fi
        SNAPFS_VERSION=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '(no commit)')
        if [[ -n $(cd "$ROOT" && git status --porcelain -- src examples Cargo.toml Cargo.lock 2>/dev/null) ]]; then
            SNAPFS_VERSION+=" + uncommitted changes"
        fi
    fi
    [[ -x $SNAPFS ]] || die "$SNAPFS missing"
    [[ -x $BARE ]] || die "$BARE missing (cargo build --release --example bare_fuse)"
    cp "$SNAPFS" "$BIN/snapfs"; SNAPFS=$BIN/snapfs
    cp "$BARE" "$BIN/bare_fuse"; BARE=$BIN/bare_fuse
}
SNAPFS_VERSION="(not measured)"


# --------------------------------------------------------------------------
# measuring (as in bench.sh)

load1() { cut -d' ' -f1 /proc/loadavg; }
# CPU ticks of the running mount's process (ACTIVE_PID): its work serves the
# timed command, so it is not counted as others' CPU
mount_ticks() {
    if [[ -n ${ACTIVE_PID:-} ]]; then awk '{ print $14 + $15 }' "/proc/$ACTIVE_PID/stat" 2>/dev/null || echo 0
    else echo 0; fi
}


# Load seen by the timed commands: 1-minute load averages, and the CPU
# seconds others used against the wall seconds measured.
LOADS=()
OTHER_SUM=0
WALL_SUM=0
note_load() {
    LOADS+=("$(load1)")
    OTHER_SUM=$(awk -v a="$OTHER_SUM" -v b="$1" 'BEGIN { print a + b }')
    WALL_SUM=$(awk -v a="$WALL_SUM" -v b="$2" 'BEGIN { print a + b }')
}

# timeit LABEL CMD...: run CMD (cold cache unless KEEP_CACHE=1 or
# BENCH_CACHE=warm, ending with `sync`); sets T_WALL (s), T_CPU, T_RSS
# (peak RSS of the largest process, KiB), T_RC, T_OTHER (CPU seconds other
# processes used meanwhile, the running mount's own excepted). Output in
# $LOGS/LABEL.log.
timeit() {
    local label=$1; shift
    local logf=$LOGS/$label.log tf=$LOGS/$label.time t0 t1 u s b0 b1 m0 m1
    wait_idle
    drop_caches
    b0=$(busy_ticks); m0=$(mount_ticks)
    t0=$(date +%s%N)
    T_RC=0
    /usr/bin/time -f '%M %U %S' -o "$tf" \
        bash -c '"$@"; rc=$?; sync; exit $rc' bench "$@" >"$logf" 2>&1 || T_RC=$?
    t1=$(date +%s%N)
    b1=$(busy_ticks); m1=$(mount_ticks)
    T_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    read -r T_RSS u s < <(tail -n 1 "$tf")
    T_CPU=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
    T_OTHER=$(awk -v d="$((b1 - b0 - (m1 - m0)))" -v hz="$CLK_TCK" -v c="$T_CPU" \
        'BEGIN { o = d / hz - c; printf "%.1f", o < 0 ? 0 : o }')
    note_load "$T_OTHER" "$T_WALL"
}


# mstime LABEL CMD...: for commands of milliseconds: no final sync, no
# /usr/bin/time; sets T_MS (milliseconds, 1 decimal), T_RC, T_OTHER.
mstime() {
    local label=$1 t0 t1 b0 b1 m0 m1; shift
    wait_idle
    drop_caches
    b0=$(busy_ticks); m0=$(mount_ticks)
    T_RC=0
    t0=$(date +%s%N)
    "$@" >"$LOGS/$label.log" 2>&1 || T_RC=$?
    t1=$(date +%s%N)
    b1=$(busy_ticks); m1=$(mount_ticks)
    T_MS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e6 }')
    T_WALL=$(awk -v m="$T_MS" 'BEGIN { printf "%.3f", m / 1000 }')
    T_OTHER=$(awk -v d="$((b1 - b0 - (m1 - m0)))" -v hz="$CLK_TCK" 'BEGIN { printf "%.1f", d / hz }')
    T_CPU="" T_RSS=""
    note_load "$T_OTHER" "$T_WALL"
}

# Results: R[key]=value; the TSV keeps every row with its timings. A value
# measured while others used more than a quarter of a core gets a "†".
declare -A R=()
declare -A DIST=()
put() {   # put KEY VALUE UNIT [NOTE]  (uses the T_* values of the last timing)
    local key=$1 val=$2 unit=$3 note=${4:-}
    R[$key]=$val
    if awk -v o="${T_OTHER:-0}" -v w="${T_WALL:-0}" 'BEGIN { exit !(w > 0 && o / w > 0.25) }'; then
        DIST[$key]="†"
    else
        DIST[$key]=""
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$key" "$val" "$unit" "${T_WALL:-}" \
        "${T_CPU:-}" "${T_RSS:-}" "${T_OTHER:-}" "${T_RC:-}" "$note" >>"$TSV"
    log "$key = $val $unit${note:+ ($note)} [wall ${T_WALL:-}s other ${T_OTHER:-}s rc ${T_RC:-}]"
}
putv() { local T_WALL="" T_CPU="" T_RSS="" T_OTHER="" T_RC=""; put "$@"; }   # a derived value
get() { if [[ -n ${R[$1]:-} ]]; then printf '%s%s' "${R[$1]}" "${DIST[$1]:-}"; else printf -- '–'; fi; }

note_of() { awk -F'\t' -v k="$1" '$1 == k { n = $9 } END { print n == "" ? "–" : n }' "$TSV"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print ""; else printf "%.2f", a / b }'; }
mbps() { awk -v b="$1" -v s="$2" 'BEGIN { if (s > 0) printf "%.0f", b / 1e6 / s; else print "" }'; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }
bytes_of() { if [[ -e $1 ]]; then du -sb "$1" | cut -f1; else echo 0; fi; }

# --------------------------------------------------------------------------
# mounts: every mount is started here, remembered, and unmounted at exit
# whatever happens

declare -A MPIDS=()
MPID=""
M_RSS=0
M_HWM=0

umount_one() {
    local mnt=$1 pid=${MPIDS[$1]:-} i
    if mountpoint -q "$mnt" 2>/dev/null; then
        for i in 1 2 3 4 5; do
            fusermount3 -u "$mnt" 2>/dev/null && break
            umount "$mnt" 2>/dev/null && break
            sleep 1
        done
        mountpoint -q "$mnt" 2>/dev/null && fusermount3 -u -z "$mnt" 2>/dev/null
    fi
    if [[ -n $pid ]]; then
        for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    unset "MPIDS[$mnt]"
}

cleanup() {
    local m
    for m in "${!MPIDS[@]}"; do umount_one "$m"; done
    restore_pristine
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# mount_start TOOL REPO MNTDIR: start the mount in the background (page cache
# dropped first unless KEEP_CACHE=1) and poll until `ls` of its root lists
# something; sets MPID and T_MS (process start to `ls` success).
mount_start() {
    local tool=$1 repo=$2 mnt=$3 t0 t1 label
    label=mount-$tool-$(basename "$mnt")
    mkdir -p "$mnt"
    mountpoint -q "$mnt" && die "$mnt is already mounted"
    drop_caches
    local cmd
    case $tool in
        snapfs) cmd=("$SNAPFS" --repo "$repo" mount --cache-size "$MOUNT_CACHE" "$mnt") ;;
        restic) cmd=(restic --repo "$repo" mount "$mnt") ;;
        borg) cmd=(borg mount -f "$repo" "$mnt") ;;
        bare) cmd=("$BARE" "$mnt" "$BIG_MIB") ;;
    esac
    t0=$(date +%s%N)
    "${cmd[@]}" >"$LOGS/$label.log" 2>&1 &
    MPID=$!
    MPIDS[$mnt]=$MPID
    ACTIVE_PID=$MPID
    until mountpoint -q "$mnt" 2>/dev/null && [[ -n $(ls -A "$mnt" 2>/dev/null) ]]; do
        kill -0 "$MPID" 2>/dev/null || { cat "$LOGS/$label.log" >&2; die "$tool mount exited: see $LOGS/$label.log"; }
        (( $(date +%s%N) - t0 < 300000000000 )) || die "$tool mount not ready after 300 s"
        sleep 0.002
    done
    t1=$(date +%s%N)
    T_MS=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) / 1e6 }')
}

# mount_stop MNTDIR: note the mount process's RSS (M_RSS, `ps -o rss`) and
# peak RSS (M_HWM, VmHWM), both KiB, then unmount
mount_stop() {
    local mnt=$1 pid=${MPIDS[$1]:-}
    M_RSS=0 M_HWM=0
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        M_RSS=$(ps -o rss= -p "$pid" | tr -d ' ')
        M_HWM=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    fi
    umount_one "$mnt"
    ACTIVE_PID=""
}

# snap_root TOOL MNTDIR NAME: the directory in the mount that holds the
# snapshot NAME's root (sources appear under it at their absolute paths)
snap_root() {
    local tool=$1 mnt=$2 name=$3 d
    case $tool in
        snapfs|borg) echo "$mnt/$name" ;;
        restic)
            d=$(ls "$mnt/snapshots" | grep -vx latest | tail -n 1)
            [[ -n $d ]] || die "restic mount lists no snapshot"
            echo "$mnt/snapshots/$d" ;;
    esac
}

# --------------------------------------------------------------------------
# data: the tree (bench.sh's generated tree and its /usr/share copy side by
# side), the big file and the gc tree, under $SRC; a .done file records how
# each was made

# The generator of bench.sh (same seed, same output).

# bench.sh's source NAME is usable if made by the same recipe and not in
# the middle of a change phase
bench_source_ok() {
    local name=$1 recipe=$2
    [[ -f $BENCH_SRC/.$name.done && $(cat "$BENCH_SRC/.$name.done") == "$recipe" \
        && ! -e $BENCH_SRC/.$name.pristine.tar ]]
}

ensure_tree() {
    local recipe="tree v1 gen=$GEN_FILES real=$REAL_SRC" done=$SRC/.tree.done
    restore_pristine
    if [[ -f $done && $(cat "$done") == "$recipe" ]]; then return 0; fi
    log "making the tree ($recipe)"
    rm -f "$done"; rm -rf "$TREE"; mkdir -p "$TREE"
    if bench_source_ok gen "gen v1 files=$GEN_FILES"; then
        cp -a "$BENCH_SRC/gen" "$TREE/gen"
    else
        make_gen "$TREE/gen" "$GEN_FILES"
    fi
    if bench_source_ok real "real v1 from=$REAL_SRC" && [[ -d $BENCH_SRC/real/$(basename "$REAL_SRC") ]]; then
        cp -a "$BENCH_SRC/real/$(basename "$REAL_SRC")" "$TREE/"
    else
        cp -a "$REAL_SRC" "$TREE/"
    fi
    echo "$recipe" >"$done"
}

# bench.sh's big file: regular files under /usr/lib, /usr/bin, /usr/share in
# sorted path order, concatenated, cut at BIG_MIB
ensure_big() {
    local recipe="big v1 mib=$BIG_MIB" done=$SRC/.big.done f
    if [[ -f $done && $(cat "$done") == "$recipe" ]]; then return 0; fi
    log "making the big file ($recipe)"
    rm -f "$done"; mkdir -p "$(dirname "$BIG")"
    for f in "$BENCH_SRC/big-store/orig.bin" "$BENCH_SRC/big/data.bin"; do
        if bench_source_ok big "$recipe" && [[ -f $f && $(stat -c %s "$f") -eq $BIG_BYTES ]]; then
            cp "$f" "$BIG" && break
        fi
    done
    if [[ ! -f $BIG || $(stat -c %s "$BIG") -ne $BIG_BYTES ]]; then
        { find /usr/lib /usr/bin /usr/share -xdev -type f -size +0 -print0 2>/dev/null \
            | sort -z | xargs -0 cat 2>/dev/null || true; } | head -c "$BIG_BYTES" >"$BIG" || true
        [[ $(stat -c %s "$BIG") -eq $BIG_BYTES ]] || die "could not collect $BIG_MIB MiB of data"
    fi
    echo "$recipe" >"$done"
}

# The history build changes a few files of the tree; the originals are
# saved first and put back here (at the end, at exit, or at the next run).
restore_pristine() {
    local tarf=$SRC/.tree.pristine.tar
    if [[ -f $tarf ]]; then
        tar -xpf "$tarf" -P
        rm -f "$tarf"
    fi
}

tree_stats() {   # files and bytes of a tree
    find "$1" -type f -printf '%s\n' | awk '{ n++; b += $1 } END { print n + 0, b + 0 }'
}

# --------------------------------------------------------------------------
# repositories

tool_init() {
    local tool=$1 repo=$2
    rm -rf "$repo"; mkdir -p "$(dirname "$repo")"
    case $tool in
        snapfs) "$SNAPFS" --repo "$repo" init --encryption none ;;
        restic) restic --repo "$repo" init --repository-version 2 ;;
        borg) borg init --encryption none "$repo" ;;
    esac >"$LOGS/init-$tool.log" 2>&1 || die "init $tool failed: see $LOGS/init-$tool.log"
}

# ingest TOOL REPO NAME SRC...: untimed (setup); exit codes that still mean
# "snapshot made" pass
ingest() {
    local tool=$1 repo=$2 name=$3 rc=0; shift 3
    case $tool in
        snapfs) "$SNAPFS" -q --repo "$repo" ingest --name "$name" "$@" ;;
        restic) restic -q --repo "$repo" backup --host bench --compression auto "$@" ;;
        borg) borg create --compression zstd,3 "$repo::$name" "$@" ;;
    esac >>"$LOGS/ingest-$tool-$(basename "$repo").log" 2>&1 || rc=$?
    case $tool:$rc in
        *:0|snapfs:3|restic:3|borg:1) ;;
        *) die "$tool ingest into $repo failed (exit $rc): see $LOGS/ingest-$tool-$(basename "$repo").log" ;;
    esac
}

# make_repo TOOL REPO NAME SRC: one snapshot of SRC, unless BENCH_REUSE=1
# and an earlier run made it from the same source with the same snapfs
declare -A MADE=()
make_repo() {
    local tool=$1 repo=$2 name=$3 src=$4 recipe t0
    recipe="$tool $name $src $(cat "$SRC/.$name.done") snapfs=$(sha256sum "$SNAPFS" | cut -c1-16)"
    if [[ $BENCH_REUSE == 1 && -f $repo.done && $(cat "$repo.done") == "$recipe" ]]; then
        log "reusing $repo"
        MADE[$repo]=1
        return 0
    fi
    rm -f "$repo.done"
    t0=$SECONDS
    tool_init "$tool" "$repo"
    ingest "$tool" "$repo" "$name" "$src"
    log "$tool: $name ingested in $((SECONDS - t0)) s (untimed setup)"
    echo "$recipe" >"$repo.done"
    MADE[$repo]=1
}

# --------------------------------------------------------------------------
# section: mount

tree_ops() {   # the tree through every tool's mount, and on ext4
    local tool repo root n
    # ext4 floors
    timeit_best "$FLOOR_RUNS" tree-find-ext4 bash -c 'find "$1" | wc -l' bench "$TREE"
    put tree.find.ext4 "$T_WALL" s "$(cat "$LOGS/tree-find-ext4.log") lines"
    BEST_SETUP="rm -rf '$OUT' && mkdir -p '$OUT'"
    timeit_best "$FLOOR_RUNS" tree-cp-ext4 cp -a "$TREE" "$OUT/"
    BEST_SETUP=""
    put tree.cp.ext4 "$T_WALL" s
    timeit_best "$FLOOR_RUNS" tree-tar-ext4 bash -c 'tar -cf - "$1" 2>/dev/null | cat >/dev/null' bench "$TREE"
    put tree.tar.ext4 "$T_WALL" s

    for tool in $TOOLS; do
        repo=$REPOS/tree-$tool
        # 1. first ls and find, on one fresh mount
        mount_start "$tool" "$repo" "$MNT/$tool"
        T_WALL=$(awk -v m="$T_MS" 'BEGIN { print m / 1000 }') T_OTHER="" T_RC=0 T_CPU="" T_RSS=""
        put tree.firstls.$tool "$T_MS" ms "process start to ls of the root"
        root=$(snap_root "$tool" "$MNT/$tool" tree)
        timeit tree-find-$tool bash -c 'find "$1" | wc -l' bench "$root$TREE"
        n=$(cat "$LOGS/tree-find-$tool.log")
        put tree.find.$tool "$T_WALL" s "$n lines"
        mount_stop "$MNT/$tool"

        # 2. cp -a of the whole snapshot out of a fresh mount
        rm -rf "$OUT"; mkdir -p "$OUT"
        mount_start "$tool" "$repo" "$MNT/$tool"
        root=$(snap_root "$tool" "$MNT/$tool" tree)
        timeit tree-cp-$tool cp -a "$root$TREE" "$OUT/"
        n=$(find "$OUT" -type f | wc -l)
        put tree.cp.$tool "$T_WALL" s "$n files copied, exit $T_RC"
        mount_stop "$MNT/$tool"
        putv tree.rss.$tool "$((M_RSS / 1024))" MiB "after cp -a of the whole tree; peak $((M_HWM / 1024)) MiB"
        putv tree.hwm.$tool "$((M_HWM / 1024))" MiB

        # 3. tar through a fresh mount
        mount_start "$tool" "$repo" "$MNT/$tool"
        root=$(snap_root "$tool" "$MNT/$tool" tree)
        timeit tree-tar-$tool bash -c 'tar -cf - "$1" 2>/dev/null | cat >/dev/null' bench "$root$TREE"
        put tree.tar.$tool "$T_WALL" s "exit $T_RC"
        mount_stop "$MNT/$tool"
    done

    # snapfs restore of the same snapshot, for the cp -a comparison
    rm -rf "$OUT"; mkdir -p "$OUT"
    timeit tree-restore-snapfs "$SNAPFS" --repo "$REPOS/tree-snapfs" restore tree "$OUT/restore"
    put tree.restore.snapfs "$T_WALL" s "$(find "$OUT" -type f | wc -l) files restored, exit $T_RC"
    rm -rf "$OUT"
}

dd_rate() {   # seconds dd reports in LOG → MB/s of BIG_BYTES
    local s
    s=$(awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") print $(i - 1) }' "$1" | tail -n 1)
    [[ -n $s ]] && mbps "$BIG_BYTES" "$s"
}

fio_iops() {   # fio FILE LABEL: sets IOPS
    local file=$1 label=$2
    # fio splits --filename at colons (restic's snapshot names have some)
    timeit "$label" fio --name=r --filename="${file//:/\\:}" --rw=randread --bs=4k --size="${BIG_MIB}M" \
        --runtime="$FIO_RUNTIME" --time_based --ioengine=psync --direct=0 --invalidate=1 \
        --readonly --output-format=json --output="$LOGS/$label.json"
    IOPS=$(perl -MJSON::PP -e 'local $/; open my $f, "<", $ARGV[0] or exit 1; my $t = <$f>;
        $t =~ s/^[^{]*//; printf "%.0f", decode_json($t)->{jobs}[0]{read}{iops}' "$LOGS/$label.json") || IOPS=""
}

big_ops() {
    local tool repo root file v rss=0 hwm=0
    # ext4: cold, then from the page cache; random reads
    local i best=0
    for ((i = 1; i <= FLOOR_RUNS; i++)); do   # the best of FLOOR_RUNS
        timeit big-dd-ext4 dd if="$BIG" of=/dev/null bs=1M
        v=$(dd_rate "$LOGS/big-dd-ext4.log")
        if [[ ${v:-0} -gt $best ]]; then best=$v; fi
    done
    put big.seq.ext4 "$best" MB/s "cold page cache, best of $FLOOR_RUNS"
    KEEP_CACHE=1 timeit big-ddwarm-ext4 dd if="$BIG" of=/dev/null bs=1M
    put big.seqwarm.ext4 "$(dd_rate "$LOGS/big-ddwarm-ext4.log")" MB/s "file in the page cache"
    fio_iops "$BIG" big-fio-ext4
    put big.rand.ext4 "$IOPS" IOPS

    # the ceiling: a bare fuser filesystem serving the bytes from memory
    mount_start bare "" "$MNT/bare"
    timeit big-dd-bare dd if="$MNT/bare/data" of=/dev/null bs=1M
    put big.seq.bare "$(dd_rate "$LOGS/big-dd-bare.log")" MB/s "first read, served from memory"
    fio_iops "$MNT/bare/data" big-fio-bare
    put big.rand.bare "$IOPS" IOPS
    mount_stop "$MNT/bare"

    for tool in $TOOLS; do
        repo=$REPOS/big-$tool
        # cold: page cache dropped, fresh mount
        mount_start "$tool" "$repo" "$MNT/$tool"
        root=$(snap_root "$tool" "$MNT/$tool" big)
        file=$root$BIG
        timeit big-dd-$tool dd if="$file" of=/dev/null bs=1M
        put big.seq.$tool "$(dd_rate "$LOGS/big-dd-$tool.log")" MB/s "exit $T_RC"
        mount_stop "$MNT/$tool"
        rss=$M_RSS hwm=$M_HWM
        # warm repository: its files in the page cache, fresh mount
        find "$repo" -type f -exec cat {} + >/dev/null
        KEEP_CACHE=1 mount_start "$tool" "$repo" "$MNT/$tool"
        root=$(snap_root "$tool" "$MNT/$tool" big)
        KEEP_CACHE=1 timeit big-ddwarm-$tool dd if="$root$BIG" of=/dev/null bs=1M
        put big.seqwarm.$tool "$(dd_rate "$LOGS/big-ddwarm-$tool.log")" MB/s "repository in the page cache, fresh mount"
        mount_stop "$MNT/$tool"
        # random 4 KiB reads: cold, fresh mount
        mount_start "$tool" "$repo" "$MNT/$tool"
        root=$(snap_root "$tool" "$MNT/$tool" big)
        fio_iops "$root$BIG" big-fio-$tool
        put big.rand.$tool "$IOPS" IOPS "exit $T_RC"
        mount_stop "$MNT/$tool"
        [[ $M_RSS -gt $rss ]] && rss=$M_RSS
        [[ $M_HWM -gt $hwm ]] && hwm=$M_HWM
        putv big.rss.$tool "$((rss / 1024))" MiB "after dd of the whole file / after fio; peak $((hwm / 1024)) MiB"
        putv big.hwm.$tool "$((hwm / 1024))" MiB
    done
}

section_mount() {
    local tool
    log "=== mount"
    for tool in $TOOLS; do
        make_repo "$tool" "$REPOS/tree-$tool" tree "$TREE"
        make_repo "$tool" "$REPOS/big-$tool" big "$BIG"
    done
    tree_ops
    big_ops
}

# --------------------------------------------------------------------------
# section: integrity (verify --read-data, gc)

# Rewrite a tenth of the gc tree's files (a different tenth each round) with
# new text of the same size: each round leaves data only its snapshots hold.
change_gc_tree() {
    local round=$1
    find "$GCTREE" -type f | sort | perl -e '
        my $round = shift; srand(1000 + $round);
        my @w = map { join "", map { chr(97 + int rand 26) } 1 .. 2 + int rand 9 } 1 .. 2048;
        my $i = 0;
        while (my $f = <STDIN>) {
            chomp $f;
            next unless $i++ % 10 == $round % 10;
            my $size = -s $f; my $t = "";
            $t .= $w[int rand @w] . (rand() < 0.1 ? ".\n" : " ") while length($t) < $size;
            open my $fh, ">", $f or die "$f: $!"; print $fh substr($t, 0, $size); close $fh or die;
        }' "$round"
}

section_integrity() {
    local tool repo set data before after label
    log "=== integrity"
    for set in tree big; do
        for tool in snapfs restic; do
            have_tool "$tool" || continue
            repo=$REPOS/$set-$tool
            [[ -n ${MADE[$repo]:-} ]] || make_repo "$tool" "$repo" "$set" "$([[ $set == tree ]] && echo "$TREE" || echo "$BIG")"
            case $tool in
                snapfs) data=$(bytes_of "$repo/packs")
                        timeit verify-$set-snapfs "$SNAPFS" --repo "$repo" verify --read-data ;;
                restic) data=$(bytes_of "$repo/data")
                        timeit verify-$set-restic restic --repo "$repo" check --read-data ;;
            esac
            put verify.$set.$tool "$T_WALL" s "$(mib "$data") MiB of packs, exit $T_RC"
            putv verify.$set.$tool.mbps "$(mbps "$data" "$T_WALL")" MB/s
        done
    done

    # gc: ~10 snapshots of a changing tree, forget the older half
    local recipe="gctree v1 files=$GC_FILES"
    log "making the gc repositories ($GC_ROUNDS snapshots of $GC_FILES files, a tenth rewritten each time)"
    make_gen "$GCTREE" "$GC_FILES"
    for tool in $TOOLS; do tool_init "$tool" "$REPOS/gc-$tool"; done
    local r keep=$((GC_ROUNDS / 2))
    for ((r = 1; r <= GC_ROUNDS; r++)); do
        [[ $r -eq 1 ]] || change_gc_tree "$r"
        for tool in $TOOLS; do ingest "$tool" "$REPOS/gc-$tool" "gc$r" "$GCTREE"; done
    done
    putv gc.repo "$recipe, $GC_ROUNDS snapshots" ""
    for tool in $TOOLS; do
        repo=$REPOS/gc-$tool
        before=$(bytes_of "$repo")
        case $tool in
            snapfs)
                timeit gc-forget-snapfs "$SNAPFS" --repo "$repo" forget --keep-last "$keep"
                put gc.forget.snapfs "$T_WALL" s "exit $T_RC"
                timeit gc-gc-snapfs "$SNAPFS" --repo "$repo" gc
                label=gc.gc.snapfs ;;
            restic)
                timeit gc-restic restic --repo "$repo" forget --keep-last "$keep" --prune
                label=gc.gc.restic ;;
            borg)
                timeit gc-borg bash -c 'borg prune --keep-last "$2" "$1" && borg compact "$1"' bench "$repo" "$keep"
                label=gc.gc.borg ;;
        esac
        after=$(bytes_of "$repo")
        put "$label" "$T_WALL" s "exit $T_RC"
        putv "$label.freed" "$(mib $((before - after)))" MiB "$(mib "$before") → $(mib "$after") MiB"
    done
    rm -rf "$GCTREE"
}

# --------------------------------------------------------------------------
# section: history (snapfs only)

section_history() {
    local repo=$REPOS/hist-snapfs target pool=() i k t0 n
    log "=== history"
    # the file whose history is listed: a CSV of the generated tree; a pool
    # of 40 other files of which three change in every snapshot
    target=$(find "$TREE/gen" -name '*.csv' | sort | sed -n 10p)
    mapfile -t pool < <(find "$TREE" -type f -size +0 | sort | awk 'NR % 997 == 1' | head -n 40)
    [[ -n $target && ${#pool[@]} -gt 3 ]] || die "no files to change in $TREE"
    local recipe="hist v1 snaps=$HIST_SNAPS target=$target $(cat "$SRC/.tree.done") snapfs=$(sha256sum "$SNAPFS" | cut -c1-16)"
    if [[ $BENCH_REUSE == 1 && -f $repo.done && $(cat "$repo.done") == "$recipe" ]]; then
        log "reusing $repo"
    else
        rm -f "$repo.done"
        tar -cf "$SRC/.tree.pristine.tar" -P "$target" "${pool[@]}"
        tool_init snapfs "$repo"
        t0=$SECONDS
        log "ingesting $HIST_SNAPS snapshots (the tree, then a few files changed each time)"
        for ((i = 0; i < HIST_SNAPS; i++)); do
            if [[ $i -gt 0 ]]; then
                for k in 0 1 2; do
                    printf 'history change %d\n' "$i" >>"${pool[$(((i * 3 + k) % ${#pool[@]}))]}"
                done
                touch "${pool[$(((i * 7) % ${#pool[@]}))]}"
                if [[ $((i % 10)) -eq 5 ]]; then printf 'target change %d\n' "$i" >>"$target"; fi
            fi
            ingest snapfs "$repo" "$(printf 'h%04d' "$i")" "$TREE"
            if [[ $((i % 20)) -eq 19 ]]; then log "  $((i + 1)) snapshots, $((SECONDS - t0)) s"; fi
        done
        n=$((SECONDS - t0))
        restore_pristine
        echo "$recipe" >"$repo.done"
        T_WALL=$n T_OTHER="" T_CPU="" T_RSS="" T_RC=0
        put hist.build "$n" s "$HIST_SNAPS snapshots, $(awk -v n="$n" -v s="$HIST_SNAPS" 'BEGIN { printf "%.2f", n / s }') s per ingest"
    fi
    putv hist.repo "$(mib "$(bytes_of "$repo")")" MiB "catalog $(mib "$(bytes_of "$repo/catalog.db")") MiB"
    putv hist.target "$target" ""

    # first ls of the root and ls of history/<target>/, on a fresh mount
    mount_start snapfs "$repo" "$MNT/hist"
    T_WALL=$(awk -v m="$T_MS" 'BEGIN { print m / 1000 }') T_OTHER="" T_RC=0 T_CPU="" T_RSS=""
    put hist.firstls "$T_MS" ms "$HIST_SNAPS snapshots"
    mstime hist-ls ls "$MNT/hist/history$target/"
    put hist.ls "$T_MS" ms "$(wc -l <"$LOGS/hist-ls.log") versions listed, exit $T_RC"
    KEEP_CACHE=1 mstime hist-ls-again ls "$MNT/hist/history$target/"
    put hist.ls.again "$T_MS" ms "second ls"
    mstime hist-lsdir ls "$MNT/hist/history$(dirname "$target")/"
    put hist.lsdir "$T_MS" ms "$(wc -l <"$LOGS/hist-lsdir.log") names (union over all snapshots)"
    mount_stop "$MNT/hist"

    mstime hist-log "$SNAPFS" --repo "$repo" log "$target"
    put hist.log "$T_MS" ms "$(wc -l <"$LOGS/hist-log.log") lines, exit $T_RC"
    timeit hist-find "$SNAPFS" --repo "$repo" find 'f001*.csv'
    put hist.find "$T_WALL" s "$(grep -c . "$LOGS/hist-find.log") lines, exit $T_RC"
    putv hist.find.rss "$((T_RSS / 1024))" MiB
    timeit hist-findall "$SNAPFS" --repo "$repo" find '*.csv'
    put hist.findall "$T_WALL" s "$(grep -c . "$LOGS/hist-findall.log") lines, exit $T_RC"
    putv hist.findall.rss "$((T_RSS / 1024))" MiB
}

# --------------------------------------------------------------------------
# report

verdict() { if awk "BEGIN { exit !($1) }"; then echo yes; else echo '**no**'; fi; }

report() {
    local tf tb bf bb loads tool
    read -r tf tb < <(tree_stats "$TREE")
    loads=$(printf '%s\n' "${LOADS[@]:-0}" | sort -g | awk '{ a[NR] = $1 } END { printf "%s–%s", a[1], a[NR] }')
    cat <<EOF
# snapfs mount, integrity and history benchmark

- date: $(date -u '+%Y-%m-%d %H:%M UTC')
- machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), $(df -T "$MD" | awk 'NR == 2 { print $2 }') under $MD
- snapfs $SNAPFS_VERSION (mount --cache-size $MOUNT_CACHE), $(restic version | cut -d' ' -f1-2), $(borg --version), fio $(fio --version)
- cache: $BENCH_CACHE$([[ $BENCH_CACHE == cold ]] && echo " (page cache dropped before every timed command and every mount, unless said otherwise)")
- load: 1-minute load average $loads during the timed commands; other processes used $(awk -v o="$OTHER_SUM" -v w="$WALL_SUM" 'BEGIN { printf "%.2f", (w > 0 ? o / w : 0) }') cores on average meanwhile (of $(nproc)); waited ${IDLE_WAITED} s for an idle machine. † = others used more than a quarter of a core during that measurement.
- mode: $([[ $BENCH_QUICK == 1 ]] && echo quick || echo full)
- tree: $tf files, $(mib "$tb") MiB ($GEN_FILES generated files and a copy of $REAL_SRC); big file: $BIG_MIB MiB of real data

## Mount: the tree

Each tool's measurements on a fresh mount, page cache dropped first; ext4
floors are the best of $FLOOR_RUNS runs.

| operation | ext4 | snapfs | restic | borg | snapfs ÷ ext4 | snapfs ÷ best peer |
|---|---:|---:|---:|---:|---:|---:|
EOF
    local op best p
    for op in firstls find cp tar; do
        best=""
        for p in restic borg; do
            [[ -n ${R[tree.$op.$p]:-} ]] || continue
            if [[ -z $best ]] || awk -v a="${R[tree.$op.$p]}" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=${R[tree.$op.$p]}; fi
        done
        case $op in
            firstls) printf '| first `ls` of the mount root (ms) ' ;;
            find) printf '| `find` of the snapshot, s ' ;;
            cp) printf '| `cp -a` of the snapshot out, s ' ;;
            tar) printf '| `tar -cf - \| cat`, s ' ;;
        esac
        printf '| %s | %s | %s | %s | %s | %s |\n' "$(get tree.$op.ext4)" "$(get tree.$op.snapfs)" \
            "$(get tree.$op.restic)" "$(get tree.$op.borg)" \
            "$(ratio "${R[tree.$op.snapfs]:-}" "${R[tree.$op.ext4]:-}")" "$(ratio "${R[tree.$op.snapfs]:-}" "$best")"
    done
    printf '| `snapfs restore` of the snapshot, s |  | %s |  |  | %s |  |\n' "$(get tree.restore.snapfs)" \
        "$(ratio "${R[tree.restore.snapfs]:-}" "${R[tree.cp.ext4]:-}")"
    printf '| mount RSS after `cp -a`, MiB (peak) |  | %s (%s) | %s (%s) | %s (%s) |  |  |\n' \
        "$(get tree.rss.snapfs)" "$(get tree.hwm.snapfs)" "$(get tree.rss.restic)" "$(get tree.hwm.restic)" \
        "$(get tree.rss.borg)" "$(get tree.hwm.borg)"
    printf '\nEntries `find` listed: ext4 %s, snapfs %s, restic %s, borg %s. Files `cp -a` copied: snapfs %s, restic %s, borg %s.\n' \
        "$(note_of tree.find.ext4)" "$(note_of tree.find.snapfs)" "$(note_of tree.find.restic)" "$(note_of tree.find.borg)" \
        "$(note_of tree.cp.snapfs)" "$(note_of tree.cp.restic)" "$(note_of tree.cp.borg)"

    cat <<EOF

## Mount: the ${BIG_MIB} MiB file

Sequential: \`dd bs=1M\` to /dev/null (MB/s as dd reports them). Cold =
page cache dropped, fresh mount; warm repository = the repository's files
read into the page cache first, then a fresh mount. Random: \`fio
--rw=randread --bs=4k --ioengine=psync --invalidate=1\`, ${FIO_RUNTIME} s,
fresh mount, cold. Bare FUSE = \`examples/bare_fuse\` serving the bytes from
memory on the same fuser settings (this kernel's ceiling).

| operation | ext4 | bare FUSE | snapfs | restic | borg | snapfs ÷ bare | snapfs ÷ best peer |
|---|---:|---:|---:|---:|---:|---:|---:|
EOF
    for op in seq seqwarm rand; do
        best=""
        for p in restic borg; do
            [[ -n ${R[big.$op.$p]:-} ]] || continue
            if [[ -z $best ]] || awk -v a="${R[big.$op.$p]}" -v b="$best" 'BEGIN { exit !(a > b) }'; then best=${R[big.$op.$p]}; fi
        done
        case $op in
            seq) printf '| sequential, cold, MB/s ' ;;
            seqwarm) printf '| sequential, warm repository, MB/s (ext4: page cache) ' ;;
            rand) printf '| random 4 KiB reads, IOPS ' ;;
        esac
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$(get big.$op.ext4)" "$(get big.$op.bare)" \
            "$(get big.$op.snapfs)" "$(get big.$op.restic)" "$(get big.$op.borg)" \
            "$(ratio "${R[big.$op.snapfs]:-}" "${R[big.$op.bare]:-}")" "$(ratio "${R[big.$op.snapfs]:-}" "$best")"
    done
    printf '| mount RSS after reading, MiB (peak) |  |  | %s (%s) | %s (%s) | %s (%s) |  |  |\n' \
        "$(get big.rss.snapfs)" "$(get big.hwm.snapfs)" "$(get big.rss.restic)" "$(get big.hwm.restic)" \
        "$(get big.rss.borg)" "$(get big.hwm.borg)"

    if [[ -n ${R[verify.tree.snapfs]:-}${R[gc.gc.snapfs]:-} ]]; then
        cat <<EOF

## Integrity

Reading and checking every stored byte (cold); MB/s = pack bytes on disk ÷
wall time.

| repository | snapfs \`verify --read-data\` s | MB/s | restic \`check --read-data\` s | MB/s | snapfs faster by |
|---|---:|---:|---:|---:|---:|
EOF
        for op in tree big; do
            printf '| %s | %s | %s | %s | %s | %s× |\n' "$op" "$(get verify.$op.snapfs)" "$(get verify.$op.snapfs.mbps)" \
                "$(get verify.$op.restic)" "$(get verify.$op.restic.mbps)" "$(ratio "${R[verify.$op.restic]:-}" "${R[verify.$op.snapfs]:-}")"
        done
        cat <<EOF

gc: $GC_ROUNDS snapshots of a generated tree of $GC_FILES files, a tenth of
them rewritten between snapshots; the $((GC_ROUNDS / 2)) oldest forgotten
(\`--keep-last $((GC_ROUNDS / 2))\`), then the space reclaimed.

| tool | command | wall s | freed MiB | repository MiB before → after |
|---|---|---:|---:|---|
| snapfs | \`forget --keep-last $((GC_ROUNDS / 2))\` | $(get gc.forget.snapfs) |  |  |
| snapfs | \`gc\` | $(get gc.gc.snapfs) | $(get gc.gc.snapfs.freed) | $(grep -P '^gc\.gc\.snapfs\.freed\t' "$TSV" | cut -f9) |
| restic | \`forget --keep-last $((GC_ROUNDS / 2)) --prune\` | $(get gc.gc.restic) | $(get gc.gc.restic.freed) | $(grep -P '^gc\.gc\.restic\.freed\t' "$TSV" | cut -f9) |
| borg | \`prune --keep-last $((GC_ROUNDS / 2))\` + \`compact\` | $(get gc.gc.borg) | $(get gc.gc.borg.freed) | $(grep -P '^gc\.gc\.borg\.freed\t' "$TSV" | cut -f9) |
EOF
    fi

    if [[ -n ${R[hist.log]:-} ]]; then
        cat <<EOF

## History

A snapfs repository of $HIST_SNAPS snapshots of the tree: the first, then
each after three files of a pool of 40 got a line appended and one more was
touched; the listed file (\`${R[hist.target]#$TREE/}\` under the tree)
changed in every tenth snapshot. Cold page cache, fresh mount.

| what | measured | target |
|---|---:|---|
| building: $HIST_SNAPS ingests | $(get hist.build) s ($(grep -P '^hist\.build\t' "$TSV" | cut -f9 | sed 's/.*, //')) |  |
| repository | $(get hist.repo) MiB ($(grep -P '^hist\.repo\t' "$TSV" | cut -f9)) |  |
| first \`ls\` of the mount root | $(get hist.firstls) ms | < 100 ms |
| \`ls MNT/history/<file>/\` | $(get hist.ls) ms ($(grep -P '^hist\.ls\t' "$TSV" | cut -f9 | sed 's/, exit 0//')) | < 100 ms |
| the same again | $(get hist.ls.again) ms |  |
| \`ls MNT/history/<its directory>/\` | $(get hist.lsdir) ms ($(grep -P '^hist\.lsdir\t' "$TSV" | cut -f9)) |  |
| \`snapfs log <file>\` | $(get hist.log) ms ($(grep -P '^hist\.log\t' "$TSV" | cut -f9 | sed 's/, exit 0//')) | < 100 ms |
| \`snapfs find 'f001*.csv'\` | $(get hist.find) s, peak RSS $(get hist.find.rss) MiB ($(grep -P '^hist\.find\t' "$TSV" | cut -f9 | sed 's/, exit 0//')) | seconds |
| \`snapfs find '*.csv'\` | $(get hist.findall) s, peak RSS $(get hist.findall.rss) MiB ($(grep -P '^hist\.findall\t' "$TSV" | cut -f9 | sed 's/, exit 0//')) | seconds |
EOF
    fi

    # the DESIGN targets
    local cache_mib rows="" s e b
    cache_mib=$(awk -v c="$MOUNT_CACHE" 'BEGIN { n = c + 0; u = toupper(substr(c, length(c)));
        if (u == "G") n *= 1024; else if (u == "K") n /= 1024; else if (u != "M") n /= 1048576; print n }')
    target_row() {   # WHAT TARGET VALUE CONDITION
        [[ $3 == *–* || -z $3 ]] && return 0
        rows+="| $1 | $2 | $3 | $(verdict "$4") |"$'\n'
    }
    peer_best() {   # KEY-PREFIX lower|higher → best peer value
        local k=$1 dir=$2 v="" p
        for p in restic borg; do
            [[ -n ${R[$k.$p]:-} ]] || continue
            if [[ -z $v ]] || awk -v a="${R[$k.$p]}" -v b="$v" -v d="$dir" 'BEGIN { exit !(d == "lower" ? a < b : a > b) }'; then v=${R[$k.$p]}; fi
        done
        echo "$v"
    }
    s=${R[tree.firstls.snapfs]:-}; [[ -n $s ]] && target_row "first \`ls\` after mount" "< 100 ms" "$s ms" "$s < 100"
    s=${R[hist.firstls]:-}; [[ -n $s ]] && target_row "first \`ls\`, $HIST_SNAPS-snapshot repository" "< 100 ms" "$s ms" "$s < 100"
    e=$(ratio "${R[tree.find.snapfs]:-}" "${R[tree.find.ext4]:-}"); [[ -n $e ]] && target_row "\`find\` vs ext4" "≤ 1.7×" "$e×" "$e <= 1.7"
    e=$(ratio "${R[tree.tar.snapfs]:-}" "${R[tree.tar.ext4]:-}"); [[ -n $e ]] && target_row "whole-tree read (tar) vs ext4" "≤ 1.2×" "$e×" "$e <= 1.2"
    e=$(ratio "${R[tree.cp.snapfs]:-}" "${R[tree.cp.ext4]:-}"); [[ -n $e ]] && target_row "whole-tree \`cp -a\` vs ext4" "≤ 1.2×" "$e×" "$e <= 1.2"
    e=$(ratio "${R[tree.cp.snapfs]:-}" "${R[tree.restore.snapfs]:-}"); [[ -n $e ]] && target_row "\`cp -a\` out of the mount vs \`snapfs restore\`" "≤ 1.3×" "$e×" "$e <= 1.3"
    s=${R[big.seq.snapfs]:-}; [[ -n $s ]] && target_row "sequential read, cold" "≥ 1000 MB/s" "$s MB/s" "$s >= 1000"
    e=$(ratio "$s" "${R[big.seq.bare]:-}"); [[ -n $e ]] && target_row "sequential read vs bare FUSE" "≥ 0.70" "$e" "$e >= 0.7"
    b=$(peer_best big.seq higher); e=$(ratio "$s" "$b"); [[ -n $e ]] && target_row "sequential read vs best peer" "≥ 2×" "$e×" "$e >= 2"
    s=${R[big.rand.snapfs]:-}; b=$(peer_best big.rand higher); e=$(ratio "$s" "$b")
    [[ -n $e ]] && target_row "random 4 KiB reads vs best peer" "≥ 10×" "$e× ($s vs $b IOPS)" "$e >= 10"
    for op in tree big; do
        s=${R[$op.rss.snapfs]:-}; b=${R[$op.hwm.snapfs]:-}
        [[ -n $s ]] && target_row "mount RSS after reading ($op; peak $b MiB)" "≤ cache + 50 = $((${cache_mib%.*} + 50)) MiB" "$s MiB" "$s <= $cache_mib + 50"
    done
    s=${R[hist.ls]:-}; [[ -n $s ]] && target_row "\`ls history/<file>/\`" "< 100 ms" "$s ms" "$s < 100"
    s=${R[hist.log]:-}; [[ -n $s ]] && target_row "\`snapfs log <file>\`" "< 100 ms" "$s ms" "$s < 100"
    s=${R[hist.find]:-}; [[ -n $s ]] && target_row "\`snapfs find\` over $HIST_SNAPS snapshots" "seconds (< 10 s)" "$s s" "$s < 10"
    if [[ -n $rows ]]; then
        printf '\n## Targets (DESIGN.md) for snapfs\n\n| what | target | measured | met |\n|---|---|---|---|\n%s' "$rows"
    fi
}

# --------------------------------------------------------------------------

main() {
    [[ $(id -u) -eq 0 ]] || die "run as root (FUSE mounts, dropping the page cache)"
    [[ -e /dev/fuse ]] || die "no /dev/fuse"
    ensure_packages
    mkdir -p "$MD" "$SRC" "$LOGS" "$MNT" "$BENCH_OUT" "$CACHES"
    ensure_snapfs
    local start=$SECONDS section
    # prefer a quiet machine: wait a while for the load to fall
    while awk -v l="$(load1)" 'BEGIN { exit !(l >= 1) }' && [[ $((SECONDS - start)) -lt $BENCH_START_WAIT ]]; do
        [[ $((SECONDS - start)) -eq 0 ]] && log "load $(load1): waiting up to $BENCH_START_WAIT s for it to fall below 1"
        sleep 10
    done
    log "starting at load $(cut -d' ' -f1-3 /proc/loadavg) after $((SECONDS - start)) s"
    : >"$TSV"
    ensure_tree
    ensure_big
    for section in $BENCH_MOUNT_SECTIONS; do
        declare -F "section_$section" >/dev/null || die "no section $section"
        "section_$section"
    done
    report | tee "$REPORT"
    log "done in $((SECONDS - start)) s (${IDLE_WAITED} s waiting for an idle machine); results in $REPORT (raw: $TSV, logs: $LOGS)"
}

main "$@"
