//! Grace periods, polling, reclamation and misuse checks on real threads.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use nmi_rcu::{Domain, NmiContext, RcuCell};

/// Long enough for a grace period that should be blocked to have finished
/// many times over if it were not blocked.
const BLOCKED_FOR: Duration = Duration::from_millis(200);

/// Spawns a thread that holds a section of `domain` until told to drop it.
fn hold_section(domain: Domain, register: bool) -> (mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let handle = thread::spawn(move || {
        if register {
            nmi_rcu::register_thread();
        }
        let guard = domain.read_lock();
        assert_eq!(guard.is_fast_path(), register);
        entered_tx.send(()).unwrap();
        release_rx.recv().unwrap();
        drop(guard);
    });
    entered_rx.recv().unwrap();
    (release_tx, handle)
}

fn synchronize_waits_for_older_guard(register: bool) {
    let domain = Domain::new();
    domain.synchronize(); // assigns the id, so the registered path is used
    let (release, reader) = hold_section(domain.clone(), register);

    let finished = Arc::new(AtomicBool::new(false));
    let updater = {
        let domain = domain.clone();
        let finished = finished.clone();
        thread::spawn(move || {
            domain.synchronize();
            finished.store(true, Ordering::SeqCst);
        })
    };
    thread::sleep(BLOCKED_FOR);
    assert!(
        !finished.load(Ordering::SeqCst),
        "synchronize returned while an older guard was held"
    );

    release.send(()).unwrap();
    updater.join().unwrap();
    assert!(finished.load(Ordering::SeqCst));
    reader.join().unwrap();
}

#[test]
fn synchronize_waits_for_registered_reader() {
    synchronize_waits_for_older_guard(true);
}

#[test]
fn synchronize_waits_for_unregistered_reader() {
    synchronize_waits_for_older_guard(false);
}

#[test]
fn synchronize_ignores_newer_guards() {
    // Readers that start sections back to back: a grace period that waited
    // for sections beginning after it would never end. The unregistered
    // reader even overlaps consecutive sections, which the fallback path
    // tracks separately. (On the registered path overlapping sections of one
    // thread are one long section, as in the kernel.)
    let domain = Domain::new();
    domain.synchronize();
    let stop = Arc::new(AtomicBool::new(false));
    let registered = {
        let domain = domain.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            nmi_rcu::register_thread();
            while !stop.load(Ordering::Relaxed) {
                let guard = domain.read_lock();
                assert!(guard.is_fast_path());
                std::hint::black_box(&guard);
            }
        })
    };
    let unregistered = {
        let domain = domain.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            let mut held = Some(domain.read_lock());
            while !stop.load(Ordering::Relaxed) {
                let next = domain.read_lock();
                assert!(!next.is_fast_path());
                drop(held.replace(next));
            }
        })
    };

    thread::sleep(Duration::from_millis(20));
    for _ in 0..20 {
        domain.synchronize();
    }
    stop.store(true, Ordering::Relaxed);
    registered.join().unwrap();
    unregistered.join().unwrap();
    assert!(domain.stats().grace_periods >= 20);
}

#[test]
fn concurrent_updaters_share_grace_periods() {
    let domain = Domain::new();
    let cell = Arc::new(RcuCell::new_in(0u64, &domain));
    // A reader with short sleeping sections makes every grace period last
    // long enough for updaters to queue up behind it, even on one core.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let domain = domain.clone();
        let stop = stop.clone();
        thread::spawn(move || {
            nmi_rcu::register_thread();
            while !stop.load(Ordering::Relaxed) {
                let _guard = domain.read_lock();
                thread::sleep(Duration::from_micros(100));
            }
        })
    };
    let updaters = 8;
    let rounds = 50;
    let start = Arc::new(Barrier::new(updaters));
    let handles: Vec<_> = (0..updaters)
        .map(|_| {
            let cell = cell.clone();
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for round in 0..rounds {
                    let old = cell.replace(round);
                    old.synchronize();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let grace_periods = domain.stats().grace_periods;
    assert!(
        grace_periods >= rounds,
        "each updater needs its own grace periods"
    );
    assert!(
        grace_periods < updaters as u64 * rounds,
        "no grace period was shared: {grace_periods} for {} calls",
        updaters as u64 * rounds
    );
}

#[test]
fn domains_do_not_delay_each_other() {
    let blocked = Domain::new();
    blocked.synchronize();
    let (release, reader) = hold_section(blocked.clone(), true);

    let other = Domain::new();
    let started = Instant::now();
    other.synchronize();
    nmi_rcu::synchronize();
    assert!(started.elapsed() < Duration::from_secs(5));

    release.send(()).unwrap();
    reader.join().unwrap();
    blocked.synchronize();
}

#[test]
fn polled_grace_period_completes_after_older_guard() {
    let domain = Domain::new();
    domain.synchronize();
    let (release, reader) = hold_section(domain.clone(), true);

    let token = domain.start_poll();
    thread::sleep(BLOCKED_FOR);
    assert!(
        !domain.poll_state(&token),
        "poll_state reported the grace period over while an older guard was held"
    );

    release.send(()).unwrap();
    reader.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !domain.poll_state(&token) {
        assert!(
            Instant::now() < deadline,
            "the reclaimer never completed the polled grace period"
        );
        thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn call_rcu_runs_in_order_before_barrier_returns() {
    let domain = Domain::new();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    for i in 0..1000 {
        let order = order.clone();
        domain.call_rcu(move || order.lock().unwrap().push(i));
    }
    domain.barrier();
    let order = order.lock().unwrap();
    assert_eq!(order.len(), 1000);
    assert!(
        order.windows(2).all(|pair| pair[0] < pair[1]),
        "callbacks ran out of order"
    );
    let stats = domain.stats();
    assert!(stats.callbacks_run >= 1000);
    assert!(stats.grace_periods < 1000, "callbacks were not batched");
}

#[test]
fn call_rcu_waits_for_older_guard() {
    let domain = Domain::new();
    domain.synchronize();
    let (release, reader) = hold_section(domain.clone(), true);
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    domain.call_rcu(move || flag.store(true, Ordering::SeqCst));
    thread::sleep(BLOCKED_FOR);
    assert!(
        !ran.load(Ordering::SeqCst),
        "a callback ran while an older guard was held"
    );
    release.send(()).unwrap();
    reader.join().unwrap();
    domain.barrier();
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn call_rcu_flood_keeps_backlog_bounded() {
    let domain = Domain::new();
    domain.set_backlog_limit(2_000);
    let run = Arc::new(AtomicU64::new(0));
    for _ in 0..50_000 {
        let run = run.clone();
        domain.call_rcu(move || {
            run.fetch_add(1, Ordering::Relaxed);
        });
    }
    domain.barrier();
    let stats = domain.stats();
    assert_eq!(run.load(Ordering::Relaxed), 50_000);
    assert!(
        stats.peak_backlog <= 2_000 + 64,
        "peak backlog {} passed the limit",
        stats.peak_backlog
    );
}

#[test]
fn retired_value_is_dropped_after_grace_period() {
    struct Tracked(Arc<AtomicUsize>);
    impl Drop for Tracked {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = RcuCell::new(Tracked(drops.clone()));
    let guard = nmi_rcu::read_lock();
    let old = cell.read(&guard);
    cell.replace(Tracked(drops.clone())).defer();
    thread::sleep(Duration::from_millis(50));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "a retired value was dropped while a reader held it"
    );
    assert!(Arc::ptr_eq(&old.0, &drops));
    drop(guard);
    nmi_rcu::barrier();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop(cell);
    nmi_rcu::barrier();
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn exited_registered_thread_does_not_delay_grace_periods() {
    let domain = Domain::new();
    domain.synchronize();
    for _ in 0..32 {
        let domain = domain.clone();
        thread::spawn(move || {
            nmi_rcu::register_thread();
            let _guard = domain.read_lock();
        })
        .join()
        .unwrap();
    }
    let started = Instant::now();
    domain.synchronize();
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[test]
fn thread_exiting_with_forgotten_guard_does_not_block_forever() {
    let domain = Domain::new();
    domain.synchronize();
    let reader_domain = domain.clone();
    thread::spawn(move || {
        nmi_rcu::register_thread();
        std::mem::forget(reader_domain.read_lock());
    })
    .join()
    .unwrap();
    // The slot was abandoned when the thread exited; grace periods skip it.
    domain.synchronize();
}

#[test]
fn many_registered_threads_still_complete_grace_periods() {
    let threads = 1000;
    let start = Arc::new(Barrier::new(threads + 1));
    let stop = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let start = start.clone();
            let stop = stop.clone();
            thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    nmi_rcu::register_thread();
                    drop(nmi_rcu::read_lock());
                    start.wait();
                    stop.wait();
                })
                .unwrap()
        })
        .collect();
    start.wait();
    for _ in 0..10 {
        nmi_rcu::synchronize();
    }
    stop.wait();
    for handle in handles {
        handle.join().unwrap();
    }
}

fn panic_message(result: std::thread::Result<()>) -> String {
    let payload = result.expect_err("the call should have panicked");
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

#[test]
fn synchronize_inside_section_panics_with_call_name() {
    let result = thread::spawn(|| {
        let _guard = nmi_rcu::read_lock();
        nmi_rcu::synchronize();
    })
    .join();
    let message = panic_message(result);
    assert!(message.contains("synchronize()"), "{message}");
    assert!(message.contains("read-side critical section"), "{message}");
}

#[test]
fn barrier_inside_unregistered_section_panics() {
    let result = thread::spawn(|| {
        let guard = nmi_rcu::read_lock();
        assert!(!guard.is_fast_path());
        nmi_rcu::barrier();
    })
    .join();
    assert!(panic_message(result).contains("barrier()"));
}

#[test]
fn retired_synchronize_in_nmi_context_panics() {
    let result = thread::spawn(|| {
        let cell = RcuCell::new(1);
        let retired = cell.replace(2);
        let _context = NmiContext::enter();
        retired.synchronize();
    })
    .join();
    let message = panic_message(result);
    assert!(message.contains("synchronize()"), "{message}");
    assert!(message.contains("NMI context"), "{message}");
}

#[test]
fn synchronize_in_other_domain_section_is_allowed() {
    let other = Domain::new();
    other.synchronize();
    let _guard = other.read_lock();
    nmi_rcu::synchronize();
}
