#!/usr/bin/env bash
# Loom models of nmi-rcu (crates/nmi-rcu/src/loom_models.rs and
# loom_models/): the read side against grace periods, a nested section
# standing in for a signal, call_rcu and barrier, HandlerSlot set/unset and
# the registry against dispatch.
#
# Preemption bound: LOOM_MAX_PREEMPTIONS=3 (loom explores every
# interleaving with at most three preemptions; runs with fewer are
# included).
# Time budget: 5 minutes. On the 2-core development machine, shared with
# other builds (load average 12 to 20), the script took 208 s from a
# clean target directory, and its cargo command 254 s after a change to
# the core; model checking was 15 s and 23 s of that, the rest the release
# build (docs/VERIFICATION.md has the numbers). `timeout` stops it at
# 8 minutes, so that a model that grows too big fails here instead of
# stalling CI, with slack for a loaded machine. LOOM_MAX_DURATION is not
# used: loom treats it as "stop exploring and pass".
set -euo pipefail
cd "$(dirname "$0")/.."

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
# A separate target directory: --cfg loom rebuilds every crate.
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"

started=$(date +%s)
RUSTFLAGS="--cfg loom" timeout 480 \
    cargo test -p nmi-rcu --release --lib loom -- --test-threads=2
echo "loom models finished in $(($(date +%s) - started)) s" \
    "(LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS)"
