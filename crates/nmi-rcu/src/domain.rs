//! Domains, read-side guards and grace periods.
//!
//! A [`Domain`] is one independent RCU: its own grace-period counter, its own
//! fallback counters, its own callback queue and reclaimer thread. Readers
//! of one domain never delay another. The global domain behind
//! [`read_lock`](crate::read_lock) and [`synchronize`](crate::synchronize) is
//! a `static`; [`Domain::new`] creates more.
//!
//! The protocol itself is in [`crate::protocol`]; this module applies it to
//! the thread registry ([`crate::threads`]) and adds what the protocol leaves
//! out: grace-period sharing, polling, stall warnings and misuse checks.
//!
//! # Grace-period sequence
//!
//! `gp_seq` counts grace periods the way the kernel's `rcu_seq` does: it is
//! even while idle, odd while a grace period runs, and goes up by two per
//! grace period. A caller that needs "a full grace period after now" takes a
//! snapshot, the smallest even value at least one whole grace period away
//! (`(seq + 3) & !1`), and waits until `gp_seq` reaches it. Concurrent
//! callers whose snapshots fall at or below the same value share one grace
//! period. One caller at a time drives grace periods and wakes the others
//! after each one (see `DomainInner::wait_for_seq`).

use core::cell::Cell;
use core::marker::PhantomData;
use core::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use crate::protocol::{
    self, Barriers, FallbackCounters, FallbackTicket, GracePeriod, ReaderWord, GP_START,
};
use crate::reclaim::Queue;
use crate::threads::{self, MAX_DOMAINS};
use crate::{nmi, sys};

/// Marks a guard's state as a fallback-path section (see `Guard::state`).
const FALLBACK_TAG: usize = 1;

/// Domain id meaning "none assigned": such a domain serves every reader on
/// the fallback path.
const NO_ID: usize = usize::MAX;

/// Default time a grace period waits on one reader before the first stall
/// warning.
const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Set once `membarrier(2)` registration succeeded; never cleared.
///
/// Threads register only when it is set, so the registered read path never
/// checks it. It is written once, inside [`init`], before any thread can be
/// registered, and every updater passes through [`init`] first, so both
/// sides agree on it (`Once` orders the store before their loads).
static MEMBARRIER_READY: AtomicBool = AtomicBool::new(false);

static INIT: Once = Once::new();

/// Domain ids in use, one bit each. Bit 0 is the global domain's.
static DOMAIN_IDS: AtomicU64 = AtomicU64::new(1);

/// The domain of each assigned id, so that the child after `fork()` can
/// repair every domain. Entries are set when an id is assigned and cleared
/// before the domain is freed.
static DOMAINS: [AtomicPtrDomain; MAX_DOMAINS] = {
    let mut table = [const { AtomicPtrDomain::new(core::ptr::null_mut()) }; MAX_DOMAINS];
    table[0] = AtomicPtrDomain::new((&GLOBAL_INNER as *const DomainInner).cast_mut());
    table
};

type AtomicPtrDomain = core::sync::atomic::AtomicPtr<DomainInner>;

static GLOBAL_INNER: DomainInner = DomainInner::new(0);

static GLOBAL: Domain = Domain::global_handle();

thread_local! {
    /// Open fallback sections of the calling thread, by domain id (the last
    /// row is for domains without an id) and phase index. Used by the misuse
    /// checks and to repair the fallback counters after `fork()`.
    /// Constant-initialised without a destructor, so the read side may touch
    /// it (see the `threads` module notes).
    static FALLBACK_OPEN: [[Cell<u32>; 2]; MAX_DOMAINS + 1] =
        const { [const { [const { Cell::new(0) }; 2] }; MAX_DOMAINS + 1] };
}

/// Returns whether the updater's asymmetric barrier (`membarrier(2)`) is
/// available, which registration requires. Call after [`init`].
pub(crate) fn asymmetric_barrier_ready() -> bool {
    MEMBARRIER_READY.load(Ordering::Relaxed)
}

/// Returns the barrier mode grace periods use.
#[inline(always)]
fn barriers() -> Barriers {
    // Relaxed: see the invariant on `MEMBARRIER_READY`.
    if MEMBARRIER_READY.load(Ordering::Relaxed) {
        Barriers::Asymmetric
    } else {
        Barriers::Fenced
    }
}

/// Sets up the process-wide parts once: membarrier registration.
pub(crate) fn init() {
    INIT.call_once(|| match sys::membarrier_register() {
        Ok(()) => MEMBARRIER_READY.store(true, Ordering::Relaxed),
        Err(errno) => log::warn!(
            "membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED) is unavailable (errno {errno}); \
                 every nmi-rcu reader takes the fallback path (an atomic increment on entry and exit)"
        ),
    });
}

/// Registers the `fork()` hook when the program (or the library) is loaded,
/// before any thread can have entered a read-side section: a fallback
/// section needs no set-up call, so no later point is early enough.
#[used]
#[link_section = ".init_array"]
static REGISTER_FORK_HOOK: extern "C" fn() = register_fork_hook;

extern "C" fn register_fork_hook() {
    sys::register_atfork_child(after_fork_in_child);
}

/// Repairs every domain in the child after `fork()`: frees the registry
/// slots of threads that do not exist in the child, balances fallback
/// counters left open by them, releases a grace-period lock they held and
/// rewinds a grace period they left half done, then marks the reclaimers as
/// not started so the next update-side call starts them again.
///
/// # Async-signal safety
///
/// Safe: atomics and raw system calls only, as `fork()` from a signal
/// handler requires.
extern "C" fn after_fork_in_child() {
    if MEMBARRIER_READY.load(Ordering::Relaxed) && sys::membarrier_register().is_err() {
        sys::fatal(b"nmi-rcu: membarrier registration failed in the child after fork()\n");
    }
    threads::reset_after_fork();
    for entry in &DOMAINS {
        // Acquire: pairs with the Release store in `assign_id`.
        let domain = entry.load(Ordering::Acquire);
        if domain.is_null() {
            continue;
        }
        // SAFETY: entries point to live domains; a domain clears its entry
        // before it is freed, and no other thread runs in the child.
        unsafe { &*domain }.repair_after_fork();
    }
}

/// An independent RCU domain: the kernel's `srcu_struct`.
///
/// A `Domain` is a cheap handle: cloning it shares the same domain, which
/// lives until its last handle, guard, [`RcuCell`](crate::RcuCell) and
/// pending callback are gone. Readers of one domain never delay another
/// domain's grace periods.
///
/// Up to 64 domains alive at once (the global one included) give registered
/// threads the fast read path; further domains still work but serve every
/// reader on the fallback path.
///
/// # Examples
///
/// ```
/// use nmi_rcu::Domain;
///
/// let domain = Domain::new();
/// {
///     let _guard = domain.read_lock();
///     // Readers of `domain` do not delay the global domain.
///     nmi_rcu::synchronize();
/// }
/// domain.synchronize();
/// assert!(domain.stats().grace_periods >= 1);
/// ```
pub struct Domain {
    /// Either `&GLOBAL_INNER` or a pointer from `Arc::into_raw`.
    inner: *const DomainInner,
    /// Whether `inner` came from `Arc::into_raw` and counts as one strong
    /// reference.
    shared: bool,
}

// SAFETY: `DomainInner` is made of atomics and a lock-protected queue, and is
// shared between threads by design; the handle only adds a reference count.
unsafe impl Send for Domain {}
// SAFETY: as above.
unsafe impl Sync for Domain {}

impl Domain {
    /// Creates an independent domain.
    ///
    /// # Examples
    ///
    /// ```
    /// let domain = nmi_rcu::Domain::new();
    /// domain.synchronize();
    /// ```
    pub fn new() -> Domain {
        let inner = Arc::into_raw(Arc::new(DomainInner::new(NO_ID)));
        let domain = Domain {
            inner,
            shared: true,
        };
        // Assigned before any reader can exist, so every section of a domain
        // with an id is counted under that id (see `current_thread_nesting`).
        domain.inner().assign_id();
        domain
    }

    /// Returns the global domain, the one behind the crate-level functions.
    ///
    /// # Examples
    ///
    /// ```
    /// let global = nmi_rcu::Domain::global();
    /// let _guard = global.read_lock();
    /// ```
    pub fn global() -> &'static Domain {
        &GLOBAL
    }

    /// Returns a handle to the global domain, usable in `const` contexts.
    pub(crate) const fn global_handle() -> Domain {
        Domain {
            inner: &GLOBAL_INNER as *const DomainInner,
            shared: false,
        }
    }

    /// Starts this domain's reclaimer thread now instead of at the first
    /// deferred callback, so that values retired later from raw signal
    /// handlers (outside an [`NmiContext`](crate::NmiContext)) never need to
    /// start it there. Creating a cell in the domain does this already.
    ///
    /// # Examples
    ///
    /// ```
    /// nmi_rcu::Domain::global().start_reclaimer();
    /// ```
    pub fn start_reclaimer(&self) {
        if !nmi::in_nmi() {
            self.prepare_update_quietly();
            self.inner().reclaim.start(self);
        }
    }

    #[inline(always)]
    pub(crate) fn inner(&self) -> &DomainInner {
        // SAFETY: `inner` is `&GLOBAL_INNER` or holds a strong reference for as
        // long as this handle lives (invariant of the `inner` field).
        unsafe { &*self.inner }
    }

    /// Returns whether this handle and `other` refer to the same domain.
    #[inline(always)]
    pub(crate) fn is(&self, other: &DomainInner) -> bool {
        core::ptr::eq(self.inner, other)
    }

    /// Enters a read-side critical section of this domain: the kernel's
    /// `srcu_read_lock`. The section ends when the guard drops.
    ///
    /// See [`read_lock`](crate::read_lock) for the guarantees.
    ///
    /// # Async-signal safety
    ///
    /// Safe, on any thread: see [`read_lock`](crate::read_lock).
    ///
    /// # Examples
    ///
    /// ```
    /// let domain = nmi_rcu::Domain::new();
    /// let outer = domain.read_lock();
    /// let inner = domain.read_lock();
    /// drop(inner);
    /// drop(outer);
    /// ```
    #[inline]
    #[cfg_attr(nmi_rcu_rtsan, sanitize(realtime = "nonblocking"))]
    pub fn read_lock(&self) -> Guard<'_> {
        let inner = self.inner();
        // Relaxed: the id is assigned once, before the domain's first grace
        // period; a reader that still sees no id takes the fallback path,
        // which every grace period also waits on.
        inner.read_lock_with_id(inner.id.load(Ordering::Relaxed))
    }

    /// Waits for a grace period of this domain: returns only after every
    /// read-side section of this domain that began before the call has
    /// ended. It does not wait for sections that begin after the call.
    ///
    /// Registers the calling thread if it was not registered.
    ///
    /// # Panics
    ///
    /// Panics when called inside a read-side section of this domain or in
    /// NMI context (a signal handler running through the signal layer, or an
    /// [`NmiContext`](crate::NmiContext)), where it would deadlock.
    ///
    /// # Examples
    ///
    /// ```
    /// let domain = nmi_rcu::Domain::new();
    /// domain.synchronize();
    /// ```
    pub fn synchronize(&self) {
        self.prepare_update("synchronize");
        let inner = self.inner();
        inner.wait_for_seq(inner.snapshot());
    }

    /// Starts a polled grace period and returns its token: the kernel's
    /// `start_poll_synchronize_srcu`. The reclaimer thread drives it, so
    /// the caller never blocks; [`Domain::poll_state`] tells when it is over.
    ///
    /// # Examples
    ///
    /// ```
    /// let domain = nmi_rcu::Domain::new();
    /// let token = domain.start_poll();
    /// while !domain.poll_state(&token) {
    ///     std::thread::yield_now();
    /// }
    /// ```
    pub fn start_poll(&self) -> GraceToken {
        self.prepare_update("start_poll");
        let token = GraceToken {
            seq: self.inner().snapshot(),
            domain: self.inner,
        };
        self.inner().reclaim.request_grace_period(self, token.seq);
        token
    }

    /// Returns whether the grace period behind `token` is over: every
    /// section of this domain that began before [`Domain::start_poll`]
    /// returned `token` has ended. Never blocks.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    ///
    /// # Panics
    ///
    /// Panics when `token` came from another domain.
    ///
    /// # Examples
    ///
    /// ```
    /// let domain = nmi_rcu::Domain::new();
    /// let token = domain.start_poll();
    /// domain.synchronize();
    /// assert!(domain.poll_state(&token));
    /// ```
    pub fn poll_state(&self, token: &GraceToken) -> bool {
        assert!(
            core::ptr::eq(token.domain, self.inner),
            "nmi_rcu::Domain::poll_state() was given a GraceToken from another domain"
        );
        self.inner().completed(token.seq)
    }

    /// Queues `callback` to run after a grace period of this domain, on
    /// the domain's reclaimer thread: the kernel's `call_srcu`.
    ///
    /// See [`call_rcu`](crate::call_rcu) for batching and back-pressure.
    ///
    /// # Examples
    ///
    /// ```
    /// let domain = nmi_rcu::Domain::new();
    /// domain.call_rcu(|| println!("after a grace period"));
    /// domain.barrier();
    /// ```
    pub fn call_rcu<F: FnOnce() + Send + 'static>(&self, callback: F) {
        if !nmi::in_nmi() {
            self.prepare_update_quietly();
        }
        self.inner().reclaim.call(self, callback);
    }

    /// Waits until every callback queued on this domain before the call has
    /// run: the kernel's `srcu_barrier`.
    ///
    /// # Panics
    ///
    /// Panics inside a read-side section of this domain or in NMI context,
    /// as [`Domain::synchronize`] does.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::sync::atomic::{AtomicBool, Ordering};
    /// use std::sync::Arc;
    ///
    /// let domain = nmi_rcu::Domain::new();
    /// let ran = Arc::new(AtomicBool::new(false));
    /// let flag = ran.clone();
    /// domain.call_rcu(move || flag.store(true, Ordering::SeqCst));
    /// domain.barrier();
    /// assert!(ran.load(Ordering::SeqCst));
    /// ```
    pub fn barrier(&self) {
        self.prepare_update("barrier");
        self.inner().reclaim.barrier(self);
    }

    /// Returns this domain's grace-period and reclamation statistics.
    ///
    /// # Examples
    ///
    /// ```
    /// let domain = nmi_rcu::Domain::new();
    /// domain.synchronize();
    /// let stats = domain.stats();
    /// assert_eq!(stats.grace_periods, 1);
    /// assert_eq!(stats.callbacks_queued, 0);
    /// ```
    pub fn stats(&self) -> Stats {
        let inner = self.inner();
        let mut stats = inner.reclaim.stats();
        // Acquire: pairs with the Release store that completes a grace period.
        stats.grace_periods = inner.gp_seq.load(Ordering::Acquire) / 2;
        stats
    }

    /// Sets how long a grace period waits on a reader before it logs a
    /// stall warning (through `log::warn!`, naming the thread and the time
    /// waited). Later warnings for the same wait follow at doubling
    /// intervals. The default is 10 seconds.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// nmi_rcu::Domain::new().set_stall_timeout(Duration::from_millis(500));
    /// ```
    pub fn set_stall_timeout(&self, timeout: Duration) {
        let millis = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.inner()
            .stall_timeout_ms
            .store(millis, Ordering::Relaxed);
    }

    /// Sets the callback backlog above which [`Domain::call_rcu`] makes its
    /// caller wait for the reclaimer (see [`call_rcu`](crate::call_rcu)).
    /// The default is 100,000 callbacks.
    ///
    /// # Examples
    ///
    /// ```
    /// nmi_rcu::Domain::new().set_backlog_limit(10_000);
    /// ```
    pub fn set_backlog_limit(&self, limit: u64) {
        self.inner().reclaim.set_backlog_limit(limit.max(1));
    }

    /// Runs the misuse checks and set-up that every blocking update-side
    /// call starts with.
    fn prepare_update(&self, call: &str) {
        let inner = self.inner();
        if nmi::in_nmi() {
            panic!(
                "nmi_rcu::{call}() called in NMI context (a signal handler); \
                 it would deadlock. Defer the work with call_rcu or Retired::defer instead"
            );
        }
        self.prepare_update_quietly();
        if inner.current_thread_nesting() != 0 {
            panic!(
                "nmi_rcu::{call}() called inside a read-side critical section of the same domain; \
                 it would wait for itself forever. Drop the guard first, or use call_rcu"
            );
        }
    }

    /// Process and domain set-up shared by every update-side call, including
    /// the non-blocking ones.
    fn prepare_update_quietly(&self) {
        init();
        threads::register_current_thread();
        self.inner().assign_id();
    }

    /// Returns a weak reference for the reclaimer thread of a shared domain.
    pub(crate) fn downgrade(&self) -> DomainRef {
        if !self.shared {
            return DomainRef::Global;
        }
        // SAFETY: `inner` came from `Arc::into_raw` and this handle owns one
        // strong reference (field invariant); ManuallyDrop keeps it owned.
        let arc = core::mem::ManuallyDrop::new(unsafe { Arc::from_raw(self.inner) });
        DomainRef::Shared(Arc::downgrade(&arc))
    }

    /// Returns the number of handles to this domain, for the reclaimer's exit
    /// check. The global domain reports `usize::MAX`.
    pub(crate) fn handle_count(&self) -> usize {
        if !self.shared {
            return usize::MAX;
        }
        // SAFETY: as in `downgrade`.
        let arc = core::mem::ManuallyDrop::new(unsafe { Arc::from_raw(self.inner) });
        Arc::strong_count(&arc)
    }
}

impl Default for Domain {
    fn default() -> Self {
        Domain::new()
    }
}

impl Clone for Domain {
    fn clone(&self) -> Self {
        if self.shared {
            // SAFETY: `inner` came from `Arc::into_raw` and is alive while this
            // handle is (field invariant).
            unsafe { Arc::increment_strong_count(self.inner) };
        }
        Domain {
            inner: self.inner,
            shared: self.shared,
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        if !self.shared {
            return;
        }
        // When only the reclaimer's reference will remain, wake it so that it
        // notices and lets the domain go.
        if self.handle_count() == 2 {
            self.inner().reclaim.wake();
        }
        // SAFETY: this handle owns one strong reference (field invariant).
        unsafe { Arc::decrement_strong_count(self.inner) };
    }
}

impl core::fmt::Debug for Domain {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Domain")
            .field("global", &!self.shared)
            .field("stats", &self.stats())
            .finish()
    }
}

/// A reference the reclaimer thread keeps without keeping the domain alive.
pub(crate) enum DomainRef {
    Global,
    Shared(std::sync::Weak<DomainInner>),
}

impl DomainRef {
    /// Returns a handle if the domain is still alive.
    pub(crate) fn upgrade(&self) -> Option<Domain> {
        match self {
            DomainRef::Global => Some(GLOBAL.clone()),
            DomainRef::Shared(weak) => weak.upgrade().map(|arc| Domain {
                inner: Arc::into_raw(arc),
                shared: true,
            }),
        }
    }
}

/// The state of one domain. See the module notes.
pub(crate) struct DomainInner {
    /// The domain's index into every slot's reader words, or `NO_ID`.
    /// Assigned once by `assign_id`, released when the domain is dropped.
    id: AtomicUsize,
    /// `GP_START` with the current phase bit; stored only by the grace-period
    /// lock holder (protocol module notes).
    gp_counter: AtomicUsize,
    fallback: FallbackCounters,
    /// Grace-period sequence (module notes).
    gp_seq: AtomicU64,
    /// Serialises grace periods and the id assignment.
    gp_lock: RawLock,
    /// The largest grace-period target any blocked caller has asked for.
    gp_requested: AtomicU64,
    /// Futex word that callers waiting for a driver's grace period sleep on;
    /// bumped after every grace period.
    gp_wake: AtomicU32,
    /// Callers asleep on `gp_wake`, so the driver skips the wake-up system
    /// call when there are none.
    gp_sleepers: AtomicU32,
    stall_timeout_ms: AtomicU64,
    pub(crate) reclaim: Queue,
}

impl DomainInner {
    const fn new(id: usize) -> Self {
        Self {
            id: AtomicUsize::new(id),
            gp_counter: AtomicUsize::new(GP_START),
            fallback: FallbackCounters::new(),
            gp_seq: AtomicU64::new(0),
            gp_lock: RawLock::new(),
            gp_requested: AtomicU64::new(0),
            gp_wake: AtomicU32::new(0),
            gp_sleepers: AtomicU32::new(0),
            stall_timeout_ms: AtomicU64::new(DEFAULT_STALL_TIMEOUT.as_millis() as u64),
            reclaim: Queue::new(),
        }
    }

    /// Enters a section; `id` is this domain's id (`0` for the global one).
    ///
    /// # Async-signal safety
    ///
    /// Safe: see [`read_lock`](crate::read_lock).
    #[inline(always)]
    pub(crate) fn read_lock_with_id(&self, id: usize) -> Guard<'_> {
        match threads::current_word(id) {
            Some(word) => {
                // Asymmetric: only threads registered after membarrier
                // registration succeeded have a word (`register_current_thread`).
                protocol::word_enter(word, &self.gp_counter, Barriers::Asymmetric);
                Guard {
                    domain: self,
                    state: word as *const ReaderWord as usize,
                    _not_send: PhantomData,
                }
            }
            None => self.fallback_read_lock(id),
        }
    }

    /// Enters a section on the fallback path.
    ///
    /// # Async-signal safety
    ///
    /// Safe and wait-free: see [`FallbackCounters::enter`].
    #[inline(never)]
    #[cfg_attr(nmi_rcu_rtsan, sanitize(realtime = "nonblocking"))]
    fn fallback_read_lock(&self, id: usize) -> Guard<'_> {
        // Any address on this thread's stack spreads threads over stripes;
        // two threads that share a stripe only share a cache line.
        let marker = 0u8;
        let stripe_hint = (core::ptr::addr_of!(marker) as usize >> 12).wrapping_mul(0x9E37_79B9);
        let ticket = self.fallback.enter(&self.gp_counter, stripe_hint >> 16);
        let row = id.min(MAX_DOMAINS);
        FALLBACK_OPEN.with(|open| {
            // In bounds (row <= MAX_DOMAINS, phase index 0 or 1); `get` keeps
            // a panic path out of the read side anyway.
            if let Some(cell) = open.get(row).and_then(|row| row.get(ticket.phase_index())) {
                cell.set(cell.get().wrapping_add(1));
            }
        });
        Guard {
            domain: self,
            state: FALLBACK_TAG | ticket.to_bits() << 1 | row << 24,
            _not_send: PhantomData,
        }
    }

    /// Returns how deep the calling thread is inside sections of this domain,
    /// on either path. Domains without an id (more than 64 alive) share one
    /// count, so for them the answer may include other such domains.
    pub(crate) fn current_thread_nesting(&self) -> usize {
        // Relaxed: only this thread's own sections are counted, and an id is
        // assigned before the domain's first reader (`Domain::new`).
        let id = self.id.load(Ordering::Relaxed);
        let fallback = FALLBACK_OPEN.with(|open| {
            open.get(id.min(MAX_DOMAINS))
                .map_or(0, |row| (row[0].get() + row[1].get()) as usize)
        });
        threads::current_nesting(id) + fallback
    }

    /// Gives the domain an id, so registered threads get the fast path.
    /// Leaves it without one when all ids are taken.
    fn assign_id(&self) {
        // Relaxed: the id never changes once assigned, and the lock below
        // serialises assignment.
        if self.id.load(Ordering::Relaxed) != NO_ID {
            return;
        }
        self.gp_lock.lock();
        if self.id.load(Ordering::Relaxed) == NO_ID {
            if let Some(id) = allocate_id() {
                // Release: pairs with the Acquire load in the fork hook.
                DOMAINS[id].store(
                    self as *const DomainInner as *mut DomainInner,
                    Ordering::Release,
                );
                // Relaxed: a reader that misses the new id uses the fallback
                // path, which grace periods always wait on.
                self.id.store(id, Ordering::Relaxed);
            }
        }
        self.gp_lock.unlock();
    }

    /// Returns the grace-period sequence value that marks "a full grace
    /// period after now" (module notes).
    pub(crate) fn snapshot(&self) -> u64 {
        // SeqCst fence: the caller's publication (a Release store before
        // this call) must precede the sequence load. Reading a stale, smaller
        // value would accept a grace period that began before the
        // publication and may not wait for readers that saw the old pointer.
        fence(Ordering::SeqCst);
        (self.gp_seq.load(Ordering::SeqCst) + 3) & !1
    }

    /// Returns whether the grace period with sequence target `target` is over.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    pub(crate) fn completed(&self, target: u64) -> bool {
        // Acquire: pairs with the Release store that ends a grace period, so
        // the caller may free what the grace period protected.
        self.gp_seq.load(Ordering::Acquire) >= target
    }

    /// Runs grace periods until `target` is reached, sharing them with
    /// concurrent callers.
    ///
    /// One caller at a time is the driver: it holds `gp_lock` and runs grace
    /// periods back to back while any caller still needs one, waking every
    /// sleeping caller after each. The others sleep on `gp_wake`, so a grace
    /// period ends the waits of every caller that asked before it began. A
    /// driver whose own target is reached keeps driving for at most
    /// `EXTRA_DRIVEN` more grace periods, then hands over.
    pub(crate) fn wait_for_seq(&self, target: u64) {
        const EXTRA_DRIVEN: u32 = 2;
        while !self.completed(target) {
            // SeqCst: pairs with the driver's SeqCst load of `gp_requested`
            // after it unlocks; either it sees this request or this thread's
            // `try_lock` sees the lock free.
            self.gp_requested.fetch_max(target, Ordering::SeqCst);
            if self.gp_lock.try_lock() {
                let mut extra = 0;
                while !self.completed(target)
                    || (extra < EXTRA_DRIVEN
                        && !self.completed(self.gp_requested.load(Ordering::SeqCst)))
                {
                    if self.completed(target) {
                        extra += 1;
                    }
                    self.run_one_grace_period();
                    self.wake_gp_waiters();
                }
                self.gp_lock.unlock();
                // A request that came in after the last check above found the
                // lock taken and went to sleep: wake it to take over.
                if !self.completed(self.gp_requested.load(Ordering::SeqCst)) {
                    self.wake_gp_waiters();
                }
                continue;
            }

            // Another thread drives. Read the futex word before rechecking,
            // so a wake-up after the check makes the wait return at once; the
            // timeout covers a driver that left between our `try_lock` and
            // its last look at the requests.
            let wake_value = self.gp_wake.load(Ordering::SeqCst);
            if self.completed(target) {
                break;
            }
            self.gp_sleepers.fetch_add(1, Ordering::SeqCst);
            sys::futex_wait(&self.gp_wake, wake_value, Some(Duration::from_millis(1)));
            self.gp_sleepers.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Wakes every caller sleeping in `wait_for_seq`.
    fn wake_gp_waiters(&self) {
        self.gp_wake.fetch_add(1, Ordering::SeqCst);
        // SeqCst: pairs with the sleepers' increment before their wait; a
        // sleeper not yet counted reads `gp_wake` after our increment and
        // does not sleep.
        if self.gp_sleepers.load(Ordering::SeqCst) != 0 {
            sys::futex_wake(&self.gp_wake, i32::MAX);
        }
    }

    /// Runs one grace period. The caller holds `gp_lock`.
    fn run_one_grace_period(&self) {
        // SeqCst: pairs with the SeqCst fence and load in `snapshot`. A
        // snapshot that reads the even value from before this increment is
        // ordered before this grace period, which therefore covers its
        // publication. `gp_lock` orders the updates among drivers.
        self.gp_seq.fetch_add(1, Ordering::SeqCst);
        let run = GracePeriodRun {
            domain: self,
            id: self.id.load(Ordering::Relaxed),
            started: Instant::now(),
            next_warning: Cell::new(Duration::from_millis(
                self.stall_timeout_ms.load(Ordering::Relaxed),
            )),
        };
        run.run();
        // Release: readers of `gp_seq` (`completed`) may free memory that
        // this grace period protected; pairs with their Acquire load.
        self.gp_seq.fetch_add(1, Ordering::Release);
    }

    /// See [`after_fork_in_child`].
    fn repair_after_fork(&self) {
        self.gp_lock.force_unlock();
        // Relaxed: the child has one thread.
        let seq = self.gp_seq.load(Ordering::Relaxed);
        if seq & 1 == 1 {
            // A grace period was half done by a thread that is gone. Rewind
            // it; the next one starts from the reader words as they are now.
            self.gp_seq.store(seq - 1, Ordering::Relaxed);
        }
        let id = self.id.load(Ordering::Relaxed).min(MAX_DOMAINS);
        let own = FALLBACK_OPEN.with(|open| [open[id][0].get(), open[id][1].get()]);
        self.fallback.reset_to_open(own);
        self.reclaim.mark_reclaimer_gone();
    }
}

impl Drop for DomainInner {
    fn drop(&mut self) {
        // No handle is left, so no reader is left either: guards borrow a
        // handle. Pending callbacks can run at once.
        self.reclaim.run_all_now();
        let id = *self.id.get_mut();
        if id < MAX_DOMAINS {
            DOMAINS[id].store(core::ptr::null_mut(), Ordering::Release);
            // Release: the next owner of the id sees our reader words at rest.
            DOMAIN_IDS.fetch_and(!(1u64 << id), Ordering::Release);
        }
    }
}

fn allocate_id() -> Option<usize> {
    let mut ids = DOMAIN_IDS.load(Ordering::Relaxed);
    loop {
        let free = (!ids).trailing_zeros() as usize;
        if free >= MAX_DOMAINS {
            log::warn!("more than {MAX_DOMAINS} nmi-rcu domains are alive; new domains use the fallback read path");
            return None;
        }
        // Acquire: pairs with the Release in `DomainInner::drop`.
        match DOMAIN_IDS.compare_exchange_weak(
            ids,
            ids | (1 << free),
            Ordering::Acquire,
            Ordering::Relaxed,
        ) {
            Ok(_) => return Some(free),
            Err(actual) => ids = actual,
        }
    }
}

/// One grace period in progress, with its stall-warning state.
struct GracePeriodRun<'a> {
    domain: &'a DomainInner,
    id: usize,
    started: Instant,
    next_warning: Cell<Duration>,
}

impl GracePeriod for GracePeriodRun<'_> {
    fn gp_counter(&self) -> &AtomicUsize {
        &self.domain.gp_counter
    }

    fn fallback(&self) -> &FallbackCounters {
        &self.domain.fallback
    }

    fn master_barrier(&self) {
        match barriers() {
            Barriers::Asymmetric => sys::membarrier(),
            Barriers::Fenced => fence(Ordering::SeqCst),
        }
    }

    fn any_word_active_in(&self, phase: usize) -> bool {
        threads::any_active_in(self.id, phase)
    }

    fn backoff(&self, waited: u32, phase: usize) {
        // Spin first: most sections are shorter than a system call. Then
        // sleep, with a growing interval capped at 160 us so that a grace
        // period behind busy readers still ends soon after their sections.
        // No `sched_yield`: on Linux 6.18 (EEVDF scheduler), with a busy
        // reader on every core, a yielding updater stayed off the CPU for
        // about a scheduler tick, and `synchronize` had a p99 of 4 ms. A
        // sleeping one gets the CPU back when its timer fires: p99 95-112 us
        // in the same benchmark on a 2-core VM.
        match waited {
            0..=127 => core::hint::spin_loop(),
            _ => {
                let micros = 5u64 << ((waited - 128) / 16).min(5);
                std::thread::sleep(Duration::from_micros(micros));
                self.check_stall(phase);
            }
        }
    }
}

impl GracePeriodRun<'_> {
    /// Logs a stall warning when the wait has passed the next threshold.
    fn check_stall(&self, phase: usize) {
        let waited = self.started.elapsed();
        if waited < self.next_warning.get() {
            return;
        }
        self.next_warning.set(self.next_warning.get() * 2);

        for reader in threads::blocking_readers(self.id, phase) {
            log::warn!(
                "nmi-rcu grace period stalled for {} ms: thread {:?} (tid {}) has been in a read-side critical section since before it began",
                waited.as_millis(),
                reader.name,
                reader.tid
            );
        }
        let open = self.domain.fallback.open_sections(usize::from(phase != 0));
        if open != 0 {
            log::warn!(
                "nmi-rcu grace period stalled for {} ms: {open} read-side critical section(s) on unregistered threads (fallback path) began before it",
                waited.as_millis()
            );
        }
    }
}

/// A read-side critical section, from [`read_lock`](crate::read_lock) or
/// [`Domain::read_lock`] until the guard drops: the kernel's
/// `rcu_read_lock` ... `rcu_read_unlock`.
///
/// References obtained through a guard ([`RcuCell::read`](crate::RcuCell::read))
/// borrow it, so they cannot outlive the section. A guard stays on the
/// thread that created it:
///
/// ```compile_fail
/// let guard = nmi_rcu::read_lock();
/// std::thread::spawn(move || drop(guard));
/// ```
///
/// Its compiling twin ends the section on the same thread:
///
/// ```
/// let guard = nmi_rcu::read_lock();
/// std::thread::spawn(|| ()).join().unwrap();
/// drop(guard);
/// ```
///
/// Forgetting a guard (`mem::forget`) leaves the section open: grace periods
/// of its domain then never end, and a stall warning names the thread.
#[must_use = "the read-side critical section ends when the guard is dropped"]
pub struct Guard<'d> {
    domain: &'d DomainInner,
    /// On the registered path, the address of the thread's `&'static` reader
    /// word (see `threads::current_word`), which is 8-aligned. On the
    /// fallback path, `FALLBACK_TAG`, the ticket's bits shifted left by one
    /// and the `FALLBACK_OPEN` row shifted left by 24. One word keeps the
    /// guard in two registers across the calls inside a section, and its
    /// drop a single bit test.
    state: usize,
    /// A guard ends its section on the thread that began it.
    _not_send: PhantomData<*mut ()>,
}

impl Guard<'_> {
    /// Returns whether this section took the registered fast path (`true`)
    /// or the fallback path for unregistered threads (`false`).
    ///
    /// # Examples
    ///
    /// ```
    /// nmi_rcu::register_thread();
    /// assert!(nmi_rcu::read_lock().is_fast_path());
    /// ```
    pub fn is_fast_path(&self) -> bool {
        self.state & FALLBACK_TAG == 0
    }

    #[inline(always)]
    pub(crate) fn domain(&self) -> &DomainInner {
        self.domain
    }
}

impl Drop for Guard<'_> {
    /// Ends the section.
    ///
    /// # Async-signal safety
    ///
    /// Safe: a store on the registered path, an atomic increment on the
    /// fallback path. It never runs callbacks or frees memory.
    // RealtimeSanitizer ignores a mark on an always-inlined function, so
    // under its cfg the drop is an ordinary inline function.
    #[cfg_attr(not(nmi_rcu_rtsan), inline(always))]
    #[cfg_attr(nmi_rcu_rtsan, inline, sanitize(realtime = "nonblocking"))]
    fn drop(&mut self) {
        if self.state & FALLBACK_TAG == 0 {
            // SAFETY: an untagged state is the address of a `&'static` slot
            // word (field invariant).
            let word = unsafe { &*(self.state as *const ReaderWord) };
            // Asymmetric: see `read_lock_with_id`.
            protocol::word_exit(word, Barriers::Asymmetric);
        } else {
            self.fallback_exit();
        }
    }
}

impl Guard<'_> {
    /// Ends a fallback-path section.
    ///
    /// # Async-signal safety
    ///
    /// Safe and wait-free: see [`FallbackCounters::exit`].
    #[inline(never)]
    fn fallback_exit(&self) {
        let ticket = FallbackTicket::from_bits(self.state >> 1);
        let row = self.state >> 24;
        self.domain.fallback.exit(ticket);
        FALLBACK_OPEN.with(|open| {
            // `row` is at most MAX_DOMAINS and the phase index 0 or 1 (set in
            // `fallback_read_lock`); `get` keeps a panic path out anyway.
            if let Some(cell) = open.get(row).and_then(|row| row.get(ticket.phase_index())) {
                cell.set(cell.get().wrapping_sub(1));
            }
        });
    }
}

impl core::fmt::Debug for Guard<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Guard")
            .field("fast_path", &self.is_fast_path())
            .finish()
    }
}

/// A polled grace period from [`start_poll`](crate::start_poll) or
/// [`Domain::start_poll`]: the kernel's cookie from
/// `start_poll_synchronize_rcu`.
///
/// # Examples
///
/// ```
/// let token = nmi_rcu::start_poll();
/// nmi_rcu::synchronize();
/// assert!(nmi_rcu::poll_state(&token));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct GraceToken {
    seq: u64,
    domain: *const DomainInner,
}

// SAFETY: the domain pointer is only compared, never dereferenced.
unsafe impl Send for GraceToken {}
// SAFETY: as above.
unsafe impl Sync for GraceToken {}

/// Grace-period and reclamation statistics of a domain, from
/// [`Domain::stats`].
///
/// # Examples
///
/// ```
/// let stats = nmi_rcu::Domain::global().stats();
/// assert!(stats.callbacks_run <= stats.callbacks_queued);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Grace periods completed.
    pub grace_periods: u64,
    /// Callbacks and retired values ever queued.
    pub callbacks_queued: u64,
    /// Callbacks and retired values that have run.
    pub callbacks_run: u64,
    /// Callbacks queued but not yet run.
    pub backlog: u64,
    /// The largest backlog seen.
    pub peak_backlog: u64,
}

/// Returns the global domain's inner state.
#[inline(always)]
pub(crate) fn global_inner() -> &'static DomainInner {
    &GLOBAL_INNER
}

/// A mutual-exclusion lock on a futex word, which the child after `fork()`
/// can force open (a `std::sync::Mutex` held by a vanished thread cannot be
/// recovered).
pub(crate) struct RawLock {
    /// 0: unlocked, 1: locked, 2: locked with waiters.
    state: AtomicU32,
}

impl RawLock {
    pub(crate) const fn new() -> Self {
        Self {
            state: AtomicU32::new(0),
        }
    }

    pub(crate) fn lock(&self) {
        // Acquire: pairs with the Release in `unlock`, ordering the previous
        // holder's critical section before ours.
        if self
            .state
            .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            return;
        }
        while self.state.swap(2, Ordering::Acquire) != 0 {
            sys::futex_wait(&self.state, 2, None);
        }
    }

    /// Takes the lock if it is free, without waiting.
    pub(crate) fn try_lock(&self) -> bool {
        // SeqCst: the grace-period driver election in `wait_for_seq` relies on
        // a total order between this and a later `gp_requested` load.
        self.state
            .compare_exchange(0, 1, Ordering::SeqCst, Ordering::Relaxed)
            .is_ok()
    }

    pub(crate) fn unlock(&self) {
        // SeqCst: Release pairs with the Acquire in `lock`; the total order
        // serves the driver election in `wait_for_seq`.
        if self.state.swap(0, Ordering::SeqCst) == 2 {
            sys::futex_wake(&self.state, 1);
        }
    }

    /// Releases the lock whoever holds it. Only for the child after `fork()`.
    fn force_unlock(&self) {
        self.state.store(0, Ordering::Relaxed);
    }
}
