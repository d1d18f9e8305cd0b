//! A registry of named handlers for one event, modelled on the kernel's
//! `register_nmi_handler` (arch/x86/kernel/nmi.c).
//!
//! # Design
//!
//! The handlers form an immutable array, published through an
//! [`RcuOption`]. Updates copy the array, change the copy and publish it
//! with Release ordering; the old array is retired and freed after a grace
//! period. Dispatch is a read-side critical section that loads the array
//! with Acquire ordering and calls every handler, so it takes no lock and
//! cannot see a half-updated list. Updates are serialised by a mutex that
//! dispatch never touches.
//!
//! Each handler lives in an [`Arc`] shared by the arrays that contain it,
//! so its statistics survive copy-updates. A handler is dropped when the
//! last array holding it has been reclaimed.
//!
//! # Statistics and the duration watchdog
//!
//! Dispatch times every call with `CLOCK_MONOTONIC` and keeps per handler
//! the number of calls, the number of [`Outcome::Handled`] results and the
//! maximum duration, all with Relaxed atomics. When a call sets a new
//! maximum above the threshold (1 ms unless changed), dispatch only raises
//! a flag, because logging is not async-signal-safe.
//! [`HandlerRegistry::report_slow_handlers`] then logs one `log::warn!`
//! line per new maximum, at most once per second per handler, from outside
//! signal context. The registry calls it on every update and statistics
//! query; the signal layer also calls it from a watchdog thread.
//!
//! # Signal context
//!
//! [`HandlerRegistry::dispatch`] and [`HandlerRegistry::dispatch_or`] are
//! async-signal-safe. Registering and unregistering allocate and lock, and
//! panic inside a signal handler.

use core::fmt;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use core::time::Duration;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::handler::{BoxedHandler, DispatchCounters, Outcome};
use crate::{read_lock, RcuBox, RcuOption, Retired};

/// The default watchdog threshold: a handler call longer than this is
/// reported.
///
/// # Examples
///
/// ```
/// use nmi_rcu::{HandlerRegistry, DEFAULT_WATCHDOG_THRESHOLD};
///
/// let registry = HandlerRegistry::<()>::new();
/// assert_eq!(registry.watchdog_threshold(), DEFAULT_WATCHDOG_THRESHOLD);
/// ```
pub const DEFAULT_WATCHDOG_THRESHOLD: Duration = Duration::from_millis(1);

/// The minimum time between two watchdog warnings for the same handler.
const WARNING_INTERVAL_NS: u64 = 1_000_000_000;

/// The position of a new handler in the dispatch order.
///
/// # Examples
///
/// ```
/// use nmi_rcu::{HandlerRegistry, Order, Outcome};
///
/// let registry = HandlerRegistry::<()>::new();
/// registry.register("late", Order::Last, |_: &()| Outcome::NotHandled)?;
/// registry.register("early", Order::First, |_: &()| Outcome::NotHandled)?;
/// let names: Vec<String> = registry.stats().into_iter().map(|s| s.name).collect();
/// assert_eq!(names, ["early", "late"]);
/// # Ok::<(), nmi_rcu::HandlerError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, Default)]
pub enum Order {
    /// Run before every handler registered so far (the kernel's
    /// `NMI_FLAG_FIRST`).
    First,
    /// Run after every handler registered so far.
    #[default]
    Last,
}

/// An invalid registry request.
///
/// # Examples
///
/// ```
/// use nmi_rcu::{HandlerError, HandlerRegistry};
///
/// let registry = HandlerRegistry::<()>::new();
/// let error = registry.unregister("missing").unwrap_err();
/// assert_eq!(error, HandlerError::NotRegistered { name: "missing".into() });
/// assert_eq!(
///     error.to_string(),
///     "no handler named \"missing\" is registered; check the name"
/// );
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum HandlerError {
    /// A handler with this name is already registered.
    DuplicateName {
        /// The rejected name.
        name: String,
    },
    /// No handler with this name is registered.
    NotRegistered {
        /// The name that was not found.
        name: String,
    },
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::DuplicateName { name } => write!(
                f,
                "a handler named {name:?} is already registered; unregister it first or choose another name"
            ),
            HandlerError::NotRegistered { name } => {
                write!(f, "no handler named {name:?} is registered; check the name")
            }
        }
    }
}

impl std::error::Error for HandlerError {}

/// A snapshot of one handler's statistics.
///
/// # Examples
///
/// ```
/// use nmi_rcu::{HandlerRegistry, Order, Outcome};
///
/// let registry = HandlerRegistry::<u8>::new();
/// registry.register("odd", Order::Last, |n: &u8| {
///     if n % 2 == 1 { Outcome::Handled } else { Outcome::NotHandled }
/// })?;
/// registry.dispatch(&1);
/// registry.dispatch(&2);
/// let stats = &registry.stats()[0];
/// assert_eq!((stats.name.as_str(), stats.calls, stats.handled), ("odd", 2, 1));
/// # Ok::<(), nmi_rcu::HandlerError>(())
/// ```
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HandlerStats {
    /// The name the handler was registered under.
    pub name: String,
    /// The position the handler was registered at.
    pub order: Order,
    /// Calls of the handler.
    pub calls: u64,
    /// Calls that returned [`Outcome::Handled`].
    pub handled: u64,
    /// The maximum duration of one call.
    pub max_duration: Duration,
}

/// One registered handler and its statistics, shared by every published
/// array that contains it.
struct Entry<A: 'static> {
    name: Box<str>,
    order: Order,
    handler: BoxedHandler<A>,
    // The counters below are Relaxed: statistics that order no other memory.
    calls: AtomicU64,
    handled: AtomicU64,
    max_ns: AtomicU64,
    /// The maximum already reported by the watchdog; only touched outside
    /// signal context, under the registry's update lock.
    reported_ns: AtomicU64,
    /// When the last warning was logged, as `CLOCK_MONOTONIC` nanoseconds.
    warned_at_ns: AtomicU64,
}

impl<A: 'static> Entry<A> {
    fn stats(&self) -> HandlerStats {
        HandlerStats {
            name: self.name.to_string(),
            order: self.order,
            calls: self.calls.load(Ordering::Relaxed),
            handled: self.handled.load(Ordering::Relaxed),
            max_duration: Duration::from_nanos(self.max_ns.load(Ordering::Relaxed)),
        }
    }
}

/// The immutable handler array that dispatch walks.
struct HandlerList<A: 'static> {
    entries: Box<[Arc<Entry<A>>]>,
}

/// A registry of named handlers for one kind of event, with nmi.c
/// semantics: dispatch calls every handler and sums how many handled the
/// event, and the default action runs only when none did.
///
/// The module documentation describes the copy-update design, the memory
/// ordering and the watchdog. Like a [`HandlerSlot`](crate::HandlerSlot),
/// a registry contains one dispatch counter per possible registered thread
/// (`MAX_THREADS` × 8 bytes).
///
/// # Examples
///
/// ```
/// use nmi_rcu::{HandlerRegistry, Order, Outcome};
///
/// static REGISTRY: HandlerRegistry<u32> = HandlerRegistry::new();
///
/// REGISTRY.register("even", Order::Last, |n: &u32| {
///     if n % 2 == 0 { Outcome::Handled } else { Outcome::NotHandled }
/// })?;
/// REGISTRY.register("small", Order::First, |n: &u32| {
///     if *n < 10 { Outcome::Handled } else { Outcome::NotHandled }
/// })?;
///
/// assert_eq!(REGISTRY.dispatch(&4), 2);
/// assert_eq!(REGISTRY.dispatch(&13), 0);
///
/// let mut defaults = 0;
/// REGISTRY.dispatch_or(&13, |_| defaults += 1);
/// assert_eq!(defaults, 1);
///
/// REGISTRY.unregister("even")?;
/// REGISTRY.unregister_deferred("small")?;
/// assert!(REGISTRY.is_empty());
/// # Ok::<(), nmi_rcu::HandlerError>(())
/// ```
pub struct HandlerRegistry<A: 'static> {
    list: RcuOption<HandlerList<A>>,
    /// Serialises updates (copy, change, publish) and watchdog reports.
    update_lock: Mutex<()>,
    threshold_ns: AtomicU64,
    /// Raised by dispatch when a handler set a new maximum above the
    /// threshold; cleared by `report_slow_handlers`.
    report_pending: AtomicBool,
    counts: DispatchCounters,
}

/// A handler removed from a registry, with its final statistics. Its
/// memory is reclaimed after a grace period: blocking with
/// [`RemovedHandler::synchronize`], or deferred with
/// [`RemovedHandler::defer`] or by dropping it.
///
/// # Examples
///
/// ```
/// use nmi_rcu::{HandlerRegistry, Order, Outcome};
///
/// let registry = HandlerRegistry::<()>::new();
/// registry.register("gone", Order::Last, |_: &()| Outcome::Handled)?;
/// let removed = registry.remove("gone")?;
/// // Dispatch no longer sees it, but it is not freed yet.
/// assert_eq!(registry.dispatch(&()), 0);
/// let stats = removed.synchronize(); // freed now
/// assert_eq!(stats.calls, 0);
/// # Ok::<(), nmi_rcu::HandlerError>(())
/// ```
#[must_use = "dropping a RemovedHandler defers reclamation; call synchronize() to wait instead"]
pub struct RemovedHandler<A: 'static> {
    entry: Arc<Entry<A>>,
    retired: Option<Retired<HandlerList<A>>>,
}

impl<A: 'static> RemovedHandler<A> {
    /// Returns the handler's statistics as of its removal.
    pub fn stats(&self) -> HandlerStats {
        self.entry.stats()
    }

    /// Waits for a grace period, drops the handler and returns its final
    /// statistics.
    ///
    /// When this returns, no dispatch that could have called the handler is
    /// still running, and the handler (with everything it captured) has been
    /// dropped.
    ///
    /// # Panics
    ///
    /// Panics inside a read-side critical section or a signal handler.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it blocks.
    pub fn synchronize(self) -> HandlerStats {
        if let Some(retired) = self.retired {
            drop(retired.synchronize());
        }
        let stats = self.entry.stats();
        // Arrays retired by earlier updates may still hold the handler while
        // they wait for the reclaimer; a barrier lets them go first.
        if Arc::strong_count(&self.entry) > 1 {
            crate::barrier();
        }
        drop(self.entry);
        stats
    }

    /// Queues the handler to be dropped after a grace period, without
    /// building its statistics.
    pub(crate) fn discard(self) {
        if let Some(retired) = self.retired {
            retired.defer();
        }
    }

    /// Queues the handler to be dropped after a grace period and returns its
    /// statistics as of its removal.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: `HandlerStats` allocates the handler's name.
    pub fn defer(self) -> HandlerStats {
        let stats = self.entry.stats();
        if let Some(retired) = self.retired {
            retired.defer();
        }
        stats
    }
}

impl<A: 'static> fmt::Debug for RemovedHandler<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemovedHandler")
            .field("name", &self.entry.name)
            .finish_non_exhaustive()
    }
}

impl<A: 'static> HandlerRegistry<A> {
    /// Creates an empty registry. Usable in a `static`.
    pub const fn new() -> Self {
        HandlerRegistry {
            list: RcuOption::new(),
            update_lock: Mutex::new(()),
            threshold_ns: AtomicU64::new(DEFAULT_WATCHDOG_THRESHOLD.as_nanos() as u64),
            report_pending: AtomicBool::new(false),
            counts: DispatchCounters::new(),
        }
    }

    /// Registers `handler` under `name` at position `order`.
    ///
    /// # Errors
    ///
    /// [`HandlerError::DuplicateName`] when `name` is already registered;
    /// the registry is unchanged.
    ///
    /// # Panics
    ///
    /// Panics inside a signal handler, because it allocates and locks.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it allocates and takes the update lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerError, HandlerRegistry, Order, Outcome};
    ///
    /// let registry = HandlerRegistry::<()>::new();
    /// registry.register("probe", Order::Last, |_: &()| Outcome::Handled)?;
    /// let again = registry.register("probe", Order::Last, |_: &()| Outcome::Handled);
    /// assert_eq!(again, Err(HandlerError::DuplicateName { name: "probe".into() }));
    /// # Ok::<(), HandlerError>(())
    /// ```
    pub fn register(
        &self,
        name: &str,
        order: Order,
        handler: impl Fn(&A) -> Outcome + Send + Sync + 'static,
    ) -> Result<(), HandlerError> {
        assert_not_in_signal_handler("HandlerRegistry::register");
        clock::calibrate();
        let lock = self.lock_updates();

        // Room for the new entry, so that neither the insertion nor the
        // conversion to a boxed slice reallocates.
        let mut entries = self.snapshot(1);
        if entries.iter().any(|entry| *entry.name == *name) {
            return Err(HandlerError::DuplicateName {
                name: name.to_owned(),
            });
        }
        let entry = Arc::new(Entry {
            name: name.into(),
            order,
            handler: Box::new(handler),
            calls: AtomicU64::new(0),
            handled: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
            reported_ns: AtomicU64::new(0),
            warned_at_ns: AtomicU64::new(0),
        });
        match order {
            Order::First => entries.insert(0, entry),
            Order::Last => entries.push(entry),
        }
        self.publish(entries);

        self.report_locked(&lock);
        Ok(())
    }

    /// Removes the handler named `name` from the dispatch list and returns
    /// it; it is reclaimed after a grace period. The name may be registered
    /// again at once.
    ///
    /// # Errors
    ///
    /// [`HandlerError::NotRegistered`] when no handler has that name.
    ///
    /// # Panics
    ///
    /// Panics inside a signal handler, because it allocates and locks.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it allocates and takes the update lock.
    pub fn remove(&self, name: &str) -> Result<RemovedHandler<A>, HandlerError> {
        assert_not_in_signal_handler("HandlerRegistry::remove");
        let lock = self.lock_updates();

        let guard = read_lock();
        let current: &[Arc<Entry<A>>] = self.list.read(&guard).map_or(&[], |list| &list.entries);
        let Some(index) = current.iter().position(|entry| *entry.name == *name) else {
            return Err(HandlerError::NotRegistered {
                name: name.to_owned(),
            });
        };
        let entry = Arc::clone(&current[index]);
        // Exact capacity, so the conversion to a boxed slice does not
        // reallocate.
        let mut entries = Vec::with_capacity(current.len() - 1);
        entries.extend_from_slice(&current[..index]);
        entries.extend_from_slice(&current[index + 1..]);
        drop(guard);
        let retired = self.publish(entries);

        self.report_locked(&lock);
        Ok(RemovedHandler { entry, retired })
    }

    /// Unregisters the handler named `name`, waits for a grace period,
    /// drops the handler and returns its final statistics.
    ///
    /// # Errors
    ///
    /// [`HandlerError::NotRegistered`] when no handler has that name.
    ///
    /// # Panics
    ///
    /// Panics inside a read-side critical section or a signal handler.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it blocks.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerRegistry, Order, Outcome};
    ///
    /// let registry = HandlerRegistry::<()>::new();
    /// registry.register("once", Order::Last, |_: &()| Outcome::Handled)?;
    /// registry.dispatch(&());
    /// let stats = registry.unregister("once")?;
    /// assert_eq!((stats.calls, stats.handled), (1, 1));
    /// // The name is free again.
    /// registry.register("once", Order::Last, |_: &()| Outcome::Handled)?;
    /// # Ok::<(), nmi_rcu::HandlerError>(())
    /// ```
    pub fn unregister(&self, name: &str) -> Result<HandlerStats, HandlerError> {
        Ok(self.remove(name)?.synchronize())
    }

    /// Unregisters the handler named `name` and queues it to be dropped
    /// after a grace period; returns its statistics as of its removal.
    ///
    /// # Errors
    ///
    /// [`HandlerError::NotRegistered`] when no handler has that name.
    ///
    /// # Panics
    ///
    /// Panics inside a signal handler, because it allocates and locks.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it allocates and takes the update lock.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerError, HandlerRegistry, Order, Outcome};
    ///
    /// let registry = HandlerRegistry::<()>::new();
    /// let missing = registry.unregister_deferred("absent");
    /// assert_eq!(missing, Err(HandlerError::NotRegistered { name: "absent".into() }));
    /// ```
    pub fn unregister_deferred(&self, name: &str) -> Result<HandlerStats, HandlerError> {
        Ok(self.remove(name)?.defer())
    }

    /// Calls every handler on `event` in order, inside one read-side
    /// critical section, and returns how many returned
    /// [`Outcome::Handled`]. Counts the dispatch and updates each handler's
    /// statistics.
    ///
    /// # Async-signal safety
    ///
    /// Safe: a wait-free read-side critical section, `clock_gettime`
    /// (listed in signal-safety(7)) and Relaxed atomics. The handlers must
    /// themselves be async-signal-safe when this runs in a signal handler.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerRegistry, Order, Outcome};
    ///
    /// let registry = HandlerRegistry::<()>::new();
    /// assert_eq!(registry.dispatch(&()), 0);
    /// ```
    pub fn dispatch(&self, event: &A) -> usize {
        let guard = read_lock();
        self.counts.record();
        let Some(list) = self.list.read(&guard) else {
            return 0;
        };
        // Relaxed: the threshold is a tuning value; a stale one only moves
        // one report.
        let threshold_ns = self.threshold_ns.load(Ordering::Relaxed);

        // One clock reading per handler plus one, not two per handler: the
        // time between readings is the handler's, give or take the loop.
        let scale = clock::scale();
        let mut last = clock::read(scale);
        let mut handled = 0;
        for entry in list.entries.iter() {
            let outcome = (entry.handler)(event);
            let now = clock::read(scale);
            let elapsed_ns = clock::to_ns(now.saturating_sub(last), scale);
            last = now;

            // Relaxed: statistics, see `Entry`.
            entry.calls.fetch_add(1, Ordering::Relaxed);
            if outcome == Outcome::Handled {
                entry.handled.fetch_add(1, Ordering::Relaxed);
                handled += 1;
            }
            let previous_max = entry.max_ns.fetch_max(elapsed_ns, Ordering::Relaxed);
            if elapsed_ns > previous_max && elapsed_ns > threshold_ns {
                // Release: pairs with the Acquire swap in
                // `report_slow_handlers`, so the reporter sees the new
                // maximum stored above.
                self.report_pending.store(true, Ordering::Release);
            }
        }
        handled
    }

    /// Like [`HandlerRegistry::dispatch`], then runs `default_action` when
    /// no handler handled the event. Returns the number that did.
    ///
    /// # Async-signal safety
    ///
    /// Safe when `default_action` is, for the reasons given on
    /// [`HandlerRegistry::dispatch`].
    pub fn dispatch_or(&self, event: &A, default_action: impl FnOnce(&A)) -> usize {
        let handled = self.dispatch(event);
        if handled == 0 {
            default_action(event);
        }
        handled
    }

    /// Returns the number of handlers registered.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerRegistry, Order, Outcome};
    ///
    /// let registry = HandlerRegistry::<()>::new();
    /// assert!(registry.is_empty());
    /// registry.register("one", Order::Last, |_: &()| Outcome::Handled)?;
    /// assert_eq!(registry.len(), 1);
    /// assert!(registry.contains("one"));
    /// # Ok::<(), nmi_rcu::HandlerError>(())
    /// ```
    pub fn len(&self) -> usize {
        let guard = read_lock();
        self.list.read(&guard).map_or(0, |list| list.entries.len())
    }

    /// Returns `true` when no handler is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns `true` when a handler named `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        let guard = read_lock();
        self.list
            .read(&guard)
            .is_some_and(|list| list.entries.iter().any(|entry| *entry.name == *name))
    }

    /// Returns a snapshot of every handler's statistics in dispatch order,
    /// after reporting slow handlers.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it allocates.
    pub fn stats(&self) -> Vec<HandlerStats> {
        self.report_slow_handlers();
        let guard = read_lock();
        let Some(list) = self.list.read(&guard) else {
            return Vec::new();
        };
        list.entries.iter().map(|entry| entry.stats()).collect()
    }

    /// Returns the number of dispatches on all threads.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    pub fn dispatch_count(&self) -> u64 {
        self.counts.total()
    }

    /// Returns the number of dispatches on the threads that have owned slot
    /// `thread_slot` in the core's thread registry (see
    /// [`crate::current_thread_slot`]); 0 for a slot out of range. A slot
    /// is reused after its thread exits, and the count carries over.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    pub fn thread_dispatch_count(&self, thread_slot: usize) -> u64 {
        self.counts.thread(thread_slot)
    }

    /// Returns the number of dispatches on threads that have no slot in the
    /// core's thread registry.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    pub fn unregistered_dispatch_count(&self) -> u64 {
        self.counts.unregistered()
    }

    /// Sets the watchdog threshold: a handler call longer than `threshold`
    /// is reported. The default is [`DEFAULT_WATCHDOG_THRESHOLD`].
    pub fn set_watchdog_threshold(&self, threshold: Duration) {
        let nanos = u64::try_from(threshold.as_nanos()).unwrap_or(u64::MAX);
        // Relaxed: see the load in `dispatch`.
        self.threshold_ns.store(nanos, Ordering::Relaxed);
    }

    /// Returns the watchdog threshold.
    pub fn watchdog_threshold(&self) -> Duration {
        // Relaxed: see the load in `dispatch`.
        Duration::from_nanos(self.threshold_ns.load(Ordering::Relaxed))
    }

    /// Logs a `log::warn!` line for each handler whose maximum duration has
    /// grown past the watchdog threshold since its last report, at most once
    /// per second per handler. A maximum held back by that rate limit is
    /// reported by a later call.
    ///
    /// Dispatch only raises a flag, so something outside signal context has
    /// to call this: the registry does on every update and
    /// [`stats`](HandlerRegistry::stats) call, and the signal layer does
    /// from its watchdog thread.
    ///
    /// # Panics
    ///
    /// Panics inside a signal handler.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it logs and locks.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use nmi_rcu::{HandlerRegistry, Order, Outcome};
    ///
    /// let registry = HandlerRegistry::<()>::new();
    /// registry.set_watchdog_threshold(Duration::from_micros(100));
    /// registry.register("slow", Order::Last, |_: &()| {
    ///     std::thread::sleep(Duration::from_millis(2));
    ///     Outcome::Handled
    /// })?;
    /// registry.dispatch(&());
    /// // Logs "handler \"slow\" took 2.1ms, over the watchdog threshold of 100µs".
    /// registry.report_slow_handlers();
    /// # Ok::<(), nmi_rcu::HandlerError>(())
    /// ```
    pub fn report_slow_handlers(&self) {
        assert_not_in_signal_handler("HandlerRegistry::report_slow_handlers");
        // Cheap exit for the common case; the locked path repeats the swap.
        // Relaxed: a stale `false` only delays the report to the next call.
        if !self.report_pending.load(Ordering::Relaxed) {
            return;
        }
        let lock = self.lock_updates();
        self.report_locked(&lock);
    }

    /// Reports slow handlers like [`HandlerRegistry::report_slow_handlers`],
    /// for callers that already hold the update lock.
    fn report_locked(&self, _lock: &MutexGuard<'_, ()>) {
        // Acquire: pairs with the Release store in `dispatch`, so the
        // maximum that raised the flag is visible below.
        if !self.report_pending.swap(false, Ordering::Acquire) {
            return;
        }
        let threshold_ns = self.threshold_ns.load(Ordering::Relaxed);
        let now_ns = monotonic_ns();
        let guard = read_lock();
        let Some(list) = self.list.read(&guard) else {
            return;
        };

        for entry in list.entries.iter() {
            // Relaxed: these fields are only written under the update lock,
            // which this thread holds.
            let max_ns = entry.max_ns.load(Ordering::Relaxed);
            if max_ns <= threshold_ns || max_ns <= entry.reported_ns.load(Ordering::Relaxed) {
                continue;
            }
            let warned_at_ns = entry.warned_at_ns.load(Ordering::Relaxed);
            if warned_at_ns != 0 && now_ns.saturating_sub(warned_at_ns) < WARNING_INTERVAL_NS {
                // Rate-limited: keep the flag up so a later call reports it.
                self.report_pending.store(true, Ordering::Relaxed);
                continue;
            }
            log::warn!(
                "handler {:?} took {:?}, over the watchdog threshold of {:?}",
                entry.name,
                Duration::from_nanos(max_ns),
                Duration::from_nanos(threshold_ns)
            );
            entry.reported_ns.store(max_ns, Ordering::Relaxed);
            entry.warned_at_ns.store(now_ns.max(1), Ordering::Relaxed);
        }
    }

    /// Takes the update lock. A panic while holding it cannot leave the
    /// published list inconsistent (the list is immutable), so a poisoned
    /// lock is used as is.
    fn lock_updates(&self) -> MutexGuard<'_, ()> {
        self.update_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Copies the published array into a vector with room for `extra` more
    /// entries. Call with the update lock held.
    fn snapshot(&self, extra: usize) -> Vec<Arc<Entry<A>>> {
        let guard = read_lock();
        let current: &[Arc<Entry<A>>] = self.list.read(&guard).map_or(&[], |list| &list.entries);
        let mut entries = Vec::with_capacity(current.len() + extra);
        entries.extend_from_slice(current);
        entries
    }

    /// Publishes `entries` (or nothing, when empty) and returns the
    /// retired array. Call with the update lock held.
    fn publish(&self, entries: Vec<Arc<Entry<A>>>) -> Option<Retired<HandlerList<A>>> {
        let next = if entries.is_empty() {
            None
        } else {
            Some(RcuBox::new(HandlerList {
                entries: entries.into_boxed_slice(),
            }))
        };
        self.list.replace(next)
    }
}

impl<A: 'static> Default for HandlerRegistry<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: 'static> fmt::Debug for HandlerRegistry<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerRegistry")
            .field("len", &self.len())
            .field("dispatch_count", &self.dispatch_count())
            .finish_non_exhaustive()
    }
}

/// Panics with a message naming `call` when the calling thread is inside
/// a signal handler marked with [`crate::NmiContext`].
fn assert_not_in_signal_handler(call: &str) {
    assert!(
        !crate::in_nmi(),
        "{call} allocates and locks, so it must not be called from a signal handler"
    );
}

/// Returns `CLOCK_MONOTONIC` in nanoseconds, or 0 if the clock cannot be
/// read (then durations read as 0 rather than panicking).
///
/// # Async-signal safety
///
/// Safe: `clock_gettime` is listed in signal-safety(7).
#[inline]
fn monotonic_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is valid, writable storage for one `timespec`.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) } != 0 {
        return 0;
    }
    // A monotonic clock never reads negative.
    (now.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(now.tv_nsec as u64)
}

/// The clock that times handlers on the dispatch path.
///
/// `clock_gettime` costs about 25 ns here even through the vDSO, and
/// dispatch reads the clock once per handler, so on x86-64 with an invariant
/// TSC (constant rate, running in every power state; `cpuid` leaf
/// 0x8000_0007) the dispatch path reads `rdtsc` instead and scales ticks to
/// nanoseconds with a factor measured once against `CLOCK_MONOTONIC`.
/// Elsewhere, and until the factor is known, it reads `CLOCK_MONOTONIC`.
mod clock {
    use core::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Once;

    /// Nanoseconds per TSC tick in 32.32 fixed point, or 0 for "read
    /// `CLOCK_MONOTONIC` instead".
    static SCALE: AtomicU64 = AtomicU64::new(0);
    static CALIBRATE: Once = Once::new();

    /// Measures the TSC rate once, for about a millisecond. Not for signal
    /// handlers: it spins and may be slow.
    pub(super) fn calibrate() {
        CALIBRATE.call_once(|| {
            if let Some(scale) = measure_scale() {
                // Relaxed: a reader that still sees 0 uses the other clock
                // for both of its readings (`scale` is loaded once).
                SCALE.store(scale, Ordering::Relaxed);
            }
        });
    }

    #[cfg(target_arch = "x86_64")]
    fn measure_scale() -> Option<u64> {
        let max_extended = core::arch::x86_64::__cpuid(0x8000_0000).eax;
        if max_extended < 0x8000_0007 {
            return None;
        }
        let invariant = core::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0;
        if !invariant {
            return None;
        }
        let start_ns = monotonic_ns();
        let start_ticks = ticks();
        while monotonic_ns().saturating_sub(start_ns) < 1_000_000 {
            core::hint::spin_loop();
        }
        let elapsed_ns = monotonic_ns().saturating_sub(start_ns);
        let elapsed_ticks = ticks().saturating_sub(start_ticks);
        (elapsed_ticks != 0 && elapsed_ns != 0)
            .then(|| ((u128::from(elapsed_ns) << 32) / u128::from(elapsed_ticks)) as u64)
            .filter(|&scale| scale != 0)
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn measure_scale() -> Option<u64> {
        None
    }

    /// Returns the scale to pass to [`read`] and [`to_ns`] for one dispatch.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    #[inline]
    pub(super) fn scale() -> u64 {
        SCALE.load(Ordering::Relaxed)
    }

    /// Reads the clock: TSC ticks when `scale` is non-zero, else nanoseconds.
    ///
    /// # Async-signal safety
    ///
    /// Safe: `rdtsc`, or `clock_gettime`, which signal-safety(7) lists.
    #[inline]
    pub(super) fn read(scale: u64) -> u64 {
        if scale != 0 {
            ticks()
        } else {
            monotonic_ns()
        }
    }

    /// Converts a difference of two [`read`] results to nanoseconds.
    #[inline]
    pub(super) fn to_ns(delta: u64, scale: u64) -> u64 {
        if scale == 0 {
            return delta;
        }
        ((u128::from(delta) * u128::from(scale)) >> 32).min(u128::from(u64::MAX)) as u64
    }

    #[cfg(target_arch = "x86_64")]
    #[inline]
    fn ticks() -> u64 {
        // SAFETY: rdtsc has no preconditions; user space may execute it
        // unless the kernel disabled it (CR4.TSD), in which case the
        // calibration above would have faulted first.
        unsafe { core::arch::x86_64::_rdtsc() }
    }

    #[cfg(not(target_arch = "x86_64"))]
    #[inline]
    fn ticks() -> u64 {
        monotonic_ns()
    }

    use super::monotonic_ns;
}
