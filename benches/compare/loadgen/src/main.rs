//! Closed-loop load generator for the comparison's servers (one thread, mio, loopback only).
//!
//! ```text
//! loadgen --addr 127.0.0.1:PORT [--conns C] [--pipeline P] [--duration S] [--warmup S]
//!         [--msg-size B | --http [--path /hello]] [--server-pid PID] [--busy-poll]
//! ```
//!
//! Opens C connections (before any clock starts), then keeps P requests in flight on each:
//! every reply that completes sends the next request on its connection at once (closed
//! loop). A request is an echo message of B bytes (default 64) or, with `--http`, a
//! keep-alive `GET PATH` (see `reply.rs` for what a reply is). Latency runs from the
//! moment a request is queued to the moment the last byte of its reply is read, so with
//! P > 1 it includes waiting behind earlier requests. Nothing is recorded during the
//! warm-up. It stops by itself after warm-up + duration and prints one JSON line.
//!
//! With `--server-pid`, it reads the server's CPU time (utime + stime from
//! `/proc/PID/stat`) at the start and end of the measured window: `server_cpu_us_per_msg`
//! is the fairest number on a small machine, where the load generator itself may be
//! what limits replies per second. `--busy-poll` spins on `epoll_wait` with a zero timeout
//! instead of sleeping, so the load generator's own wake-ups stay out of the latencies.
//!
//! Exit status: 0; 1 if it could not connect; 2 for bad arguments; 3 (after the JSON line)
//! if there was a protocol error or not a single good reply in the measured window.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

mod reply;
use reply::Workload;

struct Args {
    addr: SocketAddr,
    conns: usize,
    pipeline: usize,
    duration: Duration,
    warmup: Duration,
    msg_size: usize,
    http_path: Option<String>,
    server_pid: Option<u32>,
    busy_poll: bool,
}

fn usage(why: &str) -> ! {
    eprintln!("loadgen: {why}");
    eprintln!(
        "usage: loadgen --addr 127.0.0.1:PORT [--conns C] [--pipeline P] [--duration S] [--warmup S]\n\
         \x20              [--msg-size B | --http [--path /hello]] [--server-pid PID] [--busy-poll]"
    );
    std::process::exit(2)
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        conns: 1,
        pipeline: 1,
        duration: Duration::from_secs(5),
        warmup: Duration::from_secs(1),
        msg_size: 64,
        http_path: None,
        server_pid: None,
        busy_poll: false,
    };
    let (mut addr, mut http, mut path) = (None, false, "/hello".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> T {
            v.parse().unwrap_or_else(|_| usage(&format!("{flag}: not a number: {v}")))
        }
        let secs = |flag: &str, v: String| {
            let s: f64 = num(flag, v);
            if !(0.0..=600.0).contains(&s) {
                usage(&format!("{flag} must be within 0..=600 seconds"));
            }
            Duration::from_secs_f64(s)
        };
        match flag.as_str() {
            "--addr" => addr = Some(value()),
            "--conns" => a.conns = num(&flag, value()),
            "--pipeline" => a.pipeline = num(&flag, value()),
            "--duration" => a.duration = secs(&flag, value()),
            "--warmup" => a.warmup = secs(&flag, value()),
            "--msg-size" => a.msg_size = num(&flag, value()),
            "--server-pid" => a.server_pid = Some(num(&flag, value())),
            "--http" => http = true,
            "--path" => path = value(),
            "--busy-poll" => a.busy_poll = true,
            "-h" | "--help" => usage("help"),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    let addr = addr.unwrap_or_else(|| usage("--addr is required"));
    a.addr = addr.parse().unwrap_or_else(|_| usage(&format!("--addr: not IP:PORT: {addr}")));
    if !a.addr.ip().is_loopback() {
        usage("only loopback addresses are allowed (127.0.0.0/8, ::1)");
    }
    if a.conns == 0 || a.pipeline == 0 || a.msg_size == 0 || a.duration.is_zero() {
        usage("--conns, --pipeline, --msg-size and --duration must be above zero");
    }
    if http {
        if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            usage("--path must start with / and have no spaces or control characters");
        }
        a.http_path = Some(path);
    }
    a
}

/// One connection and the requests in flight on it.
struct Conn {
    sock: TcpStream,
    /// Bytes queued for writing, from `out_at` on.
    out: Vec<u8>,
    out_at: usize,
    /// Bytes received, not yet cut into replies, from `in_at` on.
    inbuf: Vec<u8>,
    in_at: usize,
    /// When each request in flight was queued, oldest first.
    queued: VecDeque<Instant>,
    open: bool,
}

impl Conn {
    fn send(&mut self, request: &[u8], now: Instant) {
        self.out.extend_from_slice(request);
        self.queued.push_back(now);
    }

    /// Writes what the socket takes; false if the connection failed.
    fn flush(&mut self) -> bool {
        while self.out_at < self.out.len() {
            match self.sock.write(&self.out[self.out_at..]) {
                Ok(0) => return false,
                Ok(n) => self.out_at += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if self.out_at == self.out.len() {
            self.out.clear();
            self.out_at = 0;
        }
        true
    }

    /// Reads everything available into `inbuf`. Returns the error that closed the
    /// connection, if one did.
    fn fill(&mut self) -> Option<String> {
        const CHUNK: usize = 64 * 1024;
        if self.in_at > 0 && self.in_at * 2 >= self.inbuf.len() {
            self.inbuf.drain(..self.in_at);
            self.in_at = 0;
        }
        loop {
            let old = self.inbuf.len();
            self.inbuf.resize(old + CHUNK, 0);
            let got = self.sock.read(&mut self.inbuf[old..]);
            self.inbuf.truncate(old + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => return Some(format!("closed by the server with {} requests in flight", self.queued.len())),
                Ok(n) if n < CHUNK => return None, // a short read: the socket is drained
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(format!("read: {e}")),
            }
        }
    }
}

/// What the measured window saw.
#[derive(Default)]
struct Tally {
    replies: u64,
    reply_bytes: u64,
    latencies_ns: Vec<u64>,
    non_200: u64,
    protocol_errors: u64,
    lost: u64,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, conn: usize, protocol: bool, why: String) {
        if protocol {
            self.protocol_errors += 1;
            if self.protocol_errors <= 5 {
                eprintln!("loadgen: connection {conn}: protocol error: {why}");
            }
        } else {
            self.lost += 1;
        }
        self.first_error.get_or_insert_with(|| format!("connection {conn}: {why}"));
    }
}

fn connect_all(a: &Args, poll: &Poll) -> io::Result<Vec<Conn>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conns = Vec::with_capacity(a.conns);
    for i in 0..a.conns {
        let sock = loop {
            match std::net::TcpStream::connect_timeout(&a.addr, Duration::from_secs(5)) {
                Ok(s) => break s,
                Err(e) if i == 0 || Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        sock.set_nodelay(true)?;
        sock.set_nonblocking(true)?;
        let mut sock = TcpStream::from_std(sock);
        poll.registry().register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        conns.push(Conn {
            sock,
            out: Vec::new(),
            out_at: 0,
            inbuf: Vec::new(),
            in_at: 0,
            queued: VecDeque::with_capacity(a.pipeline),
            open: true,
        });
    }
    Ok(conns)
}

/// This process's CPU time.
fn own_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// Another process's CPU time (utime + stime), from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the fields after it do not.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11); // field 14 is utime
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let hz = rustix::param::clock_ticks_per_second();
    Some(Duration::from_secs_f64((utime + stime) as f64 / hz as f64))
}

/// 1,000 connections need more file descriptors than the usual soft limit of 1,024.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

fn main() {
    let a = parse_args();
    raise_fd_limit();
    let workload = match &a.http_path {
        Some(path) => Workload::http_get(path),
        None => Workload::echo(a.msg_size),
    };
    let mut head = json!({
        "tool": "loadgen",
        "mode": if a.http_path.is_some() { "http" } else { "echo" },
        "addr": a.addr.to_string(),
        "conns": a.conns,
        "pipeline": a.pipeline,
        "msg_size": workload.request().len(),
    });
    if let Some(path) = &a.http_path {
        head["path"] = json!(path);
    }
    let mut poll = Poll::new().expect("epoll");
    let t_connect = Instant::now();
    let mut conns = match connect_all(&a, &poll) {
        Ok(c) => c,
        Err(e) => {
            head["error"] = json!(format!("connect: {e}"));
            println!("{head}");
            std::process::exit(1);
        }
    };
    let connect_s = t_connect.elapsed().as_secs_f64();

    let mut tally = Tally::default();
    let start = Instant::now();
    for (i, c) in conns.iter_mut().enumerate() {
        for _ in 0..a.pipeline {
            c.send(workload.request(), start);
        }
        if !c.flush() {
            c.open = false;
            tally.error(i, false, "write failed".into());
        }
    }
    let record_from = start + a.warmup;
    let end = record_from + a.duration;
    let mut window: Option<(Instant, Duration, Option<Duration>)> = None;
    let mut events = Events::with_capacity(1024);
    loop {
        let now = Instant::now();
        if window.is_none() && now >= record_from {
            window = Some((now, own_cpu(), a.server_pid.and_then(process_cpu)));
            tally = Tally { first_error: tally.first_error.take(), ..Tally::default() };
            tally.latencies_ns.reserve(1 << 20);
        }
        if now >= end {
            break;
        }
        let next_stop = if window.is_some() { end } else { record_from };
        let timeout = if a.busy_poll { Duration::ZERO } else { (next_stop - now).min(Duration::from_millis(50)) };
        if let Err(e) = poll.poll(&mut events, Some(timeout)) {
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            panic!("epoll_wait: {e}");
        }
        let recording = window.is_some();
        for ev in events.iter() {
            let i = ev.token().0;
            let c = &mut conns[i];
            if !c.open {
                continue;
            }
            if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                let now = Instant::now();
                let closed = c.fill();
                loop {
                    let reply = match workload.reply(&c.inbuf[c.in_at..]) {
                        Ok(Some(r)) => r,
                        Ok(None) => break,
                        Err(why) => {
                            tally.error(i, true, why);
                            c.open = false;
                            break;
                        }
                    };
                    let Some(queued) = c.queued.pop_front() else {
                        tally.error(i, true, "a reply to no request".into());
                        c.open = false;
                        break;
                    };
                    c.in_at += reply.len;
                    if reply.status != 200 {
                        tally.non_200 += 1;
                        tally.first_error.get_or_insert_with(|| format!("connection {i}: status {}", reply.status));
                    } else if recording {
                        tally.replies += 1;
                        tally.reply_bytes += reply.len as u64;
                        tally.latencies_ns.push((now - queued).as_nanos() as u64);
                    }
                    if reply.close {
                        tally.error(i, true, "Connection: close (keep-alive expected)".into());
                        c.open = false;
                        break;
                    }
                    c.send(workload.request(), now);
                }
                if let (Some(why), true) = (closed, c.open) {
                    tally.error(i, false, why);
                    c.open = false;
                }
            }
            if c.open && !c.flush() {
                c.open = false;
                tally.error(i, false, "write failed".into());
            }
        }
    }

    let (t0, cpu0, srv0) = window.expect("the window opened before the end");
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (own_cpu() - cpu0).as_secs_f64();
    let srv = srv0.zip(a.server_pid.and_then(process_cpu)).map(|(s0, s1)| s1.saturating_sub(s0).as_secs_f64());
    let open = conns.iter().filter(|c| c.open).count();
    let mut out = head;
    let fields = summary(&mut tally, elapsed, cpu, srv, a.busy_poll);
    for (k, v) in fields.as_object().expect("an object") {
        out[k] = v.clone();
    }
    out["warmup_s"] = json!(a.warmup.as_secs_f64());
    out["connect_s"] = json!(round(connect_s, 3));
    out["conns_open_at_end"] = json!(open);
    println!("{out}");
    if tally.protocol_errors > 0 || tally.replies == 0 {
        eprintln!(
            "loadgen: FAILED: {} protocol errors, {} good replies (first error: {})",
            tally.protocol_errors,
            tally.replies,
            tally.first_error.as_deref().unwrap_or("none")
        );
        std::process::exit(3);
    }
}

fn round(x: f64, digits: i32) -> f64 {
    let s = 10f64.powi(digits);
    (x * s).round() / s
}

/// The measured window's numbers, with the field names every report reads.
fn summary(t: &mut Tally, elapsed: f64, own_cpu: f64, server_cpu: Option<f64>, busy_poll: bool) -> Value {
    let lat = &mut t.latencies_ns;
    lat.sort_unstable();
    let pct = |q: f64| -> Option<f64> {
        let last = lat.len().checked_sub(1)?;
        let i = ((q * lat.len() as f64).ceil() as usize).saturating_sub(1).min(last);
        Some(round(lat[i] as f64 / 1000.0, 1))
    };
    let mean = (!lat.is_empty()).then(|| round(lat.iter().sum::<u64>() as f64 / lat.len() as f64 / 1000.0, 1));
    let per_reply = |x: f64| (t.replies > 0).then(|| round(x / t.replies as f64, 2));
    json!({
        "duration_s": round(elapsed, 3),
        "msgs": t.replies,
        "msgs_per_s": (t.replies as f64 / elapsed).round(),
        "mb_per_s": round(t.reply_bytes as f64 / elapsed / 1e6, 2),
        "response_bytes_mean": per_reply(t.reply_bytes as f64),
        "p50_us": pct(0.5),
        "p99_us": pct(0.99),
        "p999_us": pct(0.999),
        "max_us": pct(1.0),
        "mean_us": mean,
        "errors": t.non_200 + t.protocol_errors + t.lost,
        "non_200": t.non_200,
        "protocol_errors": t.protocol_errors,
        "first_error": t.first_error,
        "loadgen_cpu_pct": round(own_cpu / elapsed * 100.0, 1),
        "server_cpu_pct": server_cpu.map(|s| round(s / elapsed * 100.0, 1)),
        "server_cpu_us_per_msg": server_cpu.and_then(|s| per_reply(s * 1e6)),
        "busy_poll": busy_poll,
    })
}
