//! The framing protocols end to end on 127.0.0.1: a line server and client, a
//! length-prefixed server and client, each bounded by a reactor timer.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;

use weft::protocols::{
    IntNStringReceiver, LineProtocol, LineReceiver, LineTooLongError, Lines, Prefix, StringProtocol,
    StringSender,
};
use weft::reactor::{Address, ConnectionDone, ListenOptions, Reactor, ReactorHandle};
use weft::Failure;

use crate::support::{localhost, run_bounded, secs};

/// Answers each line in upper case; records how its connection ended.
struct Upper {
    lost: Rc<RefCell<Option<Failure>>>,
}

impl LineProtocol for Upper {
    fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
        lines.send_line(&line.to_ascii_uppercase());
    }
    fn connection_lost(&mut self, reason: Failure) {
        *self.lost.borrow_mut() = Some(reason);
    }
}

/// Sends two lines split across writes, then a line over the server's maximum;
/// collects the answers until the server closes.
struct Talker {
    answers: Rc<RefCell<Vec<Vec<u8>>>>,
    stop: ReactorHandle,
}

impl LineProtocol for Talker {
    fn connection_made(&mut self, lines: &mut Lines) {
        let t = lines.transport();
        for piece in [&b"hel"[..], b"lo\r\nwor", b"ld\r", b"\n"] {
            t.write(piece);
        }
        lines.send_line(&[b'x'; 200]);
    }
    fn line_received(&mut self, line: &[u8], _lines: &mut Lines) {
        self.answers.borrow_mut().push(line.to_vec());
    }
    fn connection_lost(&mut self, reason: Failure) {
        assert!(reason.check::<ConnectionDone>(), "{reason}");
        self.stop.stop();
    }
}

/// A line server answers the lines a client sent in pieces, then refuses a line over
/// its maximum: the error reaches the server's `connection_lost`, and the client sees
/// the answers, then the close.
#[test]
fn a_line_server_answers_lines_and_closes_on_a_line_too_long() {
    let reactor = Reactor::new().unwrap();
    let lost = Rc::new(RefCell::new(None));
    let l = lost.clone();
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| LineReceiver::new(Upper { lost: l.clone() }).with_max_length(100),
            ListenOptions::new(),
        )
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let answers = Rc::new(RefCell::new(Vec::new()));
    let (a, h) = (answers.clone(), reactor.handle());
    let _client = reactor.connect_tcp(
        addr,
        move |_: &Address| LineReceiver::new(Talker { answers: a.clone(), stop: h.clone() }),
        secs(5),
    );
    run_bounded(&reactor, secs(10));
    assert_eq!(*answers.borrow(), [b"HELLO", b"WORLD"]);
    let lost = lost.borrow();
    let reason = lost.as_ref().expect("the server connection closed");
    let error = reason.downcast_ref::<LineTooLongError>().expect("a LineTooLongError");
    assert_eq!(error.max_length, 100);
}

/// Answers each string with its length, as a 32-bit prefixed string.
struct Measure;

impl StringProtocol for Measure {
    fn string_received(&mut self, string: &[u8], strings: &StringSender) {
        strings.send_string(string.len().to_string().as_bytes()).unwrap();
    }
}

/// Sends strings of 0 to 200 KiB, checks each answer, closes after the last.
struct Ask {
    sizes: Vec<usize>,
    answers: Rc<RefCell<Vec<usize>>>,
    stop: ReactorHandle,
}

impl StringProtocol for Ask {
    fn connection_made(&mut self, strings: &StringSender) {
        for &n in &self.sizes {
            strings.send_string(&vec![b'z'; n]).unwrap();
        }
    }
    fn string_received(&mut self, string: &[u8], strings: &StringSender) {
        self.answers.borrow_mut().push(std::str::from_utf8(string).unwrap().parse().unwrap());
        if self.answers.borrow().len() == self.sizes.len() {
            strings.transport().lose_connection();
        }
    }
    fn connection_lost(&mut self, _reason: Failure) {
        self.stop.stop();
    }
}

/// 32-bit length-prefixed strings up to 200 KiB, coalesced and split by TCP, arrive
/// whole.
#[test]
fn int32_strings_cross_a_tcp_connection_whole() {
    let reactor = Reactor::new().unwrap();
    let port = reactor
        .listen_tcp(
            localhost(),
            |_: &Address| IntNStringReceiver::new(Prefix::Int32, Measure).with_max_length(1 << 20),
            ListenOptions::new(),
        )
        .unwrap();
    let addr = SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let sizes = vec![0, 1, 100, 65_536, 200 * 1024, 3];
    let answers = Rc::new(RefCell::new(Vec::new()));
    let (a, h, s) = (answers.clone(), reactor.handle(), sizes.clone());
    let _client = reactor.connect_tcp(
        addr,
        move |_: &Address| {
            IntNStringReceiver::new(
                Prefix::Int32,
                Ask { sizes: s.clone(), answers: a.clone(), stop: h.clone() },
            )
        },
        secs(5),
    );
    run_bounded(&reactor, secs(10));
    assert_eq!(*answers.borrow(), sizes);
}
