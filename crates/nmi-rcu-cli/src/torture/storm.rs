//! The `tgkill` storm: a thread that sends [`STORM_SIGNAL`] to every reader
//! thread at a fixed rate, whatever CPU time the reader has used.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::reader::ReaderStats;
use super::STORM_SIGNAL;
use crate::os;

/// Counters of the storm. Statistics only: `Relaxed`, read in full after the
/// storm thread is joined.
#[derive(Debug, Default)]
pub struct StormStats {
    /// Signals the kernel accepted.
    pub sent: AtomicU64,
    /// `tgkill` calls that failed, such as for a reader that had exited.
    pub failed: AtomicU64,
}

/// Sends `hz` signals per second to each reader in `readers` until `stop` is
/// set.
///
/// Above 1000 Hz the signals go out in bursts once per millisecond. A signal
/// sent while the previous one to the same thread is still pending merges
/// with it, so readers may receive fewer than were sent.
pub fn run_storm(readers: &[ReaderStats], hz: u32, stats: &StormStats, stop: &AtomicBool) {
    let process_id = os::process_id();
    let (period, burst) = if hz > 1000 {
        (Duration::from_millis(1), hz / 1000)
    } else {
        (Duration::from_secs(1) / hz, 1)
    };

    // Relaxed: the flag only ends the loop; the join orders the rest.
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..burst {
            for reader in readers {
                // Acquire: pairs with the reader's Release store of its id.
                let thread_id = reader.thread_id.load(Ordering::Acquire);
                if thread_id == 0 {
                    continue;
                }
                let counter = match os::send_to_thread(process_id, thread_id, STORM_SIGNAL) {
                    Ok(()) => &stats.sent,
                    Err(_) => &stats.failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(period);
    }
}
