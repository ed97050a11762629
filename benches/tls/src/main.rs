//! Run: `cargo run --release --manifest-path benches/tls/Cargo.toml -- [--rounds 11] [--mib 128] [--handshakes 2000] [--in-flight 8]`
//!
//! weft's TLS (`listen_tls`/`connect_tls`, rustls driven by the reactor) against
//! tokio-rustls on tokio's `current_thread` runtime, in the same run, both on one thread
//! with client and server in the same process, with the same rustls, crypto provider
//! (ring), certificate (ECDSA P-256) and work:
//!
//! - echo: `conns` connections (1, then 8), each sending 16 KiB messages one at a time
//!   and waiting for each echo, `--mib` MiB in all; MB/s of echoed payload (10^6 bytes).
//! - handshakes: full TLS 1.3 handshakes (no session tickets, no resumption), `--in-flight`
//!   connections at a time, each closed with close_notify once its handshake is done;
//!   handshakes per second (client and server both on the measured thread).
//!
//! Each round runs every scenario for weft, then for tokio; the table gives the median
//! over the rounds, and the machine's load before and after.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft::reactor::tls::rustls::{self, pki_types::ServerName};
use weft::reactor::tls::{TlsClientOptions, TlsServerOptions};
use weft::reactor::{Address, Protocol, Reactor, Transport};
use weft::{Failure, ReactorHandle};

const MESSAGE: usize = 16 * 1024;

/// The rustls configs both sides use.
#[derive(Clone)]
struct Tls {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
}

impl Tls {
    /// A self-signed ECDSA P-256 certificate for `localhost`; TLS 1.3 and 1.2 as rustls
    /// offers them (1.3 is chosen); no tickets and no resumption, so every handshake is
    /// a full one.
    fn new() -> Tls {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (made.cert.pem(), made.signing_key.serialize_pem());
        let server = TlsServerOptions::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let mut server = (**server.config()).clone();
        server.send_tls13_tickets = 0;
        server.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        let client =
            TlsClientOptions::new("localhost").unwrap().with_root_certificates_pem(cert.as_bytes()).unwrap();
        let mut client = (**client.config()).clone();
        client.resumption = rustls::client::Resumption::disabled();
        Tls { server: Arc::new(server), client: Arc::new(client) }
    }
}

// ---- weft ----

/// Echoes.
struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, t: Transport) {
        self.0 = Some(t);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.0.as_ref().unwrap().write(data);
    }
}

/// Sends `messages` messages one at a time, each after the previous one's echo, then
/// closes; the last one to finish stops the reactor.
struct Pinger {
    transport: Option<Transport>,
    message: Rc<Vec<u8>>,
    left: usize,
    got: usize,
    running: Rc<Cell<usize>>,
    reactor: ReactorHandle,
}

impl Protocol for Pinger {
    fn connection_made(&mut self, t: Transport) {
        t.write(&self.message);
        self.transport = Some(t);
    }

    fn data_received(&mut self, data: &[u8]) {
        self.got += data.len();
        while self.got >= MESSAGE {
            self.got -= MESSAGE;
            self.left -= 1;
            let t = self.transport.as_ref().unwrap();
            if self.left > 0 {
                t.write(&self.message);
            } else {
                t.lose_connection();
            }
        }
    }

    fn connection_lost(&mut self, reason: Failure) {
        assert_eq!(self.left, 0, "connection lost early: {reason}");
        self.transport = None;
        self.running.set(self.running.get() - 1);
        if self.running.get() == 0 {
            self.reactor.stop();
        }
    }
}

fn weft_echo(tls: &Tls, conns: usize, bytes: usize) -> Duration {
    let reactor = Reactor::new().unwrap();
    let server = TlsServerOptions::new(tls.server.clone());
    let port = reactor.listen_tls(localhost(), |_: &Address| Echo(None), &server, false).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let client = TlsClientOptions::with_config("localhost", tls.client.clone()).unwrap();
    let message = Rc::new(vec![0x5a; MESSAGE]);
    let running = Rc::new(Cell::new(conns));
    let start = Instant::now();
    for _ in 0..conns {
        let (message, running, reactor_handle) = (message.clone(), running.clone(), reactor.handle());
        let left = bytes / conns / MESSAGE;
        let _connected = reactor.connect_tls(
            addr,
            move |_: &Address| Pinger {
                transport: None,
                message: message.clone(),
                left,
                got: 0,
                running: running.clone(),
                reactor: reactor_handle.clone(),
            },
            &client,
            Duration::from_secs(10),
        );
    }
    reactor.run();
    start.elapsed()
}

/// Closes once its handshake is done; starts the next connection when it is closed,
/// until `left` reaches zero.
struct Shaker {
    state: Rc<Shaking>,
}

struct Shaking {
    reactor: ReactorHandle,
    addr: SocketAddr,
    client: TlsClientOptions,
    left: Cell<usize>,
    running: Cell<usize>,
}

impl Shaking {
    fn connect(self: &Rc<Self>) {
        self.left.set(self.left.get() - 1);
        self.running.set(self.running.get() + 1);
        let state = self.clone();
        let _connected = self.reactor.connect_tls(
            self.addr,
            move |_: &Address| Shaker { state: state.clone() },
            &self.client,
            Duration::from_secs(10),
        );
    }
}

impl Protocol for Shaker {
    fn connection_made(&mut self, t: Transport) {
        let done = t.when_handshake_done();
        done.add_callback(move |()| t.lose_connection());
    }

    fn data_received(&mut self, _data: &[u8]) {}

    fn connection_lost(&mut self, reason: Failure) {
        assert!(reason.is::<weft::reactor::ConnectionDone>(), "{reason}");
        let s = &self.state;
        s.running.set(s.running.get() - 1);
        if s.left.get() > 0 {
            s.connect();
        } else if s.running.get() == 0 {
            s.reactor.stop();
        }
    }
}

/// The server side of the handshake scenario: waits for the client's close.
struct Quiet;

impl Protocol for Quiet {
    fn data_received(&mut self, _data: &[u8]) {}
}

fn weft_handshakes(tls: &Tls, total: usize, in_flight: usize) -> Duration {
    let reactor = Reactor::new().unwrap();
    let server = TlsServerOptions::new(tls.server.clone());
    let port = reactor.listen_tls(localhost(), |_: &Address| Quiet, &server, false).unwrap();
    let state = Rc::new(Shaking {
        reactor: reactor.handle(),
        addr: SocketAddr::from(([127, 0, 0, 1], port.port().unwrap())),
        client: TlsClientOptions::with_config("localhost", tls.client.clone()).unwrap(),
        left: Cell::new(total),
        running: Cell::new(0),
    });
    let start = Instant::now();
    for _ in 0..in_flight.min(total) {
        state.connect();
    }
    reactor.run();
    start.elapsed()
}

// ---- tokio-rustls ----

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap()
}

/// A tokio-rustls server: `handle` runs on each accepted TLS stream.
async fn tokio_server<F, Fut>(tls: &Tls, handle: F) -> SocketAddr
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let listener = tokio::net::TcpListener::bind(localhost()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.server.clone());
    let handle = Rc::new(handle);
    tokio::task::spawn_local(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            sock.set_nodelay(true).unwrap();
            let (acceptor, handle) = (acceptor.clone(), handle.clone());
            tokio::task::spawn_local(async move {
                if let Ok(stream) = acceptor.accept(sock).await {
                    handle(stream).await;
                }
            });
        }
    });
    addr
}

async fn tokio_connect(
    tls: &Tls,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    sock.set_nodelay(true).unwrap();
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    connector.connect(ServerName::try_from("localhost").unwrap(), sock).await.unwrap()
}

fn tokio_echo(tls: &Tls, conns: usize, bytes: usize) -> Duration {
    let local = tokio::task::LocalSet::new();
    tokio_rt().block_on(local.run_until(async {
        let addr = tokio_server(tls, |mut stream| async move {
            let mut buf = vec![0; 64 * 1024];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => stream.write_all(&buf[..n]).await.unwrap(),
                }
            }
            let _ = stream.shutdown().await;
        })
        .await;
        let start = Instant::now();
        let clients: Vec<_> = (0..conns)
            .map(|_| {
                let tls = tls.clone();
                tokio::task::spawn_local(async move {
                    let mut stream = tokio_connect(&tls, addr).await;
                    let (message, mut back) = (vec![0x5a; MESSAGE], vec![0; MESSAGE]);
                    for _ in 0..bytes / conns / MESSAGE {
                        stream.write_all(&message).await.unwrap();
                        stream.read_exact(&mut back).await.unwrap();
                    }
                    stream.shutdown().await.unwrap();
                })
            })
            .collect();
        for c in clients {
            c.await.unwrap();
        }
        start.elapsed()
    }))
}

fn tokio_handshakes(tls: &Tls, total: usize, in_flight: usize) -> Duration {
    let local = tokio::task::LocalSet::new();
    tokio_rt().block_on(local.run_until(async {
        let addr = tokio_server(tls, |mut stream| async move {
            let mut buf = [0; 64];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        let left = Rc::new(Cell::new(total));
        let start = Instant::now();
        let workers: Vec<_> = (0..in_flight.min(total))
            .map(|_| {
                let (tls, left) = (tls.clone(), left.clone());
                tokio::task::spawn_local(async move {
                    while left.get() > 0 {
                        left.set(left.get() - 1);
                        let mut stream = tokio_connect(&tls, addr).await;
                        stream.shutdown().await.unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        start.elapsed()
    }))
}

// ---- the run ----

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn main() {
    let (mut rounds, mut mib, mut handshakes, mut in_flight) = (11usize, 128usize, 2000usize, 8usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value =
            || args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{a} takes a number"));
        match a.as_str() {
            "--rounds" => rounds = value(),
            "--mib" => mib = value(),
            "--handshakes" => handshakes = value(),
            "--in-flight" => in_flight = value(),
            other => panic!("unknown argument {other}"),
        }
    }
    let tls = Tls::new();
    let bytes = mib << 20;
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("machine: {cpu}, {cores} cores; load before: {}", load());
    println!("{rounds} rounds; echo: {mib} MiB in 16 KiB messages; handshakes: {handshakes}, {in_flight} in flight");

    type Scenario = (&'static str, &'static str, Box<dyn Fn(&Tls) -> f64>);
    let mb = bytes as f64 / 1e6;
    let scenarios: Vec<Scenario> = vec![
        ("echo, 1 connection", "MB/s", Box::new(move |t| mb / weft_echo(t, 1, bytes).as_secs_f64())),
        ("echo, 1 connection", "MB/s", Box::new(move |t| mb / tokio_echo(t, 1, bytes).as_secs_f64())),
        ("echo, 8 connections", "MB/s", Box::new(move |t| mb / weft_echo(t, 8, bytes).as_secs_f64())),
        ("echo, 8 connections", "MB/s", Box::new(move |t| mb / tokio_echo(t, 8, bytes).as_secs_f64())),
        (
            "full TLS 1.3 handshakes",
            "handshakes/s",
            Box::new(move |t| handshakes as f64 / weft_handshakes(t, handshakes, in_flight).as_secs_f64()),
        ),
        (
            "full TLS 1.3 handshakes",
            "handshakes/s",
            Box::new(move |t| handshakes as f64 / tokio_handshakes(t, handshakes, in_flight).as_secs_f64()),
        ),
    ];
    let results: Vec<RefCell<Vec<f64>>> = scenarios.iter().map(|_| RefCell::new(Vec::new())).collect();
    for round in 0..rounds {
        for (i, (_, _, run)) in scenarios.iter().enumerate() {
            results[i].borrow_mut().push(run(&tls));
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!();
    println!("| scenario | unit | weft (median) | tokio-rustls (median) | weft / tokio |");
    println!("|---|---|---:|---:|---:|");
    for pair in 0..scenarios.len() / 2 {
        let (name, unit, _) = &scenarios[2 * pair];
        let weft = median(results[2 * pair].borrow().clone());
        let tokio = median(results[2 * pair + 1].borrow().clone());
        println!("| {name} | {unit} | {weft:.0} | {tokio:.0} | {:.2} |", weft / tokio);
    }
    println!();
    println!("load after: {}", load());
}
