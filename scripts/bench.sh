#!/usr/bin/env bash
# Benchmark snapfs against restic and BorgBackup on the same data, in one run.
#
#   scripts/bench.sh                 # full run (~15 min on a 2-core machine)
#   BENCH_QUICK=1 scripts/bench.sh   # small data sets, a few minutes
#
# See BENCHMARKS.md for what is measured and how to read the results.
#
# Environment:
#   BENCH_DIR        scratch directory (default /var/tmp/snapfs-bench); generated
#                    sources are kept there between runs, repositories are not
#   BENCH_OUT        results directory (default <project>/target/bench)
#   BENCH_QUICK=1    small data sets
#   BENCH_DATASETS   which data sets (default "gen real big")
#   BENCH_TOOLS      which tools (default "restic borg snapfs"); borg runs as
#                    borg-zstd3 everywhere and also as borg-lz4 on the big file
#   BENCH_SECTIONS   which sections (default "ingest restore"; restore needs
#                    the repositories that ingest leaves; "copy", off by
#                    default, copies them to fresh repositories: snapfs copy
#                    against restic copy)
#   BENCH_CACHE      cold (default: drop the page cache before every timed
#                    command) or warm (never drop it)
#   BENCH_BUILD=0    do not run `cargo build --release` before benchmarking
#   BENCH_REV        benchmark this committed revision instead of the work
#                    tree (built from `git archive` under $BENCH_DIR/build)
#   BENCH_FLOOR_RUNS floors (tar, stat walk, cp -a) are the best of this many
#                    runs (default 3); tools run once
#   BENCH_IDLE_WAIT  before each timed command, wait up to this many seconds
#                    (default 120) for the machine to be idle; BENCH_IDLE_BUDGET
#                    (default 900) caps the waiting over the whole run
#   BENCH_GEN_FILES, BENCH_REAL_SRC, BENCH_BIG_MIB   override data set sizes
#
# Adding a section (e.g. mount: first ls, find, cp -a, fio): write a function
# section_NAME that uses the repositories left by section_ingest under
# $REPOS/<dataset>/<tool>, times commands with `timeit` and stores rows with
# `record`; then add NAME to BENCH_SECTIONS. The report lists rows in the order
# they were recorded, grouped by data set and phase.
set -euo pipefail

# --------------------------------------------------------------------------
# configuration

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=${BENCH_DIR:-/var/tmp/snapfs-bench}
BENCH_OUT=${BENCH_OUT:-$ROOT/target/bench}
BENCH_QUICK=${BENCH_QUICK:-0}
BENCH_DATASETS=${BENCH_DATASETS:-gen real big}
BENCH_TOOLS=${BENCH_TOOLS:-restic borg snapfs}
BENCH_SECTIONS=${BENCH_SECTIONS:-ingest restore}
BENCH_CACHE=${BENCH_CACHE:-cold}
BENCH_BUILD=${BENCH_BUILD:-1}
FLOOR_RUNS=${BENCH_FLOOR_RUNS:-3}
BENCH_IDLE_WAIT=${BENCH_IDLE_WAIT:-120}
BENCH_IDLE_BUDGET=${BENCH_IDLE_BUDGET:-900}

if [[ $BENCH_QUICK == 1 ]]; then
    GEN_FILES=${BENCH_GEN_FILES:-5000}
    REAL_SRC=${BENCH_REAL_SRC:-/usr/share/man}
    BIG_MIB=${BENCH_BIG_MIB:-256}
    SRC=$BENCH_DIR/src-quick
else
    GEN_FILES=${BENCH_GEN_FILES:-50000}
    REAL_SRC=${BENCH_REAL_SRC:-/usr/share}
    BIG_MIB=${BENCH_BIG_MIB:-1024}
    SRC=$BENCH_DIR/src
fi
BIG_BYTES=$((BIG_MIB * 1048576))
INSERT_BYTES=1048576
INSERT_AT=$((BIG_BYTES / 2))

REPOS=$BENCH_DIR/repos
CACHES=$BENCH_DIR/cache
LOGS=$BENCH_DIR/logs
SNAPFS=$ROOT/target/release/snapfs
TSV=$BENCH_OUT/results.tsv
REPORT=$BENCH_OUT/results.md

export RESTIC_PASSWORD=snapfs-bench
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR=$CACHES/borg
export RESTIC_CACHE_DIR=$CACHES/restic
export LC_ALL=C

log() { printf '[bench %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
# shared helpers: the generated data set, cache dropping, idle waiting
. "$ROOT/scripts/bench_lib.sh"

# --------------------------------------------------------------------------
# prerequisites

ensure_packages() {
    install_missing restic:restic borg:borgbackup fio:fio /usr/bin/time:time perl:perl
}

have_tool() { [[ " $BENCH_TOOLS " == *" $1 "* ]]; }

ensure_snapfs() {
    have_tool snapfs || return 0
    if [[ -n ${BENCH_REV:-} ]]; then
        # build a committed revision, apart from the work tree
        local rev build=$BENCH_DIR/build
        rev=$(cd "$ROOT" && git rev-parse --short "$BENCH_REV") || die "no revision $BENCH_REV"
        log "building snapfs $rev in $build"
        rm -rf "$build"; mkdir -p "$build"
        (cd "$ROOT" && git archive "$rev") | tar -x -C "$build"
        (cd "$build" && CARGO_TARGET_DIR=$BENCH_DIR/target cargo build --release --quiet) \
            || die "snapfs $rev does not build"
        SNAPFS=$BENCH_DIR/target/release/snapfs
        SNAPFS_VERSION=$rev
    else
        if [[ $BENCH_BUILD != 0 ]]; then
            log "cargo build --release"
            (cd "$ROOT" && cargo build --release --quiet) || die "snapfs does not build (set BENCH_TOOLS to leave it out)"
        fi
        SNAPFS_VERSION=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '(no commit)')
        if [[ -n $(cd "$ROOT" && git status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null) ]]; then
            SNAPFS_VERSION+=" + uncommitted changes"
        fi
    fi
    [[ -x $SNAPFS ]] || die "$SNAPFS missing"
    # run a private copy: a rebuild during the run must not change the binary
    mkdir -p "$BENCH_DIR/bin"
    cp "$SNAPFS" "$BENCH_DIR/bin/snapfs"
    SNAPFS=$BENCH_DIR/bin/snapfs
}
SNAPFS_VERSION="(not measured)"


# --------------------------------------------------------------------------
# measuring



repo_bytes() { if [[ -e $1 ]]; then du -sb "$1" | cut -f1; else echo 0; fi; }

# record DATASET PHASE TOOL REPO_BYTES GROWTH_BYTES NOTE  (uses the T_* values)
record() {
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$1" "$2" "$3" "$T_WALL" "$T_CPU" "$T_RSS" "$4" "$5" "$T_RC" "${6:-}" "$T_OTHER" >>"$TSV"
    log "$1 $2 $3: ${T_WALL}s cpu ${T_CPU}s other ${T_OTHER}s rss $((T_RSS / 1024))MiB repo ${4:--} (+${5:--}) rc $T_RC"
}

# --------------------------------------------------------------------------
# data sets: sources are kept between runs (a .done file records how each
# was made, and a changed recipe rebuilds it)

# A deterministic tree of N small files: sizes log-uniform 100 B..64 KiB,
# text-like content (words with a skewed frequency, some CSV-like numeric
# files), nested directories up to four levels.

make_real() {
    local dir=$1 from=$2
    rm -rf "$dir"; mkdir -p "$dir"
    cp -a "$from" "$dir/"
}

# BIG_MIB of real data: regular files under /usr/lib, /usr/bin and /usr/share
# in sorted path order, concatenated; plus the same file with 1 MiB of
# pseudo-random bytes inserted at the middle.
make_big() {
    local store=$1
    mkdir -p "$store"
    rm -f "$store"/orig.bin "$store"/ins.bin "$store"/insert.bin
    { find /usr/lib /usr/bin /usr/share -xdev -type f -size +0 -print0 2>/dev/null \
        | sort -z | xargs -0 cat 2>/dev/null || true; } | head -c "$BIG_BYTES" >"$store/orig.bin" || true
    [[ $(stat -c %s "$store/orig.bin") -eq $BIG_BYTES ]] || die "could not collect $BIG_MIB MiB of data"
    perl -e 'srand(1); print pack("N*", map { int rand 4294967296 } 1 .. $ARGV[0] / 4)' \
        "$INSERT_BYTES" >"$store/insert.bin"
    { head -c "$INSERT_AT" "$store/orig.bin"; cat "$store/insert.bin"
      tail -c +$((INSERT_AT + 1)) "$store/orig.bin"; } >"$store/ins.bin"
}

# Put variant orig|ins of the big file in place as $SRC/big/data.bin (the
# variants are moved, not copied, so this is cheap and survives interruption).
big_put() {
    local want=$1 store=$SRC/big-store dst=$SRC/big/data.bin size
    mkdir -p "$SRC/big"
    if [[ -e $dst ]]; then
        size=$(stat -c %s "$dst")
        if [[ $size -eq $BIG_BYTES ]]; then mv "$dst" "$store/orig.bin"
        else mv "$dst" "$store/ins.bin"; fi
    fi
    mv "$store/$want.bin" "$dst"
}

# ensure_source NAME: build $SRC/NAME if missing or made by another recipe
ensure_source() {
    local name=$1 recipe done
    case $name in
        gen) recipe="gen v1 files=$GEN_FILES" ;;
        real) recipe="real v1 from=$REAL_SRC" ;;
        big) recipe="big v1 mib=$BIG_MIB" ;;
    esac
    done=$SRC/.$name.done
    if [[ -f $done && $(cat "$done") == "$recipe" ]]; then
        restore_pristine "$name"
        return 0
    fi
    log "making source $name ($recipe)"
    rm -f "$done" "$SRC/.$name.pristine.tar"
    case $name in
        gen) make_gen "$SRC/gen" "$GEN_FILES" ;;
        real) make_real "$SRC/real" "$REAL_SRC" ;;
        big) rm -rf "$SRC/big"; make_big "$SRC/big-store"; big_put orig ;;
    esac
    echo "$recipe" >"$done"
}

source_path() { echo "$SRC/$1"; }

# Change 1% of the files of a tree: every 100th regular file in sorted path
# order gets a line appended. The originals are saved first and put back by
# restore_pristine (at the end of the data set, or at the next run).
mutate_tree() {
    local name=$1 dir=$SRC/$1 list=$SRC/.$1.changed
    find "$dir" -type f | sort | awk 'NR % 100 == 50' >"$list"
    tar -cf "$SRC/.$name.pristine.tar" -P --files-from "$list"
    local n=0
    while IFS= read -r f; do
        printf '\nsnapfs-bench change %d\n' "$n" >>"$f"
        n=$((n + 1))
    done <"$list"
    log "$name: changed $n files"
}

restore_pristine() {
    local name=$1 tarf=$SRC/.$1.pristine.tar
    if [[ -f $tarf ]]; then
        tar -xpf "$tarf" -P
        rm -f "$tarf"
    fi
    if [[ $name == big ]]; then big_put orig; fi
}

# --------------------------------------------------------------------------
# tools: tool_init TOOL REPO; ingest_cmd TOOL REPO SNAPNAME SRC
# (borg-zstd3 and borg-lz4 are two configurations of borg)

tools_for() {
    local ds=$1 t
    for t in $BENCH_TOOLS; do
        case $t in
            borg) echo borg-zstd3; [[ $ds == big ]] && echo borg-lz4 ;;
            *) echo "$t" ;;
        esac
    done
}

tool_init() {
    local tool=$1 repo=$2
    case $tool in
        snapfs) "$SNAPFS" --repo "$repo" init --encryption none ;;
        restic) restic --repo "$repo" init --repository-version 2 ;;
        borg-*) borg init --encryption none "$repo" ;;
        *) die "unknown tool $tool" ;;
    esac >"$LOGS/init-$tool.log" 2>&1 || die "init $tool failed: see $LOGS/init-$tool.log"
    [[ -d $repo ]] || die "init $tool made no repository at $repo: see $LOGS/init-$tool.log"
}

# ingest_cmd TOOL REPO SNAPNAME SRC: sets CMD to the command line
ingest_cmd() {
    local tool=$1 repo=$2 snap=$3 src=$4
    case $tool in
        snapfs) CMD=("$SNAPFS" --repo "$repo" ingest --name "$snap" "$src") ;;
        restic) CMD=(restic --repo "$repo" backup --host bench --compression auto "$src") ;;
        borg-zstd3) CMD=(borg create --compression zstd,3 "$repo::$snap" "$src") ;;
        borg-lz4) CMD=(borg create --compression lz4 "$repo::$snap" "$src") ;;
    esac
}

# exit codes that still mean "snapshot made"
tool_ok() {
    local tool=$1 rc=$2
    [[ $rc -eq 0 ]] && return 0
    case $tool in
        snapfs|restic) [[ $rc -eq 3 ]] ;;
        borg-*) [[ $rc -eq 1 ]] ;;   # borg: warning
        *) return 1 ;;
    esac
}

# --------------------------------------------------------------------------
# section: ingest

floor_tar() {   # GNU tar skips reading when writing to /dev/null: pipe instead
    timeit_best "$FLOOR_RUNS" "$1-$2-tar" bash -c 'tar -cf - "$1" 2>/dev/null | cat >/dev/null' bench "$3"
    record "$1" "$2" "floor: tar" "" ""
}

floor_stat() {
    timeit_best "$FLOOR_RUNS" "$1-$2-stat" find "$3" -fprintf /dev/null '%s %T@ %C@ %i %m\n'
    record "$1" "$2" "floor: stat walk" "" ""
}

# bench_ingest DATASET PHASE: every tool ingests the source once
bench_ingest() {
    local ds=$1 phase=$2 src tool repo before after note
    src=$(source_path "$ds")
    for tool in $(tools_for "$ds"); do
        repo=$REPOS/$ds/$tool
        before=$(repo_bytes "$repo")
        ingest_cmd "$tool" "$repo" "$ds-$phase" "$src"
        timeit "$ds-$phase-$tool" "${CMD[@]}"
        after=$(repo_bytes "$repo")
        note=""
        if ! tool_ok "$tool" "$T_RC"; then note="FAILED (exit $T_RC, see $LOGS/$ds-$phase-$tool.log)"
        elif [[ $T_RC -ne 0 ]]; then note="exit $T_RC"; fi
        record "$ds" "$phase" "$tool" "$after" $((after - before)) "$note"
    done
}

section_ingest() {
    local ds tool
    for ds in $BENCH_DATASETS; do
        log "=== $ds"
        ensure_source "$ds"
        rm -rf "${REPOS:?}/$ds" "$CACHES"
        mkdir -p "$REPOS/$ds"
        for tool in $(tools_for "$ds"); do tool_init "$tool" "$REPOS/$ds/$tool"; done
        describe_source "$ds"

        floor_tar "$ds" first "$(source_path "$ds")"
        bench_ingest "$ds" first

        floor_stat "$ds" nochange "$(source_path "$ds")"
        bench_ingest "$ds" nochange

        if [[ $ds == big ]]; then
            big_put ins
            floor_tar "$ds" change "$(source_path "$ds")"
        else
            mutate_tree "$ds"
            floor_stat "$ds" change "$(source_path "$ds")"
        fi
        bench_ingest "$ds" change
        restore_pristine "$ds"
    done
}

# --------------------------------------------------------------------------
# section: restore (the latest snapshot of every repository section_ingest
# left, i.e. the "change" one; the source is back to its original state by
# then, so the floor copies a tree of the same size)

restore_cmd() {
    local tool=$1 repo=$2 snap=$3 target=$4
    case $tool in
        snapfs) CMD=("$SNAPFS" --repo "$repo" restore latest "$target") ;;
        restic) CMD=(restic --repo "$repo" restore latest --target "$target") ;;
        borg-*) CMD=(bash -c 'cd "$1" && borg extract "$2"' bench "$target" "$repo::$snap") ;;
    esac
}

section_restore() {
    local ds tool target=$BENCH_DIR/restore src note
    for ds in $BENCH_DATASETS; do
        [[ -d $REPOS/$ds ]] || die "no repositories for $ds: run the ingest section first"
        src=$(source_path "$ds")
        BEST_SETUP="rm -rf '$target' && mkdir -p '$target'"
        timeit_best "$FLOOR_RUNS" "$ds-restore-cp" cp -a "$src" "$target/"
        BEST_SETUP=""
        record "$ds" restore "floor: cp -a" "" ""
        for tool in $(tools_for "$ds"); do
            rm -rf "$target"; mkdir -p "$target"
            restore_cmd "$tool" "$REPOS/$ds/$tool" "$ds-change" "$target"
            timeit "$ds-restore-$tool" "${CMD[@]}"
            note="$(find "$target" -type f | wc -l) files restored"
            if [[ $T_RC -ne 0 ]]; then note="FAILED (exit $T_RC, see $LOGS/$ds-restore-$tool.log)"; fi
            record "$ds" restore "$tool" "" "" "$note"
        done
        rm -rf "$target"
    done
}

# --------------------------------------------------------------------------
# section: copy (off-site copy of the repositories section_ingest left, to a
# fresh repository on the same disk: copy-full = the first snapshot into an
# empty repository, copy-daily = the rest, i.e. the daily increment;
# `snapfs copy --to` against `restic copy --from-repo`, restic's destination
# made beforehand, untimed, with the source's chunker parameters)

# bench_copy DATASET: both phases for every tool that has a repository
bench_copy() {
    local ds=$1 tool src dst phase before after note sent first mibs
    for tool in $(tools_for "$ds"); do
        src=$REPOS/$ds/$tool
        dst=$BENCH_DIR/copies/$ds/$tool
        case $tool in snapfs|restic) ;; *) continue ;; esac
        [[ -d $src ]] || die "no $tool repository for $ds: run the ingest section first"
        rm -rf "$dst"; mkdir -p "$(dirname "$dst")"
        if [[ $tool == restic ]]; then
            RESTIC_FROM_PASSWORD=$RESTIC_PASSWORD restic --repo "$dst" init --repository-version 2 \
                --from-repo "$src" --copy-chunker-params >"$LOGS/copy-init-$ds.log" 2>&1 \
                || die "restic init failed: see $LOGS/copy-init-$ds.log"
            first=$(restic --repo "$src" snapshots --json | perl -MJSON::PP -e \
                'my $s = decode_json(join "", <STDIN>); @$s = sort { $a->{time} cmp $b->{time} } @$s; print $s->[0]{short_id}')
        fi
        for phase in copy-full copy-daily; do
            before=$(repo_bytes "$dst")
            case $tool:$phase in
                snapfs:copy-full) CMD=("$SNAPFS" --repo "$src" copy --json --to "$dst" "$ds-first") ;;
                snapfs:copy-daily) CMD=("$SNAPFS" --repo "$src" copy --json --to "$dst") ;;
                restic:copy-full) CMD=(env RESTIC_FROM_PASSWORD="$RESTIC_PASSWORD" restic --repo "$dst" copy --from-repo "$src" "$first") ;;
                restic:copy-daily) CMD=(env RESTIC_FROM_PASSWORD="$RESTIC_PASSWORD" restic --repo "$dst" copy --from-repo "$src") ;;
            esac
            timeit "$ds-$phase-$tool" "${CMD[@]}"
            after=$(repo_bytes "$dst")
            mibs=$(awk -v b="$((after - before))" -v t="$T_WALL" 'BEGIN { printf "%.1f", (t > 0 ? b / 1048576 / t : 0) }')
            note="moved $(awk -v b="$((after - before))" 'BEGIN { printf "%.1f", b / 1048576 }') MiB, $mibs MiB/s"
            if [[ $tool == snapfs ]]; then
                sent=$(grep -o '"bytes_sent": *[0-9]*' "$LOGS/$ds-$phase-$tool.log" | grep -o '[0-9]*$' || true)
                note+=", bytes_sent ${sent:-?}"
            fi
            [[ $T_RC -eq 0 ]] || note="FAILED (exit $T_RC, see $LOGS/$ds-$phase-$tool.log)"
            record "$ds" "$phase" "$tool" "$after" $((after - before)) "$note"
        done
        rm -rf "$dst"
    done
}

section_copy() {
    local ds
    for ds in $BENCH_DATASETS; do
        [[ -d $REPOS/$ds ]] || die "no repositories for $ds: run the ingest section first"
        log "=== $ds copy"
        bench_copy "$ds"
    done
}

# --------------------------------------------------------------------------
# report

SOURCES_MD=""
describe_source() {
    local ds=$1 files bytes what
    read -r files bytes < <(find "$(source_path "$ds")" -type f -printf '%s\n' | awk '{ n++; b += $1 } END { print n + 0, b + 0 }')
    case $ds in
        gen) what="generated: $GEN_FILES files, 100 B–64 KiB log-uniform, text-like, nested dirs" ;;
        real) what="copy of $REAL_SRC" ;;
        big) what="one file: real data (/usr/lib, /usr/bin, /usr/share concatenated); change = 1 MiB inserted at the middle" ;;
    esac
    SOURCES_MD+="| $ds | $what | $files | $(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }') |"$'\n'
}

report() {
    local tsv=$1
    cat <<EOF
# snapfs benchmark

- date: $(date -u '+%Y-%m-%d %H:%M UTC')
- machine: $(nproc) cores ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo) RAM, kernel $(uname -r), $(df -T "$BENCH_DIR" | awk 'NR == 2 { print $2 }') under $BENCH_DIR
- cache: $BENCH_CACHE$([[ $BENCH_CACHE == cold ]] && echo " (page cache dropped before every timed command)"); every timed command ends with \`sync\`
- snapfs $SNAPFS_VERSION, $(restic version | cut -d' ' -f1-2), $(borg --version), $(tar --version | head -n 1)
- mode: $([[ $BENCH_QUICK == 1 ]] && echo quick || echo full); waited ${IDLE_WAITED} s in all for an idle machine before timed commands

| data | source | files | MiB |
|---|---|---:|---:|
${SOURCES_MD}
Phases: **first** = first ingest into an empty repository; **nochange** =
ingest again with nothing changed; **change** = ingest after changing 1% of
the files (trees) or inserting 1 MiB at the middle (big file); **restore** =
restore the latest snapshot into an empty directory; **copy-full** /
**copy-daily** (copy section) = copy the first snapshot into a fresh
repository, then the rest (the daily increment); growth = bytes moved.
\`× floor\` = wall time ÷ the floor row of the same phase (tar read of the
source for first ingest and for the changed big file, a stat walk for the
other re-ingests, \`cp -a\` of the source for restore; floors are the best of
$FLOOR_RUNS runs, tools run once).
\`× best peer\` = wall time ÷ the fastest of restic and borg in the same phase
(below 1 means faster than every peer). CPU = user + system seconds of the
command; other CPU = seconds other processes and kernel threads used
meanwhile (write-back of the command's own data is a few tenths; seconds
there mean the row was disturbed). Repo = \`du -sb\` of the repository after the phase;
growth = what that phase added.

EOF
    awk -F'\t' '
    function mib(b) { return sprintf("%.1f", b / 1048576) }
    function human(b) {
        if (b < 0) return "-" human(-b)
        if (b < 1024) return b " B"
        if (b < 1048576) return sprintf("%.1f KiB", b / 1024)
        return sprintf("%.2f MiB", b / 1048576)
    }
    function ok(i) { return note[i] !~ /^FAILED/ }
    {
        n++; ds[n] = $1; ph[n] = $2; tool[n] = $3; wall[n] = $4; cpu[n] = $5
        rss[n] = $6; repo[n] = $7; grew[n] = $8; rc[n] = $9; note[n] = $10; other[n] = $11
        k = $1 SUBSEP $2
        if ($3 ~ /^floor/) floor[k] = $4
        else if ($3 ~ /^(restic|borg)/ && ok(n) && (!(k in best) || $4 < best[k])) best[k] = $4
    }
    END {
        print "| data | phase | tool | wall s | × floor | × best peer | CPU s | other CPU s | peak RSS MiB | repo MiB | growth | note |"
        print "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        for (i = 1; i <= n; i++) {
            k = ds[i] SUBSEP ph[i]
            isfloor = tool[i] ~ /^floor/
            xf = (!isfloor && (k in floor) && floor[k] > 0) ? sprintf("%.2f", wall[i] / floor[k]) : ""
            xp = (!isfloor && (k in best) && best[k] > 0) ? sprintf("%.2f", wall[i] / best[k]) : ""
            t = tool[i] == "snapfs" ? "**snapfs**" : tool[i]
            printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", ds[i], ph[i], t, wall[i], xf, xp, cpu[i], other[i], mib(rss[i] * 1024), repo[i] == "" ? "" : mib(repo[i]), grew[i] == "" ? "" : human(grew[i]), note[i]
        }
    }' "$tsv"
    targets "$tsv"
}

# The DESIGN targets that the ingest section can check, for snapfs.
targets() {
    awk -F'\t' '
    $10 ~ /^FAILED/ { if ($3 == "snapfs") fails = fails $1 " " $2 ", "; next }
    { k = $1 SUBSEP $2 SUBSEP $3; wall[k] = $4; repo[k] = $7; grew[k] = $8; have[$1] = 1
      if ($2 != "restore" && $2 !~ /^copy/) rss[k] = $6
      if ($3 ~ /^(restic|borg)/ && $10 !~ /^FAILED/) { q = $1 SUBSEP $2; if (!(q in best) || $4 < best[q]) { best[q] = $4; bestn[q] = $3 } }
      if ($3 == "snapfs") snap = 1 }
    function faster(r) { return r >= 1 ? sprintf("%.2f× faster", r) : sprintf("%.2f× slower", 1 / r) }
    function row(what, target, value, pass) {
        printf "| %s | %s | %s | %s |\n", what, target, value, pass ? "yes" : "**no**"
    }
    END {
        if (!snap) { print "\n(snapfs not measured: no target check)"; exit }
        print "\n## Targets (DESIGN.md) for snapfs\n"
        print "| what | target | measured | met |"
        print "|---|---|---|---|"
        for (d = 1; d <= 2; d++) {
            ds = d == 1 ? "gen" : "real"
            if (!(ds in have)) continue
            s = wall[ds, "first", "snapfs"]; f = wall[ds, "first", "floor: tar"]
            if (s != "" && f > 0) row(ds " first ingest vs tar read", "≤ 1.2×", sprintf("%.2f×", s / f), s / f <= 1.2)
            s = wall[ds, "nochange", "snapfs"]; b = best[ds, "nochange"]
            if (s > 0 && b != "") row(ds " no-change re-ingest vs fastest peer (" bestn[ds, "nochange"] ")", "≥ 2.5× faster", faster(b / s), b / s >= 2.5)
        }
        if ("big" in have) {
            s = wall["big", "first", "snapfs"]; l = wall["big", "first", "borg-lz4"]
            if (s > 0 && l != "") row("big file first ingest vs borg lz4", "≥ 1.5× faster", faster(l / s), l / s >= 1.5)
            g = grew["big", "change", "snapfs"]
            if (g != "") row("big file: repository growth for a 1 MiB insertion", "≤ 2 MB", sprintf("%d bytes", g), g <= 2000000)
        }
        split("gen real big", all, " ")
        for (d = 1; d <= 3; d++) {
            ds = all[d]
            if (!(ds in have)) continue
            s = repo[ds, "first", "snapfs"]; z = repo[ds, "first", "borg-zstd3"]
            if (s != "" && z > 0) row(ds ": repository size vs borg zstd,3", "≤ 1.0×", sprintf("%.2f×", s / z), s <= z)
        }
        for (d = 1; d <= 3; d++) {
            ds = all[d]
            s = wall[ds, "restore", "snapfs"]; b = best[ds, "restore"]
            if (s > 0 && b != "") row(ds " restore vs fastest peer (" bestn[ds, "restore"] ")", "≥ 1.5× faster", faster(b / s), b / s >= 1.5)
        }
        m = 0
        for (k in rss) { split(k, p, SUBSEP); if (p[3] == "snapfs" && rss[k] > m) m = rss[k] }
        row("peak ingest RSS (target is for a 1M-file tree)", "< 200 MiB", sprintf("%.0f MiB", m / 1024), m < 200 * 1024)
        if (fails != "") row("snapfs failed in: " substr(fails, 1, length(fails) - 2), "no failure", "see logs", 0)
    }' "$1"
}

# --------------------------------------------------------------------------

main() {
    ensure_packages
    ensure_snapfs
    mkdir -p "$BENCH_DIR" "$SRC" "$LOGS" "$BENCH_OUT"
    : >"$TSV"
    local start=$SECONDS section
    for section in $BENCH_SECTIONS; do
        declare -F "section_$section" >/dev/null || die "no section $section"
        "section_$section"
    done
    report "$TSV" | tee "$REPORT"
    log "done in $((SECONDS - start)) s (${IDLE_WAITED} s waiting for an idle machine); results in $REPORT (raw: $TSV, logs: $LOGS)"
}

main "$@"

# BENCH_MOUNT=1: afterwards, the mount, integrity and history benchmarks (see scripts/bench_mount.sh)
if [[ ${BENCH_MOUNT:-0} == 1 ]]; then "$ROOT/scripts/bench_mount.sh"; fi
