//! Side-by-side benchmarks of nmi-rcu against liburcu and the Rust peers.
//!
//! One [`run`] measures, in one process and on the same machine:
//!
//! - the read-side loop (enter a section, dereference a published function
//!   pointer, call it, exit), at 1 thread up to the core count and at twice
//!   the core count ([`read_side`]). The contenders are nmi-rcu on
//!   registered and unregistered threads, liburcu-memb and liburcu-bp
//!   through a C shim, crossbeam-epoch, arc-swap, and the std and
//!   parking_lot read-write locks. The floor is the same dereference and
//!   call with no section;
//! - the cost one dispatch adds to a signal delivery, through
//!   `HandlerSlot` and through the signal layer, against an empty
//!   `sigaction` handler and signal-hook-registry ([`dispatch`]);
//! - `synchronize` latency with idle, busy and many readers against
//!   liburcu-memb, the aggregate rate of concurrent `synchronize` callers,
//!   and `call_rcu` on the caller and under a sustained load ([`grace`]);
//! - register + unregister pairs against signal-hook-registry.
//!
//! Every ratio in the [`Report`] is computed from figures of the same run.
//! The liburcu contenders need Debian's `liburcu-dev` at build time; without
//! it they are skipped and the report says why.
//!
//! # Examples
//!
//! ```no_run
//! let report = nmi_rcu_bench::run(&nmi_rcu_bench::Config::quick(), &mut |step| eprintln!("{step}"));
//! print!("{}", report.render_text());
//! std::fs::write("bench.json", report.to_json()).unwrap();
//! ```

pub mod config;
pub mod dispatch;
pub mod grace;
pub mod handler;
pub mod harness;
pub mod read_side;
pub mod report;
pub mod stats;
pub mod suite;
pub mod svg;
pub mod table;
pub mod urcu;

pub use config::Config;
pub use report::Report;
pub use suite::run;
