//! Run: `cargo run --example tls_echo --features tls -- [--port 4433] [--cert cert.pem --key key.pem] [--once]`
//!
//! A TLS echo server on 127.0.0.1 (weft's `listen_tls` over rustls), offering ALPN
//! `echo/1`. Without `--cert`/`--key` it makes a self-signed certificate for `localhost`
//! and writes it to a temporary file, so that you can talk to it with
//!
//! ```text
//! openssl s_client -connect 127.0.0.1:4433 -CAfile <the printed path> -verify_hostname localhost -alpn echo/1
//! ```
//!
//! At start it checks itself with weft's own TLS client (`connect_tls`, verifying the
//! certificate and the name): it sends a line, prints the echo, the TLS version and the
//! protocol ALPN chose, and closes with close_notify. With `--once` it stops there;
//! otherwise it serves until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use weft::reactor::tls::{TlsClientOptions, TlsServerOptions};
use weft::reactor::{Address, Protocol, Reactor, Transport};
use weft::{Failure, ReactorHandle};

/// Writes back whatever it receives, and says how each connection ended.
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

    fn connection_lost(&mut self, reason: Failure) {
        self.transport = None;
        eprintln!("server: a connection ended: {reason}");
    }
}

/// The self-check: sends a line, prints the echo, closes; stops the reactor if `once`.
struct Check {
    transport: Option<Transport>,
    reactor: ReactorHandle,
    once: bool,
}

impl Protocol for Check {
    fn connection_made(&mut self, transport: Transport) {
        // Written before the handshake finished: sent as soon as it has.
        transport.write(b"hello over TLS\n");
        self.transport = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        let t = self.transport.as_ref().unwrap();
        let alpn = t.negotiated_protocol().map(|p| String::from_utf8_lossy(&p).into_owned());
        println!(
            "client: echo {:?} over {:?}, ALPN {alpn:?}",
            String::from_utf8_lossy(data),
            t.tls_version()
        );
        t.lose_connection();
    }

    fn connection_lost(&mut self, reason: Failure) {
        self.transport = None;
        println!("client: closed: {reason}");
        if self.once {
            self.reactor.stop();
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (mut port, mut cert, mut key, mut once) = (4433u16, None, None, false);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).ok_or("--port takes a number")?,
            "--cert" => cert = Some(std::fs::read(args.next().ok_or("--cert takes a PEM file")?)?),
            "--key" => key = Some(std::fs::read(args.next().ok_or("--key takes a PEM file")?)?),
            "--once" => once = true,
            other => return Err(format!("unknown argument {other}").into()),
        }
    }
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            let made = rcgen::generate_simple_self_signed(vec!["localhost".into()])?;
            let path = std::env::temp_dir().join(format!("weft-tls-echo-{}.pem", std::process::id()));
            std::fs::write(&path, made.cert.pem())?;
            eprintln!("a self-signed certificate for localhost is in {}", path.display());
            (made.cert.pem().into_bytes(), made.signing_key.serialize_pem().into_bytes())
        }
        _ => return Err("give both --cert and --key, or neither".into()),
    };

    let server_tls = TlsServerOptions::from_pem(&cert, &key)?.with_alpn(["echo/1"]);
    let reactor = Reactor::new()?;
    reactor.stop_on_signals()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listening = reactor.listen_tls(addr, |_: &Address| Echo { transport: None }, &server_tls, false)?;
    eprintln!("TLS echo server on 127.0.0.1:{}", listening.port().unwrap_or(port));

    // The self-check trusts the server's own certificate (as the CA) and checks the name.
    let client_tls =
        TlsClientOptions::new("localhost")?.with_root_certificates_pem(&cert)?.with_alpn(["echo/1"]);
    let target = SocketAddr::from(([127, 0, 0, 1], listening.port().unwrap_or(port)));
    let handle = reactor.handle();
    let checked = reactor.connect_tls(
        target,
        move |_: &Address| Check { transport: None, reactor: handle.clone(), once },
        &client_tls,
        Duration::from_secs(10),
    );
    checked.add_errback(|f: Failure| {
        eprintln!("client: the self-check failed: {f}");
        Err(f)
    });
    reactor.run();
    Ok(())
}
