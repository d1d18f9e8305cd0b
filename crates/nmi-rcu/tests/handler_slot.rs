//! `HandlerSlot`: publication, retirement and dispatch counts, on real
//! threads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nmi_rcu::{HandlerSlot, Outcome, PreparedHandler};

/// Data captured by a handler; `retired` is set when the handler is
/// dropped, so a dispatch that still calls it afterwards is caught.
struct Witness {
    retired: AtomicBool,
    calls: AtomicU64,
}

impl Witness {
    fn new() -> Arc<Witness> {
        Arc::new(Witness {
            retired: AtomicBool::new(false),
            calls: AtomicU64::new(0),
        })
    }
}

/// Sets `witness.retired` when dropped, that is when the handler holding it
/// is reclaimed.
struct RetireOnDrop(Arc<Witness>);

impl Drop for RetireOnDrop {
    fn drop(&mut self) {
        self.0.retired.store(true, Ordering::SeqCst);
    }
}

fn counting_handler(witness: &Arc<Witness>) -> impl Fn(&u32) -> Outcome + Send + Sync + 'static {
    let guard = RetireOnDrop(Arc::clone(witness));
    move |_| {
        let witness = &guard.0;
        assert!(
            !witness.retired.load(Ordering::SeqCst),
            "a reclaimed handler was called"
        );
        witness.calls.fetch_add(1, Ordering::Relaxed);
        Outcome::Handled
    }
}

#[test]
fn fresh_slot_declines() {
    static SLOT: HandlerSlot<u32> = HandlerSlot::new();
    assert_eq!(SLOT.dispatch(&1), Outcome::NotHandled);
    let mut defaults = 0;
    assert_eq!(SLOT.dispatch_or(&1, |_| defaults += 1), Outcome::NotHandled);
    assert_eq!(defaults, 1);
    assert_eq!(SLOT.dispatch_count(), 2);
    assert!(SLOT.unset().is_default());
}

#[test]
fn set_returns_old_handler_after_grace_period() {
    let slot = HandlerSlot::new();
    let first = Witness::new();
    assert!(slot.set(counting_handler(&first)).is_default());
    assert_eq!(slot.dispatch(&0), Outcome::Handled);

    let second = Witness::new();
    let old = slot.set(counting_handler(&second)).synchronize();
    assert!(old.is_some());
    assert!(
        !first.retired.load(Ordering::SeqCst),
        "synchronize hands the handler back undropped"
    );
    drop(old);
    assert!(first.retired.load(Ordering::SeqCst));

    assert_eq!(slot.dispatch(&0), Outcome::Handled);
    assert_eq!(first.calls.load(Ordering::SeqCst), 1);
    assert_eq!(second.calls.load(Ordering::SeqCst), 1);

    assert!(slot.unset().synchronize().is_some());
    assert!(second.retired.load(Ordering::SeqCst));
    assert_eq!(slot.dispatch(&0), Outcome::NotHandled);
}

#[test]
fn deferred_retirement_reclaims_after_barrier() {
    let slot = HandlerSlot::new();
    let witness = Witness::new();
    slot.set_prepared(PreparedHandler::new(counting_handler(&witness)))
        .defer();
    slot.unset().defer();
    nmi_rcu::barrier();
    assert!(witness.retired.load(Ordering::SeqCst));
}

#[test]
fn per_thread_counts_add_up() {
    static SLOT: HandlerSlot<u32> = HandlerSlot::new();
    // Thread slots are reused after a thread exits, so every thread stays
    // alive until all have checked their own count.
    let all_counted = Arc::new(std::sync::Barrier::new(3));
    let threads: Vec<_> = (0..3u64)
        .map(|index| {
            let all_counted = Arc::clone(&all_counted);
            std::thread::spawn(move || {
                nmi_rcu::register_thread();
                let dispatches = 100 * (index + 1);
                for _ in 0..dispatches {
                    SLOT.dispatch(&0);
                }
                let slot = nmi_rcu::current_thread_slot().expect("a registered thread has a slot");
                assert_eq!(SLOT.thread_dispatch_count(slot), dispatches);
                all_counted.wait();
                dispatches
            })
        })
        .collect();
    let total: u64 = threads
        .into_iter()
        .map(|thread| thread.join().unwrap())
        .sum();

    // A thread the library has never seen is counted apart.
    std::thread::spawn(|| SLOT.dispatch(&0)).join().unwrap();
    assert_eq!(SLOT.dispatch_count(), total + 1);
    assert_eq!(SLOT.unregistered_dispatch_count(), 1);
}

/// Readers dispatch in a loop while the main thread keeps replacing the
/// handler and freeing the old one after a grace period. A reader that
/// called a handler after it was freed would trip the witness assertion.
#[test]
fn replacement_under_concurrent_dispatch() {
    static SLOT: HandlerSlot<u32> = HandlerSlot::new();
    static STOP: AtomicBool = AtomicBool::new(false);
    let readers: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(|| {
                let mut handled = 0u64;
                while !STOP.load(Ordering::Relaxed) {
                    if SLOT.dispatch(&0) == Outcome::Handled {
                        handled += 1;
                    }
                }
                handled
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_millis(500);
    let mut replacements = 0;
    let mut witnesses = Vec::new();
    while Instant::now() < deadline {
        let witness = Witness::new();
        drop(SLOT.set(counting_handler(&witness)).synchronize());
        witnesses.push(witness);
        replacements += 1;
    }
    drop(SLOT.unset().synchronize());
    STOP.store(true, Ordering::Relaxed);
    let handled: u64 = readers
        .into_iter()
        .map(|reader| reader.join().unwrap())
        .sum();

    assert!(replacements > 10, "only {replacements} replacements");
    assert!(witnesses
        .iter()
        .all(|witness| witness.retired.load(Ordering::SeqCst)));
    let calls: u64 = witnesses
        .iter()
        .map(|witness| witness.calls.load(Ordering::SeqCst))
        .sum();
    assert_eq!(calls, handled);
}

/// Data written before `set` is visible to a dispatcher that sees the new
/// handler (the Release/Acquire pairing of publication).
#[test]
fn publication_makes_prior_writes_visible() {
    static SLOT: HandlerSlot<u32> = HandlerSlot::new();
    static STOP: AtomicBool = AtomicBool::new(false);
    let reader = std::thread::spawn(|| {
        let mut seen = 0;
        while !STOP.load(Ordering::Relaxed) {
            if SLOT.dispatch(&0) == Outcome::Handled {
                seen += 1;
            }
        }
        seen
    });

    for generation in 1..=200u64 {
        // Written with Relaxed before publication; the handler checks it.
        let data = Arc::new(AtomicU64::new(0));
        data.store(generation, Ordering::Relaxed);
        let captured = Arc::clone(&data);
        drop(
            SLOT.set(move |_: &u32| {
                assert_eq!(captured.load(Ordering::Relaxed), generation);
                Outcome::Handled
            })
            .synchronize(),
        );
    }
    STOP.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    drop(SLOT.unset().synchronize());
}
