//! The thread registry: a fixed table of slots, one per registered thread,
//! each holding that thread's reader word for every domain.
//!
//! # Why a fixed table
//!
//! The read side must find the calling thread's reader word without
//! allocating, locking or initialising a thread-local lazily. The table is a
//! `static` array ([`SLOTS`]); the only thread-local the read side touches is
//! [`CURRENT_SLOT`], a `Cell` pointer with a constant initialiser and no
//! destructor, which Rust on Linux compiles to a plain TLS access with no
//! registration step. A thread whose `CURRENT_SLOT` is empty (never
//! registered, or the table was full) takes the fallback path.
//!
//! # Life of a slot
//!
//! [`register_current_thread`] claims a free slot with a compare-and-swap and
//! arms [`SlotRelease`], a thread-local with a destructor, so that the slot is
//! freed when the thread exits and an exited thread never holds up a grace
//! period. Registration may allocate (the destructor list does), so it never
//! happens on the read side: threads register explicitly or on their first
//! update-side call.
//!
//! After `fork()` only the forking thread survives; [`reset_after_fork`]
//! frees every other slot in the child.

use core::cell::Cell;
use core::sync::atomic::{AtomicI32, AtomicU32, AtomicU8, AtomicUsize, Ordering};

use crate::protocol::{word_state, ReaderWord, WordState, NEST_MASK};
use crate::sync::SCAN_LOAD;
use crate::sys;

/// The maximum number of threads registered at once. Further threads take
/// the fallback path, which is correct but costs an atomic increment at each
/// end of a section.
///
/// # Examples
///
/// ```
/// assert!(nmi_rcu::MAX_THREADS >= 1024);
/// ```
pub const MAX_THREADS: usize = 4096;

/// The maximum number of domains alive at once that give registered threads
/// the fast path. Further domains use the fallback path for every reader.
pub(crate) const MAX_DOMAINS: usize = 64;

/// Bytes of a thread's name kept for stall warnings.
const NAME_BYTES: usize = 32;

const FREE: u32 = 0;
const IN_USE: u32 = 1;
/// A slot whose thread exited inside a read-side section (a forgotten
/// guard). It is never reused, because the guard's eventual drop may still
/// store to it, and grace periods ignore it.
const ABANDONED: u32 = 2;

/// One registered thread's state.
#[repr(align(128))]
pub(crate) struct Slot {
    /// One reader word per domain id (invariant of [`ReaderWord`]).
    words: [ReaderWord; MAX_DOMAINS],
    /// `FREE`, `IN_USE` or `ABANDONED`.
    state: AtomicU32,
    /// Kernel thread id of the owner, for stall warnings.
    tid: AtomicI32,
    /// The owner's name, NUL-padded, for stall warnings.
    name: [AtomicU8; NAME_BYTES],
}

impl Slot {
    const fn new() -> Self {
        Self {
            words: [const { AtomicUsize::new(0) }; MAX_DOMAINS],
            state: AtomicU32::new(FREE),
            tid: AtomicI32::new(0),
            name: [const { AtomicU8::new(0) }; NAME_BYTES],
        }
    }
}

/// Every slot. Zero-initialised, so the table lives in `.bss` and costs no
/// memory until a slot is touched.
static SLOTS: [Slot; MAX_THREADS] = [const { Slot::new() }; MAX_THREADS];

/// One past the highest slot index ever claimed; the updater scans
/// `SLOTS[..HIGH_WATER]`.
static HIGH_WATER: AtomicUsize = AtomicUsize::new(0);

/// Set once the table has been found full, so the warning is logged once.
static FULL_WARNED: AtomicU32 = AtomicU32::new(0);

thread_local! {
    /// The calling thread's slot, or null.
    ///
    /// Invariant: null, or a pointer into `SLOTS` to a slot that is `IN_USE`
    /// by this thread. Holding the pointer instead of an index saves the
    /// read side the address arithmetic. Constant-initialised with no destructor,
    /// so reading it never allocates or registers anything.
    static CURRENT_SLOT: Cell<*const Slot> = const { Cell::new(core::ptr::null()) };

    /// Frees the thread's slot when the thread exits.
    static SLOT_RELEASE: SlotRelease = const { SlotRelease };
}

/// Returns the calling thread's reader word for domain `id`, or `None` when
/// the thread has no slot or `id` has no word.
///
/// # Async-signal safety
///
/// Safe: one constant-initialised thread-local read and address arithmetic.
#[inline(always)]
pub(crate) fn current_word(id: usize) -> Option<&'static ReaderWord> {
    let slot = CURRENT_SLOT.with(Cell::get);
    if slot.is_null() || id >= MAX_DOMAINS {
        return None;
    }
    // SAFETY: a non-null `CURRENT_SLOT` points into `SLOTS` (its invariant),
    // and `id < MAX_DOMAINS` was checked.
    Some(unsafe { (*slot).words.get_unchecked(id) })
}

/// Returns the index of the calling thread's slot, if it is registered.
///
/// The index is below [`MAX_THREADS`] and stays the same for the life of the
/// thread; another thread may get it after this one exits. Per-thread
/// statistics use it to index fixed arrays without allocating.
///
/// # Async-signal safety
///
/// Safe: one constant-initialised thread-local read.
///
/// # Examples
///
/// ```
/// nmi_rcu::register_thread();
/// let slot = nmi_rcu::current_thread_slot().expect("registered");
/// assert!(slot < nmi_rcu::MAX_THREADS);
/// ```
#[inline]
pub fn current_thread_slot() -> Option<usize> {
    let slot = CURRENT_SLOT.with(Cell::get);
    (!slot.is_null()).then(|| slot_index(slot))
}

/// Returns the index in `SLOTS` of a slot pointer taken from `CURRENT_SLOT`.
fn slot_index(slot: *const Slot) -> usize {
    (slot as usize - SLOTS.as_ptr() as usize) / core::mem::size_of::<Slot>()
}

/// Registers the calling thread, so that its read-side sections take the
/// fast path. Idempotent. Returns whether the thread has a slot.
pub(crate) fn register_current_thread() -> bool {
    if !CURRENT_SLOT.with(Cell::get).is_null() {
        return true;
    }
    // The registered path has no fence of its own: it relies on the
    // updater's membarrier. Without one, threads stay on the fallback path,
    // whose atomic increments are full barriers.
    if !crate::domain::asymmetric_barrier_ready() {
        return false;
    }
    let Some(index) = claim_slot() else {
        if FULL_WARNED.swap(1, Ordering::Relaxed) == 0 {
            log::warn!(
                "the nmi-rcu thread registry is full ({MAX_THREADS} threads); further threads use the slower fallback read path"
            );
        }
        return false;
    };

    let slot = &SLOTS[index];
    slot.tid.store(sys::gettid(), Ordering::Relaxed);
    // pthread's name, not std's: it also names threads created by C code, and
    // it works inside thread-local destructors, where std's may not.
    let mut name = [0u8; NAME_BYTES];
    // SAFETY: the buffer is writable for its full length, which is passed.
    let named = unsafe {
        libc::pthread_getname_np(libc::pthread_self(), name.as_mut_ptr().cast(), NAME_BYTES)
    };
    if named != 0 {
        name = [0; NAME_BYTES];
    }
    for (byte, value) in slot.name.iter().zip(name) {
        byte.store(value, Ordering::Relaxed);
    }

    // Arm the destructor before publishing the index, so that no path can
    // leave a claimed slot without a release on thread exit. If the
    // thread-local is already destroyed (registration from another
    // destructor), the slot is released right away and the thread stays on
    // the fallback path.
    if SLOT_RELEASE.try_with(SlotRelease::arm).is_err() {
        slot.state.store(FREE, Ordering::Release);
        return false;
    }
    CURRENT_SLOT.with(|current| current.set(slot));
    true
}

fn claim_slot() -> Option<usize> {
    for (index, slot) in SLOTS.iter().enumerate() {
        // Acquire: pairs with the Release store that freed the slot, so the
        // previous owner's last word stores are visible before we reuse it.
        if slot
            .state
            .compare_exchange(FREE, IN_USE, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
        {
            // SeqCst: the updater loads the high-water mark SeqCst after its
            // barrier. If it misses this slot, this thread's later sections
            // come after the updater's barrier and see the new pointer.
            HIGH_WATER.fetch_max(index + 1, Ordering::SeqCst);
            return Some(index);
        }
    }
    None
}

/// The destructor that frees a thread's slot when it exits.
struct SlotRelease;

impl SlotRelease {
    fn arm(&self) {
        // Accessing the thread-local registers its destructor; nothing else
        // to do.
    }
}

impl Drop for SlotRelease {
    fn drop(&mut self) {
        let Ok(slot) = CURRENT_SLOT.try_with(|current| current.replace(core::ptr::null())) else {
            return;
        };
        if slot.is_null() {
            return;
        }
        // SAFETY: a non-null `CURRENT_SLOT` points into `SLOTS` (invariant).
        let slot = unsafe { &*slot };
        let open = slot
            .words
            .iter()
            .any(|word| word.load(Ordering::Relaxed) & NEST_MASK != 0);
        if open {
            // A guard was forgotten (or is stored in another thread-local that
            // is destroyed later). Nothing it could protect is reachable any
            // more, but its drop may still store to the word, so the slot is
            // retired for good.
            log::warn!(
                "thread {} exited inside an nmi-rcu read-side critical section; its registry slot is abandoned",
                slot.tid.load(Ordering::Relaxed)
            );
            slot.state.store(ABANDONED, Ordering::Release);
            return;
        }
        // Release: pairs with the Acquire claim of the next owner.
        slot.state.store(FREE, Ordering::Release);
    }
}

/// A registered reader that a grace period is waiting for.
pub(crate) struct BlockingReader {
    pub(crate) tid: i32,
    pub(crate) name: String,
}

/// Returns whether any in-use slot has its word for domain `id` active in
/// `phase`.
pub(crate) fn any_active_in(id: usize, phase: usize) -> bool {
    if id >= MAX_DOMAINS {
        return false;
    }
    // SeqCst: see `claim_slot`.
    let high_water = HIGH_WATER.load(Ordering::SeqCst);
    SLOTS[..high_water].iter().any(|slot| {
        // Relaxed (`SCAN_LOAD`), for the state and the word: the grace
        // period's barriers order these loads (protocol module notes).
        slot.state.load(SCAN_LOAD) == IN_USE
            && word_state(slot.words[id].load(SCAN_LOAD)) == WordState::Active { phase }
    })
}

/// Lists the registered readers of domain `id` active in `phase`, for a
/// stall warning.
pub(crate) fn blocking_readers(id: usize, phase: usize) -> Vec<BlockingReader> {
    if id >= MAX_DOMAINS {
        return Vec::new();
    }
    let high_water = HIGH_WATER.load(Ordering::SeqCst);
    SLOTS[..high_water]
        .iter()
        .filter(|slot| {
            slot.state.load(Ordering::Relaxed) == IN_USE
                && word_state(slot.words[id].load(Ordering::Relaxed)) == WordState::Active { phase }
        })
        .map(|slot| {
            let bytes: Vec<u8> = slot
                .name
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .take_while(|&b| b != 0)
                .collect();
            BlockingReader {
                tid: slot.tid.load(Ordering::Relaxed),
                name: String::from_utf8_lossy(&bytes).into_owned(),
            }
        })
        .collect()
}

/// Returns how deep the calling thread is nested in read-side sections of
/// domain `id` on the registered path.
pub(crate) fn current_nesting(id: usize) -> usize {
    current_word(id).map_or(0, |word| word.load(Ordering::Relaxed) & NEST_MASK)
}

/// Frees every slot except the calling thread's, in the child after
/// `fork()`, where the other threads no longer exist.
///
/// # Async-signal safety
///
/// Safe: loads and stores of atomics and one raw system call.
pub(crate) fn reset_after_fork() {
    let own = CURRENT_SLOT.with(Cell::get);
    let own = (!own.is_null()).then(|| slot_index(own));
    let high_water = HIGH_WATER.load(Ordering::SeqCst);
    for (index, slot) in SLOTS[..high_water].iter().enumerate() {
        if Some(index) == own {
            slot.tid.store(sys::gettid(), Ordering::Relaxed);
            continue;
        }
        for word in &slot.words {
            word.store(0, Ordering::Relaxed);
        }
        slot.state.store(FREE, Ordering::Release);
    }
}
