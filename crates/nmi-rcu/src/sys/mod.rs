//! Operating-system services behind one narrow interface.
//!
//! The grace-period core needs only these services from the platform:
//!
//! - an asymmetric memory barrier ([`membarrier`]) that makes every running
//!   thread of the process execute a full fence, so readers can skip theirs;
//! - a kernel thread id ([`gettid`]) for stall warnings;
//! - a futex-style wait and wake on a 32-bit word ([`futex_wait`],
//!   [`futex_wake`]) for the reclaimer thread and the grace-period lock;
//! - a hook that runs in the child after `fork()` ([`register_atfork_child`]);
//! - a way to report a fatal error from any context ([`fatal`]).
//!
//! Only Linux is implemented. A bare-metal port provides the same functions:
//! there the asymmetric barrier becomes an inter-processor interrupt or, on a
//! single core, a compiler fence.

#[cfg(target_os = "linux")]
mod linux;
#[cfg(target_os = "linux")]
pub(crate) use linux::*;

#[cfg(not(target_os = "linux"))]
compile_error!("nmi-rcu supports Linux only for now; see the limitations page");
