//! Criterion benchmark of the read-side loop: enter a section, dereference
//! the published handler pointer, call it, exit. It compares nmi-rcu with
//! the floor (the same dereference and call with no section) and the peers.
//!
//! Each measurement runs on a fresh thread set up for its contender (a
//! registered thread for nmi-rcu and liburcu-memb, a thread that never
//! registered for nmi-rcu's fallback path), and only the loop is timed.
//! After criterion's report, the benchmark takes paired samples of the
//! floor and each nmi-rcu path on the same thread, alternating, and prints
//! the ratio of their medians: both sides of each ratio come from the same
//! run.
//!
//! Run it with `cargo bench -p nmi-rcu-bench --bench read_side`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use nmi_rcu_bench::read_side::{floor_loop, nmi_rcu_loop, Contender};
use nmi_rcu_bench::stats::Summary;

/// Runs `contender`'s loop for `iterations` on a new thread set up for it,
/// and returns the time of the loop alone.
fn time_on_thread(contender: Contender, iterations: u64) -> Duration {
    std::thread::spawn(move || {
        contender.enter_thread();
        let start = Instant::now();
        black_box(contender.run(iterations));
        let elapsed = start.elapsed();
        contender.leave_thread();
        elapsed
    })
    .join()
    .expect("the benchmark thread panicked")
}

fn read_side(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_side");
    group.throughput(Throughput::Elements(1));
    for contender in Contender::ALL {
        if let Err(unavailable) = contender.availability() {
            println!("read_side/{}: skipped: {unavailable}", contender.name());
            continue;
        }
        group.bench_function(contender.name(), |b| {
            b.iter_custom(|iterations| time_on_thread(contender, iterations));
        });
    }
    group.finish();
}

/// The result of [`paired_ratio`]: both loops' times per iteration and
/// the ratio of each pair, over all pairs.
struct Paired {
    first_ns: Summary,
    second_ns: Summary,
    ratio: Summary,
}

/// Times `first` and `second` alternately on the calling thread, `samples`
/// times each over `iterations`, after one untimed run of each.
fn paired_ratio(
    first: fn(u64) -> u64,
    second: fn(u64) -> u64,
    samples: usize,
    iterations: u64,
) -> Paired {
    let time = |run: fn(u64) -> u64| {
        let start = Instant::now();
        black_box(run(iterations));
        start.elapsed().as_nanos() as f64 / iterations as f64
    };
    time(first);
    time(second);

    let pairs: Vec<(f64, f64)> = (0..samples).map(|_| (time(first), time(second))).collect();
    let mut first_ns: Vec<f64> = pairs.iter().map(|pair| pair.0).collect();
    let mut second_ns: Vec<f64> = pairs.iter().map(|pair| pair.1).collect();
    let mut ratio: Vec<f64> = pairs.iter().map(|(first, second)| second / first).collect();
    Paired {
        first_ns: Summary::of(&mut first_ns),
        second_ns: Summary::of(&mut second_ns),
        ratio: Summary::of(&mut ratio),
    }
}

/// Prints the paired ratios of each nmi-rcu path to the floor.
fn print_ratios() {
    const SAMPLES: usize = 200;
    const ITERATIONS: u64 = 200_000;
    let unregistered =
        std::thread::spawn(|| paired_ratio(floor_loop, nmi_rcu_loop, SAMPLES, ITERATIONS))
            .join()
            .expect("the ratio thread panicked");
    let registered = std::thread::spawn(|| {
        nmi_rcu::register_thread();
        paired_ratio(floor_loop, nmi_rcu_loop, SAMPLES, ITERATIONS)
    })
    .join()
    .expect("the ratio thread panicked");

    println!("read_side ratio to the floor ({SAMPLES} paired samples of {ITERATIONS} iterations):");
    for (name, paired) in [("registered", &registered), ("unregistered", &unregistered)] {
        println!(
            "  nmi-rcu {name:<12} median ratio {:.3} (p90 {:.3}); median ns: floor {:.2}, nmi-rcu {:.2}",
            paired.ratio.p50, paired.ratio.p90, paired.first_ns.p50, paired.second_ns.p50
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    read_side(&mut criterion);
    criterion.final_summary();

    // `cargo bench` passes `--bench`. Without it (`cargo test --benches`),
    // criterion only checks that each benchmark runs, and the paired
    // samples would take tens of seconds in a debug build.
    if std::env::args().any(|arg| arg == "--bench") {
        print_ratios();
    }
}
