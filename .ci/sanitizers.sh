#!/usr/bin/env bash
# Sanitizer runs of nmi-rcu on the nightly toolchain:
#
#   1. RealtimeSanitizer on the whole nmi-rcu test suite, built with
#      --cfg nmi_rcu_rtsan: the trampoline's dispatch and the read-side
#      functions are real-time regions, and any allocation, lock or
#      blocking call in them fails the run. Two checks show the marks are
#      live: the read-side functions call the RTSan entry hook, and a
#      handler that allocates is reported.
#   2. AddressSanitizer on the whole nmi-rcu test suite and on a 5-second
#      `nmi-rcu torture` run.
#   3. ThreadSanitizer on the core tests (grace periods, stalls, the hard
#      cases and the property test), built with --cfg nmi_rcu_tsan so that
#      TSan can check the grace-period ordering, with .ci/tsan.supp for std.
#
# Without a nightly toolchain the script prints why and exits 0.
#
# Time budget: 15 minutes on 2 cores, enforced per step with `timeout`.
# On the 2-core development machine, with the RTSan build already cached,
# the whole script took 5 min 52 s; a cold RTSan step took 121 s. Most of
# the time goes to building three sanitized copies of the crate
# (docs/VERIFICATION.md has the numbers).
#
# std is not rebuilt with the sanitizers (-Zbuild-std needs the rust-src
# component, which the nightly here lacks), so -Cunsafe-allow-abi-mismatch
# accepts the uninstrumented std, and reports that come from std's
# uninstrumented synchronisation are suppressed by name in .ci/tsan.supp
# and .ci/rtsan.supp.
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-gnu
ROOT_TARGET_DIR="${SANITIZER_TARGET_DIR:-target/sanitizers}"

stage() {
    printf '\n--- %s ---\n' "$*"
}

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "skipping the sanitizer runs: no nightly toolchain (rustup toolchain install nightly adds one)"
    exit 0
fi
rt_lib="$(rustc +nightly --print sysroot)/lib/rustlib/$TARGET/lib"
for runtime in rtsan asan tsan; do
    if ! ls "$rt_lib"/librustc-nightly_rt."$runtime".a >/dev/null 2>&1; then
        echo "skipping the sanitizer runs: the nightly toolchain has no $runtime runtime in $rt_lib"
        exit 0
    fi
done
echo "nightly toolchain: $(rustc +nightly --version)"

# Runs `cargo +nightly test` for nmi-rcu under sanitizer $1, with a time
# limit of $2 seconds; the remaining arguments go to cargo.
sanitized_test() {
    local sanitizer=$1 limit=$2
    shift 2
    local started
    started=$(date +%s)
    CARGO_TARGET_DIR="$ROOT_TARGET_DIR/$sanitizer" \
        RUSTFLAGS="-Zsanitizer=$sanitizer -Cunsafe-allow-abi-mismatch=sanitizer ${EXTRA_RUSTFLAGS:-}" \
        timeout "$limit" cargo +nightly test -p nmi-rcu --target "$TARGET" "$@"
    echo "$sanitizer: finished in $(($(date +%s) - started)) s"
}

stage "RealtimeSanitizer: every nmi-rcu test, dispatch and read side marked nonblocking"
# Skipped tests, each for its own reason:
# - the `*_aborts` tests expect the library's or the test's own abort
#   message for an allocation (or a panic) in a handler. RTSan reports that
#   allocation first, which the check after this step relies on instead,
#   and in this build alloc_in_signal's allocator leaves the check to RTSan;
# - dispatch_order_and_handled_sum locks a mutex and pushes to a Vec in
#   its handlers (test-only code); RTSan's report of that overflows the
#   8 KiB alternate signal stack while it unwinds, so the test dies of
#   SIGSEGV instead of reporting.
RTSAN_OPTIONS="suppressions=$PWD/.ci/rtsan.supp:print_stats_on_exit=1" \
    EXTRA_RUSTFLAGS="--cfg nmi_rcu_rtsan" \
    sanitized_test realtime 600 --tests -- \
    --skip _aborts \
    --skip dispatch_order_and_handled_sum

stage "RealtimeSanitizer: the marks are live"
rtsan_deps="$ROOT_TARGET_DIR/realtime/$TARGET/debug/deps"
alloc_test=$(ls -t "$rtsan_deps"/alloc_in_signal-* | grep -v '\.d$' | head -n 1)
# The read side: each marked function calls __rtsan_realtime_enter.
for function in 'nmi_rcu::read_lock' \
    '<nmi_rcu::domain::DomainInner>::fallback_read_lock' \
    '<nmi_rcu::domain::Guard as core::ops::drop::Drop>::drop' \
    '<nmi_rcu::cell::RcuOption<u64>>::read' \
    'nmi_rcu::nmi::in_nmi' \
    '<nmi_rcu::nmi::NmiContext>::enter' \
    '<nmi_rcu::nmi::NmiContext as core::ops::drop::Drop>::drop'; do
    if ! objdump -d -C --no-show-raw-insn "$alloc_test" | awk -v name="$function" '
        /^[0-9a-f]+ </ { inside = index($0, "<" name ">:") > 0; next }
        inside && /__rtsan_realtime_enter/ { found = 1 }
        END { exit !found }'; then
        echo "no __rtsan_realtime_enter call in $function: its RTSan mark is missing"
        exit 1
    fi
    echo "marked: $function"
done
# The dispatch path: an allocating handler is reported.
report=$(NMI_RCU_ALLOC_CASE=allocating_registered_handler_aborts \
    timeout 60 "$alloc_test" --exact allocating_registered_handler_aborts --nocapture 2>&1 || true)
if ! grep -q "RealtimeSanitizer: unsafe-library-call" <<<"$report" ||
    ! grep -q "malloc" <<<"$report"; then
    echo "RTSan did not report the allocating handler; output:"
    echo "$report"
    exit 1
fi
echo "reported: an allocation in a registered handler"

stage "AddressSanitizer: every nmi-rcu test"
# detect_leaks=0: several tests leak on purpose (forgotten guards, batches
# lost at fork(), statics), and the torture run exits without tearing down.
# handle_segv=0, handle_sigbus=0: the signal tests chain SIGSEGV to the
# Rust runtime's handler and expect its stack-overflow report, which
# ASan's own handlers would replace.
# detect_stack_use_after_return=0: that mode moves locals to a heap "fake
# stack", and a test checks that a handler's locals are on the alternate
# signal stack.
export ASAN_OPTIONS="detect_leaks=0:handle_segv=0:handle_sigbus=0:detect_stack_use_after_return=0"
sanitized_test address 600 --tests

stage "AddressSanitizer: nmi-rcu torture --duration 5"
CARGO_TARGET_DIR="$ROOT_TARGET_DIR/address" \
    RUSTFLAGS="-Zsanitizer=address -Cunsafe-allow-abi-mismatch=sanitizer" \
    timeout 600 cargo +nightly build -p nmi-rcu-cli --target "$TARGET"
timeout 120 "$ROOT_TARGET_DIR/address/$TARGET/debug/nmi-rcu" torture --duration 5
unset ASAN_OPTIONS

stage "ThreadSanitizer: core tests, grace-period ordering visible to TSan"
# --cfg nmi_rcu_tsan: TSan models neither standalone fences nor
# membarrier(2), which order readers before frees in normal builds. The cfg
# makes the store that ends a section Release and the grace period's scan
# Acquire, so TSan checks that every free after a grace period is ordered
# after the sections it waited for. Without it each such free is reported.
# Skipped: the tests that fork, because ThreadSanitizer does not support
# starting threads in the child of a multi-threaded fork(). Also the signal
# storm of hard_cases: TSan defers signals to its own safe points and lost
# some of the queued real-time signals there, so the test timed out.
TSAN_OPTIONS="suppressions=$PWD/.ci/tsan.supp:halt_on_error=1" \
    EXTRA_RUSTFLAGS="--cfg nmi_rcu_tsan" \
    sanitized_test thread 600 --lib --test grace_period --test liveness \
    --test hard_cases --test prop_ops -- --skip fork \
    --skip signal_during_own_unregister_runs_handler_or_previous

echo "sanitizers: all runs passed"
