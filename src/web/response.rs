//! What a handler returns: [`Response`] with a [`Body`], and how a response head is
//! written (one buffer, one write, a cached `Date`).

use std::borrow::Cow;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use smallvec::SmallVec;

use super::stream::BodyWriter;

/// A response: status, header fields and body. Used by the server (what a handler
/// returns) and by the [client](super::client) (what a request fires with).
///
/// The server adds `Date`, the framing (`Content-Length` or `Transfer-Encoding:
/// chunked`) and `Connection` itself: `Content-Length`, `Transfer-Encoding` and
/// `Connection` set here are replaced, except that `Connection: close` is honoured and
/// a `Content-Length` on a [streamed](Response::stream) body makes it length-delimited.
///
/// What the status or method forbids is not sent (RFC 9110 §6.4.1, §8.6): no body on a
/// `204`, `205` or `304` or to a `HEAD`; no `Content-Length` on a `204`, and
/// `Content-Length: 0` on a `205`. A `304`, or an empty body to a `HEAD`, keeps a
/// `Content-Length` set here (it should be what a `200` to a `GET` would carry). A 1xx
/// status cannot be a handler's answer: the client gets `500` instead.
///
/// ```
/// use weft::web::Response;
///
/// let r = Response::new(200).header("Content-Type", "text/plain").body("hello, world\n");
/// assert_eq!(r.status(), 200);
/// assert_eq!(r.header_value("content-type"), Some(&b"text/plain"[..]));
/// assert_eq!(r.body_bytes(), b"hello, world\n");
/// ```
pub struct Response {
    pub(crate) status: u16,
    pub(crate) headers: HeaderList,
    pub(crate) body: Body,
}

/// A response's header fields: the first four inline, so a small response allocates
/// nothing for them.
pub(crate) type HeaderList = SmallVec<[(Cow<'static, str>, Cow<'static, [u8]>); 4]>;

/// A response body: bytes, or a stream written later through a [`BodyWriter`].
pub struct Body(pub(crate) BodyRepr);

pub(crate) enum BodyRepr {
    Bytes(Cow<'static, [u8]>),
    Stream(Box<dyn FnOnce(BodyWriter)>),
}

/// A header field name or value a response cannot carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidHeaderError {
    /// The field name given.
    pub name: String,
}

impl fmt::Display for InvalidHeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid header field {:?}: the name must be a token and the value free of CR, LF and NUL",
            self.name
        )
    }
}

impl std::error::Error for InvalidHeaderError {}

impl Response {
    /// A response with `status` and an empty body.
    ///
    /// # Panics
    ///
    /// If `status` is not in 100..=999.
    #[track_caller]
    pub fn new(status: u16) -> Response {
        assert!((100..=999).contains(&status), "invalid status code {status}");
        Response { status, headers: SmallVec::new(), body: Body(BodyRepr::Bytes(Cow::Borrowed(b""))) }
    }

    /// A `200 OK` with `Content-Type: text/plain; charset=utf-8` and `body`.
    pub fn text(body: impl Into<Body>) -> Response {
        Response::new(200).header("Content-Type", "text/plain; charset=utf-8").body(body)
    }

    /// A response with `status`, a plain-text body saying what the status means, and
    /// `detail` if not empty (what the server sends for its own errors).
    pub fn error(status: u16, detail: &str) -> Response {
        let mut text = format!("{status} {}", reason_phrase(status));
        if !detail.is_empty() {
            text.push_str(": ");
            text.push_str(detail);
        }
        text.push('\n');
        Response::new(status).header("Content-Type", "text/plain; charset=utf-8").body(text)
    }

    /// A response whose body is written later, with back-pressure, by `produce`: the
    /// server calls it with a [`BodyWriter`] once the head is sent (chunked for
    /// HTTP/1.1, until the connection closes for HTTP/1.0, or length-delimited if a
    /// `Content-Length` header is set). `produce` is not called for a `HEAD` request or
    /// if the client has gone.
    pub fn stream(status: u16, produce: impl FnOnce(BodyWriter) + 'static) -> Response {
        Response::new(status).body(Body(BodyRepr::Stream(Box::new(produce))))
    }

    /// Adds a header field.
    ///
    /// # Panics
    ///
    /// If the name is not a token or the value holds CR, LF or NUL (a response
    /// splitting attempt); [`try_header`](Self::try_header) returns an error instead.
    #[track_caller]
    pub fn header(self, name: impl Into<Cow<'static, str>>, value: impl Into<HeaderValue>) -> Response {
        match self.try_header(name, value) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    /// Adds a header field, or says why it cannot.
    ///
    /// # Errors
    ///
    /// [`InvalidHeaderError`] if the name is not a token or the value holds CR, LF or
    /// NUL.
    pub fn try_header(
        mut self,
        name: impl Into<Cow<'static, str>>,
        value: impl Into<HeaderValue>,
    ) -> Result<Response, InvalidHeaderError> {
        let name = name.into();
        let value = value.into().0;
        let name_ok = !name.is_empty() && name.bytes().all(is_token);
        let value_ok = !value.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0);
        if !name_ok || !value_ok {
            return Err(InvalidHeaderError { name: name.into_owned() });
        }
        self.headers.push((name, value));
        Ok(self)
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Body>) -> Response {
        self.body = body.into();
        self
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The value of the first header field called `name` (case-insensitive).
    pub fn header_value(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| &**v)
    }

    /// Every header field, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.headers.iter().map(|(n, v)| (&**n, &**v))
    }

    /// The body's bytes (empty for a streamed body).
    pub fn body_bytes(&self) -> &[u8] {
        match &self.body.0 {
            BodyRepr::Bytes(b) => b,
            BodyRepr::Stream(_) => b"",
        }
    }

    /// The body's bytes as text, if it is UTF-8.
    pub fn body_text(&self) -> Option<&str> {
        std::str::from_utf8(self.body_bytes()).ok()
    }

    /// True if the response asks for the connection to close after it.
    pub(crate) fn wants_close(&self) -> bool {
        self.headers.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("connection")
                && v.split(|&b| b == b',').any(|t| super::parse::trim(t).eq_ignore_ascii_case(b"close"))
        })
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = match &self.body.0 {
            BodyRepr::Bytes(b) => format!("{} bytes", b.len()),
            BodyRepr::Stream(_) => "stream".to_string(),
        };
        f.debug_struct("Response")
            .field("status", &self.status)
            .field("headers", &self.headers.len())
            .field("body", &body)
            .finish()
    }
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            BodyRepr::Bytes(b) => write!(f, "Body({} bytes)", b.len()),
            BodyRepr::Stream(_) => f.write_str("Body(stream)"),
        }
    }
}

impl From<&'static str> for Body {
    fn from(s: &'static str) -> Body {
        Body(BodyRepr::Bytes(Cow::Borrowed(s.as_bytes())))
    }
}

impl From<&'static [u8]> for Body {
    fn from(s: &'static [u8]) -> Body {
        Body(BodyRepr::Bytes(Cow::Borrowed(s)))
    }
}

impl From<String> for Body {
    fn from(s: String) -> Body {
        Body(BodyRepr::Bytes(Cow::Owned(s.into_bytes())))
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Body {
        Body(BodyRepr::Bytes(Cow::Owned(v)))
    }
}

/// A header field value: any bytes but CR, LF and NUL. Made from `&'static str`,
/// `String`, `&'static [u8]`, `Vec<u8>` or a number.
#[derive(Clone, Debug)]
pub struct HeaderValue(pub(crate) Cow<'static, [u8]>);

impl From<&'static str> for HeaderValue {
    fn from(s: &'static str) -> HeaderValue {
        HeaderValue(Cow::Borrowed(s.as_bytes()))
    }
}

impl From<String> for HeaderValue {
    fn from(s: String) -> HeaderValue {
        HeaderValue(Cow::Owned(s.into_bytes()))
    }
}

impl From<&'static [u8]> for HeaderValue {
    fn from(s: &'static [u8]) -> HeaderValue {
        HeaderValue(Cow::Borrowed(s))
    }
}

impl From<Vec<u8>> for HeaderValue {
    fn from(v: Vec<u8>) -> HeaderValue {
        HeaderValue(Cow::Owned(v))
    }
}

impl From<u64> for HeaderValue {
    fn from(n: u64) -> HeaderValue {
        HeaderValue(Cow::Owned(n.to_string().into_bytes()))
    }
}

/// RFC 9110 `tchar`.
pub(crate) fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The reason phrase for a status code (RFC 9110 §15); empty for unknown codes.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        103 => "Early Hints",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// How a response's body is delimited on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// No framing header: the body runs until the connection closes (HTTP/1.0 streams).
    UntilClose,
    /// No body and no length (1xx, 204, 304).
    NoBody,
}

/// Writes a response head into `out`: status line, `Date`, the framing header, the
/// response's own fields (without framing and `Connection` fields), `Connection` if
/// `connection` is given, and the empty line.
pub(crate) fn write_head(
    out: &mut Vec<u8>,
    response: &Response,
    framing: Framing,
    connection: Option<&'static str>,
    date_line: &[u8],
) {
    let status = response.status;
    if status == 200 {
        out.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
        push_decimal(out, u64::from(status));
        out.push(b' ');
        out.extend_from_slice(reason_phrase(status).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if status >= 200 {
        out.extend_from_slice(date_line);
    }
    match framing {
        Framing::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::UntilClose | Framing::NoBody => {}
    }
    for (name, value) in &response.headers {
        if is_hop_or_framing(name) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(c) = connection {
        out.extend_from_slice(b"Connection: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn is_hop_or_framing(name: &str) -> bool {
    name.eq_ignore_ascii_case("content-length")
        || name.eq_ignore_ascii_case("transfer-encoding")
        || name.eq_ignore_ascii_case("connection")
        || name.eq_ignore_ascii_case("date")
}

/// Appends `n` in decimal.
pub(crate) fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends `n` in hexadecimal (a chunk size).
pub(crate) fn push_hex(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 16];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b"0123456789abcdef"[(n % 16) as usize];
        n /= 16;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// The `Date` field line for the current second (RFC 9110 §6.6.1), formatted once a
/// second rather than per response. Times are the reactor's (monotonic); the wall clock
/// is read only when the line is renewed.
#[derive(Debug)]
pub(crate) struct DateLine {
    /// Reactor time until which `line` is right.
    valid_until: Option<std::time::Duration>,
    line: [u8; 37],
}

impl DateLine {
    pub(crate) const fn new() -> DateLine {
        DateLine { valid_until: None, line: [0; 37] }
    }

    /// The line for reactor time `now`: `Date: <IMF-fixdate>\r\n`.
    pub(crate) fn at(&mut self, now: std::time::Duration) -> [u8; 37] {
        if self.valid_until.map_or(true, |until| now >= until) {
            let wall = SystemTime::now();
            let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
            let text = format!("Date: {}\r\n", httpdate::fmt_http_date(wall));
            if text.len() == self.line.len() {
                self.line.copy_from_slice(text.as_bytes());
            }
            let to_next_second =
                std::time::Duration::from_nanos(1_000_000_000 - u64::from(since_epoch.subsec_nanos()));
            self.valid_until = Some(now + to_next_second);
        }
        self.line
    }
}
