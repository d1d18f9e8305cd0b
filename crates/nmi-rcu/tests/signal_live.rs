//! Signal-layer behaviour that the process survives, checked in-process on
//! real signals. Each test uses its own signal number, because the tests of
//! one binary share the process's dispositions.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nmi_rcu::signal::{self, Error, Signal, SignalContext};
use nmi_rcu::{HandlerSlot, Order, Outcome, PreparedHandler};

fn realtime(offset: c_int) -> Signal {
    Signal::new(libc::SIGRTMIN() + offset).expect("a free real-time signal")
}

fn gettid() -> libc::pid_t {
    // SAFETY: `gettid` has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::pid_t }
}

fn send_to_thread(tid: libc::pid_t, signal: Signal) -> c_int {
    // SAFETY: `tgkill` to a thread of our own process.
    unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal.number()) as c_int }
}

fn raise(signal: Signal) {
    // SAFETY: `raise` has no memory-safety preconditions; every caller has
    // a handler registered for `signal`.
    assert_eq!(unsafe { libc::raise(signal.number()) }, 0);
}

fn errno() -> c_int {
    // SAFETY: `__errno_location` returns the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

fn set_errno(value: c_int) {
    // SAFETY: `__errno_location` returns the calling thread's errno.
    unsafe { *libc::__errno_location() = value }
}

fn current_handler(signal: Signal) -> usize {
    // SAFETY: a null `act` only queries into valid storage.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        assert_eq!(
            libc::sigaction(signal.number(), std::ptr::null(), &mut action),
            0
        );
        action.sa_sigaction
    }
}

fn install_raw(signal: Signal, handler: usize) {
    // SAFETY: all-zero bytes are a valid `sigaction`, and `handler` is a
    // one-argument handler or SIG_DFL/SIG_IGN.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(signal.number(), &action, std::ptr::null_mut()),
            0
        );
    }
}

/// Waits up to ten seconds for `condition`, then panics with `what`.
fn wait_until(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn signal_new_rejects_invalid_numbers() {
    let max = libc::SIGRTMAX();
    for signo in [0, -1, max + 1, 1000] {
        let error = Signal::new(signo).unwrap_err();
        assert!(
            matches!(error, Error::OutOfRange { .. }),
            "{signo}: {error:?}"
        );
        assert!(error.to_string().contains(&signo.to_string()), "{error}");
    }
    for signo in [libc::SIGKILL, libc::SIGSTOP] {
        let error = Signal::new(signo).unwrap_err();
        assert!(
            matches!(error, Error::Uncatchable { .. }),
            "{signo}: {error:?}"
        );
        assert!(error.to_string().contains(&signo.to_string()), "{error}");
    }
    let error = Signal::new(32).unwrap_err();
    assert!(matches!(error, Error::Reserved { .. }), "{error:?}");
    assert!(error.to_string().contains("32"), "{error}");

    assert!(Signal::new(max).is_ok());
    assert!(Signal::new(libc::SIGRTMIN()).is_ok());
    assert_eq!(Signal::new(libc::SIGSEGV).unwrap().to_string(), "SIGSEGV");
    assert_eq!(realtime(3).to_string(), "SIGRTMIN+3");
}

#[test]
fn double_registration_is_an_error() {
    let signal = realtime(1);
    let first = signal::register(signal, "twice", |_| Outcome::Handled).unwrap();
    let error = signal::register(signal, "twice", |_| Outcome::Handled).unwrap_err();
    match &error {
        Error::DuplicateName {
            signal: rejected,
            name,
        } => {
            assert_eq!(*rejected, signal);
            assert_eq!(name, "twice");
        }
        other => panic!("expected DuplicateName, got {other:?}"),
    }
    assert!(error.to_string().contains("\"twice\""), "{error}");
    assert_eq!(signal::handler_stats(signal).len(), 1);
    first.unregister().unwrap();

    // The name is free again after unregistering.
    let again = signal::register(signal, "twice", |_| Outcome::Handled).unwrap();
    drop(again);
}

#[test]
fn errno_survives_a_handled_signal() {
    static HANDLER_SAW: AtomicI32 = AtomicI32::new(0);
    let signal = realtime(2);
    let registration = signal::register(signal, "clobbers-errno", |_| {
        HANDLER_SAW.store(errno(), Ordering::SeqCst);
        set_errno(libc::EBADF);
        Outcome::Handled
    })
    .unwrap();

    set_errno(libc::ENOENT);
    raise(signal);
    let after = errno();

    assert_eq!(
        HANDLER_SAW.load(Ordering::SeqCst),
        libc::ENOENT,
        "the handler ran with the caller's errno"
    );
    assert_eq!(after, libc::ENOENT, "errno changed across the signal");
    assert_eq!(signal::stats(signal).handled, 1);
    registration.unregister().unwrap();
}

#[test]
fn last_unregister_restores_previous_disposition() {
    extern "C" fn previous(_: c_int) {}
    let signal = realtime(4);
    let previous_address = previous as extern "C" fn(c_int) as usize;
    install_raw(signal, previous_address);

    let first = signal::register(signal, "one", |_| Outcome::Handled).unwrap();
    let second = signal::register(signal, "two", |_| Outcome::Handled).unwrap();
    let trampoline = current_handler(signal);
    assert_ne!(trampoline, previous_address);
    assert_eq!(
        signal::previous_action(signal).map(|action| action.sa_sigaction),
        Some(previous_address)
    );

    first.unregister().unwrap();
    assert_eq!(
        current_handler(signal),
        trampoline,
        "one handler is left, so the trampoline stays"
    );
    second.unregister().unwrap();
    assert_eq!(current_handler(signal), previous_address);
    install_raw(signal, libc::SIG_DFL);
}

#[test]
fn handler_installed_over_ours_is_kept() {
    extern "C" fn usurper(_: c_int) {}
    let signal = realtime(5);
    let usurper_address = usurper as extern "C" fn(c_int) as usize;

    let registration = signal::register(signal, "ours", |_| Outcome::Handled).unwrap();
    install_raw(signal, usurper_address);
    registration.unregister().unwrap();
    assert_eq!(
        current_handler(signal),
        usurper_address,
        "the other handler was overwritten"
    );

    // The trampoline is still considered installed: a new registration
    // does not displace the other handler either.
    let again = signal::register(signal, "ours", |_| Outcome::Handled).unwrap();
    assert_eq!(current_handler(signal), usurper_address);
    drop(again);
    install_raw(signal, libc::SIG_DFL);
}

#[test]
fn dispatch_order_and_handled_sum() {
    static ORDER: Mutex<Vec<&str>> = Mutex::new(Vec::new());
    // Recording the order with a mutex is fine here: `raise` delivers the
    // signal on this thread, which holds no lock at that moment.
    let signal = realtime(6);
    let last = signal::register(signal, "last", |_| {
        ORDER.lock().unwrap().push("last");
        Outcome::NotHandled
    })
    .unwrap();
    let first = signal::register_with(signal, "first", Order::First, |_| {
        ORDER.lock().unwrap().push("first");
        Outcome::Handled
    })
    .unwrap();

    raise(signal);
    assert_eq!(*ORDER.lock().unwrap(), ["first", "last"]);
    let stats = signal::handler_stats(signal);
    assert_eq!(stats[0].name, "first");
    assert_eq!((stats[0].calls, stats[0].handled), (1, 1));
    assert_eq!((stats[1].calls, stats[1].handled), (1, 0));
    assert_eq!(signal::stats(signal).handled, 1);
    assert_eq!(signal::stats(signal).unhandled, 0);
    first.unregister().unwrap();
    last.unregister().unwrap();
}

#[test]
fn context_reports_sigqueue_value_and_sender() {
    static VALUE: AtomicUsize = AtomicUsize::new(0);
    static PID: AtomicI32 = AtomicI32::new(0);
    static CODE: AtomicI32 = AtomicI32::new(0);
    let signal = realtime(7);
    let registration = signal::register(signal, "inspect", |context: &SignalContext| {
        let value = context.value().map_or(0, |value| value.sival_ptr as usize);
        VALUE.store(value, Ordering::SeqCst);
        PID.store(context.sender_pid().unwrap_or(-1), Ordering::SeqCst);
        CODE.store(context.code(), Ordering::SeqCst);
        Outcome::Handled
    })
    .unwrap();

    let value = libc::sigval {
        sival_ptr: 0xfeed as *mut libc::c_void,
    };
    // SAFETY: `sigqueue` to our own process with a plain value.
    let rc = unsafe { libc::sigqueue(libc::getpid(), signal.number(), value) };
    assert_eq!(rc, 0);
    wait_until("the handler ran", || VALUE.load(Ordering::SeqCst) != 0);
    assert_eq!(VALUE.load(Ordering::SeqCst), 0xfeed);
    assert_eq!(PID.load(Ordering::SeqCst), std::process::id() as i32);
    assert_eq!(CODE.load(Ordering::SeqCst), libc::SI_QUEUE);
    registration.unregister().unwrap();
}

/// The tgkill storm: one thread registers, unregisters and waits for grace
/// periods in a loop while another sends it a real-time signal as fast as
/// the kernel accepts. Real-time signals queue, so every accepted send is
/// exactly one delivery, and the counts must match.
#[test]
fn tgkill_storm_against_updates() {
    // Enough rounds and signals to interleave every update step with
    // deliveries; the caps keep the run short on a loaded machine.
    const MIN_ROUNDS: u64 = 300;
    const MIN_SIGNALS: u64 = 50_000;
    const MAX_SIGNALS: u64 = 300_000;
    const TIME_LIMIT: Duration = Duration::from_secs(10);
    // Queued real-time signals count against the user's RLIMIT_SIGPENDING,
    // which every process of the user shares. A storm that fills it makes
    // sigqueue, tgkill and timer_create fail with EAGAIN in the tests that
    // run beside it, so the sender keeps at most this many undelivered.
    const MAX_IN_FLIGHT: u64 = 1024;
    static COUNTED: AtomicU64 = AtomicU64::new(0);

    let signal = realtime(8);
    let before = signal::stats(signal);
    let permanent = signal::register(signal, "count", |_| {
        COUNTED.fetch_add(1, Ordering::Relaxed);
        Outcome::Handled
    })
    .unwrap();

    let target_tid = Arc::new(AtomicI32::new(0));
    let updates_done = Arc::new(AtomicBool::new(false));
    let sender_done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));

    let updater = {
        let target_tid = Arc::clone(&target_tid);
        let updates_done = Arc::clone(&updates_done);
        let sender_done = Arc::clone(&sender_done);
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || {
            target_tid.store(gettid(), Ordering::SeqCst);
            let start = Instant::now();
            let mut rounds = 0;
            while rounds < MIN_ROUNDS || sent.load(Ordering::SeqCst) < MIN_SIGNALS {
                if start.elapsed() > TIME_LIMIT {
                    break;
                }
                let name = format!("churn-{rounds}");
                let order = if rounds % 2 == 0 {
                    Order::First
                } else {
                    Order::Last
                };
                let registration =
                    signal::register_with(signal, &name, order, |_| Outcome::NotHandled).unwrap();
                nmi_rcu::synchronize();
                if rounds % 3 == 0 {
                    drop(registration);
                } else {
                    registration.unregister().unwrap();
                }
                rounds += 1;
            }
            updates_done.store(true, Ordering::SeqCst);

            // Stay alive until every signal sent to this thread has been
            // handled: an exiting thread discards its pending signals.
            wait_until("the sender stopped", || sender_done.load(Ordering::SeqCst));
            let total = sent.load(Ordering::SeqCst);
            wait_until("every signal was handled", || {
                COUNTED.load(Ordering::SeqCst) >= total
            });
            rounds
        })
    };

    let sender = {
        let target_tid = Arc::clone(&target_tid);
        let updates_done = Arc::clone(&updates_done);
        let sender_done = Arc::clone(&sender_done);
        let sent = Arc::clone(&sent);
        std::thread::spawn(move || {
            wait_until("the updater started", || {
                target_tid.load(Ordering::SeqCst) != 0
            });
            let tid = target_tid.load(Ordering::SeqCst);
            while !updates_done.load(Ordering::SeqCst) && sent.load(Ordering::Relaxed) < MAX_SIGNALS
            {
                if sent.load(Ordering::SeqCst) >= COUNTED.load(Ordering::SeqCst) + MAX_IN_FLIGHT {
                    std::thread::yield_now();
                    continue;
                }
                if send_to_thread(tid, signal) == 0 {
                    sent.fetch_add(1, Ordering::SeqCst);
                } else {
                    // EAGAIN: the user's queue of pending signals is full,
                    // for example because of another process; let it drain.
                    assert_eq!(
                        std::io::Error::last_os_error().raw_os_error(),
                        Some(libc::EAGAIN)
                    );
                    std::thread::yield_now();
                }
            }
            sender_done.store(true, Ordering::SeqCst);
        })
    };

    sender.join().unwrap();
    let rounds = updater.join().unwrap();
    let sent = sent.load(Ordering::SeqCst);
    eprintln!("tgkill storm: {sent} signals during {rounds} update rounds");
    assert!(
        rounds >= 50,
        "the updater made only {rounds} rounds in {TIME_LIMIT:?}"
    );
    assert!(
        sent >= MIN_SIGNALS.min(10_000),
        "only {sent} signals were sent"
    );
    assert_eq!(COUNTED.load(Ordering::SeqCst), sent);
    let after = signal::stats(signal);
    assert_eq!(after.delivered - before.delivered, sent);
    assert_eq!(after.handled - before.handled, sent);
    assert_eq!(after.unhandled, before.unhandled);
    permanent.unregister().unwrap();
}

static FOREIGN_HANDLER_TID: AtomicI32 = AtomicI32::new(0);

extern "C" fn foreign_thread_main(argument: *mut libc::c_void) -> *mut libc::c_void {
    // This thread was created by `pthread_create` and never called into
    // the library before the signal.
    let signal = Signal::new(argument as usize as c_int).unwrap();
    let tid = gettid();
    assert_eq!(send_to_thread(tid, signal), 0);
    let ok = FOREIGN_HANDLER_TID.load(Ordering::SeqCst) == tid;
    ok as usize as *mut libc::c_void
}

#[test]
fn handler_runs_on_foreign_pthread() {
    let signal = realtime(9);
    let registration = signal::register(signal, "foreign", |context| {
        FOREIGN_HANDLER_TID.store(context.thread_id(), Ordering::SeqCst);
        Outcome::Handled
    })
    .unwrap();

    // SAFETY: `thread` is valid storage; the start routine has the C
    // signature, and its argument is a plain integer.
    let result = unsafe {
        let mut thread: libc::pthread_t = std::mem::zeroed();
        let rc = libc::pthread_create(
            &mut thread,
            std::ptr::null(),
            foreign_thread_main,
            signal.number() as usize as *mut libc::c_void,
        );
        assert_eq!(rc, 0);
        let mut result: *mut libc::c_void = std::ptr::null_mut();
        assert_eq!(libc::pthread_join(thread, &mut result), 0);
        result
    };
    assert_eq!(
        result as usize, 1,
        "the handler did not run on the foreign thread"
    );
    assert_ne!(FOREIGN_HANDLER_TID.load(Ordering::SeqCst), gettid());
    registration.unregister().unwrap();
}

#[test]
fn handler_runs_on_sigaltstack() {
    static HANDLER_STACK_ADDRESS: AtomicUsize = AtomicUsize::new(0);
    let signal = realtime(10);
    let registration = signal::register(signal, "altstack", |_| {
        let local = 0u8;
        HANDLER_STACK_ADDRESS.store(
            std::hint::black_box(&local) as *const u8 as usize,
            Ordering::SeqCst,
        );
        Outcome::Handled
    })
    .unwrap();

    let (start, end) = std::thread::spawn(move || {
        let mut stack = vec![0u8; 256 * 1024];
        let start = stack.as_mut_ptr() as usize;
        let end = start + stack.len();
        let new = libc::stack_t {
            ss_sp: stack.as_mut_ptr().cast(),
            ss_flags: 0,
            ss_size: stack.len(),
        };
        // SAFETY: `stack` outlives its use as the alternate stack: it is
        // disabled again before `stack` is dropped.
        unsafe {
            let mut old: libc::stack_t = std::mem::zeroed();
            assert_eq!(libc::sigaltstack(&new, &mut old), 0);
            assert_eq!(send_to_thread(gettid(), signal), 0);
            assert_eq!(libc::sigaltstack(&old, std::ptr::null_mut()), 0);
        }
        drop(stack);
        (start, end)
    })
    .join()
    .unwrap();

    let address = HANDLER_STACK_ADDRESS.load(Ordering::SeqCst);
    assert!(
        (start..end).contains(&address),
        "handler local at {address:#x}, alternate stack {start:#x}..{end:#x}"
    );
    registration.unregister().unwrap();
}

#[test]
fn set_and_unset_inside_handler() {
    static SLOT: HandlerSlot<u32> = HandlerSlot::new();
    static NEXT: Mutex<Option<PreparedHandler<u32>>> = Mutex::new(None);
    static A_CALLS: AtomicU64 = AtomicU64::new(0);
    static B_CALLS: AtomicU64 = AtomicU64::new(0);

    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let a_dropped = Arc::new(AtomicBool::new(false));
    let a_flag = DropFlag(Arc::clone(&a_dropped));
    SLOT.set(move |_: &u32| {
        let _ = &a_flag;
        A_CALLS.fetch_add(1, Ordering::Relaxed);
        Outcome::Handled
    })
    .synchronize();
    *NEXT.lock().unwrap() = Some(PreparedHandler::new(|_: &u32| {
        B_CALLS.fetch_add(1, Ordering::Relaxed);
        Outcome::Handled
    }));

    // The signal handler dispatches through the slot, then replaces the
    // handler with the prepared one, or unsets it when none is left. It
    // takes the mutex with `try_lock`, which never blocks.
    let signal = realtime(11);
    let registration = signal::register(signal, "swaps", |_| {
        let outcome = SLOT.dispatch(&1);
        match NEXT.try_lock().ok().and_then(|mut next| next.take()) {
            Some(prepared) => SLOT.set_prepared(prepared).defer(),
            None => SLOT.unset().defer(),
        }
        outcome
    })
    .unwrap();

    raise(signal);
    assert_eq!(A_CALLS.load(Ordering::SeqCst), 1);
    assert_eq!(SLOT.dispatch(&2), Outcome::Handled);
    assert_eq!(
        B_CALLS.load(Ordering::SeqCst),
        1,
        "B was not published from the handler"
    );

    raise(signal);
    assert_eq!(B_CALLS.load(Ordering::SeqCst), 2);
    assert_eq!(
        SLOT.dispatch(&3),
        Outcome::NotHandled,
        "the handler did not unset the slot"
    );

    // A was retired inside the handler and is reclaimed after a grace
    // period by the reclaimer thread.
    nmi_rcu::barrier();
    assert!(
        a_dropped.load(Ordering::SeqCst),
        "A's data was not reclaimed"
    );
    registration.unregister().unwrap();
}

/// A logger that keeps every warning, for the watchdog test.
struct CapturingLogger {
    warnings: Mutex<Vec<String>>,
}

impl log::Log for CapturingLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn {
            self.warnings
                .lock()
                .unwrap()
                .push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn logger() -> &'static CapturingLogger {
    static LOGGER: OnceLock<&'static CapturingLogger> = OnceLock::new();
    LOGGER.get_or_init(|| {
        let logger = Box::leak(Box::new(CapturingLogger {
            warnings: Mutex::new(Vec::new()),
        }));
        log::set_logger(logger).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Warn);
        logger
    })
}

#[test]
fn watchdog_warns_for_slow_handler() {
    let logger = logger();
    let signal = realtime(12);
    signal::set_watchdog_threshold(signal, Duration::from_micros(500));
    let registration = signal::register(signal, "slow-signal-handler", |_| {
        // `nanosleep` is async-signal-safe.
        std::thread::sleep(Duration::from_millis(3));
        Outcome::Handled
    })
    .unwrap();

    raise(signal);
    // The watchdog thread reports within its period (250 ms).
    let mentions = || {
        logger
            .warnings
            .lock()
            .unwrap()
            .iter()
            .filter(|warning| warning.contains("slow-signal-handler"))
            .count()
    };
    wait_until("the watchdog warned", || mentions() > 0);
    let warning = logger
        .warnings
        .lock()
        .unwrap()
        .iter()
        .find(|warning| warning.contains("slow-signal-handler"))
        .cloned()
        .unwrap();
    assert!(warning.contains("watchdog threshold of 500µs"), "{warning}");
    assert_eq!(mentions(), 1);
    assert!(signal::handler_stats(signal)[0].max_duration >= Duration::from_millis(3));
    registration.unregister().unwrap();
}
