#!/usr/bin/env bash
# Counts the instructions of one read-side section with callgrind.
#
# For each contender, runs the loop program for N and for 2N iterations
# under `valgrind --tool=callgrind` and prints (total(2N) - total(N)) / N:
# the instructions of one loop iteration, with start-up and registration
# cancelled out. Instruction counts are exact and repeatable for the same
# binary, whatever the load on the machine. Subtract the floor's count to
# get the cost of the section alone.
#
# Usage: crates/nmi-rcu-bench/scripts/callgrind.sh [N]   (default N=1000000)
# Needs valgrind; builds the loop program in release mode first.
set -euo pipefail

iterations="${1:-1000000}"
if ! [[ "$iterations" =~ ^[1-9][0-9]*$ ]]; then
    echo "invalid iteration count '$iterations': expected a positive integer" >&2
    exit 2
fi
if ! command -v valgrind >/dev/null; then
    echo "valgrind not found: install it (apt-get install valgrind) and rerun" >&2
    exit 1
fi

cd "$(dirname "$0")/../../.."
cargo build --release --quiet -p nmi-rcu-bench --bin nmi-rcu-read-loop
target_dir="${CARGO_TARGET_DIR:-target}"
program="$target_dir/release/nmi-rcu-read-loop"
out_dir="$(mktemp -d)"
trap 'rm -rf "$out_dir"' EXIT

# Prints the total instruction count of one run.
count() {
    local contender="$1" n="$2"
    valgrind --tool=callgrind --callgrind-out-file="$out_dir/$contender.$n" \
        "$program" "$contender" "$n" >/dev/null 2>"$out_dir/log"
    awk '/^summary:/ { print $2 }' "$out_dir/$contender.$n"
}

printf '%-22s %14s %14s %16s\n' contender "instr(N)" "instr(2N)" "per iteration"
for contender in floor nmi-rcu nmi-rcu-unregistered liburcu-memb liburcu-bp; do
    if ! "$program" "$contender" 1 >/dev/null 2>"$out_dir/log"; then
        echo "$contender: skipped: $(cat "$out_dir/log")"
        continue
    fi
    single="$(count "$contender" "$iterations")"
    double="$(count "$contender" "$((2 * iterations))")"
    per_iteration="$(awk -v a="$single" -v b="$double" -v n="$iterations" 'BEGIN { printf "%.3f", (b - a) / n }')"
    printf '%-22s %14s %14s %16s\n' "$contender" "$single" "$double" "$per_iteration"
done
