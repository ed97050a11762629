//! The OS backend, and the only file that names mio: the readiness queue (`Poller`), the
//! cross-thread `Waker`, the deadline timer (`Alarm`), and the mapping between mio's
//! `Token` and the reactor's `SourceKey`.
//!
//! Required of this backend by the rest of the reactor:
//! - register a raw file descriptor for readable and writable readiness, edge-triggered,
//!   under a `SourceKey`, and deregister it;
//! - wait up to a timeout and report `(SourceKey, wake-up or alarm, Readiness)` events;
//! - a `Waker` that any thread may use to end a wait;
//! - an `Alarm` (a `timerfd` inside the same readiness queue) that ends a wait at a
//!   deadline, so the queue's descriptor becomes readable when a timer is due;
//! - a file descriptor that becomes readable when events are pending (for embedding).

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Duration;

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Registry, Token};
use rustix::time::{
    clock_gettime, timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId, TimerfdFlags,
    TimerfdTimerFlags, Timespec,
};

/// The token reserved for the thread waker.
const WAKE_TOKEN: Token = Token(usize::MAX);
/// The token reserved for the alarm (a source's token never comes near it: its low half
/// is a slab index).
const ALARM_TOKEN: Token = Token(usize::MAX - 1);
/// How many events one `epoll_wait` reports at most.
pub(crate) const EVENTS_PER_POLL: usize = 1024;

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

/// One reported event: a source, the thread waker, or the alarm.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Ready {
    Source(SourceKey, Readiness),
    Wake,
    Alarm,
}

/// The readiness queue (epoll on Linux).
///
/// `poll` needs `&mut Poll`, so the `Poll` sits in a `RefCell` borrowed only while
/// waiting; registration and the descriptor lent to hosts go through `registry`, a
/// clone of the queue's registry (a duplicate of its descriptor) reachable without a
/// borrow.
pub(crate) struct Poller {
    poll: RefCell<Poll>,
    events: RefCell<Events>,
    registry: Registry,
}

/// Wakes the reactor from any thread.
#[derive(Clone)]
pub(crate) struct Waker(Arc<mio::Waker>);

/// A `timerfd` in the readiness queue, armed for the earliest deadline, so that the
/// queue's descriptor becomes readable when a timer is due, whoever scheduled it.
///
/// Times are durations since the reactor's clock started (`epoch` is that start on
/// `CLOCK_MONOTONIC`, read just after the reactor's `Instant`, so the alarm never goes
/// off before a deadline the timer heap would call due).
///
/// Arming costs a system call (and in a virtual machine, programming a hardware timer
/// costs a good deal more), so the alarm is re-armed only when a deadline earlier than
/// the armed one appears; a deadline that moves later (a cancel, a `delay`) leaves the
/// alarm where it is, and at worst the loop wakes once for nothing and re-arms. And it
/// does nothing at all until it is `enable`d, when the reactor's descriptor is first lent
/// out: until then no host can be waiting on the descriptor.
pub(crate) struct Alarm {
    fd: OwnedFd,
    epoch: Timespec,
    /// The descriptor was lent out (`AsFd`): someone may wait on it.
    enabled: Cell<bool>,
    /// The time the timerfd is armed for; `None` when it is not armed or went off.
    armed: Cell<Option<Duration>>,
    /// A driver (`run`, `iterate`) is turning the loop and accounts for deadlines
    /// itself: requests are left to it.
    held: Cell<bool>,
}

impl Poller {
    pub(crate) fn new() -> io::Result<(Poller, Waker)> {
        let poll = Poll::new()?;
        let registry = poll.registry().try_clone()?;
        let waker = mio::Waker::new(&registry, WAKE_TOKEN)?;
        let poller = Poller {
            poll: RefCell::new(poll),
            events: RefCell::new(Events::with_capacity(EVENTS_PER_POLL)),
            registry,
        };
        Ok((poller, Waker(Arc::new(waker))))
    }

    /// Registers `fd`, edge-triggered, for the given interests (at least one).
    pub(crate) fn register(
        &self,
        fd: RawFd,
        key: SourceKey,
        readable: bool,
        writable: bool,
    ) -> io::Result<()> {
        self.registry.register(&mut SourceFd(&fd), key.token(), interest(readable, writable))
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
        self.registry.reregister(&mut SourceFd(&fd), key.token(), interest(readable, writable))
    }

    pub(crate) fn deregister(&self, fd: RawFd) -> io::Result<()> {
        self.registry.deregister(&mut SourceFd(&fd))
    }

    /// A new alarm, registered in this queue; `Alarm` docs say what `epoch` is.
    pub(crate) fn alarm(&self) -> io::Result<Alarm> {
        let fd = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)?;
        let epoch = clock_gettime(ClockId::Monotonic);
        self.registry.register(&mut SourceFd(&fd.as_raw_fd()), ALARM_TOKEN, Interest::READABLE)?;
        Ok(Alarm { fd, epoch, enabled: Cell::new(false), armed: Cell::new(None), held: Cell::new(false) })
    }

    /// Waits up to `timeout` (`None`: forever) and appends what happened to `out`.
    /// Returns true if the OS had more events than one wait reports (the queue may still
    /// hold some). An interrupted wait (`EINTR`) reports nothing and is not an error.
    pub(crate) fn poll(&self, timeout: Option<Duration>, out: &mut Vec<Ready>) -> io::Result<bool> {
        let mut events = self.events.borrow_mut();
        match self.poll.borrow_mut().poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut n = 0;
        for ev in events.iter() {
            n += 1;
            out.push(match ev.token() {
                WAKE_TOKEN => Ready::Wake,
                ALARM_TOKEN => Ready::Alarm,
                token => Ready::Source(
                    SourceKey::from_token(token),
                    Readiness {
                        readable: ev.is_readable(),
                        writable: ev.is_writable(),
                        read_closed: ev.is_read_closed(),
                        error: ev.is_error(),
                    },
                ),
            });
        }
        Ok(n >= EVENTS_PER_POLL)
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

impl AsFd for Poller {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.registry.as_fd()
    }
}

impl Waker {
    pub(crate) fn wake(&self) -> io::Result<()> {
        self.0.wake()
    }
}

impl Alarm {
    /// Makes sure the alarm goes off no later than `at`: arms it if it is not armed or
    /// armed later. Does nothing while a driver holds the alarm.
    #[inline]
    pub(crate) fn request(&self, at: Duration) {
        if self.enabled.get() && !self.held.get() {
            self.sync(Some(at));
        }
    }

    /// True if [`request`](Self::request) would act: the descriptor was lent out and no
    /// driver holds the alarm. Lets a caller skip working out a deadline.
    #[inline]
    pub(crate) fn takes_requests(&self) -> bool {
        self.enabled.get() && !self.held.get()
    }

    /// As `request`, whoever holds the alarm (the driver's own sync after a turn).
    #[inline]
    pub(crate) fn sync(&self, at: Option<Duration>) {
        if let (true, Some(at)) = (self.enabled.get(), at) {
            if self.armed.get().map_or(true, |armed| at < armed) {
                self.arm(at);
            }
        }
    }

    /// Makes the alarm go off now even if it is armed already: a new edge for a host
    /// waiting edge-triggered on the queue while events are left in it.
    pub(crate) fn kick(&self) {
        if self.enabled.get() {
            self.arm(Duration::ZERO);
        }
    }

    /// Turns the alarm on (the descriptor is being lent out); true the first time, when
    /// the caller brings it in line with what is scheduled already.
    pub(crate) fn enable(&self) -> bool {
        !self.enabled.replace(true)
    }

    /// Marks the alarm held by a driver; returns whether it was held already, for
    /// `release`.
    pub(crate) fn hold(&self) -> bool {
        self.held.replace(true)
    }

    pub(crate) fn release(&self, was_held: bool) {
        self.held.set(was_held);
    }

    pub(crate) fn is_held(&self) -> bool {
        self.held.get()
    }

    /// The time the alarm is armed for, for the unit tests.
    #[cfg(test)]
    pub(crate) fn armed(&self) -> Option<Duration> {
        self.armed.get()
    }

    /// The alarm's event was reported: read the timerfd (a timerfd re-armed since has
    /// nothing to read, and stays armed).
    pub(crate) fn fired(&self) {
        let mut expirations = [0u8; 8];
        if rustix::io::read(&self.fd, &mut expirations).is_ok() {
            self.armed.set(None);
        }
    }

    fn arm(&self, at: Duration) {
        // Past about 136 years the alarm just goes off early, and is armed again then.
        let at = at.min(Duration::from_secs(1 << 32));
        let value = Timespec::try_from(at).ok().and_then(|at| self.epoch.checked_add(at));
        let Some(it_value) = value else { return };
        let spec = Itimerspec { it_interval: Timespec { tv_sec: 0, tv_nsec: 0 }, it_value };
        match timerfd_settime(&self.fd, TimerfdTimerFlags::ABSTIME, &spec) {
            Ok(_) => self.armed.set(Some(at)),
            Err(e) => log::error!(target: "weft::reactor", "arming the timer descriptor failed: {e}"),
        }
    }
}
