//! The read-side and grace-period protocol, as plain functions over atomics.
//!
//! This module holds the algorithm and nothing else: no statics, no threads,
//! no system calls. [`crate::domain`] and [`crate::threads`] apply it to real
//! storage, and the loom models apply it to model-checked atomics (see
//! [`crate::sync`]).
//!
//! # Two reader paths
//!
//! A domain's grace-period counter, [`GP_START`] at first, holds a phase bit
//! ([`PHASE`]) that the updater flips twice per grace period. A reader takes
//! one of two paths, chosen per section:
//!
//! - **Registered path** (a thread with a slot in the thread registry): the
//!   thread owns one [`ReaderWord`] per domain. The outermost
//!   [`word_enter`] copies the domain's counter (phase plus a nesting
//!   count of one) into the word with a plain store; nested entries add one;
//!   [`word_exit`] subtracts one. No read-modify-write, no hardware
//!   fence: the updater's asymmetric barrier (`membarrier`) supplies the
//!   fence the reader skipped. Without membarrier, threads do not register;
//!   [`Barriers::Fenced`], which puts a `SeqCst` fence in the reader, exists
//!   for the loom models.
//! - **Fallback path** (any other thread, including threads created by C code,
//!   the main thread before set-up and a thread that is exiting): the reader
//!   increments a lock counter for the current phase in one of
//!   [`STRIPES`] striped counter pairs ([`FallbackCounters`]), and on exit the
//!   matching unlock counter. It needs no per-thread state at all, at the
//!   price of one atomic read-modify-write at each end.
//!
//! The updater ([`GracePeriod`]) waits on both: a phase is drained when no
//! reader word is active in it and its lock and unlock sums are equal.
//!
//! # Grace period
//!
//! With `P` the phase before the grace period:
//!
//! 1. barrier: the publication of the new pointer (before the call) becomes
//!    visible to every reader that has not yet entered, and every reader word
//!    stored before the barrier becomes visible to the updater;
//! 2. wait until phase `!P` is drained. Readers still in `!P` loaded the
//!    counter before the previous grace period flipped it and stored their
//!    word late; this step makes sure none of them survives into the flip;
//! 3. flip the phase to `!P`. Readers entering from now on use `!P` and are
//!    never waited for, so continuous readers cannot starve the updater;
//! 4. wait until phase `P` is drained: every section that began before the
//!    call, in either path, has ended;
//! 5. barrier: the readers' loads inside those sections are complete before
//!    the caller frees anything.
//!
//! # Why a signal at any instruction is harmless
//!
//! A signal handler runs to completion on the thread it interrupts, and its
//! read-side section is balanced: it exits before the handler returns.
//!
//! - Registered path: the handler's [`word_enter`] and
//!   [`word_exit`] leave the word exactly as they found it, apart from
//!   the phase bits when the word was inactive (nesting zero), and an inactive
//!   word means the same to the updater whatever its phase bits. So an
//!   interrupted `load`..`store` pair in the outer section stores the value it
//!   would have stored anyway. The interesting window is between the outer
//!   section's load of the domain counter and its store into the word: the
//!   value it stores may carry a phase that is one flip old. Step 2 exists
//!   for exactly that reader. The nesting count is bumped in the same store
//!   that publishes the phase, so there is no instruction at which the thread
//!   believes it is protected while the updater cannot see it.
//! - Fallback path: the counters are changed only by atomic
//!   read-modify-write, so an interrupting reader can never lose an
//!   increment, and the guard remembers which phase and stripe it
//!   incremented, so the matching unlock lands on the same counter.
//! - Mixed: a handler on a registered thread uses the registered path, one on
//!   an unregistered thread the fallback path; the two paths share no
//!   per-thread state, so they cannot corrupt each other.

use crate::sync::{
    compiler_fence, fence, AtomicUsize, CachePadded, Ordering, EXIT_STORE, SCAN_LOAD,
};

/// One unit of read-side nesting in a [`ReaderWord`].
pub(crate) const NEST_ONE: usize = 1;

/// The phase bit of a domain's grace-period counter and of reader words. The
/// bits below it count nesting; 2^32 levels (2^16 on 32-bit targets) is
/// beyond any real stack.
pub(crate) const PHASE: usize = 1 << (usize::BITS / 2);

/// The nesting-count bits of a reader word.
pub(crate) const NEST_MASK: usize = PHASE - 1;

/// The initial value of a domain's grace-period counter: phase 0 with a
/// nesting count of one, ready to be copied into a word by the outermost
/// [`word_enter`].
pub(crate) const GP_START: usize = NEST_ONE;

/// Number of striped counter pairs on the fallback path. More stripes spread
/// concurrent unregistered readers over more cache lines; the updater sums
/// them all, so the count stays small.
#[cfg(not(loom))]
pub(crate) const STRIPES: usize = 16;
#[cfg(loom)]
pub(crate) const STRIPES: usize = 2;

/// The way the read side and the updater order memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Barriers {
    /// The updater issues `membarrier(2)`; registered readers need only
    /// compiler fences.
    Asymmetric,
    /// Readers issue a `SeqCst` fence on entry and exit, and the updater a
    /// `SeqCst` fence. Production never runs registered readers this way
    /// (without membarrier, threads do not register); the loom models do,
    /// because loom cannot model membarrier.
    Fenced,
}

/// A registered thread's read-side state for one domain.
///
/// Invariant: only the owning thread, and signal handlers running on it,
/// store to the word. The updater only loads it.
pub(crate) type ReaderWord = AtomicUsize;

/// Enters a read-side section on the registered path.
///
/// # Async-signal safety
///
/// Safe: loads and stores of one word; see the module notes for why an
/// interruption at any instruction is harmless.
#[inline(always)]
pub(crate) fn word_enter(word: &ReaderWord, gp_counter: &AtomicUsize, barriers: Barriers) {
    word_enter_interruptible(word, gp_counter, barriers, &mut || {});
}

/// [`word_enter`] with a hook that runs between each load and the store that
/// depends on it. Production passes an empty closure, which compiles away;
/// the loom models pass a nested read-side section, standing in for a signal
/// handler that interrupts the reader at exactly those instructions.
#[inline(always)]
pub(crate) fn word_enter_interruptible(
    word: &ReaderWord,
    gp_counter: &AtomicUsize,
    barriers: Barriers,
    interrupt: &mut dyn FnMut(),
) {
    // Relaxed: only this thread and its signal handlers store to the word, and
    // a handler restores it before returning (module notes).
    let current = word.load(Ordering::Relaxed);
    interrupt();
    if current & NEST_MASK == 0 {
        // Relaxed: a stale phase is allowed; grace-period step 2 waits for a
        // reader that stores a phase one flip old.
        let snapshot = gp_counter.load(Ordering::Relaxed);
        interrupt();
        // Relaxed: ordering against the updater comes from the barrier below
        // (fenced) or from the updater's membarrier (asymmetric).
        word.store(snapshot, Ordering::Relaxed);
        match barriers {
            // The word store must be visible before the section's loads of
            // protected pointers; without the fence a store-load reordering
            // lets the updater miss this reader while it reads old data.
            Barriers::Fenced => fence(Ordering::SeqCst),
            // membarrier on the updater side turns this compiler fence into
            // the full fence above, at the updater's expense.
            Barriers::Asymmetric => compiler_fence(),
        }
    } else {
        // Relaxed: nested sections are already protected by the outer one.
        word.store(current + NEST_ONE, Ordering::Relaxed);
    }
}

/// Exits a read-side section on the registered path.
///
/// # Async-signal safety
///
/// Safe: as for [`word_enter`].
#[inline(always)]
pub(crate) fn word_exit(word: &ReaderWord, barriers: Barriers) {
    word_exit_interruptible(word, barriers, &mut || {});
}

/// [`word_exit`] with a hook between the load and the store, as in
/// [`word_enter_interruptible`].
#[inline(always)]
pub(crate) fn word_exit_interruptible(
    word: &ReaderWord,
    barriers: Barriers,
    interrupt: &mut dyn FnMut(),
) {
    // Relaxed: see `word_enter`.
    let current = word.load(Ordering::Relaxed);
    interrupt();
    match barriers {
        // The section's loads must complete before the word says
        // "inactive", or the updater could free what they read. Only the
        // outermost exit needs it; nested exits leave the thread protected.
        Barriers::Fenced if current & NEST_MASK == NEST_ONE => fence(Ordering::SeqCst),
        Barriers::Fenced => {}
        // Unconditional: a compiler fence costs nothing at run time, and
        // testing for the outermost exit would cost a branch.
        Barriers::Asymmetric => compiler_fence(),
    }
    // Relaxed (`EXIT_STORE`): ordered by the barrier above for the
    // outermost exit.
    word.store(current - NEST_ONE, EXIT_STORE);
}

/// The state of a reader word as a grace period sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WordState {
    /// Not in a section.
    Inactive,
    /// In a section that entered in `phase`.
    Active { phase: usize },
}

/// Decodes a reader word.
#[inline]
pub(crate) fn word_state(value: usize) -> WordState {
    if value & NEST_MASK == 0 {
        WordState::Inactive
    } else {
        WordState::Active {
            phase: value & PHASE,
        }
    }
}

/// The fallback path's striped lock and unlock counters of one domain, one
/// pair of arrays per phase.
///
/// Invariant: every increment of `lock[p][s]` is matched by exactly one later
/// increment of `unlock[p][s]`, made by the same section. Counters wrap;
/// only their difference matters.
pub(crate) struct FallbackCounters {
    lock: [[CachePadded<AtomicUsize>; STRIPES]; 2],
    unlock: [[CachePadded<AtomicUsize>; STRIPES]; 2],
}

/// Which counters a fallback section incremented, so that its exit can
/// increment the matching unlock counter.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FallbackTicket {
    phase_index: u8,
    stripe: u8,
}

impl FallbackCounters {
    /// Creates zeroed counters.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Self {
        Self {
            lock: [const { [const { CachePadded(AtomicUsize::new(0)) }; STRIPES] }; 2],
            unlock: [const { [const { CachePadded(AtomicUsize::new(0)) }; STRIPES] }; 2],
        }
    }

    /// Creates zeroed counters.
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        let zeros = || core::array::from_fn(|_| CachePadded(AtomicUsize::new(0)));
        Self {
            lock: [zeros(), zeros()],
            unlock: [zeros(), zeros()],
        }
    }

    /// Enters a read-side section on the fallback path.
    ///
    /// # Async-signal safety
    ///
    /// Safe and wait-free: one load and one atomic increment (`lock xadd` on
    /// x86-64), which an interrupting handler cannot lose.
    #[inline]
    pub(crate) fn enter(&self, gp_counter: &AtomicUsize, stripe_hint: usize) -> FallbackTicket {
        // Relaxed: a stale phase is allowed, as on the registered path.
        let phase_index = usize::from(gp_counter.load(Ordering::Relaxed) & PHASE != 0);
        let stripe = stripe_hint % STRIPES;
        // SeqCst, plus a fence where a SeqCst read-modify-write is not a full
        // barrier: the increment must be visible before the section's loads,
        // pairing with the fence between the updater's unlock and lock sums
        // (`drained`). On x86-64 a locked instruction is a full barrier and
        // the compiler does not hoist later loads above a SeqCst RMW.
        self.lock[phase_index][stripe].fetch_add(1, Ordering::SeqCst);
        #[cfg(any(loom, not(target_arch = "x86_64")))]
        fence(Ordering::SeqCst);
        FallbackTicket {
            phase_index: phase_index as u8,
            stripe: stripe as u8,
        }
    }

    /// Exits a fallback section.
    ///
    /// # Async-signal safety
    ///
    /// Safe and wait-free, as for [`FallbackCounters::enter`].
    #[inline]
    pub(crate) fn exit(&self, ticket: FallbackTicket) {
        // The section's loads must complete before the unlock is counted,
        // or the updater could free what they read; on x86-64 the locked
        // increment orders them.
        #[cfg(any(loom, not(target_arch = "x86_64")))]
        fence(Ordering::SeqCst);
        self.unlock[usize::from(ticket.phase_index)][usize::from(ticket.stripe)]
            .fetch_add(1, Ordering::SeqCst);
    }

    /// Returns whether no fallback section is open in phase `phase_index`,
    /// and otherwise how many are.
    ///
    /// Unlocks are summed before locks, with a fence between: a section
    /// counted in the unlock sum has its lock counted too, so the sums can
    /// only be equal when every counted section has ended.
    pub(crate) fn open_sections(&self, phase_index: usize) -> usize {
        let unlocks = self.unlock[phase_index]
            .iter()
            .fold(0usize, |sum, c| sum.wrapping_add(c.load(SCAN_LOAD)));
        // Pairs with the readers' SeqCst increments: see `enter`.
        fence(Ordering::SeqCst);
        let locks = self.lock[phase_index]
            .iter()
            .fold(0usize, |sum, c| sum.wrapping_add(c.load(Ordering::Relaxed)));
        locks.wrapping_sub(unlocks)
    }

    /// Rewrites the unlock counters so that exactly `own[p]` sections stay
    /// open in phase `p`. Used in the child after `fork()`, where only the
    /// forking thread's own open sections (`own`) still exist. Only sums
    /// matter, so the whole difference goes into stripe 0.
    #[cfg(not(loom))]
    pub(crate) fn reset_to_open(&self, own: [u32; 2]) {
        for (phase_index, open) in own.into_iter().enumerate() {
            for stripe in 0..STRIPES {
                let locks = self.lock[phase_index][stripe].load(Ordering::Relaxed);
                let unlocks = if stripe == 0 {
                    locks.wrapping_sub(open as usize)
                } else {
                    locks
                };
                self.unlock[phase_index][stripe].store(unlocks, Ordering::Relaxed);
            }
        }
    }
}

impl FallbackTicket {
    /// Packs the ticket into the low 16 bits of a word.
    #[inline(always)]
    pub(crate) fn to_bits(self) -> usize {
        usize::from(self.phase_index) | usize::from(self.stripe) << 8
    }

    /// Unpacks a ticket packed by [`FallbackTicket::to_bits`], clamping
    /// fields so that a corrupted value cannot index out of bounds.
    #[inline(always)]
    pub(crate) fn from_bits(bits: usize) -> FallbackTicket {
        FallbackTicket {
            phase_index: (bits & 1) as u8,
            stripe: ((bits >> 8) % STRIPES) as u8,
        }
    }

    /// Returns the phase index (0 or 1) the section entered in.
    #[inline(always)]
    pub(crate) fn phase_index(self) -> usize {
        usize::from(self.phase_index)
    }
}

/// The updater's side of one grace period, parameterised by how it reaches
/// reader words, so that real domains and loom models share it.
pub(crate) trait GracePeriod {
    /// The domain's grace-period counter.
    fn gp_counter(&self) -> &AtomicUsize;

    /// The domain's fallback counters.
    fn fallback(&self) -> &FallbackCounters;

    /// Issues the updater's half of the barrier pair.
    fn master_barrier(&self);

    /// Returns whether any registered reader is active in `phase` (a value
    /// of `0` or [`PHASE`]).
    fn any_word_active_in(&self, phase: usize) -> bool;

    /// Called while a phase is not yet drained; spins, yields or sleeps, and
    /// may report a stall. `waited` counts the calls for this phase.
    fn backoff(&self, waited: u32, phase: usize);

    /// Runs one grace period: returns only after every section that began
    /// before the call has ended. The caller serialises grace periods of one
    /// domain.
    fn run(&self) {
        // Step 1 (module notes).
        self.master_barrier();
        // Relaxed: only the updater stores the counter, under its lock.
        let old_phase = self.gp_counter().load(Ordering::Relaxed) & PHASE;

        // Step 2: drain the phase before `old_phase`.
        self.wait_drained(old_phase ^ PHASE);

        // Step 3. The fences keep the flip after step 2's loads and before
        // step 4's: without them the updater could wait on words loaded
        // before readers could have seen the new phase, and never finish
        // while readers keep entering.
        fence(Ordering::SeqCst);
        let counter = self.gp_counter().load(Ordering::Relaxed);
        self.gp_counter().store(counter ^ PHASE, Ordering::Relaxed);
        fence(Ordering::SeqCst);

        // Step 4, then step 5.
        self.wait_drained(old_phase);
        self.master_barrier();
    }

    /// Waits until no section, on either path, is open in `phase`.
    fn wait_drained(&self, phase: usize) {
        let phase_index = usize::from(phase != 0);
        let mut waited = 0;
        while self.any_word_active_in(phase) || self.fallback().open_sections(phase_index) != 0 {
            self.backoff(waited, phase);
            waited = waited.saturating_add(1);
        }
    }
}
