//! RCU-protected dynamic handlers for NMI-like contexts: POSIX signal
//! handlers in user space, interrupt handlers on bare metal.
//!
//! `nmi-rcu` gives a program a read side that is wait-free and
//! async-signal-safe on any thread, real grace periods, deferred
//! reclamation, RCU-protected pointers, and on top of those the kernel's
//! dynamic NMI handler pattern: a handler slot whose handler is replaced while
//! signals keep arriving, and whose old handler is freed only once no signal
//! handler can still be running it.
//!
//! ```
//! use nmi_rcu::RcuCell;
//!
//! nmi_rcu::register_thread(); // optional: registered threads take the fast path
//! let table = RcuCell::new(vec![1, 2, 3]);
//!
//! // Reader, for example inside a signal handler:
//! {
//!     let guard = nmi_rcu::read_lock();
//!     assert_eq!(table.read(&guard).len(), 3);
//! }
//!
//! // Updater: publish, then free the old value after a grace period.
//! let old = table.replace(vec![4, 5]);
//! drop(old.synchronize());
//! ```
//!
//! # Kernel terms
//!
//! | Linux kernel | nmi-rcu |
//! | --- | --- |
//! | `rcu_read_lock()` / `rcu_read_unlock()` | [`read_lock`] returns a [`Guard`]; dropping it unlocks |
//! | `srcu_read_lock(ssp)` | [`Domain::read_lock`] |
//! | `rcu_dereference(p)` | [`RcuCell::read`], [`RcuOption::read`] (Acquire load) |
//! | `rcu_assign_pointer(p, v)` | [`RcuCell::replace`], [`RcuOption::replace`] (Release store) |
//! | `synchronize_rcu()` | [`synchronize`], [`Domain::synchronize`], [`Retired::synchronize`] |
//! | `call_rcu(head, func)` | [`call_rcu`], [`Domain::call_rcu`], [`Retired::defer`] |
//! | `kfree_rcu(p)` | dropping a [`Retired`] |
//! | `rcu_barrier()` | [`barrier`], [`Domain::barrier`] |
//! | `start_poll_synchronize_rcu()` / `poll_state_synchronize_rcu()` | [`start_poll`] / [`poll_state`] and the [`Domain`] pair |
//! | `DEFINE_SRCU` / `init_srcu_struct` | [`Domain::new`] |
//! | `nmi_enter()` / `nmi_exit()` / `in_nmi()` | [`NmiContext::enter`] / drop / [`in_nmi`] |
//! | RCU CPU stall warning | `log::warn!` from a waiting grace period ([`Domain::set_stall_timeout`]) |
//!
//! # Threads
//!
//! Any thread may read at any time, even one the library has never seen.
//! A thread registered with [`register_thread`], or automatically by its
//! first update-side call, takes the fast path: plain loads and stores with
//! no atomic read-modify-write and no fence. Other threads take a wait-free
//! fallback path with one atomic increment at each end of a section. The
//! module notes of the protocol explain how the two coexist; the
//! [`guide::signal_safety`] page states exactly what may run in a signal
//! handler, and [`guide::limitations`] what does not work.
#![warn(missing_docs)]
// RealtimeSanitizer marks on the read side (see `.ci/sanitizers.sh`).
#![cfg_attr(nmi_rcu_rtsan, feature(sanitize))]

#[cfg(not(loom))]
mod cell;
#[cfg(not(loom))]
mod domain;
#[cfg(not(loom))]
mod nmi;
mod protocol;
#[cfg(not(loom))]
mod reclaim;
mod sync;
#[cfg(not(loom))]
mod sys;
#[cfg(not(loom))]
mod threads;

#[cfg(all(test, loom))]
mod loom_models;

#[cfg(not(loom))]
pub use cell::{RcuBox, RcuCell, RcuOption, Retired};
#[cfg(not(loom))]
pub use domain::{Domain, GraceToken, Guard, Stats};
#[cfg(not(loom))]
pub use nmi::{in_nmi, NmiContext};
#[cfg(not(loom))]
pub use threads::{current_thread_slot, MAX_THREADS};

// BEGIN handler-layer modules
#[cfg(not(loom))]
mod handler;
#[cfg(not(loom))]
mod handlers;
#[cfg(not(loom))]
pub mod signal;
#[cfg(not(loom))]
pub use handler::{BoxedHandler, HandlerSlot, Outcome, PreparedHandler, RetiredHandler};
#[cfg(not(loom))]
pub use handlers::{
    HandlerError, HandlerRegistry, HandlerStats, Order, RemovedHandler, DEFAULT_WATCHDOG_THRESHOLD,
};
// END handler-layer modules

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;

/// Long-form documentation pages.
#[cfg(not(loom))]
pub mod guide {
    #[doc = include_str!("../docs/signal_safety.md")]
    pub mod signal_safety {}

    #[doc = include_str!("../docs/limitations.md")]
    pub mod limitations {}
}

/// Enters a read-side critical section of the global domain: the kernel's
/// `rcu_read_lock()`. The section ends when the returned guard drops.
/// Sections nest to any depth.
///
/// # Progress
///
/// - Wait-free on every thread: a fixed number of instructions, no loop.
/// - On a registered thread: plain loads and stores, no atomic
///   read-modify-write, no hardware fence. (Threads can register only when
///   `membarrier(2)` is available; otherwise every thread takes the fallback
///   path.)
/// - On any other thread: one atomic increment on entry and one on exit.
///
/// # Async-signal safety
///
/// Safe on any thread, at any point, including inside another section of
/// the same thread that the signal interrupted, on an alternate signal
/// stack, on a thread created by C code, and on an exiting thread. It
/// allocates nothing, takes no lock, makes no system call and cannot panic.
///
/// # Examples
///
/// ```
/// let guard = nmi_rcu::read_lock();
/// let nested = nmi_rcu::read_lock();
/// drop(nested);
/// drop(guard);
/// ```
#[cfg(not(loom))]
#[inline]
#[cfg_attr(nmi_rcu_rtsan, sanitize(realtime = "nonblocking"))]
pub fn read_lock() -> Guard<'static> {
    domain::global_inner().read_lock_with_id(0)
}

/// Registers the calling thread for the rest of its life, so that its
/// read-side sections take the fast path. Calling it again does nothing.
/// The registration is released when the thread exits, and an exited thread
/// never delays a grace period.
///
/// Registration allocates, so do it outside signal handlers: at thread
/// start, for example. Update-side calls register their thread
/// automatically. When [`MAX_THREADS`] threads are registered, further
/// threads stay on the fallback path (a warning is logged once).
///
/// # Examples
///
/// ```
/// std::thread::spawn(|| {
///     nmi_rcu::register_thread();
///     assert!(nmi_rcu::read_lock().is_fast_path());
/// })
/// .join()
/// .unwrap();
/// ```
#[cfg(not(loom))]
pub fn register_thread() {
    domain::init();
    threads::register_current_thread();
}

/// Waits for a grace period of the global domain: the kernel's
/// `synchronize_rcu()`. Returns only after every read-side section that
/// began before the call has ended; never waits for a section that began
/// after it, so continuous readers cannot starve it. Concurrent callers
/// share grace periods.
///
/// # Panics
///
/// Panics inside a read-side section of the global domain, or in NMI
/// context, where it would deadlock. The message names the call.
///
/// # Examples
///
/// ```
/// let cell = nmi_rcu::RcuCell::new(1);
/// let old = cell.replace(2);
/// nmi_rcu::synchronize(); // no reader can still see 1 after this
/// drop(old);
/// ```
#[cfg(not(loom))]
pub fn synchronize() {
    Domain::global().synchronize();
}

/// Starts a polled grace period of the global domain: the kernel's
/// `start_poll_synchronize_rcu()`. Never blocks.
///
/// # Examples
///
/// ```
/// let token = nmi_rcu::start_poll();
/// while !nmi_rcu::poll_state(&token) {
///     std::thread::sleep(std::time::Duration::from_micros(50));
/// }
/// ```
#[cfg(not(loom))]
pub fn start_poll() -> GraceToken {
    Domain::global().start_poll()
}

/// Returns whether the grace period behind `token` (from [`start_poll`]) is
/// over: the kernel's `poll_state_synchronize_rcu()`.
///
/// # Async-signal safety
///
/// Safe: one atomic load.
///
/// # Examples
///
/// ```
/// let token = nmi_rcu::start_poll();
/// nmi_rcu::synchronize();
/// assert!(nmi_rcu::poll_state(&token));
/// ```
#[cfg(not(loom))]
pub fn poll_state(token: &GraceToken) -> bool {
    Domain::global().poll_state(token)
}

/// Queues `callback` to run after a grace period of the global domain, on
/// the reclaimer thread: the kernel's `call_rcu()`.
///
/// The reclaimer starts with the first callback. Callbacks queued close
/// together share one grace period, and run in the order they were queued.
/// They never run on a reader's path, in a guard's drop or in signal
/// context. When the backlog passes the domain's limit
/// ([`Domain::set_backlog_limit`]), the caller waits until the reclaimer has
/// halved it, so memory stays bounded; callers that must not wait (NMI
/// context, inside a section, the reclaimer itself) are never throttled.
///
/// A callback that panics is reported with `log::error!` and the reclaimer
/// carries on.
///
/// # Examples
///
/// ```
/// let data = Box::new([0u8; 64]);
/// nmi_rcu::call_rcu(move || drop(data));
/// nmi_rcu::barrier();
/// ```
#[cfg(not(loom))]
pub fn call_rcu<F: FnOnce() + Send + 'static>(callback: F) {
    Domain::global().call_rcu(callback);
}

/// Waits until every callback queued on the global domain before the call
/// has run: the kernel's `rcu_barrier()`.
///
/// # Panics
///
/// Panics inside a read-side section of the global domain or in NMI
/// context, like [`synchronize`].
///
/// # Examples
///
/// ```
/// nmi_rcu::call_rcu(|| ());
/// nmi_rcu::barrier();
/// assert_eq!(nmi_rcu::Domain::global().stats().backlog, 0);
/// ```
#[cfg(not(loom))]
pub fn barrier() {
    Domain::global().barrier();
}
