//! The torture run's summary, verdict, text and JSON output, and the live
//! progress line.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::object::{PoolCounts, PIPE_BUCKETS};
use super::reader::{ReaderStats, STRAY};
use super::updater::UpdaterStats;
use super::{RunState, Settings};

/// Totals of one run and the reasons it failed, if any.
#[derive(Debug, Clone)]
pub struct Summary {
    settings: Settings,
    elapsed: Duration,
    registered_readers: usize,
    thread_reads: u64,
    signal_reads: u64,
    nested_reads: u64,
    timer_signals: u64,
    storm_signals: u64,
    storm_sent: u64,
    storm_failed: u64,
    empty_reads: u64,
    pipe: [u64; PIPE_BUCKETS],
    age_errors: u64,
    poison_errors: u64,
    errors: u64,
    updates: u64,
    sync_updates: u64,
    call_rcu_updates: u64,
    poll_updates: u64,
    premature_frees: u64,
    torture_callbacks_queued: u64,
    torture_callbacks_done: u64,
    barriers: u64,
    grace_periods: u64,
    callbacks_run: u64,
    peak_backlog: u64,
    objects: PoolCounts,
    failures: Vec<String>,
}

fn load(counter: &AtomicU64) -> u64 {
    // Relaxed: read after every writer thread has been joined.
    counter.load(Ordering::Relaxed)
}

fn sum(readers: &[ReaderStats], field: impl Fn(&ReaderStats) -> &AtomicU64) -> u64 {
    readers
        .iter()
        .chain(std::iter::once(&STRAY))
        .map(|stats| load(field(stats)))
        .sum()
}

impl Summary {
    /// Adds up the counters of a finished run and decides its verdict.
    /// `domain_before` and `domain_after` are the global domain's statistics
    /// at the start and at the end.
    pub fn collect(
        settings: Settings,
        elapsed: Duration,
        state: &RunState,
        domain_before: nmi_rcu::Stats,
        domain_after: nmi_rcu::Stats,
    ) -> Summary {
        let readers = &state.readers;
        let updater = &state.updater;
        let storm = &state.storm;
        let mut pipe = [0; PIPE_BUCKETS];
        for (age, count) in pipe.iter_mut().enumerate() {
            *count = sum(readers, |stats| &stats.pipe[age]);
        }
        let mut summary = Summary {
            settings,
            elapsed,
            registered_readers: readers
                .iter()
                .filter(|stats| stats.registered.load(Ordering::Relaxed))
                .count(),
            thread_reads: sum(readers, |stats| &stats.thread_reads),
            signal_reads: sum(readers, |stats| &stats.signal_reads),
            nested_reads: sum(readers, |stats| &stats.nested_reads),
            timer_signals: sum(readers, |stats| &stats.timer_signals),
            storm_signals: sum(readers, |stats| &stats.storm_signals),
            storm_sent: load(&storm.sent),
            storm_failed: load(&storm.failed),
            empty_reads: sum(readers, |stats| &stats.empty_reads),
            pipe,
            age_errors: sum(readers, |stats| &stats.age_errors),
            poison_errors: sum(readers, |stats| &stats.poison_errors),
            errors: sum(readers, |stats| &stats.errors),
            updates: load(&updater.updates),
            sync_updates: load(&updater.sync_updates),
            call_rcu_updates: load(&updater.call_rcu_updates),
            poll_updates: load(&updater.poll_updates),
            premature_frees: load(&updater.premature_frees),
            torture_callbacks_queued: load(&updater.callbacks_queued),
            torture_callbacks_done: load(&updater.callbacks_done),
            barriers: load(&updater.barriers),
            grace_periods: domain_after
                .grace_periods
                .saturating_sub(domain_before.grace_periods),
            callbacks_run: domain_after
                .callbacks_run
                .saturating_sub(domain_before.callbacks_run),
            peak_backlog: domain_after.peak_backlog,
            objects: state.pool.counts(),
            failures: Vec::new(),
        };
        summary.failures = summary.find_failures();
        summary
    }

    /// Returns all reads: thread reads plus signal reads.
    pub fn reads(&self) -> u64 {
        self.thread_reads + self.signal_reads
    }

    /// Returns whether the run passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    fn find_failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        if self.errors > 0 {
            failures.push(format!(
                "{} reads saw an object after it was freed: {} at pipe age 2 or more, \
                 {} poisoned",
                self.errors, self.age_errors, self.poison_errors
            ));
        }
        if self.thread_reads == 0 {
            failures.push("no thread read completed".to_owned());
        }
        if self.settings.signal_hz > 0 && self.signal_reads == 0 {
            failures.push(
                "no signal read completed: no timer or storm signal reached a reader".to_owned(),
            );
        }
        if self.updates == 0 {
            failures.push("no update completed".to_owned());
        }
        if self.empty_reads > 0 {
            failures.push(format!(
                "{} reads found no published object",
                self.empty_reads
            ));
        }
        if self.objects.freed != self.updates {
            failures.push(format!(
                "{} objects were retired but {} were freed after the final barrier",
                self.updates, self.objects.freed
            ));
        }
        if self.torture_callbacks_done != self.torture_callbacks_queued {
            failures.push(format!(
                "{} callbacks were queued but {} ran before barrier() returned",
                self.torture_callbacks_queued, self.torture_callbacks_done
            ));
        }
        failures
    }

    fn verdict(&self) -> &'static str {
        if self.passed() {
            "SUCCESS"
        } else {
            "FAILURE"
        }
    }

    /// Formats the summary for a person, ending with the verdict line.
    pub fn to_text(&self) -> String {
        let settings = &self.settings;
        let mut text = String::new();
        // Writing to a String cannot fail.
        let signals = match settings.signal_hz {
            0 => "no signals".to_owned(),
            hz => format!("signals at {hz} Hz per reader and source"),
        };
        let _ = writeln!(
            text,
            "nmi-rcu torture: {:.1} s, {} reader{} ({} registered), {signals}, update mode {}{}",
            self.elapsed.as_secs_f64(),
            settings.readers,
            if settings.readers == 1 { "" } else { "s" },
            self.registered_readers,
            settings.update_mode.name(),
            if settings.broken { ", BROKEN" } else { "" },
        );

        let _ = writeln!(
            text,
            "Reads:          {} (thread {}, signal {}, nested {})",
            self.reads(),
            self.thread_reads,
            self.signal_reads,
            self.nested_reads
        );
        let _ = writeln!(
            text,
            "Signals:        timer {}, storm {} received of {} sent",
            self.timer_signals, self.storm_signals, self.storm_sent
        );

        let _ = writeln!(
            text,
            "Updates:        {} (sync {}, call-rcu {}, poll {})",
            self.updates, self.sync_updates, self.call_rcu_updates, self.poll_updates
        );
        let _ = writeln!(
            text,
            "Grace periods:  {}    Callbacks run: {}    Barriers: {}    Peak backlog: {}",
            self.grace_periods, self.callbacks_run, self.barriers, self.peak_backlog
        );
        let _ = writeln!(
            text,
            "Objects:        {} created, {} allocated, {} freed ({} too early)",
            self.objects.created, self.objects.allocated, self.objects.freed, self.premature_frees
        );

        let _ = writeln!(text, "Pipe ages:      {}", self.pipe_text());
        let _ = writeln!(
            text,
            "Errors:         {} (age 2 or more: {}, poisoned: {})",
            self.errors, self.age_errors, self.poison_errors
        );

        for failure in &self.failures {
            let _ = writeln!(text, "FAILED: {failure}");
        }
        let _ = writeln!(text, "End of test: {}", self.verdict());
        text
    }

    fn pipe_text(&self) -> String {
        self.pipe
            .iter()
            .enumerate()
            .map(|(age, count)| {
                let plus = if age == PIPE_BUCKETS - 1 { "+" } else { "" };
                format!("{age}{plus}: {count}")
            })
            .collect::<Vec<_>>()
            .join("  ")
    }

    /// Formats the summary as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let settings = &self.settings;
        serde_json::json!({
            "duration_s": self.elapsed.as_secs_f64(),
            "readers": settings.readers,
            "registered_readers": self.registered_readers,
            "signal_hz": settings.signal_hz,
            "update_mode": settings.update_mode.name(),
            "broken": settings.broken,
            "reads": self.reads(),
            "thread_reads": self.thread_reads,
            "signal_reads": self.signal_reads,
            "nested_reads": self.nested_reads,
            "timer_signals": self.timer_signals,
            "storm_signals": self.storm_signals,
            "storm_sent": self.storm_sent,
            "storm_failed": self.storm_failed,
            "empty_reads": self.empty_reads,
            "updates": self.updates,
            "sync_updates": self.sync_updates,
            "call_rcu_updates": self.call_rcu_updates,
            "poll_updates": self.poll_updates,
            "grace_periods": self.grace_periods,
            "callbacks_run": self.callbacks_run,
            "barriers": self.barriers,
            "peak_backlog": self.peak_backlog,
            "objects_created": self.objects.created,
            "objects_freed": self.objects.freed,
            "premature_frees": self.premature_frees,
            "pipe": self.pipe,
            "errors": self.errors,
            "age_errors": self.age_errors,
            "poison_errors": self.poison_errors,
            "failures": self.failures,
            "verdict": self.verdict(),
        })
    }
}

/// Returns one line of live progress.
pub fn progress_line(
    elapsed: Duration,
    duration: Duration,
    readers: &[ReaderStats],
    updater: &UpdaterStats,
) -> String {
    format!(
        "[{:5.1}/{:.1} s] reads {}  signal {}  nested {}  updates {}  errors {}",
        elapsed.as_secs_f64(),
        duration.as_secs_f64(),
        sum(readers, |stats| &stats.thread_reads) + sum(readers, |stats| &stats.signal_reads),
        sum(readers, |stats| &stats.signal_reads),
        sum(readers, |stats| &stats.nested_reads),
        load(&updater.updates),
        sum(readers, |stats| &stats.errors),
    )
}
