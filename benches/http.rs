//! The HTTP server's own cost per request, without sockets: an `HttpChannel` on an
//! in-memory transport is fed `GET /hello` (one request per read, and 16 pipelined per
//! read) and writes the response into a buffer. A regression guard for the hot path
//! (parse, route, log context, handler, response head); the side-by-side numbers
//! against hyper and Twisted come from `examples/peer_bench.rs http-server`.

use std::cell::RefCell;
use std::hint::black_box;
use std::rc::Rc;

use criterion::{criterion_group, criterion_main, Criterion};
use weft::reactor::{Address, PushProducer};
use weft::web::{HttpChannel, HttpTransport, Request, Response, Router, ServerConfig, Site};
use weft::Reactor;

/// Collects what the server writes.
#[derive(Clone, Default)]
struct Sink(Rc<RefCell<Vec<u8>>>);

impl HttpTransport for Sink {
    fn write(&self, data: &[u8]) {
        self.0.borrow_mut().extend_from_slice(data);
    }
    fn lose_connection(&self) {}
    fn abort_connection(&self) {}
    fn pause_producing(&self) {}
    fn resume_producing(&self) {}
    fn register_producer(&self, _producer: Rc<dyn PushProducer>) {}
    fn unregister_producer(&self) {}
}

fn channel(reactor: &Reactor, access_log: bool) -> (HttpChannel, Sink) {
    let router = Router::new().get("/hello", |_req: Request| {
        Response::new(200).header("Content-Type", "text/plain").body("hello, world\n")
    });
    let mut config = ServerConfig::default();
    config.access_log = access_log;
    let site = Site::with_config(reactor, router, config);
    let mut channel = site.build_channel(&Address::Tcp("127.0.0.1:1".parse().unwrap()));
    let sink = Sink::default();
    channel.attach(sink.clone());
    (channel, sink)
}

/// Feeds `input` and checks `expect` bytes came out.
fn feed(ch: &mut HttpChannel, sink: &Sink, input: &[u8], expect: usize) {
    ch.receive(black_box(input));
    let mut out = sink.0.borrow_mut();
    assert_eq!(out.len(), expect);
    out.clear();
}

fn bench(c: &mut Criterion) {
    let reactor = Reactor::new().unwrap();
    let mut group = c.benchmark_group("http");
    let request = b"GET /hello HTTP/1.1\r\nHost: bench\r\n\r\n";
    let (mut ch, sink) = channel(&reactor, false);
    group.bench_function("get_hello.(1 per read)", |b| b.iter(|| feed(&mut ch, &sink, request, 115)));
    let pipelined: Vec<u8> = request.iter().copied().cycle().take(request.len() * 16).collect();
    group.bench_function("get_hello.(16 pipelined per read)", |b| {
        b.iter(|| feed(&mut ch, &sink, &pipelined, 115 * 16))
    });
    // The same with the monotonic clock charging time to contexts (no system call per
    // context switch; see `weft::logcontext::set_cpu_clock`).
    weft::logcontext::set_cpu_clock(weft::logcontext::CpuClock::Monotonic);
    group.bench_function("get_hello.(1 per read, monotonic context clock)", |b| {
        b.iter(|| feed(&mut ch, &sink, request, 115))
    });
    weft::logcontext::set_cpu_clock(weft::logcontext::CpuClock::Thread);
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
