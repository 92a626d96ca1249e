# Shared by scripts/bench.sh and scripts/bench_mount.sh (sourced, not run):
# the generated data set, cache dropping and idle waiting, so both measure
# the same data the same way. Callers define log and die (and may define
# their own timeit after sourcing this), and set
# BENCH_CACHE, BENCH_IDLE_WAIT and BENCH_IDLE_BUDGET.

CLK_TCK=$(getconf CLK_TCK)

# install_missing COMMAND:PACKAGE...: install with apt the packages whose
# command is missing, or fail loudly.
install_missing() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
    done
    [[ ${#missing[@]} -eq 0 ]] || install_packages "${missing[@]}"
}

# install_packages PACKAGE...: install with apt, or fail loudly.
install_packages() {
    log "installing $*"
    [[ $(id -u) -eq 0 ]] || die "need root to install $*"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# drop the page cache before a timed command (unless BENCH_CACHE=warm, or
# KEEP_CACHE=1 for one command)
drop_caches() {
    [[ $BENCH_CACHE == cold && ${KEEP_CACHE:-0} == 0 ]] || return 0
    sync
    echo 3 >/proc/sys/vm/drop_caches 2>/dev/null \
        || die "cannot drop the page cache (not root?); run with BENCH_CACHE=warm"
}

busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }

# Other work on the machine (a build, a test suite) spoils timings: before
# each timed command wait until the machine has been nearly idle for a
# second (< 0.1 core busy), at most BENCH_IDLE_WAIT seconds each time and
# BENCH_IDLE_BUDGET seconds in all.
IDLE_WAITED=0
wait_idle() {
    local start=$SECONDS a b
    while :; do
        a=$(busy_ticks); sleep 1; b=$(busy_ticks)
        if [[ $((b - a)) -le $((CLK_TCK / 10)) ]]; then break; fi
        if [[ $((SECONDS - start)) -ge $BENCH_IDLE_WAIT || $((IDLE_WAITED + SECONDS - start)) -ge $BENCH_IDLE_BUDGET ]]; then
            log "machine still busy after $((SECONDS - start))s; measuring anyway"
            break
        fi
    done
    IDLE_WAITED=$((IDLE_WAITED + SECONDS - start - 1))
}

# timeit LABEL CMD...: run CMD (cold cache if so configured, ending with a
# `sync` so write-back of what it wrote is counted); sets T_WALL (s), T_CPU
# (user+sys s), T_RSS (peak RSS of the largest process, KiB), T_RC, and
# T_OTHER: CPU seconds that other processes (and kernel threads) used
# meanwhile. Output goes to $LOGS/LABEL.log.
timeit() {
    local label=$1; shift
    local logf=$LOGS/$label.log tf=$LOGS/$label.time t0 t1 u s b0 b1
    wait_idle
    drop_caches
    b0=$(busy_ticks)
    t0=$(date +%s%N)
    T_RC=0
    /usr/bin/time -f '%M %U %S' -o "$tf" \
        bash -c '"$@"; rc=$?; sync; exit $rc' bench "$@" >"$logf" 2>&1 || T_RC=$?
    t1=$(date +%s%N)
    b1=$(busy_ticks)
    T_WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", (b - a) / 1e9 }')
    read -r T_RSS u s < <(tail -n 1 "$tf")
    T_CPU=$(awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }')
    T_OTHER=$(awk -v d="$((b1 - b0))" -v hz="$CLK_TCK" -v c="$T_CPU" \
        'BEGIN { o = d / hz - c; printf "%.1f", o < 0 ? 0 : o }')
}

# timeit_best N LABEL CMD...: run N times, keep the fastest (for floors,
# whose reads vary a lot on a virtual disk); $BEST_SETUP, if set, is eval'ed
# before each run, untimed
BEST_SETUP=""
timeit_best() {
    local n=$1 label=$2 i bw bc br brc bo; shift 2
    for ((i = 1; i <= n; i++)); do
        [[ -z $BEST_SETUP ]] || eval "$BEST_SETUP"
        timeit "$label" "$@"
        if [[ $i -eq 1 ]] || awk -v a="$T_WALL" -v b="$bw" 'BEGIN { exit !(a < b) }'; then
            bw=$T_WALL bc=$T_CPU br=$T_RSS brc=$T_RC bo=$T_OTHER
        fi
    done
    T_WALL=$bw T_CPU=$bc T_RSS=$br T_RC=$brc T_OTHER=$bo
}

# make_gen DIR N: the generated tree of N small files of text and numbers
# (fixed seed: the same bytes every time)
make_gen() {
    local dir=$1 n=$2
    rm -rf "$dir"; mkdir -p "$dir"
    perl - "$dir" "$n" <<'PERL'
use strict; use warnings;
my ($dir, $n) = @ARGV;
srand(20240611);
my @letters = ('a'..'z');
my @vocab = map { my $l = 2 + int(rand(9)); join '', map { $letters[int rand 26] } 1..$l } 1..4096;
sub word { $vocab[int(4096 * rand() ** 3)] }
# a text corpus and a numeric corpus; files are slices of them
my $text = '';
while (length($text) < 8 << 20) {
    my $line = join ' ', map { word() } 1 .. (4 + int rand 14);
    $line = ucfirst($line) . (rand() < 0.2 ? sprintf(' (%d)', int rand 100000) : '') . ".\n";
    $text .= $line;
}
my $csv = '';
while (length($csv) < 4 << 20) {
    $csv .= join(',', int(rand(1e6)), word(), sprintf('%.3f', rand(1000)),
                 sprintf('%04d-%02d-%02d', 1990 + int rand 35, 1 + int rand 12, 1 + int rand 28),
                 word() . '_' . word()) . "\n";
}
my %made;
for my $i (0 .. $n - 1) {
    my $depth = 1 + ($i * 7919) % 4;
    my @parts = (sprintf('a%02d', $i % 16), sprintf('b%02d', int($i / 16) % 12),
                 sprintf('c%02d', int($i / 192) % 13), sprintf('d%d', int($i / 2496) % 8));
    my $d = join '/', $dir, @parts[0 .. $depth - 1];
    unless ($made{$d}++) { system('mkdir', '-p', $d) == 0 or die "mkdir $d" }
    my $size = int(100 * exp(rand() * log(65536 / 100)));
    my ($src, $ext) = rand() < 0.2 ? (\$csv, 'csv') : (\$text, 'txt');
    my $head = "# file $i of $n\n";
    my $body = $size > length($head) ? $size - length($head) : 0;
    my $off = int rand(length($$src) - $body);
    open my $fh, '>', sprintf('%s/f%06d.%s', $d, $i, $ext) or die;
    print $fh $head, substr($$src, $off, $body);
    close $fh or die;
}
PERL
}
