//! Models of deferred reclamation: `call_rcu`, `barrier` and the
//! reclaimer's sleep and wake-up.
//!
//! The production queue (`reclaim.rs`) is an intrusive stack of heap nodes
//! that is not compiled under loom. Here it is restated over loom atomics:
//!
//! - a node is an index into a fixed array; `head` holds the top index plus
//!   one (zero is empty) where production holds a pointer;
//! - each node's link and payload are `loom::cell::UnsafeCell`s, written by
//!   the pusher before its compare-and-swap and read by the reclaimer after
//!   its swap, so loom reports a data race if the swap does not acquire what
//!   the push released;
//! - the push uses the production orderings (`SeqCst` on success, which loom
//!   treats as `AcqRel`), the take is an `Acquire` swap of the whole stack;
//! - a callback is a closure run on the reclaimer thread; here it is the
//!   node's action, and "ran" flags check that each runs exactly once;
//! - `barrier` is a callback that sets a flag under a loom `Mutex` and
//!   notifies a `Condvar`, as in production;
//! - the futex the reclaimer sleeps on is a loom `Mutex` and `Condvar` with
//!   futex semantics (wait only while the word still holds the expected
//!   value), and without the production 500 ms timeout, so a lost wake-up
//!   shows up as a deadlock instead of a delay;
//! - the reclaimer stops after the number of callbacks the model queues,
//!   where production loops until its domain is gone.
//!
//! What is left out: the grace-period sequence (`gp_seq`) that lets
//! concurrent callers share grace periods (the reclaimer here runs a whole
//! grace period per batch), back-pressure, panicking callbacks, and the
//! reclaimer's start and exit.

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

use super::ModelDomain;
use crate::protocol::GracePeriod;
use crate::sync::{fence, Ordering};

/// Nodes in one model: enough for every push of every model below.
const NODES: usize = 3;

/// The `head` value of an empty stack.
const EMPTY: usize = 0;

/// The callback queue of one domain.
struct Queue {
    /// The newest node's index plus one, or [`EMPTY`].
    head: AtomicUsize,
    /// Each node's link: the `head` value it was pushed on top of.
    next: [UnsafeCell<usize>; NODES],
    /// Each node's payload, written before the push and read by its
    /// callback.
    payload: [UnsafeCell<usize>; NODES],
    /// Set by a node's callback; a second run would find it set.
    ran: [AtomicBool; NODES],
    /// Callbacks run so far, in run order, for ordering checks.
    run_count: AtomicUsize,
    /// The position in run order of each node's callback.
    run_position: [AtomicUsize; NODES],
}

impl Queue {
    fn new() -> Self {
        Queue {
            head: AtomicUsize::new(EMPTY),
            next: core::array::from_fn(|_| UnsafeCell::new(EMPTY)),
            payload: core::array::from_fn(|_| UnsafeCell::new(0)),
            ran: core::array::from_fn(|_| AtomicBool::new(false)),
            run_count: AtomicUsize::new(0),
            run_position: core::array::from_fn(|_| AtomicUsize::new(usize::MAX)),
        }
    }

    /// `Queue::call`: fills the node, then pushes it with a
    /// compare-and-swap loop.
    fn call(&self, node: usize, payload: usize) {
        self.payload[node].with_mut(|slot| {
            // SAFETY: the node is not yet published; only this thread
            // touches it.
            unsafe { *slot = payload }
        });
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            self.next[node].with_mut(|link| {
                // SAFETY: as above; the node stays private until the
                // exchange succeeds.
                unsafe { *link = head }
            });
            // SeqCst on success, as in production: its Release half
            // publishes the link and the payload to the reclaimer's swap.
            match self
                .head
                .compare_exchange(head, node + 1, Ordering::SeqCst, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(actual) => head = actual,
            }
        }
    }

    /// `run_batch`'s take: the whole stack, newest first, as a `head` value.
    fn take(&self) -> usize {
        // Acquire: pairs with the pushes' Release, so links and payloads
        // are visible below.
        self.head.swap(EMPTY, Ordering::Acquire)
    }

    /// `consume_list`: runs a taken list oldest first through `action`,
    /// checks each payload, and returns how many ran.
    fn consume(&self, top: usize, mut action: impl FnMut(usize)) -> usize {
        let mut newest_first = Vec::new();
        let mut cursor = top;
        while cursor != EMPTY {
            let node = cursor - 1;
            newest_first.push(node);
            cursor = self.next[node].with(|link| {
                // SAFETY: the swap in `take` made this thread the owner of
                // every node of the list.
                unsafe { *link }
            });
        }
        for &node in newest_first.iter().rev() {
            let payload = self.payload[node].with(|slot| {
                // SAFETY: as above.
                unsafe { *slot }
            });
            assert_eq!(payload, node + 100, "node {node} lost its payload");
            assert!(
                !self.ran[node].swap(true, Ordering::Relaxed),
                "the callback of node {node} ran twice"
            );
            let position = self.run_count.fetch_add(1, Ordering::Relaxed);
            self.run_position[node].store(position, Ordering::Relaxed);
            action(node);
        }
        newest_first.len()
    }
}

/// A futex word with `FUTEX_WAIT` / `FUTEX_WAKE` semantics, built from a
/// loom mutex and condition variable. Waiting has no timeout.
struct ModelFutex {
    word: AtomicU32,
    lock: Mutex<()>,
    woken: Condvar,
}

impl ModelFutex {
    fn new() -> Self {
        ModelFutex {
            word: AtomicU32::new(0),
            lock: Mutex::new(()),
            woken: Condvar::new(),
        }
    }

    /// Sleeps until woken, unless the word no longer holds `expected`.
    fn wait(&self, expected: u32) {
        let mut guard = self.lock.lock().unwrap();
        // SeqCst, as the kernel's check under its hash-bucket lock.
        while self.word.load(Ordering::SeqCst) == expected {
            guard = self.woken.wait(guard).unwrap();
        }
    }

    /// `Queue::wake`: bumps the word, then wakes the sleeper.
    fn wake(&self) {
        self.word.fetch_add(1, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap();
        self.woken.notify_all();
    }
}

/// A queue with its reclaimer's sleep state.
///
/// Production relies on the single total order of `SeqCst` accesses for
/// the wake-up: the push's compare-and-swap then `wake_if_sleeping`'s load
/// of `sleeping`, against the reclaimer's store of `sleeping` then its load
/// of `head`. Loom weakens those accesses to `AcqRel`, so a `SeqCst` fence
/// after the push and after the `sleeping` store stands in for that order.
/// On x86-64 both production accesses are locked instructions, which are
/// full fences.
struct Reclaim {
    queue: Queue,
    futex: ModelFutex,
    sleeping: AtomicBool,
}

impl Reclaim {
    fn new() -> Self {
        Reclaim {
            queue: Queue::new(),
            futex: ModelFutex::new(),
            sleeping: AtomicBool::new(false),
        }
    }

    /// `Queue::push` with a running reclaimer: push, then
    /// `wake_if_sleeping`.
    fn call(&self, node: usize, payload: usize) {
        self.queue.call(node, payload);
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) {
            self.futex.wake();
        }
    }

    /// `reclaimer_main` until `expected` callbacks have run: take a batch,
    /// run `grace_period`, run the batch through `action`; sleep when idle.
    fn run(&self, expected: usize, grace_period: impl Fn(), mut action: impl FnMut(usize)) {
        let mut ran = 0;
        while ran < expected {
            // Read before looking for work, so that a wake-up after the
            // look makes the wait return at once.
            let wake_value = self.futex.word.load(Ordering::SeqCst);
            let top = self.queue.take();
            if top != EMPTY {
                // Every node taken shares one grace period that began after
                // the take.
                grace_period();
                ran += self.queue.consume(top, &mut action);
                continue;
            }
            self.sleeping.store(true, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.queue.head.load(Ordering::SeqCst) == EMPTY {
                self.futex.wait(wake_value);
            }
            self.sleeping.store(false, Ordering::Relaxed);
        }
    }
}

/// `call_rcu` frees an object after a grace period while a reader may hold
/// it, and `barrier` waits for that callback.
///
/// Threads: a registered reader dereferencing the published object; the
/// updater, which publishes object 1, queues "free object 0" (node 0) and
/// then calls `barrier` (node 1); and the reclaimer, which takes batches,
/// runs a grace period per batch and runs the callbacks.
///
/// Checks: the reader never sees a freed object; when `barrier` returns,
/// the earlier callback has run; each callback runs once; payloads arrive.
#[test]
fn loom_call_rcu_waits_for_reader_and_barrier_waits_for_callback() {
    const FREE_OLD: usize = 0;
    const BARRIER: usize = 1;

    struct State {
        domain: ModelDomain,
        reclaim: Reclaim,
        current: AtomicUsize,
        freed: [AtomicBool; 2],
        barrier_done: Mutex<bool>,
        barrier_wake: Condvar,
    }

    loom::model(|| {
        let state = Arc::new(State {
            domain: ModelDomain::new(),
            reclaim: Reclaim::new(),
            current: AtomicUsize::new(0),
            freed: [AtomicBool::new(false), AtomicBool::new(false)],
            barrier_done: Mutex::new(false),
            barrier_wake: Condvar::new(),
        });

        let reader = {
            let state = state.clone();
            thread::spawn(move || {
                state.domain.registered_section(|| {
                    let index = state.current.load(Ordering::Acquire);
                    assert!(
                        !state.freed[index].load(Ordering::Relaxed),
                        "a reader saw object {index} after its callback freed it"
                    );
                })
            })
        };

        let reclaimer = {
            let state = state.clone();
            thread::spawn(move || {
                state.reclaim.run(
                    2,
                    || state.domain.run(),
                    |node| {
                        if node == FREE_OLD {
                            state.freed[0].store(true, Ordering::Relaxed);
                        } else {
                            // The mutex orders the earlier callbacks before the
                            // barrier caller's check, as in `Queue::barrier`.
                            *state.barrier_done.lock().unwrap() = true;
                            state.barrier_wake.notify_all();
                        }
                    },
                );
            })
        };

        // The updater: publish, queue the free, then barrier.
        state.current.store(1, Ordering::Release);
        state.reclaim.call(FREE_OLD, FREE_OLD + 100);
        state.reclaim.call(BARRIER, BARRIER + 100);
        let mut done = state.barrier_done.lock().unwrap();
        while !*done {
            done = state.barrier_wake.wait(done).unwrap();
        }
        drop(done);
        assert!(
            state.freed[0].load(Ordering::Relaxed),
            "barrier returned before the callback queued ahead of it ran"
        );
        let positions = &state.reclaim.queue.run_position;
        assert!(
            positions[FREE_OLD].load(Ordering::Relaxed)
                < positions[BARRIER].load(Ordering::Relaxed),
            "callbacks of one thread ran out of queue order"
        );

        reader.join().unwrap();
        reclaimer.join().unwrap();
    });
}

/// Concurrent `call_rcu` from two threads against a reclaimer that sleeps
/// when idle: the compare-and-swap pushes and the whole-stack swap lose no
/// node and run none twice, one thread's callbacks run in queue order, and
/// no push leaves the reclaimer asleep with work queued (loom reports that
/// as a deadlock). No reader takes part, so there is no grace period
/// between take and run.
#[test]
fn loom_concurrent_call_rcu_runs_each_callback_once() {
    loom::model(|| {
        let reclaim = Arc::new(Reclaim::new());

        let pusher = {
            let reclaim = reclaim.clone();
            thread::spawn(move || reclaim.call(2, 102))
        };
        let reclaimer = {
            let reclaim = reclaim.clone();
            thread::spawn(move || reclaim.run(NODES, || (), |_| ()))
        };

        reclaim.call(0, 100);
        reclaim.call(1, 101);
        pusher.join().unwrap();
        reclaimer.join().unwrap();

        let queue = &reclaim.queue;
        for node in 0..NODES {
            assert!(
                queue.ran[node].load(Ordering::Relaxed),
                "node {node} never ran"
            );
        }
        assert!(
            queue.run_position[0].load(Ordering::Relaxed)
                < queue.run_position[1].load(Ordering::Relaxed),
            "callbacks of one thread ran out of queue order"
        );
    });
}

/// The reclaimer's sleep against a single push: either the reclaimer sees
/// the node before it sleeps, or the pusher sees it asleep and wakes it. A
/// lost wake-up leaves the reclaimer asleep with a node queued, and loom
/// reports the deadlock.
#[test]
fn loom_push_wakes_sleeping_reclaimer() {
    loom::model(|| {
        let reclaim = Arc::new(Reclaim::new());
        let reclaimer = {
            let reclaim = reclaim.clone();
            thread::spawn(move || reclaim.run(1, || (), |_| ()))
        };
        reclaim.call(0, 100);
        reclaimer.join().unwrap();
        assert!(reclaim.queue.ran[0].load(Ordering::Relaxed));
    });
}
