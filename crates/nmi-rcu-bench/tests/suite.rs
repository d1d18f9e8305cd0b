//! Runs the whole suite with tiny settings and checks the report's shape:
//! every available contender measured at every thread count, every
//! section present, the JSON and the chart well formed. It is one test
//! because the suite installs process-wide signal handlers under fixed
//! names, so two runs must not overlap in one process.

use std::time::Duration;

use nmi_rcu_bench::grace::CallPlan;
use nmi_rcu_bench::harness::SamplePlan;
use nmi_rcu_bench::read_side::Contender;
use nmi_rcu_bench::Config;

fn tiny_config() -> Config {
    Config {
        quick: true,
        threads: vec![1, 2],
        read_plan: SamplePlan {
            warmup_samples: 1,
            samples: 3,
            sample_time: Duration::from_micros(200),
        },
        synchronize_plan: CallPlan {
            warmup: 2,
            min_calls: 20,
            min_time: Duration::from_millis(5),
        },
        many_threads: 50,
        updaters: vec![1, 2],
        rate_duration: Duration::from_millis(20),
        call_rcu_calls: 1000,
        call_rcu_load: Duration::from_millis(20),
        signal_samples: 3,
        deliveries_per_sample: 50,
        pairs_per_sample: 20,
    }
}

#[test]
fn tiny_run_fills_every_section() {
    let config = tiny_config();
    let mut steps = Vec::new();
    let report = nmi_rcu_bench::run(&config, &mut |step| steps.push(step.to_owned()));

    // Read side: every available contender at both thread counts.
    for contender in Contender::ALL {
        for threads in [1, 2] {
            let ns = report.read_ns(contender, threads);
            match contender.availability() {
                Ok(()) => {
                    let ns =
                        ns.unwrap_or_else(|| panic!("{} at {threads} missing", contender.name()));
                    assert!(ns > 0.0, "{} at {threads}: {ns} ns", contender.name());
                }
                Err(_) => assert!(
                    ns.is_none(),
                    "{} measured without liburcu",
                    contender.name()
                ),
            }
        }
    }

    // Signals: the baseline, the slot, two layer rows, two hook rows.
    let dispatch = report
        .dispatch
        .as_ref()
        .expect("signal dispatch was skipped");
    assert_eq!(dispatch.rows.len(), 6);
    assert_eq!(dispatch.rows[0].added_ns, 0.0);
    assert_eq!(report.registration.len(), 3);

    // Update side: three settings per library, two updater counts.
    let libraries = if Contender::LiburcuMemb.availability().is_ok() {
        2
    } else {
        1
    };
    assert_eq!(report.synchronize_latency.len(), 3 * libraries);
    for row in &report.synchronize_latency {
        assert!(
            row.ns.samples >= 20,
            "{} {}: {} calls",
            row.library,
            row.setting,
            row.ns.samples
        );
    }
    assert_eq!(report.synchronize_rate.len(), 2 * libraries);
    assert_eq!(report.call_rcu.caller_ns.samples, 1000);

    assert_eq!(report.targets.len(), 13);
    assert!(!steps.is_empty());

    // Output: JSON with every section, the text tables, a closed SVG.
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).expect("invalid JSON");
    for key in [
        "machine",
        "read_side",
        "dispatch",
        "synchronize_latency",
        "call_rcu",
        "targets",
    ] {
        assert!(json.get(key).is_some(), "JSON lacks {key}");
    }
    let text = report.render_text();
    assert!(text.contains("floor (Acquire load + call)"));
    assert!(text.contains("synchronize latency"));
    let svg = nmi_rcu_bench::svg::render(&report);
    assert!(svg.starts_with("<svg"));
    assert!(svg.trim_end().ends_with("</svg>"));
}
