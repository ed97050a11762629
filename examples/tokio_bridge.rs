//! Run: `cargo run --example tokio_bridge --features tokio`
//!
//! A weft HTTP handler that calls a tokio-only library: `/proxy/{path}` fetches
//! `{path}` from an "upstream" server with hyper's client, which runs on tokio through
//! `weft::compat::tokio::spawn_fallible`, and answers with what came back. The handler
//! is cancellable: when the weft client disconnects, the cancel reaches the tokio task,
//! which is aborted (hyper's request is dropped mid-flight). The upstream is a hyper
//! server on its own tokio runtime; `/slow` there never answers.
//!
//! The demo asks `/proxy/fast` with weft's client, then asks `/proxy/slow` over a raw
//! connection that it closes after 100 ms, and stops once the aborted upstream request
//! says it was dropped. The server also serves the reactor's `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::mpsc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use weft::compat::tokio::spawn_fallible;
use weft::future::cancellable;
use weft::reactor::{Address, Protocol, ThreadHandle, Transport};
use weft::web::{client::Client, Request, Response, Router, Site};
use weft::{Deferred, Reactor, ReactorHandle};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Says (on the tokio thread that drops it) that an upstream request was abandoned, and
/// stops the reactor through its `ThreadHandle`.
struct Abandoned(ThreadHandle);

impl Drop for Abandoned {
    fn drop(&mut self) {
        let thread = std::thread::current().name().unwrap_or("?").to_string();
        println!("upstream request dropped on thread {thread}: the tokio task was aborted");
        let _ = self.0.stop(); // the demo is over
    }
}

/// hyper's client: GET `path` from `upstream` (runs on tokio).
async fn fetch(upstream: SocketAddr, path: String, reactor: ThreadHandle) -> Result<String, BoxError> {
    let guard = Abandoned(reactor);
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get(path).header("host", "upstream").body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let body = response.into_body().collect().await?.to_bytes();
    std::mem::forget(guard); // finished: nothing was abandoned
    Ok(format!("upstream said: {}", String::from_utf8_lossy(&body)))
}

/// The upstream: a hyper server on its own tokio runtime, on another thread.
fn start_upstream() -> SocketAddr {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let service =
                    hyper::service::service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                        if req.uri().path() == "/slow" {
                            std::future::pending::<()>().await; // never answers
                        }
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("fast answer"))))
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        })
    });
    rx.recv().unwrap()
}

/// A raw client that asks `/proxy/slow` and hangs up after 100 ms.
struct Impatient(ReactorHandle);

impl Protocol for Impatient {
    fn connection_made(&mut self, t: Transport) {
        t.write(b"GET /proxy/slow HTTP/1.1\r\nHost: demo\r\n\r\n");
        self.0.call_later(Duration::from_millis(100), move || {
            println!("client: giving up on /proxy/slow");
            t.abort_connection();
        });
    }
    fn data_received(&mut self, _: &[u8]) {}
}

fn main() -> std::io::Result<()> {
    let upstream = start_upstream();
    let reactor = Reactor::new()?;
    let (h, thread) = (reactor.handle(), reactor.thread_handle());
    let router = Router::new()
        .get(
            "/proxy/{path}",
            cancellable(move |req: Request| -> Deferred<Response> {
                let path = format!("/{}", req.param("path").unwrap_or_default());
                spawn_fallible(fetch(upstream, path, thread.clone())).map(Response::text)
            }),
        )
        .get("/metrics", move |_req: Request| {
            Response::text(h.metrics().to_prometheus()).header("content-type", "text/plain; version=0.0.4")
        });
    let port = Site::new(&reactor, router).listen_tcp("127.0.0.1:0".parse().unwrap())?;
    let Address::Tcp(addr) = port.local_addr() else { unreachable!("a TCP port") };
    println!("weft serving on http://{addr} (upstream on {upstream})");

    let client = Client::new(&reactor);
    let h = reactor.handle();
    client.get(&format!("http://{addr}/proxy/fast")).add_both(move |r| {
        match &r {
            Ok(response) => {
                println!("client: /proxy/fast -> {} {:?}", response.status(), response.body_text())
            }
            Err(failure) => println!("client: /proxy/fast failed: {failure}"),
        }
        let h2 = h.clone();
        let _ = h.connect_tcp(addr, move |_: &Address| Impatient(h2.clone()), Duration::from_secs(5));
        r
    });
    let h = reactor.handle();
    reactor.call_later(Duration::from_secs(20), move || h.stop()); // a guard, should it hang
    reactor.run();
    Ok(())
}
