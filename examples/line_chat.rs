//! Run: `cargo run --example line_chat -- --port 47400`, then `nc 127.0.0.1 47400` in two terminals (`--demo` runs two clients in-process and exits).
//!
//! A chat server on `weft::protocols::LineReceiver`: the first line a client sends is its
//! name, every later line goes to everyone else as `name: line`. Lines longer than 512
//! bytes close the sender's connection with a `LineTooLongError`; a client that stops
//! reading is held back by its transport's bounded write buffer (the server stops
//! reading from it, it does not buffer without limit). SIGINT or SIGTERM stops the
//! server gracefully.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use weft::protocols::{LineProtocol, LineReceiver, LineSender, Lines};
use weft::reactor::{Address, ListenOptions, Reactor, ReactorHandle};
use weft::Failure;

/// Who is connected: a connection number to (name, sender).
type Room = Rc<RefCell<BTreeMap<u64, (String, LineSender)>>>;

/// One client of the chat.
struct Chatter {
    id: u64,
    name: Option<String>,
    room: Room,
}

impl Chatter {
    fn broadcast(&self, text: &str) {
        for (id, (_, sender)) in self.room.borrow().iter() {
            if *id != self.id {
                sender.send_line(text.as_bytes());
            }
        }
    }
}

impl LineProtocol for Chatter {
    fn connection_made(&mut self, lines: &mut Lines) {
        lines.send_line(b"welcome; your name?");
    }

    fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
        let text = String::from_utf8_lossy(line).trim().to_string();
        match &self.name {
            None if text.is_empty() => lines.send_line(b"a name, please?"),
            None => {
                self.broadcast(&format!("* {text} joined"));
                self.room.borrow_mut().insert(self.id, (text.clone(), lines.sender()));
                lines.send_line(format!("hello, {text}").as_bytes());
                self.name = Some(text);
            }
            Some(name) if text == "/quit" => {
                lines.send_line(format!("bye, {name}").as_bytes());
                lines.transport().lose_connection();
            }
            Some(name) => self.broadcast(&format!("{name}: {text}")),
        }
    }

    fn connection_lost(&mut self, reason: Failure) {
        self.room.borrow_mut().remove(&self.id);
        if let Some(name) = &self.name {
            self.broadcast(&format!("* {name} left ({})", reason.as_error()));
        }
    }
}

/// Starts the server on `addr`; returns the port it listens on.
fn serve(reactor: &Reactor, addr: SocketAddr) -> std::io::Result<u16> {
    let room: Room = Rc::default();
    let mut next_id = 0;
    let port = reactor.listen_tcp(
        addr,
        move |_: &Address| {
            next_id += 1;
            LineReceiver::new(Chatter { id: next_id, name: None, room: room.clone() }).with_max_length(512)
        },
        ListenOptions::new(),
    )?;
    Ok(port.port().expect("a TCP port"))
}

/// A scripted client for `--demo`: prints what it hears, and answers the n-th line it
/// hears with the n-th entry of `replies`.
struct Script {
    who: &'static str,
    replies: Vec<Vec<&'static str>>,
    heard: usize,
    stop_after: usize,
    reactor: ReactorHandle,
}

impl LineProtocol for Script {
    fn line_received(&mut self, line: &[u8], lines: &mut Lines) {
        println!("[{}] {}", self.who, String::from_utf8_lossy(line));
        for reply in self.replies.get(self.heard).into_iter().flatten() {
            lines.send_line(reply.as_bytes());
        }
        self.heard += 1;
        if self.heard == self.stop_after {
            self.reactor.stop();
        }
    }
}

fn demo(reactor: &Reactor, port: u16) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let h = reactor.handle();
    let _bob = reactor.connect_tcp(
        addr,
        move |_: &Address| {
            LineReceiver::new(Script {
                who: "bob",
                replies: vec![vec!["bob"]],
                heard: 0,
                stop_after: 5,
                reactor: h.clone(),
            })
        },
        Duration::from_secs(5),
    );
    // Alice arrives a little later, so that Bob sees her join and speak.
    let h = reactor.handle();
    reactor.call_later(Duration::from_millis(100), move || {
        let h2 = h.clone();
        let _alice = h.connect_tcp(
            addr,
            move |_: &Address| {
                let replies = vec![vec!["alice"], vec!["hi bob", "/quit"]];
                LineReceiver::new(Script {
                    who: "alice",
                    replies,
                    heard: 0,
                    stop_after: usize::MAX,
                    reactor: h2.clone(),
                })
            },
            Duration::from_secs(5),
        );
    });
    // Never hang: give up after 10 s.
    let h = reactor.handle();
    reactor.call_later(Duration::from_secs(10), move || h.stop());
}

fn main() -> std::io::Result<()> {
    let mut port = 47400u16;
    let mut run_demo = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port takes a number"),
            "--demo" => run_demo = true,
            other => panic!("unknown argument {other}; usage: line_chat [--port PORT] [--demo]"),
        }
    }
    let reactor = Reactor::new()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], if run_demo { 0 } else { port }));
    let port = serve(&reactor, addr)?;
    if run_demo {
        demo(&reactor, port);
    } else {
        reactor.stop_on_signals()?;
        eprintln!("chat on 127.0.0.1:{port}; try: nc 127.0.0.1 {port}");
    }
    reactor.run();
    Ok(())
}
