//! The signal layer: POSIX signals as user-space NMIs, dispatched through a
//! [`HandlerRegistry`] per signal.
//!
//! [`register`] installs one process-wide trampoline per signal with
//! `sigaction` (`SA_SIGINFO | SA_ONSTACK | SA_RESTART`) on the first
//! registration and saves the disposition it replaced. Every delivery runs
//! the registered handlers inside a read-side critical section; when none
//! of them returns [`Outcome::Handled`], the signal goes on as if this
//! library were absent:
//!
//! - a previous handler is called with its own calling convention, mask
//!   and flags (`SA_SIGINFO` or not, `SA_NODEFER`, `SA_RESETHAND`), with the
//!   original siginfo and `ucontext`;
//! - a previous `SIG_IGN` ignores the signal;
//! - a previous `SIG_DFL` performs the default action for real: the process
//!   terminates with that signal (dumping core where the default does), so
//!   `waitpid` in the parent reports it, or it stops, or the signal is
//!   ignored.
//!
//! The trampoline preserves `errno`. A handler that panics aborts the
//! process with a message written with `write(2)`; nothing unwinds out of
//! a signal handler. Removing the last handler of a signal restores the
//! saved disposition, unless another handler has been installed over the
//! trampoline since; then the trampoline stays and keeps chaining.
//!
//! # Handlers
//!
//! A handler runs in a signal handler, on whatever thread the kernel
//! picked, possibly on an alternate signal stack, possibly interrupting
//! code that holds locks. It must be async-signal-safe: no allocation, no
//! locks, no `println!`. It may read RCU-protected data, update atomics,
//! call [`HandlerSlot::set_prepared`](crate::HandlerSlot::set_prepared) and
//! [`HandlerSlot::unset`](crate::HandlerSlot::unset), and call functions
//! listed in signal-safety(7). Calls that would block or allocate
//! (`synchronize`, [`register`], [`Registration::unregister`]) panic when
//! made from a handler, and that panic aborts the process with a message.
//!
//! # Stack
//!
//! The trampoline runs on the thread's alternate signal stack when it has
//! one. Rust gives each thread an 8 KiB one, which two or three nested
//! signals overflow: call [`ensure_alt_stack`] at the start of each thread
//! that takes signals from several sources.
//!
//! # Watchdog
//!
//! Each signal's registry times its handlers. A background thread named
//! `nmi-rcu-watchdog`, started by the first registration in a process,
//! calls [`HandlerRegistry::report_slow_handlers`] every 250 ms, which
//! logs a `log::warn!` line for a handler that set a new maximum duration
//! above the threshold (1 ms by default, see [`set_watchdog_threshold`]).
//!
//! # Limitations
//!
//! - Linux with glibc only: the trampoline reads `uc_sigmask` from the
//!   `ucontext` and re-raises with `rt_tgsigqueueinfo`.
//! - `SA_ONSTACK` of a previous handler is not emulated; it runs on the
//!   trampoline's stack.
//! - To stop the process, the trampoline installs `SIG_DFL` for the
//!   stop signal, re-raises it and installs itself again after `SIGCONT`.
//!   In between, that one signal bypasses the trampoline in every thread.
//! - `sigaction` has no compare-and-swap: a third party that changes the
//!   disposition at the same moment as [`register`] or the last
//!   unregistration can have its change overwritten.
//!
//! # Examples
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use nmi_rcu::signal::{self, Signal};
//! use nmi_rcu::Outcome;
//!
//! static HITS: AtomicU64 = AtomicU64::new(0);
//!
//! let usr1 = Signal::new(libc::SIGUSR1)?;
//! let registration = signal::register(usr1, "count", |_| {
//!     HITS.fetch_add(1, Ordering::Relaxed);
//!     Outcome::Handled
//! })?;
//!
//! // SAFETY: SIGUSR1 has a handler now, so raising it does not kill us.
//! unsafe { libc::raise(libc::SIGUSR1) };
//! assert_eq!(HITS.load(Ordering::Relaxed), 1);
//! assert_eq!(signal::stats(usr1).handled, 1);
//!
//! // Blocks for a grace period, then restores the previous disposition.
//! registration.unregister()?;
//! # Ok::<(), signal::Error>(())
//! ```

mod action;
mod altstack;
mod context;
mod panic_hook;
mod sys;
mod trampoline;

use core::fmt;
use core::sync::atomic::{AtomicI32, Ordering};
use core::time::Duration;
use std::io;

pub use action::DefaultAction;
pub use altstack::{
    ensure_alt_stack, AltStack, AltStackError, MAX_ALT_STACK_SIZE, RECOMMENDED_ALT_STACK_SIZE,
};
pub use context::SignalContext;

#[cfg(doc)]
use crate::HandlerRegistry;
use crate::{HandlerError, HandlerStats, Order, Outcome};

/// The largest signal number on Linux (`_NSIG - 1`); `SIGRTMAX` is never
/// larger.
pub(crate) const MAX_SIGNAL_NUMBER: i32 = 64;

/// How often the watchdog thread reports slow handlers.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(250);

/// A signal number that handlers can be registered for: a catchable signal
/// in `1..=SIGRTMAX`, excluding `SIGKILL`, `SIGSTOP` and the real-time
/// signals that glibc reserves for itself (below `SIGRTMIN`).
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{Error, Signal};
///
/// let prof = Signal::new(libc::SIGPROF)?;
/// assert_eq!(prof.number(), libc::SIGPROF);
/// assert_eq!(prof.to_string(), "SIGPROF");
/// assert!(matches!(Signal::new(libc::SIGKILL), Err(Error::Uncatchable { .. })));
/// assert!(matches!(Signal::new(0), Err(Error::OutOfRange { .. })));
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Signal(i32);

impl Signal {
    /// Validates `signo`.
    ///
    /// # Errors
    ///
    /// - [`Error::OutOfRange`] for 0, negative numbers and numbers above
    ///   `SIGRTMAX`;
    /// - [`Error::Uncatchable`] for `SIGKILL` and `SIGSTOP`;
    /// - [`Error::Reserved`] for the real-time signals below `SIGRTMIN`,
    ///   which glibc uses internally.
    pub fn new(signo: i32) -> Result<Signal, Error> {
        let max = libc::SIGRTMAX();
        if !(1..=max).contains(&signo) {
            return Err(Error::OutOfRange { signo, max });
        }
        if signo == libc::SIGKILL || signo == libc::SIGSTOP {
            return Err(Error::Uncatchable { signo });
        }
        let min_realtime = libc::SIGRTMIN();
        // 32 is the first real-time number the kernel provides (SIGRTMIN
        // as the kernel defines it); glibc keeps those below its SIGRTMIN.
        if (32..min_realtime).contains(&signo) {
            return Err(Error::Reserved {
                signo,
                min_realtime,
            });
        }
        Ok(Signal(signo))
    }

    /// Builds a `Signal` from a number the kernel passed to the trampoline.
    ///
    /// # Async-signal safety
    ///
    /// Safe: a range check.
    fn from_kernel(signo: i32) -> Option<Signal> {
        (1..=MAX_SIGNAL_NUMBER)
            .contains(&signo)
            .then_some(Signal(signo))
    }

    /// Returns the signal number.
    pub fn number(self) -> i32 {
        self.0
    }

    /// Returns the default action of this signal on Linux.
    pub fn default_action(self) -> DefaultAction {
        DefaultAction::of(self.0)
    }

    /// Returns the conventional name of a standard signal (`"SIGSEGV"`), or
    /// `None` for a real-time signal.
    pub fn name(self) -> Option<&'static str> {
        let name = match self.0 {
            libc::SIGHUP => "SIGHUP",
            libc::SIGINT => "SIGINT",
            libc::SIGQUIT => "SIGQUIT",
            libc::SIGILL => "SIGILL",
            libc::SIGTRAP => "SIGTRAP",
            libc::SIGABRT => "SIGABRT",
            libc::SIGBUS => "SIGBUS",
            libc::SIGFPE => "SIGFPE",
            libc::SIGUSR1 => "SIGUSR1",
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGUSR2 => "SIGUSR2",
            libc::SIGPIPE => "SIGPIPE",
            libc::SIGALRM => "SIGALRM",
            libc::SIGTERM => "SIGTERM",
            libc::SIGSTKFLT => "SIGSTKFLT",
            libc::SIGCHLD => "SIGCHLD",
            libc::SIGCONT => "SIGCONT",
            libc::SIGTSTP => "SIGTSTP",
            libc::SIGTTIN => "SIGTTIN",
            libc::SIGTTOU => "SIGTTOU",
            libc::SIGURG => "SIGURG",
            libc::SIGXCPU => "SIGXCPU",
            libc::SIGXFSZ => "SIGXFSZ",
            libc::SIGVTALRM => "SIGVTALRM",
            libc::SIGPROF => "SIGPROF",
            libc::SIGWINCH => "SIGWINCH",
            libc::SIGIO => "SIGIO",
            libc::SIGPWR => "SIGPWR",
            libc::SIGSYS => "SIGSYS",
            _ => return None,
        };
        Some(name)
    }
}

impl fmt::Display for Signal {
    /// Formats a standard signal by name and a real-time one as
    /// `SIGRTMIN+n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "SIGRTMIN+{}", self.0 - libc::SIGRTMIN()),
        }
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signal({self} = {})", self.0)
    }
}

impl TryFrom<i32> for Signal {
    type Error = Error;

    fn try_from(signo: i32) -> Result<Signal, Error> {
        Signal::new(signo)
    }
}

/// An invalid signal-layer request, or a failed system call.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{Error, Signal};
///
/// let error = Signal::new(libc::SIGSTOP).unwrap_err();
/// assert!(matches!(error, Error::Uncatchable { signo } if signo == libc::SIGSTOP));
/// assert_eq!(
///     error.to_string(),
///     "signal number 19 (SIGSTOP) cannot be caught; choose another signal"
/// );
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The number is not a signal on this system.
    OutOfRange {
        /// The rejected number.
        signo: i32,
        /// `SIGRTMAX`, the largest valid number.
        max: i32,
    },
    /// `SIGKILL` and `SIGSTOP` cannot be caught.
    Uncatchable {
        /// The rejected number.
        signo: i32,
    },
    /// A real-time signal that glibc reserves for its own use.
    Reserved {
        /// The rejected number.
        signo: i32,
        /// `SIGRTMIN`, the first real-time signal free for applications.
        min_realtime: i32,
    },
    /// A handler with this name is already registered for this signal.
    DuplicateName {
        /// The signal.
        signal: Signal,
        /// The rejected name.
        name: String,
    },
    /// No handler with this name is registered for this signal.
    NotRegistered {
        /// The signal.
        signal: Signal,
        /// The name that was not found.
        name: String,
    },
    /// A system call failed.
    System {
        /// The failed call.
        call: &'static str,
        /// The signal it was made for.
        signal: Signal,
        /// The error the call returned.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::OutOfRange { signo, max } => {
                write!(
                    f,
                    "signal number {signo} is out of range; valid numbers are 1 to {max}"
                )
            }
            Error::Uncatchable { signo } => write!(
                f,
                "signal number {signo} ({}) cannot be caught; choose another signal",
                if *signo == libc::SIGKILL {
                    "SIGKILL"
                } else {
                    "SIGSTOP"
                }
            ),
            Error::Reserved {
                signo,
                min_realtime,
            } => write!(
                f,
                "signal number {signo} is reserved by the C library; use a real-time signal \
                 from SIGRTMIN ({min_realtime}) upwards"
            ),
            Error::DuplicateName { signal, name } => write!(
                f,
                "a handler named {name:?} is already registered for {signal}; \
                 unregister it first or choose another name"
            ),
            Error::NotRegistered { signal, name } => {
                write!(f, "no handler named {name:?} is registered for {signal}")
            }
            Error::System {
                call,
                signal,
                source,
            } => {
                write!(f, "{call} failed for {signal}: {source}")
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::System { source, .. } => Some(source),
            _ => None,
        }
    }
}

impl Error {
    fn from_handler(signal: Signal, error: HandlerError) -> Error {
        match error {
            HandlerError::DuplicateName { name } => Error::DuplicateName { signal, name },
            HandlerError::NotRegistered { name } => Error::NotRegistered { signal, name },
        }
    }
}

/// Delivery counts for one signal since the process started, as returned
/// by [`stats`].
///
/// `delivered` equals `handled + unhandled` once no delivery is in flight,
/// and `unhandled` equals `chained + default_actions`.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{self, Signal};
/// use nmi_rcu::Outcome;
///
/// let usr1 = Signal::new(libc::SIGUSR1)?;
/// let before = signal::stats(usr1);
/// let registration = signal::register(usr1, "stats-doc", |_| Outcome::Handled)?;
/// // SAFETY: SIGUSR1 has a handler, so raising it is harmless.
/// unsafe { libc::raise(libc::SIGUSR1) };
/// let after = signal::stats(usr1);
/// assert_eq!(after.delivered - before.delivered, 1);
/// assert_eq!(after.handled - before.handled, 1);
/// registration.unregister()?;
/// # Ok::<(), signal::Error>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct SignalStats {
    /// Deliveries that reached the trampoline.
    pub delivered: u64,
    /// Deliveries that at least one handler handled.
    pub handled: u64,
    /// Deliveries that no handler handled.
    pub unhandled: u64,
    /// Declined deliveries passed to the previous handler or ignored
    /// because the previous disposition was `SIG_IGN`.
    pub chained: u64,
    /// Declined deliveries that performed the default action.
    pub default_actions: u64,
}

/// A registered handler. [`Registration::unregister`] removes it and waits
/// for a grace period; dropping it removes it with deferred reclamation.
///
/// Either way, removing the last handler of a signal restores the
/// disposition that was there before the first registration, unless
/// another handler has been installed over the trampoline since.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{self, Signal};
/// use nmi_rcu::Outcome;
///
/// let urg = Signal::new(libc::SIGURG)?;
/// let registration = signal::register(urg, "drop-me", |_| Outcome::Handled)?;
/// assert_eq!(registration.name(), "drop-me");
/// drop(registration); // deferred reclamation
/// # Ok::<(), signal::Error>(())
/// ```
#[must_use = "dropping a Registration unregisters the handler at once"]
#[derive(Debug)]
pub struct Registration {
    signal: Signal,
    /// `None` once the handler has been removed.
    name: Option<String>,
}

impl Registration {
    /// Returns the signal the handler is registered for.
    pub fn signal(&self) -> Signal {
        self.signal
    }

    /// Returns the handler's name.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_default()
    }

    /// Unregisters the handler, restores the previous disposition if it was
    /// the last one, waits for a grace period and drops the handler.
    /// Returns the handler's final statistics.
    ///
    /// # Errors
    ///
    /// [`Error::System`] when restoring the previous disposition failed;
    /// the handler is removed all the same.
    ///
    /// # Panics
    ///
    /// Panics inside a read-side critical section or a signal handler.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it blocks.
    pub fn unregister(mut self) -> Result<HandlerStats, Error> {
        let name = self.name.take().unwrap_or_default();
        let (removed, restored) = remove(self.signal, &name)?;
        let stats = removed.synchronize();
        restored.map(|()| stats)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        match remove(self.signal, &name) {
            Ok((removed, restored)) => {
                removed.discard();
                if let Err(error) = restored {
                    log::error!("dropping the registration of {name:?}: {error}");
                }
            }
            Err(error) => log::error!("dropping the registration of {name:?}: {error}"),
        }
    }
}

/// Removes `name` from the registry of `signal` and uninstalls the
/// trampoline if it was the last handler. The removal result is the outer
/// one; the result of restoring the disposition comes separately, because
/// the handler is gone either way.
type Removal = (crate::RemovedHandler<SignalContext>, Result<(), Error>);

fn remove(signal: Signal, name: &str) -> Result<Removal, Error> {
    let lock = trampoline::lock();
    let removed = trampoline::state(signal)
        .registry
        .remove(name)
        .map_err(|error| Error::from_handler(signal, error))?;
    let restored = trampoline::uninstall_if_unused(signal, &lock);
    Ok((removed, restored))
}

/// Registers `handler` for `signal` under `name`, after the handlers
/// registered so far. See [`register_with`].
///
/// # Errors
///
/// See [`register_with`].
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{self, Error, Signal};
/// use nmi_rcu::Outcome;
///
/// let winch = Signal::new(libc::SIGWINCH)?;
/// let first = signal::register(winch, "resize", |_| Outcome::Handled)?;
/// let second = signal::register(winch, "resize", |_| Outcome::Handled);
/// assert!(matches!(second, Err(Error::DuplicateName { .. })));
/// first.unregister()?;
/// # Ok::<(), Error>(())
/// ```
pub fn register(
    signal: Signal,
    name: &str,
    handler: impl Fn(&SignalContext) -> Outcome + Send + Sync + 'static,
) -> Result<Registration, Error> {
    register_with(signal, name, Order::Last, handler)
}

/// Registers `handler` for `signal` under `name` at position `order`, and
/// installs the trampoline if this is the signal's first handler.
///
/// The handler must be async-signal-safe; the module documentation lists
/// what it may do.
///
/// # Errors
///
/// - [`Error::DuplicateName`] when `name` is already registered for
///   `signal`;
/// - [`Error::System`] when `sigaction` failed; nothing is registered then.
///
/// # Panics
///
/// Panics inside a signal handler.
///
/// # Async-signal safety
///
/// Not safe: it allocates and locks.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{self, Signal};
/// use nmi_rcu::{Order, Outcome};
///
/// let usr1 = Signal::new(libc::SIGUSR1)?;
/// let registration = signal::register_with(usr1, "urgent", Order::First, |_| Outcome::NotHandled)?;
/// registration.unregister()?;
/// # Ok::<(), signal::Error>(())
/// ```
pub fn register_with(
    signal: Signal,
    name: &str,
    order: Order,
    handler: impl Fn(&SignalContext) -> Outcome + Send + Sync + 'static,
) -> Result<Registration, Error> {
    assert!(
        !crate::in_nmi(),
        "signal::register allocates and locks, so it must not be called from a signal handler"
    );
    let lock = trampoline::lock();
    let state = trampoline::state(signal);
    state
        .registry
        .register(name, order, handler)
        .map_err(|error| Error::from_handler(signal, error))?;

    if let Err(error) = trampoline::install(signal, &lock) {
        // Leave nothing registered for a signal we could not catch.
        let _ = state.registry.unregister_deferred(name);
        return Err(error);
    }
    drop(lock);

    panic_hook::install();
    start_watchdog();
    Ok(Registration {
        signal,
        name: Some(name.to_owned()),
    })
}

/// Returns the delivery counts of `signal`.
///
/// # Async-signal safety
///
/// Safe: five atomic loads.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{self, Signal};
///
/// let stats = signal::stats(Signal::new(libc::SIGXCPU)?);
/// assert_eq!(stats.delivered, stats.handled + stats.unhandled);
/// # Ok::<(), signal::Error>(())
/// ```
pub fn stats(signal: Signal) -> SignalStats {
    trampoline::state(signal).stats()
}

/// Returns the statistics of every handler registered for `signal`, in
/// dispatch order.
///
/// # Async-signal safety
///
/// Not safe: it allocates.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{self, Signal};
/// use nmi_rcu::Outcome;
///
/// let usr2 = Signal::new(libc::SIGUSR2)?;
/// let registration = signal::register(usr2, "listed", |_| Outcome::Handled)?;
/// let names: Vec<String> = signal::handler_stats(usr2).into_iter().map(|s| s.name).collect();
/// assert!(names.contains(&"listed".to_string()));
/// registration.unregister()?;
/// # Ok::<(), signal::Error>(())
/// ```
pub fn handler_stats(signal: Signal) -> Vec<HandlerStats> {
    trampoline::state(signal).registry.stats()
}

/// Sets the watchdog threshold for the handlers of `signal`: a handler call
/// longer than `threshold` is reported through `log::warn!`. The default is
/// [`crate::DEFAULT_WATCHDOG_THRESHOLD`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use nmi_rcu::signal::{self, Signal};
///
/// signal::set_watchdog_threshold(Signal::new(libc::SIGPROF)?, Duration::from_micros(200));
/// # Ok::<(), signal::Error>(())
/// ```
pub fn set_watchdog_threshold(signal: Signal, threshold: Duration) {
    trampoline::state(signal)
        .registry
        .set_watchdog_threshold(threshold);
}

/// Returns the disposition that was installed for `signal` before the
/// trampoline, as saved by the most recent installation, or `None` if the
/// trampoline was never installed for it.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{self, Signal};
///
/// assert!(signal::previous_action(Signal::new(libc::SIGTTOU)?).is_none());
/// # Ok::<(), signal::Error>(())
/// ```
pub fn previous_action(signal: Signal) -> Option<libc::sigaction> {
    trampoline::previous_action(signal)
}

/// The process id the watchdog thread runs in, or 0 before it started. A
/// forked child has a different process id and no watchdog thread, so it
/// starts its own.
static WATCHDOG_PID: AtomicI32 = AtomicI32::new(0);

/// Starts the watchdog thread unless this process already has one.
fn start_watchdog() {
    let pid = std::process::id() as i32;
    // Relaxed: at worst two threads race to start a watchdog, and the
    // compare-exchange lets only one of them do it.
    let current = WATCHDOG_PID.load(Ordering::Relaxed);
    if current == pid
        || WATCHDOG_PID
            .compare_exchange(current, pid, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("nmi-rcu-watchdog".into())
        .spawn(|| loop {
            std::thread::sleep(WATCHDOG_PERIOD);
            for state in trampoline::installed_states() {
                state.registry.report_slow_handlers();
            }
        });
    if let Err(error) = spawned {
        WATCHDOG_PID.store(0, Ordering::Relaxed);
        log::warn!("could not start the nmi-rcu watchdog thread, slow handlers will not be reported: {error}");
    }
}
