#!/usr/bin/env bash
# Loom models of nmi-rcu (crates/nmi-rcu/src/loom_models.rs and
# loom_models/): the read side against grace periods, a nested section
# standing in for a signal, call_rcu and barrier, HandlerSlot set/unset and
# the registry against dispatch.
#
# Preemption bound: LOOM_MAX_PREEMPTIONS=3 (loom explores every
# interleaving with at most three preemptions; runs with fewer are
# included).
# Time budget: 5 minutes, enforced with `timeout`, so a model that grows
# too big fails here instead of stalling CI. The models took about 20 s of
# model checking plus a 1-minute release build on the 2-core development
# machine (docs/VERIFICATION.md has the numbers). LOOM_MAX_DURATION is not
# used: loom treats it as "stop exploring and pass".
set -euo pipefail
cd "$(dirname "$0")/.."

export LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}"
# A separate target directory: --cfg loom rebuilds every crate.
export CARGO_TARGET_DIR="${LOOM_TARGET_DIR:-target/loom}"

started=$(date +%s)
RUSTFLAGS="--cfg loom" timeout 300 \
    cargo test -p nmi-rcu --release --lib loom -- --test-threads=2
echo "loom models finished in $(($(date +%s) - started)) s" \
    "(LOOM_MAX_PREEMPTIONS=$LOOM_MAX_PREEMPTIONS)"
