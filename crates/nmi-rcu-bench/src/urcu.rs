//! The C shim over liburcu's memb and bp flavors (Debian's `liburcu-dev`).
//!
//! `build.rs` compiles the shim in `csrc/` only when it finds liburcu, and
//! then sets `cfg(has_liburcu)`. Without it, [`Urcu::new`] returns
//! [`Unavailable`] with the reason, and the benchmarks skip the liburcu
//! contenders. A [`Urcu`] value proves that the shim is linked in: without
//! the shim the type has no values, so its methods need no run-time check.

use std::fmt;

use crate::handler;

/// A liburcu flavor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flavor {
    /// `liburcu-memb`: registered threads, membarrier on the update side.
    Memb,
    /// `liburcu-bp`: "bulletproof", threads register on first use.
    Bp,
}

impl Flavor {
    /// Returns the library name, as used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Flavor::Memb => "liburcu-memb",
            Flavor::Bp => "liburcu-bp",
        }
    }
}

/// The reason liburcu could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unavailable {
    reason: &'static str,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "liburcu is not linked in: {}", self.reason)
    }
}

impl std::error::Error for Unavailable {}

#[cfg(has_liburcu)]
type Linked = ();
#[cfg(not(has_liburcu))]
type Linked = std::convert::Infallible;

/// A handle on one liburcu flavor through the shim.
///
/// # Examples
///
/// ```
/// use nmi_rcu_bench::urcu::{Flavor, Urcu};
///
/// match Urcu::new(Flavor::Memb) {
///     Ok(memb) => {
///         memb.register_thread();
///         assert_eq!(memb.read_loop(3), 1 + 2 + 3);
///         memb.unregister_thread();
///         memb.synchronize();
///     }
///     Err(unavailable) => println!("skipped: {unavailable}"),
/// }
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Urcu {
    flavor: Flavor,
    #[cfg_attr(has_liburcu, allow(dead_code))]
    linked: Linked,
}

#[cfg(has_liburcu)]
mod ffi {
    extern "C" {
        pub fn nrb_memb_register_thread();
        pub fn nrb_memb_unregister_thread();
        pub fn nrb_memb_synchronize();
        pub fn nrb_memb_read_loop(slot: *const *mut (), iterations: u64) -> u64;
        pub fn nrb_bp_register_thread();
        pub fn nrb_bp_unregister_thread();
        pub fn nrb_bp_synchronize();
        pub fn nrb_bp_read_loop(slot: *const *mut (), iterations: u64) -> u64;
    }
}

impl Urcu {
    /// Returns a handle on `flavor`, or the reason the shim is not built.
    pub fn new(flavor: Flavor) -> Result<Urcu, Unavailable> {
        #[cfg(has_liburcu)]
        {
            Ok(Urcu { flavor, linked: () })
        }
        #[cfg(not(has_liburcu))]
        {
            let _ = flavor;
            Err(Unavailable {
                reason: option_env!("NMI_RCU_BENCH_LIBURCU_MISSING")
                    .unwrap_or("the build script did not find it"),
            })
        }
    }

    /// Returns the flavor this handle calls.
    pub fn flavor(self) -> Flavor {
        self.flavor
    }

    /// Registers the calling thread as a reader (`rcu_register_thread`).
    /// Every memb reader must do this before its first read-side section.
    pub fn register_thread(self) {
        #[cfg(has_liburcu)]
        // SAFETY: the liburcu registration functions take no arguments and
        // may be called by any thread that is not registered yet.
        unsafe {
            match self.flavor {
                Flavor::Memb => ffi::nrb_memb_register_thread(),
                Flavor::Bp => ffi::nrb_bp_register_thread(),
            }
        }
        #[cfg(not(has_liburcu))]
        match self.linked {}
    }

    /// Unregisters the calling thread (`rcu_unregister_thread`). Call it
    /// outside any read-side section, before the thread exits.
    pub fn unregister_thread(self) {
        #[cfg(has_liburcu)]
        // SAFETY: the callers pair this with `register_thread` on the same
        // thread and call it outside read-side sections, which is all
        // liburcu requires.
        unsafe {
            match self.flavor {
                Flavor::Memb => ffi::nrb_memb_unregister_thread(),
                Flavor::Bp => ffi::nrb_bp_unregister_thread(),
            }
        }
        #[cfg(not(has_liburcu))]
        match self.linked {}
    }

    /// Waits for a grace period (`synchronize_rcu`). The read loops below
    /// never call it from inside a section, which would deadlock.
    pub fn synchronize(self) {
        #[cfg(has_liburcu)]
        // SAFETY: `synchronize_rcu` may be called from any thread outside a
        // read-side section, and no caller in this crate is inside one.
        unsafe {
            match self.flavor {
                Flavor::Memb => ffi::nrb_memb_synchronize(),
                Flavor::Bp => ffi::nrb_bp_synchronize(),
            }
        }
        #[cfg(not(has_liburcu))]
        match self.linked {}
    }

    /// Runs `iterations` read-side sections in C, each dereferencing the
    /// published handler and calling it, and returns the sum of the
    /// results. With the memb flavor the thread must be registered.
    pub fn read_loop(self, iterations: u64) -> u64 {
        let slot = handler::published_slot();
        #[cfg(has_liburcu)]
        // SAFETY: `slot` points to the published handler pointer, a static
        // that always contains a valid handler of the type the shim calls.
        unsafe {
            match self.flavor {
                Flavor::Memb => ffi::nrb_memb_read_loop(slot, iterations),
                Flavor::Bp => ffi::nrb_bp_read_loop(slot, iterations),
            }
        }
        #[cfg(not(has_liburcu))]
        {
            let _ = (slot, iterations);
            match self.linked {}
        }
    }
}
