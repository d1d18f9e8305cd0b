//! The single-handler slot: one RCU-protected handler pointer, the user-space
//! form of the kernel's `nmi_callback` pattern.
//!
//! # Design
//!
//! A [`HandlerSlot`] is an [`RcuOption`] holding a boxed closure plus
//! dispatch counters. The empty option stands for the default handler,
//! which declines every event, so a fresh slot needs no allocation and
//! `const fn new()` works in a `static`.
//!
//! - Publishing goes through [`RcuOption::replace`], a Release store: every
//!   write the caller made before `set` (the handler's captured data
//!   included) is visible to a dispatcher that loads the new handler.
//! - Dispatch enters a read-side critical section and dereferences through
//!   [`RcuOption::read`], an Acquire load that pairs with that Release
//!   store. On weakly ordered CPUs (the reason the kernel needs
//!   `rcu_dereference` on Alpha) this is what makes the handler's data
//!   visible together with the handler.
//! - The old handler comes back as a [`RetiredHandler`], which frees it
//!   only after a grace period: every dispatch that could still be running
//!   it has returned by then.
//!
//! # Signal context
//!
//! [`HandlerSlot::dispatch`], [`HandlerSlot::set_prepared`] and
//! [`HandlerSlot::unset`] neither allocate, lock nor block, so a signal
//! handler may call them. [`HandlerSlot::set`] boxes its closure and must
//! not run in a signal handler: build a [`PreparedHandler`] beforehand
//! instead.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use crate::{current_thread_slot, read_lock, RcuBox, RcuOption, Retired, MAX_THREADS};

/// The result of a handler: whether it claimed the event.
///
/// A result of [`Outcome::NotHandled`] from every handler makes the caller
/// run its default action, like a zero return from a kernel NMI handler.
///
/// # Examples
///
/// ```
/// use nmi_rcu::Outcome;
///
/// let outcome = Outcome::Handled;
/// assert_ne!(outcome, Outcome::NotHandled);
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash)]
pub enum Outcome {
    /// The handler recognised and handled the event.
    Handled,
    /// The handler declined the event.
    NotHandled,
}

/// A boxed handler as stored in a [`HandlerSlot`] or a
/// [`HandlerRegistry`](crate::HandlerRegistry).
///
/// # Examples
///
/// ```
/// use nmi_rcu::{BoxedHandler, HandlerSlot, Outcome};
///
/// let slot = HandlerSlot::<u8>::new();
/// slot.set(|_: &u8| Outcome::Handled).defer();
/// let old: Option<BoxedHandler<u8>> = slot.unset().synchronize();
/// assert_eq!(old.map(|handler| handler(&0)), Some(Outcome::Handled));
/// ```
pub type BoxedHandler<A> = Box<dyn Fn(&A) -> Outcome + Send + Sync + 'static>;

/// A handler allocated ahead of time, so that publishing it later with
/// [`HandlerSlot::set_prepared`] does not allocate.
///
/// Build it outside signal context; publish it anywhere, a signal handler
/// included.
///
/// # Examples
///
/// ```
/// use nmi_rcu::{HandlerSlot, Outcome, PreparedHandler};
///
/// static SLOT: HandlerSlot<u32> = HandlerSlot::new();
///
/// let prepared = PreparedHandler::new(|event: &u32| {
///     if *event == 7 { Outcome::Handled } else { Outcome::NotHandled }
/// });
/// // This call allocates nothing, so it may run in a signal handler.
/// SLOT.set_prepared(prepared).synchronize();
/// assert_eq!(SLOT.dispatch(&7), Outcome::Handled);
/// ```
pub struct PreparedHandler<A: 'static> {
    boxed: RcuBox<BoxedHandler<A>>,
}

impl<A: 'static> PreparedHandler<A> {
    /// Allocates `handler` so it can be published later without
    /// allocation.
    ///
    /// The handler must be `'static`, because it may run after the caller's
    /// stack frame is gone:
    ///
    /// ```compile_fail
    /// use nmi_rcu::{Outcome, PreparedHandler};
    ///
    /// let threshold = 3u32;
    /// let borrowed = &threshold;
    /// let _ = PreparedHandler::new(move |n: &u32| {
    ///     if n > borrowed { Outcome::Handled } else { Outcome::NotHandled }
    /// });
    /// ```
    ///
    /// Moving the data in compiles:
    ///
    /// ```
    /// use nmi_rcu::{Outcome, PreparedHandler};
    ///
    /// let threshold = 3u32;
    /// let _ = PreparedHandler::new(move |n: &u32| {
    ///     if *n > threshold { Outcome::Handled } else { Outcome::NotHandled }
    /// });
    /// ```
    ///
    /// # Async-signal safety
    ///
    /// Not safe: this allocates. Call it before the signal arrives.
    pub fn new(handler: impl Fn(&A) -> Outcome + Send + Sync + 'static) -> Self {
        PreparedHandler {
            boxed: RcuBox::new(Box::new(handler)),
        }
    }
}

// SAFETY: the `RcuBox` owns its allocation exclusively, like a `Box`: its
// reclamation link stays null until the value is published, and the boxed
// handler is `Send + Sync`. The core does not mark `RcuBox` `Send` because
// of that raw link pointer, so a prepared handler built on one thread could
// not otherwise be handed to the thread whose signal handler publishes it.
unsafe impl<A: 'static> Send for PreparedHandler<A> {}

// SAFETY: a shared `&PreparedHandler` gives access to nothing but `Debug`,
// which reads no field.
unsafe impl<A: 'static> Sync for PreparedHandler<A> {}

impl<A: 'static> fmt::Debug for PreparedHandler<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedHandler").finish_non_exhaustive()
    }
}

/// A handler taken out of a [`HandlerSlot`], freed only after a grace
/// period.
///
/// It wraps the core's [`Retired`] value; when the slot held the default
/// handler, there is nothing to free and both methods return at once.
/// Dropping it defers reclamation, like [`RetiredHandler::defer`].
///
/// # Examples
///
/// ```
/// use nmi_rcu::{HandlerSlot, Outcome};
///
/// let slot = HandlerSlot::<()>::new();
/// slot.set(|_: &()| Outcome::Handled).synchronize();
/// let old = slot.unset().synchronize();
/// // After the grace period no dispatch can still be running the handler.
/// assert!(old.is_some());
/// ```
#[must_use = "dropping a RetiredHandler defers reclamation; call synchronize() to wait instead"]
pub struct RetiredHandler<A: 'static> {
    retired: Option<Retired<BoxedHandler<A>>>,
}

impl<A: 'static> RetiredHandler<A> {
    /// Returns `true` when the slot held its default handler, so there is
    /// nothing to reclaim.
    pub fn is_default(&self) -> bool {
        self.retired.is_none()
    }

    /// Waits for a grace period and returns the old handler, or `None` when
    /// the slot held its default handler.
    ///
    /// When this returns, no dispatch that could have loaded the old handler
    /// is still running, so its captured data may be freed or reused.
    ///
    /// # Panics
    ///
    /// Panics inside a read-side critical section or a signal handler
    /// (where waiting would deadlock).
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it blocks. Use [`RetiredHandler::defer`] in a signal
    /// handler.
    pub fn synchronize(self) -> Option<BoxedHandler<A>> {
        self.retired.map(Retired::synchronize)
    }

    /// Queues the old handler to be dropped after a grace period, on the
    /// reclaimer thread.
    ///
    /// # Async-signal safety
    ///
    /// Safe: the core's [`Retired::defer`] does not allocate, lock or
    /// block.
    pub fn defer(self) {
        if let Some(retired) = self.retired {
            retired.defer();
        }
    }
}

impl<A: 'static> fmt::Debug for RetiredHandler<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetiredHandler")
            .field("is_default", &self.is_default())
            .finish()
    }
}

/// Dispatch counters: a total and one counter per registered thread slot,
/// readable at any time.
///
/// Every counter is a Relaxed `fetch_add`: a signal handler that interrupts
/// the same thread's increment cannot lose a count (a plain load and store
/// could), and no other memory access is ordered by these statistics.
pub(crate) struct DispatchCounters {
    total: AtomicU64,
    /// Dispatches on threads that have no slot in the core's thread
    /// registry (threads that never called `register_thread`).
    unregistered: AtomicU64,
    per_thread: [AtomicU64; MAX_THREADS],
}

impl DispatchCounters {
    pub(crate) const fn new() -> Self {
        DispatchCounters {
            total: AtomicU64::new(0),
            unregistered: AtomicU64::new(0),
            per_thread: [const { AtomicU64::new(0) }; MAX_THREADS],
        }
    }

    /// Counts one dispatch on the calling thread.
    ///
    /// # Async-signal safety
    ///
    /// Safe: two atomic increments and the core's allocation-free
    /// [`current_thread_slot`].
    #[inline]
    pub(crate) fn record(&self) {
        // Relaxed: statistics only, see the type's documentation.
        self.total.fetch_add(1, Ordering::Relaxed);
        let counter = match current_thread_slot() {
            Some(slot) => self.per_thread.get(slot).unwrap_or(&self.unregistered),
            None => &self.unregistered,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn total(&self) -> u64 {
        // Relaxed: a statistic; see the type's documentation.
        self.total.load(Ordering::Relaxed)
    }

    pub(crate) fn unregistered(&self) -> u64 {
        // Relaxed: a statistic; see the type's documentation.
        self.unregistered.load(Ordering::Relaxed)
    }

    pub(crate) fn thread(&self, slot: usize) -> u64 {
        // Relaxed: a statistic; see the type's documentation.
        self.per_thread
            .get(slot)
            .map_or(0, |count| count.load(Ordering::Relaxed))
    }
}

/// An RCU-protected slot holding one handler, the single-pointer
/// `nmi_callback` pattern.
///
/// A fresh slot holds the default handler, which returns
/// [`Outcome::NotHandled`]. [`set`](HandlerSlot::set) and
/// [`unset`](HandlerSlot::unset) publish a new handler and hand back the
/// old one as a [`RetiredHandler`]; [`dispatch`](HandlerSlot::dispatch)
/// calls the current one inside a read-side critical section. The module
/// documentation describes the memory ordering.
///
/// A slot contains one dispatch counter per possible registered thread
/// ([`MAX_THREADS`](crate::MAX_THREADS) × 8 bytes, 32 KiB today), so prefer
/// a `static` or a `Box` over a local variable on a small thread stack.
///
/// # Examples
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use std::sync::Arc;
/// use nmi_rcu::{HandlerSlot, Outcome};
///
/// static SLOT: HandlerSlot<u64> = HandlerSlot::new();
///
/// // Initialise the handler's data before publishing the handler.
/// let sum = Arc::new(AtomicU64::new(0));
/// let seen = Arc::clone(&sum);
/// SLOT.set(move |value: &u64| {
///     seen.fetch_add(*value, Ordering::Relaxed);
///     Outcome::Handled
/// })
/// .defer();
///
/// assert_eq!(SLOT.dispatch(&5), Outcome::Handled);
///
/// // Unset, wait for a grace period, then the data may go.
/// drop(SLOT.unset().synchronize());
/// assert_eq!(SLOT.dispatch(&5), Outcome::NotHandled);
/// assert_eq!(sum.load(Ordering::Relaxed), 5);
/// assert_eq!(SLOT.dispatch_count(), 2);
/// ```
pub struct HandlerSlot<A: 'static> {
    /// The current handler; `None` is the default handler.
    current: RcuOption<BoxedHandler<A>>,
    counts: DispatchCounters,
}

impl<A: 'static> HandlerSlot<A> {
    /// Creates a slot holding the default handler, which declines every
    /// event. Usable in a `static`.
    pub const fn new() -> Self {
        HandlerSlot {
            current: RcuOption::new(),
            counts: DispatchCounters::new(),
        }
    }

    /// Publishes `handler` with Release ordering and returns the handler it
    /// replaced.
    ///
    /// Initialise everything the handler reads before this call; a
    /// dispatcher that loads the new handler sees those writes.
    ///
    /// # Panics
    ///
    /// Panics when called in a signal handler (inside
    /// [`NmiContext`](crate::NmiContext)), because boxing the closure
    /// allocates. Use [`HandlerSlot::set_prepared`] there.
    ///
    /// # Async-signal safety
    ///
    /// Not safe: it allocates.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerSlot, Outcome};
    ///
    /// let slot = HandlerSlot::new();
    /// assert!(slot.set(|n: &i32| if *n > 0 { Outcome::Handled } else { Outcome::NotHandled }).is_default());
    /// assert_eq!(slot.dispatch(&1), Outcome::Handled);
    /// assert_eq!(slot.dispatch(&-1), Outcome::NotHandled);
    /// ```
    pub fn set(
        &self,
        handler: impl Fn(&A) -> Outcome + Send + Sync + 'static,
    ) -> RetiredHandler<A> {
        assert!(
            !crate::in_nmi(),
            "HandlerSlot::set allocates and must not run in a signal handler; \
             build a PreparedHandler beforehand and call HandlerSlot::set_prepared"
        );
        self.set_prepared(PreparedHandler::new(handler))
    }

    /// Publishes a handler allocated ahead of time and returns the handler
    /// it replaced. Does not allocate.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic swap through [`RcuOption::replace`]. Drop or
    /// [`defer`](RetiredHandler::defer) the result in a signal handler;
    /// never [`synchronize`](RetiredHandler::synchronize) it there.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerSlot, Outcome, PreparedHandler};
    ///
    /// let slot = HandlerSlot::<()>::new();
    /// let prepared = PreparedHandler::new(|_: &()| Outcome::Handled);
    /// slot.set_prepared(prepared).defer();
    /// assert_eq!(slot.dispatch(&()), Outcome::Handled);
    /// ```
    pub fn set_prepared(&self, handler: PreparedHandler<A>) -> RetiredHandler<A> {
        RetiredHandler {
            retired: self.current.replace(Some(handler.boxed)),
        }
    }

    /// Restores the default handler and returns the handler it replaced.
    /// Does not allocate.
    ///
    /// # Async-signal safety
    ///
    /// Safe, for the reasons given on [`HandlerSlot::set_prepared`].
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerSlot, Outcome};
    ///
    /// let slot = HandlerSlot::<()>::new();
    /// slot.set(|_: &()| Outcome::Handled).defer();
    /// slot.unset().synchronize();
    /// assert_eq!(slot.dispatch(&()), Outcome::NotHandled);
    /// ```
    pub fn unset(&self) -> RetiredHandler<A> {
        RetiredHandler {
            retired: self.current.replace(None),
        }
    }

    /// Calls the current handler on `event` inside a read-side critical
    /// section and returns its outcome; counts the dispatch.
    ///
    /// On [`Outcome::NotHandled`] the caller runs its default action, or
    /// uses [`HandlerSlot::dispatch_or`].
    ///
    /// # Async-signal safety
    ///
    /// Safe: a wait-free read-side critical section, two Relaxed
    /// increments, and the handler, which must itself be async-signal-safe
    /// when this runs in a signal handler.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerSlot, Outcome};
    ///
    /// let slot = HandlerSlot::<u8>::new();
    /// assert_eq!(slot.dispatch(&0), Outcome::NotHandled);
    /// ```
    #[inline]
    pub fn dispatch(&self, event: &A) -> Outcome {
        let guard = read_lock();
        self.counts.record();
        match self.current.read(&guard) {
            Some(handler) => handler(event),
            None => Outcome::NotHandled,
        }
    }

    /// Like [`HandlerSlot::dispatch`], then runs `default_action` on the
    /// event when the handler declined it. The default action runs after
    /// the read-side critical section has ended.
    ///
    /// # Async-signal safety
    ///
    /// Safe when `default_action` is, for the reasons given on
    /// [`HandlerSlot::dispatch`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::cell::Cell;
    /// use nmi_rcu::{HandlerSlot, Outcome};
    ///
    /// let slot = HandlerSlot::<u8>::new();
    /// let defaults = Cell::new(0);
    /// let outcome = slot.dispatch_or(&1, |_| defaults.set(defaults.get() + 1));
    /// assert_eq!(outcome, Outcome::NotHandled);
    /// assert_eq!(defaults.get(), 1);
    /// ```
    #[inline]
    pub fn dispatch_or(&self, event: &A, default_action: impl FnOnce(&A)) -> Outcome {
        let outcome = self.dispatch(event);
        if outcome == Outcome::NotHandled {
            default_action(event);
        }
        outcome
    }

    /// Returns the number of dispatches on all threads.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    ///
    /// # Examples
    ///
    /// ```
    /// let slot = nmi_rcu::HandlerSlot::<()>::new();
    /// slot.dispatch(&());
    /// assert_eq!(slot.dispatch_count(), 1);
    /// ```
    pub fn dispatch_count(&self) -> u64 {
        self.counts.total()
    }

    /// Returns the number of dispatches on the threads that have owned slot
    /// `thread_slot` in the core's thread registry (see
    /// [`current_thread_slot`]); 0 for a slot out of range. A slot is
    /// reused after its thread exits, and the count carries over.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::{HandlerSlot, Outcome};
    ///
    /// nmi_rcu::register_thread();
    /// let slot = HandlerSlot::<()>::new();
    /// slot.dispatch(&());
    /// if let Some(me) = nmi_rcu::current_thread_slot() {
    ///     assert_eq!(slot.thread_dispatch_count(me), 1);
    /// }
    /// ```
    pub fn thread_dispatch_count(&self, thread_slot: usize) -> u64 {
        self.counts.thread(thread_slot)
    }

    /// Returns the number of dispatches on threads that have no slot in the
    /// core's thread registry.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu::HandlerSlot;
    ///
    /// static SLOT: HandlerSlot<()> = HandlerSlot::new();
    /// // A fresh thread that never registered with the library.
    /// std::thread::spawn(|| SLOT.dispatch(&())).join().unwrap();
    /// assert_eq!(SLOT.unregistered_dispatch_count(), 1);
    /// ```
    pub fn unregistered_dispatch_count(&self) -> u64 {
        self.counts.unregistered()
    }
}

impl<A: 'static> Default for HandlerSlot<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: 'static> fmt::Debug for HandlerSlot<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerSlot")
            .field("dispatch_count", &self.dispatch_count())
            .finish_non_exhaustive()
    }
}
