//! The results of one run: the figures, the machine, the target checks,
//! and their text and JSON forms.

use serde::Serialize;

use crate::config::Config;
use crate::dispatch::{DispatchFigures, RegistrationRow};
use crate::grace::{CallRcuFigures, SynchronizeRate};
use crate::harness::ThreadedMeasurement;
use crate::read_side::Contender;
use crate::stats::Summary;
use crate::table::{num, Table};

/// The machine the run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// CPU model from `/proc/cpuinfo`.
    pub cpu: String,
    /// Logical CPUs available to the process.
    pub cores: usize,
    /// Kernel release from `/proc/sys/kernel/osrelease`.
    pub kernel: String,
    /// The 1, 5 and 15 minute load averages from `/proc/loadavg` when the
    /// run started. A load above zero means other processes shared the
    /// cores, which shows first in the multi-thread figures.
    pub load_average: String,
}

impl Machine {
    /// Reads the machine description; unreadable fields become "unknown".
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|line| {
                line.strip_prefix("model name")
                    .and_then(|rest| rest.split(':').nth(1))
            })
            .map_or_else(|| "unknown".to_owned(), |model| model.trim().to_owned());
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").map_or_else(
            |_| "unknown".to_owned(),
            |release| release.trim().to_owned(),
        );
        let load_average = std::fs::read_to_string("/proc/loadavg").map_or_else(
            |_| "unknown".to_owned(),
            |loadavg| {
                loadavg
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        );
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map_or(1, usize::from),
            kernel,
            load_average,
        }
    }
}

/// One read-side contender measured at one thread count.
#[derive(Clone, Debug, Serialize)]
pub struct ReadSideRow {
    /// Contender name.
    pub contender: &'static str,
    /// The measurement.
    #[serde(flatten)]
    pub measurement: ThreadedMeasurement,
}

/// A contender or figure that was not measured, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Skipped {
    /// The skipped contender or figure.
    pub what: String,
    /// The reason it was skipped.
    pub reason: String,
}

/// `synchronize` latency in one reader setting.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyRow {
    /// Library measured.
    pub library: &'static str,
    /// Reader setting.
    pub setting: String,
    /// Latency in nanoseconds.
    pub ns: Summary,
}

/// Whether a target bounds its figure from above or from below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Bound {
    /// The figure must be at most the limit.
    AtMost,
    /// The figure must be at least the limit.
    AtLeast,
}

/// One performance target, checked against this run.
#[derive(Clone, Debug, Serialize)]
pub struct TargetCheck {
    /// The figure, in words.
    pub figure: &'static str,
    /// The bound.
    pub bound: Bound,
    /// The limit, in `unit`.
    pub limit: f64,
    /// The unit of `limit` and `measured`: "x" for a ratio.
    pub unit: &'static str,
    /// The measured value, or `None` when a contender was skipped.
    pub measured: Option<f64>,
    /// Whether the target is met, or `None` when not measured.
    pub met: Option<bool>,
}

impl TargetCheck {
    /// Builds a check, deciding `met` from `measured`.
    pub fn new(
        figure: &'static str,
        bound: Bound,
        limit: f64,
        unit: &'static str,
        measured: Option<f64>,
    ) -> TargetCheck {
        let met = measured.map(|value| match bound {
            Bound::AtMost => value <= limit,
            Bound::AtLeast => value >= limit,
        });
        TargetCheck {
            figure,
            bound,
            limit,
            unit,
            measured,
            met,
        }
    }
}

/// Everything one run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// The settings of the run.
    pub config: Config,
    /// Read-side loops, per contender and thread count.
    pub read_side: Vec<ReadSideRow>,
    /// Signal dispatch figures, if the signal benchmarks ran.
    pub dispatch: Option<DispatchFigures>,
    /// `synchronize` latencies.
    pub synchronize_latency: Vec<LatencyRow>,
    /// Aggregate `synchronize` rates.
    pub synchronize_rate: Vec<SynchronizeRate>,
    /// `call_rcu` figures.
    pub call_rcu: CallRcuFigures,
    /// Register + unregister pairs.
    pub registration: Vec<RegistrationRow>,
    /// The targets, checked against this run.
    pub targets: Vec<TargetCheck>,
    /// Contenders and figures that were not measured, with the reasons.
    pub skipped: Vec<Skipped>,
    /// Wall-clock duration of the run, in seconds.
    pub seconds: f64,
}

impl Report {
    /// Returns the median ns per iteration of `contender` at `threads`.
    pub fn read_ns(&self, contender: Contender, threads: usize) -> Option<f64> {
        self.read_row(contender, threads)
            .map(|row| row.measurement.ns_per_iteration.p50)
    }

    /// Returns the median aggregate rate of `contender` at `threads`, in
    /// millions of iterations per second.
    pub fn read_mops(&self, contender: Contender, threads: usize) -> Option<f64> {
        self.read_row(contender, threads)
            .map(|row| row.measurement.aggregate_mops.p50)
    }

    fn read_row(&self, contender: Contender, threads: usize) -> Option<&ReadSideRow> {
        self.read_side
            .iter()
            .find(|row| row.contender == contender.name() && row.measurement.threads == threads)
    }

    /// Returns the floor's aggregate throughput at 2 threads divided by its
    /// throughput at 1 thread: how much of a second core the machine gave
    /// this run. No read-side section can scale better than the floor.
    pub fn floor_scaling(&self) -> Option<f64> {
        self.read_mops(Contender::Floor, 2)
            .zip(self.read_mops(Contender::Floor, 1))
            .map(|(two, one)| two / one)
    }

    /// Returns the `synchronize` latency of `library` in the setting whose
    /// label is `setting`.
    pub fn latency(&self, library: &str, setting: &str) -> Option<Summary> {
        self.synchronize_latency
            .iter()
            .find(|row| row.library == library && row.setting == setting)
            .map(|row| row.ns)
    }

    /// Serializes the report as one JSON object.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self)
            .unwrap_or_else(|error| format!("{{\"error\": \"{error}\"}}"))
    }

    /// Renders every table as text.
    pub fn render_text(&self) -> String {
        let mut out = format!(
            "nmi-rcu bench: {} cores, {}, Linux {}, load average {} at start, {} run in {:.1} s\n\n",
            self.machine.cores,
            self.machine.cpu,
            self.machine.kernel,
            self.machine.load_average,
            if self.config.quick { "quick" } else { "full" },
            self.seconds
        );
        out += &self.read_side_table();
        out += &self.dispatch_table();
        out += &self.synchronize_tables();
        out += &self.call_rcu_table();
        out += &self.registration_table();
        out += &self.targets_table();
        if let Some(scaling) = self.floor_scaling() {
            out += &format!("reference: the floor's own throughput, 2 threads vs 1, was {scaling:.2}x in this run");
            if scaling < 1.8 {
                out += " (below 1.8x: other processes kept the second core busy)";
            }
            out += "\n";
        }
        if !self.skipped.is_empty() {
            out += "\nSkipped:\n";
            for skipped in &self.skipped {
                out += &format!("  {}: {}\n", skipped.what, skipped.reason);
            }
        }
        out
    }

    fn read_side_table(&self) -> String {
        let threads = &self.config.threads;
        let mut header = vec!["read side: ns per section (median)".to_owned()];
        header.extend(threads.iter().map(|n| format!("{n} thr")));
        header.push("min 1 thr".to_owned());
        header.extend(threads.iter().map(|n| format!("Mops/s {n} thr")));
        header.push("x floor".to_owned());
        header.push("x floor (min)".to_owned());
        let header: Vec<&str> = header.iter().map(String::as_str).collect();
        let mut table = Table::new(&header);

        let floor = self
            .read_row(Contender::Floor, 1)
            .map(|row| row.measurement.ns_per_iteration);
        for contender in Contender::ALL {
            if self.read_ns(contender, threads[0]).is_none() {
                continue;
            }
            let single = self
                .read_row(contender, 1)
                .map(|row| row.measurement.ns_per_iteration);
            let mut cells = vec![contender.name().to_owned()];
            cells.extend(
                threads
                    .iter()
                    .map(|&n| self.read_ns(contender, n).map_or_else(String::new, num)),
            );
            cells.push(single.map_or_else(String::new, |ns| num(ns.min)));
            cells.extend(
                threads
                    .iter()
                    .map(|&n| self.read_mops(contender, n).map_or_else(String::new, num)),
            );
            let ratio = |pick: fn(&Summary) -> f64| {
                single.zip(floor).map_or_else(String::new, |(ns, floor)| {
                    format!("{:.2}", pick(&ns) / pick(&floor))
                })
            };
            cells.push(ratio(|ns| ns.p50));
            cells.push(ratio(|ns| ns.min));
            table.row(cells);
        }
        table.render()
            + "(per-thread ns: median over all threads' samples; min: fastest 1-thread sample; \
               Mops/s: all threads' iterations per second, median over samples; \
               x floor: 1-thread ratio to the floor)\n\n"
    }

    fn dispatch_table(&self) -> String {
        let Some(dispatch) = &self.dispatch else {
            return String::new();
        };
        let mut table = Table::new(&[
            "signal delivery to self (tgkill)",
            "ns p50",
            "ns p99",
            "added ns",
            "added %",
        ]);
        for row in &dispatch.rows {
            table.row(vec![
                row.contender.clone(),
                num(row.ns_per_delivery.p50),
                num(row.ns_per_delivery.p99),
                num(row.added_ns),
                format!("{:.1}", row.added_percent),
            ]);
        }
        table.row(vec![
            "HandlerSlot::dispatch, plain loop".to_owned(),
            num(dispatch.slot_dispatch_loop_ns.p50),
            num(dispatch.slot_dispatch_loop_ns.p99),
        ]);
        table.render() + "\n"
    }

    fn synchronize_tables(&self) -> String {
        let mut latency = Table::new(&[
            "synchronize latency",
            "library",
            "p50 us",
            "p99 us",
            "mean us",
            "max us",
            "calls",
        ]);
        for row in &self.synchronize_latency {
            latency.row(vec![
                row.setting.clone(),
                row.library.to_owned(),
                num(row.ns.p50 / 1e3),
                num(row.ns.p99 / 1e3),
                num(row.ns.mean / 1e3),
                num(row.ns.max / 1e3),
                row.ns.samples.to_string(),
            ]);
        }
        let mut rate = Table::new(&[
            "concurrent synchronize",
            "library",
            "calls/s",
            "grace periods/s",
        ]);
        for row in &self.synchronize_rate {
            rate.row(vec![
                format!("{} updaters", row.updaters),
                row.library.to_owned(),
                num(row.calls_per_second),
                row.grace_periods_per_second.map_or_else(String::new, num),
            ]);
        }
        latency.render() + "\n" + &rate.render() + "\n"
    }

    fn call_rcu_table(&self) -> String {
        let figures = &self.call_rcu;
        let mut table = Table::new(&["call_rcu", "value"]);
        table.row(vec![
            "caller p50 ns (with clock)".to_owned(),
            num(figures.caller_ns.p50),
        ]);
        table.row(vec![
            "caller p99 ns (with clock)".to_owned(),
            num(figures.caller_ns.p99),
        ]);
        table.row(vec![
            "clock read pair p50 ns".to_owned(),
            num(figures.clock_ns.p50),
        ]);
        table.row(vec![
            "sustained load: queued per s".to_owned(),
            num(figures.queued_per_second),
        ]);
        table.row(vec![
            "sustained load: peak backlog".to_owned(),
            figures.peak_backlog.to_string(),
        ]);
        table.row(vec![
            "sustained load: grace periods".to_owned(),
            figures.grace_periods.to_string(),
        ]);
        table.row(vec![
            "barrier after the load, ms".to_owned(),
            num(figures.drain_ms),
        ]);
        table.render() + "\n"
    }

    fn registration_table(&self) -> String {
        if self.registration.is_empty() {
            return String::new();
        }
        let mut table = Table::new(&["register + unregister pair", "ns p50", "ns p99"]);
        for row in &self.registration {
            table.row(vec![
                row.contender.clone(),
                num(row.ns_per_pair.p50),
                num(row.ns_per_pair.p99),
            ]);
        }
        table.render() + "\n"
    }

    fn targets_table(&self) -> String {
        let mut table = Table::new(&["target", "limit", "measured", "met"]);
        for target in &self.targets {
            let sign = match target.bound {
                Bound::AtMost => "<=",
                Bound::AtLeast => ">=",
            };
            table.row(vec![
                target.figure.to_owned(),
                format!("{sign} {}{}", num(target.limit), target.unit),
                target.measured.map_or_else(
                    || "not measured".to_owned(),
                    |value| format!("{}{}", num(value), target.unit),
                ),
                match target.met {
                    Some(true) => "yes".to_owned(),
                    Some(false) => "NO".to_owned(),
                    None => "-".to_owned(),
                },
            ]);
        }
        table.render()
    }
}
