//! The server probed as a strict client or proxy would (RFC 9110, RFC 9112), over raw
//! sockets: framing conflicts, Host rules, limits, `Expect`, request-target forms,
//! versions. Each probe runs on its own connection; a probe the server must survive is
//! followed by a pipelined `GET /hello` that must still be answered.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};

use weft::web::{Request, Response, Router, ServerConfig, Site};
use weft::Reactor;

use crate::support::{secs, with_http_server};
use crate::web_server::{read_responses, statuses};

fn router() -> Router {
    Router::new()
        .get("/hello", |_req: Request| Response::new(200).body("hello, world\n"))
        .post("/echo", |req: Request| Response::new(200).body(req.body().to_vec()))
        .get("/item/{id}", |req: Request| Response::new(200).body(req.param("id").unwrap().to_string()))
}

/// Probes: (request bytes, the status expected, whether the server must close after it).
pub(crate) type Probe = (&'static [u8], u16, bool);

pub(crate) const FOLLOW_UP: &[u8] = b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";

/// Sends each probe on its own connection and checks the status and whether the
/// connection closed after it; returns the responses for further checks.
#[track_caller]
fn check(probes: &'static [Probe]) -> Vec<String> {
    check_with(ServerConfig::default(), probes)
}

#[track_caller]
fn check_with(config: ServerConfig, probes: &'static [Probe]) -> Vec<String> {
    check_router(router(), config, probes)
}

/// As [`check_with`], serving `router`.
#[track_caller]
pub(crate) fn check_router(router: Router, config: ServerConfig, probes: &'static [Probe]) -> Vec<String> {
    let reactor = Reactor::new().unwrap();
    let site = Site::with_config(&reactor, router, config);
    let results = with_http_server(&reactor, &site, secs(30), move |addr| {
        probes.iter().map(|(raw, _, close)| probe(addr, raw, *close)).collect::<Vec<_>>()
    });
    for ((raw, status, close), text) in probes.iter().zip(&results) {
        let got = statuses(text);
        let shown = String::from_utf8_lossy(raw);
        if *close {
            assert_eq!(got, [*status], "probe {shown:?} got {text:?}");
        } else {
            assert_eq!(got, [*status, 200], "probe {shown:?} (then GET /hello) got {text:?}");
        }
        if *close && *status >= 400 {
            assert!(text.contains("Connection: close\r\n"), "probe {shown:?}: {text:?}");
        }
    }
    results
}

/// One probe: the request (plus a follow-up GET if the connection must survive), then
/// everything until the expected responses arrived or the server closed.
pub(crate) fn probe(addr: SocketAddr, raw: &[u8], close: bool) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(raw).unwrap();
    if close {
        // Read to the end: the server must close.
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => {
                    panic!("{e} waiting for the server to close after {:?}", String::from_utf8_lossy(raw))
                }
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    } else {
        s.write_all(FOLLOW_UP).unwrap();
        read_responses(&mut s, 2)
    }
}

#[test]
fn conflicting_or_faulty_framing_is_400_and_closes() {
    check(&[
        // RFC 9112 §6.1: Transfer-Encoding with Content-Length.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n", 400, true),
        // §6.3: differing Content-Lengths, as one list or as several lines.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello", 400, true),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400, true),
        // Not 1*DIGIT, or too big for any integer.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello", 400, true),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\nhello", 400, true),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400, true),
        // §6.3: a final coding that is not chunked; chunked twice; TE in HTTP/1.0.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 400, true),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400, true),
        (b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, true),
        // §6.1: a transfer coding we do not implement.
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501, true),
    ]);
}

#[test]
fn identical_content_lengths_are_accepted() {
    let results =
        check(&[(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello", 200, false)]);
    assert!(results[0].contains("\r\n\r\nhello"), "{results:?}");
}

#[test]
fn invalid_chunks_are_400_and_closes() {
    check(&[
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
            400,
            true,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n;ext\r\n\r\n", 400, true),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
            400,
            true,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
            400,
            true,
        ),
        (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", 400, true),
    ]);
}

#[test]
fn host_must_be_present_once_and_valid() {
    check(&[
        (b"GET /hello HTTP/1.1\r\n\r\n", 400, true),
        (b"GET /hello HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, true),
        (b"GET /hello HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, true),
        (b"GET /hello HTTP/1.1\r\nHost: a:8x\r\n\r\n", 400, true),
        (b"GET /hello HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", 200, false),
        (b"GET /hello HTTP/1.1\r\nHost: \r\n\r\n", 200, false),
        // HTTP/1.0 may omit it, but not repeat it.
        (b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200, false),
        (b"GET /hello HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n", 400, true),
    ]);
}

#[test]
fn malformed_heads_are_400_and_close() {
    check(&[
        (b"GARBAGE\r\n\r\n", 400, true),
        (b"GET /hello\r\nHost: x\r\n\r\n", 400, true),
        (b"GET  /hello HTTP/1.1\r\nHost: x\r\n\r\n", 400, true),
        // RFC 9112 §5.1: whitespace between the field name and the colon.
        (b"GET /hello HTTP/1.1\r\nHost : x\r\n\r\n", 400, true),
        // §5.2: obsolete line folding.
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n", 400, true),
        (b"GET /hello HTTP/1.1\r\n Host: x\r\n\r\n", 400, true),
        (b"GET hello HTTP/1.1\r\nHost: x\r\n\r\n", 400, true),
        (b"GET ftp://x/hello HTTP/1.1\r\nHost: x\r\n\r\n", 400, true),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400, true),
        (b"GET /item/%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400, false),
    ]);
}

#[test]
fn request_targets_in_absolute_and_asterisk_form() {
    let results = check(&[
        (b"GET http://example.org/hello HTTP/1.1\r\nHost: other\r\n\r\n", 200, false),
        (b"GET HTTPS://example.org/item/a%20b?q=1 HTTP/1.1\r\nHost: x\r\n\r\n", 200, false),
        (b"GET http://example.org HTTP/1.1\r\nHost: x\r\n\r\n", 404, false),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 200, false),
        // Empty lines before the request line are ignored (RFC 9112 §2.2).
        (b"\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n", 200, false),
    ]);
    assert!(results[1].contains("\r\n\r\na b"), "the path parameter is percent-decoded: {results:?}");
}

#[test]
fn versions_and_methods() {
    check(&[
        (b"GET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505, true),
        (b"get /hello HTTP/1.1\r\nHost: x\r\n\r\n", 501, false),
        (b"CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\n\r\n", 501, true),
        (b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 200, true),
    ]);
}

#[test]
fn limits_give_414_431_and_413() {
    let mut config = ServerConfig::default();
    config.max_request_line = 64;
    config.max_head_bytes = 1024;
    config.max_body = 16;
    check_with(
        config,
        &[
            (b"GET /hello/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: x\r\n\r\n", 414, true),
            // Too long before the line even ends.
            (b"GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 414, true),
            (LONG_HEADER, 431, true),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\n", 413, true),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n0123456789abcdef\r\n1\r\nx\r\n0\r\n\r\n", 413, true),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n0123456789abcdef", 200, false),
        ],
    );
}

const LONG_HEADER: &[u8] = concat!(
    "GET /hello HTTP/1.1\r\nHost: x\r\nX-Big: ",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
    "\r\n\r\n"
)
.as_bytes();

#[test]
fn too_many_header_fields_is_431() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        let mut raw = b"GET /hello HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..120 {
            raw.extend_from_slice(format!("X-{i}: {i}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        probe(addr, &raw, true)
    });
    assert_eq!(statuses(&text), [431], "{text}");
}

#[test]
fn expect_100_continue_is_answered_only_when_the_body_is_wanted() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let (wanted, unwanted, other) = with_http_server(&reactor, &site, secs(20), |addr| {
        // A route takes it: 100 Continue first, then the body is read.
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            .unwrap();
        let mut interim = [0u8; 25];
        s.read_exact(&mut interim).unwrap();
        s.write_all(b"hello").unwrap();
        let wanted = (String::from_utf8_lossy(&interim).into_owned(), read_responses(&mut s, 1));
        // No route: the final status at once, without 100, and the unread body ends the
        // connection.
        let unwanted = probe(
            addr,
            b"POST /nope HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            true,
        );
        let other = probe(
            addr,
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: magic\r\n\r\nhello",
            true,
        );
        (wanted, unwanted, other)
    });
    assert_eq!(wanted.0, "HTTP/1.1 100 Continue\r\n\r\n");
    assert!(wanted.1.starts_with("HTTP/1.1 200 OK\r\n") && wanted.1.ends_with("\r\n\r\nhello"), "{wanted:?}");
    assert_eq!(statuses(&unwanted), [404], "{unwanted}");
    assert!(!unwanted.contains("100 Continue"), "{unwanted}");
    assert_eq!(statuses(&other), [417], "{other}");
}

#[test]
fn a_bad_request_after_good_ones_loses_none_of_their_answers() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        probe(
            addr,
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok\
              GET /hello HTTP/1.1\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
            true,
        )
    });
    assert_eq!(statuses(&text), [200, 200, 400], "{text}");
    assert!(text.contains("\r\n\r\nok"), "{text}");
    assert!(text.contains("HTTP/1.1 request without a Host"), "the 400 says why: {text}");
}

#[test]
fn a_pipelined_expect_gets_its_100_after_the_responses_before_it() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let (before_body, after) = with_http_server(&reactor, &site, secs(20), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n\
              POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        // The 200, then the 100 Continue (counted as a response with no body).
        let first = read_responses(&mut s, 2);
        s.write_all(b"hello").unwrap();
        (first, read_responses(&mut s, 1))
    });
    assert!(before_body.starts_with("HTTP/1.1 200 OK\r\n"), "{before_body}");
    assert!(before_body.ends_with("hello, world\nHTTP/1.1 100 Continue\r\n\r\n"), "{before_body}");
    assert!(after.ends_with("\r\n\r\nhello"), "{after}");
}

#[test]
fn a_response_asking_to_close_closes_the_connection() {
    let reactor = Reactor::new().unwrap();
    let router =
        router().get("/bye", |_req: Request| Response::new(200).header("Connection", "close").body("bye"));
    let site = Site::new(&reactor, router);
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        probe(addr, b"GET /bye HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n", true)
    });
    assert_eq!(statuses(&text), [200], "the request after it is not answered: {text}");
    assert_eq!(text.matches("Connection: close\r\n").count(), 1, "one Connection field: {text}");
}

#[test]
fn closing_while_the_client_still_sends_does_not_cut_the_response() {
    // A client that keeps pipelining while a large response says Connection: close:
    // closing with its bytes unread would send a reset and drop the response's tail
    // still queued in the kernel; the server shuts its write side and drains instead.
    const BIG: usize = 8 << 20;
    let reactor = Reactor::new().unwrap();
    let router = router()
        .get("/big", |_req: Request| Response::new(200).header("Connection", "close").body(vec![b'x'; BIG]));
    let site = Site::new(&reactor, router);
    let (got, declared) = with_http_server(&reactor, &site, secs(30), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut w = s.try_clone().unwrap();
        let st = stop.clone();
        let writer = std::thread::spawn(move || {
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                if w.write_all(FOLLOW_UP).is_err() {
                    break;
                }
            }
        });
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut declared = None;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            if declared.is_none() {
                if let Some(end) = all.windows(4).position(|w| w == b"\r\n\r\n") {
                    declared = Some(end + 4 + BIG);
                }
            }
            if declared.is_some_and(|d| all.len() >= d) {
                break;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        drop(s);
        writer.join().unwrap();
        (all.len(), declared)
    });
    assert_eq!(Some(got), declared, "the whole response arrived");
}
