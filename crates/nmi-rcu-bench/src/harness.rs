//! Timing loops: calibration, warm-up, and samples taken on real threads
//! that start each sample together.
//!
//! A sample is one timed run of a loop over many iterations, so the cost of
//! reading the clock is spread over the iterations. Each thread times its
//! own samples, and a barrier releases every sample on all threads at once,
//! so the threads run side by side as far as there are cores. From each
//! sample come two figures: the time per iteration on each thread, and the
//! aggregate rate, which is all the threads' iterations divided by the
//! wall-clock time from the first thread's start to the last one's end.
//! In a pool of two or more threads, each thread is pinned to its own CPU,
//! wrapping around when there are more threads than CPUs. A single thread
//! stays unpinned, so the scheduler can move it off a CPU that other
//! processes keep busy. Several loops are measured in turns,
//! one sample each per round ([`measure_in_turns`]), so that their ratios
//! come from the same conditions.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::stats::Summary;

/// How many samples to take, and how long each should last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct SamplePlan {
    /// Untimed samples run before the timed ones on every thread.
    pub warmup_samples: usize,
    /// Timed samples per thread.
    pub samples: usize,
    /// Target duration of one sample on one thread.
    pub sample_time: Duration,
}

/// The figures of one loop measured on `threads` threads.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadedMeasurement {
    /// Number of threads that ran the loop at once.
    pub threads: usize,
    /// Loop iterations in one sample on one thread.
    pub iterations_per_sample: u64,
    /// Nanoseconds per iteration on one thread, over all threads' samples.
    pub ns_per_iteration: Summary,
    /// Millions of iterations per second of all threads together (see
    /// `summarize`), one value per sample.
    pub aggregate_mops: Summary,
}

/// Finds how many iterations of `run` last about `target` on the calling
/// thread, after a warm-up. Returns at least 1000.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// let iterations = nmi_rcu_bench::harness::calibrate(
///     &|n| nmi_rcu_bench::read_side::floor_loop(n),
///     Duration::from_micros(200),
/// );
/// assert!(iterations >= 1000);
/// ```
pub fn calibrate(run: &dyn Fn(u64) -> u64, target: Duration) -> u64 {
    let mut iterations = 1000u64;
    loop {
        let start = Instant::now();
        std::hint::black_box(run(iterations));
        let elapsed = start.elapsed();
        if elapsed >= target / 4 || iterations >= 1 << 40 {
            let per_iteration = elapsed.as_secs_f64() / iterations as f64;
            let fitted = target.as_secs_f64() / per_iteration.max(1e-12);
            return (fitted as u64).max(1000);
        }
        iterations *= 4;
    }
}

/// Calibrates `spec` on a thread of its own, so the thread set-up (such
/// as registration) applies while calibrating, as it does while measuring.
///
/// # Panics
///
/// Panics if the calibrating thread panics.
pub fn calibrate_spec(spec: &Arc<LoopSpec>, target: Duration) -> u64 {
    let spec = Arc::clone(spec);
    thread::spawn(move || {
        (spec.enter_thread)();
        let iterations = calibrate(&*spec.run, target);
        (spec.leave_thread)();
        iterations
    })
    .join()
    .expect("the calibrating thread panicked")
}

/// The hooks of one measured loop: per-thread set-up, the loop, and
/// per-thread tear-down. All three run on the measuring threads.
pub struct LoopSpec {
    /// Runs on each thread before its first sample, such as registering
    /// the thread as a reader.
    pub enter_thread: Box<dyn Fn() + Send + Sync>,
    /// Runs the loop for the given iterations and returns a checksum.
    pub run: Box<dyn Fn(u64) -> u64 + Send + Sync>,
    /// Runs on each thread after its last sample.
    pub leave_thread: Box<dyn Fn() + Send + Sync>,
}

/// Measures `spec` on `threads` threads running at once, each running
/// `iterations` per sample, following `plan`. See [`measure_in_turns`].
///
/// # Panics
///
/// Panics if `threads` is zero or a measuring thread panics.
///
/// # Examples
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use nmi_rcu_bench::harness::{measure_threads, LoopSpec, SamplePlan};
///
/// let spec = Arc::new(LoopSpec {
///     enter_thread: Box::new(|| {}),
///     run: Box::new(nmi_rcu_bench::read_side::floor_loop),
///     leave_thread: Box::new(|| {}),
/// });
/// let plan = SamplePlan { warmup_samples: 1, samples: 5, sample_time: Duration::from_micros(100) };
/// let result = measure_threads(&spec, 2, 10_000, &plan);
/// assert_eq!(result.ns_per_iteration.samples, 10);
/// assert_eq!(result.aggregate_mops.samples, 5);
/// ```
pub fn measure_threads(
    spec: &Arc<LoopSpec>,
    threads: usize,
    iterations: u64,
    plan: &SamplePlan,
) -> ThreadedMeasurement {
    let mut measurements = measure_in_turns(&[(Arc::clone(spec), iterations)], &[threads], plan);
    measurements.remove(0)
}

/// Measures several loops at several thread counts, taking their samples
/// in turns: one sample of every loop at every thread count, then the next
/// round. A change in the machine's speed during the run (another process,
/// frequency scaling) then shifts every figure alike, which keeps their
/// ratios honest, the scaling from 1 to 2 threads included.
///
/// Each pair of loop and thread count gets its own pool of threads, set up
/// once with `enter_thread`. A pool's threads wait on a barrier while the
/// other pools take their samples. `loops` pairs each spec with its
/// iterations per sample. Returns one measurement per pair, thread count
/// by thread count, and within one thread count in the order of `loops`.
///
/// # Panics
///
/// Panics if a thread count is zero or a measuring thread panics.
pub fn measure_in_turns(
    loops: &[(Arc<LoopSpec>, u64)],
    thread_counts: &[usize],
    plan: &SamplePlan,
) -> Vec<ThreadedMeasurement> {
    assert!(
        thread_counts.iter().all(|&threads| threads > 0),
        "measure_in_turns needs at least one thread per pool"
    );
    let pools: Vec<(Pool, usize, u64)> = thread_counts
        .iter()
        .flat_map(|&threads| {
            loops.iter().map(move |(spec, iterations)| {
                (
                    Pool::start(spec, threads, *iterations),
                    threads,
                    *iterations,
                )
            })
        })
        .collect();

    // Step 1: the rounds. Each pool runs one sample per round, alone.
    let mut samples: Vec<Vec<Vec<Span>>> = vec![Vec::with_capacity(plan.samples); pools.len()];
    for round in 0..plan.warmup_samples + plan.samples {
        for ((pool, _, _), pool_samples) in pools.iter().zip(&mut samples) {
            let sample = pool.run_sample();
            if round >= plan.warmup_samples {
                pool_samples.push(sample);
            }
        }
    }

    // Step 2: per-iteration costs and aggregate rates.
    let measurements = pools
        .iter()
        .zip(&samples)
        .map(|((_, threads, iterations), samples)| summarize(*threads, *iterations, samples))
        .collect();
    drop(pools);
    measurements
}

/// When one thread's sample started and ended, in nanoseconds since its
/// pool started.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: u64,
    end: u64,
}

/// Turns the spans of each sample into the figures.
///
/// The cost per iteration comes from each thread's own span. The aggregate
/// rate divides all the threads' iterations by the wall-clock time from
/// the first thread's start to the last thread's end. With more threads
/// than cores, threads that take turns on a core must not count as running
/// at once.
fn summarize(threads: usize, iterations: u64, samples: &[Vec<Span>]) -> ThreadedMeasurement {
    let mut ns_per_iteration: Vec<f64> = samples
        .iter()
        .flatten()
        .map(|span| span.end.saturating_sub(span.start) as f64 / iterations as f64)
        .collect();
    let mut aggregate_mops: Vec<f64> = samples
        .iter()
        .map(|sample| {
            let first_start = sample.iter().map(|span| span.start).min().unwrap_or(0);
            let last_end = sample.iter().map(|span| span.end).max().unwrap_or(0);
            let wall_ns = last_end.saturating_sub(first_start).max(1);
            (threads as u64 * iterations) as f64 / wall_ns as f64 * 1e3
        })
        .collect();
    ThreadedMeasurement {
        threads,
        iterations_per_sample: iterations,
        ns_per_iteration: Summary::of(&mut ns_per_iteration),
        aggregate_mops: Summary::of(&mut aggregate_mops),
    }
}

/// The threads that run one loop, parked on a barrier between samples.
struct Pool {
    /// Releases the threads into a sample (or, with `stop` set, out of
    /// their loop). The main thread is the last party.
    start: Arc<Barrier>,
    /// Tells the main thread that every thread has finished its sample.
    done: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    /// The last sample's span on each thread, as start and end nanoseconds
    /// since `Shared::epoch`.
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

/// The clock origin and the per-thread results of a [`Pool`].
struct Shared {
    epoch: Instant,
    starts: Vec<AtomicU64>,
    ends: Vec<AtomicU64>,
    /// Threads that have reached the start line, summed over all samples.
    arrived: AtomicU64,
}

impl Pool {
    fn start(spec: &Arc<LoopSpec>, threads: usize, iterations: u64) -> Pool {
        let start = Arc::new(Barrier::new(threads + 1));
        let done = Arc::new(Barrier::new(threads + 1));
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            epoch: Instant::now(),
            starts: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            ends: (0..threads).map(|_| AtomicU64::new(0)).collect(),
            arrived: AtomicU64::new(0),
        });
        let handles = (0..threads)
            .map(|index| {
                let worker = Worker {
                    spec: Arc::clone(spec),
                    start: Arc::clone(&start),
                    done: Arc::clone(&done),
                    stop: Arc::clone(&stop),
                    shared: Arc::clone(&shared),
                    index,
                    iterations,
                };
                thread::spawn(move || worker.run())
            })
            .collect();
        Pool {
            start,
            done,
            stop,
            shared,
            threads: handles,
        }
    }

    /// Runs one sample on every thread and returns their spans.
    fn run_sample(&self) -> Vec<Span> {
        self.start.wait();
        self.done.wait();
        // Relaxed: the `done` barrier (a mutex and condition variable
        // inside) orders the workers' stores before these loads.
        self.shared
            .starts
            .iter()
            .zip(&self.shared.ends)
            .map(|(start, end)| Span {
                start: start.load(Ordering::Relaxed),
                end: end.load(Ordering::Relaxed),
            })
            .collect()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Relaxed: the `start` barrier below orders this store before the
        // workers' loads.
        self.stop.store(true, Ordering::Relaxed);
        self.start.wait();
        for handle in self.threads.drain(..) {
            if handle.join().is_err() && !thread::panicking() {
                panic!("a measuring thread panicked");
            }
        }
    }
}

/// One measuring thread of a [`Pool`].
struct Worker {
    spec: Arc<LoopSpec>,
    start: Arc<Barrier>,
    done: Arc<Barrier>,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
    index: usize,
    iterations: u64,
}

impl Worker {
    fn run(self) {
        if self.shared.starts.len() > 1 {
            pin_to_cpu(self.index);
        }
        (self.spec.enter_thread)();
        let threads = self.shared.starts.len() as u64;
        let mut samples = 0u64;
        loop {
            self.start.wait();
            // Relaxed: ordered by the `start` barrier (see `Pool::drop`).
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
            samples += 1;
            self.wait_for_pool(threads * samples);

            let start = self.shared.epoch.elapsed();
            std::hint::black_box((self.spec.run)(self.iterations));
            let end = self.shared.epoch.elapsed();
            // Relaxed: ordered by the `done` barrier (see `Pool::run_sample`).
            self.shared.starts[self.index].store(start.as_nanos() as u64, Ordering::Relaxed);
            self.shared.ends[self.index].store(end.as_nanos() as u64, Ordering::Relaxed);
            self.done.wait();
        }
        (self.spec.leave_thread)();
    }

    /// Spins until every thread of the pool has woken up for this sample,
    /// so the timed loops overlap. A woken thread may wait for a core for
    /// a millisecond or more on a busy machine. Without this start line, a
    /// sample that short could run on one thread after the other and never
    /// measure the threads side by side.
    fn wait_for_pool(&self, target: u64) {
        // Relaxed: the counter only releases a spin. It hands over no data,
        // and the barriers order everything else.
        self.shared.arrived.fetch_add(1, Ordering::Relaxed);
        let mut spins = 0u32;
        // Relaxed: see above.
        while self.shared.arrived.load(Ordering::Relaxed) < target {
            spins += 1;
            if spins == 64 {
                // Lets a pool thread that waits for this core get on it.
                spins = 0;
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// Pins the calling thread to the `index`-th CPU that the process may run
/// on, wrapping around, so the threads of a pool spread over the cores
/// instead of sharing one until the scheduler balances them. A failure
/// leaves the thread unpinned, which only costs accuracy.
pub(crate) fn pin_to_cpu(index: usize) {
    // SAFETY: an all-zero `cpu_set_t` is the empty set.
    let mut allowed: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `allowed` is a valid `cpu_set_t` of the size passed, and pid
    // 0 means the calling thread.
    let queried =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut allowed) };
    if queried != 0 {
        return;
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` is below CPU_SETSIZE, the capacity of the set.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &allowed) })
        .collect();
    if cpus.is_empty() {
        return;
    }

    // SAFETY: as above, an all-zero `cpu_set_t` is the empty set.
    let mut target: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the CPU number comes from the queried set, so it is below
    // CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpus[index % cpus.len()], &mut target) };
    // SAFETY: `target` is a valid `cpu_set_t` of the size passed; pid 0 is
    // the calling thread. The result is ignored on purpose (see above).
    let _ = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &target) };
}
