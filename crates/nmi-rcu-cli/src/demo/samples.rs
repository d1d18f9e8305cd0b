//! The data of the demo's two handlers, and the check that no handler runs
//! on freed data.

use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicUsize, Ordering};

use nmi_rcu::signal::SignalContext;

/// Largest accepted `--threads`.
pub const MAX_WORKERS: usize = 64;

/// Row of the per-thread tables for signals that land on a thread that is
/// not a worker.
pub const OTHER_ROW: usize = MAX_WORKERS;

/// One counter per worker, plus [`OTHER_ROW`].
///
/// The counters are statistics, so they use `Relaxed`. The main thread reads
/// them after a grace period or after joining the workers, which orders them.
#[derive(Debug)]
pub struct PerThread([AtomicU64; MAX_WORKERS + 1]);

impl PerThread {
    /// Creates zeroed counters.
    pub const fn new() -> PerThread {
        PerThread([const { AtomicU64::new(0) }; MAX_WORKERS + 1])
    }

    /// Adds one to `row`.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic increment.
    pub fn add(&self, row: usize) {
        self.0[row].fetch_add(1, Ordering::Relaxed);
    }

    /// Returns the count of `row`.
    pub fn get(&self, row: usize) -> u64 {
        self.0[row].load(Ordering::Relaxed)
    }
}

/// Kernel thread ids of the workers, indexed by worker; 0 for an unused
/// entry. A worker stores its own id before it unblocks SIGPROF.
pub static WORKER_THREAD_IDS: [AtomicI32; MAX_WORKERS] = [const { AtomicI32::new(0) }; MAX_WORKERS];

/// Returns the table row of the thread that received `context`'s signal.
///
/// # Async-signal safety
///
/// Safe: a bounded scan of atomics.
pub fn row_of(context: &SignalContext) -> usize {
    let thread_id = context.thread_id();
    WORKER_THREAD_IDS
        .iter()
        // Relaxed: each worker stores its id before it unblocks SIGPROF, so
        // a handler on that worker reads its own earlier store.
        .position(|id| id.load(Ordering::Relaxed) == thread_id)
        .unwrap_or(OTHER_ROW)
}

/// Value of [`SampleBuffer::magic`] once the buffer is initialised.
const MAGIC: u64 = 0x5341_4d50_4c45_5321;

/// The sampling handler's data, allocated before the handler is published:
/// per-thread sample counts and a ring of interrupted instruction addresses.
#[derive(Debug)]
pub struct SampleBuffer {
    /// [`MAGIC`], written before publication. A handler that finds another
    /// value saw the data before its initialisation.
    magic: AtomicU64,
    /// Samples per thread.
    pub per_thread: PerThread,
    /// Interrupted instruction addresses, 0 where the platform offers none.
    addresses: Box<[AtomicUsize]>,
    /// Index of the next entry of `addresses`; it wraps around.
    next: AtomicUsize,
}

impl SampleBuffer {
    /// Allocates a buffer with room for `capacity` addresses.
    pub fn new(capacity: usize) -> SampleBuffer {
        SampleBuffer {
            magic: AtomicU64::new(MAGIC),
            per_thread: PerThread::new(),
            addresses: (0..capacity.max(1)).map(|_| AtomicUsize::new(0)).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Records one sample.
    ///
    /// # Async-signal safety
    ///
    /// Safe: atomic operations on preallocated memory.
    pub fn record(&self, context: &SignalContext) {
        self.per_thread.add(row_of(context));
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.addresses.len();
        self.addresses[index].store(interrupted_address(context), Ordering::Relaxed);
    }

    /// Returns whether the handler saw the buffer initialised.
    ///
    /// # Async-signal safety
    ///
    /// Safe: one atomic load.
    pub fn is_initialised(&self) -> bool {
        // Relaxed: the handler that calls this was published after the
        // buffer was built, and `HandlerSlot` publication (Release, with an
        // Acquire load in dispatch) makes the write visible. Seeing another
        // value would show that publication is broken.
        self.magic.load(Ordering::Relaxed) == MAGIC
    }

    /// Returns the number of distinct non-zero addresses recorded.
    pub fn distinct_addresses(&self) -> usize {
        let mut addresses: Vec<usize> = self
            .addresses
            .iter()
            .map(|address| address.load(Ordering::Relaxed))
            .filter(|&address| address != 0)
            .collect();
        addresses.sort_unstable();
        addresses.dedup();
        addresses.len()
    }
}

/// Returns the instruction address that the signal interrupted, or 0 where
/// this platform's `ucontext_t` layout is not known here.
///
/// # Async-signal safety
///
/// Safe: reads the kernel's `ucontext_t` for this delivery.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn interrupted_address(context: &SignalContext) -> usize {
    let ucontext = context.ucontext().cast::<libc::ucontext_t>();
    if ucontext.is_null() {
        return 0;
    }
    // SAFETY: the signal layer passes the kernel's `ucontext_t` of this
    // delivery, valid while the handler runs; REG_RIP indexes `gregs`.
    let rip = unsafe { (*ucontext).uc_mcontext.gregs[libc::REG_RIP as usize] };
    rip as usize
}

/// Returns the instruction address that the signal interrupted, or 0 where
/// this platform's `ucontext_t` layout is not known here.
///
/// # Async-signal safety
///
/// Safe: reads the kernel's `ucontext_t` for this delivery.
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn interrupted_address(context: &SignalContext) -> usize {
    let ucontext = context.ucontext().cast::<libc::ucontext_t>();
    if ucontext.is_null() {
        return 0;
    }
    // SAFETY: the signal layer passes the kernel's `ucontext_t` of this
    // delivery, valid while the handler runs.
    let pc = unsafe { (*ucontext).uc_mcontext.pc };
    pc as usize
}

/// Returns 0: this platform's `ucontext_t` layout is not known here.
///
/// # Async-signal safety
///
/// Safe: returns a constant.
#[cfg(not(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
)))]
fn interrupted_address(_context: &SignalContext) -> usize {
    0
}

/// A pointer to the sample buffer that the main thread owns and frees, as
/// the sampling handler captures it.
///
/// The handler reaches the buffer only through [`FreeCheck::enter`], which
/// keeps the main thread from freeing it during the access.
#[derive(Debug, Clone, Copy)]
pub struct BufferPointer(NonNull<SampleBuffer>);

// SAFETY: `SampleBuffer` is made of atomics, so sharing it between threads
// is sound; the pointer's validity is governed by `FreeCheck`.
unsafe impl Send for BufferPointer {}
// SAFETY: as for `Send`.
unsafe impl Sync for BufferPointer {}

impl BufferPointer {
    /// Wraps the address of `buffer`.
    pub fn new(buffer: &SampleBuffer) -> BufferPointer {
        BufferPointer(NonNull::from(buffer))
    }
}

/// The check that no handler runs on freed data.
///
/// The demo does not take the grace period it shows on trust. The sampling
/// handler raises `in_flight`, then reads `freed`, and touches the buffer
/// only when `freed` is still false. The main thread, after the grace
/// period, sets `freed`, then waits until `in_flight` is 0, and only then
/// frees the buffer. All four accesses are `SeqCst`, so in their single
/// total order either the handler's increment comes first (the main thread
/// waits for it) or the main thread's store comes first (the handler reads
/// `freed` as true and backs off). A handler that starts after the free is counted
/// in `ran_on_freed` and never dereferences the pointer.
#[derive(Debug)]
pub struct FreeCheck {
    in_flight: AtomicU64,
    freed: AtomicBool,
    /// Handler calls that found the buffer already freed.
    pub ran_on_freed: AtomicU64,
    /// Handler calls that found the buffer uninitialised.
    pub uninitialised: AtomicU64,
    /// Handler calls still running when the buffer was about to be freed.
    pub running_at_free: AtomicU64,
}

impl FreeCheck {
    /// Creates a check with the buffer not yet freed.
    pub const fn new() -> FreeCheck {
        FreeCheck {
            in_flight: AtomicU64::new(0),
            freed: AtomicBool::new(false),
            ran_on_freed: AtomicU64::new(0),
            uninitialised: AtomicU64::new(0),
            running_at_free: AtomicU64::new(0),
        }
    }

    /// Runs `access` on the buffer behind `pointer` unless the buffer has
    /// been freed, in which case the call is counted in `ran_on_freed`.
    ///
    /// # Async-signal safety
    ///
    /// Safe when `access` is: atomic operations only.
    pub fn enter(&self, pointer: BufferPointer, access: impl FnOnce(&SampleBuffer)) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.freed.load(Ordering::SeqCst) {
            self.ran_on_freed.fetch_add(1, Ordering::Relaxed);
        } else {
            // SAFETY: `freed` was false after `in_flight` was raised, so by
            // the total order described on `FreeCheck`, `free` has not yet
            // passed its wait and the buffer stays allocated until
            // `in_flight` is lowered below.
            let buffer = unsafe { pointer.0.as_ref() };
            if !buffer.is_initialised() {
                self.uninitialised.fetch_add(1, Ordering::Relaxed);
            }
            access(buffer);
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
    }

    /// Marks the buffer freed, waits until no handler is inside
    /// [`FreeCheck::enter`], and frees `buffer`. This is the `kfree` that
    /// follows the grace period in the kernel's dynamic NMI handler pattern.
    pub fn free(&self, buffer: Box<SampleBuffer>) {
        self.freed.store(true, Ordering::SeqCst);
        let mut counted = false;
        while self.in_flight.load(Ordering::SeqCst) != 0 {
            // Only a grace period that ended too early lets a handler run
            // here; count it once and wait for it to leave.
            if !counted {
                self.running_at_free.fetch_add(1, Ordering::Relaxed);
                counted = true;
            }
            std::hint::spin_loop();
        }
        drop(buffer);
    }
}
