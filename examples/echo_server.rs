//! Run: `cargo run --release --example echo_server -- --port 47303`
//!
//! A TCP echo server on 127.0.0.1 under the peers' contract (`shared/peers/README.md`):
//! backlog 1024, `TCP_NODELAY` on every accepted socket, reads of up to 64 KiB written
//! straight back, runs until killed (SIGTERM).

use std::net::SocketAddr;

use weft::reactor::{Address, Protocol, Reactor, Transport};

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
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port takes a number"),
            other => panic!("unknown argument {other}; usage: echo_server [--port PORT]"),
        }
    }
    let reactor = Reactor::new()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    reactor.listen_tcp(addr, |_: &Address| Echo { transport: None }, false)?;
    eprintln!("echo server on {addr}");
    reactor.run();
    Ok(())
}
