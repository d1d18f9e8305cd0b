//! `nmi-rcu`: the command-line tool of the nmi-rcu library.
//!
//! - `nmi-rcu demo` (the default, what `cargo run --release` runs): the
//!   dynamic NMI handler pattern on real SIGPROF signals.
//! - `nmi-rcu torture`: a stress test of the RCU core in the spirit of the
//!   Linux kernel's rcutorture.
//! - `nmi-rcu bench`: benchmarks of the read side, grace periods and signal
//!   dispatch against peer libraries.
//!
//! Invalid flags make clap print a message naming the flag and the value and
//! exit with status 2.

mod bench;
mod demo;
mod os;
mod parse;
mod torture;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// RCU-protected signal handlers: demo, torture test and benchmarks.
///
/// Without a subcommand, runs the demo with the flags given.
#[derive(Debug, Parser)]
#[command(name = "nmi-rcu", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    demo: demo::DemoArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install, replace and remove SIGPROF handlers while timer signals
    /// arrive, and check that no handler runs on freed data (the default).
    Demo(demo::DemoArgs),
    /// Stress the RCU core with thread and signal readers and check that no
    /// reader ever sees a freed object.
    Torture(torture::TortureArgs),
    /// Benchmark the read side, grace periods and signal dispatch against a
    /// bare pointer load and peer libraries.
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    // Library messages such as the membarrier fallback go to standard error;
    // RUST_LOG overrides the level.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();

    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Demo(cli.demo)) {
        Command::Demo(args) => demo::run(&args),
        Command::Torture(args) => torture::run(&args),
        Command::Bench(args) => bench::run(&args),
    }
}
