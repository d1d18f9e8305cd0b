//! The Linux system calls behind the demo and the torture test: raw
//! `sigaction`, signal masks, CPU-time timers, `tgkill` and `errno`.
//!
//! Every return value is checked. Only [`send_to_thread`], [`errno`] and
//! [`set_errno`] may run in a signal handler; their rustdoc says why.

use std::fmt;
use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

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

/// Gives the calling thread an alternate signal stack of
/// [`nmi_rcu::signal::RECOMMENDED_ALT_STACK_SIZE`]. The handlers here are
/// installed with `SA_ONSTACK`, and the 8 KiB stack that Rust gives each
/// thread overflows when two signals nest in a debug build.
///
/// # Errors
///
/// The failing call, or the library's error as the source of an
/// `ensure_alt_stack` failure.
pub fn ensure_signal_stack() -> Result<(), OsError> {
    use nmi_rcu::signal::{ensure_alt_stack, AltStackError, RECOMMENDED_ALT_STACK_SIZE};

    match ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE) {
        Ok(_) => Ok(()),
        Err(AltStackError::System { call, source }) => Err(OsError { call, source }),
        Err(error) => Err(OsError {
            call: "ensure_alt_stack",
            source: io::Error::other(error),
        }),
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

/// Dispositions replaced by [`install_handlers`] or [`ignore_signal`];
/// dropping this restores them.
pub struct SavedDispositions {
    previous: Vec<(libc::c_int, libc::sigaction)>,
}

/// Installs `handler` for each of `signals` with `SA_SIGINFO`, `SA_ONSTACK`
/// and `SA_RESTART`, and an empty mask, so that one of the signals can
/// interrupt the handler of another.
///
/// # Errors
///
/// The failing `sigaction` call; the signals already installed are restored.
pub fn install_handlers(
    signals: &[libc::c_int],
    handler: SigInfoHandler,
) -> Result<SavedDispositions, OsError> {
    let mut saved = SavedDispositions {
        previous: Vec::new(),
    };
    for &signal in signals {
        let mut action = empty_action()?;
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        saved.replace(signal, &action)?;
    }
    Ok(saved)
}

/// Sets the disposition of `signal` to `SIG_IGN`, which also discards a
/// pending instance of it.
///
/// # Errors
///
/// The failing `sigaction` call.
pub fn ignore_signal(signal: libc::c_int) -> Result<SavedDispositions, OsError> {
    let mut saved = SavedDispositions {
        previous: Vec::new(),
    };
    let mut action = empty_action()?;
    action.sa_sigaction = libc::SIG_IGN;
    saved.replace(signal, &action)?;
    Ok(saved)
}

/// Returns a `SIG_DFL` action with no flags and an empty mask.
fn empty_action() -> Result<libc::sigaction, OsError> {
    // SAFETY: `sigaction` is plain data, and all-zero is a valid value
    // (SIG_DFL, no flags); the mask is emptied properly below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: `sa_mask` is a valid, writable `sigset_t`.
    check("sigemptyset", unsafe {
        libc::sigemptyset(&mut action.sa_mask)
    })?;
    Ok(action)
}

impl SavedDispositions {
    /// Installs `action` for `signal` and saves the action it replaced.
    fn replace(&mut self, signal: libc::c_int, action: &libc::sigaction) -> Result<(), OsError> {
        let mut previous = MaybeUninit::<libc::sigaction>::uninit();
        // SAFETY: both pointers are valid for the call. A handler in
        // `action` has the signature its flags announce and stays valid for
        // the life of the program.
        check("sigaction", unsafe {
            libc::sigaction(signal, action, previous.as_mut_ptr())
        })?;
        // SAFETY: `sigaction` returned 0, so it wrote the previous action.
        let previous = unsafe { previous.assume_init() };
        self.previous.push((signal, previous));
        Ok(())
    }
}

impl Drop for SavedDispositions {
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

/// Attempts [`ThreadCpuTimer::start`] makes at `timer_create` while it
/// fails with EAGAIN, 10 ms apart.
const TIMER_CREATE_ATTEMPTS: u32 = 100;

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
        // `timer_create` fails with EAGAIN while the user's queued signals
        // reach RLIMIT_SIGPENDING, for example during another process's
        // real-time signal storm, so a few retries ride that out.
        let mut attempts_left = TIMER_CREATE_ATTEMPTS;
        loop {
            // SAFETY: both pointers are valid for the call.
            // CLOCK_THREAD_CPUTIME_ID names the calling thread's CPU-time
            // clock.
            let created = check("timer_create", unsafe {
                libc::timer_create(libc::CLOCK_THREAD_CPUTIME_ID, &mut event, id.as_mut_ptr())
            });
            match created {
                Err(error)
                    if error.source.kind() == io::ErrorKind::WouldBlock && attempts_left > 1 =>
                {
                    attempts_left -= 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other?,
            }
        }
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

/// A process CPU-time timer (`ITIMER_PROF`) that sends SIGPROF to the
/// process each time its threads together have used an interval of CPU
/// time. Dropping it stops the timer.
pub struct ProfTimer(());

impl ProfTimer {
    /// Starts the process's `ITIMER_PROF` timer with period `interval`.
    ///
    /// # Errors
    ///
    /// The failing `setitimer` call.
    pub fn start(interval: Duration) -> Result<ProfTimer, OsError> {
        set_prof_timer(interval)?;
        Ok(ProfTimer(()))
    }
}

impl Drop for ProfTimer {
    fn drop(&mut self) {
        if let Err(error) = set_prof_timer(Duration::ZERO) {
            log::warn!("could not stop the ITIMER_PROF timer: {error}");
        }
    }
}

fn set_prof_timer(interval: Duration) -> Result<(), OsError> {
    let period = timeval(interval);
    let setting = libc::itimerval {
        it_interval: period,
        it_value: period,
    };
    // SAFETY: `setting` is valid; the old setting is not requested.
    check("setitimer", unsafe {
        libc::setitimer(libc::ITIMER_PROF, &setting, std::ptr::null_mut())
    })
}

fn timeval(duration: Duration) -> libc::timeval {
    libc::timeval {
        // Timer intervals here are at most one second, and `subsec_micros`
        // is below 10^6, so both fit their C types.
        tv_sec: duration.as_secs() as libc::time_t,
        tv_usec: duration.subsec_micros() as libc::suseconds_t,
    }
}

/// A signal blocked in the calling thread's mask; dropping this restores
/// the mask that was there before.
pub struct BlockedSignal {
    previous: libc::sigset_t,
}

impl BlockedSignal {
    /// Blocks `signal` in the calling thread. Threads spawned afterwards
    /// inherit the block.
    ///
    /// # Errors
    ///
    /// The failing `sigemptyset`, `sigaddset` or `pthread_sigmask` call.
    pub fn block(signal: libc::c_int) -> Result<BlockedSignal, OsError> {
        let mut previous = MaybeUninit::<libc::sigset_t>::uninit();
        change_mask(libc::SIG_BLOCK, signal, previous.as_mut_ptr())?;
        // SAFETY: `pthread_sigmask` succeeded, so it wrote the old mask.
        let previous = unsafe { previous.assume_init() };
        Ok(BlockedSignal { previous })
    }
}

impl Drop for BlockedSignal {
    fn drop(&mut self) {
        // SAFETY: `self.previous` is a mask the kernel returned.
        let result = unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, std::ptr::null_mut())
        };
        if result != 0 {
            let error = io::Error::from_raw_os_error(result);
            log::warn!("could not restore the signal mask: {error}");
        }
    }
}

/// Unblocks `signal` in the calling thread.
///
/// # Errors
///
/// The failing `sigemptyset`, `sigaddset` or `pthread_sigmask` call.
pub fn unblock_signal(signal: libc::c_int) -> Result<(), OsError> {
    change_mask(libc::SIG_UNBLOCK, signal, std::ptr::null_mut())
}

fn change_mask(
    how: libc::c_int,
    signal: libc::c_int,
    previous: *mut libc::sigset_t,
) -> Result<(), OsError> {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: `set` is writable; `sigemptyset` initialises it.
    check("sigemptyset", unsafe {
        libc::sigemptyset(set.as_mut_ptr())
    })?;
    // SAFETY: `set` was initialised by `sigemptyset`.
    check("sigaddset", unsafe {
        libc::sigaddset(set.as_mut_ptr(), signal)
    })?;

    // SAFETY: `set` is initialised, and `previous` is null or writable.
    let result = unsafe { libc::pthread_sigmask(how, set.as_ptr(), previous) };
    // `pthread_sigmask` returns the error number instead of setting errno.
    match result {
        0 => Ok(()),
        error => Err(OsError {
            call: "pthread_sigmask",
            source: io::Error::from_raw_os_error(error),
        }),
    }
}

fn timespec(duration: Duration) -> libc::timespec {
    libc::timespec {
        // As in `timeval`, both fields fit their C types.
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
