//! `nmi-rcu demo`: the Linux kernel's dynamic NMI handler pattern, run on
//! real SIGPROF signals from a process CPU-time timer.
//!
//! | kernel | demo |
//! | --- | --- |
//! | `nmi_callback`, initially `dummy_nmi_callback` | [`SLOT`], a `HandlerSlot` whose default handler declines |
//! | `do_nmi` | the signal layer's trampoline calls the registered handler `nmi-rcu-demo`, which dispatches through [`SLOT`] |
//! | `set_nmi_callback` | `SLOT.set(A)`, then `SLOT.set_prepared(B)` with B built ahead |
//! | `unset_nmi_callback(); synchronize_sched(); kfree(data)` | `SLOT.unset().synchronize()`, then [`FreeCheck::free`] |
//!
//! Worker threads burn CPU time while `ITIMER_PROF` sends SIGPROF. The run
//! has three phases of equal length: the counting handler A, then the
//! sampling handler B (A is retired with deferred reclamation), then the
//! default handler (B is unset, a grace period passes, B's data is freed).
//!
//! The main thread blocks SIGPROF, so the signals land on the workers. Before
//! registering, the demo sets SIGPROF to `SIG_IGN`: the signal layer passes
//! the signals the slot declines to that previous disposition, so they are
//! ignored instead of terminating the process.

mod samples;

use std::fmt::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nmi_rcu::signal::{self, Signal, SignalContext};
use nmi_rcu::{HandlerSlot, Outcome, PreparedHandler};

use crate::os::{self, OsError};
use crate::parse::{parse_count, parse_duration, ValueError};
use samples::{
    row_of, BufferPointer, FreeCheck, PerThread, SampleBuffer, MAX_WORKERS, OTHER_ROW,
    WORKER_THREAD_IDS,
};

/// The handler slot that the SIGPROF handler dispatches through.
static SLOT: HandlerSlot<SignalContext> = HandlerSlot::new();

/// Signals that the slot's default handler declined, per thread.
static DECLINED: PerThread = PerThread::new();

/// The check that handler B never runs on freed data.
static FREE_CHECK: FreeCheck = FreeCheck::new();

/// Name of the demo's handler in the signal layer.
const HANDLER_NAME: &str = "nmi-rcu-demo";

/// Entries of handler B's preallocated ring of instruction addresses.
const SAMPLE_CAPACITY: usize = 8192;

/// Largest accepted `--hz`.
const MAX_HZ: u64 = 10_000;

/// Flags of `nmi-rcu demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    // `allow_negative_numbers` lets a value such as -5 reach the value
    // parser, which names it, instead of being taken for an unknown flag.
    /// Length of the demo in seconds, split into three equal phases;
    /// decimals are accepted.
    #[arg(long, value_name = "SECONDS", default_value = "3", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Duration,

    /// Number of worker threads that burn CPU time and receive SIGPROF.
    #[arg(long, value_name = "N", default_value = "2", value_parser = parse_threads, allow_negative_numbers = true)]
    pub threads: usize,

    /// SIGPROF signals per second of process CPU time (the `ITIMER_PROF`
    /// frequency). Linux checks CPU-time timers on its scheduler tick, so
    /// the real rate stays below about CONFIG_HZ signals per second.
    #[arg(long, value_name = "HZ", default_value = "1000", value_parser = parse_hz, allow_negative_numbers = true)]
    pub hz: u32,
}

fn parse_threads(text: &str) -> Result<usize, ValueError> {
    // MAX_WORKERS is 64, so both conversions are lossless.
    parse_count(text, 1..=MAX_WORKERS as u64).map(|count| count as usize)
}

fn parse_hz(text: &str) -> Result<u32, ValueError> {
    // MAX_HZ fits in u32.
    parse_count(text, 1..=MAX_HZ).map(|hz| hz as u32)
}

/// A demo that could not set up or tear down its signals and threads.
#[derive(Debug)]
pub enum DemoError {
    /// The signal layer rejected a request.
    Signal(signal::Error),
    /// A system call failed.
    Os(OsError),
    /// A worker thread could not be spawned or panicked.
    Worker(String),
}

impl std::fmt::Display for DemoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DemoError::Signal(error) => write!(f, "signal layer: {error}"),
            DemoError::Os(error) => write!(f, "{error}"),
            DemoError::Worker(message) => write!(f, "worker thread: {message}"),
        }
    }
}

impl std::error::Error for DemoError {}

impl From<signal::Error> for DemoError {
    fn from(error: signal::Error) -> Self {
        DemoError::Signal(error)
    }
}

impl From<OsError> for DemoError {
    fn from(error: OsError) -> Self {
        DemoError::Os(error)
    }
}

/// Runs the demo and returns its exit status: 0 only when the outcome is
/// PASS.
pub fn run(args: &DemoArgs) -> ExitCode {
    match execute(args) {
        Ok(report) => {
            print!("{}", report.to_text());
            if report.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("nmi-rcu demo: error: {error}");
            println!("Outcome: FAIL - {error}");
            ExitCode::FAILURE
        }
    }
}

/// The handler registered with the signal layer: the kernel's `do_nmi`.
///
/// # Async-signal safety
///
/// Safe: `HandlerSlot::dispatch` is, the handlers behind it are (see
/// `execute`), and counting a declined signal is one atomic increment.
fn dispatch_to_slot(context: &SignalContext) -> Outcome {
    let outcome = SLOT.dispatch(context);
    if outcome == Outcome::NotHandled {
        DECLINED.add(row_of(context));
    }
    outcome
}

fn execute(args: &DemoArgs) -> Result<Report, DemoError> {
    let sigprof = Signal::new(libc::SIGPROF)?;
    let phase = args.duration / 3;
    println!(
        "nmi-rcu demo: {} worker thread{}, SIGPROF every {:.3} ms of process CPU time, \
         three phases of {:.2} s",
        args.threads,
        if args.threads == 1 { "" } else { "s" },
        1000.0 / f64::from(args.hz),
        phase.as_secs_f64()
    );

    // Step 1: keep SIGPROF off the main thread, make declined signals
    // fall back to SIG_IGN, and register the dispatcher.
    let main_mask = os::BlockedSignal::block(libc::SIGPROF)?;
    let ignored = os::ignore_signal(libc::SIGPROF)?;
    let registration = signal::register(sigprof, HANDLER_NAME, dispatch_to_slot)?;
    let domain_before = nmi_rcu::Domain::global().stats();
    let workers = Workers::start(args.threads)?;
    let timeline = Timeline::new();

    // Step 2: the counting handler A, whose data is shared with this thread
    // so that its reclamation can be observed.
    let counts_a = Arc::new(PerThread::new());
    let data_a = Arc::clone(&counts_a);
    SLOT.set(move |context: &SignalContext| {
        data_a.add(row_of(context));
        Outcome::Handled
    })
    .defer();
    timeline.event("handler A (counting) set");
    let timer = os::ProfTimer::start(Duration::from_secs(1) / args.hz)?;
    std::thread::sleep(phase);

    // Step 3: the sampling handler B, built with its data before it is
    // published. A is retired and reclaimed after a grace period.
    let buffer = Box::new(SampleBuffer::new(SAMPLE_CAPACITY));
    let pointer = BufferPointer::new(&buffer);
    let handler_b = PreparedHandler::new(move |context: &SignalContext| {
        FREE_CHECK.enter(pointer, |buffer| buffer.record(context));
        Outcome::Handled
    });
    SLOT.set_prepared(handler_b).defer();
    timeline.event(&format!(
        "handler B (sampling into {SAMPLE_CAPACITY} preallocated entries) set; \
         A retired with deferred reclamation"
    ));
    std::thread::sleep(phase);

    // Step 4: unset B, wait for a grace period, then free B's data.
    let unset_at = Instant::now();
    let old_handler = SLOT.unset().synchronize();
    let grace_period = unset_at.elapsed();
    drop(old_handler);
    let samples_b: Vec<u64> = (0..=OTHER_ROW)
        .map(|row| buffer.per_thread.get(row))
        .collect();
    let distinct_addresses = buffer.distinct_addresses();
    FREE_CHECK.free(buffer);
    timeline.event(&format!(
        "handler B unset; grace period waited {:.3} ms; B's data freed",
        grace_period.as_secs_f64() * 1000.0
    ));
    std::thread::sleep(args.duration.saturating_sub(phase * 2));

    // Step 5: stop the timer and the workers, unregister (which restores
    // SIG_IGN and so discards a pending SIGPROF), then restore the rest.
    drop(timer);
    let worker_slots = workers.stop()?;
    let handler_stats = registration.unregister()?;
    drop(ignored);
    drop(main_mask);
    timeline.event("timer stopped, handler unregistered");
    nmi_rcu::barrier();
    let domain_after = nmi_rcu::Domain::global().stats();

    Ok(Report {
        worker_slots,
        counts_a: (0..=OTHER_ROW).map(|row| counts_a.get(row)).collect(),
        samples_b,
        declined: (0..=OTHER_ROW).map(|row| DECLINED.get(row)).collect(),
        distinct_addresses,
        // After `barrier`, A's deferred reclamation has run and dropped its
        // clone of the counts.
        a_reclaimed: Arc::strong_count(&counts_a) == 1,
        slot_dispatches: SLOT.dispatch_count(),
        unregistered_dispatches: SLOT.unregistered_dispatch_count(),
        signal_stats: signal::stats(sigprof),
        handler_stats,
        grace_periods: domain_after
            .grace_periods
            .saturating_sub(domain_before.grace_periods),
        callbacks_run: domain_after
            .callbacks_run
            .saturating_sub(domain_before.callbacks_run),
    })
}

/// Prints timestamped events as they happen.
struct Timeline {
    started: Instant,
}

impl Timeline {
    fn new() -> Timeline {
        Timeline {
            started: Instant::now(),
        }
    }

    fn event(&self, text: &str) {
        println!("  {:6.2} s  {text}", self.started.elapsed().as_secs_f64());
    }
}

/// The worker threads, which burn CPU time so that `ITIMER_PROF` fires.
struct Workers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Option<usize>>>,
}

impl Workers {
    /// Spawns `count` workers and waits until each has registered with the
    /// library, published its thread id and unblocked SIGPROF.
    fn start(count: usize) -> Result<Workers, DemoError> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_sender, ready) = mpsc::channel();
        let mut workers = Workers {
            stop: Arc::clone(&stop),
            threads: Vec::with_capacity(count),
        };

        for index in 0..count {
            let stop = Arc::clone(&stop);
            let ready_sender = ready_sender.clone();
            let thread = std::thread::Builder::new()
                .name(format!("demo-worker-{index}"))
                .spawn(move || run_worker(index, &stop, &ready_sender))
                .map_err(|error| DemoError::Worker(format!("could not spawn: {error}")))?;
            workers.threads.push(thread);
        }
        drop(ready_sender);

        for _ in 0..count {
            match ready.recv() {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(DemoError::Os(error)),
                Err(_) => return Err(DemoError::Worker("exited during set-up".to_owned())),
            }
        }
        Ok(workers)
    }

    /// Stops and joins the workers; returns each one's slot in the core's
    /// thread registry.
    fn stop(self) -> Result<Vec<Option<usize>>, DemoError> {
        // Relaxed: the flag only ends the loops; the joins order the rest.
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .map(|thread| {
                thread
                    .join()
                    .map_err(|_| DemoError::Worker("panicked".to_owned()))
            })
            .collect()
    }
}

/// Body of worker `index`: set-up, then CPU work until `stop` is set.
/// Returns the worker's slot in the core's thread registry.
fn run_worker(
    index: usize,
    stop: &AtomicBool,
    ready: &mpsc::Sender<Result<(), OsError>>,
) -> Option<usize> {
    nmi_rcu::register_thread();
    let slot = nmi_rcu::current_thread_slot();
    // Relaxed: the store precedes the unblock below in program order, and
    // only handlers running on this thread look for this thread's id.
    WORKER_THREAD_IDS[index].store(os::current_thread_id(), Ordering::Relaxed);
    let unblocked = os::ensure_signal_stack().and_then(|()| os::unblock_signal(libc::SIGPROF));
    let failed = unblocked.is_err();
    // A send fails only when the main thread has stopped waiting, and then
    // nothing needs the message.
    let _ = ready.send(unblocked);
    if failed {
        return slot;
    }

    let mut state = index as u64 + 1;
    // Relaxed: the flag only ends the loop; the join orders the rest.
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..10_000 {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
        }
        std::hint::black_box(state);
    }
    slot
}

/// The demo's counts, checks and outcome.
struct Report {
    worker_slots: Vec<Option<usize>>,
    counts_a: Vec<u64>,
    samples_b: Vec<u64>,
    declined: Vec<u64>,
    distinct_addresses: usize,
    a_reclaimed: bool,
    slot_dispatches: u64,
    unregistered_dispatches: u64,
    signal_stats: signal::SignalStats,
    handler_stats: nmi_rcu::HandlerStats,
    grace_periods: u64,
    callbacks_run: u64,
}

impl Report {
    fn total(counts: &[u64]) -> u64 {
        counts.iter().sum()
    }

    /// Returns the reasons the demo failed; empty on PASS.
    fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let ran_on_freed = FREE_CHECK.ran_on_freed.load(Ordering::Relaxed);
        if ran_on_freed > 0 {
            failures.push(format!("handler B ran {ran_on_freed} times on freed data"));
        }
        let running_at_free = FREE_CHECK.running_at_free.load(Ordering::Relaxed);
        if running_at_free > 0 {
            failures.push("handler B was still running after the grace period".to_owned());
        }
        let uninitialised = FREE_CHECK.uninitialised.load(Ordering::Relaxed);
        if uninitialised > 0 {
            failures.push(format!(
                "handler B saw its data uninitialised {uninitialised} times"
            ));
        }

        let (total_a, total_b) = (Self::total(&self.counts_a), Self::total(&self.samples_b));
        if total_a == 0 || total_b == 0 {
            failures.push(format!(
                "a handler took no samples (A: {total_a}, B: {total_b}): \
                 no SIGPROF reached the workers; try a longer --duration"
            ));
        }
        if !self.a_reclaimed {
            failures.push("handler A was not reclaimed after barrier()".to_owned());
        }
        let handled = total_a + total_b + Self::total(&self.declined);
        if handled != self.slot_dispatches {
            failures.push(format!(
                "the slot counted {} dispatches but its handlers counted {handled}",
                self.slot_dispatches
            ));
        }
        failures
    }

    fn passed(&self) -> bool {
        self.failures().is_empty()
    }

    /// Formats the per-thread table, the counts and the outcome line.
    fn to_text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = writeln!(
            text,
            "\n{:<10} {:>10} {:>10} {:>10} {:>11}",
            "thread", "handler A", "handler B", "declined", "dispatches"
        );
        for (row, slot) in self.worker_slots.iter().enumerate() {
            let dispatches = slot.map(|slot| SLOT.thread_dispatch_count(slot));
            self.write_row(&mut text, &format!("worker {row}"), row, dispatches);
        }
        self.write_row(
            &mut text,
            "other",
            OTHER_ROW,
            Some(self.unregistered_dispatches),
        );
        let _ = writeln!(
            text,
            "{:<10} {:>10} {:>10} {:>10} {:>11}\n",
            "total",
            Self::total(&self.counts_a),
            Self::total(&self.samples_b),
            Self::total(&self.declined),
            self.slot_dispatches
        );

        let _ = writeln!(
            text,
            "Handler B samples: {}, at {} distinct instruction addresses.",
            Self::total(&self.samples_b),
            self.distinct_addresses
        );
        let stats = &self.signal_stats;
        let _ = writeln!(
            text,
            "Signal layer, SIGPROF: {} delivered, {} handled, {} declined and passed to \
             the previous disposition (SIG_IGN), {} default actions.",
            stats.delivered, stats.handled, stats.chained, stats.default_actions
        );
        let handler = &self.handler_stats;
        let _ = writeln!(
            text,
            "Registered handler \"{}\": {} calls, {} handled, longest {:.1} us.",
            handler.name,
            handler.calls,
            handler.handled,
            handler.max_duration.as_secs_f64() * 1e6
        );
        let _ = writeln!(
            text,
            "Grace periods completed: {}; callbacks run: {}; handler A reclaimed: {}.",
            self.grace_periods,
            self.callbacks_run,
            if self.a_reclaimed { "yes" } else { "no" }
        );

        let failures = self.failures();
        for failure in &failures {
            let _ = writeln!(text, "FAILED: {failure}");
        }
        match failures.first() {
            None => {
                let _ = writeln!(
                    text,
                    "Outcome: PASS - no handler ran on freed data (A: {} samples, B: {}, \
                     declined after unset: {})",
                    Self::total(&self.counts_a),
                    Self::total(&self.samples_b),
                    Self::total(&self.declined)
                );
            }
            Some(first) => {
                let _ = writeln!(text, "Outcome: FAIL - {first}");
            }
        }
        text
    }

    fn write_row(&self, text: &mut String, label: &str, row: usize, dispatches: Option<u64>) {
        let dispatches = dispatches.map_or("-".to_owned(), |count| count.to_string());
        let _ = writeln!(
            text,
            "{label:<10} {:>10} {:>10} {:>10} {dispatches:>11}",
            self.counts_a[row], self.samples_b[row], self.declined[row]
        );
    }
}
