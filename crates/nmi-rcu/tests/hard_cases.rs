//! Hard cases that have broken peer libraries, each pinned by a regression
//! test named after the behaviour it checks.
//!
//! Cases already pinned elsewhere are not repeated here. `liveness.rs`
//! covers the stall warning for a registered thread's forgotten guard and
//! `fork()` while readers and the reclaimer are busy. `grace_period.rs`
//! covers an exited registered thread, a single-threaded `call_rcu` flood
//! and 1,000 idle registered threads.
//!
//! Tests that install signal dispositions, fork or leave a thread stuck
//! run in a fresh copy of this test binary: the parent re-runs the binary
//! with only that test selected and [`CHILD_VARIABLE`] set, and judges the
//! child by its exit status.

use std::ffi::c_int;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nmi_rcu::signal::{self, Signal};
use nmi_rcu::{Domain, HandlerSlot, Outcome, RcuCell};

/// Set to a test's name in the child process that runs that test's body.
const CHILD_VARIABLE: &str = "NMI_RCU_HARD_CASE";

/// Returns `true` in the child process started for test `name`.
fn is_child(name: &str) -> bool {
    std::env::var(CHILD_VARIABLE).as_deref() == Ok(name)
}

/// Re-runs this test binary with only test `name` selected, as the child
/// for that test, and returns its output once it has exited.
fn run_child(name: &str) -> Output {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args([
            "--exact",
            name,
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_VARIABLE, name)
        .stdin(Stdio::null())
        .output()
        .expect("failed to start the child test process")
}

/// Asserts that a child from [`run_child`] exited with status 0, showing
/// its output otherwise.
fn assert_child_succeeded(output: &Output) {
    assert!(
        output.status.success(),
        "the child failed with {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn realtime(offset: c_int) -> Signal {
    Signal::new(libc::SIGRTMIN() + offset).expect("a free real-time signal")
}

fn gettid() -> libc::pid_t {
    // SAFETY: `gettid` has no preconditions.
    unsafe { libc::gettid() }
}

/// Largest number of sent but undelivered signals a storm keeps. Queued
/// real-time signals count against the user's RLIMIT_SIGPENDING, which every
/// process of the user shares. A storm that fills it makes signal sends and
/// `timer_create` fail with EAGAIN in the tests that run beside it.
const MAX_IN_FLIGHT: u64 = 1024;

/// Sends `signal` to thread `tid` of this process; returns whether the
/// kernel queued it (`false` on `EAGAIN`, a full real-time queue).
fn send_to_thread(tid: libc::pid_t, signal: Signal) -> bool {
    // SAFETY: `tgkill` to a thread of our own process has no memory-safety
    // preconditions.
    let rc = unsafe { libc::syscall(libc::SYS_tgkill, libc::getpid(), tid, signal.number()) };
    if rc == 0 {
        return true;
    }
    let error = std::io::Error::last_os_error();
    assert_eq!(
        error.raw_os_error(),
        Some(libc::EAGAIN),
        "tgkill failed: {error}"
    );
    false
}

/// Waits up to `limit` for `condition`, then panics naming `what`.
fn wait_until(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

/// Waits up to 100 ms for `condition`, without failing when it stays
/// false.
fn wait_briefly(condition: impl Fn() -> bool) {
    let start = Instant::now();
    while !condition() && start.elapsed() < Duration::from_millis(100) {
        thread::yield_now();
    }
}

/// Installs `handler` as a raw `SA_SIGINFO` disposition for `signal`.
fn install_raw(
    signal: Signal,
    handler: extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void),
) {
    // SAFETY: all-zero bytes are a valid `sigaction`; the handler has the
    // three-argument signature that SA_SIGINFO announces.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(signal.number(), &action, std::ptr::null_mut()),
            0
        );
    }
}

/// The value of a [`Witness`] while it is alive.
const ALIVE: u64 = 0x600D_600D_600D_600D;

/// The value a [`Witness`] leaves behind when it is dropped.
const DEAD: u64 = 0xDEAD_DEAD_DEAD_DEAD;

/// Data captured by a handler, which marks itself dead when dropped, so a
/// handler that runs after its reclamation reads `DEAD` (or freed memory).
struct Witness {
    state: AtomicU64,
    drops: &'static AtomicUsize,
}

impl Witness {
    fn new(drops: &'static AtomicUsize) -> Arc<Witness> {
        Arc::new(Witness {
            state: AtomicU64::new(ALIVE),
            drops,
        })
    }

    /// Returns whether the witness is still alive.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    fn is_alive(&self) -> bool {
        self.state.load(Ordering::SeqCst) == ALIVE
    }
}

impl Drop for Witness {
    fn drop(&mut self) {
        self.state.store(DEAD, Ordering::SeqCst);
        self.drops.fetch_add(1, Ordering::SeqCst);
    }
}

static CHAINED: AtomicU64 = AtomicU64::new(0);

/// The disposition in place before the signal layer: counts deliveries
/// that the trampoline passed on, or that arrived after it was removed.
extern "C" fn count_chained(_: c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    CHAINED.fetch_add(1, Ordering::SeqCst);
}

/// A real-time signal keeps arriving on one thread while another thread
/// registers its handler and unregisters it again, blocking on even rounds
/// and deferred (dropping the registration) on odd ones. Every delivery
/// must run either the handler, with its captured data still alive, or the
/// previous disposition. None may run the default action, which would kill
/// the child. Every handler must be reclaimed in the end.
#[test]
fn signal_during_own_unregister_runs_handler_or_previous() {
    const NAME: &str = "signal_during_own_unregister_runs_handler_or_previous";
    if !is_child(NAME) {
        assert_child_succeeded(&run_child(NAME));
        return;
    }

    const ROUNDS: usize = 300;
    const TIME_LIMIT: Duration = Duration::from_secs(10);
    static HANDLED: AtomicU64 = AtomicU64::new(0);
    static DEAD_READS: AtomicU64 = AtomicU64::new(0);
    static DROPS: AtomicUsize = AtomicUsize::new(0);

    let signal = realtime(12);
    install_raw(signal, count_chained);

    let receiver_tid = Arc::new(AtomicI32::new(0));
    let stop_receiver = Arc::new(AtomicBool::new(false));
    let receiver = {
        let receiver_tid = receiver_tid.clone();
        let stop = stop_receiver.clone();
        thread::spawn(move || {
            nmi_rcu::register_thread();
            receiver_tid.store(gettid(), Ordering::SeqCst);
            while !stop.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
        })
    };
    wait_until("the receiver started", TIME_LIMIT, || {
        receiver_tid.load(Ordering::SeqCst) != 0
    });
    let tid = receiver_tid.load(Ordering::SeqCst);

    let stop_sender = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let stop = stop_sender.clone();
        let sent = sent.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let delivered = HANDLED.load(Ordering::SeqCst) + CHAINED.load(Ordering::SeqCst);
                if sent.load(Ordering::SeqCst) >= delivered + MAX_IN_FLIGHT {
                    thread::yield_now();
                    continue;
                }
                if send_to_thread(tid, signal) {
                    sent.fetch_add(1, Ordering::SeqCst);
                } else {
                    thread::yield_now();
                }
            }
        })
    };

    let start = Instant::now();
    let mut rounds = 0;
    while rounds < ROUNDS && start.elapsed() < TIME_LIMIT {
        let witness = Witness::new(&DROPS);
        let registration = signal::register(signal, "own", move |_| {
            if !witness.is_alive() {
                DEAD_READS.fetch_add(1, Ordering::SeqCst);
            }
            HANDLED.fetch_add(1, Ordering::SeqCst);
            Outcome::Handled
        })
        .expect("register the handler");
        // Let a signal reach the handler, and after the removal the
        // previous disposition, so both sides of every removal see traffic
        // even when the sender is scheduled rarely.
        let handled = HANDLED.load(Ordering::SeqCst);
        wait_briefly(|| HANDLED.load(Ordering::SeqCst) > handled);
        let chained = CHAINED.load(Ordering::SeqCst);
        if rounds % 2 == 0 {
            registration.unregister().expect("unregister the handler");
        } else {
            drop(registration);
        }
        wait_briefly(|| CHAINED.load(Ordering::SeqCst) > chained);
        rounds += 1;
    }

    stop_sender.store(true, Ordering::SeqCst);
    sender.join().unwrap();
    let sent = sent.load(Ordering::SeqCst);
    // Real-time signals queue, so each accepted send is one delivery. The
    // receiver stays alive until all of them have run, because an exiting
    // thread discards its pending signals.
    wait_until("every signal was delivered", TIME_LIMIT, || {
        HANDLED.load(Ordering::SeqCst) + CHAINED.load(Ordering::SeqCst) >= sent
    });
    stop_receiver.store(true, Ordering::SeqCst);
    receiver.join().unwrap();
    nmi_rcu::barrier();

    let handled = HANDLED.load(Ordering::SeqCst);
    let chained = CHAINED.load(Ordering::SeqCst);
    eprintln!("{sent} signals during {rounds} rounds: {handled} handled, {chained} passed on");
    assert!(
        rounds >= 50,
        "only {rounds} register/unregister rounds in {TIME_LIMIT:?}"
    );
    assert!(handled > 0, "no signal reached a registered handler");
    assert!(chained > 0, "no signal reached the previous disposition");
    assert_eq!(
        handled + chained,
        sent,
        "deliveries do not add up to signals sent"
    );
    assert_eq!(
        DEAD_READS.load(Ordering::SeqCst),
        0,
        "a handler ran after its data was dropped"
    );
    assert_eq!(
        DROPS.load(Ordering::SeqCst),
        rounds,
        "a handler was never reclaimed"
    );
}

static FORK_STORM_HANDLED: AtomicU64 = AtomicU64::new(0);

/// Raises `signal`, which has a handler, in the calling thread. Retries for
/// up to 10 s while the kernel rejects it with EAGAIN, because the user's
/// queue of pending signals (RLIMIT_SIGPENDING) is shared with every other
/// process of the user. Returns whether the signal was raised.
fn raise_until_queued(signal: Signal) -> bool {
    let start = Instant::now();
    loop {
        // SAFETY: `raise` has no memory-safety preconditions, and every
        // caller has a handler registered for `signal`.
        if unsafe { libc::raise(signal.number()) } == 0 {
            return true;
        }
        let error = std::io::Error::last_os_error().raw_os_error();
        if error != Some(libc::EAGAIN) || start.elapsed() > Duration::from_secs(10) {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}
static FORK_SLOT: HandlerSlot<u32> = HandlerSlot::new();

/// Runs in the child after `fork()`: dispatches the inherited signal
/// handler, registers and unregisters a new one, uses a handler slot with
/// a blocking grace period, and runs a callback. Returns the exit code:
/// 0 for success, or the number of the first step that failed.
fn fork_child_checks(inherited: Signal, fresh: Signal) -> i32 {
    let before = FORK_STORM_HANDLED.load(Ordering::SeqCst);
    if !raise_until_queued(inherited) {
        return 1;
    }
    if FORK_STORM_HANDLED.load(Ordering::SeqCst) != before + 1 {
        return 1;
    }

    static FRESH_HANDLED: AtomicU64 = AtomicU64::new(0);
    let Ok(registration) = signal::register(fresh, "child", |_| {
        FRESH_HANDLED.fetch_add(1, Ordering::SeqCst);
        Outcome::Handled
    }) else {
        return 2;
    };
    if !raise_until_queued(fresh) {
        return 3;
    }
    if FRESH_HANDLED.load(Ordering::SeqCst) != 1 {
        return 3;
    }
    if registration.unregister().is_err() {
        return 4;
    }

    FORK_SLOT
        .set(|event: &u32| {
            if *event == 7 {
                Outcome::Handled
            } else {
                Outcome::NotHandled
            }
        })
        .synchronize();
    if FORK_SLOT.dispatch(&7) != Outcome::Handled {
        return 5;
    }
    if FORK_SLOT.unset().synchronize().is_none() {
        return 6;
    }

    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    nmi_rcu::call_rcu(move || flag.store(true, Ordering::SeqCst));
    nmi_rcu::barrier();
    if !ran.load(Ordering::SeqCst) {
        return 7;
    }
    0
}

/// `fork()` while a signal storm runs through the signal layer on a
/// registered reader, an unregistered reader keeps reading, an updater
/// retires values and the reclaimer frees them. Each child must dispatch
/// the inherited handler, register, dispatch and unregister a new one,
/// synchronize, and run a callback through a reclaimer it restarts.
#[test]
fn fork_during_signal_storm_child_dispatches_signals() {
    const NAME: &str = "fork_during_signal_storm_child_dispatches_signals";
    if !is_child(NAME) {
        assert_child_succeeded(&run_child(NAME));
        return;
    }

    const FORKS: usize = 5;
    let inherited = realtime(13);
    let fresh = realtime(14);
    let registration = signal::register(inherited, "storm", |_| {
        FORK_STORM_HANDLED.fetch_add(1, Ordering::SeqCst);
        Outcome::Handled
    })
    .expect("register the storm handler");

    let cell = Arc::new(RcuCell::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let reader_tid = Arc::new(AtomicI32::new(0));
    let mut workers = Vec::new();
    for register in [true, false] {
        let cell = cell.clone();
        let stop = stop.clone();
        let reader_tid = reader_tid.clone();
        workers.push(thread::spawn(move || {
            if register {
                nmi_rcu::register_thread();
                reader_tid.store(gettid(), Ordering::SeqCst);
            }
            while !stop.load(Ordering::Relaxed) {
                let guard = nmi_rcu::read_lock();
                std::hint::black_box(cell.read(&guard));
            }
        }));
    }
    {
        let cell = cell.clone();
        let stop = stop.clone();
        workers.push(thread::spawn(move || {
            let mut value = 0;
            while !stop.load(Ordering::Relaxed) {
                value += 1;
                cell.replace(value).defer();
                // `defer` never waits, so without this grace period the
                // backlog would outgrow its limit; a child whose parent lost
                // a batch at fork() is covered by
                // `fork_child_call_rcu_ignores_batch_lost_at_fork`.
                if value % 64 == 0 {
                    nmi_rcu::synchronize();
                }
            }
        }));
    }
    wait_until(
        "the registered reader started",
        Duration::from_secs(10),
        || reader_tid.load(Ordering::SeqCst) != 0,
    );
    let sent = Arc::new(AtomicU64::new(0));
    {
        let stop = stop.clone();
        let sent = sent.clone();
        let tid = reader_tid.load(Ordering::SeqCst);
        workers.push(thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let delivered = FORK_STORM_HANDLED.load(Ordering::SeqCst);
                if sent.load(Ordering::SeqCst) >= delivered + MAX_IN_FLIGHT {
                    thread::yield_now();
                    continue;
                }
                if send_to_thread(tid, inherited) {
                    sent.fetch_add(1, Ordering::SeqCst);
                } else {
                    thread::yield_now();
                }
            }
        }));
    }
    wait_until("the storm is under way", Duration::from_secs(10), || {
        FORK_STORM_HANDLED.load(Ordering::SeqCst) > 100
    });

    for _ in 0..FORKS {
        // SAFETY: the child runs only this test's code and leaves with
        // `_exit`. No parent thread holds a lock that the child needs,
        // because the workers only read, retire values and send signals.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
        if pid == 0 {
            // SAFETY: `alarm` and `_exit` have no preconditions. The alarm
            // turns a hang into death by SIGALRM.
            unsafe {
                libc::alarm(10);
                libc::_exit(fork_child_checks(inherited, fresh));
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child into valid storage.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(
            libc::WIFEXITED(status),
            "the forked child died: wait status {status:#x}"
        );
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "the forked child failed at step {}",
            libc::WEXITSTATUS(status)
        );
    }

    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.join().unwrap();
    }
    let sent = sent.load(Ordering::SeqCst);
    wait_until(
        "the parent handled every signal",
        Duration::from_secs(10),
        || FORK_STORM_HANDLED.load(Ordering::SeqCst) >= sent,
    );
    registration
        .unregister()
        .expect("unregister the storm handler");
    eprintln!("{FORKS} forks during a storm of {sent} signals");
}

/// Four threads queue callbacks as fast as they can for a second while
/// readers keep entering sections. The backlog must stay within the limit
/// plus one callback per flooding thread (each may queue one more after its
/// last check), and every callback must run exactly once.
#[test]
fn call_rcu_flood_from_threads_stays_bounded() {
    const THREADS: u64 = 4;
    const LIMIT: u64 = 1_000;
    const DURATION: Duration = Duration::from_secs(1);

    let domain = Domain::new();
    domain.set_backlog_limit(LIMIT);
    let cell = Arc::new(RcuCell::new_in(0u64, &domain));
    let stop = Arc::new(AtomicBool::new(false));
    let ran = Arc::new(AtomicU64::new(0));

    let readers: Vec<_> = (0..2)
        .map(|_| {
            let domain = domain.clone();
            let cell = cell.clone();
            let stop = stop.clone();
            thread::spawn(move || {
                nmi_rcu::register_thread();
                while !stop.load(Ordering::Relaxed) {
                    let guard = domain.read_lock();
                    std::hint::black_box(cell.read(&guard));
                }
            })
        })
        .collect();
    let flooders: Vec<_> = (0..THREADS)
        .map(|_| {
            let domain = domain.clone();
            let stop = stop.clone();
            let ran = ran.clone();
            thread::spawn(move || {
                let mut queued = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ran = ran.clone();
                    domain.call_rcu(move || {
                        ran.fetch_add(1, Ordering::Relaxed);
                    });
                    queued += 1;
                }
                queued
            })
        })
        .collect();

    thread::sleep(DURATION);
    stop.store(true, Ordering::SeqCst);
    let queued: u64 = flooders.into_iter().map(|f| f.join().unwrap()).sum();
    for reader in readers {
        reader.join().unwrap();
    }
    domain.barrier();

    let stats = domain.stats();
    eprintln!(
        "{queued} callbacks in {DURATION:?}, peak backlog {}",
        stats.peak_backlog
    );
    assert!(
        queued > LIMIT,
        "only {queued} callbacks queued; the flood never reached the limit"
    );
    assert_eq!(
        ran.load(Ordering::Relaxed),
        queued,
        "callbacks ran a different number of times than queued"
    );
    // The barrier's own callback counts too.
    assert_eq!(stats.callbacks_queued, queued + 1);
    assert_eq!(stats.callbacks_run, stats.callbacks_queued);
    assert!(
        stats.peak_backlog <= LIMIT + THREADS,
        "peak backlog {} passed the limit {LIMIT} by more than {THREADS}",
        stats.peak_backlog
    );
}

/// 1,000 registered threads keep entering and leaving sections, sleeping a
/// millisecond between them, while the main thread runs grace periods.
/// Every grace period must complete; the idle case is in `grace_period.rs`.
#[test]
fn thousand_busy_registered_threads_allow_grace_periods() {
    const THREADS: usize = 1000;
    const GRACE_PERIODS: usize = 10;

    let cell = Arc::new(RcuCell::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(Barrier::new(THREADS + 1));
    let readers: Vec<_> = (0..THREADS)
        .map(|_| {
            let cell = cell.clone();
            let stop = stop.clone();
            let started = started.clone();
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    nmi_rcu::register_thread();
                    started.wait();
                    while !stop.load(Ordering::Relaxed) {
                        {
                            let guard = nmi_rcu::read_lock();
                            std::hint::black_box(cell.read(&guard));
                        }
                        thread::sleep(Duration::from_millis(1));
                    }
                })
                .expect("spawn a reader thread")
        })
        .collect();
    started.wait();

    let start = Instant::now();
    let mut slowest = Duration::ZERO;
    for value in 1..=GRACE_PERIODS {
        let one = Instant::now();
        assert_eq!(cell.replace(value).synchronize(), value - 1);
        slowest = slowest.max(one.elapsed());
    }
    let total = start.elapsed();

    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.join().unwrap();
    }
    eprintln!(
        "{GRACE_PERIODS} grace periods with {THREADS} busy readers: {total:?}, slowest {slowest:?}"
    );
    assert!(
        total < Duration::from_secs(60),
        "grace periods took {total:?}"
    );
}

/// Keeps every warning logged in the child process.
struct CapturingLogger {
    warnings: Mutex<Vec<(Instant, String)>>,
}

impl log::Log for CapturingLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            let message = record.args().to_string();
            self.warnings
                .lock()
                .unwrap()
                .push((Instant::now(), message));
        }
    }

    fn flush(&self) {}
}

static LOGGER: CapturingLogger = CapturingLogger {
    warnings: Mutex::new(Vec::new()),
};

/// A guard forgotten on a thread that never registered (the fallback path)
/// cannot be traced to a thread. The stall warning must still come, after
/// the configured threshold and soon after it, and report open sections on
/// unregistered threads. The grace period never ends, so the child exits
/// with the updater stuck.
#[test]
fn forgotten_unregistered_guard_warns_after_threshold() {
    const NAME: &str = "forgotten_unregistered_guard_warns_after_threshold";
    if !is_child(NAME) {
        assert_child_succeeded(&run_child(NAME));
        return;
    }

    const THRESHOLD: Duration = Duration::from_millis(200);
    log::set_logger(&LOGGER).expect("no other logger in the child");
    log::set_max_level(log::LevelFilter::Warn);

    let domain = Domain::new();
    domain.set_stall_timeout(THRESHOLD);
    domain.synchronize();
    let reader_domain = domain.clone();
    thread::spawn(move || {
        let guard = reader_domain.read_lock();
        assert!(
            !guard.is_fast_path(),
            "an unregistered thread took the registered path"
        );
        std::mem::forget(guard);
    })
    .join()
    .unwrap();

    let started = Instant::now();
    let updater_domain = domain.clone();
    thread::spawn(move || updater_domain.synchronize());
    wait_until("a stall warning was logged", Duration::from_secs(5), || {
        !LOGGER.warnings.lock().unwrap().is_empty()
    });

    let (logged_at, warning) = LOGGER.warnings.lock().unwrap()[0].clone();
    let delay = logged_at.duration_since(started);
    eprintln!("stall warning after {delay:?}: {warning}");
    assert!(
        delay >= THRESHOLD,
        "warned after {delay:?}, before the {THRESHOLD:?} threshold"
    );
    // The grace period checks for stalls between sleeps of at most 160 µs;
    // the slack absorbs scheduling delays on a loaded machine.
    assert!(
        delay < THRESHOLD + Duration::from_secs(2),
        "warned after {delay:?}, long after the {THRESHOLD:?} threshold"
    );
    assert!(warning.contains("stalled for"), "{warning}");
    assert!(
        warning.contains("1 read-side critical section(s) on unregistered threads"),
        "{warning}"
    );
}

/// Starts a thread that enters a section of `domain` and holds it until
/// the returned sender is dropped or sent to.
fn hold_section(domain: &Domain) -> (std::sync::mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (entered_tx, entered_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let domain = domain.clone();
    let holder = thread::spawn(move || {
        let _guard = domain.read_lock();
        entered_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    entered_rx.recv().unwrap();
    (release_tx, holder)
}

/// In the child after `fork()`, a batch that the parent's reclaimer had
/// taken but not yet run is lost (`reclaim.rs` documents the leak). The
/// child's `call_rcu` must not wait for those callbacks: back-pressure that
/// counts them waits forever once they exceed half the backlog limit.
///
/// The parent makes its reclaimer take a batch of 30 retired values and
/// block on a reader, with a backlog limit of 10, then forks.
#[test]

fn fork_child_call_rcu_ignores_batch_lost_at_fork() {
    const NAME: &str = "fork_child_call_rcu_ignores_batch_lost_at_fork";
    if !is_child(NAME) {
        assert_child_succeeded(&run_child(NAME));
        return;
    }

    let domain = Domain::new();
    domain.set_backlog_limit(10);
    let cell = RcuCell::new_in(0u32, &domain);

    // The reclaimer takes the first value alone and waits for the first
    // reader; the next 30 queue up behind it.
    let (release_first, first) = hold_section(&domain);
    cell.replace(1).defer();
    thread::sleep(Duration::from_millis(100));
    for value in 2..=31 {
        cell.replace(value).defer();
    }
    // A second reader enters; once the first leaves, the reclaimer runs the
    // first value, takes the 30 and waits for the second reader.
    let (release_second, second) = hold_section(&domain);
    release_first.send(()).unwrap();
    first.join().unwrap();
    wait_until(
        "the first value was reclaimed",
        Duration::from_secs(5),
        || domain.stats().callbacks_run == 1,
    );
    thread::sleep(Duration::from_millis(100));
    assert_eq!(domain.stats().backlog, 30);

    // SAFETY: the child runs only this test's code and leaves with `_exit`;
    // no parent thread holds a lock the child needs.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: `alarm` and `_exit` have no preconditions.
        unsafe { libc::alarm(5) };
        domain.call_rcu(|| ());
        domain.barrier();
        // SAFETY: as above.
        unsafe { libc::_exit(0) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child into valid storage.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    release_second.send(()).unwrap();
    second.join().unwrap();
    assert!(
        libc::WIFEXITED(status),
        "the child's call_rcu hung or crashed: wait status {status:#x}"
    );
    assert_eq!(libc::WEXITSTATUS(status), 0);
}
