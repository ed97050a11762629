//! The servlet table: [`Router`] maps a method and a path pattern to a [`Handler`].

use std::fmt;
use std::future::Future;
use std::rc::Rc;

use smallvec::SmallVec;

use super::request::{Head, Method, ParamValue, Params, Request};
use super::response::Response;
use crate::future::Cancellable;
use crate::{ensure_deferred, Deferred, Failure};

/// Something that answers requests: any `Fn(Request) -> R` where `R` is a
/// [`Response`], a `Deferred<Response>` or a future of `Result<Response, Failure>`
/// (run through [`ensure_deferred`]), or such a function wrapped in
/// [`cancellable`](crate::future::cancellable).
///
/// The handler is called in the request's log context, after the whole body has been
/// read. A panic in it becomes a `500`; so does a failed Deferred or future.
///
/// # Cancellation
///
/// If the client goes away (or the request times out) before the response, the
/// handler's Deferred is cancelled only if the handler is marked cancellable (Synapse's
/// `@cancellable`); otherwise it runs to the end and its response is dropped.
pub trait Handler: 'static {
    /// Starts answering `request`.
    fn call(&self, request: Request) -> Reply;

    /// True if the request may be cancelled when its client goes away.
    fn is_cancellable(&self) -> bool {
        false
    }
}

/// What a handler returned: a response now, or a Deferred of one. Made by
/// [`IntoReply`].
pub struct Reply(pub(crate) ReplyRepr);

// Boxing the response would cost an allocation per request on the hot path.
#[allow(clippy::large_enum_variant)]
pub(crate) enum ReplyRepr {
    Ready(Response),
    Later(Deferred<Response>),
}

/// What a handler function may return: [`Response`], `Deferred<Response>`, or a future
/// of `Result<Response, Failure>` (an `async` block), which runs as a task through
/// [`ensure_deferred`].
pub trait IntoReply {
    /// The reply.
    fn into_reply(self) -> Reply;
}

impl IntoReply for Response {
    fn into_reply(self) -> Reply {
        Reply(ReplyRepr::Ready(self))
    }
}

impl IntoReply for Deferred<Response> {
    fn into_reply(self) -> Reply {
        Reply(ReplyRepr::Later(self))
    }
}

impl<F> IntoReply for F
where
    F: Future<Output = Result<Response, Failure>> + 'static,
{
    fn into_reply(self) -> Reply {
        Reply(ReplyRepr::Later(ensure_deferred(self)))
    }
}

impl<F, R> Handler for F
where
    F: Fn(Request) -> R + 'static,
    R: IntoReply,
{
    fn call(&self, request: Request) -> Reply {
        self(request).into_reply()
    }
}

impl<H: Handler> Handler for Cancellable<H> {
    fn call(&self, request: Request) -> Reply {
        self.0.call(request)
    }

    fn is_cancellable(&self) -> bool {
        true
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ReplyRepr::Ready(r) => f.debug_tuple("Reply::Ready").field(r).finish(),
            ReplyRepr::Later(_) => f.write_str("Reply::Later"),
        }
    }
}

/// The servlet table (Synapse's `JsonResource`): routes of (method, path pattern,
/// handler), tried in the order they were added; the first whose method and pattern
/// match answers.
///
/// A pattern is a path of `/`-separated segments: a literal segment matches itself, a
/// `{name}` segment matches any one non-empty segment (read it with
/// [`Request::param`], percent-decoded), and a last `{*name}` segment matches the rest
/// of the path, slashes included.
///
/// - A path that some route matches, with a method none of them has: `405 Method Not
///   Allowed` with an `Allow` field listing the methods that would work.
/// - `HEAD` uses the `GET` route of a path unless a `HEAD` route is added; the body is
///   not sent.
/// - A method the router has never heard of: `501 Not Implemented`. No match: `404`.
///
/// ```
/// use weft::future::cancellable;
/// use weft::web::{Request, Response, Router};
///
/// use weft::Failure;
///
/// // A Synapse servlet's `on_GET`, as an `async fn`.
/// async fn on_get_profile(req: Request) -> Result<Response, Failure> {
///     let user = req.param("user").ok_or_else(|| Failure::msg("no user"))?;
///     Ok(Response::text(format!("profile of {user}\n")))
/// }
///
/// let router = Router::new()
///     .get("/hello", |_req: Request| Response::text("hello, world\n"))
///     .get("/rooms/{room}/messages", cancellable(|req: Request| {
///         let room = req.param("room").unwrap_or("").to_string();
///         async move { Ok(Response::text(format!("messages of {room}\n"))) }
///     }))
///     .get("/profile/{user}", cancellable(on_get_profile));
/// assert_eq!(router.len(), 3);
/// ```
#[derive(Default)]
pub struct Router {
    routes: Vec<Route>,
}

struct Route {
    method: Method,
    pattern: Vec<Segment>,
    handler: Rc<dyn Handler>,
}

enum Segment {
    Literal(Box<str>),
    Param(Rc<str>),
    Rest(Rc<str>),
}

/// The outcome of looking a request up.
pub(crate) enum Lookup {
    Found { handler: Rc<dyn Handler>, params: Params },
    NotFound,
    MethodNotAllowed(String),
    NotImplemented,
    BadPath,
}

impl Router {
    /// An empty table (everything is `404`).
    pub fn new() -> Router {
        Router::default()
    }

    /// Adds a route: `method` requests whose path matches `pattern` go to `handler`.
    ///
    /// # Panics
    ///
    /// If `pattern` does not start with `/`, has an empty `{}` segment, or has a
    /// `{*rest}` segment that is not the last.
    #[track_caller]
    pub fn route(mut self, method: Method, pattern: &str, handler: impl Handler) -> Router {
        self.routes.push(Route { method, pattern: parse_pattern(pattern), handler: Rc::new(handler) });
        self
    }

    /// Adds a `GET` route (which also answers `HEAD`).
    #[track_caller]
    pub fn get(self, pattern: &str, handler: impl Handler) -> Router {
        self.route(Method::Get, pattern, handler)
    }

    /// Adds a `POST` route.
    #[track_caller]
    pub fn post(self, pattern: &str, handler: impl Handler) -> Router {
        self.route(Method::Post, pattern, handler)
    }

    /// Adds a `PUT` route.
    #[track_caller]
    pub fn put(self, pattern: &str, handler: impl Handler) -> Router {
        self.route(Method::Put, pattern, handler)
    }

    /// Adds a `DELETE` route.
    #[track_caller]
    pub fn delete(self, pattern: &str, handler: impl Handler) -> Router {
        self.route(Method::Delete, pattern, handler)
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True if there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Finds the handler for a request head.
    pub(crate) fn lookup(&self, head: &Head) -> Lookup {
        let path = head.path();
        let method = &head.method;
        let mut get_route = None;
        let mut path_matched = false;
        for route in &self.routes {
            let Some(params) = match_path(&route.pattern, path, head) else { continue };
            path_matched = true;
            if route.method == *method {
                return match params {
                    Some(params) => Lookup::Found { handler: route.handler.clone(), params },
                    None => Lookup::BadPath,
                };
            }
            if *method == Method::Head && route.method == Method::Get && get_route.is_none() {
                get_route = Some((route, params));
            }
        }
        if let Some((route, params)) = get_route {
            return match params {
                Some(params) => Lookup::Found { handler: route.handler.clone(), params },
                None => Lookup::BadPath,
            };
        }
        let known = !matches!(method, Method::Other(_)) || self.routes.iter().any(|r| r.method == *method);
        if !known {
            return Lookup::NotImplemented;
        }
        if !path_matched {
            return Lookup::NotFound;
        }
        let mut allow: Vec<&str> = Vec::new();
        for route in &self.routes {
            if match_path(&route.pattern, path, head).is_some() {
                let name = route.method.as_str();
                if !allow.contains(&name) {
                    allow.push(name);
                }
                if route.method == Method::Get && !allow.contains(&"HEAD") {
                    allow.push("HEAD");
                }
            }
        }
        Lookup::MethodNotAllowed(allow.join(", "))
    }
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router").field("routes", &self.routes.len()).finish()
    }
}

#[track_caller]
fn parse_pattern(pattern: &str) -> Vec<Segment> {
    let Some(rest) = pattern.strip_prefix('/') else {
        panic!("route pattern {pattern:?} does not start with '/'");
    };
    if rest.is_empty() {
        return Vec::new();
    }
    let parts: Vec<&str> = rest.split('/').collect();
    let last = parts.len() - 1;
    parts
        .iter()
        .enumerate()
        .map(|(i, part)| match part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
            Some(name) if name.starts_with('*') => {
                assert!(i == last, "route pattern {pattern:?}: {{*..}} must be the last segment");
                assert!(name.len() > 1, "route pattern {pattern:?} has an unnamed segment");
                Segment::Rest(name[1..].into())
            }
            Some(name) => {
                assert!(!name.is_empty(), "route pattern {pattern:?} has an unnamed segment");
                Segment::Param(name.into())
            }
            None => Segment::Literal((*part).into()),
        })
        .collect()
}

/// Matches `path` against `pattern`: `None` if it does not match, `Some(None)` if it
/// matches but a parameter is not valid percent-encoded UTF-8, else the parameters.
fn match_path(pattern: &[Segment], path: &str, head: &Head) -> Option<Option<Params>> {
    let rest = path.strip_prefix('/')?;
    let path_offset = head.path.start as usize + 1;
    let mut params = SmallVec::new();
    let mut valid = true;
    let mut segments = if rest.is_empty() { None } else { Some(rest) };
    let mut consumed = 0usize;
    for seg in pattern {
        let remaining = segments?;
        let (part, next) = match remaining.find('/') {
            Some(i) => (&remaining[..i], Some(&remaining[i + 1..])),
            None => (remaining, None),
        };
        match seg {
            Segment::Literal(l) => {
                if **l != *part && !(part.contains('%') && literal_matches_encoded(l, part)) {
                    return None;
                }
            }
            Segment::Param(name) => {
                if part.is_empty() {
                    return None;
                }
                let start = path_offset + consumed;
                match param_value(part, start) {
                    Some(v) => params.push((name.clone(), v)),
                    None => valid = false,
                }
            }
            Segment::Rest(name) => {
                let start = path_offset + consumed;
                match param_value(remaining, start) {
                    Some(v) => params.push((name.clone(), v)),
                    None => valid = false,
                }
                return Some(valid.then_some(params));
            }
        }
        consumed += part.len() + 1;
        segments = next;
    }
    if segments.is_some() {
        return None;
    }
    Some(valid.then_some(params))
}

/// Whether path segment `part`, which holds `%`, matches `literal` once its
/// percent-encoded unreserved characters are decoded: `/%7Euser` is `/~user` and
/// `/hel%6Co` is `/hello` (RFC 9110 §4.2.3, RFC 3986 §6.2.2.2). An encoded reserved
/// character stays encoded: `a%2Fb` is not `a/b`, nor `a%3Bb` `a;b`.
fn literal_matches_encoded(literal: &str, part: &str) -> bool {
    let (lit, raw) = (literal.as_bytes(), part.as_bytes());
    let (mut i, mut j) = (0, 0);
    while j < raw.len() {
        // The next character of `part` and how many bytes it took.
        let unreserved = |b: &u8| b.is_ascii_alphanumeric() || b"-._~".contains(b);
        let (byte, width) = match raw[j] {
            b'%' => match raw
                .get(j + 1..j + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(unreserved)
            {
                Some(b) => (b, 3),
                None => (b'%', 1),
            },
            b => (b, 1),
        };
        if lit.get(i) != Some(&byte) {
            return false;
        }
        i += 1;
        j += width;
    }
    i == lit.len()
}

/// A parameter's value: a span of the head if it has no `%`, else the decoded text.
fn param_value(raw: &str, start: usize) -> Option<ParamValue> {
    if !raw.contains('%') {
        return Some(ParamValue::Span(start as u32..(start + raw.len()) as u32));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(|s| ParamValue::Decoded(s.into_boxed_str()))
}
