//! Datagram transports on 127.0.0.1.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use weft::reactor::{DatagramProtocol, Reactor, UdpTransport};

use crate::support::{localhost, run_bounded, secs};

struct UdpEcho {
    transport: Option<UdpTransport>,
}

impl DatagramProtocol for UdpEcho {
    fn start_protocol(&mut self, transport: UdpTransport) {
        self.transport = Some(transport);
    }
    fn datagram_received(&mut self, data: &[u8], from: SocketAddr) {
        self.transport.as_ref().unwrap().write(data, from).unwrap();
    }
}

struct UdpAsk {
    got: Rc<RefCell<Vec<Vec<u8>>>>,
    reactor: weft::ReactorHandle,
}

impl DatagramProtocol for UdpAsk {
    fn datagram_received(&mut self, data: &[u8], _from: SocketAddr) {
        self.got.borrow_mut().push(data.to_vec());
        if self.got.borrow().len() == 3 {
            self.reactor.stop();
        }
    }
}

#[test]
fn udp_datagrams_round_trip() {
    let reactor = Reactor::new().unwrap();
    let server = reactor.listen_udp(localhost(), UdpEcho { transport: None }).unwrap();
    let server_addr = server.get_host().unwrap();
    let got = Rc::new(RefCell::new(Vec::new()));
    let client =
        reactor.listen_udp(localhost(), UdpAsk { got: got.clone(), reactor: reactor.handle() }).unwrap();
    for m in [&b"one"[..], b"two", b"three"] {
        client.write(m, server_addr).unwrap();
    }
    run_bounded(&reactor, secs(5));
    let mut got = got.borrow().clone();
    got.sort();
    assert_eq!(got, [b"one".to_vec(), b"three".to_vec(), b"two".to_vec()]);
    server.stop_listening();
}
