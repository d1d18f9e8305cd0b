//! Linux system calls used by the signal layer, one wrapper per call.
//!
//! Every wrapper checks the return value. Wrappers that the trampoline uses
//! are async-signal-safe: they call only functions that signal-safety(7)
//! lists (`sigaction`, `pthread_sigmask`, `write`, `abort`, `getpid`) or raw
//! system calls (`gettid`, `rt_tgsigqueueinfo`), and they neither allocate
//! nor lock. Those that run outside signal context return
//! [`std::io::Error`]; those on the signal path report failure through
//! [`fatal`], the single failure path of the signal layer.

use core::ffi::{c_int, c_void};
use core::fmt;
use core::mem::MaybeUninit;
use core::ptr;
use std::io;

/// The signature of a handler installed with `SA_SIGINFO`.
pub(crate) type SigInfoHandler = extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void);

/// The signature of a handler installed without `SA_SIGINFO`.
pub(crate) type PlainHandler = extern "C" fn(c_int);

/// Returns the calling thread's `errno`.
///
/// # Async-signal safety
///
/// Safe: reads a thread-local word through `__errno_location`, which glibc
/// resolves without allocation.
#[inline]
pub(crate) fn errno() -> c_int {
    // SAFETY: `__errno_location` always returns a valid pointer to the
    // calling thread's errno.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
///
/// # Async-signal safety
///
/// Safe, for the reason given on [`errno`].
#[inline]
pub(crate) fn set_errno(value: c_int) {
    // SAFETY: `__errno_location` always returns a valid pointer to the
    // calling thread's errno.
    unsafe { *libc::__errno_location() = value }
}

/// Returns the disposition currently installed for `signo`.
///
/// # Async-signal safety
///
/// Safe: `sigaction` is async-signal-safe.
pub(crate) fn query_action(signo: c_int) -> io::Result<libc::sigaction> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: a null `act` only queries, and `old` points to writable
    // storage for one `sigaction`.
    let rc = unsafe { libc::sigaction(signo, ptr::null(), old.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sigaction` returned 0, so it filled `old`.
    Ok(unsafe { old.assume_init() })
}

/// Installs `action` for `signo` and returns the disposition it replaced.
///
/// # Async-signal safety
///
/// Safe: `sigaction` is async-signal-safe.
pub(crate) fn set_action(signo: c_int, action: &libc::sigaction) -> io::Result<libc::sigaction> {
    let mut old = MaybeUninit::<libc::sigaction>::zeroed();
    // SAFETY: `action` is a valid `sigaction` and `old` points to writable
    // storage for one.
    let rc = unsafe { libc::sigaction(signo, action, old.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sigaction` returned 0, so it filled `old`.
    Ok(unsafe { old.assume_init() })
}

/// Builds a `sigaction` that installs `handler` with `SA_SIGINFO`,
/// `SA_ONSTACK` and `SA_RESTART` and an empty extra mask.
///
/// # Async-signal safety
///
/// Safe: see [`empty_action`].
pub(crate) fn siginfo_action(handler: SigInfoHandler) -> libc::sigaction {
    let mut action = empty_action();
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    action
}

/// Builds a `sigaction` for `SIG_DFL` with an empty mask and no flags.
///
/// # Async-signal safety
///
/// Safe: only writes to a local value and calls `sigemptyset`, which
/// signal-safety(7) lists.
pub(crate) fn empty_action() -> libc::sigaction {
    // SAFETY: `sigaction` is a plain C struct for which all-zero bytes are
    // a valid value (`SIG_DFL`, no flags, no restorer).
    let mut action: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    // SAFETY: `sa_mask` is valid, writable storage for a `sigset_t`.
    unsafe { libc::sigemptyset(&mut action.sa_mask) };
    action.sa_sigaction = libc::SIG_DFL;
    action
}

/// Installs `SIG_DFL` for `signo`, or reports a fatal error.
///
/// # Async-signal safety
///
/// Safe: `sigaction` is async-signal-safe, and the failure path is
/// [`fatal`].
pub(crate) fn set_default_or_die(signo: c_int) {
    if set_action(signo, &empty_action()).is_err() {
        fatal(signo, b"could not reset the disposition to SIG_DFL");
    }
}

/// Replaces the calling thread's signal mask with `mask` and returns the
/// old mask, or reports a fatal error.
///
/// # Async-signal safety
///
/// Safe: `pthread_sigmask` is async-signal-safe.
pub(crate) fn set_thread_mask_or_die(signo: c_int, mask: &libc::sigset_t) -> libc::sigset_t {
    let mut old = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `mask` is a valid set and `old` is writable storage for one.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, mask, old.as_mut_ptr()) };
    if rc != 0 {
        fatal(
            signo,
            b"pthread_sigmask failed while changing the thread's mask",
        );
    }
    // SAFETY: `pthread_sigmask` returned 0, so it filled `old`.
    unsafe { old.assume_init() }
}

/// Removes `signo` from the calling thread's signal mask, or reports a
/// fatal error. A pending instance of `signo` is delivered before this
/// returns.
///
/// # Async-signal safety
///
/// Safe: `pthread_sigmask` and `sigaddset` are async-signal-safe.
pub(crate) fn unblock_or_die(signo: c_int) {
    let mut set = MaybeUninit::<libc::sigset_t>::zeroed();
    // SAFETY: `set` is writable storage for a `sigset_t`; `sigemptyset`
    // initialises it before `sigaddset` and `pthread_sigmask` read it.
    let rc = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), signo);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), ptr::null_mut())
    };
    if rc != 0 {
        fatal(signo, b"pthread_sigmask failed while unblocking the signal");
    }
}

/// Returns the calling thread's kernel thread id.
///
/// # Async-signal safety
///
/// Safe: glibc's `gettid` wrapper is a bare system call.
#[inline]
pub(crate) fn gettid() -> libc::pid_t {
    // SAFETY: `gettid` has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Queues `signo` with the siginfo `info` to the calling thread, as the
/// kernel would have queued it, or reports a fatal error.
///
/// Linux accepts any `si_code` when a thread sends a signal to its own
/// process with `rt_tgsigqueueinfo`, so a hardware fault's `si_code` and
/// fault address survive the re-raise.
///
/// # Async-signal safety
///
/// Safe: `getpid` is async-signal-safe and `rt_tgsigqueueinfo` is a raw
/// system call.
pub(crate) fn queue_to_self_or_die(signo: c_int, info: *const libc::siginfo_t) {
    // SAFETY: `getpid` cannot fail.
    let pid = unsafe { libc::getpid() };
    let tid = gettid();
    // SAFETY: `info` points to the siginfo the kernel passed to the
    // trampoline, which stays valid for the whole handler invocation. The
    // kernel copies it before the call returns.
    let rc = unsafe { libc::syscall(libc::SYS_rt_tgsigqueueinfo, pid, tid, signo, info) };
    if rc != 0 {
        fatal(
            signo,
            b"rt_tgsigqueueinfo failed while re-raising the signal",
        );
    }
}

/// Writes `bytes` to standard error with `write(2)`, retrying on `EINTR`
/// and short writes and giving up silently on any other error, because this is
/// the last output before an abort and no caller could report the failure.
///
/// # Async-signal safety
///
/// Safe: `write` is async-signal-safe.
pub(crate) fn write_stderr(mut bytes: &[u8]) {
    while !bytes.is_empty() {
        // SAFETY: `bytes` is a valid buffer of `bytes.len()` bytes.
        let written =
            unsafe { libc::write(libc::STDERR_FILENO, bytes.as_ptr().cast(), bytes.len()) };
        if written < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            return;
        }
        // `written` is non-negative and at most `bytes.len()`.
        bytes = &bytes[written as usize..];
    }
}

/// Formats `value` in decimal into `buffer` and returns the digits.
///
/// # Async-signal safety
///
/// Safe: works on the caller's stack buffer only.
pub(crate) fn format_decimal(value: i64, buffer: &mut [u8; 20]) -> &[u8] {
    let negative = value < 0;
    let mut magnitude = value.unsigned_abs();
    let mut start = buffer.len();
    loop {
        start -= 1;
        // `magnitude % 10` is a single digit.
        buffer[start] = b'0' + (magnitude % 10) as u8;
        magnitude /= 10;
        if magnitude == 0 {
            break;
        }
    }
    if negative {
        start -= 1;
        buffer[start] = b'-';
    }
    &buffer[start..]
}

/// Writes `nmi-rcu: signal N: MESSAGE; aborting` with `write(2)` and aborts
/// the process. This is the one failure path of the signal layer: it never
/// unwinds and never allocates.
///
/// # Async-signal safety
///
/// Safe: uses only `write` and `abort`.
#[cold]
pub(crate) fn fatal(signo: c_int, message: &[u8]) -> ! {
    let mut digits = [0u8; 20];
    write_stderr(b"nmi-rcu: signal ");
    write_stderr(format_decimal(i64::from(signo), &mut digits));
    write_stderr(b": ");
    write_stderr(message);
    write_stderr(b"; aborting\n");
    // SAFETY: `abort` has no preconditions.
    unsafe { libc::abort() }
}

/// The `getauxval` key for the kernel's minimum signal stack size, Linux's
/// `AT_MINSIGSTKSZ`, which the `libc` crate does not export. On the 2-core
/// AVX-512 development VM (Linux 6.18) it returned 3,376 bytes.
const AT_MINSIGSTKSZ: libc::c_ulong = 51;

/// Returns the smallest alternate signal stack the kernel accepts on this
/// machine: `AT_MINSIGSTKSZ` where the kernel reports it, else
/// `MINSIGSTKSZ`.
pub(crate) fn min_signal_stack_size() -> usize {
    // SAFETY: `getauxval` has no preconditions; it returns 0 for a key the
    // kernel did not provide.
    let reported = unsafe { libc::getauxval(AT_MINSIGSTKSZ) } as usize;
    reported.max(libc::MINSIGSTKSZ)
}

/// Returns the size of a memory page.
pub(crate) fn page_size() -> usize {
    // SAFETY: `sysconf` has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    // Linux always reports the page size; 4 KiB is its smallest value.
    usize::try_from(size).unwrap_or(4096)
}

/// Returns the calling thread's alternate signal stack settings.
pub(crate) fn query_alt_stack() -> io::Result<libc::stack_t> {
    let mut current = MaybeUninit::<libc::stack_t>::zeroed();
    // SAFETY: a null new stack only queries, and `current` is writable
    // storage for one `stack_t`.
    let rc = unsafe { libc::sigaltstack(ptr::null(), current.as_mut_ptr()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sigaltstack` returned 0, so it filled `current`.
    Ok(unsafe { current.assume_init() })
}

/// Installs `stack` as the calling thread's alternate signal stack (or
/// disables it, for `SS_DISABLE`).
pub(crate) fn set_alt_stack(stack: &libc::stack_t) -> io::Result<()> {
    // SAFETY: `stack` is a valid `stack_t`. When it enables a stack, the
    // caller keeps that memory mapped for as long as it stays installed.
    let rc = unsafe { libc::sigaltstack(stack, ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A private anonymous mapping holding a stack, whose lowest page is an
/// inaccessible guard page. Unmapping is explicit ([`StackMapping::unmap`]),
/// because the owner must first make sure the kernel no longer uses it.
pub(crate) struct StackMapping {
    /// Start of the mapping (the guard page).
    base: *mut c_void,
    /// Length of the whole mapping in bytes, guard page included.
    len: usize,
    /// Size of the guard page in bytes.
    guard: usize,
}

impl StackMapping {
    /// Returns the lowest usable address, just above the guard page.
    pub(crate) fn stack_start(&self) -> *mut c_void {
        self.base.wrapping_byte_add(self.guard)
    }

    /// Unmaps the memory. The caller has made sure that no signal stack
    /// points into it any more.
    pub(crate) fn unmap(self) {
        // SAFETY: `base` and `len` describe a mapping created by
        // `map_guarded_stack`. `StackMapping` is neither `Clone` nor `Copy`
        // and `unmap` takes `self`, so no other call unmaps it.
        let rc = unsafe { libc::munmap(self.base, self.len) };
        if rc != 0 {
            log::warn!(
                "munmap of an alternate signal stack failed: {}",
                io::Error::last_os_error()
            );
        }
    }
}

impl fmt::Display for StackMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes at {:p}", self.len, self.base)
    }
}

/// Maps `size` bytes of read-write stack with one inaccessible `guard`
/// page below it, so that an overflow faults instead of writing into
/// whatever lies below.
///
/// # Errors
///
/// The failing call (`mmap` or `mprotect`) and its error.
pub(crate) fn map_guarded_stack(
    size: usize,
    guard: usize,
) -> Result<StackMapping, (&'static str, io::Error)> {
    let len = size + guard;
    // SAFETY: an anonymous private mapping at an address the kernel picks
    // has no preconditions.
    let base = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(("mmap", io::Error::last_os_error()));
    }
    let mapping = StackMapping { base, len, guard };
    // SAFETY: the first `guard` bytes lie inside the mapping just created.
    let rc = unsafe { libc::mprotect(base, guard, libc::PROT_NONE) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        mapping.unmap();
        return Err(("mprotect", error));
    }
    Ok(mapping)
}
