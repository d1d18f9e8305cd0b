//! `nmi-rcu bench`: the side-by-side benchmarks of the `nmi-rcu-bench`
//! crate, with a text table, JSON and an SVG chart.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use nmi_rcu_bench::Config;

/// The largest thread count `--threads` accepts.
const MAX_BENCH_THREADS: usize = 1024;

/// Flags of `nmi-rcu bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Print the report as one JSON object on stdout; the table and the
    /// progress lines go to stderr.
    #[arg(long)]
    json: bool,

    /// Write an SVG chart of the read side and of synchronize latency to
    /// FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,

    /// Take fewer and shorter samples (under a minute on 2 cores); tails
    /// such as p99 get rougher.
    #[arg(long)]
    quick: bool,

    /// Thread counts for the read-side loops, comma-separated [default: 1
    /// to the core count, then twice the core count].
    #[arg(long, value_name = "N,N,...", value_delimiter = ',', value_parser = parse_thread_count)]
    threads: Vec<usize>,
}

/// Parses one `--threads` entry: an integer from 1 to
/// [`MAX_BENCH_THREADS`].
fn parse_thread_count(text: &str) -> Result<usize, String> {
    let count: usize = text.trim().parse().map_err(|_| {
        format!("invalid thread count {text:?}: expected an integer from 1 to {MAX_BENCH_THREADS}")
    })?;
    if !(1..=MAX_BENCH_THREADS).contains(&count) {
        return Err(format!(
            "invalid thread count {count}: expected 1 to {MAX_BENCH_THREADS}"
        ));
    }
    Ok(count)
}

/// Runs `nmi-rcu bench`: measures, prints the table (or the JSON), and
/// writes the chart. Missed targets are reported, not treated as failures.
/// The exit status is non-zero only when the chart file cannot be created
/// or written.
pub fn run(args: &BenchArgs) -> ExitCode {
    let mut config = if args.quick {
        Config::quick()
    } else {
        Config::full()
    };
    if !args.threads.is_empty() {
        config.threads = args.threads.clone();
    }

    // Create the chart file first, so a bad path fails before the run.
    let mut plot = match args
        .plot
        .as_ref()
        .map(|path| File::create(path).map(|file| (path, file)))
    {
        None => None,
        Some(Ok(plot)) => Some(plot),
        Some(Err(error)) => {
            let path = args
                .plot
                .as_ref()
                .map_or_else(String::new, |path| path.display().to_string());
            eprintln!("failed to create the chart file {path}: {error}");
            return ExitCode::FAILURE;
        }
    };

    let report = nmi_rcu_bench::run(&config, &mut |step| eprintln!("bench: {step}"));

    let text = report.render_text();
    if args.json {
        eprint!("{text}");
        println!("{}", report.to_json());
    } else {
        print!("{text}");
    }

    if let Some((path, file)) = &mut plot {
        if let Err(error) = file.write_all(nmi_rcu_bench::svg::render(&report).as_bytes()) {
            eprintln!("failed to write the chart to {}: {error}", path.display());
            return ExitCode::FAILURE;
        }
        eprintln!("bench: chart written to {}", path.display());
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_count_in_range() {
        assert_eq!(parse_thread_count("4"), Ok(4));
        assert_eq!(parse_thread_count(" 1 "), Ok(1));
    }

    #[test]
    fn thread_count_zero_rejected() {
        let message = parse_thread_count("0").unwrap_err();
        assert!(message.contains("invalid thread count 0"), "{message}");
    }

    #[test]
    fn thread_count_not_a_number_rejected() {
        let message = parse_thread_count("two").unwrap_err();
        assert!(message.contains("\"two\""), "{message}");
    }
}
