//! What the load generator sends, and how it tells that a whole reply has arrived.
//!
//! TCP is a byte stream, so replies are cut out of what a connection received, in order:
//! an echo reply is the next `msg_size` bytes; an HTTP reply is a status line, headers and
//! a `Content-Length` body.

/// One whole reply at the front of the received bytes.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// Its length in bytes (head and body).
    pub len: usize,
    /// The HTTP status (200 for an echo).
    pub status: u16,
    /// The server said `Connection: close`.
    pub close: bool,
}

/// Longest HTTP response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in one response.
const MAX_HEADERS: usize = 32;

/// The two workloads: echo messages or HTTP GETs.
pub enum Workload {
    Echo { message: Vec<u8> },
    Http { request: Vec<u8> },
}

impl Workload {
    /// An echo message of `size` bytes (`abc…`).
    pub fn echo(size: usize) -> Workload {
        Workload::Echo { message: (0..size).map(|i| b'a' + (i % 26) as u8).collect() }
    }

    /// `GET path HTTP/1.1` with `Host: bench` and nothing else (keep-alive is HTTP/1.1's default).
    pub fn http_get(path: &str) -> Workload {
        Workload::Http { request: format!("GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n").into_bytes() }
    }

    /// The bytes of one request.
    pub fn request(&self) -> &[u8] {
        match self {
            Workload::Echo { message } => message,
            Workload::Http { request } => request,
        }
    }

    /// The reply at the front of `buf`: `Ok(None)` while it is incomplete, `Err(why)` if
    /// it is not a reply this load generator can delimit (a protocol error).
    pub fn reply(&self, buf: &[u8]) -> Result<Option<Reply>, String> {
        match self {
            Workload::Echo { message } => {
                Ok((buf.len() >= message.len()).then_some(Reply { len: message.len(), status: 200, close: false }))
            }
            Workload::Http { .. } => http_reply(buf),
        }
    }
}

/// Parses an HTTP/1.1 response with a `Content-Length` body. Chunked bodies, interim
/// 1xx responses, HTTP/1.0 and responses without a length are protocol errors.
fn http_reply(buf: &[u8]) -> Result<Option<Reply>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(format!("no end of the response head in {MAX_HEAD} bytes"));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    if resp.version != Some(1) {
        return Err("not an HTTP/1.1 response".into());
    }
    let status = resp.code.unwrap_or(0);
    if (100..200).contains(&status) {
        return Err(format!("interim response {status} is not supported"));
    }
    let mut length: Option<usize> = None;
    let mut close = false;
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).map_err(|_| format!("header {} is not UTF-8", h.name))?.trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let v: usize = value.parse().map_err(|_| format!("bad Content-Length {value:?}"))?;
            if length.is_some_and(|l| l != v) {
                return Err("two different Content-Length headers".into());
            }
            length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("Transfer-Encoding {value:?} is not supported (Content-Length bodies only)"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close |= value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"));
        }
    }
    let body = length.ok_or_else(|| format!("response {status} without Content-Length"))?;
    let len = head_len + body;
    Ok((buf.len() >= len).then_some(Reply { len, status, close }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELLO: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nhello, world\n";

    #[test]
    fn echo_replies_are_cut_by_length() {
        let w = Workload::echo(4);
        assert_eq!(w.request(), b"abcd");
        assert_eq!(w.reply(b"abc"), Ok(None));
        assert_eq!(w.reply(b"abcdab"), Ok(Some(Reply { len: 4, status: 200, close: false })));
    }

    #[test]
    fn http_replies_wait_for_head_and_body() {
        let w = Workload::http_get("/hello");
        assert_eq!(w.request(), b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n");
        for cut in [0, 10, 40, HELLO.len() - 1] {
            assert_eq!(w.reply(&HELLO[..cut]), Ok(None), "cut at {cut}");
        }
        let two = [HELLO, b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nConnection: close\r\n\r\n"].concat();
        assert_eq!(w.reply(&two), Ok(Some(Reply { len: HELLO.len(), status: 200, close: false })));
        let rest = &two[HELLO.len()..];
        assert_eq!(w.reply(rest), Ok(Some(Reply { len: rest.len(), status: 404, close: true })));
    }

    #[test]
    fn http_replies_it_cannot_delimit_are_errors() {
        let w = Workload::http_get("/hello");
        for bad in [
            &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
            b"HTTP/1.1 100 Continue\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        ] {
            assert!(w.reply(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let endless = [&b"HTTP/1.1 200 OK\r\nX: "[..], &vec![b'a'; MAX_HEAD + 1]].concat();
        assert!(w.reply(&endless).is_err());
    }
}
