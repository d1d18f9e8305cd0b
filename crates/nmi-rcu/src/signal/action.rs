//! What happens to a signal that no handler claimed: chaining to the
//! disposition that was installed before the trampoline, or performing the
//! default action for real.
//!
//! # Chaining
//!
//! The previous disposition is stored as a [`PreviousAction`]. A previous
//! handler is called with its own calling convention (`SA_SIGINFO` or not)
//! and with the mask the kernel would have set for it: the mask at delivery
//! (from the `ucontext`), plus its `sa_mask`, plus the signal itself unless
//! it asked for `SA_NODEFER`. `SA_RESETHAND` is honoured once: the first
//! declined signal calls the previous handler and every later one performs
//! the default action, as the kernel would have reset the disposition.
//! `SA_ONSTACK` of the previous handler is not emulated: it runs on the
//! stack the trampoline runs on, which is the alternate stack when one is
//! set, because the trampoline itself is installed with `SA_ONSTACK`.
//!
//! # Default actions
//!
//! - Ignore (`SIGCHLD`, `SIGURG`, `SIGWINCH`) and continue (`SIGCONT`, whose
//!   continuing already happened when the kernel generated it): return.
//! - Terminate and terminate with a core dump: install `SIG_DFL`, queue the
//!   signal to the calling thread again with the original siginfo, and
//!   unblock it. The kernel then kills the process with that signal, so
//!   `waitpid` reports it, and dumps core where the default action does.
//! - Stop (`SIGTSTP`, `SIGTTIN`, `SIGTTOU`): the same, and once the process
//!   is continued, install the trampoline again.
//!
//! Limitation: between installing `SIG_DFL` and re-installing the trampoline
//! after a stop, that one signal number bypasses the trampoline in every
//! thread. For terminating signals the process dies in that window anyway.

use core::ffi::{c_int, c_void};
use core::sync::atomic::{AtomicBool, Ordering};

use super::sys;

/// The default action of a signal, as listed in signal(7) for Linux.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{DefaultAction, Signal};
///
/// let segv = Signal::new(libc::SIGSEGV)?;
/// assert_eq!(segv.default_action(), DefaultAction::CoreDump);
/// let winch = Signal::new(libc::SIGWINCH)?;
/// assert_eq!(winch.default_action(), DefaultAction::Ignore);
/// # Ok::<(), nmi_rcu::signal::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum DefaultAction {
    /// Terminate the process.
    Terminate,
    /// Terminate the process and dump core (subject to `RLIMIT_CORE`).
    CoreDump,
    /// Ignore the signal.
    Ignore,
    /// Stop the process until `SIGCONT`.
    Stop,
    /// Continue a stopped process; otherwise ignore the signal.
    Continue,
}

impl DefaultAction {
    /// Returns the default action of signal number `signo` on Linux.
    /// Real-time signals terminate.
    ///
    /// # Async-signal safety
    ///
    /// Safe: a `match` on the number.
    pub(crate) const fn of(signo: c_int) -> DefaultAction {
        match signo {
            libc::SIGQUIT
            | libc::SIGILL
            | libc::SIGTRAP
            | libc::SIGABRT
            | libc::SIGBUS
            | libc::SIGFPE
            | libc::SIGSEGV
            | libc::SIGXCPU
            | libc::SIGXFSZ
            | libc::SIGSYS => DefaultAction::CoreDump,
            libc::SIGCHLD | libc::SIGURG | libc::SIGWINCH => DefaultAction::Ignore,
            libc::SIGCONT => DefaultAction::Continue,
            libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => DefaultAction::Stop,
            _ => DefaultAction::Terminate,
        }
    }
}

/// The disposition that was installed before the trampoline, kept so that
/// declined signals can be passed on to it.
///
/// Invariant: `action.sa_sigaction` is never the trampoline itself (the
/// installer replaces that case with `SIG_DFL`), so chaining cannot recurse.
pub(crate) struct PreviousAction {
    action: libc::sigaction,
    /// Set once a previous handler with `SA_RESETHAND` has been called.
    reset_done: AtomicBool,
}

/// The treatment of a declined signal, decided from a [`PreviousAction`].
#[derive(Clone, Copy)]
pub(crate) enum Fallback {
    /// Call this previous handler.
    Handler(libc::sigaction),
    /// The previous disposition was `SIG_IGN`.
    Ignore,
    /// The previous disposition was `SIG_DFL`, or a `SA_RESETHAND` handler
    /// that has already run once.
    Default,
}

impl PreviousAction {
    /// Wraps the disposition returned by `sigaction`.
    pub(crate) fn new(action: libc::sigaction) -> PreviousAction {
        PreviousAction {
            action,
            reset_done: AtomicBool::new(false),
        }
    }

    /// Returns the disposition to restore when the trampoline is removed:
    /// the saved one, or `SIG_DFL` once a `SA_RESETHAND` handler has run,
    /// because the kernel would have reset it by now.
    pub(crate) fn to_restore(&self) -> libc::sigaction {
        // Relaxed: the flag carries no data; the signal-layer lock orders
        // this read after the installation it belongs to.
        if self.reset_done.load(Ordering::Relaxed) {
            sys::empty_action()
        } else {
            self.action
        }
    }

    /// Returns the saved `sigaction` as it was.
    pub(crate) fn raw(&self) -> &libc::sigaction {
        &self.action
    }

    /// Decides what to do with a declined signal, consuming the one call
    /// that a `SA_RESETHAND` handler gets.
    ///
    /// # Async-signal safety
    ///
    /// Safe: a copy and at most one atomic swap.
    pub(crate) fn fallback(&self) -> Fallback {
        match self.action.sa_sigaction {
            libc::SIG_DFL => Fallback::Default,
            libc::SIG_IGN => Fallback::Ignore,
            _ if self.action.sa_flags & libc::SA_RESETHAND == 0 => Fallback::Handler(self.action),
            // AcqRel: exactly one of several concurrent deliveries wins the
            // swap. The ordering keeps `to_restore` from reading a stale
            // value after a delivery on another thread consumed the call.
            _ if !self.reset_done.swap(true, Ordering::AcqRel) => Fallback::Handler(self.action),
            _ => Fallback::Default,
        }
    }
}

/// Calls the previous handler `action` for `signo` with its own calling
/// convention and mask, then restores the trampoline's mask.
///
/// # Safety
///
/// 1. `info` and `ucontext` are the pointers the kernel passed to the
///    trampoline for this delivery.
/// 2. `action.sa_sigaction` is a handler address (not `SIG_DFL` or
///    `SIG_IGN`) whose signature matches `action.sa_flags`.
///
/// # Async-signal safety
///
/// Safe as far as this function goes: it uses `sigaddset`, `sigdelset`,
/// `sigismember` and `pthread_sigmask`. The previous handler's own safety
/// is its author's business.
pub(crate) unsafe fn call_previous(
    signo: c_int,
    action: &libc::sigaction,
    info: *mut libc::siginfo_t,
    ucontext: *mut c_void,
) {
    // Step 1: the mask the kernel would have installed for this handler.
    // SAFETY: by precondition 1, `ucontext` is null or points to the
    // `ucontext_t` of this delivery.
    let delivery_mask =
        unsafe { ucontext.cast::<libc::ucontext_t>().as_ref() }.map(|uc| uc.uc_sigmask);
    let mut mask = match delivery_mask {
        Some(mask) => mask,
        None => current_mask(signo),
    };
    add_all(&mut mask, &action.sa_mask);
    // SAFETY: `mask` is an initialised set and `signo` a valid signal.
    unsafe {
        if action.sa_flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut mask, signo);
        } else {
            libc::sigdelset(&mut mask, signo);
        }
    }
    let trampoline_mask = sys::set_thread_mask_or_die(signo, &mask);

    // Step 2: the call, in the convention the handler was installed with.
    if action.sa_flags & libc::SA_SIGINFO != 0 {
        // SAFETY: by precondition 2 the address is a three-argument
        // handler, and by precondition 1 the arguments are the kernel's.
        let handler: sys::SigInfoHandler = unsafe { core::mem::transmute(action.sa_sigaction) };
        handler(signo, info, ucontext);
    } else {
        // SAFETY: by precondition 2 the address is a one-argument handler.
        let handler: sys::PlainHandler = unsafe { core::mem::transmute(action.sa_sigaction) };
        handler(signo);
    }

    // Step 3: back to the mask the trampoline runs with.
    sys::set_thread_mask_or_die(signo, &trampoline_mask);
}

/// Returns the calling thread's current signal mask.
///
/// # Async-signal safety
///
/// Safe: `pthread_sigmask` is async-signal-safe.
fn current_mask(signo: c_int) -> libc::sigset_t {
    let mut mask = core::mem::MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: a null `set` only queries; `mask` is writable storage.
    let rc =
        unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), mask.as_mut_ptr()) };
    if rc != 0 {
        sys::fatal(
            signo,
            b"pthread_sigmask failed while reading the thread's mask",
        );
    }
    // SAFETY: `pthread_sigmask` returned 0, so it filled `mask`.
    unsafe { mask.assume_init() }
}

/// Adds every member of `extra` to `mask`.
///
/// # Async-signal safety
///
/// Safe: `sigismember` and `sigaddset` are async-signal-safe.
fn add_all(mask: &mut libc::sigset_t, extra: &libc::sigset_t) {
    for signo in 1..=super::MAX_SIGNAL_NUMBER {
        // SAFETY: both sets are initialised and `signo` is in range.
        unsafe {
            if libc::sigismember(extra, signo) == 1 {
                libc::sigaddset(mask, signo);
            }
        }
    }
}

/// Performs the default action of `signo` for real.
///
/// Returns when the action is to ignore or continue, or after a stopped
/// process has been continued. Does not return when the action
/// terminates the process.
///
/// # Safety
///
/// 1. `info` is the siginfo pointer the kernel passed to the trampoline
///    for this delivery.
/// 2. The caller runs in the trampoline, with `signo` blocked.
///
/// # Async-signal safety
///
/// Safe: uses `sigaction`, `pthread_sigmask`, `getpid`, `gettid` and
/// `rt_tgsigqueueinfo` only.
pub(crate) unsafe fn perform_default(
    signo: c_int,
    info: *mut libc::siginfo_t,
    reinstall: &libc::sigaction,
) {
    match DefaultAction::of(signo) {
        DefaultAction::Ignore | DefaultAction::Continue => {}
        DefaultAction::Terminate | DefaultAction::CoreDump => {
            // SAFETY: preconditions 1 and 2 are this function's.
            unsafe { reraise_with_default(signo, info) };
            // Only a signal still blocked by something outside our control
            // could get here; the process must not go on as if handled.
            sys::fatal(signo, b"the re-raised signal did not terminate the process");
        }
        DefaultAction::Stop => {
            // SAFETY: preconditions 1 and 2 are this function's.
            unsafe { reraise_with_default(signo, info) };
            // The process was stopped and has now been continued.
            if sys::set_action(signo, reinstall).is_err() {
                sys::fatal(signo, b"could not re-install the trampoline after a stop");
            }
        }
    }
}

/// Installs `SIG_DFL`, queues `signo` with the original siginfo to the
/// calling thread and unblocks it, so the kernel performs the default
/// action before this returns.
///
/// # Safety
///
/// The preconditions of [`perform_default`].
///
/// # Async-signal safety
///
/// See [`perform_default`].
unsafe fn reraise_with_default(signo: c_int, info: *mut libc::siginfo_t) {
    sys::set_default_or_die(signo);
    sys::queue_to_self_or_die(signo, info);
    sys::unblock_or_die(signo);
}
