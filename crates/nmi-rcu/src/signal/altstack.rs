//! Alternate signal stacks large enough for nested signals.
//!
//! The trampoline is installed with `SA_ONSTACK`, so a thread that has an
//! alternate signal stack runs every handler on it. Rust's standard library
//! gives the threads it starts such a stack for its stack-overflow report.
//! It was 8 KiB in core dumps of Rust 1.95 programs on x86-64 glibc, with
//! a guard page below it. Each delivery pushes a kernel signal frame (siginfo,
//! `ucontext` and the saved FPU/vector state) onto it before the handler's
//! own frames. On a 2-core AVX-512 VM (Linux 6.18) the frame measured
//! 2.9 KiB in a core dump, and the kernel reported an `AT_MINSIGSTKSZ` of
//! 3,376 bytes. One nested delivery of a handler that enters a read-side
//! section cost 4.3 KiB there in a debug build. Because a signal may
//! interrupt the handler of another signal, two or three nested deliveries
//! overflow 8 KiB. The kernel then kills the process
//! with `SIGSEGV`, with no message.
//!
//! [`ensure_alt_stack`] replaces a missing or small alternate stack on the
//! calling thread with one of the requested size, with a guard page below
//! it, and frees it when the thread exits.
//!
//! # Thread exit
//!
//! The stacks are owned by a thread-local list whose destructor disables the
//! installed stack if it is one of them, and then unmaps them all. A stack
//! that a larger one replaced stays mapped until then, because the kernel
//! may install it again. A signal handler that was running when it was
//! replaced gets it back on return, and so does code that saved it with
//! `sigaltstack` and restores it. The standard library disables the
//! alternate stack of the threads it starts when their main function
//! returns, before thread-local destructors run. Signals delivered after
//! that run on the thread's ordinary stack.

use core::cell::RefCell;
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
    /// A new stack is installed. The thread frees it when it exits, together
    /// with the stacks that earlier calls installed and this one replaced.
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
    /// Called inside this library's signal handlers or another
    /// [`NmiContext`](crate::NmiContext), where mapping memory and
    /// registering a thread-local destructor are not allowed.
    InSignalHandler,
    /// Called from a thread-local destructor after the list that frees this
    /// thread's stacks was destroyed, so a new stack would never be freed.
    ThreadExiting,
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
                "alternate signal stack size of {requested} bytes is below this machine's \
                 minimum of {minimum} bytes; request at least that, or \
                 RECOMMENDED_ALT_STACK_SIZE ({RECOMMENDED_ALT_STACK_SIZE} bytes) to leave \
                 room for nested signals"
            ),
            AltStackError::TooLarge { requested } => write!(
                f,
                "alternate signal stack size of {requested} bytes is above the maximum of \
                 {MAX_ALT_STACK_SIZE} bytes; give the size in bytes, not KiB"
            ),
            AltStackError::InSignalHandler => f.write_str(
                "ensure_alt_stack was called inside a signal handler or an NmiContext; \
                 call it when the thread starts instead",
            ),
            AltStackError::ThreadExiting => f.write_str(
                "ensure_alt_stack was called while the thread was exiting, after its \
                 stack list was destroyed; call it when the thread starts instead",
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
/// the thread exits. A replaced stack that an earlier call installed stays
/// mapped until then too. One that came from elsewhere, such as the
/// standard library's, is left to its owner. Call it once at the start of
/// each thread that takes signals, the main thread included. Calling it
/// again is cheap and only grows the stack.
///
/// # Errors
///
/// - [`AltStackError::TooSmall`] and [`AltStackError::TooLarge`] for a size
///   outside the accepted range;
/// - [`AltStackError::InSignalHandler`] inside this library's signal
///   handlers or another [`NmiContext`](crate::NmiContext);
/// - [`AltStackError::ThreadExiting`] from a thread-local destructor that
///   runs after this module's own;
/// - [`AltStackError::OnAltStack`] while the thread runs on its alternate
///   stack;
/// - [`AltStackError::System`] when `mmap`, `mprotect` or `sigaltstack`
///   fails.
///
/// # Async-signal safety
///
/// Not async-signal-safe: it maps memory, allocates and may register a
/// thread-local destructor. Inside this library's handlers (an
/// [`NmiContext`](crate::NmiContext)) it returns
/// [`AltStackError::InSignalHandler`]. Other signal handlers must not call
/// it, because the call cannot detect them.
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
    // A destroyed list could not free a new stack at thread exit.
    if OWNED_STACKS.try_with(|_| ()).is_err() {
        return Err(AltStackError::ThreadExiting);
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

    // Step 3: map and install a new one, and add it to the thread's list.
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
    // The list was alive in step 1 and no thread-local destructor has run
    // since, so `push` runs.
    if let Err(error) = OWNED_STACKS.try_with(|owned| owned.push(mapping)) {
        log::warn!("leaking an alternate signal stack installed during thread exit: {error}");
    }
    log::debug!("installed a {size}-byte alternate signal stack");
    Ok(AltStack::Installed { size })
}

thread_local! {
    /// The alternate stacks that [`ensure_alt_stack`] installed on this
    /// thread, the installed one last. It is touched only by
    /// `ensure_alt_stack` and at thread exit, never on the signal path.
    static OWNED_STACKS: OwnedStacks = const {
        OwnedStacks {
            mappings: RefCell::new(Vec::new()),
        }
    };
}

/// Owner of the calling thread's mapped alternate stacks.
struct OwnedStacks {
    mappings: RefCell<Vec<sys::StackMapping>>,
}

impl OwnedStacks {
    /// Takes ownership of `mapping`, which is now the installed stack. The
    /// stacks it replaced stay mapped: a signal handler that was running when
    /// one of them was replaced reinstalls it on return (the kernel restores
    /// `uc_stack`), and so does code that saved it and restores it.
    fn push(&self, mapping: sys::StackMapping) {
        self.mappings.borrow_mut().push(mapping);
    }
}

impl Drop for OwnedStacks {
    fn drop(&mut self) {
        let mappings = core::mem::take(self.mappings.get_mut());
        if mappings.is_empty() {
            return;
        }

        // Disable the installed stack if it is one of ours. The standard
        // library may have disabled it already, or someone may have
        // installed another one since.
        let current = match sys::query_alt_stack() {
            Ok(current) => current,
            Err(error) => {
                // Unmapping a stack the kernel may still use would turn the
                // next signal into a crash, so leak them instead.
                log::warn!("could not query the alternate signal stack at thread exit: {error}");
                return;
            }
        };
        let installed_is_ours = current.ss_flags & libc::SS_DISABLE == 0
            && mappings
                .iter()
                .any(|mapping| mapping.stack_start() == current.ss_sp);
        if installed_is_ours {
            let disabled = libc::stack_t {
                ss_sp: core::ptr::null_mut(),
                ss_flags: libc::SS_DISABLE,
                ss_size: 0,
            };
            if let Err(error) = sys::set_alt_stack(&disabled) {
                // As above: leak rather than unmap a stack in use.
                log::warn!("could not disable the alternate signal stack at thread exit: {error}");
                return;
            }
        }

        for mapping in mappings {
            mapping.unmap();
        }
    }
}
