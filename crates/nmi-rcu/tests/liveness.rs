//! Stall warnings and `fork()`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nmi_rcu::{Domain, RcuCell};

/// A logger that keeps every warning for the test to inspect.
struct CapturingLogger {
    warnings: Mutex<Vec<String>>,
}

impl log::Log for CapturingLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Warn
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            self.warnings
                .lock()
                .unwrap()
                .push(record.args().to_string());
        }
    }

    fn flush(&self) {}
}

static LOGGER: CapturingLogger = CapturingLogger {
    warnings: Mutex::new(Vec::new()),
};

fn install_logger() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Warn);
}

#[test]
fn forgotten_guard_produces_stall_warning_naming_thread() {
    install_logger();
    let domain = Domain::new();
    domain.set_stall_timeout(Duration::from_millis(100));
    domain.synchronize();

    let (forgotten_tx, forgotten_rx) = mpsc::channel();
    let (exit_tx, exit_rx) = mpsc::channel::<()>();
    let reader_domain = domain.clone();
    let reader = thread::Builder::new()
        .name("stuck-reader".into())
        .spawn(move || {
            nmi_rcu::register_thread();
            std::mem::forget(reader_domain.read_lock());
            forgotten_tx.send(()).unwrap();
            exit_rx.recv().unwrap();
        })
        .unwrap();
    forgotten_rx.recv().unwrap();

    let finished = Arc::new(AtomicBool::new(false));
    let updater = {
        let domain = domain.clone();
        let finished = finished.clone();
        thread::spawn(move || {
            domain.synchronize();
            finished.store(true, Ordering::SeqCst);
        })
    };

    let started = Instant::now();
    let warning = loop {
        let found = LOGGER
            .warnings
            .lock()
            .unwrap()
            .iter()
            .find(|w| w.contains("stuck-reader"))
            .cloned();
        if let Some(warning) = found {
            break warning;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no stall warning within 5 s"
        );
        thread::sleep(Duration::from_millis(10));
    };
    assert!(warning.contains("stalled for"), "{warning}");
    assert!(warning.contains("tid "), "{warning}");
    assert!(!finished.load(Ordering::SeqCst));

    // The thread exits with its section open; its slot is abandoned and the
    // grace period completes.
    exit_tx.send(()).unwrap();
    reader.join().unwrap();
    updater.join().unwrap();
    assert!(finished.load(Ordering::SeqCst));
}

/// Runs `child` in a forked child process and returns its wait status.
/// The child gets 10 seconds before SIGALRM kills it, so a hang shows up
/// as a signal instead of a stuck test.
fn run_in_child(child: impl FnOnce() -> i32) -> i32 {
    // SAFETY: the child only runs Rust code that this test controls and
    // leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: alarm and _exit have no preconditions.
        unsafe { libc::alarm(10) };
        let code = child();
        // SAFETY: as above.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child with a valid status pointer.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    status
}

#[test]
fn fork_child_reads_synchronizes_and_runs_callbacks() {
    // Busy parent: readers on both paths, an updater and the reclaimer.
    let cell = Arc::new(RcuCell::new(0u64));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for register in [true, false] {
        let cell = cell.clone();
        let stop = stop.clone();
        workers.push(thread::spawn(move || {
            if register {
                nmi_rcu::register_thread();
            }
            while !stop.load(Ordering::Relaxed) {
                let guard = nmi_rcu::read_lock();
                std::hint::black_box(cell.read(&guard));
            }
        }));
    }
    {
        let cell = cell.clone();
        let stop = stop.clone();
        workers.push(thread::spawn(move || {
            let mut value = 0;
            while !stop.load(Ordering::Relaxed) {
                value += 1;
                cell.replace(value).defer();
                if value % 64 == 0 {
                    nmi_rcu::synchronize();
                }
            }
        }));
    }
    thread::sleep(Duration::from_millis(50));

    for _ in 0..5 {
        let child_cell = cell.clone();
        let status = run_in_child(move || {
            {
                let guard = nmi_rcu::read_lock();
                std::hint::black_box(child_cell.read(&guard));
            }
            nmi_rcu::synchronize();
            let ran = Arc::new(AtomicBool::new(false));
            let flag = ran.clone();
            nmi_rcu::call_rcu(move || flag.store(true, Ordering::SeqCst));
            nmi_rcu::barrier();
            child_cell.replace(7).synchronize();
            if ran.load(Ordering::SeqCst) {
                0
            } else {
                1
            }
        });
        assert!(
            libc::WIFEXITED(status),
            "child died: wait status {status:#x}"
        );
        assert_eq!(libc::WEXITSTATUS(status), 0, "child's callback did not run");
    }

    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.join().unwrap();
    }
}

#[test]
fn fork_inside_read_section_child_can_synchronize() {
    let status = run_in_child(|| {
        // The child inherits the parent thread's open section; it must end
        // it and then synchronize normally.
        0
    });
    assert!(libc::WIFEXITED(status));

    let guard = nmi_rcu::read_lock();
    let status = run_in_child(move || {
        drop(guard);
        nmi_rcu::synchronize();
        0
    });
    assert!(
        libc::WIFEXITED(status),
        "child died: wait status {status:#x}"
    );
    assert_eq!(libc::WEXITSTATUS(status), 0);
}
