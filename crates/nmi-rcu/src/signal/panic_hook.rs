//! Aborting on a handler's panic before the panic unwinds.
//!
//! The trampoline catches a panicking handler with `catch_unwind` and
//! aborts. Unwinding itself, though, needs more stack than some alternate
//! signal stacks have. The Rust runtime's per-thread alternate stack is
//! 8 KiB here (Rust 1.95, glibc 2.36), and unwinding a panic on it
//! overflows it, so the process would die of `SIGSEGV` with no message.
//!
//! The first registration therefore wraps the process's panic hook. Inside
//! the trampoline's dispatch, the wrapper writes the panic message with
//! `write(2)` and aborts at once. Elsewhere it calls the hook that was
//! installed before. A hook that the program installs later replaces the
//! wrapper, and then `catch_unwind` is the only guard left.

use core::cell::Cell;
use core::ffi::c_int;
use core::fmt::{self, Write};
use std::sync::Once;

use super::sys;

thread_local! {
    /// The signal whose handlers the calling thread is running, or 0.
    /// Constant-initialised and without a destructor, so touching it from a
    /// signal handler neither allocates nor registers a destructor.
    static DISPATCHING: Cell<c_int> = const { Cell::new(0) };
}

/// Marks the calling thread as running the handlers of one signal until
/// dropped; restores the outer mark, so nested deliveries work.
pub(crate) struct DispatchMarker {
    outer: c_int,
}

impl DispatchMarker {
    /// Enters the marked region for signal number `signo`.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one constant-initialised thread-local update.
    #[inline]
    pub(crate) fn enter(signo: c_int) -> DispatchMarker {
        DispatchMarker {
            outer: DISPATCHING.with(|current| current.replace(signo)),
        }
    }
}

impl Drop for DispatchMarker {
    /// Restores the outer mark.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one constant-initialised thread-local update.
    #[inline]
    fn drop(&mut self) {
        DISPATCHING.with(|current| current.set(self.outer));
    }
}

/// Wraps the current panic hook once per process, as the module
/// documentation describes.
///
/// # Async-signal safety
///
/// Not safe: it allocates. Called from `register`.
pub(crate) fn install() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let signo = DISPATCHING.with(Cell::get);
            if signo == 0 {
                previous(info);
                return;
            }
            let _ = writeln!(StderrWriter, "nmi-rcu: a signal handler {info}");
            sys::fatal(signo, super::trampoline::PANIC_MESSAGE);
        }));
    });
}

/// Formats straight to standard error with `write(2)`, without buffering
/// or allocation.
struct StderrWriter;

impl Write for StderrWriter {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        sys::write_stderr(text.as_bytes());
        Ok(())
    }
}
