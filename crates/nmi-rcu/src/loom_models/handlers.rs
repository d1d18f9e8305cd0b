//! Models of the handler layer: `HandlerSlot` set and unset against
//! dispatch, and registry register and unregister against a dispatch walk.
//!
//! `handler.rs` and `handlers.rs` are not compiled under loom. What they do
//! on top of the protocol is publish a pointer with a Release swap
//! (`RcuOption::replace`), load it with Acquire in a read-side section, and
//! free what the swap returned after a grace period. Here that is restated
//! over loom atomics:
//!
//! - the slot or the registry's array pointer is an index (`AtomicUsize`),
//!   swapped with `AcqRel` and loaded with `Acquire` as in `cell.rs`;
//! - a handler's captured data, and a registry array's length and entries,
//!   are `loom::cell::UnsafeCell`s written before publication. Freeing
//!   writes a poison value into them, so loom reports a data race when a
//!   dispatch could still be reading them, and a wrong value when
//!   publication did not make the contents visible;
//! - the `Arc` that shares a registry entry between arrays is a reference
//!   count with `Arc`'s orderings (Relaxed increment, Release decrement,
//!   Acquire fence before the free). Only the updater changes it here, so
//!   the models check when the last reference goes, not those orderings;
//! - a signal handler that unsets its own slot runs as the body of the
//!   dispatch, on the dispatching thread, as it would inside the
//!   trampoline.
//!
//! What is left out: the dispatch counters and the watchdog (Relaxed
//! statistics that order nothing), the update lock of the registry (one
//! updater per model), and the reclaimer thread (retired values are freed
//! after a grace period run by the updater, as `Retired::synchronize` does).

use loom::cell::UnsafeCell;
use loom::sync::atomic::AtomicUsize;
use loom::sync::Arc;
use loom::thread;

use super::ModelDomain;
use crate::protocol::GracePeriod;
use crate::sync::{fence, Ordering};

/// The value freed memory holds in these models.
const POISON: usize = usize::MAX;

/// The slot and registry value meaning "nothing published": the default
/// handler of a `HandlerSlot`, the empty `RcuOption` of a registry.
const NONE: usize = usize::MAX;

/// A handler's captured data: `10 + index` while alive.
struct HandlerData {
    value: UnsafeCell<usize>,
}

impl HandlerData {
    fn new() -> Self {
        HandlerData {
            value: UnsafeCell::new(POISON),
        }
    }

    /// Initialises the data of handler `index`, before its publication.
    fn init(&self, index: usize) {
        self.value.with_mut(|value| {
            // SAFETY: the handler is not published yet, so no dispatch can
            // reach it.
            unsafe { *value = 10 + index }
        });
    }

    /// Calls handler `index`: reads its data, which must be initialised
    /// and not freed.
    fn call(&self, index: usize) {
        let value = self.value.with(|value| {
            // SAFETY: the caller loaded the handler inside a read-side
            // section; loom reports a race if a free is not ordered after it.
            unsafe { *value }
        });
        assert_ne!(
            value, POISON,
            "dispatch called handler {index} after it was freed"
        );
        assert_eq!(
            value,
            10 + index,
            "dispatch saw handler {index} uninitialised"
        );
    }

    /// Frees the handler's data.
    fn free(&self) {
        self.value.with_mut(|value| {
            // SAFETY: a grace period has passed since the handler was
            // unpublished; loom checks that claim.
            unsafe { *value = POISON }
        });
    }
}

/// A `HandlerSlot<A>` with two possible handlers.
struct Slot {
    domain: ModelDomain,
    /// `NONE` (the default handler) or a handler index.
    current: AtomicUsize,
    handlers: [HandlerData; 2],
}

impl Slot {
    fn new() -> Self {
        Slot {
            domain: ModelDomain::new(),
            current: AtomicUsize::new(NONE),
            handlers: [HandlerData::new(), HandlerData::new()],
        }
    }

    /// `HandlerSlot::set_prepared`: the caller initialised the handler
    /// beforehand (`PreparedHandler::new`); returns the retired handler.
    fn set(&self, index: usize) -> usize {
        // AcqRel, as in `RcuOption::replace`: Release publishes the
        // handler's data; Acquire hands the old handler's contents to the
        // thread that will free it.
        self.current.swap(index, Ordering::AcqRel)
    }

    /// `HandlerSlot::unset`.
    fn unset(&self) -> usize {
        self.current.swap(NONE, Ordering::AcqRel)
    }

    /// `HandlerSlot::dispatch`, with `handler_body` run after the handler
    /// as part of the call. Returns whether a handler (not the default)
    /// handled the event.
    fn dispatch(&self, handler_body: impl FnOnce(usize)) -> bool {
        self.domain.registered_section(|| {
            // Acquire: pairs with the Release half of `set`'s swap.
            let index = self.current.load(Ordering::Acquire);
            if index == NONE {
                return false;
            }
            self.handlers[index].call(index);
            handler_body(index);
            // The handler keeps using its data until it returns.
            self.handlers[index].call(index);
            true
        })
    }

    /// `RetiredHandler::synchronize`: a grace period, then the free.
    fn reclaim(&self, retired: usize) {
        if retired != NONE {
            self.domain.run();
            self.handlers[retired].free();
        }
    }
}

/// `set` replaces handler 0 with handler 1 and `synchronize`s the retired
/// one, then `unset` restores the default handler and frees handler 1,
/// while another thread dispatches. A dispatch sees handler 0, handler 1
/// or the default, always initialised and never freed.
#[test]
fn loom_handler_slot_set_and_unset_against_dispatch() {
    loom::model(|| {
        let slot = Arc::new(Slot::new());
        slot.handlers[0].init(0);
        slot.set(0);

        let dispatcher = {
            let slot = slot.clone();
            thread::spawn(move || {
                slot.dispatch(|_| ());
            })
        };

        slot.handlers[1].init(1);
        let retired = slot.set(1);
        assert_eq!(retired, 0);
        slot.reclaim(retired);
        let retired = slot.unset();
        assert_eq!(retired, 1);
        slot.reclaim(retired);

        dispatcher.join().unwrap();
    });
}

/// A handler that unsets its own slot from inside the signal handler
/// (`HandlerSlot::unset` in the trampoline, then `RetiredHandler::defer`).
/// The retired handler goes to the updater thread, which stands in for the
/// reclaimer: it runs a grace period and frees the handler. The grace
/// period must wait for the dispatch that is still running the handler.
#[test]
fn loom_handler_unsetting_itself_is_freed_after_its_dispatch() {
    loom::model(|| {
        let slot = Arc::new(Slot::new());
        slot.handlers[0].init(0);
        slot.set(0);
        // NONE until the handler has deferred itself.
        let deferred = Arc::new(AtomicUsize::new(NONE));

        let dispatcher = {
            let slot = slot.clone();
            let deferred = deferred.clone();
            thread::spawn(move || {
                let handled = slot.dispatch(|_| {
                    let retired = slot.unset();
                    // Release: the reclaimer's Acquire load sees the node
                    // the handler retired, as the queue's push publishes it.
                    deferred.store(retired, Ordering::Release);
                });
                assert!(handled, "the first dispatch runs handler 0");
                assert!(!slot.dispatch(|_| ()), "the slot was unset");
            })
        };

        let retired = loop {
            let retired = deferred.load(Ordering::Acquire);
            if retired != NONE {
                break retired;
            }
            thread::yield_now();
        };
        assert_eq!(retired, 0);
        slot.reclaim(retired);

        dispatcher.join().unwrap();
    });
}

/// Arrays a registry model can publish.
const ARRAYS: usize = 2;

/// Handlers a registry model knows.
const HANDLERS: usize = 2;

/// One immutable handler array (`HandlerList`).
struct Array {
    len: UnsafeCell<usize>,
    entries: [UnsafeCell<usize>; HANDLERS],
}

/// A `HandlerRegistry<A>` restated over loom atomics.
struct Registry {
    domain: ModelDomain,
    /// `NONE` or the index of the published array.
    current: AtomicUsize,
    arrays: [Array; ARRAYS],
    handlers: [HandlerData; HANDLERS],
    /// Each handler's `Arc` strong count: one per array holding it, plus
    /// one for a `RemovedHandler`.
    references: [AtomicUsize; HANDLERS],
}

impl Registry {
    fn new() -> Self {
        let array = || Array {
            len: UnsafeCell::new(0),
            entries: core::array::from_fn(|_| UnsafeCell::new(POISON)),
        };
        Registry {
            domain: ModelDomain::new(),
            current: AtomicUsize::new(NONE),
            arrays: [array(), array()],
            handlers: [HandlerData::new(), HandlerData::new()],
            references: core::array::from_fn(|_| AtomicUsize::new(0)),
        }
    }

    /// Builds array `array` holding `handlers`, taking one reference to
    /// each (the copy step of a copy-update, `Arc::clone` per entry).
    fn build(&self, array: usize, handlers: &[usize]) {
        let target = &self.arrays[array];
        for (position, &handler) in handlers.iter().enumerate() {
            // Relaxed, as `Arc::clone`: the new array is not shared yet.
            self.references[handler].fetch_add(1, Ordering::Relaxed);
            target.entries[position].with_mut(|entry| {
                // SAFETY: the array is not published yet.
                unsafe { *entry = handler }
            });
        }
        target.len.with_mut(|len| {
            // SAFETY: as above.
            unsafe { *len = handlers.len() }
        });
    }

    /// Publishes array `array` and returns the retired one.
    fn publish(&self, array: usize) -> usize {
        // AcqRel, as in `RcuOption::replace`.
        self.current.swap(array, Ordering::AcqRel)
    }

    /// Drops one reference to `handler`, freeing it with the last one.
    fn release(&self, handler: usize) {
        // Release, then an Acquire fence before the free, as `Arc` does:
        // every use made under another reference happens before the free.
        if self.references[handler].fetch_sub(1, Ordering::Release) == 1 {
            fence(Ordering::Acquire);
            self.handlers[handler].free();
        }
    }

    /// Drops a retired array after a grace period: its entries lose one
    /// reference each and its memory is poisoned.
    fn reclaim(&self, array: usize) {
        self.domain.run();
        let target = &self.arrays[array];
        let len = target.len.with_mut(|len| {
            // SAFETY: the grace period ended every dispatch that could have
            // loaded this array.
            unsafe { core::mem::replace(&mut *len, POISON) }
        });
        for entry in &target.entries[..len] {
            let handler = entry.with_mut(|entry| {
                // SAFETY: as above.
                unsafe { core::mem::replace(&mut *entry, POISON) }
            });
            self.release(handler);
        }
    }

    /// `HandlerRegistry::dispatch`: walks the published array inside one
    /// section, calls every handler (each returns `Handled`) and returns
    /// how many ran.
    fn dispatch(&self) -> usize {
        self.domain.registered_section(|| {
            // Acquire: pairs with the Release half of `publish`.
            let array = self.current.load(Ordering::Acquire);
            if array == NONE {
                return 0;
            }
            let target = &self.arrays[array];
            let len = target.len.with(|len| {
                // SAFETY: loaded inside the section; loom checks that the
                // free is ordered after it.
                unsafe { *len }
            });
            assert_ne!(
                len, POISON,
                "dispatch walked array {array} after it was freed"
            );
            for entry in &target.entries[..len] {
                let handler = entry.with(|entry| {
                    // SAFETY: as above.
                    unsafe { *entry }
                });
                self.handlers[handler].call(handler);
            }
            len
        })
    }
}

/// `register` copies the array holding handler 0, adds handler 1, publishes
/// the copy and reclaims the old array, while another thread dispatches.
/// The dispatch walks either the old array or the new one, whole.
#[test]
fn loom_registry_register_against_dispatch_walk() {
    loom::model(|| {
        let registry = Arc::new(Registry::new());
        registry.handlers[0].init(0);
        registry.build(0, &[0]);
        registry.publish(0);

        let dispatcher = {
            let registry = registry.clone();
            thread::spawn(move || {
                let handled = registry.dispatch();
                assert!(handled == 1 || handled == 2, "dispatch summed {handled}");
            })
        };

        // `register("h1", Order::Last, ...)`: a new entry, one reference
        // for the new array.
        registry.handlers[1].init(1);
        registry.build(1, &[0, 1]);
        let retired = registry.publish(1);
        assert_eq!(retired, 0);
        registry.reclaim(retired);

        dispatcher.join().unwrap();
        assert_eq!(registry.references[0].load(Ordering::Relaxed), 1);
    });
}

/// `unregister` copies the array without handler 0, publishes it, waits for
/// a grace period, drops the old array and then the removed entry, which
/// frees handler 0, while another thread dispatches. The dispatch never
/// calls handler 0 after it is freed, and sees one array whole.
#[test]
fn loom_registry_unregister_against_dispatch_walk() {
    loom::model(|| {
        let registry = Arc::new(Registry::new());
        registry.handlers[0].init(0);
        registry.handlers[1].init(1);
        // After `register`, each entry's only reference is the array's.
        registry.build(0, &[0, 1]);
        registry.publish(0);

        let dispatcher = {
            let registry = registry.clone();
            thread::spawn(move || {
                let handled = registry.dispatch();
                assert!(handled == 1 || handled == 2, "dispatch summed {handled}");
            })
        };

        // `remove("h0")`: the copy holds handler 1 only; the removed entry
        // keeps the reference the copy took to handler 0.
        registry.build(1, &[1]);
        registry.references[0].fetch_add(1, Ordering::Relaxed);
        let retired = registry.publish(1);
        assert_eq!(retired, 0);
        // `RemovedHandler::synchronize`: grace period, old array, entry.
        registry.reclaim(retired);
        registry.release(0);

        dispatcher.join().unwrap();
        assert_eq!(registry.references[0].load(Ordering::Relaxed), 0);
    });
}
