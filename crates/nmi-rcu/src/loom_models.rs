//! Loom models of the read-side and grace-period protocol, of deferred
//! reclamation and of the handler layer's publication.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p
//! nmi-rcu --release --lib loom`; `.ci/loom.sh` does exactly that, with the
//! preemption bound and time budget stated there. Under `--cfg loom` only
//! [`crate::protocol`], [`crate::sync`] and these models are compiled, so the
//! read-side and grace-period code checked here is the production code, while
//! the reclamation queue and the handler layer are restated in a few lines of
//! loom atomics (each submodule says what stands in for what).
//!
//! What no model can express, and what stands in for it:
//!
//! - `membarrier(2)`: loom has no asymmetric fences, so readers take the
//!   [`Barriers::Fenced`] path and the updater's barrier is a `SeqCst` fence.
//!   The asymmetric path is correct if membarrier gives every running thread
//!   a full fence at the updater's barrier points, which is what the kernel
//!   documents for `MEMBARRIER_CMD_PRIVATE_EXPEDITED`.
//! - Signals: loom cannot interrupt a thread. A nested read-side section run
//!   through the `interrupt` hooks of `word_enter_interruptible` and
//!   `word_exit_interruptible` stands in for a handler that arrives between a
//!   load and the store that depends on it, the only places where an
//!   interruption could matter.
//! - Memory reclamation: a "freed" flag per object stands in for `free`; a
//!   reader that finds the flag set on an object it dereferenced has read
//!   freed memory.
//! - `SeqCst` loads and stores: loom treats them as `AcqRel` (loom 0.7
//!   README, "Unsupported features"), but it does model `fence(SeqCst)`. The
//!   protocol already puts fences where it needs them; models of code that
//!   relies on the total order of `SeqCst` accesses add a `SeqCst` fence next
//!   to those accesses and say so.

mod handlers;
mod reclaim;

use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::sync::Arc;
use loom::thread;

use crate::protocol::{
    word_enter, word_enter_interruptible, word_exit, word_exit_interruptible, word_state, Barriers,
    FallbackCounters, GracePeriod, ReaderWord, WordState, GP_START, NEST_MASK,
};
use crate::sync::{fence, Ordering};

/// One domain with a single registered reader word: the protocol state that
/// every model shares.
pub(super) struct ModelDomain {
    gp_counter: AtomicUsize,
    fallback: FallbackCounters,
    word: ReaderWord,
}

impl ModelDomain {
    pub(super) fn new() -> Self {
        ModelDomain {
            gp_counter: AtomicUsize::new(GP_START),
            fallback: FallbackCounters::new(),
            word: AtomicUsize::new(0),
        }
    }

    /// Runs `body` inside a read-side section on the registered path.
    pub(super) fn registered_section<R>(&self, body: impl FnOnce() -> R) -> R {
        word_enter(&self.word, &self.gp_counter, Barriers::Fenced);
        let result = body();
        word_exit(&self.word, Barriers::Fenced);
        result
    }

    /// Runs `body` inside a read-side section on the fallback path.
    pub(super) fn fallback_section<R>(&self, body: impl FnOnce() -> R) -> R {
        let ticket = self.fallback.enter(&self.gp_counter, 0);
        let result = body();
        self.fallback.exit(ticket);
        result
    }
}

impl GracePeriod for ModelDomain {
    fn gp_counter(&self) -> &AtomicUsize {
        &self.gp_counter
    }

    fn fallback(&self) -> &FallbackCounters {
        &self.fallback
    }

    fn master_barrier(&self) {
        // Stands in for membarrier(2); see the module notes.
        fence(Ordering::SeqCst);
    }

    fn any_word_active_in(&self, phase: usize) -> bool {
        // Relaxed, as in the production scan: the grace period's fences
        // order this load.
        word_state(self.word.load(Ordering::Relaxed)) == WordState::Active { phase }
    }

    fn backoff(&self, _waited: u32, _phase: usize) {
        // Tells loom this is a spin loop, so it schedules the reader.
        thread::yield_now();
    }
}

/// A domain, two objects and a pointer that selects one of them.
struct Model {
    domain: ModelDomain,
    /// Index of the published object.
    current: AtomicUsize,
    freed: [AtomicBool; 2],
}

impl Model {
    fn new() -> Arc<Self> {
        Arc::new(Model {
            domain: ModelDomain::new(),
            current: AtomicUsize::new(0),
            freed: [AtomicBool::new(false), AtomicBool::new(false)],
        })
    }

    /// Dereferences the published object and checks that it is not freed.
    fn read_and_check(&self) {
        let index = self.current.load(Ordering::Acquire);
        assert!(
            !self.freed[index].load(Ordering::Relaxed),
            "a reader saw object {index} after it was freed"
        );
    }

    /// Publishes object 1, waits for a grace period, frees object 0.
    fn update(&self) {
        self.current.store(1, Ordering::Release);
        self.domain.run();
        self.freed[0].store(true, Ordering::Relaxed);
    }
}

/// A registered reader against one grace period: the reader never sees a
/// freed object.
#[test]
fn loom_registered_reader_against_grace_period() {
    loom::model(|| {
        let model = Model::new();
        let reader = {
            let model = model.clone();
            thread::spawn(move || model.domain.registered_section(|| model.read_and_check()))
        };
        model.update();
        reader.join().unwrap();
    });
}

/// A fallback-path reader against one grace period.
#[test]
fn loom_fallback_reader_against_grace_period() {
    loom::model(|| {
        let model = Model::new();
        let reader = {
            let model = model.clone();
            thread::spawn(move || model.domain.fallback_section(|| model.read_and_check()))
        };
        model.update();
        reader.join().unwrap();
    });
}

/// A nested section (a signal handler) interrupting the outer section's
/// entry and exit between each load and its dependent store. Both the
/// outer and the nested section must stay protected, and the word must be
/// back at rest afterwards.
#[test]
fn loom_signal_interrupts_entry_and_exit() {
    loom::model(|| {
        let model = Model::new();
        let reader = {
            let model = model.clone();
            thread::spawn(move || {
                let domain = &model.domain;
                let handler = || domain.registered_section(|| model.read_and_check());
                let mut interrupted = false;
                word_enter_interruptible(
                    &domain.word,
                    &domain.gp_counter,
                    Barriers::Fenced,
                    &mut || {
                        if !interrupted {
                            interrupted = true;
                            handler();
                        }
                    },
                );
                model.read_and_check();
                let mut interrupted = false;
                word_exit_interruptible(&domain.word, Barriers::Fenced, &mut || {
                    if !interrupted {
                        interrupted = true;
                        handler();
                    }
                });
                assert_eq!(domain.word.load(Ordering::Relaxed) & NEST_MASK, 0);
            })
        };
        model.update();
        reader.join().unwrap();
    });
}

/// A nested section interrupting the outer one at the second hook of
/// `word_enter_interruptible`: between the load of the grace-period counter
/// and the store of the word, the window where the stored phase can be one
/// flip old. The grace period's first drain step exists for this reader.
#[test]
fn loom_signal_between_counter_load_and_word_store() {
    loom::model(|| {
        let model = Model::new();
        let reader = {
            let model = model.clone();
            thread::spawn(move || {
                let domain = &model.domain;
                let mut hooks = 0;
                word_enter_interruptible(
                    &domain.word,
                    &domain.gp_counter,
                    Barriers::Fenced,
                    &mut || {
                        hooks += 1;
                        if hooks == 2 {
                            domain.registered_section(|| model.read_and_check());
                        }
                    },
                );
                assert_eq!(hooks, 2, "the outermost entry has two hooks");
                model.read_and_check();
                word_exit(&domain.word, Barriers::Fenced);
            })
        };
        model.update();
        reader.join().unwrap();
    });
}

/// Two-phase progress: a reader that keeps entering new sections cannot
/// hold up the grace period, because sections that begin after the flip
/// are never waited for. Loom explores every interleaving; a grace period
/// that waited for new readers would not terminate within the model's
/// bounds.
#[test]
fn loom_continuous_readers_do_not_starve_grace_period() {
    loom::model(|| {
        let model = Model::new();
        let done = Arc::new(AtomicBool::new(false));
        let reader = {
            let model = model.clone();
            let done = done.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    if done.load(Ordering::Acquire) {
                        break;
                    }
                    model.domain.registered_section(|| model.read_and_check());
                }
            })
        };
        model.update();
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}

/// Two-phase progress with a reader on each path: a registered reader
/// entering two sections back to back and a fallback reader entering one,
/// against one grace period. Neither path may starve the updater or see a
/// freed object.
#[test]
fn loom_readers_on_both_paths_against_grace_period() {
    loom::model(|| {
        let model = Model::new();
        let registered = {
            let model = model.clone();
            thread::spawn(move || {
                for _ in 0..2 {
                    model.domain.registered_section(|| model.read_and_check());
                }
            })
        };
        let fallback = {
            let model = model.clone();
            thread::spawn(move || model.domain.fallback_section(|| model.read_and_check()))
        };
        model.update();
        registered.join().unwrap();
        fallback.join().unwrap();
    });
}

/// Three objects and a domain, for two grace periods in a row.
struct TwoUpdates {
    domain: ModelDomain,
    current: AtomicUsize,
    freed: [AtomicBool; 3],
}

impl TwoUpdates {
    fn new() -> Arc<Self> {
        Arc::new(TwoUpdates {
            domain: ModelDomain::new(),
            current: AtomicUsize::new(0),
            freed: core::array::from_fn(|_| AtomicBool::new(false)),
        })
    }

    /// One reader section on the registered path.
    fn read(&self) {
        self.domain.registered_section(|| {
            let index = self.current.load(Ordering::Acquire);
            assert!(
                !self.freed[index].load(Ordering::Relaxed),
                "a reader saw object {index} after it was freed"
            );
        });
    }

    /// Publishes objects 1 and 2 in turn, freeing each predecessor after
    /// `grace_period`.
    fn update_twice(&self, grace_period: impl Fn(&ModelDomain)) {
        for next in 1..3 {
            self.current.store(next, Ordering::Release);
            grace_period(&self.domain);
            self.freed[next - 1].store(true, Ordering::Relaxed);
        }
    }
}

/// A reader that loads the counter before one grace period's flip and
/// stores its word after it carries a phase one flip old into the next
/// grace period. The first drain step of [`GracePeriod::run`] waits for it.
#[test]
fn loom_reader_with_stale_phase_across_two_grace_periods() {
    loom::model(|| {
        let model = TwoUpdates::new();
        let reader = {
            let model = model.clone();
            thread::spawn(move || model.read())
        };
        model.update_twice(|domain| domain.run());
        reader.join().unwrap();
    });
}

/// The same model with the first drain step left out of the grace period:
/// loom must find the reader that reads a freed object. This pins why the
/// step exists, and shows that the models can fail.
#[test]
#[should_panic(expected = "after it was freed")]
fn loom_grace_period_without_first_drain_frees_too_early() {
    /// [`GracePeriod::run`] without step 2 (protocol module notes).
    fn run_without_first_drain(domain: &ModelDomain) {
        domain.master_barrier();
        let old_phase = domain.gp_counter.load(Ordering::Relaxed) & crate::protocol::PHASE;
        fence(Ordering::SeqCst);
        let counter = domain.gp_counter.load(Ordering::Relaxed);
        domain
            .gp_counter
            .store(counter ^ crate::protocol::PHASE, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        domain.wait_drained(old_phase);
        domain.master_barrier();
    }

    loom::model(|| {
        let model = TwoUpdates::new();
        let reader = {
            let model = model.clone();
            thread::spawn(move || model.read())
        };
        model.update_twice(run_without_first_drain);
        reader.join().unwrap();
    });
}
