//! The HTTP server over HTTPS (`Site::listen_tls`), against curl (OpenSSL) and ureq
//! (rustls), each verifying the server's certificate against the test's CA.

use std::process::Command;

use weft::web::{Request, Response, Router, Site};
use weft::Reactor;

use super::support::Certs;
use crate::support::{localhost, run_bounded, secs};

fn router() -> Router {
    Router::new()
        .get("/hello", |_req: Request| {
            Response::new(200).header("Content-Type", "text/plain").body("hello, world\n")
        })
        .post("/echo", |req: Request| Response::new(200).body(req.body().to_vec()))
}

/// Serves `site` over HTTPS on 127.0.0.1, runs `client` (given the port) on its own
/// thread, and drives the reactor until the client is done.
fn with_https_server<R: Send + 'static>(certs: &Certs, client: impl FnOnce(u16) -> R + Send + 'static) -> R {
    let reactor = Reactor::new().unwrap();
    let site = Site::new(&reactor, router());
    let port = site.listen_tls(localhost(), &certs.server()).unwrap();
    let number = port.port().unwrap();
    let stop = reactor.thread_handle();
    let thread = std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| client(number)));
        let _ = stop.stop();
        r
    });
    run_bounded(&reactor, secs(30));
    match thread.join().unwrap() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

fn curl(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new("curl").args(["-sS", "--max-time", "10"]).args(args).output().expect("curl runs");
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// `curl --cacert` gets `/hello` twice over one TLS connection (ALPN `http/1.1`,
/// although curl offers `h2` first), verifying the certificate and the name
/// `localhost`; without the CA, curl refuses the certificate.
#[test]
fn curl_gets_hello_over_https() {
    let certs = Certs::new();
    let files = certs.files();
    let ca = files.path("ca.pem");
    let ((status, out, err), (refused, _, refused_err)) = with_https_server(&certs, move |port| {
        let url = format!("https://localhost:{port}/hello");
        let resolve = format!("localhost:{port}:127.0.0.1");
        let ok = curl(&["-v", "--cacert", &ca, "--resolve", &resolve, &url, &url]);
        let refused = curl(&["--resolve", &resolve, &url]);
        (ok, refused)
    });
    assert_eq!(status, Some(0), "{err}");
    assert_eq!(out, "hello, world\nhello, world\n");
    assert!(err.contains("SSL connection using TLSv1.3"), "{err}");
    assert!(err.contains("server accepted http/1.1"), "{err}");
    assert!(err.contains("Re-using existing connection") || err.contains("Reusing existing"), "{err}");
    assert_eq!(refused, Some(60), "curl's 'peer certificate cannot be authenticated': {refused_err}");
}

/// ureq (rustls, trusting only the test CA) posts a body over HTTPS and gets it back,
/// then a GET on the same agent.
#[test]
fn ureq_posts_over_https() {
    use ureq::tls::{Certificate, RootCerts, TlsConfig};
    let certs = Certs::new();
    let ca = Certificate::from_pem(certs.ca_pem.as_bytes()).unwrap();
    let body = with_https_server(&certs, move |port| {
        let tls = TlsConfig::builder().root_certs(RootCerts::new_with_certs(&[ca])).build();
        let agent: ureq::Agent = ureq::Agent::config_builder().tls_config(tls).build().into();
        let mut r = agent.post(&format!("https://localhost:{port}/echo")).send("a body over TLS").unwrap();
        assert_eq!(r.status(), 200);
        let first = r.body_mut().read_to_string().unwrap();
        let mut r = agent.get(&format!("https://localhost:{port}/hello")).call().unwrap();
        (first, r.body_mut().read_to_string().unwrap())
    });
    assert_eq!(body, ("a body over TLS".to_string(), "hello, world\n".to_string()));
}
