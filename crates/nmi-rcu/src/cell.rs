//! RCU-protected pointers: [`RcuCell`] (always holds a value), [`RcuOption`]
//! (may be empty, constructible in a `static`), the preallocated [`RcuBox`]
//! and the [`Retired`] old value.
//!
//! # Ownership and ordering
//!
//! A cell owns one heap node at a time (a `reclaim::Node<T>`). Publishing
//! swaps in a new node with Release ordering (`rcu_assign_pointer`), and
//! readers load it with Acquire ordering (`rcu_dereference`): a reader that
//! sees the new node also sees every write made before the publish,
//! including the node's contents, on every architecture. The swap hands back
//! the old node as a [`Retired`], the only owner of it from then on, which
//! frees it only after a grace period. The node doubles as the queue entry
//! for deferred reclamation, so retiring allocates nothing.
//!
//! # Why safe code cannot use a freed value
//!
//! - [`RcuCell::read`] returns a reference that borrows the guard, so it
//!   cannot outlive the read-side section, and the section delays every grace
//!   period that could free the value.
//! - A guard is `!Send`, so a section cannot migrate to a thread that never
//!   entered it.
//! - A guard from another domain is rejected at run time: the process
//!   aborts with a message, since that guard would not delay this cell's
//!   grace periods.
//! - Dropping a cell defers its last value instead of freeing it, because
//!   readers may still hold references that borrow only their guard.

use core::marker::PhantomData;
use core::mem::ManuallyDrop;
use core::ptr::{self, NonNull};
use core::sync::atomic::{AtomicPtr, Ordering};

use crate::domain::{Domain, Guard};
use crate::nmi;
use crate::reclaim::Node;
use crate::sys;

/// A value allocated ahead of publication, so that publishing it later,
/// even inside a signal handler, allocates nothing.
///
/// # Examples
///
/// ```
/// use nmi_rcu::{RcuBox, RcuCell};
///
/// let cell = RcuCell::new(1);
/// let prepared = RcuBox::new(2); // allocates here
/// let old = cell.replace_boxed(prepared); // allocates nothing
/// assert_eq!(old.synchronize(), 1);
/// ```
pub struct RcuBox<T> {
    node: Box<Node<T>>,
}

// SAFETY: an RcuBox owns its node alone; the node's queue link is unused
// until the value is retired, so sending or sharing the box is sending or
// sharing the `T`.
unsafe impl<T: Send> Send for RcuBox<T> {}
// SAFETY: as above; `&RcuBox<T>` gives only `&T`.
unsafe impl<T: Sync> Sync for RcuBox<T> {}

impl<T> RcuBox<T> {
    /// Allocates `value` for later publication.
    pub fn new(value: T) -> Self {
        RcuBox {
            node: Node::boxed_value(value),
        }
    }

    /// Returns the value, giving up the allocation.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(nmi_rcu::RcuBox::new(7).into_inner(), 7);
    /// ```
    pub fn into_inner(self) -> T {
        self.node.value
    }

    fn into_raw(self) -> *mut Node<T> {
        Box::into_raw(self.node)
    }
}

impl<T> core::ops::Deref for RcuBox<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.node.value
    }
}

impl<T: core::fmt::Debug> core::fmt::Debug for RcuBox<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("RcuBox").field(&self.node.value).finish()
    }
}

/// An old value taken out of an [`RcuCell`] or [`RcuOption`], which readers
/// may still be using. It is freed only after a grace period: blocking with
/// [`Retired::synchronize`], or deferred with [`Retired::defer`] or by
/// dropping it.
///
/// # Examples
///
/// ```
/// let cell = nmi_rcu::RcuCell::new(String::from("old"));
/// let retired = cell.replace(String::from("new"));
/// retired.defer(); // freed on the reclaimer thread after a grace period
/// nmi_rcu::barrier();
/// ```
#[must_use = "dropping a Retired defers it; call defer() or synchronize() to say which you mean"]
pub struct Retired<T: Send + 'static> {
    /// The old node, owned by this value alone.
    node: NonNull<Node<T>>,
    domain: Domain,
}

// SAFETY: a Retired owns its node and gives no access to the value until a
// grace period has passed, when it hands the value to one thread.
unsafe impl<T: Send + 'static> Send for Retired<T> {}

impl<T: Send + 'static> Retired<T> {
    /// Waits for a grace period, then returns the old value, which no reader
    /// can be using any more: the kernel's `synchronize_rcu()` followed by
    /// taking the old object back.
    ///
    /// # Panics
    ///
    /// Panics inside a read-side section of the value's domain or in NMI
    /// context, where it would deadlock (see [`synchronize`](crate::synchronize)).
    ///
    /// # Examples
    ///
    /// ```
    /// let cell = nmi_rcu::RcuCell::new(vec![1, 2]);
    /// let old = cell.replace(vec![3]).synchronize();
    /// assert_eq!(old, vec![1, 2]);
    /// ```
    pub fn synchronize(self) -> T {
        let this = ManuallyDrop::new(self);
        this.domain.synchronize();
        // SAFETY: `node` came from `Box::into_raw` in a cell, the Retired owns
        // it alone, and the grace period above ended every reader's use.
        let node = unsafe { Box::from_raw(this.node.as_ptr()) };
        // SAFETY: `this` is never used again; its domain handle is dropped
        // once here.
        drop(unsafe { ptr::read(&this.domain) });
        node.value
    }

    /// Queues the old value to be dropped on the reclaimer thread after a
    /// grace period: the kernel's `call_rcu(..., kfree)`. Allocates nothing.
    ///
    /// # Async-signal safety
    ///
    /// Safe in NMI context (inside an [`NmiContext`](crate::NmiContext), as
    /// every handler run by the signal layer is): a compare-and-swap loop
    /// and at most one `futex(2)` wake. Outside NMI context, as from a raw
    /// `sigaction` handler, it also starts the reclaimer if none is running,
    /// which allocates; enter an `NmiContext` in raw handlers that retire
    /// values.
    ///
    /// It never waits, so it applies no back-pressure: a loop that retires
    /// values faster than grace periods end should call
    /// [`synchronize`](crate::synchronize) now and then, or use
    /// [`call_rcu`](crate::call_rcu), which does wait.
    ///
    /// # Examples
    ///
    /// ```
    /// let cell = nmi_rcu::RcuCell::new(1);
    /// cell.replace(2).defer();
    /// ```
    pub fn defer(self) {
        let this = ManuallyDrop::new(self);
        let queue = &this.domain.inner().reclaim;
        // SAFETY: the node came from `Node::boxed_value` via an RcuBox and is
        // owned by this Retired, which gives it up here (push, precondition 1).
        unsafe { queue.push(&this.domain, this.node.cast()) };
        // SAFETY: `this` is never used again; its domain handle is dropped
        // once here.
        drop(unsafe { ptr::read(&this.domain) });
    }
}

impl<T: Send + 'static> Drop for Retired<T> {
    /// Defers the old value, as [`Retired::defer`] does.
    fn drop(&mut self) {
        let queue = &self.domain.inner().reclaim;
        // SAFETY: as in `defer`; the node is not used after the push.
        unsafe { queue.push(&self.domain, self.node.cast()) };
    }
}

impl<T: Send + 'static> core::fmt::Debug for Retired<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Retired").finish_non_exhaustive()
    }
}

/// Aborts: a guard from another domain cannot protect this cell.
///
/// # Async-signal safety
///
/// Safe: see `sys::fatal`.
#[cold]
#[inline(never)]
fn wrong_domain() -> ! {
    sys::fatal(b"nmi-rcu: a cell was read with a guard from another domain; use a guard from the cell's own domain\n")
}

/// A pointer to a `T` that readers dereference inside read-side sections
/// while writers replace it: the kernel's `__rcu` pointer with
/// `rcu_dereference` and `rcu_assign_pointer`.
///
/// # Examples
///
/// ```
/// use nmi_rcu::RcuCell;
///
/// let config = RcuCell::new(String::from("v1"));
/// {
///     let guard = nmi_rcu::read_lock();
///     assert_eq!(config.read(&guard), "v1");
/// }
/// let old = config.replace(String::from("v2"));
/// assert_eq!(old.synchronize(), "v1");
/// ```
///
/// A reference cannot outlive the guard it was read under:
///
/// ```compile_fail
/// let cell = nmi_rcu::RcuCell::new(1);
/// let value = {
///     let guard = nmi_rcu::read_lock();
///     cell.read(&guard)
/// };
/// println!("{value}");
/// ```
///
/// Its compiling twin uses the reference inside the section:
///
/// ```
/// let cell = nmi_rcu::RcuCell::new(1);
/// let value = {
///     let guard = nmi_rcu::read_lock();
///     *cell.read(&guard)
/// };
/// assert_eq!(value, 1);
/// ```
pub struct RcuCell<T: Send + Sync + 'static> {
    inner: RcuOption<T>,
}

impl<T: Send + Sync + 'static> RcuCell<T> {
    /// Creates a cell in the global domain.
    pub fn new(value: T) -> Self {
        Self::new_in(value, Domain::global())
    }

    /// Creates a cell whose readers use `domain`'s guards.
    ///
    /// # Examples
    ///
    /// ```
    /// let domain = nmi_rcu::Domain::new();
    /// let cell = nmi_rcu::RcuCell::new_in(5, &domain);
    /// let guard = domain.read_lock();
    /// assert_eq!(*cell.read(&guard), 5);
    /// ```
    pub fn new_in(value: T, domain: &Domain) -> Self {
        let inner = RcuOption::new_in(domain);
        let nothing = inner.replace(Some(RcuBox::new(value)));
        debug_assert!(nothing.is_none());
        core::mem::forget(nothing);
        RcuCell { inner }
    }

    /// Returns the current value: the kernel's `rcu_dereference`.
    ///
    /// The load has Acquire ordering, so everything written before the value
    /// was published is visible through the reference.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load and one pointer comparison.
    ///
    /// A guard from another domain aborts the process with a message (it
    /// would not protect the value).
    #[inline]
    #[cfg_attr(nmi_rcu_rtsan, sanitize(realtime = "nonblocking"))]
    pub fn read<'g>(&self, guard: &'g Guard<'_>) -> &'g T {
        match self.inner.read(guard) {
            Some(value) => value,
            // SAFETY: an RcuCell is created full and every replacement puts a
            // node back (invariant of `RcuCell`).
            None => unsafe { core::hint::unreachable_unchecked() },
        }
    }

    /// Publishes `value` and returns the old one as [`Retired`]: the kernel's
    /// `rcu_assign_pointer`. The store has Release ordering.
    ///
    /// # Examples
    ///
    /// ```
    /// let cell = nmi_rcu::RcuCell::new(1);
    /// cell.replace(2).defer();
    /// ```
    pub fn replace(&self, value: T) -> Retired<T> {
        self.replace_boxed(RcuBox::new(value))
    }

    /// Publishes a value allocated ahead of time; allocates nothing.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic swap, plus an atomic reference count increment for a
    /// domain other than the global one.
    pub fn replace_boxed(&self, value: RcuBox<T>) -> Retired<T> {
        match self.inner.replace(Some(value)) {
            Some(old) => old,
            // SAFETY: as in `read`.
            None => unsafe { core::hint::unreachable_unchecked() },
        }
    }
}

impl<T: Send + Sync + core::fmt::Debug + 'static> core::fmt::Debug for RcuCell<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let guard = self.inner.domain.read_lock();
        f.debug_tuple("RcuCell").field(self.read(&guard)).finish()
    }
}

/// An RCU-protected pointer that may be empty, with a `const` constructor
/// so it can live in a `static` (in the global domain).
///
/// # Examples
///
/// ```
/// use nmi_rcu::{RcuBox, RcuOption};
///
/// static CURRENT: RcuOption<u32> = RcuOption::new();
///
/// assert!(CURRENT.read(&nmi_rcu::read_lock()).is_none());
/// let old = CURRENT.replace(Some(RcuBox::new(3)));
/// assert!(old.is_none());
/// assert_eq!(CURRENT.read(&nmi_rcu::read_lock()), Some(&3));
/// CURRENT.replace(None).expect("was set").defer();
/// ```
pub struct RcuOption<T: Send + Sync + 'static> {
    /// Null or a node from `RcuBox`, owned by the cell.
    ptr: AtomicPtr<Node<T>>,
    domain: Domain,
    _owns: PhantomData<Box<Node<T>>>,
}

// SAFETY: readers on any thread get `&T` (needs T: Sync) and the value is
// dropped on the reclaimer thread (needs T: Send).
unsafe impl<T: Send + Sync + 'static> Send for RcuOption<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync + 'static> Sync for RcuOption<T> {}
// SAFETY: RcuCell is a non-empty RcuOption.
unsafe impl<T: Send + Sync + 'static> Send for RcuCell<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync + 'static> Sync for RcuCell<T> {}

impl<T: Send + Sync + 'static> RcuOption<T> {
    /// Creates an empty pointer in the global domain.
    pub const fn new() -> Self {
        RcuOption {
            ptr: AtomicPtr::new(ptr::null_mut()),
            domain: Domain::global_handle(),
            _owns: PhantomData,
        }
    }

    /// Creates an empty pointer in `domain`, and starts the domain's
    /// reclaimer so that values retired later from signal handlers are
    /// reclaimed promptly.
    pub fn new_in(domain: &Domain) -> Self {
        domain.start_reclaimer();
        RcuOption {
            ptr: AtomicPtr::new(ptr::null_mut()),
            domain: domain.clone(),
            _owns: PhantomData,
        }
    }

    /// Returns the current value, if any: the kernel's `rcu_dereference`.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load and one pointer comparison. A guard from another
    /// domain aborts the process with a message.
    #[inline]
    #[cfg_attr(nmi_rcu_rtsan, sanitize(realtime = "nonblocking"))]
    pub fn read<'g>(&self, guard: &'g Guard<'_>) -> Option<&'g T> {
        if !self.domain.is(guard.domain()) {
            wrong_domain();
        }
        // Acquire: pairs with the Release half of the swap in `replace`, so
        // the node's contents and everything written before the publish are
        // visible. This is `rcu_dereference`; the Alpha case (dependent loads
        // reordered) is covered because Acquire is stronger than consume.
        let node = self.ptr.load(Ordering::Acquire);
        // SAFETY: a non-null pointer is a live node owned by the cell or by a
        // Retired waiting for a grace period; the guard's section delays that
        // grace period at least as long as the returned borrow of the guard.
        unsafe { node.as_ref().map(|node| &node.value) }
    }

    /// Publishes `value` (or empties the pointer with `None`) and returns the
    /// old value, if any, as [`Retired`]. Allocates nothing.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic swap; outside NMI context it may also start the
    /// domain's reclaimer thread, once.
    pub fn replace(&self, value: Option<RcuBox<T>>) -> Option<Retired<T>> {
        if !nmi::in_nmi() {
            self.domain.start_reclaimer();
        }
        let new = value.map_or(ptr::null_mut(), RcuBox::into_raw);
        // AcqRel: Release publishes the new node (pairs with `read`);
        // Acquire makes the old node's contents ours to drop later.
        let old = self.ptr.swap(new, Ordering::AcqRel);
        NonNull::new(old).map(|node| Retired {
            node,
            domain: self.domain.clone(),
        })
    }

    /// Publishes a new value, allocating it here, and returns the old one.
    ///
    /// # Examples
    ///
    /// ```
    /// let slot = nmi_rcu::RcuOption::new();
    /// assert!(slot.set(1).is_none());
    /// assert_eq!(slot.set(2).map(|old| old.synchronize()), Some(1));
    /// ```
    pub fn set(&self, value: T) -> Option<Retired<T>> {
        self.replace(Some(RcuBox::new(value)))
    }

    /// Empties the pointer and returns the old value, if any.
    ///
    /// # Async-signal safety
    ///
    /// Safe, as for [`RcuOption::replace`].
    pub fn take(&self) -> Option<Retired<T>> {
        self.replace(None)
    }

    /// Returns the domain whose guards protect this pointer.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

impl<T: Send + Sync + 'static> Default for RcuOption<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: Send + Sync + 'static> Drop for RcuOption<T> {
    /// Defers the last value: readers may still hold references to it, since
    /// a reference borrows only its guard.
    fn drop(&mut self) {
        if let Some(node) = NonNull::new(*self.ptr.get_mut()) {
            drop(Retired {
                node,
                domain: self.domain.clone(),
            });
        }
    }
}

impl<T: Send + Sync + core::fmt::Debug + 'static> core::fmt::Debug for RcuOption<T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let guard = self.domain.read_lock();
        f.debug_tuple("RcuOption")
            .field(&self.read(&guard))
            .finish()
    }
}
