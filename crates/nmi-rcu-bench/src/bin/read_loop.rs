//! Runs one read-side loop a given number of times, for instruction counts
//! under `valgrind --tool=callgrind`.
//!
//! Usage: `nmi-rcu-read-loop CONTENDER ITERATIONS`, where CONTENDER is
//! `floor`, `nmi-rcu`, `nmi-rcu-unregistered`, `liburcu-memb` or
//! `liburcu-bp`. The instructions of one section are the difference between
//! the totals for 2N and N iterations, divided by N: everything outside the
//! loop (start-up, registration) cancels out.

use std::process::ExitCode;

use nmi_rcu_bench::read_side::Contender;

const USAGE: &str = "usage: nmi-rcu-read-loop CONTENDER ITERATIONS\n\
    CONTENDER: floor, nmi-rcu, nmi-rcu-unregistered, liburcu-memb or liburcu-bp";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [name, iterations] = args.as_slice() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let contender = match name.as_str() {
        "floor" => Contender::Floor,
        "nmi-rcu" => Contender::NmiRcuRegistered,
        "nmi-rcu-unregistered" => Contender::NmiRcuUnregistered,
        "liburcu-memb" => Contender::LiburcuMemb,
        "liburcu-bp" => Contender::LiburcuBp,
        other => {
            eprintln!("invalid contender {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let Ok(iterations) = iterations.parse::<u64>() else {
        eprintln!(
            "invalid iteration count {iterations:?}: expected a non-negative integer\n{USAGE}"
        );
        return ExitCode::from(2);
    };
    if let Err(unavailable) = contender.availability() {
        eprintln!("{}: {unavailable}", contender.name());
        return ExitCode::FAILURE;
    }

    contender.enter_thread();
    let checksum = contender.run(iterations);
    contender.leave_thread();
    println!("{} x {iterations}: checksum {checksum}", contender.name());
    ExitCode::SUCCESS
}
