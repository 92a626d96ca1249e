#!/usr/bin/env bash
# Coverage-guided fuzzing of the on-disk decoders with cargo-afl (stable Rust).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Installs cargo-afl if missing, builds the targets in fuzz/, regenerates the
# seed corpora, runs each target for SECONDS_PER_TARGET (default 300) one
# after another, and prints per target the execs done, crashes and hangs.
# Findings stay in fuzz/out/<target>/default/{crashes,hangs}.
set -euo pipefail

secs="${1:-300}"
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(pack_table blob tree record config frame)
fi

here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here/fuzz"

if ! cargo afl --version >/dev/null 2>&1; then
    cargo install --locked cargo-afl
fi
# Builds AFL++ itself the first time (no-op when it is there already).
cargo afl config --build >/dev/null 2>&1 || true

cargo afl build --release
# Built by the line above (instrumented, which does not matter for it).
target/release/gen_seeds

# A headless, shared machine: no UI, no CPU frequency or core-dump checks,
# no pinning to a core other jobs may be using.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 \
    AFL_NO_AFFINITY=1 AFL_SKIP_CRASHES=1

stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$2"; }

summary=()
for t in "${targets[@]}"; do
    out="out/$t"
    rm -rf "$out"
    mkdir -p "$out"
    echo "== fuzzing $t for ${secs}s"
    cargo afl fuzz -V "$secs" -i "seeds/$t" -o "$out" "target/release/$t" \
        >"$out/afl.log" 2>&1 || echo "afl-fuzz exited with $? (see fuzz/$out/afl.log)"
    s="$out/default/fuzzer_stats"
    if [ -f "$s" ]; then
        summary+=("$(printf '%-11s %6ss  execs %-10s crashes %-4s hangs %-4s corpus %s' "$t" \
            "$(( $(stat last_update "$s") - $(stat start_time "$s") ))" \
            "$(stat execs_done "$s")" "$(stat saved_crashes "$s")" \
            "$(stat saved_hangs "$s")" "$(stat corpus_count "$s")")")
    else
        summary+=("$(printf '%-11s no fuzzer_stats (see fuzz/%s/afl.log)' "$t" "$out")")
    fi
done

echo
echo "target      seconds  execs            crashes      hangs"
printf '%s\n' "${summary[@]}"
