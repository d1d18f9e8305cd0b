//! The Linux system calls behind the torture test: raw `sigaction`,
//! per-thread CPU-time timers, `tgkill` and `errno`.
//!
//! Every return value is checked. Only [`send_to_thread`], [`errno`] and
//! [`set_errno`] may run in a signal handler; their rustdoc says why.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

/// Signal delivered by the per-thread CPU-time timers.
pub const TIMER_SIGNAL: libc::c_int = libc::SIGPROF;

/// Signal sent by the `tgkill` storm.
pub const STORM_SIGNAL: libc::c_int = libc::SIGUSR2;

/// A failed system call, with the call named.
#[derive(Debug)]
pub struct OsError {
    /// The call that failed, such as `timer_create`.
    pub call: &'static str,
    /// The error the call reported.
    pub source: io::Error,
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.call, self.source)
    }
}

impl std::error::Error for OsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

fn check(call: &'static str, result: libc::c_int) -> Result<(), OsError> {
    if result == 0 {
        Ok(())
    } else {
        Err(OsError {
            call,
            source: io::Error::last_os_error(),
        })
    }
}

/// The signature of a handler installed with `SA_SIGINFO`.
pub type SigInfoHandler = extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Handlers installed for the torture signals; dropping this restores the
/// dispositions that were there before.
pub struct InstalledHandlers {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

/// Installs `handler` for each of `signals` with `SA_SIGINFO`, `SA_ONSTACK`
/// and `SA_RESTART`, and an empty mask, so one torture signal can interrupt
/// the handler of the other.
///
/// # Errors
///
/// The failing `sigaction` call; the signals already installed are restored.
pub fn install_handlers(
    signals: &[libc::c_int],
    handler: SigInfoHandler,
) -> Result<InstalledHandlers, OsError> {
    let mut installed = InstalledHandlers {
        previous: Vec::new(),
    };
    for &signal in signals {
        // SAFETY: `sigaction` is plain data; all-zero is a valid value
        // (SIG_DFL, no flags, empty mask), and the fields we need are set
        // below.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        // SAFETY: `sa_mask` is a valid, writable `sigset_t`.
        check("sigemptyset", unsafe {
            libc::sigemptyset(&mut action.sa_mask)
        })?;

        let mut previous = MaybeUninit::<libc::sigaction>::uninit();
        // SAFETY: both pointers are valid for the call; `handler` has the
        // `SA_SIGINFO` signature and stays valid for the life of the program.
        check("sigaction", unsafe {
            libc::sigaction(signal, &action, previous.as_mut_ptr())
        })?;
        // SAFETY: `sigaction` returned 0, so it wrote the previous action.
        let previous = unsafe { previous.assume_init() };
        installed.previous.push((signal, previous));
    }
    Ok(installed)
}

impl Drop for InstalledHandlers {
    fn drop(&mut self) {
        for (signal, previous) in self.previous.drain(..).rev() {
            // SAFETY: `previous` is the action the kernel returned for
            // `signal`, so it is valid to install again.
            let result = unsafe { libc::sigaction(signal, &previous, std::ptr::null_mut()) };
            if let Err(error) = check("sigaction", result) {
                log::warn!("could not restore the disposition of signal {signal}: {error}");
            }
        }
    }
}

/// A POSIX timer on the calling thread's CPU-time clock that sends a signal
/// to that thread; dropping it deletes the timer.
pub struct ThreadCpuTimer {
    id: libc::timer_t,
}

impl ThreadCpuTimer {
    /// Starts a timer that sends `signal` to the calling thread each time the
    /// thread has used `interval` of CPU time.
    ///
    /// # Errors
    ///
    /// The failing `timer_create` or `timer_settime` call.
    pub fn start(signal: libc::c_int, interval: Duration) -> Result<ThreadCpuTimer, OsError> {
        // SAFETY: `sigevent` is plain data and all-zero is a valid value; the
        // fields the kernel reads for SIGEV_THREAD_ID are set below.
        let mut event: libc::sigevent = unsafe { std::mem::zeroed() };
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = signal;
        event.sigev_notify_thread_id = current_thread_id();

        let mut id = MaybeUninit::<libc::timer_t>::uninit();
        // SAFETY: both pointers are valid for the call. CLOCK_THREAD_CPUTIME_ID
        // names the calling thread's CPU-time clock.
        check("timer_create", unsafe {
            libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut event, id.as_mut_ptr())
        })?;
        // SAFETY: `timer_create` returned 0, so it wrote the timer id.
        let id = unsafe { id.assume_init() };
        let timer = ThreadCpuTimer { id };

        let period = timespec(interval);
        let setting = libc::itimerspec {
            it_interval: period,
            it_value: period,
        };
        // SAFETY: `timer.id` is a live timer and `setting` is valid; the old
        // setting is not requested.
        check("timer_settime", unsafe {
            libc::timer_settime(timer.id, 0, &setting, std::ptr::null_mut())
        })?;
        Ok(timer)
    }
}

impl Drop for ThreadCpuTimer {
    fn drop(&mut self) {
        // SAFETY: `self.id` is a live timer that only this value deletes.
        let result = unsafe { libc::timer_delete(self.id) };
        if let Err(error) = check("timer_delete", result) {
            log::warn!("could not delete a CPU-time timer: {error}");
        }
    }
}

fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        // Timer intervals are at most one second, and `subsec_nanos` is
        // below 10^9, so both fit their C types.
        tv_sec: duration.as_secs() as libc::time_t,
        tv_nsec: duration.subsec_nanos() as libc::c_long,
    }
}

/// Returns the kernel thread id of the calling thread.
pub fn current_thread_id() -> libc::pid_t {
    // SAFETY: `gettid` has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Returns the id of this process.
pub fn process_id() -> libc::pid_t {
    // SAFETY: `getpid` has no preconditions and cannot fail.
    unsafe { libc::getpid() }
}

/// Sends `signal` to thread `thread_id` of process `process_id` with `tgkill`.
///
/// # Errors
///
/// The `tgkill` error, such as `ESRCH` for a thread that has exited.
///
/// # Async-signal safety
///
/// Safe: one system call. The C library's wrapper keeps no state and only
/// sets `errno` on failure.
pub fn send_to_thread(
    process_id: libc::pid_t,
    thread_id: libc::pid_t,
    signal: libc::c_int,
) -> Result<(), OsError> {
    // SAFETY: `tgkill` only reads its integer arguments.
    check("tgkill", unsafe {
        libc::tgkill(process_id, thread_id, signal)
    })
}

/// Returns the calling thread's `errno`.
///
/// # Async-signal safety
///
/// Safe: reads a thread-local integer through the C library's accessor,
/// which neither allocates nor locks.
#[inline]
pub fn errno() -> libc::c_int {
    // SAFETY: `__errno_location` returns a valid pointer to this thread's
    // errno.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
///
/// # Async-signal safety
///
/// Safe, for the same reason as [`errno`].
#[inline]
pub fn set_errno(value: libc::c_int) {
    // SAFETY: `__errno_location` returns a valid pointer to this thread's
    // errno, which only this thread writes.
    unsafe { *libc::__errno_location() = value }
}
