//! Signal-side figures: the cost that `HandlerSlot` and the signal layer
//! add to one signal delivery, and the cost of a register + unregister
//! pair, each against signal-hook-registry.
//!
//! # Method
//!
//! The thread sends itself a signal with `tgkill`, so the handler runs as
//! the system call returns, and times a batch of deliveries. The baseline is
//! an empty `sigaction` handler that only bumps a counter. Every contender
//! owns its own real-time signal, so all of them stay installed for the
//! whole run and their samples can be taken in turns: one sample of each,
//! then the next round. Drift in the machine's speed then hits every
//! contender alike. The added cost of a contender is its median time per
//! delivery minus the baseline's median.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nmi_rcu::signal::{self, Registration, Signal, SignalContext};
use nmi_rcu::{HandlerSlot, Outcome};
use serde::Serialize;

use crate::stats::Summary;

/// Deliveries seen by every benchmark handler, so each handler does the
/// same minimal work: one relaxed atomic add.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// Counts one delivery.
///
/// # Async-signal safety
///
/// Safe: one atomic add, no allocation, no lock.
#[inline(always)]
fn count_delivery() {
    // Relaxed: the count is a checksum read after the deliveries, on the
    // same thread that ran the handlers, so program order suffices.
    DELIVERIES.fetch_add(1, Ordering::Relaxed);
}

/// The slot dispatched from a raw `sigaction` handler.
static SLOT: HandlerSlot<libc::c_int> = HandlerSlot::new();

/// The baseline handler: counts the delivery and returns.
///
/// # Async-signal safety
///
/// Safe: see [`count_delivery`].
extern "C" fn empty_handler(
    _signo: libc::c_int,
    _info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    count_delivery();
}

/// A raw handler that dispatches through [`SLOT`].
///
/// # Async-signal safety
///
/// Safe: `HandlerSlot::dispatch` is async-signal-safe, and the handler in
/// the slot only counts.
extern "C" fn slot_handler(
    signo: libc::c_int,
    _info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    SLOT.dispatch(&signo);
}

/// A contender of the dispatch benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DispatchContender {
    EmptySigaction,
    Slot,
    SignalLayer(usize),
    SignalHookRegistry(usize),
}

impl DispatchContender {
    fn name(self) -> String {
        match self {
            DispatchContender::EmptySigaction => "empty sigaction handler (baseline)".to_owned(),
            DispatchContender::Slot => "HandlerSlot::dispatch in a sigaction handler".to_owned(),
            DispatchContender::SignalLayer(n) => format!("nmi-rcu signal layer, {n} handler(s)"),
            DispatchContender::SignalHookRegistry(n) => {
                format!("signal-hook-registry, {n} action(s)")
            }
        }
    }
}

/// One row of the dispatch table.
#[derive(Clone, Debug, Serialize)]
pub struct DispatchRow {
    /// The contender.
    pub contender: String,
    /// Handlers registered on the contender's signal.
    pub handlers: usize,
    /// Nanoseconds per delivery, one value per sample.
    pub ns_per_delivery: Summary,
    /// Median per delivery minus the baseline's median, in nanoseconds.
    pub added_ns: f64,
    /// `added_ns` as a percentage of the baseline's median.
    pub added_percent: f64,
}

/// Dispatch figures, including `HandlerSlot::dispatch` timed in a plain
/// loop outside any signal handler.
#[derive(Clone, Debug, Serialize)]
pub struct DispatchFigures {
    /// One row per contender; the first is the baseline.
    pub rows: Vec<DispatchRow>,
    /// Nanoseconds per `HandlerSlot::dispatch` in a plain loop.
    pub slot_dispatch_loop_ns: Summary,
}

/// Errors that stop the signal benchmarks.
#[derive(Debug)]
pub enum BenchSignalError {
    /// `sigaction` failed for a raw handler.
    Sigaction {
        /// The signal number.
        signo: libc::c_int,
        /// The error `sigaction` returned.
        error: std::io::Error,
    },
    /// The signal layer rejected a registration.
    Register {
        /// The signal number.
        signo: libc::c_int,
        /// The layer's error.
        error: signal::Error,
    },
    /// signal-hook-registry rejected a registration.
    SignalHook {
        /// The signal number.
        signo: libc::c_int,
        /// The error signal-hook-registry returned.
        error: std::io::Error,
    },
    /// A real-time signal the benchmark needs is out of range here.
    NoSignal(libc::c_int),
}

impl std::fmt::Display for BenchSignalError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchSignalError::Sigaction { signo, error } => {
                write!(f, "sigaction failed for signal {signo}: {error}")
            }
            BenchSignalError::Register { signo, error } => {
                write!(f, "the signal layer rejected signal {signo}: {error}")
            }
            BenchSignalError::SignalHook { signo, error } => {
                write!(f, "signal-hook-registry rejected signal {signo}: {error}")
            }
            BenchSignalError::NoSignal(signo) => write!(
                f,
                "signal {signo} is beyond SIGRTMAX ({}); the benchmark needs 8 real-time signals",
                libc::SIGRTMAX()
            ),
        }
    }
}

impl std::error::Error for BenchSignalError {}

/// Returns the `offset`-th real-time signal above `SIGRTMIN`.
fn rt_signal(offset: libc::c_int) -> Result<libc::c_int, BenchSignalError> {
    let signo = libc::SIGRTMIN() + offset;
    if signo > libc::SIGRTMAX() {
        return Err(BenchSignalError::NoSignal(signo));
    }
    Ok(signo)
}

/// Installs `handler` for `signo` with the flags the signal layer uses.
fn install_raw(
    signo: libc::c_int,
    handler: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void),
) -> Result<(), BenchSignalError> {
    // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no
    // flags), and every field the call reads is set below.
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler as libc::sighandler_t;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_RESTART;
    // SAFETY: `action` is initialised, a null old-action pointer is allowed,
    // and the handler is async-signal-safe (see its documentation).
    let result = unsafe { libc::sigaction(signo, &action, std::ptr::null_mut()) };
    if result != 0 {
        return Err(BenchSignalError::Sigaction {
            signo,
            error: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Sends `signo` to the calling thread; the handler runs before this
/// returns, because the signal is not blocked. Retries while the kernel
/// rejects a real-time signal with `EAGAIN`, which happens while the user's
/// queued signals fill RLIMIT_SIGPENDING (`ulimit -i`), for example during
/// a signal storm in another process of the same user.
fn send_to_self(pid: libc::pid_t, tid: libc::pid_t, signo: libc::c_int) {
    loop {
        // SAFETY: tgkill takes plain integers; the target is this thread.
        let result = unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signo) };
        if result == 0 {
            return;
        }
        let error = std::io::Error::last_os_error();
        assert_eq!(
            error.raw_os_error(),
            Some(libc::EAGAIN),
            "tgkill({signo}) failed: {error}"
        );
        std::thread::yield_now();
    }
}

/// A signal-layer handler that counts and claims the signal.
fn layer_handler(_context: &SignalContext) -> Outcome {
    count_delivery();
    Outcome::Handled
}

/// Names of the signal-layer handlers, so registration does not format.
const HANDLER_NAMES: [&str; 8] = [
    "bench-0", "bench-1", "bench-2", "bench-3", "bench-4", "bench-5", "bench-6", "bench-7",
];

/// Registers `count` counting handlers with the signal layer.
fn register_layer(signo: libc::c_int, count: usize) -> Result<Vec<Registration>, BenchSignalError> {
    let signal = Signal::new(signo).map_err(|error| BenchSignalError::Register { signo, error })?;
    HANDLER_NAMES[..count]
        .iter()
        .map(|name| {
            signal::register(signal, name, layer_handler)
                .map_err(|error| BenchSignalError::Register { signo, error })
        })
        .collect()
}

/// Registers `count` counting actions with signal-hook-registry.
fn register_signal_hook(
    signo: libc::c_int,
    count: usize,
) -> Result<Vec<signal_hook_registry::SigId>, BenchSignalError> {
    (0..count)
        .map(|_| {
            // SAFETY: the action only bumps an atomic counter, which is
            // async-signal-safe, as signal-hook-registry requires.
            unsafe { signal_hook_registry::register(signo, count_delivery) }
                .map_err(|error| BenchSignalError::SignalHook { signo, error })
        })
        .collect()
}

/// Measures the dispatch contenders, `samples` rounds of `deliveries`
/// signals each.
///
/// The handlers stay installed when this returns: signal-hook-registry
/// never uninstalls its handler, and the signal layer's registrations are
/// dropped (deferred) at the end.
pub fn dispatch_figures(
    samples: usize,
    deliveries: usize,
) -> Result<DispatchFigures, BenchSignalError> {
    // Step 1: install every contender on its own signal.
    let _ = SLOT.set(|_signo: &libc::c_int| {
        count_delivery();
        Outcome::Handled
    });
    let contenders = [
        DispatchContender::EmptySigaction,
        DispatchContender::Slot,
        DispatchContender::SignalLayer(1),
        DispatchContender::SignalLayer(8),
        DispatchContender::SignalHookRegistry(1),
        DispatchContender::SignalHookRegistry(8),
    ];
    let mut signals = Vec::new();
    let mut layer_registrations = Vec::new();
    for (offset, contender) in (1..).zip(contenders) {
        let signo = rt_signal(offset)?;
        match contender {
            DispatchContender::EmptySigaction => install_raw(signo, empty_handler)?,
            DispatchContender::Slot => install_raw(signo, slot_handler)?,
            DispatchContender::SignalLayer(n) => {
                layer_registrations.extend(register_layer(signo, n)?)
            }
            DispatchContender::SignalHookRegistry(n) => drop(register_signal_hook(signo, n)?),
        }
        signals.push(signo);
    }

    // Step 2: warm up, then take the samples in turns.
    // SAFETY: getpid and gettid take no arguments and are always
    // successful (see their manual pages).
    let (pid, tid) = unsafe { (libc::getpid(), libc::gettid()) };
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(samples); contenders.len()];
    for round in 0..=samples {
        for (index, &signo) in signals.iter().enumerate() {
            let start = Instant::now();
            for _ in 0..deliveries {
                send_to_self(pid, tid, signo);
            }
            let ns = start.elapsed().as_nanos() as f64 / deliveries as f64;
            if round > 0 {
                times[index].push(ns);
            }
        }
    }
    drop(layer_registrations);

    // Step 3: summarize against the baseline.
    let summaries: Vec<Summary> = times.iter_mut().map(|ns| Summary::of(ns)).collect();
    let baseline = summaries[0].p50;
    let rows = contenders
        .iter()
        .zip(&summaries)
        .map(|(contender, summary)| DispatchRow {
            contender: contender.name(),
            handlers: match contender {
                DispatchContender::SignalLayer(n) | DispatchContender::SignalHookRegistry(n) => *n,
                _ => 1,
            },
            ns_per_delivery: *summary,
            added_ns: summary.p50 - baseline,
            added_percent: (summary.p50 - baseline) / baseline * 100.0,
        })
        .collect();

    Ok(DispatchFigures {
        rows,
        slot_dispatch_loop_ns: slot_dispatch_loop(samples),
    })
}

/// Times `HandlerSlot::dispatch` in a plain loop, in nanoseconds per call.
fn slot_dispatch_loop(samples: usize) -> Summary {
    const CALLS: u64 = 100_000;
    let mut ns: Vec<f64> = (0..samples.max(1))
        .map(|_| {
            let start = Instant::now();
            for signo in 0..CALLS {
                std::hint::black_box(SLOT.dispatch(std::hint::black_box(&(signo as libc::c_int))));
            }
            start.elapsed().as_nanos() as f64 / CALLS as f64
        })
        .collect();
    Summary::of(&mut ns)
}

/// One row of the registration table.
#[derive(Clone, Debug, Serialize)]
pub struct RegistrationRow {
    /// The contender and how it unregisters.
    pub contender: String,
    /// Nanoseconds per register + unregister pair, one value per sample.
    pub ns_per_pair: Summary,
}

/// Measures register + unregister pairs: the signal layer with blocking
/// and with deferred unregistration, and signal-hook-registry, `samples`
/// rounds of `pairs` pairs each.
///
/// Each signal keeps one other registration for the whole measurement, so
/// the pairs measure the steady state and never install or restore the
/// process-wide `sigaction`.
pub fn registration_figures(
    samples: usize,
    pairs: usize,
) -> Result<Vec<RegistrationRow>, BenchSignalError> {
    let layer_signo = rt_signal(7)?;
    let hook_signo = rt_signal(8)?;
    let layer_signal = Signal::new(layer_signo).map_err(|error| BenchSignalError::Register {
        signo: layer_signo,
        error,
    })?;
    let register_pair = |name| {
        signal::register(layer_signal, name, layer_handler).map_err(|error| {
            BenchSignalError::Register {
                signo: layer_signo,
                error,
            }
        })
    };
    let _anchor = register_pair("anchor")?;
    let _hook_anchor = register_signal_hook(hook_signo, 1)?;

    let mut blocking = Vec::with_capacity(samples);
    let mut deferred = Vec::with_capacity(samples);
    let mut hook = Vec::with_capacity(samples);
    for round in 0..=samples {
        let start = Instant::now();
        for _ in 0..pairs {
            register_pair("pair")?
                .unregister()
                .map_err(|error| BenchSignalError::Register {
                    signo: layer_signo,
                    error,
                })?;
        }
        let blocking_ns = start.elapsed().as_nanos() as f64 / pairs as f64;

        let start = Instant::now();
        for _ in 0..pairs {
            drop(register_pair("pair")?);
        }
        let deferred_ns = start.elapsed().as_nanos() as f64 / pairs as f64;

        let start = Instant::now();
        for _ in 0..pairs {
            // SAFETY: as in `register_signal_hook`, the action only counts.
            let id = unsafe { signal_hook_registry::register(hook_signo, count_delivery) }
                .map_err(|error| BenchSignalError::SignalHook {
                    signo: hook_signo,
                    error,
                })?;
            signal_hook_registry::unregister(id);
        }
        let hook_ns = start.elapsed().as_nanos() as f64 / pairs as f64;

        if round > 0 {
            blocking.push(blocking_ns);
            deferred.push(deferred_ns);
            hook.push(hook_ns);
        }
    }

    Ok(vec![
        RegistrationRow {
            contender: "nmi-rcu signal layer, blocking unregister".to_owned(),
            ns_per_pair: Summary::of(&mut blocking),
        },
        RegistrationRow {
            contender: "nmi-rcu signal layer, deferred unregister (drop)".to_owned(),
            ns_per_pair: Summary::of(&mut deferred),
        },
        RegistrationRow {
            contender: "signal-hook-registry".to_owned(),
            ns_per_pair: Summary::of(&mut hook),
        },
    ])
}
