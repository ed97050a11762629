//! `weft::web::client` against weft's own server on the same reactor, and against a
//! canned server on another thread (close-delimited and chunked answers, 1xx).

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::rc::Rc;
use std::time::Instant;

use weft::future::cancellable;
use weft::web::client::{Client, InvalidUrlError};
use weft::web::{BodyWriter, Request, Response, Router, Site};
use weft::{Deferred, Failure, Reactor};

use crate::support::{localhost, run_bounded, secs};

/// Serves `router` on 127.0.0.1 and returns the base URL.
fn serve(reactor: &Reactor, router: Router) -> (Site, String) {
    let site = Site::new(reactor, router);
    let port = site.listen_tcp(localhost()).unwrap();
    (site, format!("http://127.0.0.1:{}", port.port().unwrap()))
}

/// Turns the reactor (without stopping it, so the site is not drained) until `d` has a
/// result, and returns it.
#[track_caller]
fn wait<T: 'static>(reactor: &Reactor, d: Deferred<T>) -> Result<T, Failure> {
    let out = Rc::new(RefCell::new(None));
    let o = out.clone();
    let _ = d.then(move |r: Result<T, Failure>| {
        *o.borrow_mut() = Some(r);
    });
    let deadline = Instant::now() + secs(20);
    while out.borrow().is_none() {
        assert!(Instant::now() < deadline, "the Deferred did not fire within 20 s");
        reactor.iterate(Some(secs(1))).unwrap();
    }
    let r = out.borrow_mut().take();
    r.expect("the Deferred fired")
}

#[test]
fn get_and_post_share_one_keep_alive_connection() {
    let reactor = Reactor::new().unwrap();
    let ports = Rc::new(RefCell::new(Vec::new()));
    let p = ports.clone();
    let router = Router::new()
        .get("/hello", move |req: Request| {
            p.borrow_mut().push(req.peer().clone());
            Response::new(200).body("hello")
        })
        .post("/echo", |req: Request| {
            let kind = req.header_str("content-type").unwrap_or("").to_string();
            Response::new(201).body(format!("{kind}: {}", String::from_utf8_lossy(req.body())))
        });
    let (_site, base) = serve(&reactor, router);
    let client = Client::new(&reactor);
    let first = wait(&reactor, client.get(&format!("{base}/hello"))).unwrap();
    assert_eq!((first.status(), first.body_bytes()), (200, &b"hello"[..]));
    assert_eq!(client.idle_connections(), 1);
    let posted = wait(&reactor, client.post(&format!("{base}/echo"), "text/plain", "abc")).unwrap();
    assert_eq!(posted.status(), 201);
    assert_eq!(posted.body_text(), Some("text/plain: abc"));
    let again = wait(&reactor, client.get(&format!("{base}/hello"))).unwrap();
    assert_eq!(again.status(), 200);
    let ports = ports.borrow();
    assert_eq!(ports.len(), 2);
    assert_eq!(ports[0], ports[1], "the second GET came over the same connection");
}

#[test]
fn a_chunked_answer_is_reassembled() {
    let reactor = Reactor::new().unwrap();
    let router = Router::new().get("/stream", |_req: Request| {
        Response::stream(200, |w: BodyWriter| {
            for part in ["one ", "two ", "three"] {
                w.write(part.as_bytes());
            }
            w.finish();
        })
    });
    let (_site, base) = serve(&reactor, router);
    let client = Client::new(&reactor);
    let r = wait(&reactor, client.get(&format!("{base}/stream"))).unwrap();
    assert_eq!(r.body_text(), Some("one two three"));
    assert_eq!(r.header_value("transfer-encoding"), Some(&b"chunked"[..]));
    assert_eq!(client.idle_connections(), 1, "a chunked answer leaves the connection reusable");
}

#[test]
fn cancelling_a_request_closes_its_connection_and_cancels_the_handler() {
    let reactor = Reactor::new().unwrap();
    let started = Rc::new(Cell::new(false));
    let cancelled = Rc::new(Cell::new(false));
    let (s, c) = (started.clone(), cancelled.clone());
    let h = reactor.handle();
    let router = Router::new().get(
        "/never",
        cancellable(move |_req: Request| {
            s.set(true);
            let (c, h) = (c.clone(), h.clone());
            Deferred::<Response>::with_canceller(move |_| {
                c.set(true);
                h.stop();
            })
        }),
    );
    let (site, base) = serve(&reactor, router);
    let client = Client::new(&reactor);
    let d = client.get(&format!("{base}/never"));
    // Cancel once the server has started the handler.
    let (d2, s, h) = (d.clone(), started.clone(), reactor.handle());
    fn cancel_when_started(d: Deferred<Response>, s: Rc<Cell<bool>>, h: weft::ReactorHandle) {
        if s.get() {
            d.cancel();
        } else {
            let h2 = h.clone();
            h.call_later(std::time::Duration::from_millis(1), move || cancel_when_started(d, s, h2));
        }
    }
    h.clone().call_soon(move || cancel_when_started(d2, s, h));
    run_bounded(&reactor, secs(20));
    assert!(cancelled.get(), "the server cancelled the handler when the client closed");
    assert!(d.take_result().unwrap().unwrap_err().check::<weft::CancelledError>());
    assert_eq!(client.idle_connections(), 0);
    assert_eq!(site.open_connections(), 0);
}

/// Accepts one connection on another thread, reads one request head, writes `answer`,
/// and closes.
fn canned(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                return;
            }
            got.extend_from_slice(&buf[..n]);
        }
        s.write_all(answer).unwrap();
    });
    addr
}

#[test]
fn close_delimited_chunked_with_trailers_and_interim_answers_are_read() {
    let reactor = Reactor::new().unwrap();
    let client = Client::new(&reactor);
    let cases: [(&'static [u8], u16, &str); 3] = [
        (b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end", 200, "until the end"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok", 202, "ok"),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n",
            200,
            "abc",
        ),
    ];
    for (answer, status, body) in cases {
        let addr = canned(answer);
        let r = wait(&reactor, client.get(&format!("http://{addr}/x"))).unwrap();
        assert_eq!((r.status(), r.body_text()), (status, Some(body)));
    }
    assert_eq!(client.idle_connections(), 0, "closing answers are not pooled");
}

#[test]
fn bad_urls_and_refused_connections_fail_clearly() {
    let reactor = Reactor::new().unwrap();
    let client = Client::new(&reactor);
    for url in ["https://127.0.0.1/", "ftp://x/", "http://", "http://a b/", "no scheme"] {
        let f = client.get(url).take_result().unwrap().unwrap_err();
        assert!(f.check::<InvalidUrlError>(), "{url}: {f}");
    }
    // A port nobody listens on (bound, then closed).
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let f = wait(&reactor, client.get(&format!("http://127.0.0.1:{port}/"))).unwrap_err();
    assert!(f.downcast_ref::<std::io::Error>().is_some(), "{f}");
}

#[test]
fn a_host_name_is_resolved_on_the_pool() {
    let reactor = Reactor::new().unwrap();
    let router = Router::new().get("/hello", |_req: Request| Response::new(200).body("hi"));
    let (_site, base) = serve(&reactor, router);
    let client = Client::new(&reactor);
    let url = base.replace("127.0.0.1", "localhost") + "/hello";
    let r = wait(&reactor, client.get(&url));
    // `localhost` may resolve to ::1 first on some machines, where nothing listens.
    match r {
        Ok(r) => assert_eq!(r.body_text(), Some("hi")),
        Err(f) => assert!(f.downcast_ref::<std::io::Error>().is_some(), "{f}"),
    }
}

#[test]
fn a_pooled_connection_the_server_dropped_is_replaced_and_the_get_retried() {
    // The server answers one request with keep-alive, then closes the connection when
    // the next request arrives, unanswered; a second connection answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let read_head = |s: &mut std::net::TcpStream| {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "the client closed");
                got.extend_from_slice(&buf[..n]);
            }
        };
        let (mut first, _) = listener.accept().unwrap();
        first.set_read_timeout(Some(secs(10))).unwrap();
        read_head(&mut first);
        first.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst").unwrap();
        read_head(&mut first);
        drop(first);
        let (mut second, _) = listener.accept().unwrap();
        second.set_read_timeout(Some(secs(10))).unwrap();
        read_head(&mut second);
        second.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond").unwrap();
    });
    let reactor = Reactor::new().unwrap();
    let client = Client::new(&reactor);
    let url = format!("http://{addr}/");
    assert_eq!(wait(&reactor, client.get(&url)).unwrap().body_text(), Some("first"));
    assert_eq!(client.idle_connections(), 1);
    assert_eq!(wait(&reactor, client.get(&url)).unwrap().body_text(), Some("second"));
    server.join().unwrap();
}
