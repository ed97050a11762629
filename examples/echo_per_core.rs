//! Run: `cargo run --release --example echo_per_core -- --port 47305 --reactors 2`
//!
//! A TCP echo server with a reactor per core (`Reactor::run_per_core`): each reactor runs
//! on its own thread and listens on the same port with `SO_REUSEPORT`, and the kernel
//! shares the connections out among them. Same contract as `echo_server` (backlog 1024,
//! `TCP_NODELAY`, reads of up to 64 KiB written straight back). SIGINT or SIGTERM stops
//! every reactor gracefully (each closes its connections) and the program exits.
//!
//! `--reactors 0` (the default) runs one per available core.

use std::net::SocketAddr;

use weft::reactor::{Address, ListenOptions, Reactor};

#[path = "common/echo.rs"]
#[allow(dead_code)] // `serve_echo` is for the embedding examples.
mod echo;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut port = 47305u16;
    let mut reactors = 0usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number =
            |what: &str| args.next().and_then(|v| v.parse().ok()).ok_or(format!("{what} takes a number"));
        match a.as_str() {
            "--port" => port = u16::try_from(number("--port")?)?,
            "--reactors" => reactors = number("--reactors")?,
            other => {
                return Err(format!(
                    "unknown argument {other}; usage: echo_per_core [--port PORT] [--reactors N]"
                )
                .into())
            }
        }
    }
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    Reactor::run_per_core(reactors, move |reactor, index| {
        reactor.listen_tcp(addr, |_: &Address| echo::Echo::new(), ListenOptions::new().reuse_port(true))?;
        eprintln!("reactor {index}: echo server on {addr}");
        Ok(())
    })?;
    eprintln!("all reactors stopped");
    Ok(())
}
