//! [`SignalContext`]: what a handler learns about one delivery.

use core::ffi::c_void;
use core::fmt;

use super::Signal;

/// One delivery of a signal, as passed to every handler registered with
/// [`register`](super::register).
///
/// The accessors read the siginfo the kernel passed to the trampoline and
/// return `None` for fields that this kind of delivery does not carry. A
/// `SignalContext` lives only for the duration of the trampoline call, so
/// it is neither `Send` nor `Sync`.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicI32, Ordering};
/// use nmi_rcu::signal::{self, Signal, SignalContext};
/// use nmi_rcu::Outcome;
///
/// static SENDER: AtomicI32 = AtomicI32::new(0);
///
/// let usr2 = Signal::new(libc::SIGUSR2)?;
/// let registration = signal::register(usr2, "context-doc", |context: &SignalContext| {
///     SENDER.store(context.sender_pid().unwrap_or(-1), Ordering::Relaxed);
///     Outcome::Handled
/// })?;
/// // SAFETY: raising a signal that has a handler installed.
/// unsafe { libc::raise(libc::SIGUSR2) };
/// assert_eq!(SENDER.load(Ordering::Relaxed), std::process::id() as i32);
/// registration.unregister()?;
/// # Ok::<(), nmi_rcu::signal::Error>(())
/// ```
pub struct SignalContext {
    signal: Signal,
    info: *const libc::siginfo_t,
    ucontext: *mut c_void,
    /// The receiving thread's kernel id, fetched on first use: `gettid(2)`
    /// is a system call, which most handlers never need. 0 until then.
    thread_id: core::cell::Cell<libc::pid_t>,
}

impl SignalContext {
    /// Wraps one delivery.
    ///
    /// # Async-signal safety
    ///
    /// Safe: stores four values; the thread id is fetched later, on demand.
    ///
    /// # Safety
    ///
    /// 1. `info` points to a valid siginfo that outlives the context.
    /// 2. `ucontext` is the kernel's `ucontext_t` pointer for the same
    ///    delivery (or null).
    pub(crate) unsafe fn new(
        signal: Signal,
        info: *const libc::siginfo_t,
        ucontext: *mut c_void,
    ) -> Self {
        SignalContext {
            signal,
            info,
            ucontext,
            thread_id: core::cell::Cell::new(0),
        }
    }

    /// Returns the raw siginfo of this delivery.
    ///
    /// # Async-signal safety
    ///
    /// Safe: reads the siginfo or a stored field; no allocation, no system
    /// call.
    pub fn siginfo(&self) -> &libc::siginfo_t {
        // SAFETY: by precondition 1 of `new`, `info` is valid for the
        // context's lifetime, and `&self` cannot outlive the context.
        unsafe { &*self.info }
    }

    /// Returns the signal being delivered.
    ///
    /// # Async-signal safety
    ///
    /// Safe: reads the siginfo or a stored field; no allocation, no system
    /// call.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// Returns `si_code`: how the signal was sent (`SI_USER` for `kill`,
    /// `SI_QUEUE` for `sigqueue`, `SI_TKILL` for `tgkill`) or why the
    /// kernel raised it (for example `SEGV_MAPERR`).
    ///
    /// # Async-signal safety
    ///
    /// Safe: reads the siginfo or a stored field; no allocation, no system
    /// call.
    pub fn code(&self) -> i32 {
        self.siginfo().si_code
    }

    /// Returns the kernel thread id of the thread running the handler.
    ///
    /// # Async-signal safety
    ///
    /// Safe: the first call on a context makes one `gettid(2)` system call,
    /// which is async-signal-safe and never blocks; later calls read the
    /// stored value.
    pub fn thread_id(&self) -> i32 {
        if self.thread_id.get() == 0 {
            self.thread_id.set(super::sys::gettid());
        }
        self.thread_id.get()
    }

    /// Returns the process id of the sender, for signals sent by a process
    /// (`kill`, `sigqueue`, `tgkill`, a message queue) and for `SIGCHLD`
    /// (the child).
    ///
    /// # Async-signal safety
    ///
    /// Safe: reads the siginfo or a stored field; no allocation, no system
    /// call.
    pub fn sender_pid(&self) -> Option<i32> {
        // SAFETY: `has_sender` checked that the kernel filled the sender
        // fields of the union.
        self.has_sender()
            .then(|| unsafe { self.siginfo().si_pid() })
    }

    /// Returns the real user id of the sender, under the same conditions as
    /// [`SignalContext::sender_pid`].
    ///
    /// # Async-signal safety
    ///
    /// Safe: reads the siginfo or a stored field; no allocation, no system
    /// call.
    pub fn sender_uid(&self) -> Option<u32> {
        // SAFETY: `has_sender` checked that the kernel filled the sender
        // fields of the union.
        self.has_sender()
            .then(|| unsafe { self.siginfo().si_uid() })
    }

    /// Returns the faulting address for a signal the CPU raised
    /// (`SIGSEGV`, `SIGBUS`, `SIGILL`, `SIGFPE`, `SIGTRAP` with a positive
    /// `si_code`).
    ///
    /// # Async-signal safety
    ///
    /// Safe: reads the siginfo or a stored field; no allocation, no system
    /// call.
    pub fn fault_address(&self) -> Option<usize> {
        let fault = matches!(
            self.signal.number(),
            libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP
        );
        // SAFETY: for these signals with a kernel `si_code` the union contains
        // the fault fields.
        (fault && self.code() > 0).then(|| unsafe { self.siginfo().si_addr() } as usize)
    }

    /// Returns the value sent with the signal by `sigqueue`, a POSIX timer
    /// or a message queue.
    ///
    /// # Async-signal safety
    ///
    /// Safe: reads the siginfo or a stored field; no allocation, no system
    /// call.
    pub fn value(&self) -> Option<libc::sigval> {
        let carries_value = matches!(
            self.code(),
            libc::SI_QUEUE | libc::SI_TIMER | libc::SI_MESGQ
        );
        // SAFETY: for these codes the union contains `si_value`.
        carries_value.then(|| unsafe { self.siginfo().si_value() })
    }

    /// Returns the raw `ucontext_t` pointer the kernel passed (the
    /// interrupted registers and signal mask), for handlers that inspect or
    /// change the interrupted state.
    ///
    /// # Async-signal safety
    ///
    /// Safe: reads the siginfo or a stored field; no allocation, no system
    /// call.
    pub fn ucontext(&self) -> *mut c_void {
        self.ucontext
    }

    fn has_sender(&self) -> bool {
        self.signal.number() == libc::SIGCHLD
            || matches!(
                self.code(),
                libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL | libc::SI_MESGQ
            )
    }
}

impl fmt::Debug for SignalContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalContext")
            .field("signal", &self.signal)
            .field("code", &self.code())
            .field("thread_id", &self.thread_id())
            .field("sender_pid", &self.sender_pid())
            .field("fault_address", &self.fault_address())
            .finish_non_exhaustive()
    }
}
