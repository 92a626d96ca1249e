#!/usr/bin/env bash
# How the repository grows with years of snapshots and millions of files:
# metadata bytes per snapshot (everything the repository and the catalog
# hold besides file data), repository bytes, ingest time and peak RSS,
# mount timings and rebuild-catalog time. A benchmark, not a test.
#
#   scripts/bench_scale.sh                    # every scenario (~1 h on 2 cores)
#   SCALE_QUICK=1 scripts/bench_scale.sh      # small versions, a few minutes
#   SCALE_SCENARIOS="b c" scripts/bench_scale.sh
#
# Scenarios:
#   a  five 20,000-file directories, 60 daily snapshots, each changing one
#      file in every directory and adding ten files in all
#   b  one 100,000-entry directory, 365 daily snapshots, one file changed and
#      one added each day; then the mount (first ls, ls -l of the directory
#      against ext4, stat warm, ls of a changed file's history) and
#      rebuild-catalog against the first ingest
#   c  a generated tree of 1,000,000 small files (1 B to 4 KiB): first
#      ingest (time, peak RSS), no-change re-ingest against a bare lstat
#      walk of the tree, catalog bytes per file
#   d  the ingest benchmark's real tree and big file against borg zstd,3:
#      runs scripts/bench.sh (ingest section, borg and snapfs) and reports
#      repository bytes
#
# Environment: SCALE_DIR (scratch, default /var/tmp/snapfs-scale),
# SCALE_OUT (results, default <project>/target/bench-scale), SCALE_QUICK,
# SCALE_SCENARIOS (default "a b c d"), SCALE_BUILD=0 to skip the build.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCALE_DIR=${SCALE_DIR:-/var/tmp/snapfs-scale}
SCALE_OUT=${SCALE_OUT:-$ROOT/target/bench-scale}
SCALE_QUICK=${SCALE_QUICK:-0}
SCALE_SCENARIOS=${SCALE_SCENARIOS:-a b c d}
SNAPFS=$ROOT/target/release/snapfs
TSV=$SCALE_OUT/results.tsv
LOGS=$SCALE_DIR/logs
BENCH_CACHE=${BENCH_CACHE:-cold}
BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-30}
BENCH_IDLE_BUDGET=${BENCH_IDLE_BUDGET:-600}

if [[ $SCALE_QUICK == 1 ]]; then
    A_FILES=2000 A_DAYS=10 B_FILES=10000 B_DAYS=30 C_FILES=100000
else
    A_FILES=20000 A_DAYS=60 B_FILES=100000 B_DAYS=365 C_FILES=1000000
fi

log() { printf '[bench-scale %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
. "$ROOT/scripts/bench_lib.sh"

# result SCENARIO MEASURE VALUE UNIT [NOTE]
result() {
    printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5:-}" >>"$TSV"
    log "$1: $2 = $3 $4 ${5:-}"
}

file_bytes() { stat -c %s "$1"; }

# The catalog's bytes, with its log.
catalog_bytes() { du -cb "$1"/catalog.db* 2>/dev/null | tail -1 | cut -f1; }

# Metadata bytes of a repository: the catalog (with its log) and what the
# packs hold besides file data.
meta_bytes() {
    local repo=$1 cat_bytes json packs data
    cat_bytes=$(catalog_bytes "$repo")
    json=$("$SNAPFS" --repo "$repo" stats --json)
    packs=$(jq -r .pack_bytes <<<"$json")
    data=$(jq -r .stored_data_bytes <<<"$json")
    echo $((cat_bytes + packs - data))
}

median() { sort -n | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print int((v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

ingest() {  # ingest REPO NAME SRC
    "$SNAPFS" --repo "$1" ingest --name "$2" "$3" >/dev/null
}

# ms LABEL CMD...: milliseconds of one run of CMD (warm: no cache drop)
ms() {
    local t0 t1; shift
    t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N)
    awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", (b - a) / 1e6 }'
}

scenario_a() {
    local src=$SCALE_DIR/a/src repo=$SCALE_DIR/a/repo growth=() cat_growth=() before after cat_before cat_after d i
    rm -rf "$SCALE_DIR/a"; mkdir -p "$src"
    for d in 1 2 3 4 5; do
        mkdir -p "$src/dir$d"
        (cd "$src/dir$d" && seq -f "file-%06g" 1 "$A_FILES" | xargs -n 1000 touch)
    done
    "$SNAPFS" --repo "$repo" init --encryption none >/dev/null
    ingest "$repo" day0 "$src"
    before=$(meta_bytes "$repo")
    cat_before=$(catalog_bytes "$repo")
    result a "metadata after the first snapshot" "$before" bytes "$((5 * A_FILES)) files"
    for ((i = 1; i <= A_DAYS; i++)); do
        for d in 1 2 3 4 5; do
            echo "day $i" >>"$src/dir$d/file-$(printf %06d $((i * 7 % A_FILES + 1)))"
            echo "new $i" >"$src/dir$d/new-$i-a"
            echo "new $i" >"$src/dir$d/new-$i-b"
        done
        ingest "$repo" "day$i" "$src"
        after=$(meta_bytes "$repo")
        cat_after=$(catalog_bytes "$repo")
        growth+=($((after - before)))
        cat_growth+=($((cat_after - cat_before)))
        before=$after cat_before=$cat_after
    done
    result a "median catalog growth per snapshot" "$(printf '%s\n' "${cat_growth[@]}" | median)" bytes "$A_DAYS snapshots; target <= 65536"
    result a "median metadata growth per snapshot (catalog and pages in packs)" "$(printf '%s\n' "${growth[@]}" | median)" bytes
    result a "repository bytes" "$(du -sb "$repo" | cut -f1)" bytes
}

scenario_b() {
    local src=$SCALE_DIR/b/src repo=$SCALE_DIR/b/repo dir i first mnt ext t
    # A mount a killed run left behind would otherwise be walked by rm.
    fusermount3 -u "$SCALE_DIR/b/mnt" 2>/dev/null || true
    rm -rf --one-file-system "$SCALE_DIR/b"; mkdir -p "$src/spool"
    dir=$src/spool
    (cd "$dir" && seq -f "msg-%07g" 1 "$B_FILES" | xargs -n 1000 touch)
    "$SNAPFS" --repo "$repo" init --encryption none >/dev/null
    timeit b-first-ingest "$SNAPFS" --repo "$repo" ingest --name day0 "$src"
    first=$T_WALL
    result b "first ingest" "$T_WALL" s "peak RSS $((T_RSS / 1024)) MiB"
    for ((i = 1; i <= B_DAYS; i++)); do
        echo "day $i" >>"$dir/msg-$(printf %07d $((i * 13 % B_FILES + 1)))"
        echo "new $i" >"$dir/new-$(printf %04d "$i")"
        ingest "$repo" "day$i" "$src"
    done
    result b "catalog after $B_DAYS snapshots" "$(catalog_bytes "$repo")" bytes "target <= 40 MB"
    result b "metadata after $B_DAYS snapshots" "$(meta_bytes "$repo")" bytes
    result b "repository bytes" "$(du -sb "$repo" | cut -f1)" bytes

    mnt=$SCALE_DIR/b/mnt; mkdir -p "$mnt"
    drop_caches
    "$SNAPFS" --repo "$repo" mount "$mnt" >"$LOGS/b-mount.log" 2>&1 &
    for _ in $(seq 100); do mountpoint -q "$mnt" && break; sleep 0.1; done
    mountpoint -q "$mnt" || die "mount did not come up"
    # shellcheck disable=SC2064 # the path is fixed now
    trap "fusermount3 -u '$mnt' 2>/dev/null || true" EXIT
    result b "first ls of the mount" "$(ms x ls "$mnt")" ms "target < 100"
    local shown=$mnt/latest$dir
    drop_caches
    t=$(ms x ls -l "$shown")
    drop_caches
    ext=$(ms x ls -l "$dir")
    result b "ls -l of the 100k directory" "$t" ms "ext4 ${ext} ms; ratio $(awk -v a="$t" -v b="$ext" 'BEGIN { printf "%.2f", a / b }'), target <= 1.5"
    stat "$shown/msg-0050000" >/dev/null 2>&1 || stat "$shown/msg-0000050" >/dev/null
    t=$(perl -MTime::HiRes=time -e '$f = shift; $t0 = time; for (1 .. 1000) { my @s = lstat($f) } printf "%.3f", (time - $t0);' "$shown/msg-0000050")
    result b "stat of one file, warm" "$t" "ms (mean of 1000)" "target < 1"
    local changed
    changed=$(printf 'msg-%07d' $((B_DAYS * 13 % B_FILES + 1)))
    drop_caches
    result b "ls history of a changed file" "$(ms x ls "$mnt/history$dir/$changed/")" ms "target < 100"
    fusermount3 -u "$mnt"; wait || true
    trap - EXIT

    timeit b-rebuild "$SNAPFS" --repo "$repo" rebuild-catalog --force
    result b "rebuild-catalog" "$T_WALL" s "first ingest $first s"
}

scenario_c() {
    local src=$SCALE_DIR/c/src repo=$SCALE_DIR/c/repo files
    if [[ ! -e $SCALE_DIR/c/.made-$C_FILES ]]; then
        rm -rf "$SCALE_DIR/c"; mkdir -p "$src"
        perl - "$src" "$C_FILES" <<'PERL'
use strict; use warnings;
my ($dir, $n) = @ARGV;
srand(20261202);
my @words = map { join '', map { ('a'..'z')[int rand 26] } 1 .. 2 + int rand 8 } 1 .. 500;
for my $i (0 .. $n - 1) {
    my $d = sprintf "%s/%03d/%03d", $dir, int($i / 100000), int($i / 1000) % 100;
    mkdir "$dir/" . sprintf("%03d", int($i / 100000)) unless $i % 100000;
    mkdir $d unless $i % 1000;
    my $len = int(exp(rand(log(4096))));
    my $s = '';
    $s .= $words[int rand @words] . ' ' while length($s) < $len;
    open my $f, '>', sprintf("%s/f%07d.txt", $d, $i) or die "$d: $!";
    print $f substr($s, 0, $len);
    close $f;
}
PERL
        touch "$SCALE_DIR/c/.made-$C_FILES"
    fi
    rm -rf "$repo"
    "$SNAPFS" --repo "$repo" init --encryption none >/dev/null
    timeit c-first-ingest "$SNAPFS" --repo "$repo" ingest --name first "$src"
    result c "first ingest of $C_FILES files" "$T_WALL" s "peak RSS $((T_RSS / 1024)) MiB; target <= 200 MiB"
    timeit c-reingest "$SNAPFS" --repo "$repo" ingest --name again "$src"
    local again=$T_WALL
    timeit c-lstat-walk find "$src" -printf '%s %T@ %C@ %i\n'
    result c "no-change re-ingest" "$again" s "bare lstat walk ${T_WALL} s; ratio $(awk -v a="$again" -v b="$T_WALL" 'BEGIN { printf "%.2f", a / b }'), target <= 2"
    files=$C_FILES
    result c "catalog bytes per file" "$(( $(catalog_bytes "$repo") / files ))" bytes "target <= 150"
    result c "metadata bytes per file" "$(( $(meta_bytes "$repo") / files ))" bytes
}

scenario_d() {
    local out=$SCALE_DIR/d-out bench_dir=${BENCH_DIR:-/var/tmp/snapfs-bench} ds repo copy borg_bytes
    BENCH_OUT=$out BENCH_SECTIONS=ingest BENCH_TOOLS="borg snapfs" BENCH_DATASETS="real big" \
        BENCH_BUILD=0 BENCH_QUICK=$SCALE_QUICK "$ROOT/scripts/bench.sh" >"$LOGS/d.log" 2>&1 \
        || die "scripts/bench.sh failed: $LOGS/d.log"
    awk -F'\t' '$2 == "first" && ($3 == "snapfs" || $3 == "borg-zstd3") { print $1, $3, $7 }' "$out/results.tsv" \
        | while read -r ds tool bytes; do result d "$ds repository bytes, $tool" "$bytes" bytes; done
    # The same repositories after all three snapshots of the ingest
    # benchmark, and snapfs's again after `gc --recompress` (on a copy).
    for ds in real big; do
        repo=$bench_dir/repos/$ds/snapfs copy=$SCALE_DIR/d-$ds-recompressed
        borg_bytes=$(du -sb "$bench_dir/repos/$ds/borg-zstd3" | cut -f1)
        result d "$ds, 3 snapshots: borg zstd,3 repository bytes" "$borg_bytes" bytes
        result d "$ds, 3 snapshots: snapfs repository bytes" "$(du -sb "$repo" | cut -f1)" bytes \
            "packs $(du -sb "$repo/packs" | cut -f1), catalog $(catalog_bytes "$repo")"
        for level in 9 15; do
            rm -rf "$copy"; cp -a "$repo" "$copy"
            timeit "d-$ds-recompress-$level" "$SNAPFS" --repo "$copy" gc --recompress "$level"
            result d "$ds, 3 snapshots: snapfs after gc --recompress $level" "$(du -sb "$copy" | cut -f1)" bytes \
                "packs $(du -sb "$copy/packs" | cut -f1); $T_WALL s; ratio to borg $(awk -v a="$(du -sb "$copy" | cut -f1)" -v b="$borg_bytes" 'BEGIN { printf "%.3f", a / b }')"
        done
        rm -rf "$copy"
    done
}

main() {
    install_missing jq:jq fusermount3:fuse3 mountpoint:util-linux /usr/bin/time:time
    mkdir -p "$SCALE_OUT" "$LOGS"
    [[ ${SCALE_BUILD:-1} == 0 ]] || (cd "$ROOT" && cargo build --release >/dev/null)
    printf 'scenario\tmeasure\tvalue\tunit\tnote\n' >"$TSV"
    for s in $SCALE_SCENARIOS; do
        log "scenario $s"
        "scenario_$s"
    done
    column -t -s $'\t' "$TSV"
}

main "$@"
