//! Update-side figures: `synchronize` latency with idle, busy and many
//! readers, the aggregate rate of concurrent `synchronize` callers, and the
//! caller's cost and the backlog of `call_rcu`.
//!
//! The same settings run against nmi-rcu and against liburcu-memb's
//! `synchronize_rcu`, so their ratio comes from one run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::harness::pin_to_cpu;
use crate::read_side::nmi_rcu_loop;
use crate::stats::Summary;
use crate::urcu::{Flavor, Unavailable, Urcu};

/// Read-side sections a busy reader runs between checks of its stop flag.
const BUSY_CHUNK: u64 = 1000;

/// Stack size of idle reader threads. They only register and wait, and a
/// small stack lets a thousand of them start quickly.
const IDLE_STACK_SIZE: usize = 128 * 1024;

/// The library whose update side is measured.
#[derive(Clone, Copy, Debug)]
pub enum GraceLibrary {
    /// nmi-rcu's global domain.
    NmiRcu,
    /// liburcu-memb through the C shim.
    Liburcu(Urcu),
}

impl GraceLibrary {
    /// Returns liburcu-memb, or the reason it is not linked in.
    pub fn liburcu_memb() -> Result<GraceLibrary, Unavailable> {
        Urcu::new(Flavor::Memb).map(GraceLibrary::Liburcu)
    }

    /// Returns the library's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            GraceLibrary::NmiRcu => "nmi-rcu",
            GraceLibrary::Liburcu(urcu) => urcu.flavor().name(),
        }
    }

    fn register_thread(self) {
        match self {
            GraceLibrary::NmiRcu => nmi_rcu::register_thread(),
            GraceLibrary::Liburcu(urcu) => urcu.register_thread(),
        }
    }

    fn unregister_thread(self) {
        match self {
            // An nmi-rcu thread leaves the registry when it exits.
            GraceLibrary::NmiRcu => {}
            GraceLibrary::Liburcu(urcu) => urcu.unregister_thread(),
        }
    }

    fn synchronize(self) {
        match self {
            GraceLibrary::NmiRcu => nmi_rcu::synchronize(),
            GraceLibrary::Liburcu(urcu) => urcu.synchronize(),
        }
    }

    fn read_chunk(self) -> u64 {
        match self {
            GraceLibrary::NmiRcu => nmi_rcu_loop(BUSY_CHUNK),
            GraceLibrary::Liburcu(urcu) => urcu.read_loop(BUSY_CHUNK),
        }
    }
}

/// The registered reader threads present while `synchronize` is timed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ReaderSetting {
    /// Registered threads that wait on a barrier, outside any section.
    Idle(usize),
    /// Registered threads that run read-side sections back to back.
    Busy(usize),
}

impl ReaderSetting {
    /// Returns the setting's label in tables.
    pub fn label(self) -> String {
        match self {
            ReaderSetting::Idle(1) => "1 idle registered thread".to_owned(),
            ReaderSetting::Idle(n) => format!("{n} idle registered threads"),
            ReaderSetting::Busy(n) => format!("{n} busy readers"),
        }
    }
}

/// Reader threads running in some [`ReaderSetting`] until dropped.
struct Readers {
    stop: Arc<AtomicBool>,
    release: Arc<Barrier>,
    threads: Vec<JoinHandle<()>>,
}

impl Readers {
    /// Starts the readers and returns once all of them have registered.
    fn start(library: GraceLibrary, setting: ReaderSetting) -> Readers {
        let count = match setting {
            ReaderSetting::Idle(n) | ReaderSetting::Busy(n) => n,
        };
        let busy = matches!(setting, ReaderSetting::Busy(_));
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(Barrier::new(count + 1));
        let release = Arc::new(Barrier::new(count + 1));

        let threads = (0..count)
            .map(|index| {
                let (stop, ready, release) =
                    (Arc::clone(&stop), Arc::clone(&ready), Arc::clone(&release));
                thread::Builder::new()
                    .stack_size(IDLE_STACK_SIZE)
                    .spawn(move || reader_thread(library, busy, index, &stop, &ready, &release))
                    .expect("failed to spawn a reader thread")
            })
            .collect();
        ready.wait();
        Readers {
            stop,
            release,
            threads,
        }
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        // Relaxed: the flag only asks busy readers to leave their loop. It
        // hands over no data, and `join` below orders everything after.
        self.stop.store(true, Ordering::Relaxed);
        self.release.wait();
        for thread in self.threads.drain(..) {
            thread.join().expect("a reader thread panicked");
        }
    }
}

/// Runs one reader thread: registers, waits for the start, runs sections
/// if busy, waits for the release, unregisters. Busy readers are pinned to
/// CPU `index` (modulo the CPU count), so two busy readers occupy two
/// cores.
fn reader_thread(
    library: GraceLibrary,
    busy: bool,
    index: usize,
    stop: &AtomicBool,
    ready: &Barrier,
    release: &Barrier,
) {
    if busy {
        pin_to_cpu(index);
    }
    library.register_thread();
    ready.wait();
    if busy {
        // Relaxed: see `Readers::drop`; a late stop costs one more chunk.
        while !stop.load(Ordering::Relaxed) {
            std::hint::black_box(library.read_chunk());
        }
    }
    release.wait();
    library.unregister_thread();
}

/// How many `synchronize` calls to time in one setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct CallPlan {
    /// Untimed calls before the timed ones.
    pub warmup: usize,
    /// Timed calls, at least.
    pub min_calls: usize,
    /// Time spent in timed calls, at least. Back-to-back calls that last
    /// about a microsecond would otherwise all fit in one scheduler time
    /// slice, and the tail would never show preemption.
    pub min_time: Duration,
}

/// Times `synchronize` calls, back to back, with the readers of `setting`
/// running, following `plan`, and returns the latencies in nanoseconds.
pub fn synchronize_latency(
    library: GraceLibrary,
    setting: ReaderSetting,
    plan: &CallPlan,
) -> Summary {
    let readers = Readers::start(library, setting);
    for _ in 0..plan.warmup {
        library.synchronize();
    }

    let mut latencies = Vec::with_capacity(plan.min_calls);
    let started = Instant::now();
    while latencies.len() < plan.min_calls || started.elapsed() < plan.min_time {
        let start = Instant::now();
        library.synchronize();
        latencies.push(start.elapsed().as_nanos() as f64);
    }
    drop(readers);
    Summary::of(&mut latencies)
}

/// The aggregate rate of concurrent `synchronize` callers.
#[derive(Clone, Debug, Serialize)]
pub struct SynchronizeRate {
    /// Library measured.
    pub library: &'static str,
    /// Threads calling `synchronize` in a loop at once.
    pub updaters: usize,
    /// Completed `synchronize` calls per second, summed over the updaters.
    pub calls_per_second: f64,
    /// Grace periods the domain completed per second, where the library
    /// reports it (nmi-rcu's `Stats::grace_periods`).
    pub grace_periods_per_second: Option<f64>,
}

/// Runs `updaters` threads that call `synchronize` back to back for
/// `duration`, with one idle registered reader, and returns their rate.
pub fn synchronize_rate(
    library: GraceLibrary,
    updaters: usize,
    duration: Duration,
) -> SynchronizeRate {
    let readers = Readers::start(library, ReaderSetting::Idle(1));
    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let start_line = Arc::new(Barrier::new(updaters + 1));
    let grace_periods_before = nmi_rcu::Domain::global().stats().grace_periods;

    let threads: Vec<_> = (0..updaters)
        .map(|_| {
            let (stop, completed, start_line) = (
                Arc::clone(&stop),
                Arc::clone(&completed),
                Arc::clone(&start_line),
            );
            thread::spawn(move || {
                start_line.wait();
                let mut calls = 0u64;
                // Relaxed: a stop flag only; `join` orders the results.
                while !stop.load(Ordering::Relaxed) {
                    library.synchronize();
                    calls += 1;
                }
                // Relaxed: the total is read after `join`.
                completed.fetch_add(calls, Ordering::Relaxed);
            })
        })
        .collect();

    start_line.wait();
    let start = Instant::now();
    thread::sleep(duration);
    // Relaxed: a stop flag only.
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().expect("an updater thread panicked");
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(readers);

    let grace_periods = nmi_rcu::Domain::global().stats().grace_periods - grace_periods_before;
    SynchronizeRate {
        library: library.name(),
        updaters,
        // Relaxed: every updater has been joined, which orders its add.
        calls_per_second: completed.load(Ordering::Relaxed) as f64 / elapsed,
        grace_periods_per_second: matches!(library, GraceLibrary::NmiRcu)
            .then(|| grace_periods as f64 / elapsed),
    }
}

/// The caller's cost of `call_rcu` and the backlog under a sustained load.
#[derive(Clone, Debug, Serialize)]
pub struct CallRcuFigures {
    /// Latency of one `call_rcu` call on the caller, in nanoseconds,
    /// including one clock read pair.
    pub caller_ns: Summary,
    /// Cost of the clock read pair alone, in nanoseconds, measured in the
    /// same way; subtract its median to estimate the call alone.
    pub clock_ns: Summary,
    /// Duration of the sustained load, in seconds.
    pub load_seconds: f64,
    /// Callbacks queued during the sustained load, per second.
    pub queued_per_second: f64,
    /// The domain's peak backlog (`Stats::peak_backlog`) after the load.
    pub peak_backlog: u64,
    /// Grace periods the domain completed during the load.
    pub grace_periods: u64,
    /// Time `barrier` took to run the remaining callbacks, in milliseconds.
    pub drain_ms: f64,
}

/// An object of the size a small handler record might have, freed by each
/// callback.
type Retiree = Box<[u64; 4]>;

/// Measures `call_rcu` on a fresh domain: first `calls` individually timed
/// calls, then one thread queuing callbacks back to back for `load` while
/// one registered reader runs sections.
pub fn call_rcu_figures(calls: usize, load: Duration) -> CallRcuFigures {
    let domain = nmi_rcu::Domain::new();

    // Step 1: the caller's latency, one call at a time, and the clock's own
    // cost measured the same way.
    let mut caller_ns: Vec<f64> = (0..calls)
        .map(|i| {
            let retiree: Retiree = Box::new([i as u64; 4]);
            let start = Instant::now();
            domain.call_rcu(move || drop(retiree));
            start.elapsed().as_nanos() as f64
        })
        .collect();
    let mut clock_ns: Vec<f64> = (0..calls)
        .map(|_| {
            let start = Instant::now();
            start.elapsed().as_nanos() as f64
        })
        .collect();
    domain.barrier();

    // Step 2: a sustained load next to a busy reader.
    let readers = Readers::start(GraceLibrary::NmiRcu, ReaderSetting::Busy(1));
    let before = domain.stats();
    let start = Instant::now();
    let mut queued = 0u64;
    while start.elapsed() < load {
        for i in 0..256u64 {
            let retiree: Retiree = Box::new([i; 4]);
            domain.call_rcu(move || drop(retiree));
        }
        queued += 256;
    }
    let load_seconds = start.elapsed().as_secs_f64();
    let drain_start = Instant::now();
    domain.barrier();
    let drain_ms = drain_start.elapsed().as_secs_f64() * 1e3;
    drop(readers);
    let after = domain.stats();

    CallRcuFigures {
        caller_ns: Summary::of(&mut caller_ns),
        clock_ns: Summary::of(&mut clock_ns),
        load_seconds,
        queued_per_second: queued as f64 / load_seconds,
        peak_backlog: after.peak_backlog,
        grace_periods: after.grace_periods - before.grace_periods,
        drain_ms,
    }
}
