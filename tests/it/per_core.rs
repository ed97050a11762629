//! A reactor per core (`ReactorGroup`, `Reactor::run_per_core`): several reactors on
//! their own threads share one port through `SO_REUSEPORT`, and stop together, each
//! closing its connections.

use std::io::{self, Read};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use weft::reactor::{Address, ListenOptions, Phase, Protocol, ReactorGroup, ReactorGroupError, Transport};
use weft::{Failure, Reactor};

use crate::support::secs;

/// What the reactors saw, per reactor index, shared with the test thread.
#[derive(Default)]
struct Seen {
    made: Vec<usize>,
    lost: Vec<usize>,
    shut_down: Vec<usize>,
    port: Option<u16>,
}

#[derive(Default)]
struct Shared {
    seen: Mutex<Seen>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Seen)) {
        f(&mut self.seen.lock().unwrap());
        self.changed.notify_all();
    }

    /// Waits (at most `limit`) until `done` holds.
    #[track_caller]
    fn wait_until(&self, limit: Duration, done: impl Fn(&Seen) -> bool) {
        let deadline = Instant::now() + limit;
        let mut seen = self.seen.lock().unwrap();
        while !done(&seen) {
            let left = deadline.checked_duration_since(Instant::now()).expect("timed out waiting");
            seen = self.changed.wait_timeout(seen, left).unwrap().0;
        }
    }
}

/// Records its connection's life under its reactor's index.
struct Counted {
    index: usize,
    shared: Arc<Shared>,
}

impl Protocol for Counted {
    fn connection_made(&mut self, _t: Transport) {
        self.shared.update(|s| s.made[self.index] += 1);
    }

    fn data_received(&mut self, _data: &[u8]) {}

    fn connection_lost(&mut self, _reason: Failure) {
        self.shared.update(|s| s.lost[self.index] += 1);
    }
}

/// Reactor 0 listens on a fresh port, the others on the same one, all with
/// `reuse_port`; each records its shutdown.
fn listen_all(shared: &Arc<Shared>, n: usize) -> impl Fn(&Reactor, usize) -> io::Result<()> + Send + Sync {
    shared.update(|s| {
        s.made = vec![0; n];
        s.lost = vec![0; n];
    });
    let shared = shared.clone();
    move |reactor: &Reactor, index: usize| {
        let port = shared.seen.lock().unwrap().port.unwrap_or(0);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let s = shared.clone();
        let listening = reactor.listen_tcp(
            addr,
            move |_: &Address| Counted { index, shared: s.clone() },
            ListenOptions::new().reuse_port(true),
        )?;
        let s = shared.clone();
        reactor.add_shutdown_trigger(Phase::After, move || s.update(|s| s.shut_down.push(index)));
        shared.update(|s| s.port = listening.port());
        Ok(())
    }
}

/// Runs `f` on a thread and fails the test if it has not returned within `limit`.
#[track_caller]
fn within<R: Send + 'static>(limit: Duration, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).expect("did not finish in time")
}

/// Two reactors accept connections on one port (the kernel shares them out), and a stop
/// from the main thread stops both: each runs its shutdown phases and every connection,
/// on either reactor, gets `connection_lost`; the clients see the end of the stream.
#[test]
fn two_reactors_share_a_port_and_stop_together_closing_every_connection() {
    let shared = Arc::new(Shared::default());
    let group = ReactorGroup::start(2, listen_all(&shared, 2)).unwrap();
    assert_eq!(group.len(), 2);
    let port = shared.seen.lock().unwrap().port.unwrap();
    let mut clients = Vec::new();
    // Connect until both reactors have accepted some (each new connection goes to
    // either with even odds: 64 all landing on one has odds of 2^-63).
    while clients.len() < 64 {
        clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        let n = clients.len();
        shared.wait_until(secs(10), |s| s.made.iter().sum::<usize>() == n);
        if shared.seen.lock().unwrap().made.iter().all(|&m| m > 0) {
            break;
        }
    }
    let made = shared.seen.lock().unwrap().made.clone();
    assert!(made.iter().all(|&m| m > 0), "both reactors accepted: {made:?}");
    group.stop();
    within(secs(30), move || group.join()).unwrap();
    let seen = shared.seen.lock().unwrap();
    assert_eq!(seen.lost, seen.made, "every connection was told");
    let mut shut_down = seen.shut_down.clone();
    shut_down.sort_unstable();
    assert_eq!(shut_down, [0, 1], "each reactor ran its shutdown phases");
    for mut c in clients {
        c.set_read_timeout(Some(secs(10))).unwrap();
        assert_eq!(c.read(&mut [0u8; 16]).unwrap(), 0, "the server closed the connection");
    }
}

/// A stop of one reactor, from inside it, stops the others.
#[test]
fn a_stop_inside_one_reactor_stops_the_group() {
    let shared = Arc::new(Shared::default());
    let listen = listen_all(&shared, 3);
    let group = ReactorGroup::start(3, move |reactor, index| {
        listen(reactor, index)?;
        if index == 2 {
            let h = reactor.handle();
            reactor.call_later(Duration::from_millis(1), move || h.stop());
        }
        Ok(())
    })
    .unwrap();
    within(secs(30), move || group.join()).unwrap();
    assert_eq!(shared.seen.lock().unwrap().shut_down.len(), 3);
}

/// A setup that fails or panics is reported with its reactor's index, and the reactors
/// started before it are stopped (and their threads joined) first.
#[test]
fn a_failed_or_panicking_setup_is_reported_and_the_started_reactors_stop() {
    let shared = Arc::new(Shared::default());
    let listen = listen_all(&shared, 3);
    let err = within(secs(30), move || {
        ReactorGroup::start(3, move |reactor, index| {
            listen(reactor, index)?;
            if index == 1 {
                return Err(io::Error::other("no database"));
            }
            Ok(())
        })
        .unwrap_err()
    });
    assert!(
        matches!(&err, ReactorGroupError::Setup { index: 1, error } if error.to_string() == "no database")
    );
    assert_eq!(err.to_string(), "reactor 1: setup failed: no database");
    assert_eq!(shared.seen.lock().unwrap().shut_down, [0], "reactor 0 was stopped gracefully");

    let err = within(secs(30), || {
        ReactorGroup::start(2, |_, index| if index == 1 { panic!("setup {index} blew up") } else { Ok(()) })
            .unwrap_err()
    });
    assert!(
        matches!(&err, ReactorGroupError::Panicked { index: 1, message } if message == "setup 1 blew up")
    );
}

/// `run_per_core` stops every reactor on SIGTERM, gracefully, and returns.
#[test]
fn run_per_core_stops_every_reactor_on_sigterm() {
    let _signals = crate::support::signals_lock();
    let shared = Arc::new(Shared::default());
    let listen = listen_all(&shared, 2);
    let s = shared.clone();
    let running = std::thread::spawn(move || {
        Reactor::run_per_core(2, move |reactor, index| {
            listen(reactor, index)?;
            let s = s.clone();
            reactor.call_when_running(move || s.update(|s| s.made[index] += 1000));
            Ok(())
        })
    });
    shared.wait_until(secs(10), |s| s.made.iter().all(|&m| m >= 1000));
    signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
    within(secs(30), move || running.join().unwrap()).unwrap();
    assert_eq!(shared.seen.lock().unwrap().shut_down.len(), 2);
}
