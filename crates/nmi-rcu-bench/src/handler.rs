//! The one handler function that every read-side contender calls, and the
//! published pointer through which the lock-free contenders reach it.
//!
//! Every loop dereferences a published function pointer and calls it through
//! `std::hint::black_box`, so the compiler can neither inline the handler
//! nor hoist the call out of the loop. What differs between contenders is
//! only what surrounds that dereference and call: nothing (the floor), a
//! read-side critical section, an epoch pin, a lock.

use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The signature of the benchmarked handler: a C-compatible function, so
/// the liburcu shim calls the very same function.
pub type HandlerFn = extern "C" fn(u64) -> u64;

/// The handler that every contender calls. It returns its argument plus
/// one, so the loops can sum the results into a checksum.
///
/// # Examples
///
/// ```
/// assert_eq!(nmi_rcu_bench::handler::handler(41), 42);
/// ```
#[inline(never)]
pub extern "C" fn handler(arg: u64) -> u64 {
    arg.wrapping_add(1)
}

/// The published handler pointer.
///
/// Invariant: it always contains a valid [`HandlerFn`] cast to a data
/// pointer, because it starts as [`handler`] and nothing stores into it.
/// The C shim reads the same word through [`published_slot`].
static PUBLISHED: AtomicPtr<()> = AtomicPtr::new(handler as HandlerFn as *mut ());

/// Dereferences the published handler pointer with Acquire ordering.
///
/// Acquire is what a reader of an RCU-published pointer needs: it pairs
/// with the Release store that published the pointer, so everything the
/// publisher wrote before publishing is visible to the caller. Nothing
/// republishes in the benchmarks, but the floor has to pay for the same
/// ordering as the real readers to be a fair floor.
///
/// # Examples
///
/// ```
/// let handler = nmi_rcu_bench::handler::published_handler();
/// assert_eq!(handler(1), 2);
/// ```
#[inline(always)]
pub fn published_handler() -> HandlerFn {
    let pointer = PUBLISHED.load(Ordering::Acquire);
    // SAFETY: `PUBLISHED` only ever contains a `HandlerFn` (see its
    // invariant), and function and data pointers have the same size and
    // representation on every platform Rust supports with atomics.
    unsafe { std::mem::transmute::<*mut (), HandlerFn>(pointer) }
}

/// Dereferences the published handler and calls it with `arg`: the body of
/// every read-side loop.
///
/// # Examples
///
/// ```
/// assert_eq!(nmi_rcu_bench::handler::call_published(7), 8);
/// ```
#[inline(always)]
pub fn call_published(arg: u64) -> u64 {
    black_box(published_handler())(arg)
}

/// Returns the address of the published pointer, for the C shim, which
/// dereferences it with `rcu_dereference`.
///
/// # Examples
///
/// ```
/// let slot = nmi_rcu_bench::handler::published_slot();
/// assert!(!slot.is_null());
/// ```
pub fn published_slot() -> *const *mut () {
    PUBLISHED.as_ptr().cast_const()
}
