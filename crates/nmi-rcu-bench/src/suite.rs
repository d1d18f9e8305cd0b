//! The whole benchmark run: every figure, in one process, in a fixed order.

use std::sync::Arc;
use std::time::Instant;

use crate::config::Config;
use crate::dispatch;
use crate::grace::{self, GraceLibrary, ReaderSetting};
use crate::harness::{calibrate_spec, measure_in_turns, LoopSpec};
use crate::read_side::Contender;
use crate::report::{Bound, LatencyRow, Machine, ReadSideRow, Report, Skipped, TargetCheck};

/// Runs every benchmark that `config` selects and returns the report.
/// `progress` receives one line per step, for a terminal.
///
/// # Examples
///
/// ```no_run
/// let report = nmi_rcu_bench::run(&nmi_rcu_bench::Config::quick(), &mut |line| eprintln!("{line}"));
/// println!("{}", report.render_text());
/// ```
pub fn run(config: &Config, progress: &mut dyn FnMut(&str)) -> Report {
    let started = Instant::now();
    let machine = Machine::detect();
    let mut skipped = Vec::new();

    let read_side = read_side(config, progress, &mut skipped);

    progress("signal dispatch");
    let dispatch =
        match dispatch::dispatch_figures(config.signal_samples, config.deliveries_per_sample) {
            Ok(figures) => Some(figures),
            Err(error) => {
                skipped.push(Skipped {
                    what: "signal dispatch".to_owned(),
                    reason: error.to_string(),
                });
                None
            }
        };

    let (synchronize_latency, synchronize_rate) = synchronize(config, progress, &mut skipped);

    progress("call_rcu");
    let call_rcu = grace::call_rcu_figures(config.call_rcu_calls, config.call_rcu_load);

    progress("register + unregister pairs");
    let registration =
        dispatch::registration_figures(config.signal_samples, config.pairs_per_sample)
            .unwrap_or_else(|error| {
                skipped.push(Skipped {
                    what: "register + unregister pairs".to_owned(),
                    reason: error.to_string(),
                });
                Vec::new()
            });

    let mut report = Report {
        machine,
        config: config.clone(),
        read_side,
        dispatch,
        synchronize_latency,
        synchronize_rate,
        call_rcu,
        registration,
        targets: Vec::new(),
        skipped,
        seconds: 0.0,
    };
    report.targets = check_targets(&report);
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Measures every available read-side contender at every thread count,
/// the contenders in turns (see [`measure_in_turns`]).
fn read_side(
    config: &Config,
    progress: &mut dyn FnMut(&str),
    skipped: &mut Vec<Skipped>,
) -> Vec<ReadSideRow> {
    // Step 1: calibrate each available contender on one thread.
    let mut loops = Vec::new();
    let mut names = Vec::new();
    for contender in Contender::ALL {
        if let Err(unavailable) = contender.availability() {
            progress(&format!(
                "read side: skipping {}: {unavailable}",
                contender.name()
            ));
            skipped.push(Skipped {
                what: contender.name().to_owned(),
                reason: unavailable.to_string(),
            });
            continue;
        }
        progress(&format!("read side: calibrating {}", contender.name()));
        let spec = Arc::new(LoopSpec {
            enter_thread: Box::new(move || contender.enter_thread()),
            run: Box::new(move |iterations| contender.run(iterations)),
            leave_thread: Box::new(move || contender.leave_thread()),
        });
        let iterations = calibrate_spec(&spec, config.read_plan.sample_time);
        loops.push((spec, iterations));
        names.push(contender.name());
    }

    // Step 2: every contender at every thread count, in turns.
    progress(&format!(
        "read side: {} contenders at {:?} threads, in turns",
        loops.len(),
        config.threads
    ));
    let measurements = measure_in_turns(&loops, &config.threads, &config.read_plan);
    config
        .threads
        .iter()
        .flat_map(|_| names.iter())
        .zip(measurements)
        .map(|(name, measurement)| ReadSideRow {
            contender: name,
            measurement,
        })
        .collect()
}

/// Measures `synchronize` latency in the three settings and the aggregate
/// rate of concurrent callers, for nmi-rcu and liburcu-memb.
fn synchronize(
    config: &Config,
    progress: &mut dyn FnMut(&str),
    skipped: &mut Vec<Skipped>,
) -> (Vec<LatencyRow>, Vec<grace::SynchronizeRate>) {
    let mut libraries = vec![GraceLibrary::NmiRcu];
    match GraceLibrary::liburcu_memb() {
        Ok(memb) => libraries.push(memb),
        Err(unavailable) => {
            progress(&format!(
                "synchronize: skipping liburcu-memb: {unavailable}"
            ));
            skipped.push(Skipped {
                what: "liburcu-memb synchronize_rcu".to_owned(),
                reason: unavailable.to_string(),
            });
        }
    }

    let settings = [
        ReaderSetting::Idle(1),
        ReaderSetting::Busy(2),
        ReaderSetting::Idle(config.many_threads),
    ];
    let mut latency = Vec::new();
    for setting in settings {
        for &library in &libraries {
            progress(&format!(
                "synchronize latency: {}, {}",
                library.name(),
                setting.label()
            ));
            let ns = grace::synchronize_latency(library, setting, &config.synchronize_plan);
            latency.push(LatencyRow {
                library: library.name(),
                setting: setting.label(),
                ns,
            });
        }
    }

    let mut rate = Vec::new();
    for &library in &libraries {
        for &updaters in &config.updaters {
            progress(&format!(
                "concurrent synchronize: {}, {updaters} updaters",
                library.name()
            ));
            rate.push(grace::synchronize_rate(
                library,
                updaters,
                config.rate_duration,
            ));
        }
    }
    (latency, rate)
}

/// Checks the performance targets against the report's own figures.
fn check_targets(report: &Report) -> Vec<TargetCheck> {
    let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b);
    let registered = report.read_ns(Contender::NmiRcuRegistered, 1);
    let one_idle = ReaderSetting::Idle(1).label();
    let two_busy = ReaderSetting::Busy(2).label();
    let many_idle = ReaderSetting::Idle(report.config.many_threads).label();
    let memb = "liburcu-memb";
    let rate = |updaters: usize| {
        report
            .synchronize_rate
            .iter()
            .find(|row| row.library == "nmi-rcu" && row.updaters == updaters)
            .map(|row| row.calls_per_second)
    };
    let layer_added = report.dispatch.as_ref().and_then(|dispatch| {
        dispatch
            .rows
            .iter()
            .find(|row| row.contender.contains("signal layer, 1 "))
            .map(|row| row.added_percent)
    });
    let pair = |needle: &str| {
        report
            .registration
            .iter()
            .find(|row| row.contender.contains(needle))
            .map(|row| row.ns_per_pair.p50)
    };
    let call_rcu = &report.call_rcu;

    vec![
        TargetCheck::new(
            "read side, registered thread, vs the bare floor",
            Bound::AtMost,
            1.2,
            "x",
            ratio(registered, report.read_ns(Contender::Floor, 1)),
        ),
        TargetCheck::new(
            "read side vs liburcu-memb",
            Bound::AtMost,
            1.1,
            "x",
            ratio(registered, report.read_ns(Contender::LiburcuMemb, 1)),
        ),
        TargetCheck::new(
            "read side vs crossbeam-epoch pin",
            Bound::AtMost,
            0.25,
            "x",
            ratio(registered, report.read_ns(Contender::CrossbeamPin, 1)),
        ),
        TargetCheck::new(
            "read side vs arc-swap load",
            Bound::AtMost,
            0.12,
            "x",
            ratio(registered, report.read_ns(Contender::ArcSwapLoad, 1)),
        ),
        TargetCheck::new(
            "unregistered fallback path vs the bare floor",
            Bound::AtMost,
            5.0,
            "x",
            ratio(
                report.read_ns(Contender::NmiRcuUnregistered, 1),
                report.read_ns(Contender::Floor, 1),
            ),
        ),
        TargetCheck::new(
            "read throughput, 2 threads vs 1",
            Bound::AtLeast,
            1.8,
            "x",
            ratio(
                report.read_mops(Contender::NmiRcuRegistered, 2),
                report.read_mops(Contender::NmiRcuRegistered, 1),
            ),
        ),
        TargetCheck::new(
            "synchronize p50, 1 idle registered thread, vs liburcu-memb",
            Bound::AtMost,
            1.5,
            "x",
            ratio(
                report.latency("nmi-rcu", &one_idle).map(|ns| ns.p50),
                report.latency(memb, &one_idle).map(|ns| ns.p50),
            ),
        ),
        TargetCheck::new(
            "synchronize p99, 2 busy readers",
            Bound::AtMost,
            1000.0,
            " us",
            report.latency("nmi-rcu", &two_busy).map(|ns| ns.p99 / 1e3),
        ),
        TargetCheck::new(
            "synchronize p50, many idle registered threads, vs liburcu-memb",
            Bound::AtMost,
            0.5,
            "x",
            ratio(
                report.latency("nmi-rcu", &many_idle).map(|ns| ns.p50),
                report.latency(memb, &many_idle).map(|ns| ns.p50),
            ),
        ),
        TargetCheck::new(
            "aggregate synchronize rate, 16 updaters vs 1",
            Bound::AtLeast,
            5.0,
            "x",
            ratio(rate(16), rate(1)),
        ),
        TargetCheck::new(
            "call_rcu caller p50 (clock pair subtracted)",
            Bound::AtMost,
            100.0,
            " ns",
            Some(call_rcu.caller_ns.p50 - call_rcu.clock_ns.p50),
        ),
        TargetCheck::new(
            "signal layer dispatch (1 handler) over an empty sigaction handler",
            Bound::AtMost,
            5.0,
            " %",
            layer_added,
        ),
        TargetCheck::new(
            "deferred unregister + register pair vs signal-hook-registry",
            Bound::AtMost,
            1.0,
            "x",
            ratio(pair("deferred"), pair("signal-hook-registry")),
        ),
    ]
}
