//! Run: `cargo run --example embed_epoll [-- --edge] [--weft-port 47311] [--host-port 47312]`
//!
//! weft embedded in a plain epoll loop that the program owns: the host has its own epoll
//! set and its own TCP server (it greets each client with one line and closes), and puts
//! weft's descriptor in the same set. weft serves an echo server beside it. Try
//! `nc 127.0.0.1 47311` (echo, through weft) and `nc 127.0.0.1 47312` (the host's own).
//! Ctrl-C (or SIGTERM) stops weft gracefully (`stop_on_signals`): every connection gets
//! its `connection_lost`, then the host sees `is_stopped()` and leaves its loop.
//!
//! What the host does for weft, and all it has to do:
//! - wait for weft's descriptor (`Reactor: AsFd`) to be readable, with no timeout of
//!   its own: the descriptor becomes readable when a timer is due too, even one the
//!   host's own code scheduled;
//! - when it is, call `iterate(Some(Duration::ZERO))`. A level-triggered host calls it
//!   once per wake-up; an edge-triggered one (`--edge`) may call it again while it
//!   returns `IterateStatus::Pending` (a few times, to stay fair to its own sockets).
//!   Either way nothing is missed: while more is ready the descriptor stays readable,
//!   with a fresh edge for an edge-triggered wait;
//! - to stop, call `stop()` (or let `stop_on_signals` do it) and go on until
//!   `is_stopped()`.
//!
//! No `unsafe`: epoll through `rustix`. `tests/it/embed_epoll.rs` runs this host.

use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use rustix::event::epoll;
use rustix::time::Timespec;
use weft::reactor::{IterateStatus, Reactor};

#[path = "common/echo.rs"]
mod echo;
pub use echo::serve_echo;

/// How the host waits on weft's descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Woken while the descriptor is readable: one `iterate` per wake-up.
    Level,
    /// Woken once per change (`EPOLLET`): `iterate` until it says nothing is pending.
    Edge,
}

/// The line the host's own server greets each client with.
pub const GREETING: &[u8] = b"hello from the epoll host\n";

/// What the host counted, for the curious (and the tests).
#[derive(Clone, Copy, Debug, Default)]
pub struct HostStats {
    /// Times `epoll_wait` returned with something to do.
    pub wakeups: u64,
    /// Calls to `iterate`.
    pub iterations: u64,
    /// Clients the host's own server greeted.
    pub greeted: u64,
}

const WEFT: u64 = 1;
const LISTENER: u64 = 2;

/// The host's loop: its epoll set with weft's descriptor and the host's own listener.
pub struct Host<'r> {
    reactor: &'r Reactor,
    epoll: OwnedFd,
    listener: TcpListener,
    trigger: Trigger,
    events: Vec<epoll::Event>,
    /// What happened so far.
    pub stats: HostStats,
}

impl<'r> Host<'r> {
    /// The host's epoll set, with weft's descriptor in it (waited on as `trigger` says)
    /// and the host's own server listening on `addr`.
    pub fn new(reactor: &'r Reactor, addr: SocketAddr, trigger: Trigger) -> io::Result<Host<'r>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let flags = match trigger {
            Trigger::Level => epoll::EventFlags::IN,
            Trigger::Edge => epoll::EventFlags::IN | epoll::EventFlags::ET,
        };
        epoll::add(&epoll, reactor.as_fd(), epoll::EventData::new_u64(WEFT), flags)?;
        let listener = TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        epoll::add(&epoll, &listener, epoll::EventData::new_u64(LISTENER), epoll::EventFlags::IN)?;
        Ok(Host {
            reactor,
            epoll,
            listener,
            trigger,
            events: Vec::with_capacity(64),
            stats: HostStats::default(),
        })
    }

    /// The address the host's own server listens on.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Waits once (at most `timeout`; `None`: until something happens) and handles what
    /// woke it. Returns false if the wait timed out.
    pub fn turn(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let timeout =
            timeout.map(|t| Timespec::try_from(t).unwrap_or(Timespec { tv_sec: i64::MAX, tv_nsec: 0 }));
        self.events.clear();
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut self.events), timeout.as_ref()) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
        if self.events.is_empty() {
            return Ok(false);
        }
        self.stats.wakeups += 1;
        for i in 0..self.events.len() {
            match self.events[i].data.u64() {
                WEFT => self.drive_weft()?,
                LISTENER => self.greet_clients(),
                _ => unreachable!("only two descriptors are registered"),
            }
        }
        Ok(true)
    }

    /// Runs until weft has stopped (its shutdown finished).
    pub fn run(&mut self) -> io::Result<()> {
        while !self.reactor.is_stopped() {
            self.turn(None)?;
        }
        Ok(())
    }

    fn drive_weft(&mut self) -> io::Result<()> {
        // Level-triggered: anything left keeps the descriptor readable, so the next wait
        // returns at once. Edge-triggered: go on while weft says more is ready, a few
        // times (so the host's own sockets are not starved); what is still left then
        // gets a fresh edge from weft, so the next wait returns at once too.
        let rounds = if self.trigger == Trigger::Level { 1 } else { 16 };
        for _ in 0..rounds {
            self.stats.iterations += 1;
            if self.reactor.iterate(Some(Duration::ZERO))? != IterateStatus::Pending {
                break;
            }
        }
        Ok(())
    }

    /// The host's own server: greet each waiting client and close.
    fn greet_clients(&mut self) {
        while let Ok((mut client, _)) = self.listener.accept() {
            let _ = client.write_all(GREETING);
            self.stats.greeted += 1;
        }
    }
}

fn main() -> io::Result<()> {
    let (mut weft_port, mut host_port, mut trigger) = (47311u16, 47312u16, Trigger::Level);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut port = || args.next().and_then(|p| p.parse().ok()).expect("a port number");
        match a.as_str() {
            "--edge" => trigger = Trigger::Edge,
            "--weft-port" => weft_port = port(),
            "--host-port" => host_port = port(),
            other => panic!(
                "unknown argument {other}; usage: embed_epoll [--edge] [--weft-port P] [--host-port P]"
            ),
        }
    }
    let reactor = Reactor::new()?;
    reactor.stop_on_signals()?;
    let echo = serve_echo(&reactor, SocketAddr::from(([127, 0, 0, 1], weft_port)))?;
    let mut host = Host::new(&reactor, SocketAddr::from(([127, 0, 0, 1], host_port)), trigger)?;
    println!(
        "weft echo on {:?}, the host's own server on {} ({trigger:?}-triggered); Ctrl-C stops",
        echo.local_addr(),
        host.local_addr()?
    );
    host.run()?;
    println!("stopped cleanly: {:?}", host.stats);
    Ok(())
}
