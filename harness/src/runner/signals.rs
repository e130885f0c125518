//! Ctrl-C and SIGTERM during `bench run`. The first signal lets the step in progress finish; the
//! runner then marks the run `interrupted` (not `running`, which would read as still training)
//! and exits 130 (SIGINT) or 143 (SIGTERM), saying how to resume. A second signal exits at once,
//! for when a step or a scoring pass takes long.
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use signal_hook::consts::{SIGINT, SIGTERM};

struct Flags {
    /// The last signal received, 0 for none.
    signal: Arc<AtomicUsize>,
    /// Set by the first signal: arms the immediate exit on the second.
    armed: Arc<AtomicBool>,
}

static FLAGS: OnceLock<Flags> = OnceLock::new();

/// Installs the handlers (once per process; later calls do nothing).
pub fn install() -> anyhow::Result<()> {
    if FLAGS.get().is_some() {
        return Ok(());
    }
    let flags = Flags { signal: Arc::new(AtomicUsize::new(0)), armed: Arc::new(AtomicBool::new(false)) };
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the shutdown checks the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&flags.armed))?;
        signal_hook::flag::register(sig, Arc::clone(&flags.armed))?;
        signal_hook::flag::register_usize(sig, Arc::clone(&flags.signal), sig as usize)?;
    }
    let _ = FLAGS.set(flags);
    Ok(())
}

/// The signal received since [`install`], if any.
pub fn received() -> Option<i32> {
    let s = FLAGS.get()?.signal.load(Ordering::SeqCst);
    (s != 0).then_some(s as i32)
}

pub fn name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT (Ctrl-C)",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The conventional exit status of a process ended by `signal`.
pub fn exit_code(signal: i32) -> u8 {
    (128 + signal).clamp(0, 255) as u8
}
