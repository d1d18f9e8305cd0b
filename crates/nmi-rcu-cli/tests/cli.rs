//! End-to-end tests of the `nmi-rcu` binary: each test runs it as a child
//! process on real signals and judges its exit status and output.

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Bound on the default demo's wall time, from the promise that
/// `cargo run --release` finishes within 10 seconds on 2 cores.
const DEFAULT_DEMO_LIMIT: Duration = Duration::from_secs(10);

fn nmi_rcu(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nmi-rcu"))
        .args(args)
        .output()
        .expect("the nmi-rcu binary built by cargo can be started")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json_of(output: &Output) -> Value {
    let text = stdout(output);
    serde_json::from_str(text.trim()).unwrap_or_else(|error| {
        panic!(
            "stdout is not one JSON object ({error}), status {:?}:\n{text}\nstderr:\n{}",
            output.status,
            stderr(output)
        )
    })
}

fn count(report: &Value, field: &str) -> u64 {
    report[field]
        .as_u64()
        .unwrap_or_else(|| panic!("field {field} is missing or not a count in {report}"))
}

#[test]
fn torture_json_reports_success() {
    let output = nmi_rcu(&["torture", "--duration", "5", "--json"]);
    let report = json_of(&output);

    assert_eq!(report["verdict"], "SUCCESS", "{report}");
    assert_eq!(output.status.code(), Some(0), "{report}");
    assert_eq!(count(&report, "errors"), 0, "{report}");
    assert!(count(&report, "reads") > 0, "{report}");
    assert!(count(&report, "signal_reads") > 0, "{report}");
    assert!(count(&report, "nested_reads") > 0, "{report}");
    assert!(count(&report, "updates") > 0, "{report}");
    assert!(count(&report, "grace_periods") > 0, "{report}");
    assert!(count(&report, "callbacks_run") > 0, "{report}");

    let pipe: Vec<u64> = report["pipe"]
        .as_array()
        .expect("pipe is an array")
        .iter()
        .map(|age| age.as_u64().expect("pipe holds counts"))
        .collect();
    assert_eq!(pipe.len(), 4, "{report}");
    assert_eq!(
        pipe[2] + pipe[3],
        0,
        "no read may see age 2 or more: {report}"
    );
    assert_eq!(
        pipe.iter().sum::<u64>(),
        count(&report, "reads"),
        "every read lands in the histogram: {report}"
    );
}

#[test]
fn torture_broken_fails() {
    let output = nmi_rcu(&["torture", "--broken", "--duration", "2", "--json"]);
    let report = json_of(&output);

    assert_eq!(report["verdict"], "FAILURE", "{report}");
    assert_eq!(output.status.code(), Some(1), "{report}");
    assert!(count(&report, "errors") > 0, "{report}");
    assert!(count(&report, "poison_errors") > 0, "{report}");
}

#[test]
fn torture_broken_fails_in_each_update_mode() {
    for mode in ["sync", "call-rcu", "poll"] {
        let output = nmi_rcu(&[
            "torture",
            "--broken",
            "--duration",
            "1",
            "--update-mode",
            mode,
            "--json",
        ]);
        let report = json_of(&output);
        assert_eq!(report["verdict"], "FAILURE", "mode {mode}: {report}");
        assert_eq!(output.status.code(), Some(1), "mode {mode}: {report}");
        assert!(count(&report, "errors") > 0, "mode {mode}: {report}");
    }
}

#[test]
fn torture_text_ends_with_verdict() {
    let output = nmi_rcu(&["torture", "--duration", "1", "--update-mode", "sync"]);
    let text = stdout(&output);

    assert_eq!(
        output.status.code(),
        Some(0),
        "status {:?}, stdout:\n{text}\nstderr:\n{}",
        output.status,
        stderr(&output)
    );
    assert!(text.contains("Pipe ages:"), "{text}");
    assert_eq!(text.lines().last(), Some("End of test: SUCCESS"), "{text}");
}

/// With RLIMIT_SIGPENDING at 0 the kernel cannot queue a timer's signal,
/// so `timer_create` fails with EAGAIN and the run cannot start. `--json`
/// must still print one JSON object, with the error.
#[test]
fn torture_json_reports_setup_error() {
    let mut command = Command::new(env!("CARGO_BIN_EXE_nmi-rcu"));
    command.args(["torture", "--duration", "1", "--json"]);
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls `setrlimit`, a system call that is async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::setrlimit(libc::RLIMIT_SIGPENDING, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let output = command.output().expect("start nmi-rcu");
    let report = json_of(&output);

    assert_eq!(output.status.code(), Some(1), "{report}");
    assert_eq!(report["verdict"], "FAILURE", "{report}");
    let error = report["error"].as_str().expect("an error message");
    assert!(error.contains("timer_create"), "{error}");
    assert!(stderr(&output).contains("nmi-rcu torture: error:"));
}

#[test]
fn torture_without_signals_succeeds() {
    let output = nmi_rcu(&["torture", "--duration", "1", "--signal-hz", "0", "--json"]);
    let report = json_of(&output);

    assert_eq!(report["verdict"], "SUCCESS", "{report}");
    assert_eq!(count(&report, "signal_reads"), 0, "{report}");
}

#[test]
fn default_demo_passes_quickly() {
    let started = Instant::now();
    let output = nmi_rcu(&[]);
    let elapsed = started.elapsed();
    let text = stdout(&output);

    assert_eq!(output.status.code(), Some(0), "{text}\n{}", stderr(&output));
    let outcome = text.lines().last().unwrap_or_default();
    assert!(
        outcome.starts_with("Outcome: PASS - no handler ran on freed data"),
        "{text}"
    );
    assert!(text.contains("worker 0"), "{text}");
    assert!(text.contains("Grace periods completed"), "{text}");
    assert!(
        elapsed < DEFAULT_DEMO_LIMIT,
        "the default demo took {elapsed:?}"
    );
}

#[test]
fn demo_subcommand_takes_flags() {
    let output = nmi_rcu(&["demo", "--duration", "1", "--threads", "3", "--hz", "500"]);
    let text = stdout(&output);

    assert_eq!(output.status.code(), Some(0), "{text}\n{}", stderr(&output));
    assert!(text.contains("worker 2"), "{text}");
    assert!(!text.contains("worker 3"), "{text}");
    assert!(
        text.lines()
            .last()
            .unwrap_or_default()
            .starts_with("Outcome: PASS"),
        "{text}"
    );
}

#[test]
fn invalid_values_exit_with_usage_error() {
    let cases: &[(&[&str], &str)] = &[
        (&["torture", "--duration", "abc"], "'abc'"),
        (&["torture", "--duration", "0"], "'0'"),
        (&["torture", "--duration", "-3"], "'-3'"),
        (&["torture", "--duration", "inf"], "'inf'"),
        (&["torture", "--readers", "0"], "'0'"),
        (&["torture", "--readers", "many"], "'many'"),
        (&["torture", "--signal-hz", "-1"], "'-1'"),
        (&["torture", "--signal-hz", "1e9"], "'1e9'"),
        (&["torture", "--update-mode", "fast"], "'fast'"),
        (&["demo", "--threads", "0"], "'0'"),
        (&["demo", "--threads", "65"], "'65'"),
        (&["demo", "--hz", "0"], "'0'"),
        (&["--duration", "soon"], "'soon'"),
        (&["frobnicate"], "'frobnicate'"),
    ];
    for (args, named_value) in cases {
        let output = nmi_rcu(args);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {message}");
        assert!(message.contains(named_value), "{args:?}: {message}");
        assert!(!message.contains("panicked"), "{args:?}: {message}");
        assert!(stdout(&output).is_empty(), "{args:?}");
    }
}
