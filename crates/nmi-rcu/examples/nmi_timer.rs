//! A sampling profiler on real signals: the user-space form of the kernel's
//! NMI-timer example.
//!
//! Worker threads burn CPU while a process CPU-time timer (`ITIMER_PROF`)
//! delivers `SIGPROF`. The signal layer dispatches every `SIGPROF` through
//! a `HandlerSlot`:
//!
//! 1. handler A counts samples per worker;
//! 2. handler B replaces it; B records every sample into a buffer that was
//!    allocated before B was published;
//! 3. B is unset, a grace period passes, and only then is B's buffer freed,
//!    because no `SIGPROF` handler can still be writing to it.
//!
//! Run it with `cargo run -p nmi-rcu --example nmi_timer`.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use nmi_rcu::signal::{self, Signal, SignalContext};
use nmi_rcu::{HandlerSlot, Outcome};

const WORKERS: usize = 2;
const PHASE: Duration = Duration::from_millis(400);
const TIMER_INTERVAL_MICROS: libc::suseconds_t = 1_000;

/// The profiler's handler slot, the `nmi_callback` of this program.
static PROFILER: HandlerSlot<SignalContext> = HandlerSlot::new();

/// Kernel thread ids of the workers, so a handler can map the interrupted
/// thread to a worker index without allocating.
static WORKER_TIDS: [AtomicI32; WORKERS] = [const { AtomicI32::new(0) }; WORKERS];

/// Handler A's per-worker sample counts.
static A_SAMPLES: [AtomicU64; WORKERS] = [const { AtomicU64::new(0) }; WORKERS];

/// Samples that no profiler handler claimed.
static UNCLAIMED: AtomicU64 = AtomicU64::new(0);

static STOP: AtomicBool = AtomicBool::new(false);

/// Returns the index of the worker with kernel thread id `tid`.
///
/// # Async-signal safety
///
/// Safe: atomic loads only.
fn worker_index(tid: i32) -> Option<usize> {
    WORKER_TIDS
        .iter()
        .position(|worker| worker.load(Ordering::Relaxed) == tid)
}

/// Handler B's data: a sample buffer allocated before B is published.
struct SampleBuffer {
    /// Each entry is the worker index plus one; 0 marks an unused entry.
    samples: Box<[AtomicU64]>,
    next: AtomicUsize,
    dropped: AtomicU64,
}

impl SampleBuffer {
    fn with_capacity(capacity: usize) -> Self {
        SampleBuffer {
            samples: (0..capacity).map(|_| AtomicU64::new(0)).collect(),
            next: AtomicUsize::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Records one sample for worker `index`.
    ///
    /// # Async-signal safety
    ///
    /// Safe: atomic operations on memory allocated beforehand.
    fn record(&self, index: usize) {
        let position = self.next.fetch_add(1, Ordering::Relaxed);
        match self.samples.get(position) {
            Some(entry) => entry.store(index as u64 + 1, Ordering::Relaxed),
            None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn per_worker(&self) -> [u64; WORKERS] {
        let mut counts = [0; WORKERS];
        for entry in self.samples.iter() {
            if let Some(index) = (entry.load(Ordering::Relaxed) as usize).checked_sub(1) {
                counts[index] += 1;
            }
        }
        counts
    }
}

impl Drop for SampleBuffer {
    fn drop(&mut self) {
        println!("B's sample buffer ({} entries) freed", self.samples.len());
    }
}

fn gettid() -> i32 {
    // SAFETY: `gettid` has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Arms (or, with a zero interval, disarms) the process CPU-time timer.
fn set_profiling_timer(interval_micros: libc::suseconds_t) {
    let interval = libc::timeval {
        tv_sec: 0,
        tv_usec: interval_micros,
    };
    let timer = libc::itimerval {
        it_interval: interval,
        it_value: interval,
    };
    // SAFETY: `timer` is a valid `itimerval`, and a null old value is
    // allowed.
    let rc = unsafe { libc::setitimer(libc::ITIMER_PROF, &timer, std::ptr::null_mut()) };
    assert_eq!(
        rc,
        0,
        "setitimer failed: {}",
        std::io::Error::last_os_error()
    );
}

fn spawn_worker(index: usize) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        nmi_rcu::register_thread();
        WORKER_TIDS[index].store(gettid(), Ordering::Relaxed);
        let mut state = index as u64 + 1;
        while !STOP.load(Ordering::Relaxed) {
            for _ in 0..10_000 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
            }
        }
        state
    })
}

fn main() -> Result<(), signal::Error> {
    let sigprof = Signal::new(libc::SIGPROF)?;
    // The profiler claims every SIGPROF: a sample that the current handler
    // declines (another thread, or no handler set) is counted here instead
    // of reaching SIGPROF's default action, which terminates the process.
    let registration = signal::register(sigprof, "profiler", |context| {
        PROFILER.dispatch_or(context, |_| {
            UNCLAIMED.fetch_add(1, Ordering::Relaxed);
        });
        Outcome::Handled
    })?;

    let workers: Vec<_> = (0..WORKERS).map(spawn_worker).collect();
    set_profiling_timer(TIMER_INTERVAL_MICROS);

    // Phase A: count samples per worker.
    PROFILER
        .set(
            |context: &SignalContext| match worker_index(context.thread_id()) {
                Some(index) => {
                    A_SAMPLES[index].fetch_add(1, Ordering::Relaxed);
                    Outcome::Handled
                }
                None => Outcome::NotHandled,
            },
        )
        .defer();
    std::thread::sleep(PHASE);

    // Phase B: allocate B's buffer first, then publish B.
    let buffer = Arc::new(SampleBuffer::with_capacity(64 * 1024));
    let recorder = Arc::clone(&buffer);
    let handler_a =
        PROFILER.set(
            move |context: &SignalContext| match worker_index(context.thread_id()) {
                Some(index) => {
                    recorder.record(index);
                    Outcome::Handled
                }
                None => Outcome::NotHandled,
            },
        );
    // A may still be running on a worker; wait for a grace period before
    // dropping it.
    drop(handler_a.synchronize());
    std::thread::sleep(PHASE);

    // Unset B, wait for a grace period, and only then free its buffer.
    let handler_b = PROFILER.unset().synchronize();
    let b_counts = buffer.per_worker();
    let b_dropped = buffer.dropped.load(Ordering::Relaxed);
    drop(handler_b);
    drop(buffer);

    set_profiling_timer(0);
    STOP.store(true, Ordering::Relaxed);
    for worker in workers {
        std::hint::black_box(worker.join().expect("worker thread panicked"));
    }

    for index in 0..WORKERS {
        println!(
            "worker {index}: {} samples under A, {} under B",
            A_SAMPLES[index].load(Ordering::Relaxed),
            b_counts[index]
        );
    }
    let stats = signal::stats(sigprof);
    println!(
        "SIGPROF: {} delivered, {} dispatched through the slot, {} unclaimed \
         (no handler set, or not a worker), {} beyond B's buffer",
        stats.delivered,
        PROFILER.dispatch_count(),
        UNCLAIMED.load(Ordering::Relaxed),
        b_dropped
    );
    registration.unregister()?;
    Ok(())
}
