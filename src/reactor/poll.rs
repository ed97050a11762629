//! The only file that names mio: the OS readiness queue (`Poller`), the cross-thread
//! `Waker`, and the mapping between mio's `Token` and the reactor's `SourceKey`.
//!
//! Required of this backend by the rest of the reactor:
//! - register a raw file descriptor for readable and writable readiness, edge-triggered,
//!   under a `SourceKey`, and deregister it;
//! - wait up to a timeout and report `(SourceKey or wake-up, Readiness)` pairs;
//! - a `Waker` that any thread may use to end a wait;
//! - a file descriptor that becomes readable when events are pending (for embedding).

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// The token reserved for the thread waker.
const WAKE_TOKEN: Token = Token(usize::MAX);

/// A source's slot in the reactor's slab plus the generation it was registered with, so
/// an event for a removed source never reaches a newer one that reused its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct SourceKey {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

impl SourceKey {
    fn token(self) -> Token {
        Token(((self.generation as usize) << 32) | self.index as usize)
    }

    fn from_token(token: Token) -> SourceKey {
        SourceKey { index: token.0 as u32, generation: (token.0 >> 32) as u32 }
    }
}

/// What the OS reported for one source.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Readiness {
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    /// The peer closed its write side, or the socket is fully closed.
    pub(crate) read_closed: bool,
    /// An error is pending on the socket (`SO_ERROR`).
    pub(crate) error: bool,
}

/// One reported event: a source, or the thread waker.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ready {
    Source(SourceKey, Readiness),
    Wake,
}

/// The readiness queue (epoll on Linux).
pub(crate) struct Poller {
    poll: Poll,
    events: Events,
}

/// Wakes the reactor from any thread.
#[derive(Clone)]
pub(crate) struct Waker(Arc<mio::Waker>);

impl Poller {
    pub(crate) fn new() -> io::Result<(Poller, Waker)> {
        let poll = Poll::new()?;
        let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN)?;
        Ok((Poller { poll, events: Events::with_capacity(1024) }, Waker(Arc::new(waker))))
    }

    /// Registers `fd`, edge-triggered, for the given interests (at least one).
    pub(crate) fn register(
        &self,
        fd: RawFd,
        key: SourceKey,
        readable: bool,
        writable: bool,
    ) -> io::Result<()> {
        self.poll.registry().register(&mut SourceFd(&fd), key.token(), interest(readable, writable))
    }

    /// Moves a registered `fd` to a new key (the reactor compacted its source table).
    /// Readiness the OS already holds for `fd` is reported under the new key.
    pub(crate) fn reregister(
        &self,
        fd: RawFd,
        key: SourceKey,
        readable: bool,
        writable: bool,
    ) -> io::Result<()> {
        self.poll.registry().reregister(&mut SourceFd(&fd), key.token(), interest(readable, writable))
    }

    pub(crate) fn deregister(&self, fd: RawFd) -> io::Result<()> {
        self.poll.registry().deregister(&mut SourceFd(&fd))
    }

    /// Waits up to `timeout` (`None`: forever) and appends what happened to `out`.
    /// An interrupted wait (`EINTR`) reports nothing and is not an error.
    pub(crate) fn poll(&mut self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        for ev in self.events.iter() {
            if ev.token() == WAKE_TOKEN {
                out.push(Ready::Wake);
            } else {
                out.push(Ready::Source(
                    SourceKey::from_token(ev.token()),
                    Readiness {
                        readable: ev.is_readable(),
                        writable: ev.is_writable(),
                        read_closed: ev.is_read_closed(),
                        error: ev.is_error(),
                    },
                ));
            }
        }
        Ok(())
    }
}

/// mio's interest for the given readiness kinds (at least one; readable if neither).
fn interest(readable: bool, writable: bool) -> Interest {
    match (readable, writable) {
        (true, true) => Interest::READABLE | Interest::WRITABLE,
        (false, true) => Interest::WRITABLE,
        _ => Interest::READABLE,
    }
}

impl AsRawFd for Poller {
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}

impl Waker {
    pub(crate) fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}
