//! Run: `cargo run --release --example echo_server -- --port 47303`
//!
//! A TCP echo server on 127.0.0.1 under the peers' contract (`shared/peers/README.md`):
//! backlog 1024, `TCP_NODELAY` on every accepted socket, reads of up to 64 KiB written
//! straight back, runs until killed (SIGTERM).
//!
//! Memory stays bounded with no extra code: a client that sends and never reads fills
//! its connection's write buffer to the high-water mark (64 KiB by default), and the
//! transport then stops reading from that client until it reads. `--high-water BYTES`
//! sets the mark for every connection (`ListeningPort::set_write_buffer_limits`).

use std::net::SocketAddr;

use weft::reactor::{Address, ListenOptions, Protocol, Reactor, Transport};

/// Writes back whatever it receives.
struct Echo {
    transport: Option<Transport>,
}

impl Protocol for Echo {
    fn connection_made(&mut self, transport: Transport) {
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        if let Some(t) = &self.transport {
            t.write(data);
        }
    }
}

fn main() -> std::io::Result<()> {
    let mut port = 47303u16;
    let mut high_water: Option<usize> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port takes a number"),
            "--high-water" => {
                high_water =
                    Some(args.next().and_then(|p| p.parse().ok()).expect("--high-water takes a number"))
            }
            other => {
                panic!("unknown argument {other}; usage: echo_server [--port PORT] [--high-water BYTES]")
            }
        }
    }
    let reactor = Reactor::new()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listening = reactor.listen_tcp(addr, |_: &Address| Echo { transport: None }, ListenOptions::new())?;
    if let Some(high) = high_water {
        // The low-water mark: resume reading once a quarter of the mark is left.
        listening.set_write_buffer_limits(high, high / 4).expect("low <= high");
    }
    eprintln!("echo server on {addr}");
    reactor.run();
    Ok(())
}
