//! A mechanical check, on the stable toolchain, that the signal path never
//! allocates: this test binary's global allocator aborts with a message
//! when it is called inside a signal handler.
//!
//! "Inside a signal handler" means either of:
//!
//! - inside an [`NmiContext`], which the trampoline enters around dispatch,
//!   so every registered handler and the library code around it is covered
//!   on any thread;
//! - on the thread's alternate signal stack. The trampoline is installed
//!   with `SA_ONSTACK`, and so are this file's raw handlers, so this covers
//!   the whole trampoline (before and after `NmiContext`, and the chaining
//!   to the previous disposition) and read-side sections driven by a raw
//!   signal handler. The Rust runtime gives every thread it starts an
//!   alternate stack; [`ensure_signal_stack`] checks that.
//!
//! The allocator queries `sigaltstack(2)` to learn whether the thread
//! runs on its alternate stack, one system call per allocation, which is
//! fine for a test. Freeing counts as allocating: `free` is no more
//! async-signal-safe than `malloc`.
//!
//! RealtimeSanitizer (`.ci/sanitizers.sh`) checks more (locks and blocking
//! system calls too) but needs the nightly toolchain; this binary runs
//! everywhere `cargo test` does. Built for RealtimeSanitizer
//! (`--cfg nmi_rcu_rtsan`), the allocator leaves the check to it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::ffi::c_int;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nmi_rcu::signal::{self, Signal};
use nmi_rcu::{HandlerSlot, NmiContext, Outcome, PreparedHandler, RcuBox, RcuOption};

/// The message written before aborting; tests look for it.
const ALLOCATION_MESSAGE: &[u8] =
    b"alloc_in_signal: the global allocator was called inside a signal handler\n";

/// The system allocator, with a check before every call.
struct SignalCheckingAllocator;

// SAFETY: every method checks and then forwards to `System` with the same
// arguments, so `System`'s guarantees carry over.
unsafe impl GlobalAlloc for SignalCheckingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        abort_if_in_signal_handler();
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        abort_if_in_signal_handler();
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        abort_if_in_signal_handler();
        // SAFETY: as in `alloc`; `ptr` came from `System` through us.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        abort_if_in_signal_handler();
        // SAFETY: as in `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: SignalCheckingAllocator = SignalCheckingAllocator;

/// Writes [`ALLOCATION_MESSAGE`] and aborts when the calling thread is in
/// NMI context or on its alternate signal stack.
///
/// # Async-signal safety
///
/// Safe: a constant-initialised thread-local read, `sigaltstack`, `write`
/// and `abort`, all without allocating.
fn abort_if_in_signal_handler() {
    // Under RealtimeSanitizer (`.ci/sanitizers.sh`), the sanitizer checks
    // the same calls and more; stepping aside lets it report the
    // allocation itself instead of this function's `write`.
    if cfg!(nmi_rcu_rtsan) {
        return;
    }
    if nmi_rcu::in_nmi() || on_signal_stack() {
        // SAFETY: writing a static buffer to stderr, then aborting; both
        // are async-signal-safe and neither allocates.
        unsafe {
            libc::write(
                libc::STDERR_FILENO,
                ALLOCATION_MESSAGE.as_ptr().cast(),
                ALLOCATION_MESSAGE.len(),
            );
            libc::abort();
        }
    }
}

/// Returns whether the calling thread is running on its alternate signal
/// stack, as `sigaltstack(2)` reports it.
fn on_signal_stack() -> bool {
    // SAFETY: a null new stack only queries, into valid storage.
    unsafe {
        let mut current: libc::stack_t = std::mem::zeroed();
        libc::sigaltstack(std::ptr::null(), &mut current) == 0
            && current.ss_flags & libc::SS_ONSTACK != 0
    }
}

/// Asserts that the calling thread has an alternate signal stack, so that
/// handlers installed with `SA_ONSTACK` run where [`on_signal_stack`]
/// detects them.
fn ensure_signal_stack() {
    // SAFETY: as in `on_signal_stack`.
    let flags = unsafe {
        let mut current: libc::stack_t = std::mem::zeroed();
        assert_eq!(libc::sigaltstack(std::ptr::null(), &mut current), 0);
        current.ss_flags
    };
    assert_eq!(
        flags & libc::SS_DISABLE,
        0,
        "this thread has no alternate signal stack, so the allocator check would miss raw handlers"
    );
}

/// Disables the calling thread's alternate signal stack.
fn disable_signal_stack() {
    // SAFETY: `SS_DISABLE` with a null stack pointer only switches the
    // alternate stack off; the old stack is not read.
    unsafe {
        let mut disable: libc::stack_t = std::mem::zeroed();
        disable.ss_flags = libc::SS_DISABLE;
        assert_eq!(libc::sigaltstack(&disable, std::ptr::null_mut()), 0);
    }
}

fn realtime(offset: c_int) -> Signal {
    Signal::new(libc::SIGRTMIN() + offset).expect("a free real-time signal")
}

fn gettid() -> libc::pid_t {
    // SAFETY: `gettid` has no preconditions.
    unsafe { libc::gettid() }
}

/// Sends `signal` to thread `tid` of this process until the kernel queues
/// it (a full real-time queue returns `EAGAIN`).
fn send_to_thread(tid: libc::pid_t, signal: c_int) {
    loop {
        // SAFETY: `tgkill` to a thread of our own process.
        let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal) };
        if rc == 0 {
            return;
        }
        let error = std::io::Error::last_os_error();
        assert_eq!(
            error.raw_os_error(),
            Some(libc::EAGAIN),
            "tgkill failed: {error}"
        );
        thread::yield_now();
    }
}

/// Raises `signo` on the calling thread, retrying for up to ten seconds
/// while the kernel rejects it with `EAGAIN`. A real-time signal is
/// rejected while the user's queued signals fill RLIMIT_SIGPENDING
/// (`ulimit -i`), which a signal storm in any process of the same user can
/// cause.
fn raise_signal(signo: c_int) {
    let start = Instant::now();
    loop {
        // SAFETY: every caller has a handler or SIG_IGN installed for
        // `signo`, or expects the process to abort.
        if unsafe { libc::raise(signo) } == 0 {
            return;
        }
        let error = std::io::Error::last_os_error();
        assert_eq!(
            error.raw_os_error(),
            Some(libc::EAGAIN),
            "raise({signo}) failed: {error}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "raise({signo}) still failed with EAGAIN after 10 s; is another process of this user flooding signals?"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits up to ten seconds for `condition`, then panics naming `what`.
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting until {what}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

type RawHandler = extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void);

/// Installs `handler` as a raw `SA_SIGINFO | SA_ONSTACK` disposition.
fn install_raw(signo: c_int, handler: RawHandler) {
    // SAFETY: all-zero bytes are a valid `sigaction`; the handler has the
    // three-argument signature that SA_SIGINFO announces.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(signo, &action, std::ptr::null_mut()), 0);
    }
}

/// Spawns a thread that spins in and out of read-side sections until
/// stopped, so that signals land both inside and outside its sections.
/// Returns its kernel thread id and its join handle.
fn spawn_target(register: bool, stop: Arc<AtomicBool>) -> (libc::pid_t, thread::JoinHandle<()>) {
    let tid = Arc::new(AtomicI32::new(0));
    let handle = {
        let tid = tid.clone();
        thread::spawn(move || {
            ensure_signal_stack();
            if register {
                nmi_rcu::register_thread();
            }
            tid.store(gettid(), Ordering::SeqCst);
            while !stop.load(Ordering::Relaxed) {
                let guard = nmi_rcu::read_lock();
                std::hint::black_box(VALUE.read(&guard));
                drop(guard);
                std::hint::spin_loop();
            }
        })
    };
    wait_until("the target thread started", || {
        tid.load(Ordering::SeqCst) != 0
    });
    (tid.load(Ordering::SeqCst), handle)
}

/// The value readers dereference; the main thread replaces it.
static VALUE: RcuOption<u64> = RcuOption::new();

/// Publishes `value` in [`VALUE`] and defers the old one.
fn publish_value(value: u64) {
    if let Some(old) = VALUE.replace(Some(RcuBox::new(value))) {
        old.defer();
    }
}

/// The slot that handlers dispatch through, set and unset from inside
/// handlers.
static SLOT: HandlerSlot<u64> = HandlerSlot::new();

/// One prepared handler handed from the main thread to a signal handler,
/// which publishes it with `set_prepared`.
///
/// Invariant: [`PREPARED_OWNER`] records who may touch the cell. The main
/// thread may while it is [`MAIN_OWNS`], nobody while it is [`OFFERED`], and
/// the one handler that moved it from `OFFERED` to [`HANDLER_OWNS`] may.
struct PreparedCell(UnsafeCell<Option<PreparedHandler<u64>>>);

// SAFETY: access is handed over through `PREPARED_OWNER` (see the type), so
// one thread at a time touches the cell, and `PreparedHandler` is `Send`.
unsafe impl Sync for PreparedCell {}

static PREPARED: PreparedCell = PreparedCell(UnsafeCell::new(None));
static PREPARED_OWNER: AtomicU8 = AtomicU8::new(MAIN_OWNS);
const MAIN_OWNS: u8 = 0;
const OFFERED: u8 = 1;
const HANDLER_OWNS: u8 = 2;

/// Hands `prepared` to the next handler that takes it. Drops it instead
/// when the previous offer has not been taken yet.
fn offer_prepared(prepared: PreparedHandler<u64>) {
    // Acquire: pairs with the Release store in `take_prepared`, so the
    // handler's move out of the cell happens before our write.
    if PREPARED_OWNER.load(Ordering::Acquire) != MAIN_OWNS {
        return;
    }
    // SAFETY: the main thread owns the cell (invariant of `PreparedCell`).
    unsafe { *PREPARED.0.get() = Some(prepared) };
    // Release: publishes the cell's contents to the handler that takes it.
    PREPARED_OWNER.store(OFFERED, Ordering::Release);
}

/// Takes the offered prepared handler, if any, without allocating.
///
/// # Async-signal safety
///
/// Safe: atomic operations and a move out of a static.
fn take_prepared() -> Option<PreparedHandler<u64>> {
    // Acquire: pairs with the Release store in `offer_prepared`.
    PREPARED_OWNER
        .compare_exchange(OFFERED, HANDLER_OWNS, Ordering::Acquire, Ordering::Relaxed)
        .ok()?;
    // SAFETY: this handler owns the cell now (invariant of `PreparedCell`).
    let prepared = unsafe { (*PREPARED.0.get()).take() };
    // Release: hands the cell back to the main thread after the move.
    PREPARED_OWNER.store(MAIN_OWNS, Ordering::Release);
    prepared
}

static DISPATCHED: AtomicU64 = AtomicU64::new(0);
static SLOT_HANDLED: AtomicU64 = AtomicU64::new(0);

/// Registered signal handlers that do everything a handler may: nested
/// sections, RCU reads, slot dispatch, `set_prepared` and `unset` with
/// deferred reclamation. Signals go to a registered and an unregistered
/// thread while the main thread replaces the value and re-arms the slot.
/// None of it may allocate.
#[test]
fn trampoline_dispatch_allocates_nothing() {
    const SIGNALS: u64 = 3_000;
    let signal = realtime(2);
    publish_value(0);
    let registration = signal::register(signal, "everything", |_| {
        let guard = nmi_rcu::read_lock();
        let value = VALUE.read(&guard).copied().unwrap_or(0);
        if SLOT.dispatch(&value) == Outcome::Handled {
            SLOT_HANDLED.fetch_add(1, Ordering::Relaxed);
        }
        let count = DISPATCHED.fetch_add(1, Ordering::SeqCst);
        match take_prepared() {
            Some(prepared) => SLOT.set_prepared(prepared).defer(),
            None if count % 3 == 2 => SLOT.unset().defer(),
            None => (),
        }
        Outcome::Handled
    })
    .expect("register the handler");

    let stop = Arc::new(AtomicBool::new(false));
    let targets = [
        spawn_target(true, stop.clone()),
        spawn_target(false, stop.clone()),
    ];
    let mut sent = 0;
    while sent < SIGNALS {
        let (tid, _) = &targets[(sent % 2) as usize];
        send_to_thread(*tid, signal.number());
        sent += 1;
        if sent % 16 == 0 {
            publish_value(sent);
            offer_prepared(PreparedHandler::new(|_| Outcome::Handled));
        }
    }
    wait_until("every signal was dispatched", || {
        DISPATCHED.load(Ordering::SeqCst) >= SIGNALS
    });

    stop.store(true, Ordering::SeqCst);
    for (_, handle) in targets {
        handle.join().unwrap();
    }
    registration.unregister().expect("unregister the handler");
    nmi_rcu::barrier();
    assert_eq!(DISPATCHED.load(Ordering::SeqCst), SIGNALS);
    assert!(
        SLOT_HANDLED.load(Ordering::Relaxed) > 0,
        "no dispatch found a handler set from a signal handler"
    );
}

static PREVIOUS_CALLS: AtomicU64 = AtomicU64::new(0);

extern "C" fn count_previous(_: c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    PREVIOUS_CALLS.fetch_add(1, Ordering::SeqCst);
}

/// A handler that declines makes the trampoline chain to the previous
/// disposition: a raw `SA_SIGINFO` handler for one signal, `SIG_IGN` for
/// another. Neither path may allocate.
#[test]
fn declined_signal_chains_without_allocating() {
    const SIGNALS: u64 = 500;
    ensure_signal_stack();
    let chained = realtime(3);
    let ignored = realtime(4);
    install_raw(chained.number(), count_previous);
    // SAFETY: SIG_IGN needs no handler function.
    unsafe { libc::signal(ignored.number(), libc::SIG_IGN) };
    let registrations = [
        signal::register(chained, "decline", |_| Outcome::NotHandled).expect("register"),
        signal::register(ignored, "decline", |_| Outcome::NotHandled).expect("register"),
    ];

    let before = [signal::stats(chained), signal::stats(ignored)];
    for _ in 0..SIGNALS {
        raise_signal(chained.number());
        raise_signal(ignored.number());
    }
    let after = [signal::stats(chained), signal::stats(ignored)];

    for registration in registrations {
        registration.unregister().expect("unregister");
    }
    assert_eq!(PREVIOUS_CALLS.load(Ordering::SeqCst), SIGNALS);
    for (before, after) in before.iter().zip(&after) {
        assert_eq!(after.delivered - before.delivered, SIGNALS);
        assert_eq!(after.chained - before.chained, SIGNALS);
    }
}

static RAW_READS: AtomicU64 = AtomicU64::new(0);

/// A raw handler (no signal layer, no `NmiContext`) that enters nested
/// read-side sections and dereferences the value.
extern "C" fn raw_reader(_: c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let outer = nmi_rcu::read_lock();
    let inner = nmi_rcu::read_lock();
    std::hint::black_box(VALUE.read(&inner));
    drop(inner);
    std::hint::black_box(VALUE.read(&outer));
    drop(outer);
    RAW_READS.fetch_add(1, Ordering::SeqCst);
}

/// Read-side sections driven by a raw signal handler, on a registered and
/// an unregistered thread that are themselves in and out of sections,
/// while the main thread replaces the value. The read side may not
/// allocate, even on the first section a thread ever enters.
#[test]
fn raw_handler_read_sections_allocate_nothing() {
    const SIGNALS: u64 = 3_000;
    let signal = realtime(5);
    install_raw(signal.number(), raw_reader);
    publish_value(0);

    let stop = Arc::new(AtomicBool::new(false));
    let targets = [
        spawn_target(true, stop.clone()),
        spawn_target(false, stop.clone()),
    ];
    for sent in 0..SIGNALS {
        let (tid, _) = &targets[(sent % 2) as usize];
        send_to_thread(*tid, signal.number());
        if sent % 16 == 0 {
            publish_value(sent);
        }
    }
    wait_until("every signal was handled", || {
        RAW_READS.load(Ordering::SeqCst) >= SIGNALS
    });

    stop.store(true, Ordering::SeqCst);
    for (_, handle) in targets {
        handle.join().unwrap();
    }
    assert_eq!(RAW_READS.load(Ordering::SeqCst), SIGNALS);
}

/// Set in the child process that runs a test's body.
const CHILD_VARIABLE: &str = "NMI_RCU_ALLOC_CASE";

/// Runs `body` in a fresh copy of this test binary with only test `name`
/// selected, and asserts that the child died of `SIGABRT` after writing
/// [`ALLOCATION_MESSAGE`]. In the child, runs `body` and exits.
fn expect_abort_in_child(name: &str, body: fn()) {
    if std::env::var(CHILD_VARIABLE).as_deref() == Ok(name) {
        body();
        std::process::exit(0);
    }
    let output = Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD_VARIABLE, name)
        .stdin(Stdio::null())
        .output()
        .expect("failed to start the child test process");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGABRT),
        "the child was expected to abort; it ended with {:?}\n{stderr}",
        output.status
    );
    let message = String::from_utf8_lossy(ALLOCATION_MESSAGE);
    assert!(
        stderr.contains(message.trim_end()),
        "no allocation message in:\n{stderr}"
    );
}

/// The check itself can fail: a registered handler that allocates aborts
/// the process with the message.
#[test]
fn allocating_registered_handler_aborts() {
    expect_abort_in_child("allocating_registered_handler_aborts", || {
        // The handler runs on the normal stack, which the in_nmi() half of
        // the check still covers. `.ci/sanitizers.sh` runs this child under
        // RealtimeSanitizer, whose report unwinds more stack than the
        // alternate stack has.
        disable_signal_stack();
        let signal = realtime(6);
        let _registration = signal::register(signal, "allocates", |_| {
            std::hint::black_box(Box::new(1u64));
            Outcome::Handled
        })
        .expect("register the handler");
        raise_signal(signal.number());
    });
}

extern "C" fn allocating_raw_handler(_: c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    std::hint::black_box(Box::new(1u64));
}

/// The check itself can fail outside the signal layer too: a raw handler
/// on the alternate signal stack that allocates aborts with the message.
#[test]
fn allocating_raw_handler_aborts() {
    expect_abort_in_child("allocating_raw_handler_aborts", || {
        ensure_signal_stack();
        let signal = realtime(7);
        install_raw(signal.number(), allocating_raw_handler);
        raise_signal(signal.number());
    });
}

/// The check covers an explicit `NmiContext` too: allocating inside one,
/// even off the signal stack, aborts with the message.
#[test]
fn allocating_in_nmi_context_aborts() {
    expect_abort_in_child("allocating_in_nmi_context_aborts", || {
        let _context = NmiContext::enter();
        std::hint::black_box(Box::new(1u64));
    });
}
