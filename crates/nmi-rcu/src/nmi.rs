//! NMI context: the thread-local marker that says "this thread is running a
//! signal handler (or another NMI-like context) now".
//!
//! The kernel brackets NMI handlers with `nmi_enter()` / `nmi_exit()` so that
//! code can ask `in_nmi()`. The signal layer's trampoline does the same with
//! [`NmiContext`], and the update side uses [`in_nmi`] to refuse blocking
//! calls that would deadlock and to avoid starting threads.

use core::cell::Cell;
use core::marker::PhantomData;

thread_local! {
    /// How many NMI contexts the calling thread is inside. Constant-
    /// initialised without a destructor, so it is safe to touch from a
    /// signal handler (see the `threads` module notes).
    static NMI_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Returns whether the calling thread is inside an [`NmiContext`], such as
/// a handler run by the [`signal`](crate::signal) layer.
///
/// # Async-signal safety
///
/// Safe: one constant-initialised thread-local read.
///
/// # Examples
///
/// ```
/// assert!(!nmi_rcu::in_nmi());
/// let context = nmi_rcu::NmiContext::enter();
/// assert!(nmi_rcu::in_nmi());
/// drop(context);
/// assert!(!nmi_rcu::in_nmi());
/// ```
#[inline]
#[cfg_attr(nmi_rcu_rtsan, sanitize(realtime = "nonblocking"))]
pub fn in_nmi() -> bool {
    NMI_DEPTH.with(Cell::get) != 0
}

/// Marks the calling thread as running in NMI context until the value is
/// dropped: the kernel's `nmi_enter()` ... `nmi_exit()`.
///
/// Inside it, [`synchronize`](crate::synchronize), [`barrier`](crate::barrier)
/// and [`Retired::synchronize`](crate::Retired::synchronize) panic instead of
/// deadlocking, and deferred reclamation never starts a thread. The signal
/// layer enters it around every handler; code with its own raw `sigaction`
/// handlers can do the same.
///
/// # Async-signal safety
///
/// Safe: entering and leaving change one constant-initialised thread-local.
///
/// # Examples
///
/// ```
/// let context = nmi_rcu::NmiContext::enter();
/// let result = std::panic::catch_unwind(|| nmi_rcu::synchronize());
/// assert!(result.is_err());
/// drop(context);
/// ```
#[must_use = "NMI context ends when the value is dropped"]
#[derive(Debug)]
pub struct NmiContext {
    /// Entered and left on one thread.
    _not_send: PhantomData<*mut ()>,
}

impl NmiContext {
    /// Enters NMI context on the calling thread. Contexts nest.
    ///
    /// # Async-signal safety
    ///
    /// Safe: see the type.
    #[inline]
    #[cfg_attr(nmi_rcu_rtsan, sanitize(realtime = "nonblocking"))]
    pub fn enter() -> NmiContext {
        NMI_DEPTH.with(|depth| depth.set(depth.get().wrapping_add(1)));
        NmiContext {
            _not_send: PhantomData,
        }
    }
}

impl Drop for NmiContext {
    #[inline]
    #[cfg_attr(nmi_rcu_rtsan, sanitize(realtime = "nonblocking"))]
    fn drop(&mut self) {
        NMI_DEPTH.with(|depth| depth.set(depth.get().wrapping_sub(1)));
    }
}
