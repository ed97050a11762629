//! weft's echo server, shared by the embedding examples (each host serves it beside
//! its own server).

use std::io;
use std::net::SocketAddr;

use weft::reactor::{Address, ListeningPort, Protocol, Reactor, Transport};

/// Writes back whatever it receives.
pub struct Echo {
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

impl Echo {
    /// An echo protocol, for a factory: `|_: &Address| Echo::new()`.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Echo {
        Echo { transport: None }
    }
}

/// Starts weft's echo server on `addr`.
pub fn serve_echo(reactor: &Reactor, addr: SocketAddr) -> io::Result<ListeningPort> {
    reactor.listen_tcp(addr, |_: &Address| Echo::new(), false)
}
