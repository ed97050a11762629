//! More of the server probed as a strict client or proxy would (RFC 9110, RFC 9112),
//! over raw sockets on 127.0.0.1: what a status or `HEAD` keeps off the wire, the
//! request-target and version rules, framing edge cases, and the timeouts and
//! half-closes a proxy's connections meet. `web_rfc.rs` has the first set.

use std::cell::RefCell;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Instant;

use weft::future::cancellable;
use weft::web::{Method, Request, Response, Router, ServerConfig, Site};
use weft::{Deferred, Reactor, ReactorHandle};

use crate::support::{ms, secs, with_http_server};
use crate::web_rfc::{check_router, probe, Probe};
use crate::web_server::{exchange, read_responses, statuses};

fn router() -> Router {
    Router::new()
        .get("/hello", |_req: Request| Response::new(200).body("hello, world\n"))
        .get("/item/{id}", |req: Request| Response::new(200).body(req.param("id").unwrap().to_string()))
        .post("/echo", |req: Request| Response::new(200).body(req.body().to_vec()))
        .get("/host", |req: Request| {
            Response::new(200).body(format!("{}|{}", req.header_str("host").unwrap_or("-"), req.path()))
        })
        .post("/fields", |req: Request| {
            let mut text: String =
                req.headers().map(|(n, v)| format!("{n}={}\n", String::from_utf8_lossy(v))).collect();
            text.push_str(&String::from_utf8_lossy(req.body()));
            Response::new(200).body(text)
        })
        .get("/status/{code}", |req: Request| {
            Response::new(req.param("code").unwrap().parse().unwrap()).body("must not be sent")
        })
        // A handler that answers HEAD itself: no body, but the length GET would send.
        .get("/declared", |req: Request| {
            if *req.method() == Method::Head {
                Response::new(200).header("Content-Length", "42")
            } else {
                Response::new(200).body(vec![b'a'; 42])
            }
        })
        .get("/not-modified", |_req: Request| {
            Response::new(304)
                .header("Content-Length", "42")
                .header("ETag", "\"v1\"")
                .body("must not be sent")
        })
        .get("/stream", |_req: Request| {
            Response::stream(200, |w| {
                w.write(b"abc");
                w.finish();
            })
        })
}

/// `text` without its `Date` lines, and how many there were.
fn without_dates(text: &str) -> (String, usize) {
    let lines: Vec<&str> = text.split("\r\n").collect();
    let dates = lines.iter().filter(|l| l.starts_with("Date: ")).count();
    (lines.into_iter().filter(|l| !l.starts_with("Date: ")).collect::<Vec<_>>().join("\r\n"), dates)
}

/// RFC 9110 §6.4.1, §8.6, §9.3.2, §15.3.5-6, §15.4.5: no body on 204, 205, 304 or to
/// HEAD whatever the handler returned; no Content-Length on 204; `Content-Length: 0` on
/// 205; the length a GET (or a 200) would carry kept on HEAD and 304; a Date on each; and
/// the connection stays in step for the request after. Failed before: the 205 carried
/// the handler's body, and the declared lengths of HEAD and 304 were dropped.
#[test]
fn bodies_the_status_or_head_forbids_stay_off_the_wire() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(
            b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /status/205 HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /declared HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /not-modified HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /stream HTTP/1.1\r\nHost: x\r\n\r\n\
              HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n\
              GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        String::from_utf8_lossy(&all).into_owned()
    });
    let (text, dates) = without_dates(&text);
    assert_eq!(
        text,
        "HTTP/1.1 204 No Content\r\n\r\n\
         HTTP/1.1 205 Reset Content\r\nContent-Length: 0\r\n\r\n\
         HTTP/1.1 304 Not Modified\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n\
         HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\nETag: \"v1\"\r\n\r\n\
         HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 13\r\nConnection: close\r\n\r\nhello, world\n"
    );
    assert_eq!(dates, 8, "RFC 9110 §6.6.1: a Date on every final response");
}

/// A 1xx is interim: a handler answering with one would leave the client waiting for
/// the final response. Answered 500 (as hyper does), and the connection goes on.
/// Failed before: `HTTP/1.1 103` went out as the answer.
#[test]
fn an_interim_status_from_a_handler_is_answered_500() {
    check_router(
        router(),
        ServerConfig::default(),
        &[(b"GET /status/103 HTTP/1.1\r\nHost: x\r\n\r\n", 500, false)],
    );
}

/// RFC 9112 §3.2 (no form has a fragment; §3: an invalid request-line is 400), RFC 9110
/// §4.2.4 (userinfo in an http URI is an error), RFC 9110 §2.5 (a higher HTTP/1 minor
/// version is processed as 1.1; another major version is 505, also after empty lines).
/// Failed before: fragments and raw UTF-8 targets were routed (404 or 200), userinfo
/// accepted, HTTP/1.2 was 505, and a 2.0 request after an empty line was 400.
#[test]
fn request_target_and_version_rules() {
    check_router(
        router(),
        ServerConfig::default(),
        &[
            (b"GET /hello#top HTTP/1.1\r\nHost: x\r\n\r\n", 400, true),
            (b"GET /hello?q=1#top HTTP/1.1\r\nHost: x\r\n\r\n", 400, true),
            // RFC 3986 §2: a URI is ASCII; other bytes are sent percent-encoded.
            (b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400, true),
            (b"GET /item/caf%C3%A9 HTTP/1.1\r\nHost: x\r\n\r\n", 200, false),
            (b"GET http://user:pw@example.org/hello HTTP/1.1\r\nHost: example.org\r\n\r\n", 400, true),
            (b"GET http://exa mple.org/hello HTTP/1.1\r\nHost: x\r\n\r\n", 400, true),
            (b"GET /hello HTTP/1.2\r\nHost: x\r\n\r\n", 200, false),
            (b"GET /hello HTTP/1.9\r\nHost: x\r\n\r\n", 200, false),
            (b"\r\nGET /hello HTTP/1.2\r\nHost: x\r\n\r\n", 200, false),
            (b"\r\nGET /hello HTTP/2.0\r\nHost: x\r\n\r\n", 505, true),
            (b"GET /hello HTTP/3.0\r\nHost: x\r\n\r\n", 505, true),
            // The HTTP/2 connection preface sent to an HTTP/1.1 port.
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, true),
            (b"GET /hello HTTP/1.10\r\nHost: x\r\n\r\n", 400, true),
        ],
    );
}

/// A request of a higher minor version is handled as HTTP/1.1: keep-alive by default,
/// and the handler sees 1.1.
#[test]
fn an_http_1_2_request_is_handled_as_http_1_1() {
    let reactor = Reactor::new().unwrap();
    let router = Router::new().get("/v", |req: Request| Response::new(200).body(req.version().as_str()));
    let site = Site::new(&reactor, router);
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        exchange(addr, b"GET /v HTTP/1.2\r\nHost: x\r\n\r\nGET /v HTTP/1.1\r\nHost: x\r\n\r\n", 2)
    });
    assert_eq!(statuses(&text), [200, 200], "{text}");
    assert!(text.contains("\r\n\r\nHTTP/1.1HTTP/1.1 200"), "{text}");
}

/// RFC 9112 §3.2.2: with an absolute-form target the server MUST ignore the Host field
/// and use the target's authority. Failed before: the handler saw `Host: other`.
#[test]
fn absolute_form_takes_the_host_from_the_target() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let (absolute, without_host, origin) = with_http_server(&reactor, &site, secs(20), |addr| {
        (
            exchange(addr, b"GET http://example.org:8080/host?x HTTP/1.1\r\nHost: other\r\n\r\n", 1),
            exchange(addr, b"GET http://example.org/host HTTP/1.0\r\n\r\n", 1),
            exchange(addr, b"GET /host HTTP/1.1\r\nHost: other\r\n\r\n", 1),
        )
    });
    assert!(absolute.ends_with("\r\n\r\nexample.org:8080|/host"), "{absolute}");
    assert!(without_host.ends_with("\r\n\r\nexample.org|/host"), "{without_host}");
    assert!(origin.ends_with("\r\n\r\nother|/host"), "{origin}");
}

/// RFC 9112 §6.3 and §7.1: Content-Length is `1*DIGIT` (a list of identical values
/// aside; an empty element is refused, as hyper does), optional whitespace around it is
/// fine, a length or chunk size past 2^64 is 400, `chunked` must be the last coding.
/// Failed before: `Content-Length: 5,` was taken as 5.
#[test]
fn framing_edge_cases() {
    check_router(
        router(),
        ServerConfig::default(),
        &[
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5,\r\n\r\nhello", 400, true),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: ,5\r\n\r\nhello", 400, true),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n", 400, true),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: \t5 \r\n\r\nhello", 200, false),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 18446744073709551616\r\n\r\n", 400, true),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n", 400, true),
            (b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501, true),
            (
                b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000000\r\n",
                400,
                true,
            ),
            // RFC 9112 §2.2: a bare LF may end a line; a bare CR may not.
            (b"GET /hello HTTP/1.1\nHost: x\n\n", 200, false),
            (b"GET /hello HTTP/1.1\r\nHost: x\rX-A: 1\r\n\r\n", 400, true),
        ],
    );
}

/// RFC 9112 §7.1.1 and §7.1.2: chunk extensions are ignored; trailer fields are not
/// merged into the header section (a `Host` there changes nothing).
#[test]
fn chunk_extensions_are_ignored_and_trailers_never_become_header_fields() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        exchange(
            addr,
            b"POST /fields HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              3;name=value;quoted=\"a;b\"\r\nhel\r\n2 ;x\r\nlo\r\n0;last\r\nHost: evil\r\nX-Trailer: 1\r\n\r\n",
            1,
        )
    });
    assert_eq!(statuses(&text), [200], "{text}");
    assert!(text.ends_with("\r\n\r\nHost=x\nTransfer-Encoding=chunked\nhello"), "{text}");
}

/// RFC 9110 §10.1.1: `Expect: 100-continue` in an HTTP/1.0 request is ignored; a body
/// the server refuses by its headers gets the final status without a 100 first; a
/// request without a body gets no 100.
#[test]
fn expect_100_continue_is_answered_only_where_it_means_something() {
    let reactor = Reactor::new().unwrap();
    let mut config = ServerConfig::default();
    config.max_body = 16;
    let site = Site::with_config(&reactor, router(), config);
    let (old, too_big, no_body) = with_http_server(&reactor, &site, secs(20), |addr| {
        (
            exchange(
                addr,
                b"POST /echo HTTP/1.0\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
                1,
            ),
            probe(
                addr,
                b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\nExpect: 100-continue\r\n\r\n",
                true,
            ),
            exchange(addr, b"GET /hello HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n", 1),
        )
    });
    assert!(old.starts_with("HTTP/1.1 200 OK\r\n") && old.ends_with("\r\n\r\nhello"), "{old}");
    assert!(too_big.starts_with("HTTP/1.1 413 "), "{too_big}");
    assert!(too_big.contains("Connection: close\r\n"), "{too_big}");
    assert_eq!(statuses(&no_body), [200], "{no_body}");
    for text in [&old, &too_big, &no_body] {
        assert!(!text.contains(" 100 Continue"), "{text}");
    }
}

/// Slowloris: a client sending its head a byte at a time is cut at the header timeout,
/// counted from the head's first byte (new bytes do not push it back).
#[test]
fn a_client_trickling_its_head_is_cut_at_the_header_timeout() {
    let reactor = Reactor::new().unwrap();
    let mut config = ServerConfig::default();
    config.header_timeout = ms(300);
    let site = Site::with_config(&reactor, router(), config);
    let (text, sent, total) = with_http_server(&reactor, &site, secs(60), |addr| {
        let mut head = b"GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ".to_vec();
        head.resize(head.len() + 100_000, b'a');
        let mut s = TcpStream::connect(addr).unwrap();
        // Between bytes, wait for the server's answer for up to 10 ms: the pace of the
        // trickle, and the way to see the answer come.
        s.set_read_timeout(Some(ms(10))).unwrap();
        let started = Instant::now();
        let mut got = Vec::new();
        let mut sent = 0;
        let mut buf = [0u8; 4096];
        loop {
            assert!(started.elapsed() < secs(30), "not cut after {sent} bytes");
            // Once the answer is coming, stop sending: the server is closing.
            if got.is_empty() && sent < head.len() && s.write_all(&head[sent..sent + 1]).is_ok() {
                sent += 1;
            }
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        (String::from_utf8_lossy(&got).into_owned(), sent, head.len())
    });
    assert!(sent < total, "the whole head went out: the timeout did not cut it");
    assert_eq!(statuses(&text), [408], "{text}");
    assert!(text.contains("Connection: close\r\n"), "{text}");
}

/// A client that sends its requests and shuts its write side (a proxy's half-close)
/// still gets every response, whole, before the server closes.
#[test]
fn a_half_closed_client_still_gets_every_response() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(
            b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\nPOST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nok",
        )
        .unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        read_responses(&mut s, 3)
    });
    assert_eq!(statuses(&text), [200, 200], "{text}");
    assert!(text.ends_with("\r\n\r\nok"), "{text}");
}

/// Probes that keep a connection open or close it, as a proxy would send them.
const CONNECTION_PROBES: &[Probe] = &[
    // RFC 9112 §9.3: HTTP/1.0 closes unless it asks for keep-alive; `close` wins.
    (b"GET /hello HTTP/1.0\r\n\r\n", 200, true),
    (b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", 200, false),
    (b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\n\r\n", 200, true),
    // RFC 9112 §6.1: Transfer-Encoding in HTTP/1.0 is faulty framing.
    (
        b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n0\r\n\r\n",
        400,
        true,
    ),
];

#[test]
fn connection_close_and_http_1_0_keep_alive() {
    check_router(router(), ServerConfig::default(), CONNECTION_PROBES);
}

/// A connection that sends nothing is closed, silently, at the header timeout rather
/// than the (longer) idle timeout, as nginx's `client_header_timeout` does. Failed
/// before: it stayed open for the idle timeout (the 10 s read guard ran out first).
#[test]
fn a_new_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let reactor = Reactor::new().unwrap();
    let mut config = ServerConfig::default();
    config.header_timeout = ms(200);
    config.idle_timeout = secs(60);
    let site = Site::with_config(&reactor, router(), config);
    let got = with_http_server(&reactor, &site, secs(30), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).expect("the server closes the silent connection");
        got
    });
    assert!(got.is_empty(), "closed without a response: {:?}", String::from_utf8_lossy(&got));
}

/// RFC 9110 §4.2.3 (RFC 3986 §6.2.2.2): a percent-encoded unreserved character is the
/// character itself, so `/hel%6Co` is `/hello`; an encoded reserved one (`%2F`) is not
/// its character. Failed before: `/hel%6Co` was 404.
#[test]
fn percent_encoded_unreserved_characters_match_literal_segments() {
    check_router(
        router(),
        ServerConfig::default(),
        &[
            (b"GET /hel%6Co HTTP/1.1\r\nHost: x\r\n\r\n", 200, false),
            (b"GET /%68%65llo HTTP/1.1\r\nHost: x\r\n\r\n", 200, false),
            (b"GET /hello%2F HTTP/1.1\r\nHost: x\r\n\r\n", 404, false),
            (b"GET /hel%6 HTTP/1.1\r\nHost: x\r\n\r\n", 404, false),
        ],
    );
}

/// RFC 9110 §9.3.2: a response to HEAD has no content, the server's own refusals
/// included (a bad head, a 404, a 408). Failed before: a refused HEAD got the error text
/// as a body.
#[test]
fn refusals_of_a_head_request_have_no_body() {
    let reactor = Reactor::new().unwrap();
    let mut config = ServerConfig::default();
    config.header_timeout = ms(200);
    let site = Site::with_config(&reactor, router(), config);
    let texts = with_http_server(&reactor, &site, secs(30), |addr| {
        let raws: [&[u8]; 4] = [
            b"HEAD /hello HTTP/1.1\r\n\r\n",
            b"\r\nHEAD /hello#top HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"HEAD /hello HTTP/1.1\r\nHo",
        ];
        raws.iter().map(|raw| probe(addr, raw, true)).collect::<Vec<_>>()
    });
    let got: Vec<Vec<u16>> = texts.iter().map(|t| statuses(t)).collect();
    assert_eq!(got, [[400], [400], [404], [408]], "{texts:?}");
    for text in &texts {
        assert!(text.contains("\r\nDate: "), "RFC 9110 §6.6.1: {text}");
        assert!(text.contains("Content-Length: "), "{text}");
        assert!(text.ends_with("\r\n\r\n"), "no body: {text}");
    }
}

thread_local! {
    /// The pending answer of the `/pending` handler.
    static PENDING: RefCell<Option<Deferred<Response>>> = const { RefCell::new(None) };
    /// The writer of the `/pending-stream` handler's body.
    static WRITER: RefCell<Option<weft::web::BodyWriter>> = const { RefCell::new(None) };
    /// The reactor the test runs.
    static REACTOR: RefCell<Option<ReactorHandle>> = const { RefCell::new(None) };
}

/// `/pending` and `/pending-stream` answer only when `answer_when_started` runs.
fn pending_router(reactor: &Reactor) -> Router {
    REACTOR.with(|r| *r.borrow_mut() = Some(reactor.handle()));
    router()
        .get(
            "/pending",
            cancellable(|_req: Request| {
                let d = Deferred::new();
                PENDING.with(|p| *p.borrow_mut() = Some(d.clone()));
                d
            }),
        )
        .get("/pending-stream", |_req: Request| {
            Response::stream(200, |w| WRITER.with(|s| *s.borrow_mut() = Some(w)))
        })
}

/// On the reactor thread: answers `/pending` (or ends the `/pending-stream` body) once
/// its handler has started.
fn answer_when_started() {
    if let Some(d) = PENDING.with(|p| p.borrow_mut().take()) {
        d.callback(Response::new(200).body("answered")).unwrap();
    } else if let Some(w) = WRITER.with(|s| s.borrow_mut().take()) {
        w.write(b"streamed");
        w.finish();
    } else {
        // Not started yet: look again soon.
        let reactor = REACTOR.with(|r| r.borrow().clone()).unwrap();
        reactor.call_later(ms(1), answer_when_started);
    }
}

/// With `half_close` on: sends `raw`, reads `first` bytes, shuts the write side, has
/// the pending handler answer, and reads until the server closes.
fn half_closed_exchange(raw: &'static [u8], first: usize) -> String {
    let reactor = Reactor::new().unwrap();
    let mut config = ServerConfig::default();
    config.half_close = true;
    let site = Site::with_config(&reactor, pending_router(&reactor), config);
    let thread = reactor.thread_handle();
    with_http_server(&reactor, &site, secs(20), move |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let mut all = vec![0u8; first];
        s.read_exact(&mut all).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        thread.call_from_thread(answer_when_started).unwrap();
        s.read_to_end(&mut all).expect("the server closes after the responses");
        String::from_utf8_lossy(&all).into_owned()
    })
}

/// With `half_close`, a client that sends its requests and shuts its write side while
/// the first is still being handled (a proxy's half-close) gets the answers to every
/// request it completed, the last saying `Connection: close`; its unfinished one is
/// dropped. Failed before: the end of input closed the connection and cancelled the
/// handler, so nothing came back.
#[test]
fn with_half_close_a_half_closed_client_gets_the_answers_still_pending() {
    let text = half_closed_exchange(
        b"GET /pending HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hel",
        0,
    );
    assert_eq!(statuses(&text), [200, 200], "{text}");
    assert!(text.contains("\r\n\r\nansweredHTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("Connection: close\r\n\r\nhello, world\n"), "{text}");
}

/// With `half_close`, a response whose head went out before the client's end of input
/// was seen still ends the connection when it is complete. Failed before: the
/// connection stayed half-open with nothing left to do (the read guard ran out).
#[test]
fn with_half_close_a_response_streaming_at_the_end_of_input_closes_after_it() {
    // The head arrives before the client shuts its side, so the server is streaming.
    let text = half_closed_exchange(b"GET /pending-stream HTTP/1.1\r\nHost: x\r\n\r\n", 12);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n8\r\nstreamed\r\n0\r\n\r\n"), "{text}");
}

/// A graceful shutdown that begins while a response streams closes the connection as
/// soon as that response is complete. Failed before: the connection stayed open, with
/// nothing left to do, until the grace period ended (60 s here; the read guard ran out).
#[test]
fn a_shutdown_during_a_streamed_response_closes_right_after_it() {
    thread_local! {
        static SITE: RefCell<Option<Site>> = const { RefCell::new(None) };
    }
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, pending_router(&reactor));
    SITE.with(|s| *s.borrow_mut() = Some(site.clone()));
    let thread = reactor.thread_handle();
    let text = with_http_server(&reactor, &site, secs(30), move |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(b"GET /pending-stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut all = vec![0u8; 12];
        s.read_exact(&mut all).unwrap();
        thread
            .call_from_thread(|| {
                let site = SITE.with(|s| s.borrow_mut().take()).unwrap();
                let _drained = site.shutdown(secs(60));
                answer_when_started();
            })
            .unwrap();
        s.read_to_end(&mut all).expect("the server closes after the response");
        String::from_utf8_lossy(&all).into_owned()
    });
    assert!(text.ends_with("\r\n\r\n8\r\nstreamed\r\n0\r\n\r\n"), "{text}");
}

/// Without `half_close` (the default), the end of a client's input is its going away:
/// a cancellable handler still running is cancelled and nothing is sent.
#[test]
fn without_half_close_a_half_closed_client_has_gone() {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, pending_router(&reactor));
    let text = with_http_server(&reactor, &site, secs(20), |addr| {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(secs(10))).unwrap();
        s.write_all(b"GET /pending HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).unwrap();
        String::from_utf8_lossy(&all).into_owned()
    });
    assert_eq!(text, "", "nothing is sent to a client that has gone");
    let d = PENDING.with(|p| p.borrow_mut().take()).expect("the handler ran");
    assert!(d.is_called(), "the handler was cancelled");
}
