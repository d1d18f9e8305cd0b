//! Readers in real signal handlers, installed with a raw `sigaction`, while
//! another thread replaces and reclaims the value in a loop.
//!
//! Signals land on a thread inside its own read-side section (registered and
//! unregistered), on the thread that is inside `replace`, and on a thread
//! created by `pthread_create` that never called the library. Every value a
//! handler reads must still be live: values are poisoned when dropped, and a
//! handler that sees anything but the live marker counts an error.

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nmi_rcu::RcuOption;

const LIVE: u64 = 0x4c49_5645_4c49_5645;
const POISON: u64 = 0xdead_dead_dead_dead;

/// A value with a liveness marker that its drop overwrites.
struct Payload {
    marker: AtomicU64,
    serial: u64,
}

impl Drop for Payload {
    fn drop(&mut self) {
        self.marker.store(POISON, Ordering::SeqCst);
    }
}

static CURRENT: RcuOption<Payload> = RcuOption::new();

/// Targets: 0 registered reader, 1 unregistered reader, 2 updater, 3 C thread.
const TARGETS: usize = 4;
static TIDS: [AtomicI32; TARGETS] = [const { AtomicI32::new(0) }; TARGETS];
static HANDLED: [AtomicU64; TARGETS] = [const { AtomicU64::new(0) }; TARGETS];
static NESTED: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
/// Set by a thread while it holds a section, so the handler can count
/// nested deliveries.
static IN_SECTION: [AtomicBool; TARGETS] = [const { AtomicBool::new(false) }; TARGETS];

fn gettid() -> i32 {
    // glibc's wrapper rather than `syscall(2)`, which RealtimeSanitizer
    // flags as possibly blocking.
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// Reads the current payload and checks its marker.
fn read_and_check() {
    let guard = nmi_rcu::read_lock();
    if let Some(payload) = CURRENT.read(&guard) {
        let marker = payload.marker.load(Ordering::SeqCst);
        if marker != LIVE {
            ERRORS.fetch_add(1, Ordering::SeqCst);
        }
        std::hint::black_box(payload.serial);
    }
}

extern "C" fn on_signal(
    _signo: libc::c_int,
    _info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    let tid = gettid();
    read_and_check();
    for (index, target) in TIDS.iter().enumerate() {
        if target.load(Ordering::Relaxed) == tid {
            HANDLED[index].fetch_add(1, Ordering::Relaxed);
            if IN_SECTION[index].load(Ordering::Relaxed) {
                NESTED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

fn install_handler() {
    // SAFETY: a zeroed sigaction is a valid starting point; the handler is an
    // extern "C" function with the SA_SIGINFO signature.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_signal as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(libc::sigaction(libc::SIGUSR1, &action, ptr::null_mut()), 0);
    }
}

fn reader_loop(index: usize) {
    TIDS[index].store(gettid(), Ordering::SeqCst);
    while !STOP.load(Ordering::Relaxed) {
        let guard = nmi_rcu::read_lock();
        IN_SECTION[index].store(true, Ordering::Relaxed);
        if let Some(payload) = CURRENT.read(&guard) {
            for _ in 0..50 {
                if payload.marker.load(Ordering::SeqCst) != LIVE {
                    ERRORS.fetch_add(1, Ordering::SeqCst);
                }
                std::hint::spin_loop();
            }
        }
        IN_SECTION[index].store(false, Ordering::Relaxed);
        drop(guard);
    }
}

extern "C" fn c_thread_main(_arg: *mut libc::c_void) -> *mut libc::c_void {
    TIDS[3].store(gettid(), Ordering::SeqCst);
    while !STOP.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
    ptr::null_mut()
}

#[test]
fn signal_handlers_never_read_freed_values() {
    install_handler();
    CURRENT.set(Payload {
        marker: AtomicU64::new(LIVE),
        serial: 0,
    });

    let registered = thread::spawn(|| {
        nmi_rcu::register_thread();
        reader_loop(0);
    });
    let unregistered = thread::spawn(|| reader_loop(1));
    let updater = thread::spawn(|| {
        TIDS[2].store(gettid(), Ordering::SeqCst);
        let mut serial = 1;
        while !STOP.load(Ordering::Relaxed) {
            let old = CURRENT.set(Payload {
                marker: AtomicU64::new(LIVE),
                serial,
            });
            match (serial % 2, old) {
                (0, Some(old)) => drop(old.synchronize()),
                (_, Some(old)) => old.defer(),
                (_, None) => {}
            }
            serial += 1;
        }
    });
    let mut c_thread: libc::pthread_t = 0;
    // SAFETY: the start routine matches pthread's signature and ignores its
    // argument.
    let created =
        unsafe { libc::pthread_create(&mut c_thread, ptr::null(), c_thread_main, ptr::null_mut()) };
    assert_eq!(created, 0);

    while TIDS.iter().any(|tid| tid.load(Ordering::SeqCst) == 0) {
        thread::yield_now();
    }

    // A tgkill storm at every target.
    let pid = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        for tid in &TIDS {
            // SAFETY: tgkill takes plain integers.
            let sent = unsafe {
                libc::syscall(
                    libc::SYS_tgkill,
                    pid,
                    tid.load(Ordering::SeqCst),
                    libc::SIGUSR1,
                )
            };
            assert_eq!(sent, 0, "tgkill failed");
        }
        thread::sleep(Duration::from_micros(20));
    }

    STOP.store(true, Ordering::SeqCst);
    registered.join().unwrap();
    unregistered.join().unwrap();
    updater.join().unwrap();
    // SAFETY: the thread was created above and is joined once.
    assert_eq!(unsafe { libc::pthread_join(c_thread, ptr::null_mut()) }, 0);
    nmi_rcu::barrier();

    assert_eq!(
        ERRORS.load(Ordering::SeqCst),
        0,
        "a reader saw a freed value"
    );
    for (index, name) in [
        "registered reader",
        "unregistered reader",
        "updater",
        "C thread",
    ]
    .iter()
    .enumerate()
    {
        assert!(
            HANDLED[index].load(Ordering::SeqCst) > 0,
            "no signal was handled on the {name}"
        );
    }
    assert!(
        NESTED.load(Ordering::SeqCst) > 0,
        "no signal arrived inside a read-side section"
    );
}
