//! The read-side contenders: one loop per reader scheme around the same
//! dereference and call.
//!
//! Each loop runs `iterations` times: enter the scheme's read-side section
//! (or pin, or lock), dereference the published handler, call it, leave.
//! The loops are `#[inline(never)]` so each is one function that a
//! profiler or `callgrind` can name, and they return the sum of the handler
//! results so nothing is optimized away.

use std::sync::OnceLock;

use arc_swap::ArcSwap;

use crate::handler::{self, call_published, HandlerFn};
use crate::urcu::{Flavor, Unavailable, Urcu};

/// A reader scheme measured by the read-side benchmarks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Contender {
    /// Acquire load and call, with no read-side section: the floor.
    Floor,
    /// `nmi_rcu::read_lock()` on a thread that called `register_thread`.
    NmiRcuRegistered,
    /// `nmi_rcu::read_lock()` on a thread that never registered, which
    /// takes the fallback path.
    NmiRcuUnregistered,
    /// liburcu's memb flavor through the C shim, on a registered thread.
    LiburcuMemb,
    /// liburcu's bp flavor through the C shim.
    LiburcuBp,
    /// `crossbeam_epoch::pin()` around the dereference.
    CrossbeamPin,
    /// `ArcSwap::load`, whose guard keeps the handler alive.
    ArcSwapLoad,
    /// `std::sync::RwLock::read` around a copy of the handler.
    StdRwLock,
    /// `parking_lot::RwLock::read` around a copy of the handler.
    ParkingLotRwLock,
}

impl Contender {
    /// Every contender, in table order.
    pub const ALL: [Contender; 9] = [
        Contender::Floor,
        Contender::NmiRcuRegistered,
        Contender::NmiRcuUnregistered,
        Contender::LiburcuMemb,
        Contender::LiburcuBp,
        Contender::CrossbeamPin,
        Contender::ArcSwapLoad,
        Contender::StdRwLock,
        Contender::ParkingLotRwLock,
    ];

    /// Returns the contender's name in tables and JSON.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu_bench::read_side::Contender;
    /// assert_eq!(Contender::Floor.name(), "floor (Acquire load + call)");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            Contender::Floor => "floor (Acquire load + call)",
            Contender::NmiRcuRegistered => "nmi-rcu registered",
            Contender::NmiRcuUnregistered => "nmi-rcu unregistered",
            Contender::LiburcuMemb => "liburcu-memb",
            Contender::LiburcuBp => "liburcu-bp",
            Contender::CrossbeamPin => "crossbeam-epoch pin",
            Contender::ArcSwapLoad => "arc-swap load",
            Contender::StdRwLock => "std RwLock",
            Contender::ParkingLotRwLock => "parking_lot RwLock",
        }
    }

    /// Returns whether this contender can run here, and if not, why.
    pub fn availability(self) -> Result<(), Unavailable> {
        match self {
            Contender::LiburcuMemb => Urcu::new(Flavor::Memb).map(drop),
            Contender::LiburcuBp => Urcu::new(Flavor::Bp).map(drop),
            _ => Ok(()),
        }
    }

    /// Prepares the calling thread: registers it where the scheme needs
    /// it. Call it once per thread, before [`Contender::run`].
    ///
    /// # Panics
    ///
    /// Panics on a liburcu contender when liburcu is not linked in; check
    /// [`Contender::availability`] first.
    pub fn enter_thread(self) {
        match self {
            Contender::NmiRcuRegistered => nmi_rcu::register_thread(),
            Contender::LiburcuMemb => urcu(Flavor::Memb).register_thread(),
            _ => {}
        }
    }

    /// Undoes [`Contender::enter_thread`] before the thread exits.
    pub fn leave_thread(self) {
        if self == Contender::LiburcuMemb {
            urcu(Flavor::Memb).unregister_thread();
        }
    }

    /// Runs the contender's loop for `iterations` and returns the checksum,
    /// the sum of `handler(i)` over the iterations.
    ///
    /// # Examples
    ///
    /// ```
    /// use nmi_rcu_bench::read_side::Contender;
    ///
    /// let contender = Contender::CrossbeamPin;
    /// contender.enter_thread();
    /// assert_eq!(contender.run(4), 1 + 2 + 3 + 4);
    /// contender.leave_thread();
    /// ```
    pub fn run(self, iterations: u64) -> u64 {
        match self {
            Contender::Floor => floor_loop(iterations),
            Contender::NmiRcuRegistered | Contender::NmiRcuUnregistered => nmi_rcu_loop(iterations),
            Contender::LiburcuMemb => urcu(Flavor::Memb).read_loop(iterations),
            Contender::LiburcuBp => urcu(Flavor::Bp).read_loop(iterations),
            Contender::CrossbeamPin => crossbeam_pin_loop(iterations),
            Contender::ArcSwapLoad => arc_swap_loop(iterations),
            Contender::StdRwLock => std_rwlock_loop(iterations),
            Contender::ParkingLotRwLock => parking_lot_rwlock_loop(iterations),
        }
    }
}

/// Returns the liburcu handle for a contender whose availability the
/// caller has checked.
fn urcu(flavor: Flavor) -> Urcu {
    match Urcu::new(flavor) {
        Ok(urcu) => urcu,
        Err(unavailable) => panic!(
            "{} contender run without liburcu: {unavailable}",
            flavor.name()
        ),
    }
}

/// Runs the floor loop: dereference and call, with no read-side section.
#[inline(never)]
pub fn floor_loop(iterations: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..iterations {
        sum = sum.wrapping_add(call_published(i));
    }
    sum
}

/// Runs the nmi-rcu loop. Whether it takes the registered fast path or the
/// fallback path depends only on whether the calling thread registered.
#[inline(never)]
pub fn nmi_rcu_loop(iterations: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..iterations {
        let guard = nmi_rcu::read_lock();
        sum = sum.wrapping_add(call_published(i));
        drop(guard);
    }
    sum
}

/// Runs the crossbeam-epoch loop, in which the pin is the read-side
/// section.
#[inline(never)]
pub fn crossbeam_pin_loop(iterations: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..iterations {
        let guard = crossbeam_epoch::pin();
        sum = sum.wrapping_add(call_published(i));
        drop(guard);
    }
    sum
}

/// The handler as arc-swap publishes it. The `load` guard is arc-swap's
/// read-side section, and the dereference goes through arc-swap's own
/// pointer instead of the shared one, because that is the pointer arc-swap
/// protects.
fn arc_swapped_handler() -> &'static ArcSwap<HandlerFn> {
    static SWAPPED: OnceLock<ArcSwap<HandlerFn>> = OnceLock::new();
    SWAPPED.get_or_init(|| ArcSwap::from_pointee(handler::handler as HandlerFn))
}

/// Runs the arc-swap loop: `load`, dereference the guard, call.
#[inline(never)]
pub fn arc_swap_loop(iterations: u64) -> u64 {
    let swapped = arc_swapped_handler();
    let mut sum = 0u64;
    for i in 0..iterations {
        let guard = swapped.load();
        sum = sum.wrapping_add(std::hint::black_box(**guard)(i));
        drop(guard);
    }
    sum
}

/// The handler behind `std::sync::RwLock`.
static STD_LOCKED: std::sync::RwLock<HandlerFn> = std::sync::RwLock::new(handler::handler);

/// The handler behind `parking_lot::RwLock`.
static PARKING_LOT_LOCKED: parking_lot::RwLock<HandlerFn> =
    parking_lot::const_rwlock(handler::handler);

/// Runs the std `RwLock` loop, with the read lock held across the call.
#[inline(never)]
pub fn std_rwlock_loop(iterations: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..iterations {
        let guard = STD_LOCKED
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        sum = sum.wrapping_add(std::hint::black_box(*guard)(i));
        drop(guard);
    }
    sum
}

/// Runs the parking_lot `RwLock` loop, with the read lock held across the
/// call.
#[inline(never)]
pub fn parking_lot_rwlock_loop(iterations: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..iterations {
        let guard = PARKING_LOT_LOCKED.read();
        sum = sum.wrapping_add(std::hint::black_box(*guard)(i));
        drop(guard);
    }
    sum
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Returns the sum of `handler(i)` over `0..n`.
    fn expected_checksum(n: u64) -> u64 {
        n * (n + 1) / 2
    }

    #[test]
    fn every_available_loop_returns_the_checksum() {
        for contender in Contender::ALL {
            if contender.availability().is_err() {
                continue;
            }
            let checksum = std::thread::spawn(move || {
                contender.enter_thread();
                let checksum = contender.run(1000);
                contender.leave_thread();
                checksum
            })
            .join()
            .expect("loop thread panicked");
            assert_eq!(checksum, expected_checksum(1000), "{}", contender.name());
        }
    }
}
