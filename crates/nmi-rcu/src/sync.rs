//! The one place that chooses between loom's model-checked atomics and the
//! real ones.
//!
//! Only the protocol module ([`crate::protocol`]) uses this shim: it holds the
//! read-side and grace-period algorithm as plain functions over atomics, so
//! the loom models exercise the same code that production runs. Loom cannot
//! model `membarrier(2)`, so under `--cfg loom` readers always take the
//! fenced path and the updater's asymmetric barrier becomes a `SeqCst`
//! fence ([`crate::protocol::Barriers`]).

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicUsize};
#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicUsize};

pub(crate) use core::sync::atomic::Ordering;

/// Ordering of the store that ends a read-side critical section on a
/// registered thread. Relaxed in normal builds, where a fence or the
/// updater's membarrier(2) orders the section's loads before it.
/// ThreadSanitizer models neither, so under `--cfg nmi_rcu_tsan` it is
/// Release, pairing with [`SCAN_LOAD`], so that TSan can follow the grace
/// period's ordering of the section before the free.
pub(crate) const EXIT_STORE: Ordering = if cfg!(nmi_rcu_tsan) {
    Ordering::Release
} else {
    Ordering::Relaxed
};

/// Ordering of the grace period's loads of reader state (reader words and
/// the fallback path's unlock counters). Relaxed in normal builds, where
/// fences and membarrier(2) order them; Acquire under `--cfg nmi_rcu_tsan`,
/// for the reason given on [`EXIT_STORE`].
pub(crate) const SCAN_LOAD: Ordering = if cfg!(nmi_rcu_tsan) {
    Ordering::Acquire
} else {
    Ordering::Relaxed
};

/// A compiler-only barrier. Loom has no notion of compiler reordering, so
/// under loom it is a no-op and the models rely on the fenced reader path.
#[inline(always)]
pub(crate) fn compiler_fence() {
    #[cfg(not(loom))]
    core::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// Pads and aligns a value to 128 bytes, the unit of false sharing on
/// x86-64 (adjacent-line prefetch pairs 64-byte lines) and the cache line of
/// several ARM cores.
#[derive(Default)]
#[repr(align(128))]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> core::ops::Deref for CachePadded<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}
