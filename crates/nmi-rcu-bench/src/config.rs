//! The settings of a benchmark run: the figures it takes and their sample
//! counts and durations.

use std::time::Duration;

use serde::Serialize;

use crate::grace::CallPlan;
use crate::harness::SamplePlan;

/// The settings of one benchmark run. [`Config::full`] and
/// [`Config::quick`] are the two presets, and fields can be changed after.
///
/// The presets keep every sample (a timed batch of loop iterations, signal
/// deliveries or registration pairs) to a millisecond or two, shorter than
/// a scheduler time slice. On a machine shared with other processes most
/// samples then run without being preempted, and the median reflects them.
///
/// # Examples
///
/// ```
/// let mut config = nmi_rcu_bench::Config::quick();
/// config.threads = vec![1, 2];
/// assert!(config.quick);
/// ```
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Whether this is the quick preset (recorded in the report).
    pub quick: bool,
    /// Thread counts for the read-side loops.
    pub threads: Vec<usize>,
    /// Samples of the read-side loops.
    pub read_plan: SamplePlan,
    /// Timed `synchronize` calls per reader setting.
    pub synchronize_plan: CallPlan,
    /// Idle registered threads in the "many threads" setting.
    pub many_threads: usize,
    /// Updater counts for the aggregate `synchronize` rate.
    pub updaters: Vec<usize>,
    /// How long each updater count runs.
    pub rate_duration: Duration,
    /// Individually timed `call_rcu` calls.
    pub call_rcu_calls: usize,
    /// Duration of the sustained `call_rcu` load.
    pub call_rcu_load: Duration,
    /// Rounds of signal deliveries and of registration pairs.
    pub signal_samples: usize,
    /// Signal deliveries per contender and round.
    pub deliveries_per_sample: usize,
    /// Register + unregister pairs per contender and round.
    pub pairs_per_sample: usize,
}

impl Config {
    /// Returns the settings of the full run, which takes a few minutes on 2
    /// cores.
    pub fn full() -> Config {
        Config {
            quick: false,
            threads: default_threads(),
            read_plan: SamplePlan {
                warmup_samples: 5,
                samples: 200,
                sample_time: Duration::from_millis(2),
            },
            synchronize_plan: CallPlan {
                warmup: 50,
                min_calls: 5000,
                min_time: Duration::from_secs(2),
            },
            many_threads: 1000,
            updaters: vec![1, 2, 4, 8, 16],
            rate_duration: Duration::from_millis(1000),
            call_rcu_calls: 200_000,
            call_rcu_load: Duration::from_secs(2),
            signal_samples: 300,
            deliveries_per_sample: 200,
            pairs_per_sample: 100,
        }
    }

    /// Returns the settings of the quick run, which takes under a minute on
    /// 2 cores. It takes fewer and shorter samples, so its tails (p99) are
    /// rougher.
    pub fn quick() -> Config {
        Config {
            quick: true,
            threads: default_threads(),
            read_plan: SamplePlan {
                warmup_samples: 2,
                samples: 50,
                sample_time: Duration::from_millis(1),
            },
            synchronize_plan: CallPlan {
                warmup: 10,
                min_calls: 1000,
                min_time: Duration::from_millis(300),
            },
            many_threads: 1000,
            updaters: vec![1, 2, 4, 8, 16],
            rate_duration: Duration::from_millis(200),
            call_rcu_calls: 50_000,
            call_rcu_load: Duration::from_millis(500),
            signal_samples: 80,
            deliveries_per_sample: 200,
            pairs_per_sample: 50,
        }
    }
}

/// Returns 1 to the core count, then twice the core count.
///
/// # Examples
///
/// ```
/// let threads = nmi_rcu_bench::config::default_threads();
/// assert_eq!(threads[0], 1);
/// assert_eq!(*threads.last().unwrap(), 2 * (threads.len() - 1));
/// ```
pub fn default_threads() -> Vec<usize> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    (1..=cores).chain([2 * cores]).collect()
}
