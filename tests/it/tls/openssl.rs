//! weft's TLS against OpenSSL's command-line peers, `openssl s_client` and
//! `openssl s_server`, run as child processes on 127.0.0.1 with the test's certificate
//! files, and killed by PID when the test ends.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft::reactor::tls::rustls::ProtocolVersion;
use weft::reactor::tls::{TlsClientOptions, TlsError};
use weft::reactor::{Address, ConnectionDone, Protocol, Reactor, Transport};

use super::support::{turn_until, Certs, Mode, OpenSsl, Peer, Seen, TempDir};
use crate::support::{localhost, secs};

/// Turns `reactor` until `openssl` printed a line containing `needle` (20 s at most).
#[track_caller]
fn wait_for(reactor: &Reactor, openssl: &OpenSsl, needle: &str) {
    let deadline = Instant::now() + secs(20);
    while !openssl.saw(needle) {
        assert!(
            Instant::now() < deadline,
            "openssl never printed {needle:?}; it printed:\n{}",
            openssl.output()
        );
        reactor.iterate(Some(Duration::from_millis(10))).unwrap();
    }
}

/// Starts `s_client` to `target`, verifying the certificate against the test CA and
/// the name `localhost`, quiet (it prints only what it receives), ending when its input
/// closes; `extra` arguments follow.
fn s_client(target: &str, files: &TempDir, extra: &[&str]) -> OpenSsl {
    let ca = files.path("ca.pem");
    let mut args = vec!["s_client", "-connect", target, "-CAfile", &ca, "-verify_return_error"];
    args.extend(["-verify_hostname", "localhost", "-quiet", "-no_ign_eof"]);
    args.extend(extra);
    OpenSsl::spawn(&args)
}

/// `s_client` (verifying the certificate and the name `localhost`, offering ALPN
/// `http/1.1`) echoes a line through a weft server, with TLS `version`; closing its input
/// makes it send close_notify, which the server's protocol sees as a clean end.
fn s_client_echo(version: &str, expected: ProtocolVersion) {
    let certs = Certs::new();
    let files = certs.files();
    let reactor = Reactor::new().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let tls = certs.server().with_alpn(["h2", "http/1.1"]);
    let port =
        reactor.listen_tls(localhost(), move |_: &Address| Peer::new(Mode::Echo, &s), &tls, false).unwrap();
    let target = format!("127.0.0.1:{}", port.port().unwrap());
    let mut client = s_client(&target, &files, &[version, "-servername", "localhost", "-alpn", "http/1.1"]);
    client.send(b"hello from openssl\n");
    wait_for(&reactor, &client, "hello from openssl");
    let t = seen.transport();
    assert_eq!(t.negotiated_protocol().as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(t.tls_version(), Some(expected));
    client.close_stdin();
    let s = seen.clone();
    turn_until(&reactor, secs(20), move || s.lost_count() == 1);
    assert!(seen.eof.get(), "s_client's close_notify ended the stream: {}", client.output());
    assert!(seen.reason().is::<ConnectionDone>(), "{}", seen.reason());
    assert_eq!(seen.dropped.get(), 1);
}

#[test]
fn openssl_s_client_over_tls_1_3() {
    s_client_echo("-tls1_3", ProtocolVersion::TLSv1_3);
}

#[test]
fn openssl_s_client_over_tls_1_2() {
    s_client_echo("-tls1_2", ProtocolVersion::TLSv1_2);
}

/// Starts `s_server -rev` (it answers each line reversed) with the test's certificate,
/// for one connection, offering ALPN `h2` and `http/1.1`.
fn s_server(certs: &Certs) -> (OpenSsl, SocketAddr, TempDir) {
    let files = certs.files();
    let (cert, key) = (files.path("cert.pem"), files.path("key.pem"));
    let server = OpenSsl::spawn(&[
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-naccept",
        "1",
        "-cert",
        &cert,
        "-key",
        &key,
        "-rev",
        "-alpn",
        "h2,http/1.1",
    ]);
    let addr = server.accept_port();
    (server, addr, files)
}

/// `connect_tls` to `s_server`: the certificate verifies, ALPN agrees on `h2`, the line
/// comes back reversed, and `lose_connection` ends cleanly.
#[test]
fn a_weft_client_talks_to_openssl_s_server() {
    let certs = Certs::new();
    let (server, addr, _files) = s_server(&certs);
    let reactor = Reactor::new().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let tls = certs.client("localhost").with_alpn(["h2"]);
    let d = reactor.connect_tls(
        addr,
        move |_: &Address| Peer::new(Mode::Collect, &s).greeting(b"stressed\n", false),
        &tls,
        secs(10),
    );
    let s = seen.clone();
    turn_until(&reactor, secs(20), move || s.data.borrow().ends_with(b"\n"));
    assert_eq!(seen.data.borrow().as_slice(), b"desserts\n");
    assert!(d.result().unwrap().is_ok());
    assert_eq!(seen.transport().negotiated_protocol().as_deref(), Some(&b"h2"[..]));
    seen.transport().lose_connection();
    let s = seen.clone();
    turn_until(&reactor, secs(20), move || s.lost_count() == 1);
    assert!(seen.reason().is::<ConnectionDone>(), "{}", seen.reason());
    wait_for(&reactor, &server, "CONNECTION CLOSED");
}

/// The same server, but a client that trusts only the web's public roots: the handshake
/// fails with a certificate error, and `s_server` hears the alert.
#[test]
fn a_weft_client_refuses_openssl_s_server_with_an_untrusted_certificate() {
    let certs = Certs::new();
    let (server, addr, _files) = s_server(&certs);
    let reactor = Reactor::new().unwrap();
    let seen = Seen::default();
    let s = seen.clone();
    let tls = TlsClientOptions::new("localhost").unwrap();
    let d = reactor.connect_tls(addr, move |_: &Address| Peer::new(Mode::Collect, &s), &tls, secs(10));
    let (d2, s) = (d.clone(), seen.clone());
    turn_until(&reactor, secs(20), move || d2.result().is_some() && s.lost_count() == 1);
    let failure = d.result().unwrap().map(drop).unwrap_err();
    let err = failure.downcast_ref::<TlsError>().unwrap_or_else(|| panic!("{failure}"));
    assert!(err.is_certificate_error(), "{err}");
    wait_for(&reactor, &server, "unknown ca");
}

/// A small SMTP server, as far as `s_client -starttls smtp` needs: a greeting, an EHLO
/// answer offering STARTTLS, "220" to STARTTLS and then TLS; over TLS it echoes.
struct Smtp {
    tls: weft::reactor::tls::TlsServerOptions,
    transport: Option<Transport>,
    pending: Vec<u8>,
}

impl Protocol for Smtp {
    fn connection_made(&mut self, t: Transport) {
        t.write(b"220 weft ESMTP test\r\n");
        self.transport = Some(t);
    }

    fn data_received(&mut self, data: &[u8]) {
        let t = self.transport.clone().unwrap();
        if t.is_tls() {
            return t.write(data);
        }
        self.pending.extend_from_slice(data);
        while let Some(i) = self.pending.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = self.pending.drain(..i + 2).take(i).collect();
            if line.starts_with(b"EHLO") {
                t.write(b"250-weft\r\n250 STARTTLS\r\n");
            } else if line == b"STARTTLS" {
                t.write(b"220 go ahead\r\n");
                t.start_tls(&self.tls).unwrap();
            } else {
                t.write(b"500 what?\r\n");
            }
        }
    }
}

/// OpenSSL's own STARTTLS client (`s_client -starttls smtp`) upgrades a plaintext SMTP
/// session with a weft server that calls `start_tls`, then talks over TLS.
#[test]
fn openssl_starttls_smtp_upgrades_a_weft_server() {
    let certs = Certs::new();
    let files = certs.files();
    let reactor = Reactor::new().unwrap();
    let tls = certs.server();
    let port = reactor
        .listen_tcp(
            localhost(),
            move |_: &Address| Smtp { tls: tls.clone(), transport: None, pending: Vec::new() },
            false,
        )
        .unwrap();
    let target = format!("127.0.0.1:{}", port.port().unwrap());
    let mut client = s_client(&target, &files, &["-starttls", "smtp"]);
    client.send(b"secret over TLS\n");
    wait_for(&reactor, &client, "secret over TLS");
}
