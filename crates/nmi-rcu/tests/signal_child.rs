//! Signal-layer behaviour that ends or stops the process, checked in a
//! child process and judged by its `waitpid` status.
//!
//! Each test re-runs this test binary with only itself selected and
//! `NMI_RCU_CHILD_CASE` set to its name. In the child, [`child_case`]
//! runs the body, which either kills the process or returns (then the child
//! exits 0 through the test harness). The parent inspects the status.

use std::ffi::c_int;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::time::Duration;

use nmi_rcu::signal::{self, Signal};
use nmi_rcu::Outcome;

const CASE_VARIABLE: &str = "NMI_RCU_CHILD_CASE";

/// Runs `body` when this process is the child for test `name` and exits
/// when it returns; otherwise returns so that the caller acts as the parent.
fn child_case(name: &str, body: fn()) {
    if std::env::var(CASE_VARIABLE).as_deref() == Ok(name) {
        body();
        std::process::exit(0);
    }
}

/// Builds the command that re-runs this binary as the child for `name`.
fn child_command(name: &str) -> Command {
    let mut command = Command::new(std::env::current_exe().expect("test binary path"));
    command
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CASE_VARIABLE, name)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null());
    command
}

/// Runs the child for `name` to completion and returns its output; the
/// status comes from `waitpid`.
fn run_child(name: &str) -> Output {
    child_command(name)
        .output()
        .expect("spawn the child test process")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn signal(signo: c_int) -> Signal {
    Signal::new(signo).expect("a valid signal number")
}

fn decline(_: &signal::SignalContext) -> Outcome {
    Outcome::NotHandled
}

fn send_to_self(signo: c_int) {
    // SAFETY: `kill` on our own process id has no memory-safety
    // preconditions.
    let rc = unsafe { libc::kill(libc::getpid(), signo) };
    assert_eq!(rc, 0, "kill failed: {}", std::io::Error::last_os_error());
}

fn install_raw(signo: c_int, handler: usize, flags: c_int) {
    // SAFETY: all-zero bytes are a valid `sigaction`; the fields are set
    // below, and `handler` has the signature `flags` announces.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        action.sa_flags = flags;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(signo, &action, std::ptr::null_mut()), 0);
    }
}

/// Writes to a page mapped without access rights, which the CPU turns into
/// SIGSEGV with `SEGV_ACCERR`.
fn touch_inaccessible_page() {
    // SAFETY: an anonymous mapping with no access rights; the write below
    // faults, which is the point of the test.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        std::ptr::write_volatile(page.cast::<u8>(), 1);
    }
}

/// Raises the soft core-size limit to the hard limit so that the kernel
/// dumps core (the parent runs the child in a temporary directory).
fn allow_core_dumps() {
    // SAFETY: `limit` is valid storage for `getrlimit`/`setrlimit`.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_CORE, &mut limit), 0);
        limit.rlim_cur = limit.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_CORE, &limit), 0);
    }
}

/// Creates a fresh directory for a child that may dump core.
fn scratch_directory(name: &str) -> std::path::PathBuf {
    let directory = std::env::temp_dir().join(format!("nmi-rcu-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&directory).expect("create a scratch directory");
    directory
}

#[test]
fn declined_sigterm_kills_with_sigterm() {
    const NAME: &str = "declined_sigterm_kills_with_sigterm";
    child_case(NAME, || {
        install_raw(libc::SIGTERM, libc::SIG_DFL, 0);
        let _registration = signal::register(signal(libc::SIGTERM), "decline", decline).unwrap();
        send_to_self(libc::SIGTERM);
        std::thread::sleep(Duration::from_secs(10));
        println!("survived SIGTERM");
    });

    let output = run_child(NAME);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGTERM),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
    assert!(!output.status.core_dumped());
    assert!(!text(&output.stdout).contains("survived"));
}

#[test]
fn declined_segv_under_default_dumps_core() {
    const NAME: &str = "declined_segv_under_default_dumps_core";
    child_case(NAME, || {
        allow_core_dumps();
        // Replace the Rust runtime's SIGSEGV handler with the default.
        install_raw(libc::SIGSEGV, libc::SIG_DFL, 0);
        let _registration = signal::register(signal(libc::SIGSEGV), "decline", decline).unwrap();
        touch_inaccessible_page();
        println!("survived SIGSEGV");
    });

    let directory = scratch_directory(NAME);
    let output = child_command(NAME)
        .current_dir(&directory)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&directory);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
    assert!(
        output.status.core_dumped(),
        "SIGSEGV's default action dumps core"
    );
    assert!(!text(&output.stdout).contains("survived"));
}

#[test]
fn declined_segv_chains_to_rust_runtime() {
    const NAME: &str = "declined_segv_chains_to_rust_runtime";
    child_case(NAME, || {
        // The previous handler is the Rust runtime's, which resets SIGSEGV
        // to the default and lets the access fault again.
        let _registration = signal::register(signal(libc::SIGSEGV), "decline", decline).unwrap();
        touch_inaccessible_page();
        println!("survived SIGSEGV");
    });

    let output = run_child(NAME);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
    assert!(!text(&output.stdout).contains("survived"));
}

#[test]
fn declined_kill_sent_segv_kills_with_segv() {
    const NAME: &str = "declined_kill_sent_segv_kills_with_segv";
    child_case(NAME, || {
        install_raw(libc::SIGSEGV, libc::SIG_DFL, 0);
        let _registration = signal::register(signal(libc::SIGSEGV), "decline", decline).unwrap();
        send_to_self(libc::SIGSEGV);
        std::thread::sleep(Duration::from_secs(10));
        println!("survived SIGSEGV");
    });

    let output = run_child(NAME);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSEGV),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
    assert!(!text(&output.stdout).contains("survived"));
}

#[test]
fn declined_sigchld_and_sigwinch_are_ignored() {
    const NAME: &str = "declined_sigchld_and_sigwinch_are_ignored";
    child_case(NAME, || {
        for signo in [libc::SIGCHLD, libc::SIGWINCH] {
            install_raw(signo, libc::SIG_DFL, 0);
            let registration = signal::register(signal(signo), "decline", decline).unwrap();
            send_to_self(signo);
            wait_until(|| signal::stats(signal(signo)).default_actions == 1);
            registration.unregister().unwrap();
        }
    });

    let output = run_child(NAME);
    assert!(
        output.status.success(),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
}

/// Waits up to five seconds for `condition`, then panics with the
/// process's signal state.
fn wait_until(condition: impl Fn() -> bool) {
    for _ in 0..5000 {
        if condition() {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!(
        "condition not reached within five seconds\n{}",
        signal_state()
    );
}

/// Returns the pending and blocked signal sets of every thread of this
/// process, from `/proc`, to explain a signal that never arrived.
fn signal_state() -> String {
    let mut state = String::new();
    let tasks = std::fs::read_dir("/proc/self/task").expect("read /proc/self/task");
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let fields: Vec<&str> = status
            .lines()
            .filter(|line| {
                ["Name:", "SigPnd:", "ShdPnd:", "SigBlk:", "SigCgt:"]
                    .iter()
                    .any(|field| line.starts_with(field))
            })
            .collect();
        state.push_str(&format!(
            "thread {:?}: {}\n",
            task.file_name(),
            fields.join(" ")
        ));
    }
    state
}

type SigInfoHandler = extern "C" fn(c_int, *mut libc::siginfo_t, *mut libc::c_void);
type PlainHandler = extern "C" fn(c_int);

static SIGINFO_VALUE: AtomicUsize = AtomicUsize::new(0);
static SIGINFO_CODE: AtomicI32 = AtomicI32::new(0);
static SIGINFO_CALLS: AtomicUsize = AtomicUsize::new(0);
static PLAIN_CALLS: AtomicUsize = AtomicUsize::new(0);
static PLAIN_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn previous_siginfo_handler(_: c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel (through the trampoline) passes a valid siginfo,
    // and the signal was sent with `sigqueue`, so `si_value` is set.
    let (value, code) = unsafe { ((*info).si_value().sival_ptr as usize, (*info).si_code) };
    SIGINFO_VALUE.store(value, Ordering::SeqCst);
    SIGINFO_CODE.store(code, Ordering::SeqCst);
    SIGINFO_CALLS.fetch_add(1, Ordering::SeqCst);
}

extern "C" fn previous_plain_handler(signo: c_int) {
    PLAIN_CALLS.fetch_add(1, Ordering::SeqCst);
    PLAIN_SIGNAL.store(signo, Ordering::SeqCst);
}

#[test]
fn previous_siginfo_handler_gets_sigqueue_value() {
    const NAME: &str = "previous_siginfo_handler_gets_sigqueue_value";
    child_case(NAME, || {
        // A real-time signal, because the kernel rejects it with EAGAIN
        // when the user's queue of pending signals (RLIMIT_SIGPENDING) is
        // full, where a standard signal would arrive without its siginfo.
        let signo = libc::SIGRTMIN() + 3;
        install_raw(
            signo,
            previous_siginfo_handler as SigInfoHandler as usize,
            libc::SA_SIGINFO,
        );
        let _registration = signal::register(signal(signo), "decline", decline).unwrap();
        let value = libc::sigval {
            sival_ptr: 0x5eed as *mut libc::c_void,
        };
        wait_until(|| {
            // SAFETY: `sigqueue` to our own process with a valid value.
            let rc = unsafe { libc::sigqueue(libc::getpid(), signo, value) };
            let error = std::io::Error::last_os_error();
            assert!(
                rc == 0 || error.raw_os_error() == Some(libc::EAGAIN),
                "sigqueue failed: {error}"
            );
            rc == 0
        });
        wait_until(|| SIGINFO_CALLS.load(Ordering::SeqCst) != 0);
        assert_eq!(SIGINFO_VALUE.load(Ordering::SeqCst), 0x5eed);
        assert_eq!(SIGINFO_CODE.load(Ordering::SeqCst), libc::SI_QUEUE);
        assert_eq!(SIGINFO_CALLS.load(Ordering::SeqCst), 1);
        assert_eq!(signal::stats(signal(signo)).chained, 1);
    });

    let output = run_child(NAME);
    assert!(
        output.status.success(),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
}

#[test]
fn previous_plain_handler_is_called() {
    const NAME: &str = "previous_plain_handler_is_called";
    child_case(NAME, || {
        install_raw(
            libc::SIGUSR2,
            previous_plain_handler as PlainHandler as usize,
            0,
        );
        let _registration = signal::register(signal(libc::SIGUSR2), "decline", decline).unwrap();
        send_to_self(libc::SIGUSR2);
        wait_until(|| PLAIN_CALLS.load(Ordering::SeqCst) == 1);
        assert_eq!(PLAIN_SIGNAL.load(Ordering::SeqCst), libc::SIGUSR2);
        assert_eq!(signal::stats(signal(libc::SIGUSR2)).chained, 1);
    });

    let output = run_child(NAME);
    assert!(
        output.status.success(),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
}

#[test]
fn previous_resethand_handler_runs_once() {
    const NAME: &str = "previous_resethand_handler_runs_once";
    child_case(NAME, || {
        install_raw(
            libc::SIGUSR2,
            previous_plain_handler as PlainHandler as usize,
            libc::SA_RESETHAND,
        );
        let _registration = signal::register(signal(libc::SIGUSR2), "decline", decline).unwrap();
        send_to_self(libc::SIGUSR2);
        wait_until(|| PLAIN_CALLS.load(Ordering::SeqCst) == 1);
        println!("first delivery chained");
        // The kernel would have reset the disposition: this one terminates.
        send_to_self(libc::SIGUSR2);
        std::thread::sleep(Duration::from_secs(10));
        println!("survived the second delivery");
    });

    let output = run_child(NAME);
    let stdout = text(&output.stdout);
    assert!(stdout.contains("first delivery chained"), "stdout {stdout}");
    assert!(!stdout.contains("survived"), "stdout {stdout}");
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGUSR2),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
}

#[test]
fn previous_sig_ign_is_honoured() {
    const NAME: &str = "previous_sig_ign_is_honoured";
    child_case(NAME, || {
        install_raw(libc::SIGTERM, libc::SIG_IGN, 0);
        let registration = signal::register(signal(libc::SIGTERM), "decline", decline).unwrap();
        send_to_self(libc::SIGTERM);
        wait_until(|| signal::stats(signal(libc::SIGTERM)).chained == 1);
        assert_eq!(signal::stats(signal(libc::SIGTERM)).default_actions, 0);
        registration.unregister().unwrap();
        // SIG_IGN is back in place.
        send_to_self(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(50));
    });

    let output = run_child(NAME);
    assert!(
        output.status.success(),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
}

#[test]
fn panicking_handler_aborts_without_unwinding() {
    const NAME: &str = "panicking_handler_aborts_without_unwinding";
    child_case(NAME, || {
        struct ReportsUnwinding;
        impl Drop for ReportsUnwinding {
            fn drop(&mut self) {
                println!("unwound past the trampoline");
            }
        }
        let _registration = signal::register(signal(libc::SIGUSR1), "panics", |_| {
            panic!("handler panic for the test")
        })
        .unwrap();
        let _witness = ReportsUnwinding;
        send_to_self(libc::SIGUSR1);
        std::thread::sleep(Duration::from_secs(10));
        std::mem::forget(_witness);
        println!("survived the panic");
    });

    let output = run_child(NAME);
    let stderr = text(&output.stderr);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGABRT),
        "status {:?}, stderr {stderr}",
        output.status
    );
    assert!(
        stderr.contains("nmi-rcu: signal 10: a registered handler panicked"),
        "stderr {stderr}"
    );
    assert!(!stdout.contains("unwound"), "stdout {stdout}");
    assert!(!stdout.contains("survived"), "stdout {stdout}");
}

#[test]
fn allocating_set_in_handler_aborts() {
    const NAME: &str = "allocating_set_in_handler_aborts";
    static SLOT: nmi_rcu::HandlerSlot<()> = nmi_rcu::HandlerSlot::new();
    child_case(NAME, || {
        let _registration = signal::register(signal(libc::SIGUSR2), "sets", |_| {
            SLOT.set(|_: &()| Outcome::Handled).defer();
            Outcome::Handled
        })
        .unwrap();
        send_to_self(libc::SIGUSR2);
        std::thread::sleep(Duration::from_secs(10));
    });

    let output = run_child(NAME);
    let stderr = text(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGABRT),
        "status {:?}, stderr {stderr}",
        output.status
    );
    assert!(
        stderr.contains("set_prepared"),
        "the panic message names the alternative: {stderr}"
    );
    assert!(
        stderr.contains("a registered handler panicked"),
        "stderr {stderr}"
    );
}

#[test]
fn stack_overflow_report_survives_decline() {
    const NAME: &str = "stack_overflow_report_survives_decline";
    child_case(NAME, || {
        let _registration = signal::register(signal(libc::SIGSEGV), "decline", decline).unwrap();
        let overflow = std::thread::Builder::new()
            .name("overflows".into())
            .stack_size(256 * 1024)
            .spawn(|| {
                #[allow(unconditional_recursion)] // recursing until the guard page is the point
                fn recurse(depth: u64) -> u64 {
                    let frame = [depth; 64];
                    std::hint::black_box(&frame);
                    recurse(depth + 1) + std::hint::black_box(frame[3])
                }
                recurse(0)
            });
        let _ = overflow.unwrap().join();
        println!("survived the overflow");
    });

    let output = run_child(NAME);
    let stderr = text(&output.stderr);
    // Recent runtimes print the thread id after the name.
    assert!(stderr.contains("thread 'overflows'"), "stderr {stderr}");
    assert!(
        stderr.contains("has overflowed its stack"),
        "stderr {stderr}"
    );
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGABRT),
        "status {:?}, stderr {stderr}",
        output.status
    );
}

#[test]
fn declined_sigtstp_stops_then_continues() {
    const NAME: &str = "declined_sigtstp_stops_then_continues";
    child_case(NAME, || {
        install_raw(libc::SIGTSTP, libc::SIG_DFL, 0);
        let _registration = signal::register(signal(libc::SIGTSTP), "decline", decline).unwrap();
        // `raise` runs the trampoline on this thread before it returns, so
        // the stop and the continue have both happened below.
        // SAFETY: `raise` has no memory-safety preconditions.
        assert_eq!(unsafe { libc::raise(libc::SIGTSTP) }, 0);
        assert_eq!(signal::stats(signal(libc::SIGTSTP)).default_actions, 1);
        // The trampoline is back after the stop.
        let current = query(libc::SIGTSTP);
        assert_ne!(
            current.sa_sigaction,
            libc::SIG_DFL,
            "the trampoline was not re-installed"
        );
        println!("continued");
    });

    // A process group of its own keeps the child's group from being
    // orphaned, where the kernel would discard SIGTSTP.
    let child = child_command(NAME)
        .process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status: c_int = 0;
    // SAFETY: waiting for our own child with valid storage for the status.
    let waited = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    assert_eq!(waited, pid);
    assert!(
        libc::WIFSTOPPED(status),
        "the child did not stop: status {status:#x}"
    );
    assert_eq!(libc::WSTOPSIG(status), libc::SIGTSTP);

    // SAFETY: `kill` on our own stopped child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "status {:?}, stderr {}",
        output.status,
        text(&output.stderr)
    );
    assert!(text(&output.stdout).contains("continued"));
}

fn query(signo: c_int) -> libc::sigaction {
    // SAFETY: a null `act` only queries into valid storage.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        assert_eq!(libc::sigaction(signo, std::ptr::null(), &mut action), 0);
        action
    }
}
