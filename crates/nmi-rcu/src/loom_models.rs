//! Loom models of the read-side and grace-period protocol.
//!
//! Run with `RUSTFLAGS="--cfg loom" cargo test -p nmi-rcu --release --lib loom`
//! (`.ci/run` sets `LOOM_MAX_PREEMPTIONS=3`).
//!
//! What the models cannot express, and what stands in for it:
//!
//! - `membarrier(2)`: loom has no asymmetric fences, so readers take the
//!   [`Barriers::Fenced`] path and the updater's barrier is a `SeqCst` fence.
//!   The asymmetric path is correct if membarrier gives every running thread
//!   a full fence at the updater's barrier points, which is what the kernel
//!   documents.
//! - Signals: loom cannot interrupt a thread. A nested read-side section run
//!   through the `interrupt` hooks of `word_enter_interruptible` and
//!   `word_exit_interruptible` stands in for a handler that arrives between a
//!   load and the store that depends on it, the only places where an
//!   interruption could matter.
//! - Memory reclamation: a "freed" flag per object stands in for `free`; a
//!   reader that finds the flag set on an object it dereferenced has read
//!   freed memory.

use loom::sync::atomic::{AtomicBool, AtomicUsize};
use loom::sync::Arc;
use loom::thread;

use crate::protocol::{
    word_enter, word_enter_interruptible, word_exit, word_exit_interruptible, Barriers,
    FallbackCounters, GracePeriod, ReaderWord, GP_START,
};
use crate::sync::{fence, Ordering};

/// One domain with a single registered reader word, two objects and a
/// pointer that selects one of them.
struct Model {
    gp_counter: AtomicUsize,
    fallback: FallbackCounters,
    word: ReaderWord,
    /// Index of the published object.
    current: AtomicUsize,
    freed: [AtomicBool; 2],
}

impl Model {
    fn new() -> Arc<Self> {
        Arc::new(Model {
            gp_counter: AtomicUsize::new(GP_START),
            fallback: FallbackCounters::new(),
            word: AtomicUsize::new(0),
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
        self.run();
        self.freed[0].store(true, Ordering::Relaxed);
    }
}

impl GracePeriod for Model {
    fn gp_counter(&self) -> &AtomicUsize {
        &self.gp_counter
    }

    fn fallback(&self) -> &FallbackCounters {
        &self.fallback
    }

    fn master_barrier(&self) {
        fence(Ordering::SeqCst);
    }

    fn any_word_active_in(&self, phase: usize) -> bool {
        crate::protocol::word_state(self.word.load(Ordering::Relaxed))
            == crate::protocol::WordState::Active { phase }
    }

    fn backoff(&self, _waited: u32, _phase: usize) {
        thread::yield_now();
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
            thread::spawn(move || {
                word_enter(&model.word, &model.gp_counter, Barriers::Fenced);
                model.read_and_check();
                word_exit(&model.word, Barriers::Fenced);
            })
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
            thread::spawn(move || {
                let ticket = model.fallback.enter(&model.gp_counter, 0);
                model.read_and_check();
                model.fallback.exit(ticket);
            })
        };
        model.update();
        reader.join().unwrap();
    });
}

/// A nested section (a signal handler) interrupting the outer section's
/// entry and exit between each load and its dependent store. Both the
/// outer and the nested section must stay protected.
#[test]
fn loom_signal_interrupts_entry_and_exit() {
    loom::model(|| {
        let model = Model::new();
        let reader = {
            let model = model.clone();
            thread::spawn(move || {
                let handler = |model: &Model| {
                    word_enter(&model.word, &model.gp_counter, Barriers::Fenced);
                    model.read_and_check();
                    word_exit(&model.word, Barriers::Fenced);
                };
                let mut interrupted = false;
                word_enter_interruptible(
                    &model.word,
                    &model.gp_counter,
                    Barriers::Fenced,
                    &mut || {
                        if !interrupted {
                            interrupted = true;
                            handler(&model);
                        }
                    },
                );
                model.read_and_check();
                let mut interrupted = false;
                word_exit_interruptible(&model.word, Barriers::Fenced, &mut || {
                    if !interrupted {
                        interrupted = true;
                        handler(&model);
                    }
                });
                assert_eq!(
                    model.word.load(Ordering::Relaxed) & crate::protocol::NEST_MASK,
                    0
                );
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
                    word_enter(&model.word, &model.gp_counter, Barriers::Fenced);
                    model.read_and_check();
                    word_exit(&model.word, Barriers::Fenced);
                }
            })
        };
        model.update();
        done.store(true, Ordering::Release);
        reader.join().unwrap();
    });
}
