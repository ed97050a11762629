//! Run: `cargo run --release --example echo_client -- --port 47303 --count 10000`
//!
//! Connects to an echo server on 127.0.0.1, sends a 64-byte message, waits for its
//! echo, and repeats `--count` times; prints the mean round trip.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use weft::reactor::{Address, Protocol, Reactor, Transport};
use weft::{Failure, ReactorHandle};

/// Sends one message at a time and counts the echoes.
struct PingPong {
    transport: Option<Transport>,
    reactor: ReactorHandle,
    left: u64,
    pending: usize,
    started: Instant,
    count: u64,
}

const MESSAGE: [u8; 64] = [b'x'; 64];

impl Protocol for PingPong {
    fn connection_made(&mut self, transport: Transport) {
        self.started = Instant::now();
        transport.write(&MESSAGE);
        self.pending = MESSAGE.len();
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        self.pending = self.pending.saturating_sub(data.len());
        if self.pending > 0 {
            return;
        }
        self.left -= 1;
        let t = self.transport.as_ref().expect("connected");
        if self.left == 0 {
            let took = self.started.elapsed();
            println!(
                "{} round trips in {:.3} s: {:.1} µs each",
                self.count,
                took.as_secs_f64(),
                took.as_secs_f64() * 1e6 / self.count as f64
            );
            t.lose_connection();
        } else {
            t.write(&MESSAGE);
            self.pending = MESSAGE.len();
        }
    }

    fn connection_lost(&mut self, reason: Failure) {
        if self.left > 0 {
            eprintln!("connection lost early: {reason}");
        }
        self.reactor.stop();
    }
}

fn main() -> std::io::Result<()> {
    let (mut port, mut count) = (47303u16, 10_000u64);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args.next();
        match a.as_str() {
            "--port" => port = v.and_then(|p| p.parse().ok()).expect("--port takes a number"),
            "--count" => count = v.and_then(|p| p.parse().ok()).expect("--count takes a number"),
            other => panic!("unknown argument {other}; usage: echo_client [--port PORT] [--count N]"),
        }
    }
    let reactor = Reactor::new()?;
    let h = reactor.handle();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let failed = Rc::new(RefCell::new(None));
    let f = failed.clone();
    let d = reactor.connect_tcp(
        addr,
        move |_: &Address| PingPong {
            transport: None,
            reactor: h.clone(),
            left: count.max(1),
            pending: 0,
            started: Instant::now(),
            count: count.max(1),
        },
        Duration::from_secs(5),
    );
    let h = reactor.handle();
    d.add_errback(move |e: Failure| -> Result<_, Failure> {
        *f.borrow_mut() = Some(e.to_string());
        h.stop();
        Err(e)
    });
    reactor.run();
    let _ = d.take_result();
    if let Some(e) = failed.borrow().as_ref() {
        eprintln!("connect failed: {e}");
        std::process::exit(1);
    }
    Ok(())
}
