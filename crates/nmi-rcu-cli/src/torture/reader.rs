//! Readers: plain reader threads, and the signal handler that reads from
//! inside whatever the interrupted thread was doing.
//!
//! # Nesting
//!
//! Each reader thread owns a [`ReaderStats`] whose `section_depth` counts the
//! read-side sections open on that thread: the thread's own and those of
//! signal handlers running on top of it. The depth is raised before
//! `read_lock` and lowered after the guard is dropped, so a signal that lands
//! while the section is being entered or left also counts as nested. Plain
//! loads and stores are enough because a handler restores the depth it found
//! before it returns, so the interrupted code never observes a change.
//!
//! # Statistics from a handler
//!
//! The handler finds its thread's statistics through a `const`-initialised
//! thread-local holding a `&'static ReaderStats`. Such a thread-local has no
//! lazy initialisation and no destructor, so reading it is a plain load from
//! the thread's TLS block: no allocation, no lock. Signals that land on a
//! thread that is not a reader are counted in [`STRAY`].

use std::cell::Cell;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use super::object::{Observation, PIPE_BUCKETS};
use super::{Rng, CURRENT, STORM_SIGNAL, TIMER_SIGNAL};
use crate::os::{self, ThreadCpuTimer};

/// Checks per section for most thread reads.
const SHORT_HOLD_CHECKS: u32 = 4;

/// Checks per section for one thread read in 8.
const MEDIUM_HOLD_CHECKS: u32 = 256;

/// Checks per section for one thread read in 64: long enough for updates and
/// grace periods to happen while the object is held.
const LONG_HOLD_CHECKS: u32 = 16_384;

/// Checks per section in the signal handler.
const SIGNAL_HOLD_CHECKS: u32 = 64;

/// Counters of one reader thread and of the signal handlers that ran on it.
///
/// Every counter is a statistic, so all of them use `Relaxed`. The final
/// totals are read after the reader thread is joined, which orders them.
#[derive(Debug)]
#[repr(align(128))]
pub struct ReaderStats {
    /// Kernel thread id of the reader, or 0 before it starts and after it
    /// stops; the storm sends signals to it.
    pub thread_id: AtomicI32,
    /// Whether the thread registered with the library.
    pub registered: AtomicBool,
    /// Completed read-side sections of the thread itself.
    pub thread_reads: AtomicU64,
    /// Completed read-side sections in signal handlers.
    pub signal_reads: AtomicU64,
    /// Signal reads that interrupted an open read-side section.
    pub nested_reads: AtomicU64,
    /// Timer signals received.
    pub timer_signals: AtomicU64,
    /// Storm signals received.
    pub storm_signals: AtomicU64,
    /// Reads that found no published object.
    pub empty_reads: AtomicU64,
    /// Reads by the highest pipe age they saw.
    pub pipe: [AtomicU64; PIPE_BUCKETS],
    /// Reads that saw an age of 2 or more.
    pub age_errors: AtomicU64,
    /// Reads that saw a poisoned object.
    pub poison_errors: AtomicU64,
    /// Reads with any error; a read that saw both counts once.
    pub errors: AtomicU64,
    /// Open read-side sections on this thread; see the module notes.
    section_depth: AtomicU32,
}

/// Statistics of signal handlers that ran on a thread that is not a reader.
pub static STRAY: ReaderStats = ReaderStats::new();

thread_local! {
    /// The statistics of the reader running on this thread, if any.
    static THIS_READER: Cell<Option<&'static ReaderStats>> = const { Cell::new(None) };
}

impl ReaderStats {
    /// Creates zeroed statistics.
    pub const fn new() -> ReaderStats {
        ReaderStats {
            thread_id: AtomicI32::new(0),
            registered: AtomicBool::new(false),
            thread_reads: AtomicU64::new(0),
            signal_reads: AtomicU64::new(0),
            nested_reads: AtomicU64::new(0),
            timer_signals: AtomicU64::new(0),
            storm_signals: AtomicU64::new(0),
            empty_reads: AtomicU64::new(0),
            pipe: [const { AtomicU64::new(0) }; PIPE_BUCKETS],
            age_errors: AtomicU64::new(0),
            poison_errors: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            section_depth: AtomicU32::new(0),
        }
    }

    /// Adds one observation to the histogram and the error counts.
    ///
    /// # Async-signal safety
    ///
    /// Safe: atomic read-modify-writes only. They must be read-modify-writes
    /// because a handler may interrupt the thread between a load and a store.
    fn record(&self, observation: Observation) {
        self.pipe[observation.bucket()].fetch_add(1, Ordering::Relaxed);
        if observation.max_age >= super::object::FREE_AGE {
            self.age_errors.fetch_add(1, Ordering::Relaxed);
        }
        if observation.poisoned {
            self.poison_errors.fetch_add(1, Ordering::Relaxed);
        }
        if observation.is_error() {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Raises the section depth and returns the depth found.
    ///
    /// # Async-signal safety
    ///
    /// Safe: see the module notes on nesting.
    #[inline]
    fn enter_section(&self) -> u32 {
        // Relaxed: only this thread and its handlers touch the depth, and
        // each handler restores it. The compiler fence keeps the store before
        // the section's first access, as seen from a handler on this thread.
        let depth = self.section_depth.load(Ordering::Relaxed);
        self.section_depth
            .store(depth.wrapping_add(1), Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        depth
    }

    /// Restores the depth returned by [`ReaderStats::enter_section`].
    ///
    /// # Async-signal safety
    ///
    /// Safe: see the module notes on nesting.
    #[inline]
    fn leave_section(&self, depth: u32) {
        // The fence keeps the section's last access before the store, as
        // seen from a handler on this thread.
        compiler_fence(Ordering::SeqCst);
        self.section_depth.store(depth, Ordering::Relaxed);
    }
}

/// Settings of one reader thread.
#[derive(Debug, Clone, Copy)]
pub struct ReaderConfig {
    /// Whether the thread calls `nmi_rcu::register_thread`.
    pub register: bool,
    /// Frequency of the thread's CPU-time timer, or 0 for no timer.
    pub signal_hz: u32,
    /// Seed of the thread's random hold lengths.
    pub seed: u64,
}

/// Runs one reader thread until `stop` is set.
///
/// # Errors
///
/// The failing call when the alternate signal stack or the CPU-time timer
/// cannot be set up.
pub fn run_thread_reader(
    stats: &'static ReaderStats,
    config: ReaderConfig,
    stop: &AtomicBool,
) -> Result<(), os::OsError> {
    THIS_READER.set(Some(stats));
    // Timer and storm signals nest on this thread's alternate stack.
    os::ensure_signal_stack()?;
    if config.register {
        nmi_rcu::register_thread();
        stats.registered.store(true, Ordering::Relaxed);
    }
    // Release: pairs with the Acquire load in the storm, so a storm signal
    // that targets this id finds `THIS_READER` already set (it is set above
    // in program order on the thread that will run the handler).
    stats
        .thread_id
        .store(os::current_thread_id(), Ordering::Release);

    let timer = match config.signal_hz {
        0 => None,
        hz => Some(ThreadCpuTimer::start(
            TIMER_SIGNAL,
            Duration::from_secs(1) / hz,
        )?),
    };

    let mut rng = Rng::new(config.seed);
    // Relaxed: the flag only ends the loop; the join that follows orders
    // everything else.
    while !stop.load(Ordering::Relaxed) {
        let random = rng.next();
        let checks = match random % 64 {
            0 => LONG_HOLD_CHECKS,
            1..=8 => MEDIUM_HOLD_CHECKS,
            _ => SHORT_HOLD_CHECKS,
        };
        let nest = (random >> 8).is_multiple_of(8);
        if let Some(observation) = read_section(stats, checks, nest) {
            stats.record(observation);
            stats.thread_reads.fetch_add(1, Ordering::Relaxed);
        }
    }

    drop(timer);
    stats.thread_id.store(0, Ordering::Release);
    Ok(())
}

/// Runs one read-side section on the calling thread, checking the published
/// object `checks` times; with `nest`, opens a second section inside it
/// halfway through.
///
/// Returns `None` when no object was published.
///
/// # Async-signal safety
///
/// Safe: `read_lock`, `RcuOption::read`, atomic loads and stores only.
#[inline]
fn read_section(stats: &ReaderStats, checks: u32, nest: bool) -> Option<Observation> {
    let depth = stats.enter_section();
    let guard = nmi_rcu::read_lock();
    let mut observation = Observation::default();
    let found = match CURRENT.read(&guard) {
        None => false,
        Some(object) => {
            for check in 0..checks {
                observation.check(object.0);
                if nest && check == checks / 2 {
                    let inner = nmi_rcu::read_lock();
                    if let Some(inner_object) = CURRENT.read(&inner) {
                        observation.check(inner_object.0);
                    }
                }
                std::hint::spin_loop();
            }
            true
        }
    };
    drop(guard);
    stats.leave_section(depth);

    if found {
        Some(observation)
    } else {
        stats.empty_reads.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// The handler for the timer and storm signals: one read-side section that
/// checks the published object, counted on the interrupted thread's reader.
///
/// # Async-signal safety
///
/// Safe: it reads a `const` thread-local (see the module notes), enters
/// `NmiContext`, runs one read-side section and updates atomics. It does not
/// allocate, lock or print, and it restores `errno`.
pub extern "C" fn on_torture_signal(
    signal: libc::c_int,
    _info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    let saved_errno = os::errno();
    let _nmi = nmi_rcu::NmiContext::enter();
    let stats = THIS_READER.get().unwrap_or(&STRAY);

    match signal {
        TIMER_SIGNAL => stats.timer_signals.fetch_add(1, Ordering::Relaxed),
        STORM_SIGNAL => stats.storm_signals.fetch_add(1, Ordering::Relaxed),
        _ => 0,
    };
    // Peek at the depth the section will find, to classify the read.
    let nested = stats.section_depth.load(Ordering::Relaxed) > 0;

    if let Some(observation) = read_section(stats, SIGNAL_HOLD_CHECKS, false) {
        stats.record(observation);
        stats.signal_reads.fetch_add(1, Ordering::Relaxed);
        if nested {
            stats.nested_reads.fetch_add(1, Ordering::Relaxed);
        }
    }
    os::set_errno(saved_errno);
}
