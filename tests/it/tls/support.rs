//! What the TLS tests share: certificates made with `rcgen`, weft protocols that echo
//! and collect, drop counters, and child `openssl` processes killed by PID.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft::reactor::tls::rustls;
use weft::reactor::tls::{TlsClientOptions, TlsServerOptions};
use weft::reactor::{Protocol, Reactor, Transport};
use weft::Failure;

/// Turns `reactor` until `done()` holds, failing the test if `limit` passes first. Unlike
/// `run_until` it does not stop the reactor (a stop closes every connection), so a test
/// can go on with its connections in several steps.
#[track_caller]
pub(crate) fn turn_until(reactor: &Reactor, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "the condition did not hold within {limit:?}");
        reactor.iterate(Some(Duration::from_millis(10))).unwrap();
    }
}

/// A test CA and a server certificate it signed, valid for `localhost` and 127.0.0.1.
pub(crate) struct Certs {
    pub(crate) ca_pem: String,
    pub(crate) server_pem: String,
    pub(crate) key_pem: String,
}

impl Certs {
    pub(crate) fn new() -> Certs {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "weft test CA");
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, "localhost");
        let leaf = leaf.signed_by(&key, &ca).unwrap();
        Certs { ca_pem: ca.pem(), server_pem: leaf.pem(), key_pem: key.serialize_pem() }
    }

    pub(crate) fn server(&self) -> TlsServerOptions {
        TlsServerOptions::from_pem(self.server_pem.as_bytes(), self.key_pem.as_bytes()).unwrap()
    }

    /// A client that trusts this CA, for `name`.
    pub(crate) fn client(&self, name: &str) -> TlsClientOptions {
        TlsClientOptions::new(name).unwrap().with_root_certificates_pem(self.ca_pem.as_bytes()).unwrap()
    }

    /// A rustls client config trusting this CA (for a blocking rustls peer).
    pub(crate) fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        self.client("localhost").config().clone()
    }

    /// Writes the PEM files to a fresh directory (for `openssl`): `ca.pem`, `cert.pem`,
    /// `key.pem`.
    pub(crate) fn files(&self) -> TempDir {
        let dir = TempDir::new();
        for (name, pem) in
            [("ca.pem", &self.ca_pem), ("cert.pem", &self.server_pem), ("key.pem", &self.key_pem)]
        {
            std::fs::write(dir.path(name), pem).unwrap();
        }
        dir
    }
}

/// A directory removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("weft-tls-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.0.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a test's protocols report.
#[derive(Clone, Default)]
pub(crate) struct Seen {
    pub(crate) made: Rc<Cell<usize>>,
    pub(crate) data: Rc<RefCell<Vec<u8>>>,
    pub(crate) eof: Rc<Cell<bool>>,
    pub(crate) lost: Rc<RefCell<Vec<Failure>>>,
    /// Protocols dropped: equal to `made` once every connection is gone.
    pub(crate) dropped: Rc<Cell<usize>>,
    pub(crate) transport: Rc<RefCell<Option<Transport>>>,
}

impl Seen {
    pub(crate) fn lost_count(&self) -> usize {
        self.lost.borrow().len()
    }

    /// The one failure `connection_lost` got.
    #[track_caller]
    pub(crate) fn reason(&self) -> Failure {
        let lost = self.lost.borrow();
        assert_eq!(lost.len(), 1, "connection_lost ran {} times", lost.len());
        lost[0].clone()
    }

    pub(crate) fn transport(&self) -> Transport {
        let lost: Vec<String> = self.lost.borrow().iter().map(|f| f.to_string()).collect();
        self.transport.borrow().clone().unwrap_or_else(|| panic!("no transport: lost {lost:?}"))
    }
}

/// What a [`Peer`] does with what it reads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Writes it back.
    Echo,
    /// Keeps it in `Seen::data`.
    Collect,
}

/// A protocol that writes `greeting` when made (then closes if `close_after_greeting`),
/// echoes or collects, keeps the peer's half-close open if `half_open`, and reports to
/// `seen`. Counts its drop.
pub(crate) struct Peer {
    pub(crate) mode: Mode,
    pub(crate) greeting: Vec<u8>,
    pub(crate) close_after_greeting: bool,
    pub(crate) half_open: bool,
    pub(crate) seen: Seen,
    transport: Option<Transport>,
}

impl Peer {
    pub(crate) fn new(mode: Mode, seen: &Seen) -> Peer {
        Peer {
            mode,
            greeting: Vec::new(),
            close_after_greeting: false,
            half_open: false,
            seen: seen.clone(),
            transport: None,
        }
    }

    pub(crate) fn greeting(mut self, greeting: &[u8], then_close: bool) -> Peer {
        self.greeting = greeting.to_vec();
        self.close_after_greeting = then_close;
        self
    }
}

impl Protocol for Peer {
    fn connection_made(&mut self, t: Transport) {
        self.seen.made.set(self.seen.made.get() + 1);
        if !self.greeting.is_empty() {
            t.write(&self.greeting);
        }
        if self.close_after_greeting {
            t.lose_connection();
        }
        *self.seen.transport.borrow_mut() = Some(t.clone());
        self.transport = Some(t);
    }

    fn data_received(&mut self, data: &[u8]) {
        match self.mode {
            Mode::Echo => self.transport.as_ref().unwrap().write(data),
            Mode::Collect => self.seen.data.borrow_mut().extend_from_slice(data),
        }
    }

    fn read_connection_lost(&mut self) -> bool {
        self.seen.eof.set(true);
        self.half_open
    }

    fn connection_lost(&mut self, reason: Failure) {
        self.transport = None;
        self.seen.transport.borrow_mut().take();
        self.seen.lost.borrow_mut().push(reason);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.seen.dropped.set(self.seen.dropped.get() + 1);
    }
}

/// A deterministic byte pattern of `len` bytes, with a period (251) that no chunk size
/// here divides, so a lost, repeated or reordered chunk shows. Built by copying, so it
/// is cheap under valgrind too.
pub(crate) fn pattern(len: usize) -> Vec<u8> {
    let period: Vec<u8> = (0..=250).collect();
    let mut bytes = period.repeat(len / period.len() + 1);
    bytes.truncate(len);
    bytes
}

/// A child `openssl` process, killed (by its PID) and reaped on drop, with its output
/// read by a thread and sent line by line.
pub(crate) struct OpenSsl {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// The lines received so far, for `saw`.
    output: RefCell<Vec<String>>,
}

impl OpenSsl {
    /// Starts `openssl args...`; stdout and stderr both come through `lines`.
    pub(crate) fn spawn(args: &[&str]) -> OpenSsl {
        let mut child = Command::new("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("openssl is installed");
        let (tx, lines) = mpsc::channel();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for stream in [out, err] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stdin = child.stdin.take();
        OpenSsl { child, stdin, lines, output: RefCell::new(Vec::new()) }
    }

    /// True if a line printed so far contains `needle` (does not wait: turn the reactor
    /// meanwhile with `turn_until`).
    pub(crate) fn saw(&self, needle: &str) -> bool {
        let mut output = self.output.borrow_mut();
        output.extend(self.lines.try_iter());
        output.iter().any(|l| l.contains(needle))
    }

    /// Everything printed so far (for a failure message).
    pub(crate) fn output(&self) -> String {
        self.saw("");
        self.output.borrow().join("\n")
    }

    /// Waits (at most 20 s) for a line containing `needle`, returning it; the lines
    /// before it are dropped.
    #[track_caller]
    pub(crate) fn wait_for(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(e) => panic!("openssl never printed {needle:?}: {e}"),
            }
        }
    }

    /// Writes to its standard input.
    pub(crate) fn send(&mut self, data: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(data).unwrap();
        stdin.flush().unwrap();
    }

    /// Closes its standard input.
    pub(crate) fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The port an `s_server -accept 0` listens on, from its `ACCEPT` line.
    pub(crate) fn accept_port(&self) -> SocketAddr {
        let line = self.wait_for("ACCEPT");
        let port: u16 = line.rsplit(':').next().unwrap().trim().parse().unwrap();
        SocketAddr::from(([127, 0, 0, 1], port))
    }
}

impl Drop for OpenSsl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
