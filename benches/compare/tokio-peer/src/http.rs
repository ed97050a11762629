//! `http-server PORT`: hyper 1.x HTTP/1.1 on the `current_thread` runtime, one
//! `spawn_local` task per connection, keep-alive, pipelined requests answered in order
//! with one flush per batch.
//!
//! Routes (every peer's `http-server` serves the same):
//! - `GET /hello` → 200, `hello, world\n`, `Content-Type: text/plain`, `Content-Length: 13`;
//! - `GET /sleep/<ms>` (0 ≤ ms ≤ 60000) → the same after `ms` ms on the runtime's timer;
//! - anything else → 404; a known path with another method → 405.

use std::convert::Infallible;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use tokio::task::{self, LocalSet};

use super::{listen, Clock};

const HELLO: &[u8] = b"hello, world\n";
const MAX_SLEEP_MS: u64 = 60_000;

/// What a request asks for.
enum Route {
    Hello,
    Sleep(Duration),
    NotFound,
}

fn route(path: &str) -> Route {
    if path == "/hello" {
        return Route::Hello;
    }
    let ms = path.strip_prefix("/sleep/").and_then(|ms| {
        let digits_only = !ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit());
        digits_only.then(|| ms.parse::<u64>().ok()).flatten()
    });
    match ms {
        Some(ms) if ms <= MAX_SLEEP_MS => Route::Sleep(Duration::from_millis(ms)),
        _ => Route::NotFound,
    }
}

fn respond(status: StatusCode, body: &'static [u8]) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp.headers_mut().insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    resp
}

async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let route = route(req.uri().path());
    if matches!(route, Route::NotFound) {
        return Ok(respond(StatusCode::NOT_FOUND, b"not found\n"));
    }
    if req.method() != Method::GET {
        return Ok(respond(StatusCode::METHOD_NOT_ALLOWED, b"method not allowed\n"));
    }
    if let Route::Sleep(d) = route {
        tokio::time::sleep(d).await;
    }
    Ok(respond(StatusCode::OK, HELLO))
}

pub(crate) fn serve(port: u16) {
    let rt = Clock::Real.runtime();
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let listener = listen(port).expect("listen");
        eprintln!("tokio + hyper http server on 127.0.0.1:{port}, pid {}", std::process::id());
        let mut conn = hyper::server::conn::http1::Builder::new();
        conn.keep_alive(true).pipeline_flush(true);
        let conn = Rc::new(conn);
        loop {
            let Ok((sock, _)) = listener.accept().await else { continue };
            let _ = sock.set_nodelay(true);
            let conn = conn.clone();
            task::spawn_local(async move {
                let io = hyper_util::rt::TokioIo::new(sock);
                // An error (a reset, a malformed request) ends this connection only.
                let _ = conn.serve_connection(io, hyper::service::service_fn(handle)).await;
            });
        }
    });
}
