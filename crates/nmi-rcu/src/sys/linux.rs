//! Linux implementation of the platform services.
//!
//! Every function here is a thin wrapper over one system call and checks its
//! return value. The ones marked async-signal-safe make no library call that
//! may lock or allocate: they issue raw `syscall(2)` or `write(2)` only.

use core::sync::atomic::AtomicU32;
use std::time::Duration;

// `membarrier(2)` commands, from <linux/membarrier.h>. The libc crate does
// not export them.
const MEMBARRIER_CMD_QUERY: libc::c_int = 0;
const MEMBARRIER_CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

/// Registers the process for expedited private membarrier and returns
/// whether [`membarrier`] can be used from now on.
///
/// Returns `Err(errno)` when the kernel lacks the command (before Linux
/// 4.14, or when a seccomp filter blocks the call).
///
/// # Async-signal safety
///
/// Safe: two raw system calls.
pub(crate) fn membarrier_register() -> Result<(), i32> {
    // SAFETY: membarrier takes two integers and a flags word; no memory is
    // passed to the kernel.
    let supported = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_QUERY, 0, 0) };
    if supported < 0 {
        return Err(errno());
    }
    if supported & libc::c_long::from(MEMBARRIER_CMD_PRIVATE_EXPEDITED) == 0 {
        return Err(libc::ENOSYS);
    }
    // SAFETY: as above.
    let result = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
            0,
            0,
        )
    };
    if result < 0 {
        return Err(errno());
    }
    Ok(())
}

/// Makes every running thread of this process execute a full memory barrier
/// before returning. Threads that are not running pass through one when
/// they are next scheduled.
///
/// Requires a successful [`membarrier_register`] earlier in this process.
///
/// # Async-signal safety
///
/// Safe: one raw system call. The caller must not be a reader that the
/// barrier is meant to order, because the calling thread gets no barrier
/// from the kernel beyond the system call itself.
pub(crate) fn membarrier() {
    // SAFETY: membarrier takes two integers and a flags word.
    let result =
        unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) };
    if result < 0 {
        // The command succeeded at registration, so failing now means the
        // kernel broke its own contract. Continuing would let a grace period
        // end without ordering readers, which frees memory under them.
        fatal(b"nmi-rcu: membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) failed after registration succeeded\n");
    }
}

/// Returns the kernel thread id of the calling thread.
///
/// # Async-signal safety
///
/// Safe: one raw system call.
pub(crate) fn gettid() -> i32 {
    // SAFETY: gettid takes no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Returns the `errno` value of the calling thread.
///
/// # Async-signal safety
///
/// Safe: reads a thread-local variable of libc.
pub(crate) fn errno() -> i32 {
    // SAFETY: __errno_location returns a valid pointer to this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Sleeps while `word` still contains `expected`, until woken by
/// [`futex_wake`] or until `timeout` passes. Spurious wake-ups happen; the
/// caller rechecks its condition.
///
/// # Async-signal safety
///
/// Not for signal handlers: it blocks.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let timespec = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let timespec_ptr = timespec
        .as_ref()
        .map_or(core::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned 32-bit atomic for the duration of the
    // call, and `timespec_ptr` is null or points to a live timespec.
    let result = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            timespec_ptr,
        )
    };
    if result < 0 {
        let error = errno();
        // EAGAIN: the word changed before we slept. EINTR: a signal arrived.
        // ETIMEDOUT: the timeout passed. All three are normal wake-ups.
        if error != libc::EAGAIN && error != libc::EINTR && error != libc::ETIMEDOUT {
            fatal(b"nmi-rcu: futex(FUTEX_WAIT) failed with an unexpected error\n");
        }
    }
}

/// Wakes up to `count` threads sleeping in [`futex_wait`] on `word`.
///
/// # Async-signal safety
///
/// Safe: one raw system call, so a signal handler may wake the reclaimer.
pub(crate) fn futex_wake(word: &AtomicU32, count: i32) {
    // SAFETY: `word` is a valid, aligned 32-bit atomic.
    let result = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            count,
        )
    };
    if result < 0 {
        fatal(b"nmi-rcu: futex(FUTEX_WAKE) failed\n");
    }
}

/// Registers `child` to run in the child process after every `fork()`.
///
/// # Async-signal safety
///
/// Not for signal handlers: `pthread_atfork` may allocate.
pub(crate) fn register_atfork_child(child: extern "C" fn()) {
    // SAFETY: the handler pointers are valid functions for the life of the
    // process; null means "no handler" for the other two phases.
    let result = unsafe { libc::pthread_atfork(None, None, Some(child)) };
    if result != 0 {
        log::error!("pthread_atfork failed with error {result}; fork() children of this process cannot run grace periods");
    }
}

/// Writes `message` to standard error with `write(2)` and aborts the process.
///
/// This is the one way the library reports a fatal error on the read side,
/// in the signal layer and in system-call wrappers: it allocates nothing,
/// takes no lock and never unwinds.
///
/// # Async-signal safety
///
/// Safe: `write(2)` and `abort(3)` are on the POSIX list of
/// async-signal-safe functions.
pub(crate) fn fatal(message: &[u8]) -> ! {
    write_stderr(message);
    std::process::abort()
}

/// Writes `message` to standard error with `write(2)`, retrying short
/// writes and `EINTR`, and ignoring other errors (there is nowhere left to
/// report them).
///
/// # Async-signal safety
///
/// Safe: only `write(2)`.
pub(crate) fn write_stderr(mut message: &[u8]) {
    while !message.is_empty() {
        // SAFETY: the pointer and length describe a live byte slice.
        let written =
            unsafe { libc::write(libc::STDERR_FILENO, message.as_ptr().cast(), message.len()) };
        if written < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return;
        }
        message = &message[written as usize..];
    }
}
