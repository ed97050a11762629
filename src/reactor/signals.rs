//! Optional graceful stop on SIGINT and SIGTERM (Twisted's `installSignalHandlers`), off
//! by default so that an embedding daemon keeps its own signal handling.
//!
//! `signal-hook`'s iterator runs the real signal handler (async-signal-safe, inside the
//! crate) and hands the signal to a small thread of ours, which raises a flag and wakes
//! the reactor through `call_from_thread`. The reactor checks the flag once per turn and
//! stops as [`ReactorHandle::stop`](super::ReactorHandle::stop) would: the shutdown
//! triggers run before `run()` returns.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

use super::threads::ThreadHandle;

/// The signal thread of one reactor; closed and joined when the reactor is dropped.
pub(crate) struct SignalWatch {
    pub(crate) received: Arc<AtomicBool>,
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

impl SignalWatch {
    pub(crate) fn start(wake: ThreadHandle) -> io::Result<SignalWatch> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let received = Arc::new(AtomicBool::new(false));
        let flag = received.clone();
        let thread = std::thread::Builder::new().name("weft-signals".into()).spawn(move || {
            for signal in signals.forever() {
                log::info!(target: "weft::reactor", "received signal {signal}; stopping the reactor");
                flag.store(true, Ordering::SeqCst);
                if wake.call_from_thread(|| {}).is_err() {
                    break;
                }
            }
        })?;
        Ok(SignalWatch { received, handle, thread: Some(thread) })
    }

    /// True once SIGINT or SIGTERM arrived (and clears it).
    pub(crate) fn take(&self) -> bool {
        self.received.swap(false, Ordering::SeqCst)
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
