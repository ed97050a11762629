//! Flow control on stream transports, on 127.0.0.1: a peer that sends and never reads
//! cannot make the server buffer without limit, and the limits are configurable per
//! listener and per transport. Each test is bounded by a reactor timer.

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::rc::Rc;

use weft::reactor::{Address, ListenOptions, LoopingCall, Protocol, Reactor, Transport};

use crate::support::{localhost, ms, run_bounded, secs};

/// The most one readiness event hands to `data_received` at once.
const READ_SIZE: usize = 64 * 1024;
/// The default high-water mark of a transport's write buffer.
const DEFAULT_HIGH: usize = 64 * 1024;
/// The client stops filling after this much, so that an unbounded server fails the
/// test quickly instead of eating the machine's memory.
const FILL_CAP: usize = 64 << 20;

/// Echoes, and shares its transport with the test.
struct Echo {
    transport: Rc<RefCell<Option<Transport>>>,
    limits: Option<(usize, usize)>,
}

impl Protocol for Echo {
    fn connection_made(&mut self, transport: Transport) {
        if let Some((high, low)) = self.limits {
            transport.set_write_buffer_limits(high, low).unwrap();
        }
        *self.transport.borrow_mut() = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.transport.borrow().as_ref().unwrap().write(data);
    }
}

/// Where the limits come from in a run.
#[derive(Clone, Copy, Debug)]
enum Limits {
    Default,
    Listener(usize, usize),
    Transport(usize, usize),
}

/// What the client saw.
#[derive(Default)]
struct Run {
    sent: usize,
    received: usize,
    max_buffered: usize,
    /// Consecutive ticks on which the client could not write a byte.
    blocked_ticks: u32,
    draining: bool,
    corrupt_at: Option<usize>,
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// Runs an echo server with `limits`, and a raw client that writes as long as the socket
/// takes it without reading, then reads everything back. Returns the client's record.
fn fill_then_drain(limits: Limits) -> Run {
    let reactor = Reactor::new().unwrap();
    let server = Rc::new(RefCell::new(None));
    let (s, per_transport) = (
        server.clone(),
        match limits {
            Limits::Transport(h, l) => Some((h, l)),
            _ => None,
        },
    );
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| Echo { transport: s.clone(), limits: per_transport },
            ListenOptions::new(),
        )
        .unwrap();
    if let Limits::Listener(high, low) = limits {
        port.set_write_buffer_limits(high, low).unwrap();
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let client = TcpStream::connect(addr).unwrap();
    client.set_nonblocking(true).unwrap();
    let run = Rc::new(RefCell::new(Run::default()));
    let (r, h) = (run.clone(), reactor.handle());
    let chunk: Vec<u8> = Vec::with_capacity(16 * 1024);
    let chunk = RefCell::new(chunk);
    let mut inbox = vec![0u8; 256 * 1024];
    let tick = LoopingCall::new(reactor.handle(), move || {
        let mut run = r.borrow_mut();
        if let Some(t) = server.borrow().as_ref() {
            run.max_buffered = run.max_buffered.max(t.buffered());
        }
        if !run.draining {
            // Fill: write until the socket refuses, never read.
            let mut wrote = false;
            loop {
                let mut c = chunk.borrow_mut();
                c.clear();
                c.extend((run.sent..run.sent + 16 * 1024).map(pattern));
                match (&client).write(&c) {
                    Ok(n) => {
                        run.sent += n;
                        wrote = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client write: {e}"),
                }
                if run.sent >= FILL_CAP {
                    break;
                }
            }
            run.blocked_ticks = if wrote { 0 } else { run.blocked_ticks + 1 };
            // The server stopped reading (the client's writes have been refused for a
            // while although the server turns between ticks), or it never will.
            if run.blocked_ticks >= 20 || run.sent >= FILL_CAP {
                run.draining = true;
            }
        } else {
            loop {
                match (&client).read(&mut inbox) {
                    Ok(0) => panic!("the server closed the connection"),
                    Ok(n) => {
                        for (i, b) in inbox[..n].iter().enumerate() {
                            if *b != pattern(run.received + i) && run.corrupt_at.is_none() {
                                run.corrupt_at = Some(run.received + i);
                            }
                        }
                        run.received += n;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
            if run.received == run.sent {
                h.stop();
            }
        }
    });
    let _ticking = tick.start(ms(1), false);
    run_bounded(&reactor, secs(60));
    let run = std::mem::take(&mut *run.borrow_mut());
    assert_eq!(run.corrupt_at, None, "{limits:?}: the echo differs at byte {:?}", run.corrupt_at);
    assert_eq!(run.received, run.sent, "{limits:?}: everything sent came back");
    run
}

/// A client that sends and never reads (200 of them grew `examples/echo_server.rs` to
/// 4 GB): past the high-water mark the echo server stops reading from that connection,
/// so its write buffer stays under the mark plus one read; once the client reads, the
/// server drains, reads again, and every byte comes back in order.
#[test]
fn an_echo_server_stops_reading_from_a_client_that_never_reads() {
    let run = fill_then_drain(Limits::Default);
    assert!(
        run.max_buffered <= DEFAULT_HIGH + READ_SIZE,
        "the server buffered {} bytes for a client that does not read",
        run.max_buffered
    );
    assert!(run.sent < FILL_CAP, "the server kept reading: the client sent {} bytes unhindered", run.sent);
}

/// The marks are set per listener (for every connection it accepts) and per transport: a
/// higher mark lets the buffer grow past the default, and no further.
#[test]
fn write_buffer_limits_are_set_per_listener_and_per_transport() {
    for limits in [Limits::Listener(1 << 20, 256 << 10), Limits::Transport(512 << 10, 64 << 10)] {
        let high = match limits {
            Limits::Listener(h, _) | Limits::Transport(h, _) => h,
            Limits::Default => unreachable!(),
        };
        let run = fill_then_drain(limits);
        assert!(
            run.max_buffered > DEFAULT_HIGH + READ_SIZE && run.max_buffered <= high + READ_SIZE,
            "{limits:?}: the server buffered at most {} bytes",
            run.max_buffered
        );
    }
}

/// Limits whose low-water mark is above the high-water mark are refused with a clear
/// error, and the transport keeps its limits.
#[test]
fn write_buffer_limits_with_low_above_high_are_refused() {
    let reactor = Reactor::new().unwrap();
    let seen = Rc::new(Cell::new(None));
    let (s, h) = (seen.clone(), reactor.handle());
    struct Check {
        seen: Rc<Cell<Option<bool>>>,
        stop: weft::ReactorHandle,
    }
    impl Protocol for Check {
        fn connection_made(&mut self, transport: Transport) {
            let before = transport.write_buffer_limits();
            let err = transport.set_write_buffer_limits(10, 20).unwrap_err();
            let ok = err.to_string() == "write buffer low-water mark 20 is above the high-water mark 10"
                && transport.write_buffer_limits() == before
                && before == (64 * 1024, 16 * 1024);
            self.seen.set(Some(ok));
            transport.lose_connection();
            self.stop.stop();
        }
        fn data_received(&mut self, _data: &[u8]) {}
    }
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| Check { seen: s.clone(), stop: h.clone() },
            ListenOptions::new(),
        )
        .unwrap();
    let err = port.set_write_buffer_limits(2, 1000).unwrap_err();
    assert_eq!(err.to_string(), "write buffer low-water mark 1000 is above the high-water mark 2");
    let _client = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()))).unwrap();
    run_bounded(&reactor, secs(10));
    assert_eq!(seen.get(), Some(true));
}
