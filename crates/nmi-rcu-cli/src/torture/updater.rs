//! The updater: publishes a new object, retires the old one, and frees it
//! after a grace period obtained with `synchronize`, `call_rcu` or a polled
//! grace period.
//!
//! The cell's own reclamation (the box that contains the [`ObjectRef`]) always
//! goes through the library correctly, with `Retired::synchronize` or
//! `Retired::defer`. Only the object's pipe bookkeeping is affected by
//! `--broken`, so a broken run reads poisoned but still mapped memory rather
//! than memory returned to the allocator.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use nmi_rcu::RcuBox;

use super::object::{ObjectRef, Pool, TortureObject, FREE_AGE};
use super::{Rng, UpdateMode, CURRENT};

/// Callbacks allowed in flight before the updater calls `nmi_rcu::barrier`.
const MAX_PENDING_CALLBACKS: u64 = 1024;

/// Polled grace periods allowed in flight before the updater waits for the
/// oldest one.
const MAX_PENDING_POLLS: usize = 8;

/// Sleep between two checks of a polled grace period that the updater must
/// wait for.
const POLL_INTERVAL: Duration = Duration::from_micros(20);

/// Polled grace periods in flight, oldest first, each with the object it
/// frees (`None` when `--broken` already freed it).
type PendingPolls = VecDeque<(Option<&'static TortureObject>, nmi_rcu::GraceToken)>;

/// Counters of the updater. Statistics only: `Relaxed`, and read in full
/// after the updater thread is joined.
#[derive(Debug, Default)]
pub struct UpdaterStats {
    /// Objects published after the first one.
    pub updates: AtomicU64,
    /// Updates whose grace period came from `synchronize`.
    pub sync_updates: AtomicU64,
    /// Updates whose grace period came from `call_rcu`.
    pub call_rcu_updates: AtomicU64,
    /// Updates whose grace period came from `start_poll` and `poll_state`.
    pub poll_updates: AtomicU64,
    /// Callbacks queued with `call_rcu`.
    pub callbacks_queued: AtomicU64,
    /// Of those, callbacks that have run.
    pub callbacks_done: AtomicU64,
    /// Calls to `nmi_rcu::barrier` made to bound the callback backlog.
    pub barriers: AtomicU64,
    /// Objects freed before any grace period had passed (`--broken` only).
    pub premature_frees: AtomicU64,
}

/// The updater's view of one run.
pub struct Updater {
    /// Grace-period primitive of the updater.
    pub mode: UpdateMode,
    /// Whether objects are freed one grace period too early.
    pub broken: bool,
    /// Pool that objects are allocated from and freed to.
    pub pool: &'static Pool,
    /// The counters.
    pub stats: &'static UpdaterStats,
    /// Seed of the random choice of grace-period kind in `mixed` mode.
    pub seed: u64,
}

/// One grace-period kind, chosen per update.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Sync,
    CallRcu,
    Poll,
}

impl Updater {
    /// Publishes the first object and returns it. Call before any reader
    /// starts.
    pub fn publish_first(&self) -> &'static TortureObject {
        let first = self.pool.allocate();
        if let Some(stale) = CURRENT.replace(Some(RcuBox::new(ObjectRef(first)))) {
            // Only a second run in the same process finds an object here.
            stale.defer();
        }
        first
    }

    /// Runs updates until `stop` is set, then waits until every retired
    /// object has been freed. `current` is the object that
    /// [`Updater::publish_first`] returned.
    pub fn run(&self, mut current: &'static TortureObject, stop: &AtomicBool) {
        let mut rng = Rng::new(self.seed);
        let mut polls = VecDeque::with_capacity(MAX_PENDING_POLLS);

        // Relaxed: the flag only ends the loop; the join orders the rest.
        while !stop.load(Ordering::Relaxed) {
            let kind = self.choose_kind(&mut rng);
            current = self.update(current, kind, &mut polls);
            self.complete_polls(&mut polls, MAX_PENDING_POLLS - 1);
        }

        self.complete_polls(&mut polls, 0);
        nmi_rcu::barrier();
    }

    fn choose_kind(&self, rng: &mut Rng) -> Kind {
        match self.mode {
            UpdateMode::Sync => Kind::Sync,
            UpdateMode::CallRcu => Kind::CallRcu,
            UpdateMode::Poll => Kind::Poll,
            UpdateMode::Mixed => match rng.next() % 3 {
                0 => Kind::Sync,
                1 => Kind::CallRcu,
                _ => Kind::Poll,
            },
        }
    }

    /// Replaces the published object `old` and arranges for it to be freed
    /// after a grace period of the given kind. Returns the new object.
    fn update(
        &self,
        old: &'static TortureObject,
        kind: Kind,
        polls: &mut PendingPolls,
    ) -> &'static TortureObject {
        // Step 1: publish a new object and retire the old one.
        let new = self.pool.allocate();
        let retired = CURRENT
            .replace(Some(RcuBox::new(ObjectRef(new))))
            .expect("the torture run publishes an object before its updater starts");
        old.retire();
        self.stats.updates.fetch_add(1, Ordering::Relaxed);

        // Step 2, broken mode only: count a grace period that never happened
        // and free the object now, one grace period too early.
        let pending = if self.broken {
            self.free_after_grace_period(old);
            self.stats.premature_frees.fetch_add(1, Ordering::Relaxed);
            None
        } else {
            Some(old)
        };

        // Step 3: wait for, or arrange, the grace period that frees it.
        match kind {
            Kind::Sync => {
                self.stats.sync_updates.fetch_add(1, Ordering::Relaxed);
                let _box_contents = retired.synchronize();
                if let Some(object) = pending {
                    self.free_after_grace_period(object);
                }
            }
            Kind::CallRcu => {
                self.stats.call_rcu_updates.fetch_add(1, Ordering::Relaxed);
                retired.defer();
                self.queue_callback(pending);
            }
            Kind::Poll => {
                self.stats.poll_updates.fetch_add(1, Ordering::Relaxed);
                retired.defer();
                polls.push_back((pending, nmi_rcu::start_poll()));
            }
        }
        new
    }

    /// Ages `object` by one grace period and frees it once it reaches
    /// [`FREE_AGE`].
    fn free_after_grace_period(&self, object: &'static TortureObject) {
        if object.age_one_grace_period() >= FREE_AGE {
            self.pool.free(object);
        }
    }

    fn queue_callback(&self, pending: Option<&'static TortureObject>) {
        let pool = self.pool;
        let stats = self.stats;
        stats.callbacks_queued.fetch_add(1, Ordering::Relaxed);
        nmi_rcu::call_rcu(move || {
            if let Some(object) = pending {
                if object.age_one_grace_period() >= FREE_AGE {
                    pool.free(object);
                }
            }
            stats.callbacks_done.fetch_add(1, Ordering::Relaxed);
        });

        // Bound the backlog: the counters are statistics, so a stale read
        // only delays the barrier by a few callbacks.
        let queued = stats.callbacks_queued.load(Ordering::Relaxed);
        let done = stats.callbacks_done.load(Ordering::Relaxed);
        if queued.saturating_sub(done) > MAX_PENDING_CALLBACKS {
            nmi_rcu::barrier();
            stats.barriers.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Frees the objects of completed polled grace periods, oldest first,
    /// waiting until at most `keep` remain in flight.
    fn complete_polls(&self, polls: &mut PendingPolls, keep: usize) {
        while let Some((pending, token)) = polls.front() {
            if !nmi_rcu::poll_state(token) {
                if polls.len() <= keep {
                    return;
                }
                std::thread::sleep(POLL_INTERVAL);
                continue;
            }
            if let Some(object) = *pending {
                self.free_after_grace_period(object);
            }
            polls.pop_front();
        }
    }
}
