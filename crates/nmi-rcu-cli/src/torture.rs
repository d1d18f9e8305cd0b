//! `nmi-rcu torture`: a stress test of the RCU core in the spirit of the
//! Linux kernel's rcutorture.
//!
//! # What runs
//!
//! - One updater thread replaces the published object in [`CURRENT`] as fast
//!   as it can and frees each old object after a grace period from
//!   `synchronize`, `call_rcu` or a polled grace period (`--update-mode`).
//! - `--readers` reader threads run read-side sections back to back, holding
//!   the object for a random number of checks. Even-numbered readers register
//!   with the library, odd-numbered ones take the unregistered path.
//! - Signal readers: each reader thread has a CPU-time timer that sends
//!   SIGPROF, and a storm thread sends SIGUSR2 to every reader with `tgkill`.
//!   The handler runs a read-side section of its own, often on top of the
//!   thread's open section (a nested read).
//!
//! Objects carry a pipe age and are poisoned when freed; see [`object`]. A
//! read that sees an age of 2 or more, or poison, is an error. `--broken`
//! frees each object one grace period too early, which must produce errors.
//!
//! # Lifetime of the run's state
//!
//! The shared state of a run is leaked: the process exits after one run, and
//! freed objects must stay mapped so that a late reader reads poison, not
//! unmapped or reused memory.

mod object;
mod reader;
mod report;
mod storm;
mod updater;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicPtr, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nmi_rcu::RcuOption;

use crate::os;
use crate::parse::{parse_count, parse_duration, ValueError};
use object::{ObjectRef, Pool};
use reader::{ReaderConfig, ReaderStats};
use report::Summary;
use storm::StormStats;
use updater::{Updater, UpdaterStats};

/// Signal delivered by the per-thread CPU-time timers.
pub const TIMER_SIGNAL: libc::c_int = libc::SIGPROF;

/// Signal sent by the `tgkill` storm.
pub const STORM_SIGNAL: libc::c_int = libc::SIGUSR2;

/// The object that readers dereference.
static CURRENT: RcuOption<ObjectRef> = RcuOption::new();

/// Largest accepted `--readers`.
const MAX_READERS: u64 = 256;

/// Largest accepted `--signal-hz`.
const MAX_SIGNAL_HZ: u64 = 100_000;

/// Time that threads get to finish after the run before the test reports a
/// stall: long enough for a grace period on a loaded machine, short enough
/// that a hung grace period does not hang the tool.
const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the live progress line is redrawn.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// The grace-period primitive the updater uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpdateMode {
    /// `synchronize` after each update.
    Sync,
    /// `call_rcu` frees the old object.
    CallRcu,
    /// `start_poll`, then `poll_state` until the grace period has passed.
    Poll,
    /// A random choice among the three for each update.
    Mixed,
}

impl UpdateMode {
    /// Returns the name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            UpdateMode::Sync => "sync",
            UpdateMode::CallRcu => "call-rcu",
            UpdateMode::Poll => "poll",
            UpdateMode::Mixed => "mixed",
        }
    }
}

/// Flags of `nmi-rcu torture`.
#[derive(Debug, Clone, clap::Args)]
pub struct TortureArgs {
    // `allow_negative_numbers` lets a value such as -5 reach the value
    // parser, which names it, instead of being taken for an unknown flag.
    /// Length of the run in seconds; decimals are accepted.
    #[arg(long, value_name = "SECONDS", default_value = "10", value_parser = parse_duration, allow_negative_numbers = true)]
    pub duration: Duration,

    /// Number of reader threads [default: the number of CPUs, at least 2].
    #[arg(long, value_name = "N", value_parser = parse_readers, allow_negative_numbers = true)]
    pub readers: Option<usize>,

    /// Signals per second that each reader gets from each source (its
    /// CPU-time timer and the tgkill storm); 0 turns signal readers off.
    #[arg(long, value_name = "HZ", default_value = "1000", value_parser = parse_signal_hz, allow_negative_numbers = true)]
    pub signal_hz: u32,

    /// Grace-period primitive of the updater.
    #[arg(long, value_name = "MODE", value_enum, default_value_t = UpdateMode::Mixed)]
    pub update_mode: UpdateMode,

    /// Free retired objects one grace period too early; the run must then
    /// end in FAILURE, which shows that the test can fail.
    #[arg(long)]
    pub broken: bool,

    /// Print one JSON object on stdout instead of the text summary.
    #[arg(long)]
    pub json: bool,
}

fn parse_readers(text: &str) -> Result<usize, ValueError> {
    // MAX_READERS fits in usize on every supported target.
    parse_count(text, 1..=MAX_READERS).map(|count| count as usize)
}

fn parse_signal_hz(text: &str) -> Result<u32, ValueError> {
    // MAX_SIGNAL_HZ fits in u32.
    parse_count(text, 0..=MAX_SIGNAL_HZ).map(|hz| hz as u32)
}

/// A torture run that could not start or finish.
#[derive(Debug)]
pub enum TortureError {
    /// A system call failed while setting up signals or timers.
    Os(os::OsError),
    /// A thread could not be spawned.
    Spawn {
        /// The thread's name.
        thread: String,
        /// The error from the operating system.
        source: std::io::Error,
    },
    /// A thread did not finish within [`STALL_TIMEOUT`] after the run.
    Stalled {
        /// The thread's name.
        thread: String,
    },
    /// A thread panicked; the panic hook has printed its message.
    Panicked {
        /// The thread's name.
        thread: String,
    },
}

impl std::fmt::Display for TortureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TortureError::Os(error) => write!(f, "{error}"),
            TortureError::Spawn { thread, source } => {
                write!(f, "could not spawn thread {thread}: {source}")
            }
            TortureError::Stalled { thread } => write!(
                f,
                "thread {thread} did not finish within {} s after the run: \
                 a grace period or a callback never completed",
                STALL_TIMEOUT.as_secs()
            ),
            TortureError::Panicked { thread } => {
                write!(f, "thread {thread} panicked; its message is printed above")
            }
        }
    }
}

impl std::error::Error for TortureError {}

impl From<os::OsError> for TortureError {
    fn from(error: os::OsError) -> Self {
        TortureError::Os(error)
    }
}

/// Runs `nmi-rcu torture` and returns its exit status: 0 only on SUCCESS.
pub fn run(args: &TortureArgs) -> ExitCode {
    match execute(args) {
        Ok(summary) => {
            if args.json {
                println!("{}", summary.to_json());
            } else {
                print!("{}", summary.to_text());
            }
            if summary.passed() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(error) => {
            eprintln!("nmi-rcu torture: error: {error}");
            // `--json` promises one JSON object on stdout, also when the run
            // could not be completed.
            if args.json {
                let report = serde_json::json!({
                    "verdict": "FAILURE",
                    "error": error.to_string(),
                });
                println!("{report}");
            } else {
                println!("End of test: FAILURE");
            }
            ExitCode::FAILURE
        }
    }
}

/// The state of the last run. It keeps the leaked state reachable from a
/// static, so leak checkers such as LeakSanitizer do not report the objects
/// kept mapped on purpose.
static LEAKED_STATE: AtomicPtr<RunState> = AtomicPtr::new(std::ptr::null_mut());

/// The shared state of one run; leaked, see the module notes.
struct RunState {
    pool: Pool,
    readers: Vec<ReaderStats>,
    updater: UpdaterStats,
    storm: StormStats,
    stop_storm: AtomicBool,
    stop: AtomicBool,
}

/// The parameters of a run, with defaults resolved.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Requested length of the run.
    pub duration: Duration,
    /// Number of reader threads.
    pub readers: usize,
    /// Signals per second per reader and source.
    pub signal_hz: u32,
    /// Grace-period primitive of the updater.
    pub update_mode: UpdateMode,
    /// Whether objects are freed one grace period too early.
    pub broken: bool,
}

fn execute(args: &TortureArgs) -> Result<Summary, TortureError> {
    let settings = Settings {
        duration: args.duration,
        readers: args.readers.unwrap_or_else(default_readers),
        signal_hz: args.signal_hz,
        update_mode: args.update_mode,
        broken: args.broken,
    };
    let state: &'static RunState = Box::leak(Box::new(RunState {
        pool: Pool::new(),
        readers: (0..settings.readers).map(|_| ReaderStats::new()).collect(),
        updater: UpdaterStats::default(),
        storm: StormStats::default(),
        stop_storm: AtomicBool::new(false),
        stop: AtomicBool::new(false),
    }));
    // Relaxed: nothing reads the pointer; it only keeps the state reachable.
    LEAKED_STATE.store(std::ptr::from_ref(state).cast_mut(), Ordering::Relaxed);
    let seed = time_seed();
    let domain_before = nmi_rcu::Domain::global().stats();

    // Step 1: publish the first object and install the handler, so that
    // no reader, thread or signal, ever finds the cell empty.
    let updater = Updater {
        mode: settings.update_mode,
        broken: settings.broken,
        pool: &state.pool,
        stats: &state.updater,
        seed,
    };
    let first = updater.publish_first();
    let handlers = match settings.signal_hz {
        0 => None,
        _ => Some(os::install_handlers(
            &[TIMER_SIGNAL, STORM_SIGNAL],
            reader::on_torture_signal,
        )?),
    };

    // Step 2: start the readers, the updater and the storm.
    let started = Instant::now();
    let mut readers = Vec::with_capacity(settings.readers);
    for (index, stats) in state.readers.iter().enumerate() {
        let config = ReaderConfig {
            register: index % 2 == 0,
            signal_hz: settings.signal_hz,
            seed: seed ^ (index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        };
        let stop = &state.stop;
        readers.push(spawn(format!("torture-reader-{index}"), move || {
            reader::run_thread_reader(stats, config, stop)
        })?);
    }
    let updater_thread = spawn("torture-updater".to_owned(), move || {
        updater.run(first, &state.stop);
        Ok(())
    })?;
    let storm_thread = match settings.signal_hz {
        0 => None,
        hz => Some(spawn("torture-storm".to_owned(), move || {
            storm::run_storm(&state.readers, hz, &state.storm, &state.stop_storm);
            Ok(())
        })?),
    };

    // Step 3: wait for the end of the run, showing progress on a terminal.
    wait_with_progress(state, started, settings.duration);

    // Step 4: stop the storm before the readers, so that it never signals a
    // thread id that has been reused; then stop everything else.
    // Relaxed: the joins below order the threads' final writes.
    state.stop_storm.store(true, Ordering::Relaxed);
    if let Some(thread) = storm_thread {
        join(thread, "torture-storm")?;
    }
    state.stop.store(true, Ordering::Relaxed);
    for (index, thread) in readers.into_iter().enumerate() {
        join(thread, &format!("torture-reader-{index}"))?;
    }
    join(updater_thread, "torture-updater")?;
    let elapsed = started.elapsed();
    drop(handlers);

    let domain_after = nmi_rcu::Domain::global().stats();
    Ok(Summary::collect(
        settings,
        elapsed,
        state,
        domain_before,
        domain_after,
    ))
}

fn default_readers() -> usize {
    let cpus = std::thread::available_parallelism().map_or(2, |count| count.get());
    cpus.clamp(2, MAX_READERS as usize)
}

fn spawn<F>(name: String, body: F) -> Result<JoinHandle<Result<(), os::OsError>>, TortureError>
where
    F: FnOnce() -> Result<(), os::OsError> + Send + 'static,
{
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(body)
        .map_err(|source| TortureError::Spawn {
            thread: name,
            source,
        })
}

/// Joins `thread`, giving it [`STALL_TIMEOUT`] to finish.
fn join(thread: JoinHandle<Result<(), os::OsError>>, name: &str) -> Result<(), TortureError> {
    let deadline = Instant::now() + STALL_TIMEOUT;
    while !thread.is_finished() {
        if Instant::now() >= deadline {
            return Err(TortureError::Stalled {
                thread: name.to_owned(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    match thread.join() {
        Ok(result) => result.map_err(TortureError::Os),
        Err(_) => Err(TortureError::Panicked {
            thread: name.to_owned(),
        }),
    }
}

/// Sleeps until `duration` has passed since `started`, redrawing a progress
/// line on standard error when it is a terminal.
fn wait_with_progress(state: &RunState, started: Instant, duration: Duration) {
    let show_progress = std::io::stderr().is_terminal();
    let mut next_progress = PROGRESS_INTERVAL;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= duration {
            break;
        }
        if show_progress && elapsed >= next_progress {
            let line = report::progress_line(elapsed, duration, &state.readers, &state.updater);
            let mut stderr = std::io::stderr().lock();
            // Progress is best-effort: a failed write to the terminal must
            // not end the run.
            let _ = write!(stderr, "\r\x1b[2K{line}");
            let _ = stderr.flush();
            next_progress += PROGRESS_INTERVAL;
        }
        std::thread::sleep((duration - elapsed).min(Duration::from_millis(50)));
    }
    if show_progress {
        let _ = write!(std::io::stderr(), "\r\x1b[2K");
    }
}

/// Returns a seed for the run's random choices, different for each run.
fn time_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    nanos ^ u64::from(std::process::id()) << 32
}

/// A xorshift64* generator: cheap, allocation-free and good enough to vary
/// hold lengths and grace-period kinds.
pub struct Rng(u64);

impl Rng {
    /// Creates a generator; a zero seed is replaced, since xorshift would
    /// stay at zero.
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x2545_f491_4f6c_dd1d
        } else {
            seed
        })
    }

    /// Returns the next pseudo-random number.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}
