//! Run: `cargo run --example futures_stream --features futures`
//!
//! `futures` combinators on weft: a TCP server reads each connection as a `Stream` of
//! byte chunks (`DataStream`, which pauses reading while the handler lags) and answers
//! in upper case; every chunk is also sent into a `DeferredQueue` through its `Sink`, and
//! an auditor task reads the queue as a `Stream`. A client on the same reactor sends
//! three messages and the program stops once all came back.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use weft::compat::futures::data_stream;
use weft::reactor::{Address, ListenOptions, Protocol, Transport};
use weft::{ensure_deferred, DeferredQueue, Reactor};

/// The demo client: sends its messages, collects the replies, stops the reactor.
struct Client {
    reactor: weft::ReactorHandle,
    replies: Rc<RefCell<Vec<u8>>>,
    expected: usize,
}

impl Protocol for Client {
    fn connection_made(&mut self, t: Transport) {
        for message in ["hello, ", "stream ", "world"] {
            t.write(message.as_bytes());
        }
    }

    fn data_received(&mut self, data: &[u8]) {
        self.replies.borrow_mut().extend_from_slice(data);
        if self.replies.borrow().len() == self.expected {
            println!("client got: {}", String::from_utf8_lossy(&self.replies.borrow()));
            self.reactor.stop();
        }
    }
}

fn main() {
    let reactor = Reactor::new().unwrap();
    let audit: DeferredQueue<usize> = DeferredQueue::bounded(16);

    // The auditor: the queue as a Stream.
    let mut sizes = audit.stream();
    let _auditor = ensure_deferred(async move {
        while let Some(n) = sizes.next().await {
            println!("auditor: a chunk of {n} bytes");
        }
        Ok(())
    });

    // The server: each connection as a Stream of chunks; the audit queue as a Sink.
    let port = reactor
        .listen_tcp(
            "127.0.0.1:0".parse().unwrap(),
            move |_: &Address| {
                let (protocol, mut chunks) = data_stream();
                let mut audit = audit.sink();
                let _handler = ensure_deferred(async move {
                    while let Some(chunk) = chunks.next().await {
                        let chunk = chunk?;
                        audit.send(chunk.len()).await.unwrap(); // waits while the queue is full
                        if let Some(t) = chunks.transport() {
                            t.write(&chunk.to_ascii_uppercase());
                        }
                    }
                    Ok(())
                });
                protocol
            },
            ListenOptions::default(),
        )
        .unwrap();
    let Address::Tcp(addr) = port.local_addr() else { unreachable!("a TCP port") };
    let (h, replies) = (reactor.handle(), Rc::new(RefCell::new(Vec::new())));
    let _client = reactor.connect_tcp(
        addr,
        move |_: &Address| Client { reactor: h.clone(), replies: replies.clone(), expected: 19 },
        Duration::from_secs(5),
    );
    let h = reactor.handle();
    reactor.call_later(Duration::from_secs(10), move || h.stop()); // a guard, should it hang
    reactor.run();
}
