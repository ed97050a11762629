//! HTTP/1.1 on the reactor: a server ([`Site`], [`Router`]) with Synapse's request
//! handling (a log context per request, an access-log line, cancel on disconnect), and a
//! small keep-alive [`client`].
//!
//! ```no_run
//! use std::time::Duration;
//! use weft::future::cancellable;
//! use weft::web::{Request, Response, Router, Site};
//! use weft::reactor::defer_later;
//! use weft::Reactor;
//!
//! let reactor = Reactor::new()?;
//! let time = reactor.handle();
//! let router = Router::new()
//!     .get("/hello", |_req: Request| Response::text("hello, world\n"))
//!     // Cancelled if the client goes away before the answer.
//!     .get("/slow", cancellable(move |_req: Request| {
//!         defer_later(&time, Duration::from_secs(2), || Response::text("done\n"))
//!     }));
//! Site::new(&reactor, router).listen_tcp("127.0.0.1:8080".parse().unwrap())?;
//! reactor.stop_on_signals()?; // SIGTERM drains the site, then stops
//! reactor.run();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! # Routing: a servlet table
//!
//! Requests are routed by a [`Router`]: an ordered table of (method, path pattern,
//! handler), as Synapse's `JsonResource` registers servlets, rather than Twisted's
//! `Resource` tree. A Synapse port registers its servlets' patterns one to one, the
//! table answers `405` with `Allow` by itself (it knows every method a path has), and
//! matching a few routes is a short loop over a vector, with no per-level child lookup.
//! A handler is a function of the [`Request`]; it returns a [`Response`], a
//! `Deferred<Response>`, or an `async` block (run with
//! [`ensure_deferred`](crate::ensure_deferred)). Mark it with
//! [`cancellable`](crate::future::cancellable) to have it cancelled when its client
//! disconnects.
//!
//! # What happens to a request
//!
//! 1. The head is parsed by `httparse` straight from the read buffer and checked as
//!    RFC 9112 asks (framing, `Host`, limits); bad input gets its status (400, 413,
//!    414, 417, 431, 501, 505) and the connection closes after it.
//! 2. The body is read (by `Content-Length` or chunked; `100 Continue` is sent first if
//!    the client asked and a route takes the request).
//! 3. A log context named like Synapse's (`GET-17`) is made and the handler is called
//!    in it. Requests on one connection run one at a time, in order; pipelined ones
//!    wait (up to [`ServerConfig::max_pipelined`]).
//! 4. The response is written with one write (head and body), or streamed through a
//!    [`BodyWriter`] with back-pressure.
//! 5. Once the handler has completed and the response is written, one access-log line
//!    is logged (target `weft::web::access`: method, path, status, bytes, wall time,
//!    the context's CPU and database time) and the context is finished.
//!
//! # Cancellation
//!
//! If the client disconnects before its response, a cancellable handler's Deferred is
//! cancelled: the cancel travels down whatever it waits on (a `defer_to_thread` call, a
//! [`Linearizer`](crate::Linearizer) queue, a [`ResponseCache`](crate::ResponseCache)
//! observer), and the access log says `499!`. A handler not marked cancellable runs to
//! the end and its response is dropped (Synapse's rule: cancel only what was checked to
//! be safe). A [`ServerConfig::request_timeout`] cancels the same way and answers `504`.
//!
//! The server is written against [`HttpTransport`], so it runs over any byte stream
//! (TLS, a test double), not only the reactor's TCP and Unix transports.

mod channel;
pub mod client;
mod parse;
mod request;
mod response;
mod router;
mod server;
mod stream;

pub use request::{Method, Request, Version};
pub use response::{reason_phrase, Body, HeaderValue, InvalidHeaderError, Response};
pub use router::{Handler, IntoReply, Reply, Router};
pub use server::{HttpChannel, HttpTransport, ServerConfig, Site};
pub use stream::BodyWriter;

#[cfg(test)]
mod tests;
