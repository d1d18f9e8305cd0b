//! Alternate signal stacks large enough for nested signals.
//!
//! The trampoline is installed with `SA_ONSTACK`, so a thread that has an
//! alternate signal stack runs every handler on it. Rust's standard library
//! gives each thread it starts (and the main thread) such a stack for its
//! stack-overflow report, sized `max(SIGSTKSZ, AT_MINSIGSTKSZ)`: 8 KiB on
//! x86-64 glibc. Each delivery pushes a kernel signal frame (siginfo,
//! `ucontext` and the saved FPU/vector state) onto it before the handler's
//! own frames. The frame alone measured 2.9 KiB on an AVX-512 machine.
//! Because a signal may interrupt the handler of another signal, two or
//! three nested deliveries overflow 8 KiB. The kernel then kills the process
//! with `SIGSEGV`, with no message.
//!
//! [`ensure_alt_stack`] replaces a missing or small alternate stack on the
//! calling thread with one of the requested size, with a guard page below
//! it, and frees it when the thread exits.
//!
//! # Thread exit
//!
//! The stack is owned by a thread-local value whose destructor disables it,
//! if it is still the installed one, and then unmaps it. The standard
//! library disables the alternate stack of the threads it starts when their
//! main function returns, before thread-local destructors run. Signals
//! delivered after that run on the thread's ordinary stack.

use core::cell::Cell;
use core::fmt;
use std::io;

use super::sys;

/// Alternate stack size that [`ensure_alt_stack`] callers can use when they
/// have no measurement of their own: room for about a dozen nested
/// deliveries with the 2.9 KiB kernel frame of an AVX-512 machine and a
/// small handler.
pub const RECOMMENDED_ALT_STACK_SIZE: usize = 64 * 1024;

/// Largest size [`ensure_alt_stack`] accepts. A larger request is almost
/// always a unit mistake (bytes meant as KiB), and the memory stays mapped
/// for the thread's life.
pub const MAX_ALT_STACK_SIZE: usize = 1 << 30;

/// Outcome of [`ensure_alt_stack`]: the stack kept or the stack installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AltStack {
    /// The thread's alternate stack was already enabled and at least as large
    /// as requested, so it was kept.
    Kept {
        /// Size of the existing stack in bytes.
        size: usize,
    },
    /// A new stack is installed; the thread frees it when it exits.
    Installed {
        /// Size of the new stack in bytes: the request rounded up to whole
        /// pages. The guard page is not counted.
        size: usize,
    },
}

impl AltStack {
    /// Returns the size in bytes of the alternate stack now in use.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::signal::{ensure_alt_stack, RECOMMENDED_ALT_STACK_SIZE};
    ///
    /// let stack = std::thread::spawn(|| ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE))
    ///     .join()
    ///     .unwrap()?;
    /// assert!(stack.size() >= RECOMMENDED_ALT_STACK_SIZE);
    /// # Ok::<(), nmi_rcu::signal::AltStackError>(())
    /// ```
    pub fn size(self) -> usize {
        match self {
            AltStack::Kept { size } | AltStack::Installed { size } => size,
        }
    }
}

/// Error from [`ensure_alt_stack`]. The thread's alternate stack is
/// unchanged in every case.
#[derive(Debug)]
#[non_exhaustive]
pub enum AltStackError {
    /// The requested size is below the kernel's minimum for this machine.
    TooSmall {
        /// The rejected size in bytes.
        requested: usize,
        /// The smallest accepted size in bytes (`AT_MINSIGSTKSZ`, or
        /// `MINSIGSTKSZ` where the kernel does not report one).
        minimum: usize,
    },
    /// The requested size is above [`MAX_ALT_STACK_SIZE`].
    TooLarge {
        /// The rejected size in bytes.
        requested: usize,
    },
    /// Called from a signal handler or another [`NmiContext`](crate::NmiContext),
    /// where mapping memory and registering a thread-local destructor are
    /// not allowed.
    InSignalHandler,
    /// The thread is running on its alternate stack right now, and the
    /// kernel does not allow replacing it there.
    OnAltStack,
    /// A system call failed.
    System {
        /// The failed call.
        call: &'static str,
        /// The error the call returned.
        source: io::Error,
    },
}

impl fmt::Display for AltStackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AltStackError::TooSmall { requested, minimum } => write!(
                f,
                "alternate signal stack size {requested} bytes is below the minimum of \
                 {minimum} bytes; request at least RECOMMENDED_ALT_STACK_SIZE ({} bytes)",
                RECOMMENDED_ALT_STACK_SIZE
            ),
            AltStackError::TooLarge { requested } => write!(
                f,
                "alternate signal stack size {requested} bytes is above the maximum of \
                 {MAX_ALT_STACK_SIZE} bytes; give the size in bytes, not KiB"
            ),
            AltStackError::InSignalHandler => f.write_str(
                "ensure_alt_stack was called from a signal handler; \
                 call it when the thread starts instead",
            ),
            AltStackError::OnAltStack => f.write_str(
                "the thread is running on its alternate signal stack, which cannot be \
                 replaced there; call ensure_alt_stack outside signal handlers",
            ),
            AltStackError::System { call, source } => {
                write!(
                    f,
                    "{call} failed while setting up an alternate signal stack: {source}"
                )
            }
        }
    }
}

impl std::error::Error for AltStackError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AltStackError::System { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Gives the calling thread an alternate signal stack of at least
/// `min_size` bytes, so that handlers installed with `SA_ONSTACK`, such as
/// this library's trampoline, can nest without overflowing it.
///
/// An enabled stack that is already large enough is kept. Otherwise the
/// function maps a new one (rounded up to whole pages, with an inaccessible
/// guard page below it), installs it with `sigaltstack` and frees it when
/// the thread exits. The one it replaces is left to its owner. Call it once
/// at the start of each thread that takes signals. Calling it again is
/// cheap and only grows the stack.
///
/// # Errors
///
/// - [`AltStackError::TooSmall`] and [`AltStackError::TooLarge`] for a size
///   outside the accepted range;
/// - [`AltStackError::InSignalHandler`] inside a signal handler or another
///   [`NmiContext`](crate::NmiContext);
/// - [`AltStackError::OnAltStack`] while the thread runs on its alternate
///   stack;
/// - [`AltStackError::System`] when `mmap`, `mprotect` or `sigaltstack`
///   fails.
///
/// # Async-signal safety
///
/// Not async-signal-safe: it maps memory and may register a thread-local
/// destructor. Inside a signal handler it returns an error instead.
///
/// # Examples
///
/// ```
/// use nmi_rcu::signal::{ensure_alt_stack, AltStack, RECOMMENDED_ALT_STACK_SIZE};
///
/// std::thread::spawn(|| {
///     let first = ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).unwrap();
///     assert!(first.size() >= RECOMMENDED_ALT_STACK_SIZE);
///     // A second call finds the stack large enough and keeps it.
///     let second = ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).unwrap();
///     assert_eq!(second, AltStack::Kept { size: first.size() });
/// })
/// .join()
/// .unwrap();
/// ```
pub fn ensure_alt_stack(min_size: usize) -> Result<AltStack, AltStackError> {
    // Step 1: reject what can never work before touching the thread.
    let minimum = sys::min_signal_stack_size();
    if min_size < minimum {
        return Err(AltStackError::TooSmall {
            requested: min_size,
            minimum,
        });
    }
    if min_size > MAX_ALT_STACK_SIZE {
        return Err(AltStackError::TooLarge {
            requested: min_size,
        });
    }
    if crate::in_nmi() {
        return Err(AltStackError::InSignalHandler);
    }

    // Step 2: keep a stack that is already large enough.
    let current = sys::query_alt_stack().map_err(|source| AltStackError::System {
        call: "sigaltstack",
        source,
    })?;
    if current.ss_flags & libc::SS_ONSTACK != 0 {
        return Err(AltStackError::OnAltStack);
    }
    if current.ss_flags & libc::SS_DISABLE == 0 && current.ss_size >= min_size {
        return Ok(AltStack::Kept {
            size: current.ss_size,
        });
    }

    // Step 3: map and install a new one, then free the one this thread
    // installed earlier, if any.
    let page = sys::page_size();
    let size = min_size.div_ceil(page) * page;
    let mapping = sys::map_guarded_stack(size, page)
        .map_err(|(call, source)| AltStackError::System { call, source })?;
    let stack = libc::stack_t {
        ss_sp: mapping.stack_start(),
        ss_flags: 0,
        ss_size: size,
    };
    if let Err(source) = sys::set_alt_stack(&stack) {
        mapping.unmap();
        return Err(AltStackError::System {
            call: "sigaltstack",
            source,
        });
    }
    // `try_with` fails only when called from a thread-local destructor at
    // thread exit; the stack then stays mapped until the process exits.
    if let Err(mapping) = OWNED_STACK.try_with(|owned| owned.replace(mapping)) {
        log::debug!("leaking an alternate signal stack installed during thread exit: {mapping}");
    }
    log::debug!("installed a {size}-byte alternate signal stack");
    Ok(AltStack::Installed { size })
}

thread_local! {
    /// The alternate stack that [`ensure_alt_stack`] installed on this
    /// thread. It is touched only by `ensure_alt_stack` and at thread exit,
    /// never on the signal path.
    static OWNED_STACK: OwnedStack = const {
        OwnedStack {
            mapping: Cell::new(sys::StackMapping::EMPTY),
        }
    };
}

/// Owner of the calling thread's mapped alternate stack.
struct OwnedStack {
    mapping: Cell<sys::StackMapping>,
}

impl OwnedStack {
    /// Takes ownership of `mapping`, which is now the installed stack, and
    /// unmaps the previously owned one, which no longer is.
    fn replace(&self, mapping: sys::StackMapping) {
        let old = self.mapping.replace(mapping);
        old.unmap();
    }
}

impl Drop for OwnedStack {
    fn drop(&mut self) {
        let mapping = self.mapping.replace(sys::StackMapping::EMPTY);
        if mapping.is_empty() {
            return;
        }
        // Disable the stack only if it is still ours: the standard library
        // may have disabled it already, or someone may have installed
        // another one since.
        if let Ok(current) = sys::query_alt_stack() {
            if current.ss_flags & libc::SS_DISABLE == 0 && current.ss_sp == mapping.stack_start() {
                let disabled = libc::stack_t {
                    ss_sp: core::ptr::null_mut(),
                    ss_flags: libc::SS_DISABLE,
                    ss_size: 0,
                };
                if let Err(error) = sys::set_alt_stack(&disabled) {
                    // Unmapping a stack the kernel may still use would turn
                    // the next signal into a crash, so leak it instead.
                    log::warn!(
                        "could not disable the alternate signal stack at thread exit: {error}"
                    );
                    return;
                }
            }
        }
        mapping.unmap();
    }
}
