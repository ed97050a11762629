//! Reading requests off the wire: the head through `httparse`, then the checks RFC 9112
//! asks of a server before it may trust the framing, then the body (by
//! `Content-Length` or chunked).
//!
//! Everything here works on a byte slice and says how much of it was used, so the
//! connection can parse straight from the reactor's read buffer and keep only an
//! unfinished remainder. A rejected request ([`Reject`]) always ends the connection:
//! once the framing is in doubt, nothing after it can be trusted.

use std::mem::MaybeUninit;
use std::rc::Rc;

use smallvec::SmallVec;

use super::request::{Head, Method, Span, Version};

/// The most header fields a request may have; more is `431`.
pub(crate) const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;

/// The limits a head and body are checked against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub(crate) max_head: usize,
    pub(crate) max_request_line: usize,
    pub(crate) max_body: u64,
}

/// Why a request is refused; the connection closes after the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reject {
    pub(crate) status: u16,
    pub(crate) reason: &'static str,
}

impl Reject {
    const fn new(status: u16, reason: &'static str) -> Reject {
        Reject { status, reason }
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// The chunked transfer coding.
    Chunked,
}

/// A complete, checked head.
pub(crate) struct ParsedHead {
    pub(crate) head: Rc<Head>,
    /// Bytes of the buffer the head used.
    pub(crate) consumed: usize,
    pub(crate) framing: Framing,
    /// The client allows the connection to stay open after this request.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub(crate) expect_continue: bool,
}

/// The outcome of trying to parse a head from the start of a buffer.
pub(crate) enum HeadParse {
    /// More bytes are needed.
    Partial,
    Complete(ParsedHead),
    Error(Reject),
}

/// Parses and checks the head at the start of `buf`.
pub(crate) fn parse_head(buf: &[u8], limits: &Limits) -> HeadParse {
    // Uninitialised slots: filling 100 empty headers per request cost more than parsing.
    let mut headers: [MaybeUninit<httparse::Header<'_>>; MAX_HEADERS] =
        std::array::from_fn(|_| MaybeUninit::uninit());
    let mut req = httparse::Request::new(&mut []);
    let consumed = match req.parse_with_uninit_headers(buf, &mut headers) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return partial(buf, limits),
        Err(httparse::Error::TooManyHeaders) => {
            return HeadParse::Error(Reject::new(431, "too many header fields"))
        }
        Err(httparse::Error::Version) => return version_error(buf, limits),
        Err(httparse::Error::HeaderName) => {
            return HeadParse::Error(Reject::new(
                400,
                "invalid header field name (whitespace before the colon, or an obsolete line fold)",
            ))
        }
        Err(httparse::Error::HeaderValue) => {
            return HeadParse::Error(Reject::new(400, "invalid header field value"))
        }
        Err(httparse::Error::NewLine) => return HeadParse::Error(Reject::new(400, "invalid line ending")),
        Err(_) => return HeadParse::Error(Reject::new(400, "malformed request line")),
    };
    if consumed > limits.max_head {
        return HeadParse::Error(Reject::new(431, "request header section too large"));
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return HeadParse::Error(Reject::new(400, "malformed request line"));
    };
    if target.len() > limits.max_request_line {
        return HeadParse::Error(Reject::new(414, "request-target too long"));
    }
    let version = if version == 0 { Version::Http10 } else { Version::Http11 };
    let method = Method::from_name(method);
    let span = |s: &[u8]| -> Span {
        let start = s.as_ptr() as usize - buf.as_ptr() as usize;
        start as u32..(start + s.len()) as u32
    };
    let target_span = span(target.as_bytes());
    let Target { path, query, authority } = match split_target(&method, target) {
        Ok(p) => p,
        Err(r) => return HeadParse::Error(r),
    };
    let base = target_span.start;
    let path = base + path.start..base + path.end;
    let query = query.map(|q| base + q.start..base + q.end);
    let authority = authority.map(|a| base + a.start..base + a.end);

    let mut fields = Fields::default();
    let mut spans: SmallVec<[(Span, Span); 12]> = SmallVec::with_capacity(req.headers.len());
    for h in req.headers.iter() {
        let mut value = span(h.value);
        if let (Some(a), true) = (&authority, h.name.eq_ignore_ascii_case("host")) {
            // RFC 9112 §3.2.2: with an absolute-form target, the Host field is
            // ignored and the target's authority used instead (still checked below:
            // an HTTP/1.1 request must carry exactly one valid Host field either way).
            value = a.clone();
        }
        spans.push((span(h.name.as_bytes()), value));
        if let Err(r) = fields.note(h.name, h.value) {
            return HeadParse::Error(r);
        }
    }
    let fields_hosts = fields.hosts;
    let checked = match fields.check(version, &method, limits) {
        Ok(c) => c,
        Err(r) => return HeadParse::Error(r),
    };
    let mut bytes = SmallVec::from_slice(&buf[..consumed]);
    if let (Some(a), 0) = (authority, fields_hosts) {
        // An HTTP/1.0 absolute-form request without Host: the target's authority is
        // its host all the same; the field name is kept after the head's bytes.
        let name = bytes.len() as u32;
        bytes.extend_from_slice(b"Host");
        spans.push((name..name + 4, a));
    }
    let head = Head { bytes, method, version, target: target_span, path, query, headers: spans };
    HeadParse::Complete(ParsedHead {
        head: Rc::new(head),
        consumed,
        framing: checked.framing,
        keep_alive: checked.keep_alive,
        expect_continue: checked.expect_continue,
    })
}

/// Where the request line starts: after the empty lines a server ignores before it
/// (RFC 9112 §2.2; httparse skips them too).
fn request_line_start(buf: &[u8]) -> usize {
    buf.iter().position(|&b| b != b'\r' && b != b'\n').unwrap_or(buf.len())
}

/// Whether the request at the start of `buf` (complete or not, valid or not) is a
/// `HEAD`: its refusal then gets no body either (RFC 9110 §9.3.2).
pub(crate) fn is_head_request(buf: &[u8]) -> bool {
    let start = request_line_start(buf);
    buf[start..].starts_with(b"HEAD ")
}

/// A head that is not complete yet: too long already, or wait for more.
fn partial(buf: &[u8], limits: &Limits) -> HeadParse {
    let start = request_line_start(buf);
    let line = &buf[start..];
    if line.len() > limits.max_request_line + 16 && !line[..limits.max_request_line + 16].contains(&b'\n') {
        return HeadParse::Error(Reject::new(414, "request line too long"));
    }
    if buf.len() >= limits.max_head {
        return HeadParse::Error(Reject::new(431, "request header section too large"));
    }
    HeadParse::Partial
}

/// httparse refuses any version but HTTP/1.0 and HTTP/1.1. A higher HTTP/1 minor
/// version is read as HTTP/1.1 (RFC 9110 §2.5: a recipient SHOULD process a message of
/// a higher minor version as the highest one it implements; h11 does the same), another
/// `HTTP/x.y` is 505, anything else a malformed request line.
fn version_error(buf: &[u8], limits: &Limits) -> HeadParse {
    let start = request_line_start(buf);
    let Some(line_len) = buf[start..].iter().position(|&b| b == b'\n') else {
        // The version may still be cut short ("HTTP/1.2" is refused before its line
        // ends): wait for the whole line, within the usual limits.
        return partial(buf, limits);
    };
    let line = &buf[start..start + line_len];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // `method SP request-target SP HTTP-version`: a space in the target is no version.
    let mut parts = line.split(|&b| b == b' ');
    let version = match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(_), Some(_), Some(version), None) => version,
        _ => return HeadParse::Error(Reject::new(400, "malformed request line")),
    };
    let well_formed = version.len() == 8
        && version.starts_with(b"HTTP/")
        && version[5].is_ascii_digit()
        && version[6] == b'.'
        && version[7].is_ascii_digit();
    if !well_formed {
        return HeadParse::Error(Reject::new(400, "malformed request line"));
    }
    if version[5] != b'1' {
        return HeadParse::Error(Reject::new(505, "HTTP version not supported"));
    }
    if version[7] < b'2' {
        // HTTP/1.0 or 1.1 that httparse refused all the same: something else is wrong.
        return HeadParse::Error(Reject::new(400, "malformed request line"));
    }
    // HTTP/1.2 to HTTP/1.9: parse a copy saying HTTP/1.1 (at most one more byte than
    // a head may have, so an over-long head is still 431).
    let minor = start + line.len() - 1;
    let mut copy = buf[..buf.len().min(limits.max_head + 1)].to_vec();
    let Some(digit) = copy.get_mut(minor) else {
        return HeadParse::Error(Reject::new(431, "request header section too large"));
    };
    *digit = b'1';
    parse_head(&copy, limits)
}

/// Where a request-target's parts are, as offsets into it.
struct Target {
    /// The path the router matches.
    path: Span,
    query: Option<Span>,
    /// The authority of an absolute-form target.
    authority: Option<Span>,
}

/// Splits a request-target into the path the router matches and the query, as offsets
/// into the target (RFC 9112 §3.2): origin-form `/p?q`, absolute-form
/// `http://host/p?q`, asterisk-form `*` (OPTIONS only). CONNECT's authority-form is not
/// supported. A fragment (`#`) is in none of the forms, nor a byte past 0x7F: 400
/// (RFC 9112 §3, as for any invalid request-line).
fn split_target(method: &Method, target: &str) -> Result<Target, Reject> {
    let len = target.len() as u32;
    if *method == Method::Connect {
        return Err(Reject::new(501, "CONNECT is not supported"));
    }
    if target.contains('#') {
        return Err(Reject::new(400, "a request-target cannot carry a fragment"));
    }
    if !target.is_ascii() {
        // httparse lets bytes past 0x7F through; a URI has none (RFC 3986 §2: they are
        // sent percent-encoded). hyper refuses them too.
        return Err(Reject::new(400, "a request-target must be ASCII (percent-encode the rest)"));
    }
    if target == "*" {
        return if *method == Method::Options {
            Ok(Target { path: 0..1, query: None, authority: None })
        } else {
            Err(Reject::new(400, "the asterisk-form is only for OPTIONS"))
        };
    }
    let (path_start, authority) = if target.starts_with('/') {
        (0, None)
    } else {
        let lower = target.get(..8).unwrap_or(target).to_ascii_lowercase();
        let after_scheme = if lower.starts_with("http://") {
            7
        } else if lower.starts_with("https://") {
            8
        } else {
            return Err(Reject::new(400, "invalid request-target"));
        };
        let rest = &target[after_scheme..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if authority_end == 0 {
            return Err(Reject::new(400, "absolute-form request-target without a host"));
        }
        let authority = &rest[..authority_end];
        // RFC 9110 §4.2.4: userinfo in an http(s) URI is to be treated as an error.
        if authority.contains('@') || !valid_host(authority.as_bytes()) {
            return Err(Reject::new(400, "invalid authority in the request-target"));
        }
        let end = (after_scheme + authority_end) as u32;
        (end, Some(after_scheme as u32..end))
    };
    let (path, query) = match target[path_start as usize..].find('?') {
        Some(q) => {
            let q = path_start + q as u32;
            (path_start..q, Some(q + 1..len))
        }
        None => (path_start..len, None),
    };
    Ok(Target { path, query, authority })
}

/// What the header fields said about framing and the connection, gathered in one pass.
#[derive(Default)]
struct Fields {
    hosts: u32,
    content_length: Option<u64>,
    /// Transfer codings in order, lowercased, across every Transfer-Encoding line.
    transfer_codings: Option<SmallVec<[Box<str>; 2]>>,
    close: bool,
    keep_alive: bool,
    expect: Option<bool>,
}

struct Checked {
    framing: Framing,
    keep_alive: bool,
    expect_continue: bool,
}

impl Fields {
    fn note(&mut self, name: &str, value: &[u8]) -> Result<(), Reject> {
        if name.eq_ignore_ascii_case("host") {
            self.hosts += 1;
            if !valid_host(value) {
                return Err(Reject::new(400, "invalid Host header field"));
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 §6.3 lets a list of identical values ("5, 5") stand for one; an
            // empty element ("5,", ", 5") is no `1*DIGIT` and is refused, as hyper does.
            for item in value.split(|&b| b == b',').map(trim) {
                let n = parse_length(item).ok_or(Reject::new(400, "invalid Content-Length"))?;
                match self.content_length {
                    Some(m) if m != n => return Err(Reject::new(400, "conflicting Content-Length values")),
                    _ => self.content_length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let codings = self.transfer_codings.get_or_insert_with(SmallVec::new);
            for item in list_items(value) {
                let coding = item.split(|&b| b == b';').next().unwrap_or(b"");
                let coding = String::from_utf8_lossy(trim(coding)).to_ascii_lowercase();
                codings.push(coding.into());
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for item in list_items(value) {
                if item.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if item.eq_ignore_ascii_case(b"keep-alive") {
                    self.keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            let continue_only = list_items(value).all(|i| i.eq_ignore_ascii_case(b"100-continue"));
            let prior = self.expect.unwrap_or(true);
            self.expect = Some(prior && continue_only);
        }
        Ok(())
    }

    /// The framing rules of RFC 9112 §6.1 and §6.3 and the Host rule of §3.2.
    fn check(self, version: Version, method: &Method, limits: &Limits) -> Result<Checked, Reject> {
        if self.hosts > 1 {
            return Err(Reject::new(400, "more than one Host header field"));
        }
        if self.hosts == 0 && version == Version::Http11 {
            return Err(Reject::new(400, "HTTP/1.1 request without a Host header field"));
        }
        let framing = match (self.transfer_codings, self.content_length) {
            (Some(_), _) if version == Version::Http10 => {
                return Err(Reject::new(400, "Transfer-Encoding in an HTTP/1.0 request"))
            }
            (Some(_), Some(_)) => return Err(Reject::new(400, "both Transfer-Encoding and Content-Length")),
            (Some(codings), None) => {
                match codings.last().map(|c| &**c) {
                    Some("chunked") => {}
                    _ => return Err(Reject::new(400, "the final transfer coding is not chunked")),
                }
                let chunked = codings.iter().filter(|c| &***c == "chunked").count();
                if chunked > 1 {
                    return Err(Reject::new(400, "chunked applied more than once"));
                }
                if codings.len() > 1 {
                    return Err(Reject::new(501, "transfer coding not implemented"));
                }
                Framing::Chunked
            }
            (None, Some(0)) | (None, None) => Framing::None,
            (None, Some(n)) => Framing::Length(n),
        };
        if let Framing::Length(n) = framing {
            if n > limits.max_body {
                return Err(Reject::new(413, "request body too large"));
            }
        }
        let _ = method;
        let keep_alive = match version {
            Version::Http11 => !self.close,
            Version::Http10 => self.keep_alive && !self.close,
        };
        let expect_continue = match (version, self.expect) {
            (Version::Http10, _) | (_, None) => false,
            (Version::Http11, Some(true)) => framing != Framing::None,
            (Version::Http11, Some(false)) => return Err(Reject::new(417, "unsupported expectation")),
        };
        Ok(Checked { framing, keep_alive, expect_continue })
    }
}

/// The elements of a comma-separated field value, trimmed, empty ones skipped.
fn list_items(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|&b| b == b',').map(trim).filter(|i| !i.is_empty())
}

/// `s` without leading and trailing spaces and tabs (optional whitespace).
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `1*DIGIT`, without overflow.
fn parse_length(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    s.iter().try_fold(0u64, |n, &d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// `uri-host [ ":" port ]` (RFC 9110 §7.2), or empty.
fn valid_host(v: &[u8]) -> bool {
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let Some(end) = rest.iter().position(|&b| b == b']') else { return false };
        let literal = &rest[..end];
        if literal.is_empty() || !literal.iter().all(|&b| b.is_ascii_hexdigit() || b":.vV".contains(&b)) {
            return false;
        }
        match &rest[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&b""[..], Some(port)),
            _ => return false,
        }
    } else {
        match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        }
    };
    let reg_name = host.iter().all(|&b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(&b));
    reg_name && port.map_or(true, |p| p.iter().all(u8::is_ascii_digit))
}

/// Reads a body by `Content-Length` or chunked, within `max` bytes.
pub(crate) struct BodyReader {
    state: BodyState,
    body: Vec<u8>,
    max: u64,
    trailer_bytes: usize,
    max_trailer: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BodyState {
    /// This many bytes of a `Content-Length` body are still to come.
    Length(u64),
    /// Waiting for a chunk-size line.
    ChunkSize,
    /// This many bytes of chunk data are still to come.
    ChunkData(u64),
    /// The CRLF after a chunk's data.
    ChunkEnd,
    /// Trailer fields after the last chunk, up to an empty line.
    Trailers,
    Done,
}

impl BodyReader {
    /// A reader for `framing` (not [`Framing::None`]).
    pub(crate) fn new(framing: Framing, limits: &Limits) -> BodyReader {
        let (state, capacity) = match framing {
            Framing::Length(n) => (BodyState::Length(n), n as usize),
            Framing::Chunked | Framing::None => (BodyState::ChunkSize, 0),
        };
        BodyReader {
            state,
            body: Vec::with_capacity(capacity),
            max: limits.max_body,
            trailer_bytes: 0,
            max_trailer: limits.max_head,
        }
    }

    /// Consumes what it can of `buf`; returns how many bytes it used. Call
    /// [`is_done`](Self::is_done) to know whether the body is complete.
    pub(crate) fn feed(&mut self, buf: &[u8]) -> Result<usize, Reject> {
        let mut pos = 0;
        loop {
            let rest = &buf[pos..];
            match self.state {
                BodyState::Done => return Ok(pos),
                BodyState::Length(n) | BodyState::ChunkData(n) => {
                    let take = rest.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    if take == 0 && n > 0 {
                        return Ok(pos);
                    }
                    self.body.extend_from_slice(&rest[..take]);
                    pos += take;
                    let left = n - take as u64;
                    self.state = match self.state {
                        BodyState::Length(_) if left == 0 => BodyState::Done,
                        BodyState::Length(_) => BodyState::Length(left),
                        _ if left == 0 => BodyState::ChunkEnd,
                        _ => BodyState::ChunkData(left),
                    };
                }
                BodyState::ChunkSize => {
                    if rest.is_empty() {
                        return Ok(pos);
                    }
                    if !rest[0].is_ascii_hexdigit() {
                        return Err(Reject::new(400, "invalid chunk size"));
                    }
                    match httparse::parse_chunk_size(rest) {
                        Ok(httparse::Status::Complete((used, size))) => {
                            pos += used;
                            if size == 0 {
                                self.state = BodyState::Trailers;
                            } else if self.body.len() as u64 + size > self.max {
                                return Err(Reject::new(413, "request body too large"));
                            } else {
                                self.state = BodyState::ChunkData(size);
                            }
                        }
                        Ok(httparse::Status::Partial) if rest.len() > MAX_CHUNK_LINE => {
                            return Err(Reject::new(400, "chunk size line too long"))
                        }
                        Ok(httparse::Status::Partial) => return Ok(pos),
                        Err(_) => return Err(Reject::new(400, "invalid chunk size")),
                    }
                }
                BodyState::ChunkEnd => match rest {
                    [b'\r', b'\n', ..] => {
                        pos += 2;
                        self.state = BodyState::ChunkSize;
                    }
                    [] | [b'\r'] => return Ok(pos),
                    _ => return Err(Reject::new(400, "chunk data not followed by CRLF")),
                },
                BodyState::Trailers => {
                    // Trailer fields are accepted and ignored, up to an empty line.
                    let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                        if self.trailer_bytes + rest.len() > self.max_trailer {
                            return Err(Reject::new(431, "trailer section too large"));
                        }
                        return Ok(pos);
                    };
                    let line = &rest[..nl];
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    pos += nl + 1;
                    self.trailer_bytes += nl + 1;
                    if self.trailer_bytes > self.max_trailer {
                        return Err(Reject::new(431, "trailer section too large"));
                    }
                    if line.is_empty() {
                        self.state = BodyState::Done;
                    } else if !line.contains(&b':') || matches!(line[0], b' ' | b'\t') {
                        return Err(Reject::new(400, "malformed trailer field"));
                    }
                }
            }
        }
    }

    /// True once the whole body has been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == BodyState::Done
    }

    /// The body read so far.
    pub(crate) fn into_body(self) -> Vec<u8> {
        self.body
    }
}
