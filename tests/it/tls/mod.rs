//! TLS (feature `tls`): weft's TLS against peers nobody here wrote (rustls's blocking
//! client and server on a thread, `openssl s_server`/`s_client` as child processes, curl
//! and ureq against the HTTPS server) and against itself, on 127.0.0.1, each test
//! bounded in time.

mod failures;
mod flow;
mod https;
mod openssl;
mod rustls_peers;
mod starttls;
mod support;
