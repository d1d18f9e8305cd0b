//! Alternate signal stacks: nested signals on the trampoline, with the
//! standard library's small stack and with one from `ensure_alt_stack`.
//!
//! The nesting cases run in a child process (this test binary re-run with
//! `NMI_RCU_CHILD_CASE` set to the test's name), because a stack overflow
//! kills the whole process; the parent judges the child by its `waitpid`
//! status.

use std::ffi::c_int;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use nmi_rcu::signal::{
    self, ensure_alt_stack, AltStack, AltStackError, Signal, MAX_ALT_STACK_SIZE,
    RECOMMENDED_ALT_STACK_SIZE,
};
use nmi_rcu::{NmiContext, Outcome};

const CASE_VARIABLE: &str = "NMI_RCU_CHILD_CASE";

/// Nesting depth of the signal chain: enough to overflow any alternate
/// stack below 16 KiB, because every kernel signal frame on x86-64 is more
/// than 1 KiB.
const DEPTH: usize = 16;

/// Runs `body` when this process is the child for test `name` and exits
/// when it returns; otherwise returns so that the caller acts as the parent.
fn child_case(name: &str, body: fn()) {
    if std::env::var(CASE_VARIABLE).as_deref() == Ok(name) {
        body();
        std::process::exit(0);
    }
}

/// Re-runs this binary as the child for `name` and returns its output; the
/// status comes from `waitpid`.
fn run_child(name: &str) -> Output {
    Command::new(std::env::current_exe().expect("test binary path"))
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CASE_VARIABLE, name)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .expect("spawn the child test process")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The signals of the chain: `SIGRTMIN`, `SIGRTMIN + 1`, and so on.
fn chain_signal(level: usize) -> Signal {
    Signal::new(libc::SIGRTMIN() + level as c_int).expect("a free real-time signal")
}

/// Handler invocations per level of the chain.
static REACHED: [AtomicUsize; DEPTH] = [const { AtomicUsize::new(0) }; DEPTH];

/// Stack address seen by each level's handler, to report the bytes that one
/// nested delivery costs.
static STACK_ADDRESS: [AtomicUsize; DEPTH] = [const { AtomicUsize::new(0) }; DEPTH];

/// Registers one handler per level. Level `n` enters a read-side section,
/// records that it ran, and raises level `n + 1` from inside the section,
/// so the deliveries nest `DEPTH` deep on the same stack.
fn register_chain() -> Vec<signal::Registration> {
    (0..DEPTH)
        .map(|level| {
            signal::register(chain_signal(level), "chain", move |_| {
                let guard = nmi_rcu::read_lock();
                let marker = 0u8;
                // Relaxed: read after the chain by the same thread.
                STACK_ADDRESS[level].store(std::ptr::addr_of!(marker) as usize, Ordering::Relaxed);
                REACHED[level].fetch_add(1, Ordering::Relaxed);
                if level + 1 < DEPTH {
                    // SAFETY: `raise` is async-signal-safe, and the next
                    // level has a handler.
                    unsafe { libc::raise(chain_signal(level + 1).number()) };
                }
                drop(guard);
                Outcome::Handled
            })
            .expect("register a chain handler")
        })
        .collect()
}

/// Returns the calling thread's alternate signal stack settings.
fn current_alt_stack() -> libc::stack_t {
    let mut current = libc::stack_t {
        ss_sp: std::ptr::null_mut(),
        ss_flags: 0,
        ss_size: 0,
    };
    // SAFETY: a null new stack only queries into `current`. `sigaltstack`
    // is a plain system call, so handlers may call it too.
    let rc = unsafe { libc::sigaltstack(std::ptr::null(), &mut current) };
    assert_eq!(rc, 0, "sigaltstack query failed");
    current
}

/// Returns whether the calling thread is running on its alternate stack.
fn on_alt_stack() -> bool {
    current_alt_stack().ss_flags & libc::SS_ONSTACK != 0
}

/// Lowers the soft core-size limit to 0, so that a crashing child leaves
/// no core file behind.
fn disable_core_dumps() {
    // SAFETY: `limit` is valid storage for `getrlimit` and `setrlimit`;
    // lowering the soft limit needs no privilege.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        assert_eq!(libc::getrlimit(libc::RLIMIT_CORE, &mut limit), 0);
        limit.rlim_cur = 0;
        assert_eq!(libc::setrlimit(libc::RLIMIT_CORE, &limit), 0);
    }
}

/// Runs the chain on a new thread spawned by the standard library, after
/// `prepare` ran there, and prints how many levels ran and their stack use.
fn run_chain_on_std_thread(prepare: fn()) {
    let _registrations = register_chain();
    std::thread::spawn(move || {
        prepare();
        // SAFETY: level 0 has a handler.
        unsafe { libc::raise(chain_signal(0).number()) };
        let reached: Vec<usize> = REACHED.iter().map(|n| n.load(Ordering::Relaxed)).collect();
        let top = STACK_ADDRESS[0].load(Ordering::Relaxed);
        let bottom = STACK_ADDRESS[DEPTH - 1].load(Ordering::Relaxed);
        println!("reached {reached:?}");
        println!(
            "bytes per nested delivery: {}",
            top.saturating_sub(bottom) / (DEPTH - 1)
        );
    })
    .join()
    .expect("chain thread");
}

#[test]
fn nested_signals_overflow_small_alt_stack() {
    const NAME: &str = "nested_signals_overflow_small_alt_stack";
    child_case(NAME, || {
        disable_core_dumps();
        // The standard library gives this thread an 8 KiB stack already;
        // installing one explicitly keeps the test independent of that.
        run_chain_on_std_thread(replace_with_small_stack);
    });

    let output = run_child(NAME);
    assert_eq!(
        output.status.signal(),
        Some(libc::SIGSEGV),
        "a {DEPTH}-deep chain on an 8 KiB alternate stack must overflow it; \
         status {:?}, stdout {}, stderr {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// Installs an 8 KiB alternate stack with a guard page below it, like the
/// standard library's, and leaks it for the rest of the process.
fn replace_with_small_stack() {
    const SMALL: usize = 8 * 1024;
    const PAGE: usize = 4096;
    // SAFETY: an anonymous private mapping; the first page is then made
    // inaccessible as a guard, and the rest becomes the signal stack, which
    // stays mapped for the life of the process.
    unsafe {
        let base = libc::mmap(
            std::ptr::null_mut(),
            SMALL + PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(base, libc::MAP_FAILED);
        assert_eq!(libc::mprotect(base, PAGE, libc::PROT_NONE), 0);
        let stack = libc::stack_t {
            ss_sp: base.cast::<u8>().add(PAGE).cast(),
            ss_flags: 0,
            ss_size: SMALL,
        };
        assert_eq!(libc::sigaltstack(&stack, std::ptr::null_mut()), 0);
    }
}

#[test]
fn nested_signals_fit_on_ensured_alt_stack() {
    const NAME: &str = "nested_signals_fit_on_ensured_alt_stack";
    child_case(NAME, || {
        disable_core_dumps();
        run_chain_on_std_thread(|| {
            let stack = ensure_alt_stack(256 * 1024).expect("install a 256 KiB stack");
            assert!(matches!(stack, AltStack::Installed { size } if size >= 256 * 1024));
        });
    });

    let output = run_child(NAME);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "status {:?}, stdout {stdout}, stderr {}",
        output.status,
        text(&output.stderr)
    );
    let every_level_once = format!("reached {:?}", [1usize; DEPTH]);
    assert!(
        stdout.contains(&every_level_once),
        "every level runs once: {stdout}"
    );
    let per_delivery = stdout
        .lines()
        .find_map(|line| line.strip_prefix("bytes per nested delivery: "))
        .and_then(|bytes| bytes.trim().parse::<usize>().ok())
        .expect("the child reports its stack use");
    eprintln!("one nested delivery used {per_delivery} bytes of alternate stack");
    assert!(
        per_delivery > 0 && per_delivery < RECOMMENDED_ALT_STACK_SIZE / 8,
        "a nested delivery should cost a few KiB, not {per_delivery} bytes"
    );
}

#[test]
fn chain_runs_on_the_alt_stack() {
    static ON_ALT_STACK: AtomicUsize = AtomicUsize::new(0);
    let signal = Signal::new(libc::SIGRTMIN() + DEPTH as c_int).expect("a free real-time signal");
    let registration = signal::register(signal, "where", |_| {
        if on_alt_stack() {
            ON_ALT_STACK.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Handled
    })
    .expect("register");

    std::thread::spawn(move || {
        ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).expect("install a stack");
        // SAFETY: the signal has a handler.
        unsafe { libc::raise(signal.number()) };
    })
    .join()
    .expect("thread");

    registration.unregister().expect("unregister");
    assert_eq!(ON_ALT_STACK.load(Ordering::Relaxed), 1);
}

#[test]
fn sizes_out_of_range_are_rejected() {
    let small = ensure_alt_stack(1024).unwrap_err();
    assert!(
        matches!(small, AltStackError::TooSmall { requested: 1024, minimum } if minimum > 1024),
        "{small:?}"
    );
    assert!(small.to_string().contains("1024 bytes"), "{small}");
    assert!(
        small.to_string().contains("RECOMMENDED_ALT_STACK_SIZE"),
        "{small}"
    );

    let large = ensure_alt_stack(MAX_ALT_STACK_SIZE + 1).unwrap_err();
    assert!(
        matches!(large, AltStackError::TooLarge { requested } if requested == MAX_ALT_STACK_SIZE + 1),
        "{large:?}"
    );
    assert!(large.to_string().contains("not KiB"), "{large}");
}

#[test]
fn large_stack_kept_small_grown() {
    std::thread::spawn(|| {
        let first = ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).expect("first");
        assert!(matches!(first, AltStack::Installed { .. }), "{first:?}");

        let again = ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE / 2).expect("again");
        assert_eq!(again, AltStack::Kept { size: first.size() });

        let grown = ensure_alt_stack(4 * RECOMMENDED_ALT_STACK_SIZE + 1).expect("grown");
        assert!(matches!(grown, AltStack::Installed { .. }), "{grown:?}");
        assert_eq!(grown.size() % 4096, 0, "whole pages: {grown:?}");
        assert!(grown.size() > 4 * RECOMMENDED_ALT_STACK_SIZE);

        let current = current_alt_stack();
        assert_eq!(current.ss_size, grown.size());
        assert_eq!(current.ss_flags & libc::SS_DISABLE, 0);
    })
    .join()
    .expect("thread");
}

#[test]
fn call_in_nmi_context_is_rejected() {
    let context = NmiContext::enter();
    let error = ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).unwrap_err();
    drop(context);
    assert!(matches!(error, AltStackError::InSignalHandler), "{error:?}");
    assert!(error.to_string().contains("signal handler"), "{error}");
}

#[test]
fn call_on_the_alt_stack_is_rejected() {
    static RESULT: AtomicUsize = AtomicUsize::new(0);
    const ON_ALT_STACK_ERROR: usize = 1;
    const OTHER: usize = 2;

    extern "C" fn handler(_: c_int) {
        // Only the checks before any allocation run here: the call returns
        // `OnAltStack` after querying `sigaltstack`.
        let outcome = match ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE) {
            Err(AltStackError::OnAltStack) => ON_ALT_STACK_ERROR,
            _ => OTHER,
        };
        RESULT.store(outcome, Ordering::Relaxed);
    }

    let signo = libc::SIGRTMIN() + DEPTH as c_int + 1;
    std::thread::spawn(move || {
        ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).expect("install a stack");
        // SAFETY: a zeroed `sigaction` is valid; the handler has the plain
        // signature that the flags (no SA_SIGINFO) announce.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = handler as extern "C" fn(c_int) as usize;
            action.sa_flags = libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            assert_eq!(libc::sigaction(signo, &action, std::ptr::null_mut()), 0);
            libc::raise(signo);
        }
    })
    .join()
    .expect("thread");
    assert_eq!(RESULT.load(Ordering::Relaxed), ON_ALT_STACK_ERROR);
}

#[test]
fn exiting_threads_unmap_their_stacks() {
    const NAME: &str = "exiting_threads_unmap_their_stacks";
    const THREADS: usize = 64;
    const SIZE: usize = 4 * 1024 * 1024;
    child_case(NAME, || {
        // A first thread sets up what every later thread reuses, such as
        // the allocator's 64 MiB per-thread arena, which would otherwise
        // count as growth.
        let install = || {
            ensure_alt_stack(SIZE).expect("install a 4 MiB stack");
        };
        std::thread::spawn(install).join().expect("warm-up thread");
        let before = mapped_bytes();
        for _ in 0..THREADS {
            std::thread::spawn(install).join().expect("thread");
        }
        let after = mapped_bytes();
        println!("mapped before {before} after {after}");
        // 64 leaked stacks would add 256 MiB.
        assert!(
            after < before + SIZE * 2,
            "stacks leaked: {before} bytes mapped before, {after} after"
        );
    });

    let output = run_child(NAME);
    assert_eq!(
        output.status.code(),
        Some(0),
        "status {:?}, stdout {}, stderr {}",
        output.status,
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// Returns the process's virtual memory size from `/proc/self/status`.
fn mapped_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmSize in /proc/self/status");
    kib * 1024
}

/// Returns whether every page of `stack` is mapped, using `mincore`,
/// which fails with ENOMEM for an unmapped page.
fn is_mapped(stack: &libc::stack_t) -> bool {
    let pages = stack.ss_size.div_ceil(4096);
    let mut residency = vec![0u8; pages];
    // SAFETY: `residency` has one byte per page of the range, and the
    // stack start is page-aligned (it comes from `mmap`).
    let rc = unsafe { libc::mincore(stack.ss_sp, stack.ss_size, residency.as_mut_ptr()) };
    rc == 0
}

/// Runs the child for `name` and checks that it exited with status 0 after
/// printing `survived`.
fn assert_child_survived(name: &str) {
    let output = run_child(name);
    let stdout = text(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "status {:?}, stdout {stdout}, stderr {}",
        output.status,
        text(&output.stderr)
    );
    assert!(stdout.contains("survived"), "stdout {stdout}");
}

/// Raises `signo` in the calling thread; it must have a handler.
fn raise(signo: c_int) {
    // SAFETY: every caller installed a handler for `signo` first.
    assert_eq!(unsafe { libc::raise(signo) }, 0);
}

/// Runs the registered signal `signal`, whose handler runs on the
/// thread's alternate stack, and returns whether it ran there.
fn handled_on_alt_stack(signal: Signal) -> bool {
    static ON_ALT_STACK: AtomicUsize = AtomicUsize::new(0);
    let registration = signal::register(signal, "probe", |_| {
        if on_alt_stack() {
            ON_ALT_STACK.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Handled
    })
    .expect("register the probe");
    let before = ON_ALT_STACK.load(Ordering::Relaxed);
    raise(signal.number());
    registration.unregister().expect("unregister the probe");
    ON_ALT_STACK.load(Ordering::Relaxed) == before + 1
}

/// A handler that another library installed without `SA_ONSTACK` grows the
/// stack while it runs. When it returns, the kernel reinstalls the stack
/// that was current when the signal arrived (`uc_stack`), so that stack must
/// still be mapped when the next signal uses it.
#[test]
fn stack_replaced_inside_foreign_handler_stays_mapped() {
    const NAME: &str = "stack_replaced_inside_foreign_handler_stays_mapped";
    static GROWN: AtomicUsize = AtomicUsize::new(0);

    extern "C" fn grow_stack(_: c_int) {
        // Outside any NmiContext, so the call is not rejected; this is the
        // misuse the rustdoc warns about, and it must not crash later.
        if let Ok(AltStack::Installed { size }) = ensure_alt_stack(4 * RECOMMENDED_ALT_STACK_SIZE) {
            GROWN.store(size, Ordering::Relaxed);
        }
    }

    child_case(NAME, || {
        disable_core_dumps();
        std::thread::spawn(|| {
            let first = ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).expect("first stack");
            let signo = libc::SIGRTMIN() + DEPTH as c_int + 2;
            // SAFETY: a zeroed `sigaction` is valid; the handler has the
            // plain signature that the flags (no SA_SIGINFO) announce.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = grow_stack as extern "C" fn(c_int) as usize;
                libc::sigemptyset(&mut action.sa_mask);
                assert_eq!(libc::sigaction(signo, &action, std::ptr::null_mut()), 0);
            }
            raise(signo);
            assert!(
                GROWN.load(Ordering::Relaxed) > first.size(),
                "the handler grew the stack"
            );
            assert_eq!(
                current_alt_stack().ss_size,
                first.size(),
                "the kernel reinstalled the first stack on return"
            );
            assert!(
                is_mapped(&current_alt_stack()),
                "the reinstalled stack is still mapped"
            );

            let probe = Signal::new(libc::SIGRTMIN() + DEPTH as c_int + 3).expect("a free signal");
            assert!(handled_on_alt_stack(probe));
            println!("survived");
        })
        .join()
        .expect("thread");
    });

    assert_child_survived(NAME);
}

/// Code that saved the stack with `sigaltstack` and restores it after the
/// stack was grown puts an older stack of ours back, so that stack must
/// still be mapped.
#[test]
fn saved_and_restored_stack_stays_mapped() {
    const NAME: &str = "saved_and_restored_stack_stays_mapped";
    child_case(NAME, || {
        disable_core_dumps();
        std::thread::spawn(|| {
            ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).expect("first stack");
            let saved = current_alt_stack();
            ensure_alt_stack(4 * RECOMMENDED_ALT_STACK_SIZE).expect("grown stack");
            assert!(is_mapped(&saved), "the replaced stack is still mapped");
            // SAFETY: `saved` is a stack this thread installed earlier, and
            // it is still mapped (checked above).
            let restored = unsafe { libc::sigaltstack(&saved, std::ptr::null_mut()) };
            assert_eq!(restored, 0);

            let probe = Signal::new(libc::SIGRTMIN() + DEPTH as c_int + 4).expect("a free signal");
            assert!(handled_on_alt_stack(probe));
            println!("survived");
        })
        .join()
        .expect("thread");
    });

    assert_child_survived(NAME);
}

/// A thread-local destructor that runs after the stack list's own (they run
/// in reverse order of first use) must get an error, not a stack that is
/// never freed.
#[test]
fn call_after_stack_list_destroyed_is_rejected() {
    const NOT_RUN: usize = 0;
    const THREAD_EXITING: usize = 1;
    const OTHER: usize = 2;
    static RESULT: AtomicUsize = AtomicUsize::new(NOT_RUN);

    struct LateCaller;
    impl Drop for LateCaller {
        fn drop(&mut self) {
            let outcome = match ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE) {
                Err(AltStackError::ThreadExiting) => THREAD_EXITING,
                _ => OTHER,
            };
            RESULT.store(outcome, Ordering::SeqCst);
        }
    }
    thread_local! {
        static LATE: LateCaller = const { LateCaller };
    }

    std::thread::spawn(|| {
        // First use of LATE, then of the stack list, so the list's
        // destructor runs first at exit.
        LATE.with(|_| ());
        ensure_alt_stack(RECOMMENDED_ALT_STACK_SIZE).expect("install a stack");
    })
    .join()
    .expect("thread");
    assert_eq!(RESULT.load(Ordering::SeqCst), THREAD_EXITING);
}
