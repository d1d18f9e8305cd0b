//! `HandlerRegistry`: nmi.c semantics, statistics and the watchdog.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nmi_rcu::{HandlerError, HandlerRegistry, Order, Outcome, DEFAULT_WATCHDOG_THRESHOLD};

fn handled(_: &u32) -> Outcome {
    Outcome::Handled
}

fn declined(_: &u32) -> Outcome {
    Outcome::NotHandled
}

fn names(registry: &HandlerRegistry<u32>) -> Vec<String> {
    registry
        .stats()
        .into_iter()
        .map(|stats| stats.name)
        .collect()
}

#[test]
fn duplicate_name_is_rejected() {
    let registry = HandlerRegistry::new();
    registry.register("probe", Order::Last, handled).unwrap();
    let error = registry
        .register("probe", Order::First, declined)
        .unwrap_err();
    assert_eq!(
        error,
        HandlerError::DuplicateName {
            name: "probe".into()
        }
    );
    assert!(error.to_string().contains("\"probe\""), "{error}");
    assert_eq!(names(&registry), ["probe"]);
    assert_eq!(
        registry.dispatch(&0),
        1,
        "the first handler is still the one called"
    );
}

#[test]
fn unknown_name_cannot_be_unregistered() {
    let registry = HandlerRegistry::<u32>::new();
    let expected = HandlerError::NotRegistered {
        name: "ghost".into(),
    };
    assert_eq!(registry.unregister("ghost"), Err(expected.clone()));
    assert_eq!(registry.unregister_deferred("ghost"), Err(expected));
}

#[test]
fn first_flag_and_order() {
    let registry = HandlerRegistry::new();
    registry.register("b", Order::Last, declined).unwrap();
    registry.register("c", Order::Last, declined).unwrap();
    registry.register("a", Order::First, declined).unwrap();
    registry.register("first", Order::First, declined).unwrap();
    assert_eq!(names(&registry), ["first", "a", "b", "c"]);
    assert_eq!(registry.stats()[0].order, Order::First);
    assert_eq!(registry.len(), 4);
    assert!(registry.contains("a"));
    registry.unregister("a").unwrap();
    assert!(!registry.contains("a"));
    assert_eq!(names(&registry), ["first", "b", "c"]);
}

#[test]
fn dispatch_sums_handled_and_runs_default_only_on_zero() {
    let registry = HandlerRegistry::new();
    registry
        .register("even", Order::Last, |n: &u32| {
            if n.is_multiple_of(2) {
                Outcome::Handled
            } else {
                Outcome::NotHandled
            }
        })
        .unwrap();
    registry
        .register("small", Order::Last, |n: &u32| {
            if *n < 10 {
                Outcome::Handled
            } else {
                Outcome::NotHandled
            }
        })
        .unwrap();
    registry.register("never", Order::Last, declined).unwrap();

    let mut defaults = Vec::new();
    assert_eq!(registry.dispatch_or(&4, |n| defaults.push(*n)), 2);
    assert_eq!(registry.dispatch_or(&7, |n| defaults.push(*n)), 1);
    assert_eq!(registry.dispatch_or(&12, |n| defaults.push(*n)), 1);
    assert_eq!(registry.dispatch_or(&13, |n| defaults.push(*n)), 0);
    assert_eq!(
        defaults,
        [13],
        "the default action runs only when nobody handled"
    );

    let stats = registry.stats();
    assert_eq!((stats[0].calls, stats[0].handled), (4, 2));
    assert_eq!((stats[1].calls, stats[1].handled), (4, 2));
    assert_eq!((stats[2].calls, stats[2].handled), (4, 0));
    assert_eq!(registry.dispatch_count(), 4);
}

#[test]
fn empty_registry_runs_default() {
    let registry = HandlerRegistry::<u32>::new();
    let mut ran = false;
    assert_eq!(registry.dispatch_or(&0, |_| ran = true), 0);
    assert!(ran);
    assert!(registry.is_empty());
}

#[test]
fn blocking_unregister_drops_handler_before_returning() {
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let registry = HandlerRegistry::<u32>::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let flag = DropFlag(Arc::clone(&dropped));
    registry
        .register("owner", Order::Last, move |_| {
            let _ = &flag;
            Outcome::Handled
        })
        .unwrap();
    // Later updates leave older arrays holding the handler on the
    // reclaimer's queue; the blocking unregister must still drop it.
    registry.register("other", Order::Last, declined).unwrap();
    registry.dispatch(&0);

    let stats = registry.unregister("owner").unwrap();
    assert!(
        dropped.load(Ordering::SeqCst),
        "the handler outlived its blocking unregister"
    );
    assert_eq!((stats.calls, stats.handled), (1, 1));
}

#[test]
fn name_can_be_registered_again() {
    let registry = HandlerRegistry::new();
    registry.register("again", Order::Last, handled).unwrap();
    registry.unregister("again").unwrap();
    registry.register("again", Order::Last, declined).unwrap();
    registry.unregister_deferred("again").unwrap();
    registry.register("again", Order::First, handled).unwrap();
    assert_eq!(registry.dispatch(&0), 1);
    let stats = registry.stats();
    assert_eq!(
        stats[0].calls, 1,
        "a re-registered name starts with fresh statistics"
    );
}

/// Dispatchers walk the list while another thread registers and
/// unregisters handlers; every call must reach a live handler, and the
/// always-present handler sees every dispatch.
#[test]
fn updates_under_concurrent_dispatch() {
    static REGISTRY: HandlerRegistry<u32> = HandlerRegistry::new();
    static STOP: AtomicBool = AtomicBool::new(false);
    static ANCHOR_CALLS: AtomicU64 = AtomicU64::new(0);
    REGISTRY
        .register("anchor", Order::Last, |_| {
            ANCHOR_CALLS.fetch_add(1, Ordering::Relaxed);
            Outcome::Handled
        })
        .unwrap();

    let dispatchers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let mut dispatches = 0u64;
                while !STOP.load(Ordering::Relaxed) {
                    assert!(REGISTRY.dispatch(&0) >= 1);
                    dispatches += 1;
                }
                dispatches
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_millis(500);
    let mut round = 0u64;
    while Instant::now() < deadline {
        let alive = Arc::new(AtomicBool::new(true));
        let checked = Arc::clone(&alive);
        let name = format!("transient-{round}");
        let order = if round.is_multiple_of(2) {
            Order::First
        } else {
            Order::Last
        };
        REGISTRY
            .register(&name, order, move |_| {
                assert!(
                    checked.load(Ordering::SeqCst),
                    "a removed handler was called after its grace period"
                );
                Outcome::NotHandled
            })
            .unwrap();
        if round.is_multiple_of(2) {
            REGISTRY.unregister(&name).unwrap();
            alive.store(false, Ordering::SeqCst);
        } else {
            REGISTRY.unregister_deferred(&name).unwrap();
        }
        round += 1;
    }
    STOP.store(true, Ordering::Relaxed);
    let dispatches: u64 = dispatchers
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .sum();
    assert!(round > 10, "only {round} update rounds");
    assert_eq!(ANCHOR_CALLS.load(Ordering::SeqCst), dispatches);
    assert_eq!(REGISTRY.dispatch_count(), dispatches);
}

/// A logger that keeps every warning.
struct CapturingLogger {
    warnings: Mutex<Vec<String>>,
}

impl log::Log for CapturingLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if record.level() <= log::Level::Warn {
            self.warnings
                .lock()
                .unwrap()
                .push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

fn warnings_mentioning(name: &str) -> Vec<String> {
    static LOGGER: OnceLock<&'static CapturingLogger> = OnceLock::new();
    let logger = LOGGER.get_or_init(|| {
        let logger = Box::leak(Box::new(CapturingLogger {
            warnings: Mutex::new(Vec::new()),
        }));
        log::set_logger(logger).expect("no other logger in this test binary");
        log::set_max_level(log::LevelFilter::Warn);
        logger
    });
    logger
        .warnings
        .lock()
        .unwrap()
        .iter()
        .filter(|warning| warning.contains(name))
        .cloned()
        .collect()
}

#[test]
fn watchdog_warns_once_per_new_maximum() {
    warnings_mentioning("");
    let registry = HandlerRegistry::<u32>::new();
    assert_eq!(registry.watchdog_threshold(), DEFAULT_WATCHDOG_THRESHOLD);
    registry.set_watchdog_threshold(Duration::from_micros(200));
    // The event is the sleep in milliseconds.
    registry
        .register("sleepy", Order::Last, |millis: &u32| {
            std::thread::sleep(Duration::from_millis(u64::from(*millis)));
            Outcome::Handled
        })
        .unwrap();

    // Fast calls stay quiet.
    registry.dispatch(&0);
    registry.report_slow_handlers();
    assert!(warnings_mentioning("sleepy").is_empty());

    // The first slow call is reported once.
    registry.dispatch(&2);
    registry.report_slow_handlers();
    registry.report_slow_handlers();
    let warnings = warnings_mentioning("sleepy");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("\"sleepy\""), "{}", warnings[0]);
    assert!(
        warnings[0].contains("over the watchdog threshold of 200µs"),
        "{}",
        warnings[0]
    );

    // A shorter slow call is no new maximum.
    registry.dispatch(&1);
    registry.report_slow_handlers();
    assert_eq!(warnings_mentioning("sleepy").len(), 1);

    // A new maximum within the rate limit waits, then is reported. It is far
    // above the first slow call, because a 2 ms sleep can overshoot by
    // several milliseconds on a loaded machine (seen under the sanitizers).
    registry.dispatch(&40);
    registry.report_slow_handlers();
    assert_eq!(warnings_mentioning("sleepy").len(), 1, "rate limit ignored");
    std::thread::sleep(Duration::from_millis(1100));
    registry.report_slow_handlers();
    let warnings = warnings_mentioning("sleepy");
    assert_eq!(warnings.len(), 2, "{warnings:?}");

    let stats = registry.stats();
    assert!(stats[0].max_duration >= Duration::from_millis(40));
    assert_eq!(stats[0].calls, 4);
}
