//! Run: `cargo run --example embed_tokio [-- --weft-port 47313] [--host-port 47314]`
//!
//! weft embedded in a tokio `current_thread` runtime: tokio owns the loop, runs the
//! host's own TCP server (it greets each client with one line and closes), and drives
//! weft from one task that waits on weft's descriptor through `AsyncFd`. weft serves an
//! echo server beside it. Try `nc 127.0.0.1 47313` (echo, through weft) and
//! `nc 127.0.0.1 47314` (tokio's own). Ctrl-C stops weft gracefully (every connection
//! gets its `connection_lost`); the driver returns once `iterate` says `Stopped`.
//!
//! The driver task is all weft needs:
//! - `AsyncFd` waits edge-triggered: after each readiness it calls
//!   `iterate(Some(Duration::ZERO))`; if that says `Idle` it clears the readiness (tokio
//!   keeps one that arrives afterwards), if `Pending` it keeps it and yields to tokio's
//!   other tasks before iterating again;
//! - no timeout of its own: a timer due in weft, even one scheduled from a tokio task,
//!   makes the descriptor readable.
//!
//! Weft code running inside tokio tasks keeps its request's log context with
//! `.in_context(ctx)` (see `weft::logcontext::InContextExt`); the greeting task shows it.
//!
//! One `unsafe` line, tokio's: since tokio 1.54 every `AsyncFd` constructor is either
//! `unsafe` or deprecated (tokio PR #8587), whatever the descriptor. The contract (the
//! descriptor stays open and the same while the `AsyncFd` lives) is met by giving it an
//! `OwnedFd` of its own, a duplicate of weft's. weft itself needs none.
//!
//! `tests/it/embed_tokio.rs` runs this host.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpListener;
use weft::logcontext::{current_request_id, InContextExt, LoggingContext};
use weft::reactor::{IterateStatus, Reactor};

#[path = "common/echo.rs"]
mod echo;
pub use echo::serve_echo;

/// Puts weft's descriptor in tokio's reactor (see the module docs for the `unsafe`).
pub fn reactor_fd(reactor: &Reactor) -> io::Result<AsyncFd<OwnedFd>> {
    let fd = reactor.as_fd().try_clone_to_owned()?;
    // SAFETY: the `AsyncFd` owns `fd`, so it stays open and refers to the same
    // descriptor until the `AsyncFd` is dropped.
    #[allow(unsafe_code)]
    let registered = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) };
    Ok(registered?)
}

/// Drives weft from a tokio task until weft has stopped.
pub async fn drive(reactor: &Reactor) -> io::Result<()> {
    let fd = reactor_fd(reactor)?;
    loop {
        let mut ready = fd.readable().await?;
        match reactor.iterate(Some(Duration::ZERO))? {
            IterateStatus::Stopped => return Ok(()),
            IterateStatus::Idle => ready.clear_ready(),
            // More is ready now: keep the readiness (dropping the guard without clearing
            // it) and let tokio's other tasks run before the next turn.
            IterateStatus::Pending => {
                drop(ready);
                tokio::task::yield_now().await;
            }
        }
    }
}

/// The line tokio's own server greets each client with.
pub const GREETING: &[u8] = b"hello from the tokio host\n";

/// The host's own server, a plain tokio one: greets each client in a task of its own,
/// in a log context of its own.
pub async fn greet_clients(listener: TcpListener) {
    let mut n = 0u64;
    while let Ok((mut client, _)) = listener.accept().await {
        n += 1;
        let name = format!("greet-{n}");
        tokio::task::spawn_local(
            async move {
                // Log lines from here carry `greet-N`, whatever else tokio runs meanwhile.
                debug_assert_eq!(current_request_id().as_deref(), Some(name.as_str()));
                let _ = client.write_all(GREETING).await;
            }
            .in_context(LoggingContext::new(format!("greet-{n}"))),
        );
    }
}

fn main() -> io::Result<()> {
    let (mut weft_port, mut host_port) = (47313u16, 47314u16);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut port = || args.next().and_then(|p| p.parse().ok()).expect("a port number");
        match a.as_str() {
            "--weft-port" => weft_port = port(),
            "--host-port" => host_port = port(),
            other => panic!("unknown argument {other}; usage: embed_tokio [--weft-port P] [--host-port P]"),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // weft's `Reactor` is not `Send`: it lives in this thread's `LocalSet`.
    tokio::task::LocalSet::new().block_on(&runtime, async {
        let reactor = Reactor::new()?;
        let echo = serve_echo(&reactor, SocketAddr::from(([127, 0, 0, 1], weft_port)))?;
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], host_port))).await?;
        println!(
            "weft echo on {:?}, tokio's own server on {}; Ctrl-C stops",
            echo.local_addr(),
            listener.local_addr()?
        );
        let host_server = tokio::task::spawn_local(greet_clients(listener));
        let handle = reactor.handle();
        tokio::task::spawn_local(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                handle.stop(); // from a tokio task: weft's descriptor wakes the driver
            }
        });
        drive(&reactor).await?;
        host_server.abort();
        println!("stopped cleanly");
        Ok(())
    })
}
