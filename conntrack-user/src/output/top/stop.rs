//! How `ct-trace top` is told to end: SIGINT, SIGTERM or SIGHUP set a flag its loops and its
//! view look at.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by SIGINT, SIGTERM or SIGHUP: `top` then ends as it would after its last snapshot.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Whether a signal asked `top` to end.
pub fn stopped() -> bool {
    STOP.load(Ordering::Relaxed)
}

/// Catches the signals that end `top`. Their default action would do, but a process started
/// from a non-interactive shell's background job inherits SIGINT ignored (and a supervisor may
/// ignore SIGHUP): a handler is the one way to be stopped by them everywhere, and lets the
/// terminal view restore the terminal.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}
