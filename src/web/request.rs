//! What a handler gets: [`Request`], its [`Method`] and [`Version`].
//!
//! A request's head (request line and header fields) is copied once out of the read
//! buffer into one shared allocation; the method, target and header fields are spans of
//! it, so reading them allocates nothing, and the access log line at the end of the
//! request reads the same copy.

use std::fmt;
use std::ops::Range;
use std::rc::Rc;

use smallvec::SmallVec;

use crate::logcontext::LoggingContext;
use crate::reactor::Address;

/// A request method (RFC 9110 §9). Methods are case-sensitive: `get` is not `GET`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// `GET`
    Get,
    /// `HEAD`: answered as `GET` without the body unless a route names `HEAD`.
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `OPTIONS`
    Options,
    /// `PATCH` (RFC 5789)
    Patch,
    /// `TRACE`
    Trace,
    /// `CONNECT`
    Connect,
    /// Any other method token. The server answers `501 Not Implemented` unless a route
    /// names it.
    Other(Box<str>),
}

impl Method {
    /// The method's name as sent on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Patch => "PATCH",
            Method::Trace => "TRACE",
            Method::Connect => "CONNECT",
            Method::Other(m) => m,
        }
    }

    /// The method named `name` (case-sensitive, as RFC 9110 says).
    pub fn from_name(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "PATCH" => Method::Patch,
            "TRACE" => Method::Trace,
            "CONNECT" => Method::Connect,
            other => Method::Other(other.into()),
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The HTTP version of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Version {
    /// HTTP/1.0: no chunked responses; the connection stays open only if the client
    /// asked with `Connection: keep-alive`.
    Http10,
    /// HTTP/1.1.
    Http11,
}

impl Version {
    /// `"HTTP/1.0"` or `"HTTP/1.1"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "HTTP/1.0",
            Version::Http11 => "HTTP/1.1",
        }
    }
}

/// A byte range of the head copy.
pub(crate) type Span = Range<u32>;

/// A request's head: the bytes of the request line and header fields, and where each
/// part is in them.
pub(crate) struct Head {
    /// Inline up to 256 bytes, so the head of a small request is one allocation with
    /// its `Rc`.
    pub(crate) bytes: SmallVec<[u8; 256]>,
    pub(crate) method: Method,
    pub(crate) version: Version,
    /// The request-target as sent.
    pub(crate) target: Span,
    /// The path the router matches: the target's path (for an absolute-form target,
    /// the part after the authority; `/` if empty).
    pub(crate) path: Span,
    pub(crate) query: Option<Span>,
    /// Header field names and values, in the order received.
    pub(crate) headers: SmallVec<[(Span, Span); 12]>,
}

impl Head {
    pub(crate) fn slice(&self, span: &Span) -> &[u8] {
        &self.bytes[span.start as usize..span.end as usize]
    }

    /// A span of ASCII text (the head parser only lets token and URI characters into
    /// these spans).
    pub(crate) fn text(&self, span: &Span) -> &str {
        std::str::from_utf8(self.slice(span)).unwrap_or("")
    }

    pub(crate) fn path(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            self.text(&self.path)
        }
    }

    pub(crate) fn target(&self) -> &str {
        self.text(&self.target)
    }

    pub(crate) fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| self.slice(n).eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| self.slice(v))
    }
}

/// A path parameter's value: a span of the path, or the percent-decoded text.
#[derive(Clone, Debug)]
pub(crate) enum ParamValue {
    Span(Span),
    Decoded(Box<str>),
}

/// The path parameters of the matched route.
pub(crate) type Params = SmallVec<[(Rc<str>, ParamValue); 2]>;

/// One HTTP request, as a handler gets it: the head, the whole body (read before the
/// handler is called, within [`ServerConfig::max_body`](super::ServerConfig)), the
/// path parameters of the matched route, and the request's log context.
///
/// Cheap to move; the head is shared with the server's access log.
pub struct Request {
    pub(crate) head: Rc<Head>,
    pub(crate) body: Vec<u8>,
    pub(crate) params: Params,
    pub(crate) context: LoggingContext,
    pub(crate) peer: Address,
}

impl Request {
    /// The method.
    pub fn method(&self) -> &Method {
        &self.head.method
    }

    /// The HTTP version the client spoke.
    pub fn version(&self) -> Version {
        self.head.version
    }

    /// The request-target as sent (`/a/b?c=d`, or `http://host/a/b` in absolute form).
    pub fn target(&self) -> &str {
        self.head.target()
    }

    /// The path the route was matched on, without the query (still percent-encoded).
    pub fn path(&self) -> &str {
        self.head.path()
    }

    /// The query string after `?`, if any.
    pub fn query(&self) -> Option<&str> {
        self.head.query.as_ref().map(|q| self.head.text(q))
    }

    /// The value of the first header field called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.head.header(name)
    }

    /// The value of the first header field called `name`, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// Every header field, in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.head.headers.iter().map(|(n, v)| (self.head.text(n), self.head.slice(v)))
    }

    /// The path parameter `name` of the matched route (`{name}` in the pattern),
    /// percent-decoded.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(n, _)| &**n == name).map(|(_, v)| match v {
            ParamValue::Span(s) => self.head.text(s),
            ParamValue::Decoded(d) => &**d,
        })
    }

    /// The body (empty if the request had none).
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Takes the body out, leaving it empty.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    /// The request's log context (Synapse's request context, named like `GET-17`), a
    /// child of the context the site was listening in (none if that was the sentinel).
    /// The handler is called in it; callbacks it adds run in it.
    pub fn context(&self) -> &LoggingContext {
        &self.context
    }

    /// The client's address.
    pub fn peer(&self) -> &Address {
        &self.peer
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("method", self.method())
            .field("target", &self.target())
            .field("version", &self.version())
            .field("body_len", &self.body.len())
            .field("context", &self.context.name())
            .finish()
    }
}
