//! Percentiles and summaries of measured samples.

use serde::Serialize;

/// The distribution of a set of samples, in the unit of the samples.
///
/// Percentiles use the nearest-rank method on the sorted samples, so every
/// reported value is one that was measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Number of samples.
    pub samples: usize,
    /// Smallest sample.
    pub min: f64,
    /// Median (50th percentile).
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

impl Summary {
    /// Summarizes `samples`, which this sorts in place. An empty slice
    /// gives a summary of zeros with `samples == 0`.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut samples = vec![3.0, 1.0, 2.0, 100.0];
    /// let summary = nmi_rcu_bench::stats::Summary::of(&mut samples);
    /// assert_eq!(summary.p50, 2.0);
    /// assert_eq!(summary.max, 100.0);
    /// ```
    pub fn of(samples: &mut [f64]) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_by(f64::total_cmp);
        Summary {
            samples: samples.len(),
            min: samples[0],
            p50: percentile(samples, 50.0),
            p90: percentile(samples, 90.0),
            p99: percentile(samples, 99.0),
            max: samples[samples.len() - 1],
            mean: samples.iter().sum::<f64>() / samples.len() as f64,
        }
    }
}

/// Returns the nearest-rank `percent`-th percentile of `sorted`, which
/// must be sorted in ascending order and not empty.
///
/// # Panics
///
/// Panics if `sorted` is empty.
///
/// # Examples
///
/// ```
/// let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
/// assert_eq!(nmi_rcu_bench::stats::percentile(&sorted, 99.0), 99.0);
/// assert_eq!(nmi_rcu_bench::stats::percentile(&sorted, 100.0), 100.0);
/// ```
pub fn percentile(sorted: &[f64], percent: f64) -> f64 {
    assert!(!sorted.is_empty(), "percentile of an empty sample set");
    let rank = (percent / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let sorted = [10.0, 20.0, 30.0, 40.0];
        assert_eq!(percentile(&sorted, 0.0), 10.0);
        assert_eq!(percentile(&sorted, 50.0), 20.0);
        assert_eq!(percentile(&sorted, 51.0), 30.0);
        assert_eq!(percentile(&sorted, 99.0), 40.0);
    }

    #[test]
    fn summary_of_unsorted_samples() {
        let mut samples = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        let summary = Summary::of(&mut samples);
        assert_eq!(summary.samples, 5);
        assert_eq!(summary.min, 1.0);
        assert_eq!(summary.p50, 3.0);
        assert_eq!(summary.max, 5.0);
        assert_eq!(summary.mean, 3.0);
    }

    #[test]
    fn summary_of_nothing_is_zero() {
        assert_eq!(Summary::of(&mut []), Summary::default());
    }
}
