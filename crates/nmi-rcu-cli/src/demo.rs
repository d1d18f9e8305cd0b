//! `nmi-rcu demo`: placeholder until the demo lands in the next commit.

use std::process::ExitCode;
use std::time::Duration;

use crate::parse::parse_duration;

/// Flags of `nmi-rcu demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Length of the demo in seconds; decimals are accepted.
    #[arg(long, value_name = "SECONDS", default_value = "3", value_parser = parse_duration)]
    pub duration: Duration,
}

/// Runs the demo.
pub fn run(_args: &DemoArgs) -> ExitCode {
    eprintln!("nmi-rcu demo: not built yet in this revision; try `nmi-rcu torture`");
    ExitCode::FAILURE
}
