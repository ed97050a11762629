//! A small HTTP/1.1 client on the reactor: [`Client::get`] and [`Client::post`] over
//! keep-alive connections, each returning a `Deferred<Response>` (Twisted's `Agent`,
//! much reduced).
//!
//! ```no_run
//! use weft::web::{client::Client, Response};
//! use weft::{Failure, Reactor};
//!
//! let reactor = Reactor::new()?;
//! let client = Client::new(&reactor);
//! let h = reactor.handle();
//! let _done = client.get("http://127.0.0.1:8080/hello").then(move |r: Result<Response, Failure>| {
//!     match r {
//!         Ok(response) => println!("{} {:?}", response.status(), response.body_text()),
//!         Err(f) => println!("failed: {f}"),
//!     }
//!     h.stop();
//! });
//! reactor.run();
//! # Ok::<(), std::io::Error>(())
//! ```
//!
//! Only `http://` URLs. A host name is resolved on the thread pool; an IP address is
//! used as it is. One request at a time per connection (no pipelining); a connection
//! is put back in the pool for its host once its response has been read whole, unless
//! either side said `Connection: close`. A `GET`, `HEAD`, `PUT` or `DELETE` whose
//! pooled connection turns out to be closed before any byte of the answer is retried
//! once on a new connection.
//!
//! # Cancellation
//!
//! Cancelling the Deferred of a request closes its connection (or stops the connection
//! attempt); nothing is put back in the pool.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::rc::{Rc, Weak};
use std::time::Duration;

use super::parse::{trim, BodyReader, Framing as BodyFraming, Limits};
use super::request::Method;
use super::response::{push_decimal, Body, BodyRepr, Response};
use crate::logcontext::PreserveLoggingContext;
use crate::reactor::{Address, ConnectionDone, Protocol, ReactorHandle, Transport};
use crate::{Deferred, Failure};

/// A URL the client cannot use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidUrlError {
    /// The URL given.
    pub url: String,
}

impl fmt::Display for InvalidUrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid or unsupported URL {:?} (only http://host[:port]/path)", self.url)
    }
}

impl std::error::Error for InvalidUrlError {}

/// The server's answer could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResponseError {
    /// What was wrong.
    pub reason: String,
}

impl fmt::Display for ResponseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad HTTP response: {}", self.reason)
    }
}

impl std::error::Error for ResponseError {}

/// The connection closed before the whole response arrived.
#[derive(Clone, Debug)]
pub struct ResponseIncompleteError {
    /// Why the connection closed.
    pub reason: Failure,
}

impl fmt::Display for ResponseIncompleteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the connection closed before the whole response arrived: {}", self.reason)
    }
}

impl std::error::Error for ResponseIncompleteError {}

/// An HTTP/1.1 client with a keep-alive connection pool per host. Cheap to clone; clones
/// share the pool.
#[derive(Clone)]
pub struct Client {
    inner: Rc<ClientInner>,
}

struct ClientInner {
    reactor: ReactorHandle,
    idle: RefCell<HashMap<SocketAddr, Vec<Rc<Conn>>>>,
    connect_timeout: Cell<Duration>,
    max_body: Cell<u64>,
}

impl Client {
    /// A client on `reactor`.
    pub fn new(reactor: &ReactorHandle) -> Client {
        Client {
            inner: Rc::new(ClientInner {
                reactor: reactor.clone(),
                idle: RefCell::new(HashMap::new()),
                connect_timeout: Cell::new(Duration::from_secs(30)),
                max_body: Cell::new(64 * 1024 * 1024),
            }),
        }
    }

    /// How long a connection attempt may take (default 30 s).
    pub fn set_connect_timeout(&self, timeout: Duration) {
        self.inner.connect_timeout.set(timeout);
    }

    /// The largest response body accepted (default 64 MiB).
    pub fn set_max_body(&self, max: u64) {
        self.inner.max_body.set(max);
    }

    /// How many idle connections the pool holds.
    pub fn idle_connections(&self) -> usize {
        self.inner.idle.borrow().values().map(Vec::len).sum()
    }

    /// `GET url`.
    #[must_use = "the Deferred carries the response"]
    pub fn get(&self, url: &str) -> Deferred<Response> {
        self.request(Method::Get, url, &[], Vec::new())
    }

    /// `POST url` with `body` of type `content_type`.
    #[must_use = "the Deferred carries the response"]
    pub fn post(&self, url: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Deferred<Response> {
        self.request(Method::Post, url, &[("Content-Type", content_type)], body.into())
    }

    /// A request with any method, extra header fields and body (sent with
    /// `Content-Length`). The Deferred fires with the response, whatever its status,
    /// once its body has been read; it fails with [`InvalidUrlError`], the connection's
    /// error, [`ResponseError`] or [`ResponseIncompleteError`].
    #[must_use = "the Deferred carries the response"]
    pub fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Deferred<Response> {
        let Some(target) = Target::parse(url) else {
            return crate::fail(InvalidUrlError { url: url.to_string() });
        };
        let mut wire = Vec::with_capacity(64 + target.path.len() + body.len());
        wire.extend_from_slice(method.as_str().as_bytes());
        wire.push(b' ');
        wire.extend_from_slice(target.path.as_bytes());
        wire.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        wire.extend_from_slice(target.authority.as_bytes());
        wire.extend_from_slice(b"\r\n");
        for (n, v) in headers {
            wire.extend_from_slice(n.as_bytes());
            wire.extend_from_slice(b": ");
            wire.extend_from_slice(v.as_bytes());
            wire.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || matches!(method, Method::Post | Method::Put | Method::Patch) {
            wire.extend_from_slice(b"Content-Length: ");
            push_decimal(&mut wire, body.len() as u64);
            wire.extend_from_slice(b"\r\n");
        }
        wire.extend_from_slice(b"\r\n");
        wire.extend_from_slice(&body);
        let job = Rc::new(Job {
            client: Rc::downgrade(&self.inner),
            wire,
            head_only: method == Method::Head,
            retry: Cell::new(matches!(method, Method::Get | Method::Head | Method::Put | Method::Delete)),
            stage: RefCell::new(Stage::Resolving),
            out: RefCell::new(None),
        });
        let j = Rc::downgrade(&job);
        let out = Deferred::with_canceller(move |_| {
            if let Some(job) = j.upgrade() {
                job.cancel();
            }
        });
        *job.out.borrow_mut() = Some(out.clone());
        match target.host.parse::<IpAddr>() {
            Ok(ip) => job.start(SocketAddr::new(ip, target.port)),
            Err(_) => {
                let (host, port) = (target.host.clone(), target.port);
                let resolving = self
                    .inner
                    .reactor
                    .defer_to_thread(move || (host.as_str(), port).to_socket_addrs().map(|mut a| a.next()));
                let j = job.clone();
                let resolved =
                    resolving.then(move |r: Result<std::io::Result<Option<SocketAddr>>, Failure>| match r {
                        Ok(Ok(Some(addr))) => j.start(addr),
                        Ok(Ok(None)) => j.fail(Failure::msg("the host name has no address")),
                        Ok(Err(e)) => j.fail(Failure::new(e)),
                        Err(f) => j.fail(f),
                    });
                *job.stage.borrow_mut() = Stage::Connecting(Some(resolved));
            }
        }
        out
    }
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("idle_connections", &self.idle_connections()).finish()
    }
}

/// `http://host[:port]/path?query`, split up.
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Option<Target> {
        let scheme_end = url.find("://")?;
        if !url[..scheme_end].eq_ignore_ascii_case("http") {
            return None;
        }
        let rest = &url[scheme_end + 3..];
        let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let authority = &rest[..auth_end];
        let path = match &rest[auth_end..] {
            "" => "/".to_string(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_string(),
        };
        let bad = |b: u8| b <= b' ' || b == 0x7f;
        if authority.is_empty()
            || authority.contains('@')
            || authority.bytes().any(bad)
            || path.bytes().any(bad)
        {
            return None;
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let end = v6.find(']')?;
            let port = match &v6[end + 1..] {
                "" => 80,
                p => p.strip_prefix(':')?.parse().ok()?,
            };
            (v6[..end].to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().ok()?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Target { host, port, authority: authority.to_string(), path })
    }
}

/// One request, from resolving to its response.
struct Job {
    client: Weak<ClientInner>,
    wire: Vec<u8>,
    head_only: bool,
    /// May be sent again on a new connection if a pooled one proves dead.
    retry: Cell<bool>,
    stage: RefCell<Stage>,
    out: RefCell<Option<Deferred<Response>>>,
}

enum Stage {
    Resolving,
    Connecting(Option<Deferred<()>>),
    Sent(Rc<Conn>),
    Done,
}

impl Job {
    /// Sends on a pooled connection to `addr`, or connects.
    fn start(self: &Rc<Self>, addr: SocketAddr) {
        let Some(client) = self.client.upgrade() else { return };
        if matches!(*self.stage.borrow(), Stage::Done) {
            return;
        }
        let pooled = {
            let mut idle = client.idle.borrow_mut();
            let list = idle.entry(addr).or_default();
            let mut found = None;
            while let Some(c) = list.pop() {
                if !c.lost.get() {
                    found = Some(c);
                    break;
                }
            }
            found
        };
        if let Some(conn) = pooled {
            self.send(conn, true);
            return;
        }
        self.retry.set(false);
        let _sentinel = PreserveLoggingContext::sentinel();
        let conn = Conn::new(addr, Rc::downgrade(&client));
        let c = conn.clone();
        let connecting = client.reactor.connect_tcp(
            addr,
            move |_: &Address| ClientProtocol { conn: c.clone() },
            client.connect_timeout.get(),
        );
        let job = self.clone();
        let connected = connecting.then(move |r: Result<Rc<RefCell<ClientProtocol>>, Failure>| match r {
            Ok(_) => job.send(conn, false),
            Err(f) => job.fail(f),
        });
        *self.stage.borrow_mut() = Stage::Connecting(Some(connected));
    }

    fn send(self: &Rc<Self>, conn: Rc<Conn>, reused: bool) {
        if matches!(*self.stage.borrow(), Stage::Done) {
            if !reused {
                conn.abort();
            }
            return;
        }
        *self.stage.borrow_mut() = Stage::Sent(conn.clone());
        conn.begin(self.clone(), reused);
        let t = conn.transport.borrow().clone();
        if let Some(t) = t {
            t.write(&self.wire);
        }
    }

    fn succeed(&self, response: Response) {
        *self.stage.borrow_mut() = Stage::Done;
        let out = self.out.borrow_mut().take();
        if let Some(d) = out {
            let _ = d.callback(response);
        }
    }

    fn fail(&self, failure: Failure) {
        *self.stage.borrow_mut() = Stage::Done;
        let out = self.out.borrow_mut().take();
        if let Some(d) = out {
            let _ = d.errback(failure);
        }
    }

    fn cancel(&self) {
        let stage = std::mem::replace(&mut *self.stage.borrow_mut(), Stage::Done);
        let _ = self.out.borrow_mut().take();
        match stage {
            Stage::Connecting(Some(d)) => {
                d.cancel();
            }
            Stage::Sent(conn) => conn.abort(),
            Stage::Resolving | Stage::Connecting(None) | Stage::Done => {}
        }
    }
}

/// One client connection.
struct Conn {
    addr: SocketAddr,
    client: Weak<ClientInner>,
    transport: RefCell<Option<Transport>>,
    buf: RefCell<Vec<u8>>,
    job: RefCell<Option<Rc<Job>>>,
    reading: RefCell<Reading>,
    /// The job was sent on a pooled connection and nothing of its answer came yet.
    reused_untouched: Cell<bool>,
    lost: Cell<bool>,
}

enum Reading {
    Head,
    Body(Box<(Response, BodyReader, bool)>),
    UntilClose(Box<Response>),
}

impl Conn {
    fn new(addr: SocketAddr, client: Weak<ClientInner>) -> Rc<Conn> {
        Rc::new(Conn {
            addr,
            client,
            transport: RefCell::new(None),
            buf: RefCell::new(Vec::new()),
            job: RefCell::new(None),
            reading: RefCell::new(Reading::Head),
            reused_untouched: Cell::new(false),
            lost: Cell::new(false),
        })
    }

    fn begin(&self, job: Rc<Job>, reused: bool) {
        *self.job.borrow_mut() = Some(job);
        *self.reading.borrow_mut() = Reading::Head;
        self.reused_untouched.set(reused);
    }

    fn abort(&self) {
        let _ = self.job.borrow_mut().take();
        let t = self.transport.borrow().clone();
        if let Some(t) = t {
            t.abort_connection();
        }
    }

    fn max_body(&self) -> u64 {
        self.client.upgrade().map_or(64 * 1024 * 1024, |c| c.max_body.get())
    }

    fn data_received(self: &Rc<Self>, data: &[u8]) {
        if self.job.borrow().is_none() {
            // Bytes nobody asked for: the connection is not reusable.
            self.abort();
            return;
        }
        self.reused_untouched.set(false);
        let mut buf = std::mem::take(&mut *self.buf.borrow_mut());
        buf.extend_from_slice(data);
        let used = self.process(&buf);
        buf.drain(..used);
        *self.buf.borrow_mut() = buf;
    }

    fn process(self: &Rc<Self>, buf: &[u8]) -> usize {
        let mut pos = 0;
        loop {
            let reading = std::mem::replace(&mut *self.reading.borrow_mut(), Reading::Head);
            match reading {
                Reading::Head => {
                    let mut headers = [httparse::EMPTY_HEADER; 100];
                    let mut parsed = httparse::Response::new(&mut headers);
                    match parsed.parse(&buf[pos..]) {
                        Ok(httparse::Status::Partial) => {
                            if buf.len() - pos > 64 * 1024 {
                                self.fail(Failure::new(ResponseError {
                                    reason: "response head too large".into(),
                                }));
                            }
                            return pos;
                        }
                        Err(e) => {
                            self.fail(Failure::new(ResponseError { reason: e.to_string() }));
                            return buf.len();
                        }
                        Ok(httparse::Status::Complete(n)) => {
                            pos += n;
                            let status = parsed.code.unwrap_or(0);
                            if (100..200).contains(&status) {
                                continue;
                            }
                            match self.start_body(&parsed, status) {
                                Ok(r) => *self.reading.borrow_mut() = r,
                                Err(f) => {
                                    self.fail(f);
                                    return buf.len();
                                }
                            }
                        }
                    }
                }
                Reading::Body(mut b) => match b.1.feed(&buf[pos..]) {
                    Ok(used) => {
                        pos += used;
                        if b.1.is_done() {
                            let (mut response, reader, keep_alive) = *b;
                            response.body = Body(BodyRepr::Bytes(Cow::Owned(reader.into_body())));
                            self.complete(response, keep_alive);
                            return pos;
                        }
                        *self.reading.borrow_mut() = Reading::Body(b);
                        return pos;
                    }
                    Err(r) => {
                        self.fail(Failure::new(ResponseError { reason: r.reason.to_string() }));
                        return buf.len();
                    }
                },
                Reading::UntilClose(r) => {
                    *self.reading.borrow_mut() = Reading::UntilClose(r);
                    return pos;
                }
            }
        }
    }

    /// The head is in: decide how the body is framed.
    fn start_body(&self, parsed: &httparse::Response<'_, '_>, status: u16) -> Result<Reading, Failure> {
        let mut response = Response::new(status.max(100));
        let mut length = None;
        let mut chunked = false;
        let mut close = parsed.version == Some(0);
        for h in parsed.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).ok().and_then(|v| v.trim().parse::<u64>().ok());
                length = Some(v.ok_or_else(|| {
                    Failure::new(ResponseError { reason: "invalid Content-Length".into() })
                })?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = h
                    .value
                    .split(|&b| b == b',')
                    .next_back()
                    .is_some_and(|c| trim(c).eq_ignore_ascii_case(b"chunked"));
            } else if h.name.eq_ignore_ascii_case("connection")
                && h.value.split(|&b| b == b',').any(|t| trim(t).eq_ignore_ascii_case(b"close"))
            {
                close = true;
            }
            response.headers.push((Cow::Owned(h.name.to_string()), Cow::Owned(h.value.to_vec())));
        }
        let head_only = self.job.borrow().as_ref().is_some_and(|j| j.head_only);
        let limits = Limits { max_head: 64 * 1024, max_request_line: 0, max_body: self.max_body() };
        let framing = if head_only || status == 204 || status == 304 {
            BodyFraming::None
        } else if chunked {
            BodyFraming::Chunked
        } else if let Some(n) = length {
            if n > limits.max_body {
                return Err(Failure::new(ResponseError { reason: "response body too large".into() }));
            }
            if n == 0 {
                BodyFraming::None
            } else {
                BodyFraming::Length(n)
            }
        } else {
            return Ok(Reading::UntilClose(Box::new(response)));
        };
        if framing == BodyFraming::None {
            let keep_alive = !close;
            return Ok(Reading::Body(Box::new((
                response,
                BodyReader::new(BodyFraming::Length(0), &limits),
                keep_alive,
            ))));
        }
        Ok(Reading::Body(Box::new((response, BodyReader::new(framing, &limits), !close))))
    }

    /// A whole response: hand it over and put the connection back in the pool.
    fn complete(self: &Rc<Self>, response: Response, keep_alive: bool) {
        let job = self.job.borrow_mut().take();
        if keep_alive && !self.lost.get() {
            if let Some(client) = self.client.upgrade() {
                client.idle.borrow_mut().entry(self.addr).or_default().push(self.clone());
            }
        } else {
            let t = self.transport.borrow().clone();
            if let Some(t) = t {
                t.lose_connection();
            }
        }
        if let Some(job) = job {
            job.succeed(response);
        }
    }

    fn fail(&self, failure: Failure) {
        let job = self.job.borrow_mut().take();
        let t = self.transport.borrow().clone();
        if let Some(t) = t {
            t.abort_connection();
        }
        if let Some(job) = job {
            job.fail(failure);
        }
    }

    fn connection_lost(self: &Rc<Self>, reason: Failure) {
        self.lost.set(true);
        if let Some(client) = self.client.upgrade() {
            if let Some(list) = client.idle.borrow_mut().get_mut(&self.addr) {
                list.retain(|c| !Rc::ptr_eq(c, self));
            }
        }
        let job = self.job.borrow_mut().take();
        let Some(job) = job else { return };
        let reading = std::mem::replace(&mut *self.reading.borrow_mut(), Reading::Head);
        match reading {
            Reading::UntilClose(mut response) if reason.check::<ConnectionDone>() => {
                let body = std::mem::take(&mut *self.buf.borrow_mut());
                response.body = Body(BodyRepr::Bytes(Cow::Owned(body)));
                job.succeed(*response);
            }
            _ if self.reused_untouched.get() && job.retry.replace(false) => {
                job.start(self.addr);
            }
            _ => job.fail(Failure::new(ResponseIncompleteError { reason })),
        }
    }
}

struct ClientProtocol {
    conn: Rc<Conn>,
}

impl Protocol for ClientProtocol {
    fn connection_made(&mut self, transport: Transport) {
        *self.conn.transport.borrow_mut() = Some(transport);
    }

    fn data_received(&mut self, data: &[u8]) {
        if matches!(*self.conn.reading.borrow(), Reading::UntilClose(_)) {
            self.conn.buf.borrow_mut().extend_from_slice(data);
            return;
        }
        self.conn.data_received(data);
    }

    fn connection_lost(&mut self, reason: Failure) {
        self.conn.connection_lost(reason);
    }
}
