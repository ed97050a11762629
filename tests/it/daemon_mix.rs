//! A small daemon in Synapse's style on weft's HTTP server, under a mix of requests with
//! debugging on: a shared `ResponseCache`, a `Linearizer` in front of the thread pool,
//! background processes, a timeout, and clients that disconnect half way (which cancels
//! their handlers through every layer). The check an outside port made of weft: every
//! answered request has the right answer, and the log says nothing at warning or error
//! level, since nothing went wrong (a false warning is a bug too).

use std::io::Write;
use std::net::TcpStream;
use std::rc::Rc;

use weft::future::cancellable;
use weft::logcontext::run_as_background_process;
use weft::reactor::{defer_later, LoopingCall};
use weft::web::client::Client;
use weft::web::{Request, Response, Router, Site};
use weft::{
    delay_cancellation, timeout_deferred, CancelScope, Linearizer, Reactor, ReadWriteLock, ResponseCache,
    TimeoutError,
};

use crate::support::{debugging, localhost, logs, ms, secs, with_http_server};
use crate::web_server::{read_responses, statuses};

/// The daemon's routes.
fn daemon(reactor: &Reactor) -> Router {
    let time = reactor.handle();
    let cache: ResponseCache<String, String> = ResponseCache::new(&reactor.handle(), "room", ms(5));
    let linearizer: Rc<Linearizer<String>> = Rc::new(Linearizer::new(1));
    let (t1, t2, t3, pool) = (time.clone(), time.clone(), time.clone(), time.clone());
    Router::new()
        .get(
            "/cached/{k}",
            cancellable(move |req: Request| {
                let (cache, time) = (cache.clone(), t1.clone());
                let k = req.param("k").unwrap().to_string();
                async move {
                    let key = k.clone();
                    let v = cache
                        .wrap(k, move || defer_later(&time, ms(2), move || format!("room {key}")))
                        .await?;
                    Ok(Response::new(200).body(v))
                }
            }),
        )
        .get(
            "/locked/{k}",
            cancellable(move |req: Request| {
                let (lin, pool) = (linearizer.clone(), pool.clone());
                let k = req.param("k").unwrap().to_string();
                async move {
                    let _permit = lin.queue(k.clone()).await?;
                    // A count made after the client went away is of no use to anyone:
                    // say so, or the lost-result guard warns (as it should for a
                    // connection or a permit handed back too late).
                    let n = pool.defer_to_thread(move || k.len()).on_lost_result(drop).clone().await?;
                    Ok(Response::new(200).body(format!("len {n}")))
                }
            }),
        )
        .get("/bg", move |_req: Request| {
            let time = t2.clone();
            let _: weft::Deferred<Option<()>> =
                run_as_background_process("prune", move || defer_later(&time, ms(1), || ()));
            Response::new(200).body("started")
        })
        .get("/timeout", move |_req: Request| {
            let time = t3.clone();
            let slow = defer_later(&time, secs(5), || "late".to_string());
            let guarded = timeout_deferred(&slow, ms(3), &time);
            async move {
                match guarded.await {
                    Ok(v) => Ok(Response::new(200).body(v)),
                    Err(f) if f.check::<TimeoutError>() => Ok(Response::new(504).body("timed out")),
                    Err(f) => Err(f),
                }
            }
        })
}

/// What request `i` asks for, and the status and body it must get.
fn request(i: usize) -> (String, u16, String) {
    let k = format!("k{}", i % 5);
    match i % 4 {
        0 => (format!("/cached/{k}"), 200, format!("room {k}")),
        1 => (format!("/locked/{k}"), 200, "len 2".to_string()),
        2 => ("/bg".to_string(), 200, "started".to_string()),
        _ => ("/timeout".to_string(), 504, "timed out".to_string()),
    }
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: daemon\r\n\r\n")
}

#[test]
fn a_daemon_under_a_mix_of_requests_and_disconnects_logs_no_warning() {
    let _on = debugging(true);
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, daemon(&reactor));
    let answered = with_http_server(&reactor, &site, secs(60), |addr| {
        let mut answered = 0;
        for round in 0..10 {
            // Clients that send and go away at once: their handlers are cancelled
            // wherever they wait (the cache, the Linearizer, the pool, the timeout).
            for i in 0..4 {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(get(&request(round * 4 + i).0).as_bytes()).unwrap();
            }
            // A keep-alive client sending one request after another, and one pipelining.
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(secs(20))).unwrap();
            for i in 0..8 {
                let (path, status, body) = request(round * 8 + i);
                s.write_all(get(&path).as_bytes()).unwrap();
                let text = read_responses(&mut s, 1);
                assert_eq!(statuses(&text), [status], "{path}: {text}");
                assert!(text.ends_with(&body), "{path}: {text}");
                answered += 1;
            }
            let mut p = TcpStream::connect(addr).unwrap();
            p.set_read_timeout(Some(secs(20))).unwrap();
            let all: String = (0..8).map(|i| get(&request(round + i).0)).collect();
            p.write_all(all.as_bytes()).unwrap();
            let text = read_responses(&mut p, 8);
            let expected: Vec<u16> = (0..8).map(|i| request(round + i).1).collect();
            assert_eq!(statuses(&text), expected, "{text}");
            answered += 8;
        }
        answered
    });
    assert_eq!(answered, 160);
    // Let the last background processes and cache expiries run out.
    let (h, done) = (reactor.handle(), reactor.handle());
    h.call_later(ms(20), move || done.stop());
    reactor.run();
    let noisy: Vec<_> = logs::records().into_iter().filter(|(level, _)| *level <= log::Level::Warn).collect();
    assert!(noisy.is_empty(), "warnings or errors logged: {noisy:#?}");
}

/// The second daemon's routes: a proxy to a backend over weft's HTTP client, a
/// read-write lock, a delayed cancellation and a cancel scope with a deadline.
fn gateway(reactor: &Reactor, backend: String) -> Router {
    let time = reactor.handle();
    let client = Client::new(&reactor.handle());
    let rw: Rc<ReadWriteLock<String>> = Rc::new(ReadWriteLock::new());
    let (t1, t2, t3) = (time.clone(), time.clone(), time.clone());
    Router::new()
        .get(
            "/proxy",
            cancellable(move |_req: Request| {
                let got = client.get(&backend);
                async move {
                    let r = got.await?;
                    Ok(Response::new(200).body(format!("via {}", r.body_text().unwrap_or(""))))
                }
            }),
        )
        .get(
            "/rw/{k}",
            cancellable(move |req: Request| {
                let (rw, time) = (rw.clone(), t1.clone());
                let k: u32 = req.param("k").unwrap().parse().unwrap();
                async move {
                    let key = "room".to_string();
                    let _guard = if k % 2 == 0 { rw.write(key).await? } else { rw.read(key).await? };
                    defer_later(&time, ms(1), || ()).await?;
                    Ok(Response::new(200).body("locked"))
                }
            }),
        )
        .get("/delayed", move |_req: Request| {
            let work = defer_later(&t2, ms(2), || Response::new(200).body("done"));
            delay_cancellation(&work)
        })
        .get("/scoped", move |_req: Request| {
            let scope = CancelScope::move_on_after(ms(2), &t3);
            let slow = defer_later(&t3, secs(5), || "late".to_string());
            let out = scope.wrap(slow);
            let reply = weft::Deferred::new();
            let r = reply.clone();
            out.add_callback(move |v: Option<String>| {
                let _ = r.callback(Response::new(200).body(v.unwrap_or_else(|| "moved on".to_string())));
                None
            });
            reply
        })
}

fn gateway_request(i: usize) -> (String, String) {
    match i % 4 {
        0 => ("/proxy".to_string(), "via backend".to_string()),
        1 => (format!("/rw/{i}"), "locked".to_string()),
        2 => ("/delayed".to_string(), "done".to_string()),
        _ => ("/scoped".to_string(), "moved on".to_string()),
    }
}

/// The same check on a gateway to a backend: outbound requests cancelled with their
/// client, lock waiters, a delayed cancellation, a scope's deadline, and a looping
/// call in a background process ticking meanwhile.
#[test]
fn a_gateway_under_a_mix_of_requests_and_disconnects_logs_no_warning() {
    let _on = debugging(true);
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let time = reactor.handle();
    let backend_site = Site::new(
        &reactor,
        Router::new().get("/slow", move |_req: Request| {
            defer_later(&time, ms(3), || Response::new(200).body("backend"))
        }),
    );
    let backend_port = backend_site.listen_tcp(localhost()).unwrap();
    let backend = format!("http://127.0.0.1:{}/slow", backend_port.port().unwrap());
    let ticks = Rc::new(std::cell::Cell::new(0u32));
    let t = ticks.clone();
    let ticker = LoopingCall::new(reactor.handle(), move || t.set(t.get() + 1));
    let _: weft::Deferred<Option<()>> = run_as_background_process("ticker", || ticker.start(ms(1), true));
    let site = Site::new(&reactor, gateway(&reactor, backend));
    let answered = with_http_server(&reactor, &site, secs(60), |addr| {
        let mut answered = 0;
        for round in 0..6 {
            for i in 0..4 {
                let mut s = TcpStream::connect(addr).unwrap();
                s.write_all(get(&gateway_request(round * 4 + i).0).as_bytes()).unwrap();
            }
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(secs(20))).unwrap();
            for i in 0..8 {
                let (path, body) = gateway_request(round * 8 + i);
                s.write_all(get(&path).as_bytes()).unwrap();
                let text = read_responses(&mut s, 1);
                assert_eq!(statuses(&text), [200], "{path}: {text}");
                assert!(text.ends_with(&body), "{path}: {text}");
                answered += 1;
            }
        }
        answered
    });
    assert_eq!(answered, 48);
    ticker.stop();
    backend_port.stop_listening();
    let (h, done) = (reactor.handle(), reactor.handle());
    h.call_later(ms(20), move || done.stop());
    reactor.run();
    assert!(ticks.get() > 0);
    let noisy: Vec<_> = logs::records().into_iter().filter(|(level, _)| *level <= log::Level::Warn).collect();
    assert!(noisy.is_empty(), "warnings or errors logged: {noisy:#?}");
}

/// A graceful stop with requests in flight: the quick ones are answered, the one still
/// running at the end of the grace period is cancelled, every connection closes, and
/// nothing is logged at warning level.
#[test]
fn a_graceful_stop_with_requests_in_flight_logs_no_warning() {
    let _on = debugging(true);
    logs::capture();
    let reactor = Reactor::new().unwrap();
    let (t1, t2) = (reactor.handle(), reactor.handle());
    // How many of the two requests reached their handler.
    let handled = Rc::new(std::cell::Cell::new(0));
    let (h1, h2) = (handled.clone(), handled.clone());
    let router = daemon(&reactor)
        .get(
            "/forever",
            cancellable(move |_req: Request| {
                h1.set(h1.get() + 1);
                let wait = defer_later(&t1, secs(30), || ());
                async move {
                    wait.await?;
                    Ok(Response::new(200).body("never"))
                }
            }),
        )
        .get("/quick", move |_req: Request| {
            h2.set(h2.get() + 1);
            defer_later(&t2, ms(2), || Response::new(200).body("quick"))
        });
    let site = Rc::new(Site::new(&reactor, router));
    let port = site.listen_tcp(localhost()).unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port.port().unwrap()));
    let client = std::thread::spawn(move || {
        let open = |path: &str| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(secs(20))).unwrap();
            s.write_all(get(path).as_bytes()).unwrap();
            s
        };
        let (mut quick, mut forever) = (open("/quick"), open("/forever"));
        (read_responses(&mut quick, 1), read_responses(&mut forever, 1))
    });
    // Once both requests are being handled, stop with a grace period the quick one
    // fits in.
    let drained = Rc::new(std::cell::Cell::new(false));
    let (s, d, r) = (site.clone(), drained.clone(), reactor.handle());
    let started = std::cell::Cell::new(false);
    let poll = LoopingCall::new(reactor.handle(), move || {
        if handled.get() == 2 && !started.replace(true) {
            let (d, r) = (d.clone(), r.clone());
            s.shutdown(ms(20)).add_callback(move |()| {
                d.set(true);
                r.stop();
            });
        }
    });
    let _ = poll.start(ms(1), true);
    crate::support::run_bounded(&reactor, secs(30));
    poll.stop();
    assert!(drained.get(), "the site drained");
    let (quick, forever) = client.join().unwrap();
    assert_eq!(statuses(&quick), [200], "{quick}");
    assert!(quick.ends_with("quick"), "{quick}");
    assert!(!forever.contains(" 200 "), "the endless request was not answered with a 200: {forever}");
    let noisy: Vec<_> = logs::records().into_iter().filter(|(level, _)| *level <= log::Level::Warn).collect();
    assert!(noisy.is_empty(), "warnings or errors logged: {noisy:#?}");
}
