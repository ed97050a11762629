//! Cancellation, timeouts and shutdown in the HTTP server, Synapse's way: a client that
//! disconnects cancels a cancellable handler through every layer it waits on (the
//! thread pool, a Linearizer, a ResponseCache observer) without disturbing a request
//! sharing the cache entry; an unmarked handler runs on; timeouts answer 408/504; a
//! graceful stop drains. Clients are raw sockets on another thread, driven step by step
//! by messages from the reactor thread, so no step waits on a sleep.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::rc::Rc;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use weft::future::cancellable;
use weft::reactor::{CancelToken, Phase};
use weft::web::{Request, Response, Router, ServerConfig, Site};
use weft::{CancelledError, Deferred, Failure, Linearizer, Reactor, ResponseCache};

use crate::support::{logs, ms, secs, with_http_server};
use crate::web_server::{read_responses, statuses};

/// A gate a pool thread blocks on until the test opens it (or its job is cancelled).
#[derive(Clone, Default)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn open(&self) {
        *self.0 .0.lock().unwrap() = true;
        self.0 .1.notify_all();
    }
    /// Waits until the gate opens (true) or `token` is cancelled (false), looking at the
    /// token every 2 ms: a pool job's way of noticing a cancel.
    fn wait_unless_cancelled(&self, token: &CancelToken) -> bool {
        let mut open = self.0 .0.lock().unwrap();
        while !*open {
            if token.is_cancelled() {
                return false;
            }
            open = self.0 .1.wait_timeout(open, ms(2)).unwrap().0;
        }
        true
    }
}

fn connect_and_send(addr: std::net::SocketAddr, raw: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(secs(10))).unwrap();
    s.write_all(raw.as_bytes()).unwrap();
    s
}

#[track_caller]
fn recv(rx: &Receiver<String>) -> String {
    rx.recv_timeout(secs(10)).unwrap_or_else(|e| panic!("waiting for a message: {e}"))
}

#[track_caller]
fn expect(rx: &Receiver<String>, what: &str) {
    let got = rx.recv_timeout(secs(10)).unwrap_or_else(|e| panic!("waiting for {what:?}: {e}"));
    assert_eq!(got, what);
}

/// Run once, when the three cancels have been seen.
type Hook = Rc<RefCell<Option<Box<dyn FnOnce()>>>>;

/// What the layers saw, and what to do once enough was seen.
#[derive(Clone)]
struct Events {
    seen: Rc<RefCell<Vec<String>>>,
    when_three: Hook,
    to_client: std::sync::mpsc::Sender<String>,
}

impl Events {
    /// An errback recording a layer's cancel (and passing the failure on).
    fn record<T: 'static>(&self, what: String) -> impl FnOnce(Failure) -> Result<T, Failure> {
        let me = self.clone();
        move |f: Failure| {
            if f.check::<CancelledError>() {
                let _ = me.to_client.send(what.clone());
                me.seen.borrow_mut().push(what);
                if me.seen.borrow().len() == 3 {
                    let hook = me.when_three.borrow_mut().take();
                    if let Some(hook) = hook {
                        hook();
                    }
                }
            }
            Err(f)
        }
    }
}

#[test]
fn a_disconnect_cancels_every_layer_and_spares_the_request_sharing_the_cache() {
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let (to_client, from_server) = channel::<String>();
    let events = Events {
        seen: Rc::new(RefCell::new(Vec::new())),
        when_three: Rc::new(RefCell::new(None)),
        to_client: to_client.clone(),
    };
    let gates: HashMap<&str, Gate> =
        [("alice", Gate::default()), ("carol", Gate::default()), ("dave", Gate::default())]
            .into_iter()
            .collect();
    gates["carol"].open();
    gates["dave"].open();
    let alice_gate = gates["alice"].clone();
    let linearizer: Rc<Linearizer<String>> = Rc::new(Linearizer::new(1));
    let cache: ResponseCache<String, String> = ResponseCache::new(&reactor.handle(), "room", secs(60));
    let shared_work: Deferred<String> = Deferred::new();
    // When the three cancels have been seen, the shared work completes.
    let sw = shared_work.clone();
    *events.when_three.borrow_mut() = Some(Box::new(move || {
        let _ = sw.callback("the room".to_string());
    }));

    let (ev, tx, pool, sw) = (events.clone(), to_client.clone(), reactor.handle(), shared_work.clone());
    let handler = move |req: Request| {
        let (ev, tx, pool, lin, cache, sw) =
            (ev.clone(), tx.clone(), pool.clone(), linearizer.clone(), cache.clone(), sw.clone());
        let user = req.param("user").unwrap().to_string();
        let tag = req.query().unwrap().to_string();
        let gate = gates[user.as_str()].clone();
        async move {
            let wait = lin.queue(user.clone());
            wait.add_errback(ev.record(format!("{tag}: linearizer wait cancelled")));
            let _ = tx.send(format!("{tag} queued"));
            let _permit = wait.await?;
            let (t, tg) = (tx.clone(), tag.clone());
            let db =
                pool.defer_to_thread_with_token(move |token: &CancelToken| -> Result<(), std::io::Error> {
                    if !gate.wait_unless_cancelled(token) {
                        let _ = t.send(format!("{tg}: the pool thread saw the cancel"));
                    }
                    Ok(())
                });
            db.add_errback(ev.record(format!("{tag}: database call cancelled")));
            let _ = tx.send(format!("{tag} in db"));
            db.await?;
            let s = sw.clone();
            let observer = cache.wrap("room".to_string(), move || s);
            observer.add_errback(ev.record(format!("{tag}: cache observer cancelled")));
            let _ = tx.send(format!("{tag} in cache"));
            let body = observer.await?;
            Ok(Response::new(200).body(format!("{tag}: {body}")))
        }
    };
    let router = Router::new().get("/room/{user}", cancellable(handler));
    let site = Site::new(&reactor, router);

    let d_response = with_http_server(&reactor, &site, secs(30), move |addr| {
        let a = connect_and_send(addr, "GET /room/alice?A HTTP/1.1\r\nHost: x\r\n\r\n");
        expect(&from_server, "A queued");
        expect(&from_server, "A in db");
        let b = connect_and_send(addr, "GET /room/alice?B HTTP/1.1\r\nHost: x\r\n\r\n");
        expect(&from_server, "B queued");
        let c = connect_and_send(addr, "GET /room/carol?C HTTP/1.1\r\nHost: x\r\n\r\n");
        for step in ["C queued", "C in db", "C in cache"] {
            expect(&from_server, step);
        }
        let mut d = connect_and_send(addr, "GET /room/dave?D HTTP/1.1\r\nHost: x\r\n\r\n");
        for step in ["D queued", "D in db", "D in cache"] {
            expect(&from_server, step);
        }
        // One at a time, so that B is still in the Linearizer queue when it goes.
        drop(b);
        expect(&from_server, "B: linearizer wait cancelled");
        drop(a);
        // The canceller sets the token before it fails the Deferred, so the pool thread
        // (looking every 2 ms) may report before or after the errback does.
        let mut a_saw = [recv(&from_server), recv(&from_server)];
        a_saw.sort();
        assert_eq!(a_saw, ["A: database call cancelled", "A: the pool thread saw the cancel"]);
        drop(c);
        expect(&from_server, "C: cache observer cancelled");
        let response = read_responses(&mut d, 1);
        alice_gate.open();
        response
    });
    assert!(d_response.starts_with("HTTP/1.1 200 OK\r\n"), "{d_response}");
    assert!(d_response.ends_with("\r\n\r\nD: the room"), "{d_response}");
    let mut seen = events.seen.borrow().clone();
    seen.sort();
    assert_eq!(
        seen,
        ["A: database call cancelled", "B: linearizer wait cancelled", "C: cache observer cancelled",]
    );
    let access: Vec<String> =
        logs::records().into_iter().map(|(_, m)| m).filter(|m| m.contains("Processed request")).collect();
    assert_eq!(access.iter().filter(|m| m.contains(" 499! ")).count(), 3, "{access:?}");
    assert_eq!(access.iter().filter(|m| m.contains(" 200 \"GET /room/dave?D")).count(), 1, "{access:?}");
    let late: Vec<_> = logs::records().into_iter().filter(|(_, m)| m.contains("after it finished")).collect();
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn an_unmarked_handler_runs_to_completion_and_its_response_is_dropped() {
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let (to_client, from_server) = channel::<String>();
    let slot: Rc<RefCell<Option<Deferred<Response>>>> = Rc::new(RefCell::new(None));
    let cancelled = Rc::new(Cell::new(false));
    let (s, c, tx) = (slot.clone(), cancelled.clone(), to_client.clone());
    let router = Router::new().get("/work", move |_req: Request| {
        let c = c.clone();
        let d: Deferred<Response> = Deferred::with_canceller(move |_| c.set(true));
        *s.borrow_mut() = Some(d.clone());
        let _ = tx.send("started".to_string());
        d
    });
    let site = Site::new(&reactor, router);
    let (s, h) = (slot.clone(), reactor.handle());
    // Once the connection is gone, complete the handler's work (looking every ms).
    let site2 = site.clone();
    fn finish_when_closed(
        site: Site,
        s: Rc<RefCell<Option<Deferred<Response>>>>,
        h: weft::ReactorHandle,
        tx: std::sync::mpsc::Sender<String>,
    ) {
        if site.open_connections() == 0 && s.borrow().is_some() {
            let d = s.borrow_mut().take().unwrap();
            d.callback(Response::new(200).body("late")).unwrap();
            let _ = tx.send("completed".to_string());
        } else {
            let h2 = h.clone();
            h.call_later(ms(1), move || finish_when_closed(site, s, h2, tx));
        }
    }
    let tx = to_client.clone();
    h.clone().call_soon(move || finish_when_closed(site2, s, h, tx));
    with_http_server(&reactor, &site, secs(30), move |addr| {
        let conn = connect_and_send(addr, "GET /work HTTP/1.1\r\nHost: x\r\n\r\n");
        expect(&from_server, "started");
        drop(conn);
        expect(&from_server, "completed");
    });
    assert!(!cancelled.get(), "an unmarked handler is not cancelled");
    assert!(slot.borrow().is_none(), "the handler completed");
    let access: Vec<String> =
        logs::records().into_iter().map(|(_, m)| m).filter(|m| m.contains("Processed request")).collect();
    assert_eq!(access.len(), 1, "{access:?}");
    assert!(access[0].contains(" 200! \"GET /work"), "the response was not sent: {access:?}");
}

#[test]
fn a_request_timeout_cancels_a_cancellable_handler_and_answers_504() {
    let reactor = Reactor::new().unwrap();
    let cancelled = Rc::new(Cell::new(0));
    let c = cancelled.clone();
    let router = Router::new()
        .get(
            "/stuck",
            cancellable(move |_req: Request| {
                let c = c.clone();
                Deferred::<Response>::with_canceller(move |_| c.set(c.get() + 1))
            }),
        )
        .get("/hello", |_req: Request| Response::new(200).body("hi"));
    let mut config = ServerConfig::default();
    config.request_timeout = Some(ms(50));
    let site = Site::with_config(&reactor, router, config);
    let (text, elapsed) = with_http_server(&reactor, &site, secs(30), |addr| {
        let t0 = Instant::now();
        let mut s = connect_and_send(
            addr,
            "GET /stuck HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n",
        );
        (read_responses(&mut s, 2), t0.elapsed())
    });
    assert_eq!(statuses(&text), [504, 200], "the connection goes on after a 504: {text}");
    assert_eq!(cancelled.get(), 1);
    assert!(elapsed >= ms(40), "answered after {elapsed:?}");
}

#[test]
fn a_head_that_does_not_complete_in_time_is_408() {
    let reactor = Reactor::new().unwrap();
    let router = Router::new().post("/echo", |req: Request| Response::new(200).body(req.body().to_vec()));
    let mut config = ServerConfig::default();
    config.header_timeout = ms(100);
    let site = Site::with_config(&reactor, router, config);
    let (head, body, elapsed) = with_http_server(&reactor, &site, secs(30), |addr| {
        let t0 = Instant::now();
        let mut s = connect_and_send(addr, "POST /echo HTTP/1.1\r\nHo");
        let mut head = String::new();
        s.read_to_string(&mut head).unwrap();
        let elapsed = t0.elapsed();
        // A body that stops arriving gets the same answer.
        let mut s = connect_and_send(addr, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc");
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        (head, body, elapsed)
    });
    assert_eq!(statuses(&head), [408], "{head}");
    assert!(head.contains("Connection: close\r\n"), "{head}");
    assert_eq!(statuses(&body), [408], "{body}");
    assert!(elapsed >= ms(80), "408 after {elapsed:?}");
}

#[test]
fn an_idle_keep_alive_connection_is_closed_silently() {
    let reactor = Reactor::new().unwrap();
    let router = Router::new().get("/hello", |_req: Request| Response::new(200).body("hi"));
    let mut config = ServerConfig::default();
    config.idle_timeout = ms(100);
    let site = Site::with_config(&reactor, router, config);
    let (first, rest) = with_http_server(&reactor, &site, secs(30), |addr| {
        let mut s = connect_and_send(addr, "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n");
        let first = read_responses(&mut s, 1);
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        (first, rest)
    });
    assert_eq!(statuses(&first), [200]);
    assert!(rest.is_empty(), "nothing is sent on an idle close: {:?}", String::from_utf8_lossy(&rest));
}

#[test]
fn pipelined_requests_past_the_cap_wait_and_are_all_answered() {
    let reactor = Reactor::new().unwrap();
    let pending: Rc<RefCell<Vec<Deferred<Response>>>> = Rc::new(RefCell::new(Vec::new()));
    let p = pending.clone();
    let router = Router::new().get("/n/{i}", move |req: Request| {
        let i = req.param("i").unwrap().to_string();
        let d = Deferred::new();
        p.borrow_mut().push(d.clone());
        d.callback(Response::new(200).body(i)).unwrap();
        d
    });
    let mut config = ServerConfig::default();
    config.max_pipelined = 2;
    let site = Site::with_config(&reactor, router, config);
    let text = with_http_server(&reactor, &site, secs(30), |addr| {
        let raw: String = (0..50).map(|i| format!("GET /n/{i} HTTP/1.1\r\nHost: x\r\n\r\n")).collect();
        let mut s = connect_and_send(addr, &raw);
        read_responses(&mut s, 50)
    });
    let bodies: Vec<String> = text
        .split("HTTP/1.1 200 OK")
        .skip(1)
        .map(|r| r.split("\r\n\r\n").nth(1).unwrap().to_string())
        .collect();
    assert_eq!(bodies, (0..50).map(|i| i.to_string()).collect::<Vec<_>>());
}

#[test]
fn a_graceful_stop_finishes_in_flight_requests_then_cancels_what_is_left() {
    let reactor = Reactor::new().unwrap();
    let (to_client, from_server) = channel::<String>();
    let work: Rc<RefCell<Vec<Deferred<Response>>>> = Rc::new(RefCell::new(Vec::new()));
    let cancelled = Rc::new(Cell::new(0));
    let (w, tx) = (work.clone(), to_client.clone());
    let (c, tx2) = (cancelled.clone(), to_client.clone());
    let router = Router::new()
        .get("/soon", move |_req: Request| {
            let _ = tx.send("soon started".to_string());
            let d = Deferred::new();
            w.borrow_mut().push(d.clone());
            d
        })
        .get(
            "/never",
            cancellable(move |_req: Request| {
                let _ = tx2.send("never started".to_string());
                let c = c.clone();
                Deferred::<Response>::with_canceller(move |_| c.set(c.get() + 1))
            }),
        );
    let mut config = ServerConfig::default();
    config.shutdown_grace = ms(300);
    let site = Site::with_config(&reactor, router, config);
    // The work of /soon finishes once the stop has begun (in the turn after the "before"
    // triggers, the site's among them, ran), inside the grace period. It used to finish
    // 30 ms after it started, and a client thread scheduled late asked for the stop
    // after that: the response then went out before the stop, without `Connection: close`.
    let (w, h) = (work.clone(), reactor.handle());
    reactor.add_shutdown_trigger(Phase::Before, move || {
        let w = w.clone();
        h.call_soon(move || {
            for d in w.borrow_mut().drain(..) {
                d.callback(Response::new(200).body("finished")).unwrap();
            }
        });
    });
    let stop = reactor.thread_handle();
    let (soon, never, refused) = with_http_server(&reactor, &site, secs(30), move |addr| {
        let mut soon = connect_and_send(addr, "GET /soon HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut never = connect_and_send(addr, "GET /never HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut started =
            vec![from_server.recv_timeout(secs(10)).unwrap(), from_server.recv_timeout(secs(10)).unwrap()];
        started.sort();
        assert_eq!(started, ["never started", "soon started"]);
        stop.stop().unwrap();
        let soon = read_responses(&mut soon, 1);
        let mut never_text = String::new();
        never.read_to_string(&mut never_text).unwrap();
        let refused = TcpStream::connect(addr).is_err();
        (soon, never_text, refused)
    });
    assert_eq!(statuses(&soon), [200], "{soon}");
    assert!(soon.contains("Connection: close\r\n") && soon.ends_with("finished"), "{soon}");
    assert_eq!(statuses(&never), [503], "{never}");
    assert_eq!(cancelled.get(), 1);
    assert!(refused, "the site stopped listening");
}

#[test]
fn a_request_timeout_after_the_head_was_sent_closes_the_connection() {
    let reactor = Reactor::new().unwrap();
    let stopped = Rc::new(Cell::new(false));
    let s = stopped.clone();
    let router = Router::new().get("/stalls", move |_req: Request| {
        let s = s.clone();
        Response::stream(200, move |w: weft::web::BodyWriter| {
            w.write(b"first part");
            // Nothing more is ever written; the writer is kept alive by the producer.
            w.register_producer(Rc::new(Stall { _writer: w.clone(), stopped: s }));
        })
    });
    let mut config = ServerConfig::default();
    config.request_timeout = Some(ms(50));
    let site = Site::with_config(&reactor, router, config);
    let text = with_http_server(&reactor, &site, secs(30), |addr| {
        let mut s = connect_and_send(addr, "GET /stalls HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("{e}: the server did not close after {:?}", String::from_utf8_lossy(&all)),
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.ends_with("a\r\nfirst part\r\n"), "the body stops where the producer stalled: {text}");
    assert!(stopped.get(), "the producer was told to stop");
}

/// A producer that never produces; records `stop_producing`.
struct Stall {
    _writer: weft::web::BodyWriter,
    stopped: Rc<Cell<bool>>,
}

impl weft::reactor::PushProducer for Stall {
    fn pause_producing(&self) {}
    fn resume_producing(&self) {}
    fn stop_producing(&self) {
        self.stopped.set(true);
    }
}
