//! The per-signal state and the trampoline that the kernel calls.
//!
//! # The trampoline
//!
//! One `extern "C"` function serves every signal. For each delivery it
//!
//! 1. saves `errno`;
//! 2. enters [`NmiContext`], so an update-side call made by mistake from a
//!    handler panics instead of deadlocking;
//! 3. dispatches through the signal's [`HandlerRegistry`] inside
//!    [`std::panic::catch_unwind`]; a panic becomes a message written with
//!    `write(2)` and an abort, so nothing unwinds into the kernel's frame.
//!    The panic hook wrapper of [`super::panic_hook`] normally aborts
//!    before unwinding even starts, which matters on small alternate
//!    stacks;
//! 4. leaves `NmiContext`, and when no handler claimed the signal, passes
//!    it on as [`super::action`] describes (the previous handler may jump
//!    out with `siglongjmp`, so nothing of ours may still be open then);
//! 5. restores `errno`.
//!
//! # Installation
//!
//! The first registration for a signal saves the current disposition as the
//! chain target and installs the trampoline; the last unregistration puts
//! the saved disposition back, unless the installed action is no longer the
//! trampoline (someone installed over it), in which case the trampoline
//! stays and keeps chaining. All of this runs under [`INSTALL_LOCK`].
//! `sigaction` offers no compare-and-swap, so a third party changing the
//! disposition between our query and our store can still be overwritten.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::action::{self, Fallback, PreviousAction};
use super::context::SignalContext;
use super::panic_hook::DispatchMarker;
use super::{sys, Error, Signal, SignalStats, MAX_SIGNAL_NUMBER};
use crate::{read_lock, HandlerRegistry, NmiContext, RcuBox, RcuOption};

/// Serialises installation, removal and re-installation of trampolines and
/// changes to every signal's registry, so that "last handler removed" and
/// "restore the disposition" happen together.
static INSTALL_LOCK: Mutex<()> = Mutex::new(());

/// Everything the signal layer keeps for one signal number.
pub(crate) struct SignalState {
    pub(crate) registry: HandlerRegistry<SignalContext>,
    /// The disposition that was in place before the trampoline. Published
    /// before the trampoline is installed and never emptied afterwards, so a
    /// delivery that races with removal still finds where to chain to.
    previous: RcuOption<PreviousAction>,
    /// Whether the trampoline is installed for this signal (or was, and a
    /// third party has since installed over it). Written under
    /// `INSTALL_LOCK` only.
    installed: AtomicBool,
    // Relaxed counters: statistics that order no other memory.
    delivered: AtomicU64,
    handled: AtomicU64,
    unhandled: AtomicU64,
    chained: AtomicU64,
    default_actions: AtomicU64,
}

impl SignalState {
    const fn new() -> Self {
        SignalState {
            registry: HandlerRegistry::new(),
            previous: RcuOption::new(),
            installed: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            unhandled: AtomicU64::new(0),
            chained: AtomicU64::new(0),
            default_actions: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> SignalStats {
        SignalStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            handled: self.handled.load(Ordering::Relaxed),
            unhandled: self.unhandled.load(Ordering::Relaxed),
            chained: self.chained.load(Ordering::Relaxed),
            default_actions: self.default_actions.load(Ordering::Relaxed),
        }
    }
}

/// One state per signal number; index 0 is unused.
static STATES: [SignalState; MAX_SIGNAL_NUMBER as usize + 1] =
    [const { SignalState::new() }; MAX_SIGNAL_NUMBER as usize + 1];

/// Returns the state of `signal`.
///
/// # Async-signal safety
///
/// Safe: indexes a static array.
pub(crate) fn state(signal: Signal) -> &'static SignalState {
    // `Signal` guarantees 1..=MAX_SIGNAL_NUMBER.
    &STATES[signal.number() as usize]
}

/// Returns the states of every signal whose trampoline is installed.
pub(crate) fn installed_states() -> impl Iterator<Item = &'static SignalState> {
    // Relaxed: a stale flag only delays a watchdog report.
    STATES
        .iter()
        .filter(|state| state.installed.load(Ordering::Relaxed))
}

/// Takes [`INSTALL_LOCK`]. Its data is `()`, so poisoning carries no broken
/// invariant and is ignored.
pub(crate) fn lock() -> MutexGuard<'static, ()> {
    INSTALL_LOCK.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Returns the `sigaction` that installs the trampoline.
///
/// # Async-signal safety
///
/// Safe: see [`sys::siginfo_action`].
fn trampoline_action() -> libc::sigaction {
    sys::siginfo_action(trampoline)
}

/// Returns `true` when `action` is the trampoline.
fn is_trampoline(action: &libc::sigaction) -> bool {
    action.sa_sigaction == trampoline as sys::SigInfoHandler as usize
}

/// Installs the trampoline for `signal` unless it is installed already.
/// Call with [`INSTALL_LOCK`] held.
pub(crate) fn install(signal: Signal, _lock: &MutexGuard<'static, ()>) -> Result<(), Error> {
    let state = state(signal);
    // Relaxed: only written under INSTALL_LOCK, which the caller holds.
    if state.installed.load(Ordering::Relaxed) {
        return Ok(());
    }
    let signo = signal.number();
    let system_error = |source| Error::System {
        call: "sigaction",
        signal,
        source,
    };

    // Publish the chain target before the trampoline can run.
    let current = sys::query_action(signo).map_err(system_error)?;
    publish_previous(state, current);

    let replaced = sys::set_action(signo, &trampoline_action()).map_err(system_error)?;
    if !same_handler(&replaced, &current) {
        // Someone changed the disposition between the query and the store.
        publish_previous(state, replaced);
    }
    state.installed.store(true, Ordering::Relaxed);
    Ok(())
}

/// Restores the saved disposition of `signal` if its registry is empty and
/// the trampoline is still the installed action. Call with
/// [`INSTALL_LOCK`] held.
pub(crate) fn uninstall_if_unused(
    signal: Signal,
    _lock: &MutexGuard<'static, ()>,
) -> Result<(), Error> {
    let state = state(signal);
    // Relaxed: only written under INSTALL_LOCK, which the caller holds.
    if !state.installed.load(Ordering::Relaxed) || !state.registry.is_empty() {
        return Ok(());
    }
    let signo = signal.number();
    let system_error = |source| Error::System {
        call: "sigaction",
        signal,
        source,
    };

    let current = sys::query_action(signo).map_err(system_error)?;
    if !is_trampoline(&current) {
        // Someone installed over the trampoline; it stays and keeps
        // chaining, and a later registration reuses it.
        return Ok(());
    }
    let restore = {
        let guard = read_lock();
        state
            .previous
            .read(&guard)
            .map_or_else(sys::empty_action, PreviousAction::to_restore)
    };
    sys::set_action(signo, &restore).map_err(system_error)?;
    state.installed.store(false, Ordering::Relaxed);
    Ok(())
}

/// Publishes `action` as the chain target of `state`; never the trampoline
/// itself (see the invariant on [`PreviousAction`]).
fn publish_previous(state: &SignalState, action: libc::sigaction) {
    let action = if is_trampoline(&action) {
        sys::empty_action()
    } else {
        action
    };
    if let Some(retired) = state
        .previous
        .replace(Some(RcuBox::new(PreviousAction::new(action))))
    {
        retired.defer();
    }
}

/// Returns `true` when two dispositions have the same handler and flags.
fn same_handler(a: &libc::sigaction, b: &libc::sigaction) -> bool {
    a.sa_sigaction == b.sa_sigaction && a.sa_flags == b.sa_flags
}

/// Returns the saved previous disposition of `signal`, if any.
pub(crate) fn previous_action(signal: Signal) -> Option<libc::sigaction> {
    let guard = read_lock();
    state(signal)
        .previous
        .read(&guard)
        .map(|previous| *previous.raw())
}

/// The message written before aborting on a handler's panic.
pub(crate) const PANIC_MESSAGE: &[u8] =
    b"a registered handler panicked; a signal handler cannot unwind";

/// The function the kernel calls for every signal with a trampoline.
///
/// # Async-signal safety
///
/// Safe: every step listed in the module documentation is, provided the
/// registered handlers are.
extern "C" fn trampoline(signo: c_int, info: *mut libc::siginfo_t, ucontext: *mut c_void) {
    let saved_errno = sys::errno();
    let Some(signal) = Signal::from_kernel(signo) else {
        sys::fatal(
            signo,
            b"the trampoline was called for a signal number it does not know",
        );
    };
    let state = state(signal);
    // Relaxed: statistics, see `SignalState`.
    state.delivered.fetch_add(1, Ordering::Relaxed);

    rtsan::realtime_enter();
    // SAFETY: `info` and `ucontext` are the kernel's pointers for this
    // delivery, valid until the trampoline returns.
    let handled = unsafe { dispatch(signal, state, info, ucontext) };
    rtsan::realtime_exit();
    if handled > 0 {
        state.handled.fetch_add(1, Ordering::Relaxed);
    } else {
        state.unhandled.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above; `signo` is blocked because the trampoline is
        // installed without SA_NODEFER.
        unsafe { fall_back(signal, state, info, ucontext) };
    }

    sys::set_errno(saved_errno);
}

/// Runs the registered handlers for one delivery inside [`NmiContext`] and
/// `catch_unwind`, and returns how many handled it.
///
/// # Safety
///
/// 1. `info` and `ucontext` are the kernel's pointers for this delivery.
///
/// # Async-signal safety
///
/// Safe: see [`HandlerRegistry::dispatch`]. `catch_unwind` costs nothing
/// unless a handler panics, and then the process aborts.
unsafe fn dispatch(
    signal: Signal,
    state: &SignalState,
    info: *mut libc::siginfo_t,
    ucontext: *mut c_void,
) -> usize {
    let _nmi = NmiContext::enter();
    let _marker = DispatchMarker::enter(signal.number());
    // SAFETY: precondition 1 discharges both preconditions of `new`; the
    // context does not outlive this function.
    let context = unsafe { SignalContext::new(signal, info, ucontext) };
    match catch_unwind(AssertUnwindSafe(|| state.registry.dispatch(&context))) {
        Ok(handled) => handled,
        Err(payload) => {
            // Dropping the payload could run arbitrary code; abort instead.
            core::mem::forget(payload);
            sys::fatal(signal.number(), PANIC_MESSAGE)
        }
    }
}

/// Passes a declined signal on to the previous disposition.
///
/// # Safety
///
/// 1. `info` and `ucontext` are the kernel's pointers for this delivery.
/// 2. The caller is the trampoline, with the signal blocked.
///
/// # Async-signal safety
///
/// Safe: see [`action::call_previous`] and [`action::perform_default`].
unsafe fn fall_back(
    signal: Signal,
    state: &SignalState,
    info: *mut libc::siginfo_t,
    ucontext: *mut c_void,
) {
    // Copy the decision out of the read-side critical section: the previous
    // handler may never return here (`siglongjmp`).
    let fallback = {
        let guard = read_lock();
        state
            .previous
            .read(&guard)
            .map_or(Fallback::Default, PreviousAction::fallback)
    };

    match fallback {
        Fallback::Handler(action) => {
            state.chained.fetch_add(1, Ordering::Relaxed);
            // SAFETY: precondition 1; `fallback` only returns a handler
            // address with the flags it was installed with.
            unsafe { action::call_previous(signal.number(), &action, info, ucontext) };
        }
        Fallback::Ignore => {
            state.chained.fetch_add(1, Ordering::Relaxed);
        }
        Fallback::Default => {
            state.default_actions.fetch_add(1, Ordering::Relaxed);
            // SAFETY: preconditions 1 and 2 are this function's.
            unsafe { action::perform_default(signal.number(), info, &trampoline_action()) };
        }
    }
}

/// Marks the dispatch path as a real-time region for RealtimeSanitizer when
/// built with `--cfg nmi_rcu_rtsan` and `-Zsanitizer=realtime`: RTSan then
/// reports any allocation, lock or blocking call made between
/// `realtime_enter` and `realtime_exit`, the registered handlers included.
/// Without that cfg both functions are empty.
mod rtsan {
    #[cfg(nmi_rcu_rtsan)]
    extern "C" {
        fn __rtsan_realtime_enter();
        fn __rtsan_realtime_exit();
    }

    /// Enters the real-time region.
    ///
    /// # Async-signal safety
    ///
    /// Safe: RTSan's entry point only updates a thread-local depth.
    #[inline(always)]
    pub(super) fn realtime_enter() {
        // SAFETY: the RTSan runtime is linked whenever this cfg is set,
        // and the call has no preconditions.
        #[cfg(nmi_rcu_rtsan)]
        unsafe {
            __rtsan_realtime_enter()
        };
    }

    /// Leaves the real-time region.
    ///
    /// # Async-signal safety
    ///
    /// Safe, for the reason given on [`realtime_enter`].
    #[inline(always)]
    pub(super) fn realtime_exit() {
        // SAFETY: as in `realtime_enter`.
        #[cfg(nmi_rcu_rtsan)]
        unsafe {
            __rtsan_realtime_exit()
        };
    }
}
