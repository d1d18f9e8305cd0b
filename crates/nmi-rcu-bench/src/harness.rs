//! Timing loops: calibration, warm-up, and samples taken on real threads
//! that start each sample together.
//!
//! A sample is one timed run of a loop over many iterations, so the cost of
//! reading the clock is spread over the iterations. Each thread times its
//! own samples, and a barrier starts every sample on all threads at once,
//! so the threads really run side by side. From each sample come two
//! figures: the time per iteration on each thread, and the aggregate rate,
//! which is all the threads' iterations divided by the slowest thread's
//! time.

use std::sync::{Arc, Barrier};
use std::thread;
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
    /// Millions of iterations per second summed over the threads, one
    /// value per sample.
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
/// `iterations` per sample, following `plan`.
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
    assert!(threads > 0, "measure_threads needs at least one thread");
    let barrier = Arc::new(Barrier::new(threads));

    // Step 1: every thread prepares, warms up, then times its samples, each
    // sample starting at the barrier with all the other threads.
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let spec = Arc::clone(spec);
            let barrier = Arc::clone(&barrier);
            let plan = *plan;
            thread::spawn(move || run_samples(&spec, &barrier, iterations, &plan))
        })
        .collect();
    let per_thread: Vec<Vec<Duration>> = workers
        .into_iter()
        .map(|worker| worker.join().expect("a measuring thread panicked"))
        .collect();

    // Step 2: turn the times into per-iteration costs and aggregate rates.
    let mut ns_per_iteration: Vec<f64> = per_thread
        .iter()
        .flatten()
        .map(|elapsed| elapsed.as_nanos() as f64 / iterations as f64)
        .collect();
    let mut aggregate_mops: Vec<f64> = (0..plan.samples)
        .map(|sample| {
            let slowest = per_thread
                .iter()
                .map(|times| times[sample])
                .max()
                .unwrap_or_default();
            (threads as u64 * iterations) as f64 / slowest.as_secs_f64().max(1e-12) / 1e6
        })
        .collect();

    ThreadedMeasurement {
        threads,
        iterations_per_sample: iterations,
        ns_per_iteration: Summary::of(&mut ns_per_iteration),
        aggregate_mops: Summary::of(&mut aggregate_mops),
    }
}

/// The body of one measuring thread: returns the duration of each timed
/// sample.
fn run_samples(
    spec: &LoopSpec,
    barrier: &Barrier,
    iterations: u64,
    plan: &SamplePlan,
) -> Vec<Duration> {
    (spec.enter_thread)();
    for _ in 0..plan.warmup_samples {
        barrier.wait();
        std::hint::black_box((spec.run)(iterations));
    }

    let mut times = Vec::with_capacity(plan.samples);
    for _ in 0..plan.samples {
        barrier.wait();
        let start = Instant::now();
        std::hint::black_box((spec.run)(iterations));
        times.push(start.elapsed());
    }

    (spec.leave_thread)();
    times
}
