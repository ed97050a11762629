//! The HTTP server against real clients: curl, ureq and raw sockets on 127.0.0.1 —
//! routing, keep-alive, pipelining, request and response bodies, the access log.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::rc::Rc;

use weft::reactor::{defer_later, PushProducer};
use weft::web::{BodyWriter, Request, Response, Router, ServerConfig, Site};
use weft::{Deferred, Reactor};

use crate::support::{logs, ms, secs, with_http_server};

/// Sends `raw` on a fresh connection and reads until the server closes it or `responses`
/// complete responses (by Content-Length) have arrived.
pub(crate) fn exchange(addr: SocketAddr, raw: &[u8], responses: usize) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(raw).unwrap();
    read_responses(&mut s, responses)
}

/// Reads until `n` complete responses have arrived or the connection closes.
pub(crate) fn read_responses(s: &mut TcpStream, n: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    while count_responses(&got) < n {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("read failed after {:?}: {e}", String::from_utf8_lossy(&got)),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// How many complete Content-Length-framed responses `data` holds.
fn count_responses(data: &[u8]) -> usize {
    let text = String::from_utf8_lossy(data);
    let mut rest: &str = &text;
    let mut n = 0;
    while let Some(end) = rest.find("\r\n\r\n") {
        let head = &rest[..end];
        let len = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0);
        if rest.len() < end + 4 + len {
            break;
        }
        rest = &rest[end + 4 + len..];
        n += 1;
    }
    n
}

/// The status codes of the responses in `text`, in order.
pub(crate) fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ").filter_map(|(i, _)| text[i + 9..i + 12].parse().ok()).collect()
}

fn hello_router() -> Router {
    Router::new()
        .get("/hello", |_req: Request| {
            Response::new(200).header("Content-Type", "text/plain").body("hello, world\n")
        })
        .post("/echo", |req: Request| Response::new(200).body(req.body().to_vec()))
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl runs");
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn curl_gets_hello_and_reuses_the_connection() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, hello_router());
    let (out, err) = with_http_server(&reactor, &site, secs(20), |addr| {
        let url = format!("http://{addr}/hello");
        curl(&["-v", &url, &url])
    });
    assert_eq!(out, "hello, world\nhello, world\n");
    assert!(err.contains("< HTTP/1.1 200 OK"), "{err}");
    assert!(err.to_ascii_lowercase().contains("< content-length: 13"), "{err}");
    assert!(err.to_ascii_lowercase().contains("< date: "), "{err}");
    assert!(err.contains("Re-using existing connection") || err.contains("Reusing existing"), "{err}");
}

#[test]
fn ureq_posts_a_body_and_gets_it_back() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, hello_router());
    let body = with_http_server(&reactor, &site, secs(20), |addr| {
        let agent = ureq::Agent::new_with_defaults();
        let mut r = agent.post(&format!("http://{addr}/echo")).send("a body for the echo").unwrap();
        assert_eq!(r.status(), 200);
        let first = r.body_mut().read_to_string().unwrap();
        let mut r = agent.get(&format!("http://{addr}/hello")).call().unwrap();
        (first, r.body_mut().read_to_string().unwrap())
    });
    assert_eq!(body, ("a body for the echo".to_string(), "hello, world\n".to_string()));
}

#[test]
fn a_chunked_request_body_is_reassembled_and_trailers_are_ignored() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, hello_router());
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        exchange(
            addr,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: yes\r\n\r\n",
            1,
        )
    });
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\nhello, world"), "{text}");
}

#[test]
fn pipelined_requests_are_answered_in_order_even_when_an_early_one_is_slow() {
    let reactor = Reactor::new().unwrap();
    let time = reactor.handle();
    let started = Rc::new(RefCell::new(Vec::new()));
    let s = started.clone();
    let router = hello_router().get("/slow/{n}", move |req: Request| {
        let n: u64 = req.param("n").unwrap().parse().unwrap();
        s.borrow_mut().push(n);
        defer_later(&time, ms(n), move || Response::new(200).body(format!("slow {n}")))
    });
    let site = Site::new(&reactor, router);
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        exchange(
            addr,
            b"GET /slow/30 HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /slow/1 HTTP/1.1\r\nHost: x\r\n\r\nGET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
            4,
        )
    });
    assert_eq!(statuses(&text), [200, 200, 200, 404], "{text}");
    let bodies: Vec<&str> =
        text.split("\r\n\r\n").skip(1).map(|b| b.split("HTTP/1.1").next().unwrap()).collect();
    assert_eq!(bodies[..3], ["slow 30", "hello, world\n", "slow 1"], "{text}");
    assert_eq!(*started.borrow(), [30, 1], "requests on a connection run one at a time");
}

#[test]
fn head_gets_the_get_headers_without_a_body() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, hello_router());
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        exchange(addr, b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 9)
    });
    let second = text[1..].find("HTTP/1.1 200 OK").unwrap() + 1;
    let (head, get) = text.split_at(second);
    assert!(head.contains("Content-Length: 13\r\n"), "{text}");
    assert!(head.ends_with("\r\n\r\n"), "HEAD has no body: {text}");
    assert!(get.ends_with("hello, world\n"), "{text}");
    assert!(get.contains("Connection: close\r\n"), "{text}");
}

#[test]
fn a_known_path_with_another_method_is_405_with_allow() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, hello_router());
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        exchange(addr, b"DELETE /hello HTTP/1.1\r\nHost: x\r\n\r\nBREW /hello HTTP/1.1\r\nHost: x\r\n\r\n", 2)
    });
    assert_eq!(statuses(&text), [405, 501], "{text}");
    assert!(text.contains("Allow: GET, HEAD\r\n"), "{text}");
}

#[test]
fn http_1_0_gets_keep_alive_only_when_it_asks() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, hello_router());
    let (kept, closed) = with_http_server(&reactor, &site, secs(20), |addr| {
        let kept = exchange(
            addr,
            b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /hello HTTP/1.0\r\n\r\n",
            3,
        );
        let closed = exchange(addr, b"GET /hello HTTP/1.0\r\n\r\nGET /hello HTTP/1.0\r\n\r\n", 3);
        (kept, closed)
    });
    assert_eq!(statuses(&kept), [200, 200], "{kept:?} {closed:?}");
    assert!(kept.contains("Connection: keep-alive\r\n"), "{kept}");
    assert_eq!(
        statuses(&closed),
        [200],
        "the server closes after an HTTP/1.0 request without keep-alive: {closed}"
    );
    assert!(closed.contains("Connection: close\r\n"), "{closed}");
}

/// Streams `total` bytes in `chunk`-sized writes, only while the transport wants more.
struct Streamer {
    writer: BodyWriter,
    left: Cell<usize>,
    chunk: usize,
    paused: Cell<bool>,
    pauses: Rc<Cell<u32>>,
    on_pause: std::sync::mpsc::Sender<()>,
}

impl Streamer {
    fn produce(&self) {
        while !self.paused.get() && self.left.get() > 0 && !self.writer.is_closed() {
            let n = self.chunk.min(self.left.get());
            let byte = b'a' + (self.left.get() / self.chunk % 26) as u8;
            self.writer.write(&vec![byte; n]);
            self.left.set(self.left.get() - n);
        }
        if self.left.get() == 0 {
            self.writer.unregister_producer();
            self.writer.finish();
        }
    }
}

impl PushProducer for Streamer {
    fn pause_producing(&self) {
        self.paused.set(true);
        self.pauses.set(self.pauses.get() + 1);
        let _ = self.on_pause.send(());
    }
    fn resume_producing(&self) {
        self.paused.set(false);
        self.produce();
    }
}

#[test]
fn a_streamed_body_is_chunked_and_paused_while_the_client_does_not_read() {
    let reactor = Reactor::new().unwrap();
    let pauses = Rc::new(Cell::new(0));
    let (paused_tx, paused_rx) = std::sync::mpsc::channel::<()>();
    let p = pauses.clone();
    const TOTAL: usize = 24 << 20;
    let router = Router::new().get("/big", move |_req: Request| {
        let (p, tx) = (p.clone(), paused_tx.clone());
        Response::stream(200, move |writer: BodyWriter| {
            let s = Rc::new(Streamer {
                writer: writer.clone(),
                left: Cell::new(TOTAL),
                chunk: 16 * 1024,
                paused: Cell::new(false),
                pauses: p,
                on_pause: tx,
            });
            writer.register_producer(s.clone());
            s.produce();
        })
    });
    let site = Site::new(&reactor, router);
    let raw = with_http_server(&reactor, &site, secs(30), move |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        // Read nothing until the server has had to pause the producer.
        paused_rx.recv_timeout(secs(10)).expect("the producer was paused");
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        all
    });
    assert!(pauses.get() > 0, "the producer was never paused");
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]);
    assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
    // Un-chunk the body.
    let mut body = Vec::new();
    let mut rest = &raw[head_end..];
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap(), 16).unwrap();
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    assert_eq!(rest, b"\r\n");
    assert_eq!(body.len(), TOTAL);
    let expected = |i: usize| b'a' + ((TOTAL - i * 16384) / 16384 % 26) as u8;
    assert!(body.chunks(16 * 1024).enumerate().all(|(i, c)| c.iter().all(|&b| b == expected(i))));
}

#[test]
fn a_streamed_body_to_http_1_0_ends_with_the_connection() {
    let reactor = Reactor::new().unwrap();
    let router = Router::new().get("/s", |_req: Request| {
        Response::stream(200, |w: BodyWriter| {
            w.write(b"part one, ");
            w.write(b"part two");
            w.finish();
        })
    });
    let site = Site::new(&reactor, router);
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        exchange(addr, b"GET /s HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 9)
    });
    assert!(!text.contains("chunked"), "no chunked coding for HTTP/1.0: {text}");
    assert!(!text.to_ascii_lowercase().contains("content-length"), "{text}");
    assert!(text.contains("Connection: close\r\n") && text.ends_with("\r\n\r\npart one, part two"), "{text}");
}

#[test]
fn each_request_runs_in_its_own_context_and_is_logged_once() {
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let seen = Rc::new(RefCell::new(Vec::new()));
    let s = seen.clone();
    let time = reactor.handle();
    let router = Router::new().get("/ctx", move |req: Request| {
        let s = s.clone();
        s.borrow_mut().push(weft::logcontext::current_request_id().unwrap());
        let ctx = req.context().clone();
        ctx.add_database_transaction(ms(3));
        let d: Deferred<Response> = defer_later(&time, ms(1), move || {
            s.borrow_mut().push(weft::logcontext::current_request_id().unwrap());
            Response::new(200).body("ok")
        });
        d
    });
    let site = Site::new(&reactor, router);
    with_http_server(&reactor, &site, secs(20), |addr| {
        exchange(addr, b"GET /ctx HTTP/1.1\r\nHost: x\r\n\r\nGET /ctx?x=1 HTTP/1.1\r\nHost: x\r\n\r\n", 2)
    });
    let seen = seen.borrow();
    assert_eq!(seen.len(), 4);
    assert_eq!(seen[0], seen[1], "the callback runs in the request's context");
    assert_ne!(seen[0], seen[2]);
    assert!(seen[0].starts_with("GET-"), "{seen:?}");
    let access: Vec<String> = logs::records()
        .into_iter()
        .filter(|(_, m)| m.contains("Processed request"))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(access.len(), 2, "{access:?}");
    assert!(access[0].contains(&seen[0]), "the line is tagged with the request id: {access:?}");
    assert!(access[0].contains(" 2B 200 \"GET /ctx HTTP/1.1\""), "{access:?}");
    assert!(access[0].contains("/0.003sec/1)"), "database time and count: {access:?}");
    assert!(access[1].contains("\"GET /ctx?x=1 HTTP/1.1\""), "{access:?}");
    let late: Vec<_> = logs::records().into_iter().filter(|(_, m)| m.contains("after it finished")).collect();
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn a_panicking_handler_gets_500_and_the_connection_goes_on() {
    let reactor = Reactor::new().unwrap();
    let router = hello_router().get("/boom", |_req: Request| -> Response { panic!("boom") });
    let mut config = ServerConfig::default();
    config.access_log = false;
    let site = Site::with_config(&reactor, router, config);
    let (text, errors) = logs::errors_during(|| {
        with_http_server(&reactor, &site, secs(20), |addr| {
            exchange(addr, b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 2)
        })
    });
    assert_eq!(statuses(&text), [500, 200], "{text}");
    assert!(errors.iter().any(|e| e.contains("panicked: boom")), "{errors:?}");
}

#[test]
fn request_contexts_are_children_of_the_context_the_site_listens_in() {
    let reactor = Reactor::new().unwrap();
    let parent_name = Rc::new(RefCell::new(None));
    let p = parent_name.clone();
    let router = Router::new().get("/db", move |req: Request| {
        *p.borrow_mut() = req.context().parent().map(|c| c.name().to_string());
        req.context().add_database_transaction(ms(2));
        Response::new(200).body("ok")
    });
    let site = Site::new(&reactor, router);
    let server = weft::logcontext::LoggingContext::new("server");
    let text = {
        let _in_server = weft::logcontext::PreserveLoggingContext::new(server.clone());
        with_http_server(&reactor, &site, secs(20), |addr| {
            exchange(addr, b"GET /db HTTP/1.1\r\nHost: x\r\n\r\n", 1)
        })
    };
    assert_eq!(statuses(&text), [200]);
    assert_eq!(parent_name.borrow().as_deref(), Some("server"));
    assert_eq!(server.stats().db_txn_count, 1, "the finished request's totals reached its parent");
}
