//! Torture objects, their pipe age, poisoning and the pool they live in.
//!
//! # Pipe age
//!
//! An object's age is 0 while it is published, 1 once the updater has
//! retired it, and it goes up by one with each grace period that completes
//! after the retirement. The updater frees an object at [`FREE_AGE`], that is
//! right after the first such grace period. A reader that found the object
//! published must have left its read-side section before that grace period
//! ended. So a reader that observes an age of 2 or more has shown that a grace
//! period ended too early.
//!
//! # Poison
//!
//! Freeing writes [`POISON`] into the object and moves it to the pool's
//! quarantine. The memory stays mapped for the whole process (objects are
//! leaked on purpose), so a reader that still holds a freed object reads the
//! poison instead of undefined memory. An object leaves quarantine for reuse
//! only after [`QUARANTINE_MIN`] later frees, which keeps a poisoned object
//! visible long after a premature free.
//!
//! # Orderings
//!
//! All loads and stores here are `Relaxed`. The updater initialises an object
//! before publishing it through `RcuOption::replace` (Release), which pairs
//! with `RcuOption::read` (Acquire) in readers, so readers see the initial
//! values. The age and poison stores after retirement are ordered against
//! readers by the grace period itself: a load inside a read-side section that
//! the grace period waited for happens before the updater's later store, so it
//! cannot read that store. Seeing one anyway is exactly the bug this tool
//! reports.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

/// Age at which the updater frees a retired object: one grace period after
/// its retirement.
pub const FREE_AGE: u32 = 2;

/// Number of buckets in the age histogram: ages 0, 1, 2, and 3 or more.
pub const PIPE_BUCKETS: usize = 4;

/// Value written into a freed object (the byte `0x6b` repeated, as Linux slab
/// poisoning uses).
pub const POISON: u64 = 0x6b6b_6b6b_6b6b_6b6b;

/// Frees that must follow an object's own free before the pool reuses it.
pub const QUARANTINE_MIN: usize = 512;

/// A unit of data that readers dereference and check.
#[derive(Debug)]
pub struct TortureObject {
    /// Pipe age; see the module notes.
    age: AtomicU32,
    /// 0 while the object is allocated, [`POISON`] once it is freed.
    poison: AtomicU64,
}

/// The result of checking one object during one read-side section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Observation {
    /// Highest pipe age seen.
    pub max_age: u32,
    /// Whether the object was poisoned at any check.
    pub poisoned: bool,
}

impl Observation {
    /// Checks `object` once and folds the result in.
    ///
    /// # Async-signal safety
    ///
    /// Safe: two atomic loads, no allocation, no lock.
    #[inline]
    pub fn check(&mut self, object: &TortureObject) {
        // Relaxed: see the module notes on orderings.
        let age = object.age.load(Ordering::Relaxed);
        let poison = object.poison.load(Ordering::Relaxed);
        self.max_age = self.max_age.max(age);
        self.poisoned |= poison != 0;
    }

    /// Returns whether this observation shows a grace period that ended too
    /// early or a use after free.
    pub fn is_error(&self) -> bool {
        self.max_age >= FREE_AGE || self.poisoned
    }

    /// Returns the index of this observation's age in the histogram.
    pub fn bucket(&self) -> usize {
        (self.max_age as usize).min(PIPE_BUCKETS - 1)
    }
}

/// A published handle to a pool object; the value stored in the RCU cell.
#[derive(Debug, Clone, Copy)]
pub struct ObjectRef(pub &'static TortureObject);

impl TortureObject {
    const fn new() -> Self {
        TortureObject {
            age: AtomicU32::new(0),
            poison: AtomicU64::new(0),
        }
    }

    /// Marks the object retired: age 1.
    pub fn retire(&self) {
        // Relaxed: see the module notes on orderings.
        self.age.store(1, Ordering::Relaxed);
    }

    /// Records one completed grace period after retirement and returns the
    /// new age.
    pub fn age_one_grace_period(&self) -> u32 {
        // Only the thread that retired the object, or the one callback that
        // owns it, ages it, so a load and a store cannot race with another
        // writer. Relaxed: see the module notes on orderings.
        let age = self.age.load(Ordering::Relaxed) + 1;
        self.age.store(age, Ordering::Relaxed);
        age
    }

    /// Returns the current pipe age.
    #[cfg(test)]
    pub fn age(&self) -> u32 {
        self.age.load(Ordering::Relaxed)
    }
}

/// Counts of the pool's objects.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolCounts {
    /// Objects created (leaked) over the run.
    pub created: u64,
    /// Objects handed out, new or reused.
    pub allocated: u64,
    /// Objects freed (poisoned and quarantined).
    pub freed: u64,
}

/// A source of torture objects whose freed memory stays mapped and poisoned.
#[derive(Debug, Default)]
pub struct Pool {
    quarantine: Mutex<VecDeque<&'static TortureObject>>,
    created: AtomicU64,
    allocated: AtomicU64,
    freed: AtomicU64,
}

impl Pool {
    /// Creates an empty pool.
    pub fn new() -> Pool {
        Pool::default()
    }

    /// Returns an object at age 0, not poisoned, ready to publish.
    ///
    /// Reuses the oldest quarantined object once more than
    /// [`QUARANTINE_MIN`] wait there, and otherwise leaks a new one.
    pub fn allocate(&self) -> &'static TortureObject {
        // Counters are statistics only, so Relaxed.
        self.allocated.fetch_add(1, Ordering::Relaxed);
        let reused = {
            let mut quarantine = self.lock_quarantine();
            if quarantine.len() > QUARANTINE_MIN {
                quarantine.pop_front()
            } else {
                None
            }
        };

        match reused {
            Some(object) => {
                // Relaxed: publication through `RcuOption::replace` (Release)
                // orders these stores before any reader sees the object.
                object.age.store(0, Ordering::Relaxed);
                object.poison.store(0, Ordering::Relaxed);
                object
            }
            None => {
                self.created.fetch_add(1, Ordering::Relaxed);
                // NOTE: leaked on purpose, so that a reader holding a freed
                // object always reads mapped memory. The quarantine bounds the
                // number of objects created.
                Box::leak(Box::new(TortureObject::new()))
            }
        }
    }

    /// Poisons `object` and quarantines it.
    pub fn free(&self, object: &'static TortureObject) {
        // Relaxed: see the module notes on orderings.
        object.poison.store(POISON, Ordering::Relaxed);
        self.lock_quarantine().push_back(object);
        self.freed.fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the pool's counters.
    pub fn counts(&self) -> PoolCounts {
        PoolCounts {
            created: self.created.load(Ordering::Relaxed),
            allocated: self.allocated.load(Ordering::Relaxed),
            freed: self.freed.load(Ordering::Relaxed),
        }
    }

    fn lock_quarantine(&self) -> std::sync::MutexGuard<'_, VecDeque<&'static TortureObject>> {
        // A panic while the lock is held cannot leave the queue half-updated
        // (push and pop are single calls), so a poisoned lock is still usable.
        self.quarantine
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observation_flags_age_two_and_poison() {
        let pool = Pool::new();
        let object = pool.allocate();
        let mut observation = Observation::default();
        observation.check(object);
        assert!(!observation.is_error());

        object.retire();
        observation.check(object);
        assert_eq!(observation.max_age, 1);
        assert!(!observation.is_error());

        assert_eq!(object.age_one_grace_period(), FREE_AGE);
        observation.check(object);
        assert!(observation.is_error());
        assert_eq!(observation.bucket(), 2);
    }

    #[test]
    fn freed_object_reads_as_poisoned() {
        let pool = Pool::new();
        let object = pool.allocate();
        pool.free(object);
        let mut observation = Observation::default();
        observation.check(object);
        assert!(observation.poisoned);
        assert_eq!(pool.counts().freed, 1);
    }

    #[test]
    fn pool_reuses_only_after_quarantine() {
        let pool = Pool::new();
        let first = pool.allocate();
        pool.free(first);
        for _ in 0..QUARANTINE_MIN {
            let object = pool.allocate();
            assert!(!std::ptr::eq(object, first));
            pool.free(object);
        }

        let reused = pool.allocate();
        assert!(std::ptr::eq(reused, first));
        assert_eq!(reused.age(), 0);
        let mut observation = Observation::default();
        observation.check(reused);
        assert!(!observation.poisoned);
    }
}
