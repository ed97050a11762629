//! Run: `cargo run --example http_server -- --port 8080`, then, from another shell:
//!
//! ```text
//! curl http://127.0.0.1:8080/hello
//! curl 'http://127.0.0.1:8080/rooms/lobby?user=ann'               # 2 s: a database call on the pool
//! curl --max-time 1 'http://127.0.0.1:8080/rooms/hall?user=ann'   # leaves after 1 s: the cache observer
//!                                                                 # and the database call log their cancel
//! curl 'http://127.0.0.1:8080/rooms/attic?user=bob' &
//! curl --max-time 1 'http://127.0.0.1:8080/rooms/attic?user=cid'  # cid leaves; bob shares the work and
//!                                                                 # still gets his 200
//! curl 'http://127.0.0.1:8080/rooms/den?user=dee' &
//! curl --max-time 1 'http://127.0.0.1:8080/rooms/den?user=dee'    # waits behind the first for dee's
//!                                                                 # linearizer, and cancels that wait
//! curl 'http://127.0.0.1:8080/rooms/attic?user=eve&query_ms=8000' # past the 5 s request timeout: 504
//! kill -TERM <pid>                                                # drains in-flight requests, then stops
//! ```
//!
//! A Synapse-like daemon on weft's HTTP server: each request runs in its own log context
//! (`GET-3`, shown on every log line) and ends with an access-log line; `/rooms/{room}`
//! is marked cancellable and goes through a per-user `Linearizer` (one request per user
//! at a time), a `ResponseCache` shared by concurrent requests for the same room, and a
//! "database" call on the thread pool, made in the cache's own log context. When a
//! client disconnects, the cancel reaches each layer, and each says so.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use weft::cache::WhenUnobserved;
use weft::future::cancellable;
use weft::logcontext::ContextLogger;
use weft::reactor::CancelToken;
use weft::web::{Request, Response, Router, ServerConfig, Site};
use weft::{CancelledError, Deferred, Failure, Linearizer, Reactor, ReactorHandle, ResponseCache};

/// Prints log records to stderr (behind `ContextLogger`, which adds the request id).
struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::Level::Info || m.target().starts_with("weft::web")
    }
    fn log(&self, r: &log::Record<'_>) {
        if self.enabled(r.metadata()) {
            eprintln!("{:<5} {}", r.level(), r.args());
        }
    }
    fn flush(&self) {}
}

/// Logs `what` if `d` is cancelled; passes every outcome on.
fn log_cancel<T: 'static>(d: Deferred<T>, what: &'static str) -> Deferred<T> {
    d.add_errback(move |f: Failure| -> Result<T, Failure> {
        if f.check::<CancelledError>() {
            log::info!("{what}: cancelled");
        }
        Err(f)
    });
    d
}

/// The application's shared state, as a Synapse handler would hold it.
struct Rooms {
    reactor: ReactorHandle,
    linearizer: Linearizer<String>,
    cache: ResponseCache<(String, u64), String>,
}

impl Rooms {
    /// `GET /rooms/{room}?user=..`: one request per user at a time, concurrent requests
    /// for a room share the work, and the work is a query on the thread pool.
    async fn messages(
        self: Rc<Self>,
        room: String,
        user: String,
        query_ms: u64,
    ) -> Result<Response, Failure> {
        log::info!("waiting for {user}'s linearizer");
        let _permit = log_cancel(self.linearizer.queue(user), "linearizer wait").await?;
        let reactor = self.reactor.clone();
        let key = (room.clone(), query_ms);
        let observed = self.cache.wrap(key, move || {
            log::info!("querying the database for {room}");
            let query = reactor.defer_to_thread_with_token(move |token: &CancelToken| {
                // The "database": a query that looks at its cancel token between steps.
                for _ in 0..query_ms / 10 {
                    if token.is_cancelled() {
                        log::info!("database query: stopping, it was cancelled");
                        return Err(std::io::Error::other("query cancelled"));
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
                Ok(format!("3 messages in {room}\n"))
            });
            log_cancel(query, "database call")
        });
        let body = log_cancel(observed, "cache observer").await?;
        log::info!("answering");
        Ok(Response::new(200).header("Content-Type", "text/plain").body(body))
    }
}

fn main() -> std::io::Result<()> {
    let mut port = 8080u16;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--port" => port = args.next().and_then(|p| p.parse().ok()).expect("--port takes a number"),
            other => panic!("unknown argument {other}; usage: http_server [--port PORT]"),
        }
    }
    ContextLogger::new(Stderr).install(log::LevelFilter::Debug).expect("a logger");
    let reactor = Reactor::new()?;
    let rooms = Rc::new(Rooms {
        reactor: reactor.handle(),
        linearizer: Linearizer::new(1),
        // Kept 10 s after it completes; cancelled when the last caller has gone.
        cache: ResponseCache::with_policy(
            &reactor.handle(),
            "room-messages",
            Duration::from_secs(10),
            WhenUnobserved::Cancel,
        ),
    });
    let router = Router::new()
        .get("/hello", |_req: Request| {
            Response::new(200).header("Content-Type", "text/plain").body("hello, world\n")
        })
        .get(
            "/rooms/{room}",
            cancellable(move |req: Request| {
                let room = req.param("room").unwrap_or("").to_string();
                let param = |name: &str| {
                    let query = req.query().unwrap_or("");
                    query
                        .split('&')
                        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                        .map(str::to_string)
                };
                let user = param("user").unwrap_or_else(|| "guest".to_string());
                let query_ms = param("query_ms").and_then(|v| v.parse().ok()).unwrap_or(2000);
                rooms.clone().messages(room, user, query_ms)
            }),
        );
    let mut config = ServerConfig::default();
    config.request_timeout = Some(Duration::from_secs(5));
    config.shutdown_grace = Duration::from_secs(5);
    let site = Site::with_config(&reactor, router, config);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    site.listen_tcp(addr)?;
    reactor.stop_on_signals()?;
    log::info!("listening on http://{addr} (pid {}); SIGTERM drains and stops", std::process::id());
    reactor.run();
    log::info!("stopped");
    Ok(())
}
