//! Deferred reclamation: the callback queue and the reclaimer thread of a
//! domain.
//!
//! # Queue
//!
//! Callbacks and retired values are nodes of an intrusive stack ([`Node`],
//! whose first field is a [`Header`]). Pushing is one compare-and-swap loop
//! and allocates nothing when the node already exists, so a value retired
//! inside a signal handler ([`Retired::defer`](crate::Retired::defer)) can be
//! queued there; the node was allocated when the value was published. The
//! reclaimer takes the whole stack with one swap, so there is no ABA
//! problem: nodes are never popped one at a time.
//!
//! # Reclaimer
//!
//! One thread per domain, started by the first update-side call that needs
//! it. It loops: take every queued node, run grace periods until one that
//! began after the take is over, run the nodes oldest first. Every node
//! taken together shares one grace period. For 100 ms after its last work it
//! naps in 1 ms steps and looks at the queue between naps; after that it
//! sleeps on a futex word that pushers bump only when it says it is asleep.
//! So a push costs no system call while callbacks keep coming, and a
//! callback waits at most one nap longer than its grace period. Polled grace
//! periods ([`Queue::request_grace_period`]) are driven by the same loop.
//!
//! A shared domain's reclaimer holds only a weak reference between batches,
//! so it lets the domain go once the last handle is dropped.
//!
//! # Back-pressure
//!
//! When the backlog (queued minus run) passes the domain's limit, a
//! [`Domain::call_rcu`] caller that may block waits until the reclaimer has
//! brought it under half the limit. The reclaimer meanwhile runs batches back
//! to back. Callers in NMI context, inside a section of the domain, or on the
//! reclaimer thread itself never wait, since the reclaimer may be waiting for
//! them.
//!
//! # Limitations
//!
//! In the child after `fork()`, a batch that the parent's reclaimer had taken
//! but not yet run is lost (leaked, never freed early), and nodes pushed by
//! parent threads in the middle of their push may be lost the same way.

use core::cell::Cell;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::domain::{Domain, DomainRef};
use crate::{nmi, sys};

const DEFAULT_BACKLOG_LIMIT: u64 = 100_000;

/// How long an idle reclaimer sleeps before it checks whether its domain is
/// still alive.
const IDLE_CHECK: Duration = Duration::from_millis(500);

/// How long a reclaimer with nothing to do naps before it looks at the
/// queue again, while it has had work recently. Bounds the extra delay of a
/// callback queued during a nap.
const NAP: Duration = Duration::from_millis(1);

/// Naps before an idle reclaimer sleeps until woken: 100 ms of polling
/// after the last work, then no wake-ups at all.
const NAPS_BEFORE_SLEEP: u32 = 100;

const NOT_STARTED: u32 = 0;
const RUNNING: u32 = 1;

thread_local! {
    /// Set on reclaimer threads, which must never wait for themselves.
    static IS_RECLAIMER: Cell<bool> = const { Cell::new(false) };
}

/// The link and the action of a queued node.
pub(crate) struct Header {
    next: *mut Header,
    /// Consumes the node: runs the callback or drops the value, then frees
    /// the allocation.
    ///
    /// # Safety
    ///
    /// 1. The pointer is the `Header` at the start of a live `Node<T>` created
    ///    by `Node::boxed_value::<T>` or `Queue::call` together with this
    ///    very function.
    /// 2. The node is not used again afterwards.
    consume: unsafe fn(NonNull<Header>),
}

/// A queued callback or retired value. `#[repr(C)]` keeps the header first,
/// so a `*mut Header` and a `*mut Node<T>` are the same address.
#[repr(C)]
pub(crate) struct Node<T> {
    header: Header,
    pub(crate) value: T,
}

impl<T> Node<T> {
    /// Allocates a node whose consumer drops the value.
    pub(crate) fn boxed_value(value: T) -> Box<Node<T>> {
        Box::new(Node {
            header: Header {
                next: ptr::null_mut(),
                consume: drop_node::<T>,
            },
            value,
        })
    }
}

/// Drops a `Node<T>` and its value.
///
/// # Safety
///
/// As for [`Header::consume`].
unsafe fn drop_node<T>(header: NonNull<Header>) {
    // SAFETY: by precondition 1 the header starts a `Node<T>` made by
    // `Box::new`, and by precondition 2 no other owner exists.
    drop(unsafe { Box::from_raw(header.as_ptr().cast::<Node<T>>()) });
}

/// Runs and drops a `Node<F>` holding a callback.
///
/// # Safety
///
/// As for [`Header::consume`].
unsafe fn run_callback<F: FnOnce()>(header: NonNull<Header>) {
    // SAFETY: as in `drop_node`.
    let node = unsafe { Box::from_raw(header.as_ptr().cast::<Node<F>>()) };
    (node.value)();
}

/// A domain's callback queue, counters and reclaimer state.
pub(crate) struct Queue {
    /// Top of the intrusive stack of queued nodes, newest first.
    head: AtomicPtr<Header>,
    queued: AtomicU64,
    run: AtomicU64,
    peak_backlog: AtomicU64,
    backlog_limit: AtomicU64,
    /// The largest grace-period target requested by `start_poll`.
    requested_seq: AtomicU64,
    /// Futex word the reclaimer sleeps on; bumped to wake it.
    wake_word: AtomicU32,
    /// Whether the reclaimer is asleep or about to sleep.
    sleeping: AtomicBool,
    /// `NOT_STARTED` or `RUNNING`.
    reclaimer: AtomicU32,
}

impl Queue {
    pub(crate) const fn new() -> Self {
        Self {
            head: AtomicPtr::new(ptr::null_mut()),
            queued: AtomicU64::new(0),
            run: AtomicU64::new(0),
            peak_backlog: AtomicU64::new(0),
            backlog_limit: AtomicU64::new(DEFAULT_BACKLOG_LIMIT),
            requested_seq: AtomicU64::new(0),
            wake_word: AtomicU32::new(0),
            sleeping: AtomicBool::new(false),
            reclaimer: AtomicU32::new(NOT_STARTED),
        }
    }

    /// Queues `callback` on `domain` (the domain that owns this queue).
    pub(crate) fn call<F: FnOnce() + Send + 'static>(&self, domain: &Domain, callback: F) {
        let node = Box::new(Node {
            header: Header {
                next: ptr::null_mut(),
                consume: run_callback::<F>,
            },
            value: callback,
        });
        // SAFETY: the node is a fresh `Node<F>` whose consumer matches its type.
        unsafe { self.push(domain, NonNull::from(Box::leak(node)).cast()) };
        self.throttle(domain);
    }

    /// Queues a node that already exists.
    ///
    /// # Safety
    ///
    /// 1. `node` is the header of a live node from [`Node::boxed_value`] (or
    ///    [`Queue::call`]), owned by the caller, which gives it up.
    ///
    /// # Async-signal safety
    ///
    /// Safe in NMI context: a compare-and-swap loop, counter updates and at
    /// most one `futex(2)` wake. Outside it, the push may also start the
    /// reclaimer thread, which allocates. It never waits: back-pressure is
    /// applied by `call`, not here.
    pub(crate) unsafe fn push(&self, domain: &Domain, node: NonNull<Header>) {
        // Relaxed: the count only feeds statistics and back-pressure.
        let queued = self.queued.fetch_add(1, Ordering::Relaxed) + 1;
        let backlog = queued.saturating_sub(self.run.load(Ordering::Relaxed));
        if backlog > self.peak_backlog.load(Ordering::Relaxed) {
            self.peak_backlog.fetch_max(backlog, Ordering::Relaxed);
        }

        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: the caller owns `node` until the exchange succeeds
            // (precondition 1), so writing its link is exclusive.
            unsafe { (*node.as_ptr()).next = head };
            // SeqCst on success: Release publishes the node's contents to the
            // reclaimer's Acquire swap, and the total order with the
            // reclaimer's `sleeping` store rules out a lost wake-up (see
            // `wake_if_sleeping`).
            match self.head.compare_exchange_weak(
                head,
                node.as_ptr(),
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => head = actual,
            }
        }

        if nmi::in_nmi() {
            self.wake_if_sleeping();
        } else {
            self.ensure_reclaimer(domain);
        }
    }

    /// Asks the reclaimer to run grace periods until `target` is reached.
    pub(crate) fn request_grace_period(&self, domain: &Domain, target: u64) {
        self.requested_seq.fetch_max(target, Ordering::SeqCst);
        self.ensure_reclaimer(domain);
        // Cut a nap short, so a polled grace period is not delayed by it.
        self.wake();
    }

    /// Starts the reclaimer if it is not running, and wakes it.
    fn ensure_reclaimer(&self, domain: &Domain) {
        // Acquire: pairs with the Release that marks the reclaimer stopped,
        // so a restart sees its last state.
        if self.reclaimer.load(Ordering::Acquire) == NOT_STARTED
            && self
                .reclaimer
                .compare_exchange(NOT_STARTED, RUNNING, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let weak = domain.downgrade();
            let spawned = std::thread::Builder::new()
                .name("nmi-rcu-reclaim".into())
                .spawn(move || reclaimer_main(weak));
            if let Err(error) = spawned {
                // The queue keeps its nodes; the next update-side call tries
                // again. Nothing is freed early, only late.
                log::error!("cannot start the nmi-rcu reclaimer thread ({error}); callbacks wait for the next attempt");
                self.reclaimer.store(NOT_STARTED, Ordering::Release);
            }
            return;
        }
        self.wake_if_sleeping();
    }

    /// Starts the reclaimer thread of `domain` ahead of need, so that values
    /// retired later from signal handlers are reclaimed promptly.
    pub(crate) fn start(&self, domain: &Domain) {
        if self.reclaimer.load(Ordering::Acquire) == NOT_STARTED {
            self.ensure_reclaimer(domain);
        }
    }

    /// Wakes the reclaimer if it sleeps.
    ///
    /// # Async-signal safety
    ///
    /// Safe: atomics and at most one `futex(2)` wake.
    fn wake_if_sleeping(&self) {
        // SeqCst: with the SeqCst push and the reclaimer's SeqCst store of
        // `sleeping` followed by its SeqCst load of `head`, either the
        // reclaimer sees our node or we see it asleep.
        if self.sleeping.load(Ordering::SeqCst) {
            self.wake();
        }
    }

    /// Wakes the reclaimer unconditionally.
    pub(crate) fn wake(&self) {
        self.wake_word.fetch_add(1, Ordering::SeqCst);
        sys::futex_wake(&self.wake_word, 1);
    }

    /// Makes the caller wait while the backlog is over the limit.
    fn throttle(&self, domain: &Domain) {
        let limit = self.backlog_limit.load(Ordering::Relaxed);
        if self.backlog() <= limit
            || nmi::in_nmi()
            || IS_RECLAIMER.with(Cell::get)
            || domain.inner().current_thread_nesting() != 0
        {
            return;
        }
        self.wake();
        while self.backlog() > limit / 2 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    fn backlog(&self) -> u64 {
        self.queued
            .load(Ordering::Relaxed)
            .saturating_sub(self.run.load(Ordering::Relaxed))
    }

    pub(crate) fn set_backlog_limit(&self, limit: u64) {
        self.backlog_limit.store(limit, Ordering::Relaxed);
    }

    pub(crate) fn stats(&self) -> crate::Stats {
        let queued = self.queued.load(Ordering::Relaxed);
        let run = self.run.load(Ordering::Relaxed);
        crate::Stats {
            grace_periods: 0,
            callbacks_queued: queued,
            callbacks_run: run,
            backlog: queued.saturating_sub(run),
            peak_backlog: self.peak_backlog.load(Ordering::Relaxed),
        }
    }

    /// Waits until every node queued before the call has been consumed.
    pub(crate) fn barrier(&self, domain: &Domain) {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        let signal = Arc::clone(&done);
        self.call(domain, move || {
            let (flag, condvar) = &*signal;
            *flag.lock().unwrap_or_else(|poison| poison.into_inner()) = true;
            condvar.notify_all();
        });
        // Cut a nap short: the caller is blocked until the queue is run.
        self.wake();
        let (flag, condvar) = &*done;
        let mut finished = flag.lock().unwrap_or_else(|poison| poison.into_inner());
        while !*finished {
            finished = condvar
                .wait(finished)
                .unwrap_or_else(|poison| poison.into_inner());
        }
    }

    /// Takes every queued node, waits for a grace period that began after
    /// the take, and consumes the nodes oldest first. Returns how many ran.
    fn run_batch(&self, domain: &Domain) -> u64 {
        // Acquire: pairs with the pushers' SeqCst exchange, so the nodes'
        // contents are visible.
        let top = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        let inner = domain.inner();
        let requested = self.requested_seq.load(Ordering::SeqCst);
        if top.is_null() && inner.completed(requested) {
            return 0;
        }
        inner.wait_for_seq(inner.snapshot().max(requested));
        // SAFETY: the swap made this thread the only owner of the list.
        unsafe { self.consume_list(top) }
    }

    /// Consumes a taken list, oldest first, and counts it.
    ///
    /// # Safety
    ///
    /// 1. `top` is null or the newest node of a list taken from `head`, owned
    ///    by the caller, whose grace period is over.
    unsafe fn consume_list(&self, top: *mut Header) -> u64 {
        // Reverse the newest-first stack so callbacks run in queue order.
        let mut oldest: *mut Header = ptr::null_mut();
        let mut cursor = top;
        while let Some(node) = NonNull::new(cursor) {
            // SAFETY: list nodes are live and owned by us (precondition 1).
            unsafe {
                cursor = (*node.as_ptr()).next;
                (*node.as_ptr()).next = oldest;
            }
            oldest = node.as_ptr();
        }

        let mut count = 0;
        while let Some(node) = NonNull::new(oldest) {
            // SAFETY: as above; the link is read before the node is consumed.
            let (next, consume) = unsafe { ((*node.as_ptr()).next, (*node.as_ptr()).consume) };
            oldest = next;
            // Counted as the node starts, so that a barrier callback is
            // already counted when its waiter wakes up and reads statistics.
            // Relaxed: the count feeds statistics and back-pressure only.
            self.run.fetch_add(1, Ordering::Relaxed);
            // SAFETY: `consume` belongs to this node (Header::consume, 1), and
            // the node is not touched again (2).
            let outcome = catch_unwind(AssertUnwindSafe(|| unsafe { consume(node) }));
            if outcome.is_err() {
                log::error!(
                    "an nmi-rcu callback panicked; the reclaimer continues with the next one"
                );
            }
            count += 1;
        }
        count
    }

    /// Consumes every queued node at once. Only for a domain being dropped,
    /// which no reader can be using.
    pub(crate) fn run_all_now(&self) {
        let top = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        // SAFETY: the swap gave us the list, and with no handle left there is
        // no reader, so every grace period is trivially over.
        unsafe { self.consume_list(top) };
    }

    /// In the child after `fork()`, where the reclaimer thread does not
    /// exist: lets the next update-side call start a new one, and recounts
    /// the backlog from the nodes still queued.
    ///
    /// # Async-signal safety
    ///
    /// Safe: atomic loads and stores and a walk of the queued list.
    pub(crate) fn mark_reclaimer_gone(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
        self.reclaimer.store(NOT_STARTED, Ordering::Release);

        // Nodes the parent's reclaimer had taken are lost to the child (see
        // the module notes). Count only what is still queued, or
        // back-pressure would wait for callbacks that can never run.
        let mut queued_now = 0u64;
        let mut cursor = self.head.load(Ordering::Relaxed);
        while let Some(node) = NonNull::new(cursor) {
            queued_now += 1;
            // SAFETY: queued nodes stay live until a reclaimer takes them, and
            // the child has no reclaimer yet.
            cursor = unsafe { (*node.as_ptr()).next };
        }
        let run = self.run.load(Ordering::Relaxed);
        self.queued.store(run + queued_now, Ordering::Relaxed);
    }
}

/// The reclaimer thread's loop.
fn reclaimer_main(domain_ref: DomainRef) {
    IS_RECLAIMER.with(|flag| flag.set(true));
    crate::register_thread();
    let mut idle_naps = 0;
    while let Some(domain) = domain_ref.upgrade() {
        let queue = &domain.inner().reclaim;
        // Read before checking for work, so a wake-up after the check makes
        // the futex wait return at once.
        let wake_value = queue.wake_word.load(Ordering::SeqCst);
        let requested = queue.requested_seq.load(Ordering::SeqCst);
        let polled = !domain.inner().completed(requested);
        if queue.run_batch(&domain) != 0 || polled {
            idle_naps = 0;
            continue;
        }

        // Idle. A shared domain whose only handle is ours is going away.
        if domain.handle_count() == 1 {
            queue.reclaimer.store(NOT_STARTED, Ordering::Release);
            return;
        }

        // Nap: pushers see `sleeping` false and make no system call, so
        // queueing stays cheap while callbacks keep coming. `barrier`,
        // `start_poll` and back-pressure still cut a nap short with `wake`.
        if idle_naps < NAPS_BEFORE_SLEEP {
            idle_naps += 1;
            sys::futex_wait(&queue.wake_word, wake_value, Some(NAP));
            continue;
        }
        idle_naps = 0;

        // Sleep until a pusher wakes us. SeqCst: see `wake_if_sleeping`.
        queue.sleeping.store(true, Ordering::SeqCst);
        let requested = queue.requested_seq.load(Ordering::SeqCst);
        if queue.head.load(Ordering::SeqCst).is_null() && domain.inner().completed(requested) {
            sys::futex_wait(&queue.wake_word, wake_value, Some(IDLE_CHECK));
        }
        queue.sleeping.store(false, Ordering::Relaxed);
    }
}
