//! A property-based test: random sequences of update-side and read-side
//! operations, run from several threads at once against one cell, one
//! handler slot and one handler registry.
//!
//! Every value the operations create (cell values, handler data, callback
//! payloads) is a [`Tracked`] with a unique id, whose drop is recorded in a
//! per-case [`Tracker`]. The properties:
//!
//! - no value is dropped while a guard that saw it is alive: a reader
//!   checks the value it dereferenced after yielding inside its section,
//!   and a handler checks its own data each time it is dispatched;
//! - every queued callback runs exactly once, and `barrier` returns only
//!   after the calling thread's earlier callbacks have run;
//! - every value is dropped exactly once by the end of the case, after the
//!   last grace period and `barrier`;
//! - register and unregister return the results that the thread's own
//!   names predict (each thread registers names of its own).
//!
//! Interleavings come from the scheduler, so a failing case may not fail
//! again when proptest shrinks it; the printed sequence still shows what
//! ran.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use nmi_rcu::{HandlerError, HandlerRegistry, HandlerSlot, Order, Outcome, RcuCell};
use proptest::prelude::*;

/// Ids a case may hand out; far more than the operations can create.
const MAX_IDS: usize = 4096;

const NOT_CREATED: u8 = 0;
const ALIVE: u8 = 1;
const DROPPED: u8 = 2;

/// The life of every [`Tracked`] value of one case, by id.
struct Tracker {
    states: Vec<AtomicU8>,
    next_id: AtomicUsize,
    /// Whether each id is a callback's payload.
    is_callback: Vec<AtomicBool>,
    /// Runs of each callback, by the callback's id.
    callback_runs: Vec<AtomicU32>,
    /// Property violations, described for the failure message.
    violations: Mutex<Vec<String>>,
}

impl Tracker {
    fn new() -> Arc<Tracker> {
        Arc::new(Tracker {
            states: (0..MAX_IDS).map(|_| AtomicU8::new(NOT_CREATED)).collect(),
            next_id: AtomicUsize::new(0),
            is_callback: (0..MAX_IDS).map(|_| AtomicBool::new(false)).collect(),
            callback_runs: (0..MAX_IDS).map(|_| AtomicU32::new(0)).collect(),
            violations: Mutex::new(Vec::new()),
        })
    }

    fn violation(&self, message: String) {
        self.violations.lock().unwrap().push(message);
    }

    fn is_alive(&self, id: usize) -> bool {
        self.states[id].load(Ordering::SeqCst) == ALIVE
    }
}

/// A value whose drop is recorded in its [`Tracker`].
struct Tracked {
    id: usize,
    tracker: Arc<Tracker>,
}

impl Tracked {
    fn new(tracker: &Arc<Tracker>) -> Tracked {
        let id = tracker.next_id.fetch_add(1, Ordering::SeqCst);
        assert!(id < MAX_IDS, "the case created more than {MAX_IDS} values");
        tracker.states[id].store(ALIVE, Ordering::SeqCst);
        Tracked {
            id,
            tracker: tracker.clone(),
        }
    }

    /// Records a violation unless this value is still alive.
    fn check_alive(&self, what: &str) {
        if !self.tracker.is_alive(self.id) {
            self.tracker
                .violation(format!("{what}: value {} was already dropped", self.id));
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        let previous = self.tracker.states[self.id].swap(DROPPED, Ordering::SeqCst);
        if previous != ALIVE {
            self.tracker
                .violation(format!("value {} dropped twice", self.id));
        }
    }
}

/// One operation of one thread.
#[derive(Clone, Debug)]
enum Op {
    /// Registers this thread's handler `name` in the registry.
    Register(u8),
    /// Unregisters this thread's handler `name`, blocking or deferred.
    Unregister {
        name: u8,
        blocking: bool,
    },
    /// Sets a new handler in the slot; the old one is synchronized or
    /// deferred.
    Set {
        blocking: bool,
    },
    /// Unsets the slot.
    Unset {
        blocking: bool,
    },
    /// Replaces the cell's value.
    Replace {
        blocking: bool,
    },
    Synchronize,
    CallRcu,
    Barrier,
    /// Reads the cell and dispatches the slot and the registry inside one
    /// section, yielding `yields` times before checking again.
    Read {
        yields: u8,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::Register),
        (0u8..4, any::<bool>()).prop_map(|(name, blocking)| Op::Unregister { name, blocking }),
        any::<bool>().prop_map(|blocking| Op::Set { blocking }),
        any::<bool>().prop_map(|blocking| Op::Unset { blocking }),
        any::<bool>().prop_map(|blocking| Op::Replace { blocking }),
        Just(Op::Synchronize),
        Just(Op::CallRcu),
        Just(Op::Barrier),
        (0u8..8).prop_map(|yields| Op::Read { yields }),
    ]
}

/// Everything the threads of one case share.
struct Shared {
    tracker: Arc<Tracker>,
    cell: RcuCell<Tracked>,
    slot: HandlerSlot<u32>,
    registry: HandlerRegistry<u32>,
}

/// Returns a handler that checks its captured data on every dispatch.
fn checking_handler(data: Tracked) -> impl Fn(&u32) -> Outcome + Send + Sync + 'static {
    move |_| {
        data.check_alive("a dispatched handler's data");
        Outcome::Handled
    }
}

/// Runs one thread's operations. `thread` names its registry handlers.
fn run_thread(shared: &Shared, thread: usize, ops: &[Op]) {
    let tracker = &shared.tracker;
    let mut registered = [false; 4];
    let mut own_callbacks = Vec::new();

    for op in ops {
        match *op {
            Op::Register(name) => {
                let label = format!("t{thread}-{name}");
                let handler = checking_handler(Tracked::new(tracker));
                let result = shared.registry.register(&label, Order::Last, handler);
                let expected = if registered[name as usize] {
                    Err(HandlerError::DuplicateName { name: label })
                } else {
                    Ok(())
                };
                if result != expected {
                    tracker.violation(format!(
                        "register returned {result:?}, expected {expected:?}"
                    ));
                }
                registered[name as usize] = true;
            }
            Op::Unregister { name, blocking } => {
                let label = format!("t{thread}-{name}");
                let outcome = if blocking {
                    shared.registry.unregister(&label).map(drop)
                } else {
                    shared.registry.unregister_deferred(&label).map(drop)
                };
                let expected = if registered[name as usize] {
                    Ok(())
                } else {
                    Err(HandlerError::NotRegistered { name: label })
                };
                if outcome != expected {
                    tracker.violation(format!(
                        "unregister returned {outcome:?}, expected {expected:?}"
                    ));
                }
                registered[name as usize] = false;
            }
            Op::Set { blocking } => {
                let retired = shared.slot.set(checking_handler(Tracked::new(tracker)));
                if blocking {
                    drop(retired.synchronize());
                } else {
                    retired.defer();
                }
            }
            Op::Unset { blocking } => {
                let retired = shared.slot.unset();
                if blocking {
                    drop(retired.synchronize());
                } else {
                    retired.defer();
                }
            }
            Op::Replace { blocking } => {
                let retired = shared.cell.replace(Tracked::new(tracker));
                if blocking {
                    drop(retired.synchronize());
                } else {
                    retired.defer();
                }
            }
            Op::Synchronize => nmi_rcu::synchronize(),
            Op::CallRcu => {
                let payload = Tracked::new(tracker);
                tracker.is_callback[payload.id].store(true, Ordering::SeqCst);
                own_callbacks.push(payload.id);
                nmi_rcu::call_rcu(move || {
                    payload.check_alive("a callback's payload");
                    payload.tracker.callback_runs[payload.id].fetch_add(1, Ordering::SeqCst);
                });
            }
            Op::Barrier => {
                nmi_rcu::barrier();
                for &id in &own_callbacks {
                    let runs = tracker.callback_runs[id].load(Ordering::SeqCst);
                    if runs != 1 {
                        tracker.violation(format!(
                            "after barrier, callback {id} had run {runs} times"
                        ));
                    }
                }
            }
            Op::Read { yields } => {
                let guard = nmi_rcu::read_lock();
                let value = shared.cell.read(&guard);
                value.check_alive("a value read under a guard");
                shared.slot.dispatch(&0);
                shared.registry.dispatch(&0);
                for _ in 0..yields {
                    thread::yield_now();
                }
                value.check_alive("a value still under its guard");
                drop(guard);
            }
        }
    }

    // Leave the registry as the thread found it.
    for (name, registered) in registered.iter().enumerate() {
        if *registered {
            let label = format!("t{thread}-{name}");
            if let Err(error) = shared.registry.unregister(&label) {
                tracker.violation(format!("final unregister: {error}"));
            }
        }
    }
}

/// Runs one case: the threads' operations at once, then the end-of-case
/// checks. Returns the violations found.
fn run_case(threads: &[Vec<Op>]) -> Vec<String> {
    let tracker = Tracker::new();
    let shared = Arc::new(Shared {
        tracker: tracker.clone(),
        cell: RcuCell::new(Tracked::new(&tracker)),
        slot: HandlerSlot::new(),
        registry: HandlerRegistry::new(),
    });

    let start = Arc::new(Barrier::new(threads.len()));
    let handles: Vec<_> = threads
        .iter()
        .cloned()
        .enumerate()
        .map(|(index, ops)| {
            let shared = shared.clone();
            let start = start.clone();
            thread::spawn(move || {
                nmi_rcu::register_thread();
                start.wait();
                run_thread(&shared, index, &ops);
            })
        })
        .collect();
    let panicked = AtomicBool::new(false);
    for handle in handles {
        if handle.join().is_err() {
            panicked.store(true, Ordering::SeqCst);
        }
    }

    // Retire what is left, then wait for every callback and retired value.
    drop(shared.slot.unset().synchronize());
    drop(Arc::into_inner(shared).expect("every thread has dropped its handle"));
    nmi_rcu::barrier();

    let mut violations = std::mem::take(&mut *tracker.violations.lock().unwrap());
    if panicked.load(Ordering::SeqCst) {
        violations.push("a thread panicked".into());
    }
    let created = tracker.next_id.load(Ordering::SeqCst);
    for id in 0..created {
        if tracker.states[id].load(Ordering::SeqCst) != DROPPED {
            violations.push(format!("value {id} was never dropped"));
        }
        let runs = tracker.callback_runs[id].load(Ordering::SeqCst);
        if tracker.is_callback[id].load(Ordering::SeqCst) && runs != 1 {
            violations.push(format!("callback {id} ran {runs} times"));
        }
    }
    violations
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Each case spawns threads and runs grace periods; 64 cases keep
        // the test to a few seconds.
        cases: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_operations_keep_rcu_properties(
        threads in prop::collection::vec(prop::collection::vec(op(), 1..24), 2..4)
    ) {
        let violations = run_case(&threads);
        prop_assert!(violations.is_empty(), "violations: {violations:#?}");
    }
}
