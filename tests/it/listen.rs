//! Listening: adopting a socket the process already has (systemd socket activation, a
//! `std` listener, an `OwnedFd`), and `ListenOptions`. On 127.0.0.1 and in the temporary
//! directory; each test is bounded by a reactor timer.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixListener;
use std::rc::Rc;

use weft::reactor::{Address, ListenOptions, ListeningPort, Protocol, Reactor, Transport};
use weft::Failure;

use crate::support::{localhost, run_bounded, secs};

/// Echoes.
struct Echo(Option<Transport>);

impl Protocol for Echo {
    fn connection_made(&mut self, transport: Transport) {
        self.0 = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.0.as_ref().unwrap().write(data);
    }
}

/// Sends a greeting, stops the reactor with what came back once it is all there.
struct Greeter {
    got: Rc<RefCell<Vec<u8>>>,
    transport: Option<Transport>,
    stop: weft::ReactorHandle,
}

impl Protocol for Greeter {
    fn connection_made(&mut self, transport: Transport) {
        transport.write(b"hello, adopted");
        self.transport = Some(transport);
    }
    fn data_received(&mut self, data: &[u8]) {
        self.got.borrow_mut().extend_from_slice(data);
        if self.got.borrow().len() == 14 {
            self.transport.as_ref().unwrap().lose_connection();
        }
    }
    fn connection_lost(&mut self, _reason: Failure) {
        self.stop.stop();
    }
}

/// Talks to `port` through a weft client; returns what the echo sent back.
fn round_trip(reactor: &Reactor, port: &ListeningPort) -> Vec<u8> {
    let got = Rc::new(RefCell::new(Vec::new()));
    let (g, h) = (got.clone(), reactor.handle());
    let factory = move |_: &Address| Greeter { got: g.clone(), transport: None, stop: h.clone() };
    let _client = match port.local_addr() {
        Address::Tcp(addr) => reactor.connect_tcp(addr, factory, secs(5)),
        Address::Unix(Some(path)) => reactor.connect_unix(&path, factory, secs(5)),
        other => panic!("{other:?}"),
    };
    run_bounded(reactor, secs(10));
    let got = got.borrow().clone();
    got
}

/// A `std::net::TcpListener` the process made (or inherited) serves weft connections,
/// through `listen_tcp_from` and through `adopt_stream_port` given it as an `OwnedFd`.
/// TW test_socket.py AdoptStreamPortTests test_adoptStreamPort (served the same as a
/// port weft made).
#[test]
fn an_adopted_tcp_listener_serves_connections() {
    let reactor = Reactor::new().unwrap();
    let std_listener = TcpListener::bind(localhost()).unwrap();
    let port = reactor.listen_tcp_from(std_listener, |_: &Address| Echo(None)).unwrap();
    assert_eq!(round_trip(&reactor, &port), b"hello, adopted");
    port.stop_listening();

    let fd: OwnedFd = TcpListener::bind(localhost()).unwrap().into();
    let port = reactor.adopt_stream_port(fd, |_: &Address| Echo(None)).unwrap();
    assert_eq!(round_trip(&reactor, &port), b"hello, adopted");
}

/// A listening Unix socket is adopted the same way.
#[test]
fn an_adopted_unix_listener_serves_connections() {
    let dir = std::env::temp_dir().join(format!("weft-adopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("adopted.sock");
    let _ = std::fs::remove_file(&path);
    let reactor = Reactor::new().unwrap();
    let port =
        reactor.adopt_stream_port(UnixListener::bind(&path).unwrap(), |_: &Address| Echo(None)).unwrap();
    let got = round_trip(&reactor, &port);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(got, b"hello, adopted");
}

/// What cannot be served is refused with `InvalidInput` and a message saying why: a
/// datagram socket, a stream socket nobody called `listen` on; a descriptor that is not
/// a socket gets the OS's error.
#[test]
fn adopting_a_socket_that_cannot_serve_is_refused() {
    let reactor = Reactor::new().unwrap();
    let check = |fd: OwnedFd, kind: ErrorKind, says: &str| {
        let err = reactor.adopt_stream_port(fd, |_: &Address| Echo(None)).unwrap_err();
        assert_eq!(err.kind(), kind, "{err}");
        assert!(err.to_string().contains(says), "{err}");
    };
    check(UdpSocket::bind(localhost()).unwrap().into(), ErrorKind::InvalidInput, "not a stream socket");
    let unlistened = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    unlistened.bind(&localhost().into()).unwrap();
    check(unlistened.into(), ErrorKind::InvalidInput, "not listening");
    let file = std::fs::File::open("/dev/null").unwrap();
    let err = reactor.adopt_stream_port(file, |_: &Address| Echo(None)).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENOTSOCK), "{err}");
}

/// `ListenOptions` says what it asks for; `SO_REUSEPORT` lets two listeners share a port,
/// and the older `bool` form still compiles and means the same.
#[test]
fn listen_options_set_reuse_port_and_the_bool_form_still_works() {
    let a = Reactor::new().unwrap();
    let b = Reactor::new().unwrap();
    let options = ListenOptions::new().reuse_port(true).backlog(16);
    assert_eq!(options, ListenOptions::from(true).backlog(16));
    assert_eq!(ListenOptions::default(), ListenOptions::from(false));
    let first = a.listen_tcp(localhost(), |_: &Address| Echo(None), options).unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], first.port().unwrap()));
    let second = b.listen_tcp(addr, |_: &Address| Echo(None), true);
    let third = b.listen_tcp(addr, |_: &Address| Echo(None), ListenOptions::new());
    assert_eq!(third.err().map(|e| e.kind()), Some(ErrorKind::AddrInUse));
    // The kernel spreads connections over both; with the second gone, the first serves.
    second.expect("a second SO_REUSEPORT listener").stop_listening();
    assert_eq!(round_trip(&a, &first), b"hello, adopted");
}
