//! Why a TLS connection failed ([`TlsError`]) and why TLS could not be set up
//! ([`TlsSetupError`]).

use std::fmt;
use std::io;
use std::time::Duration;

/// Why a TLS connection failed: what `connection_lost` gets (and the Deferreds of
/// [`connect_tls`](crate::ReactorHandle::connect_tls) and
/// [`when_handshake_done`](crate::reactor::Transport::when_handshake_done)).
///
/// ```
/// use weft::reactor::tls::{rustls, TlsError};
///
/// fn describe(reason: &weft::Failure) -> String {
///     match reason.downcast_ref::<TlsError>() {
///         Some(TlsError::Rustls(rustls::Error::InvalidCertificate(why))) => format!("bad certificate: {why:?}"),
///         Some(other) => format!("TLS failed: {other}"),
///         None => format!("not a TLS failure: {reason}"), // a clean close, a reset, ...
///     }
/// }
/// let reason = weft::Failure::new(TlsError::HandshakeTimeout(std::time::Duration::from_secs(10)));
/// assert_eq!(describe(&reason), "TLS failed: the TLS handshake did not finish within 10s");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the session: the peer's certificate did not verify
    /// (`InvalidCertificate`: an unknown issuer, a name it is not valid for, expired),
    /// the peer sent something that is not TLS (`InvalidMessage`, `InvalidContentType`),
    /// an alert (`AlertReceived`), no ALPN protocol in common (`NoApplicationProtocol`),
    /// or a record that failed to decrypt.
    Rustls(rustls::Error),
    /// The peer closed the connection before the handshake finished.
    ClosedDuringHandshake,
    /// The handshake did not finish within the handshake timeout (the options'
    /// `with_handshake_timeout`).
    HandshakeTimeout(Duration),
    /// After the handshake, the peer closed the connection without a TLS `close_notify`:
    /// what it sent last may have been cut short (a truncation attack looks the same).
    /// The data that did arrive was delivered.
    UnexpectedEof,
    /// The connection closed (it was aborted, or the reactor shut down) before the
    /// handshake finished: what a [`when_handshake_done`] Deferred gets then.
    ///
    /// [`when_handshake_done`]: crate::reactor::Transport::when_handshake_done
    Closed,
}

impl TlsError {
    /// True if the peer's certificate was refused (untrusted issuer, wrong name,
    /// expired, ...): a client that should not talk to this server.
    pub fn is_certificate_error(&self) -> bool {
        matches!(
            self,
            TlsError::Rustls(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented)
        )
    }

    /// Carries the error through `std::io` (the stream layer speaks `io::Result`).
    pub(crate) fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The `TlsError` (or rustls error) an `io::Error` carries, or the error unchanged.
    pub(crate) fn from_io(e: io::Error) -> Result<TlsError, io::Error> {
        let carries = |e: &io::Error| {
            e.get_ref().is_some_and(|inner| inner.is::<TlsError>() || inner.is::<rustls::Error>())
        };
        if !carries(&e) {
            return Err(e);
        }
        let inner = e.into_inner().expect("checked above");
        match inner.downcast::<TlsError>() {
            Ok(tls) => Ok(*tls),
            Err(inner) => Ok(TlsError::Rustls(*inner.downcast::<rustls::Error>().expect("checked above"))),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Rustls(e) => write!(f, "TLS: {e}"),
            TlsError::ClosedDuringHandshake => {
                f.write_str("the peer closed the connection during the TLS handshake")
            }
            TlsError::HandshakeTimeout(t) => write!(f, "the TLS handshake did not finish within {t:?}"),
            TlsError::UnexpectedEof => {
                f.write_str("the peer closed the connection without a TLS close_notify (it may be truncated)")
            }
            TlsError::Closed => f.write_str("the connection closed before the TLS handshake finished"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Rustls(e) => Some(e),
            _ => None,
        }
    }
}

/// TLS could not be set up: the options (a certificate, key or server name) or the
/// transport (`start_tls`) were not fit for it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum TlsSetupError {
    /// The server name is neither a DNS name nor an IP address.
    InvalidServerName(String),
    /// The PEM input held no certificate or no private key, or could not be parsed.
    Pem(String),
    /// rustls refused the configuration (a key that does not match the certificate, a
    /// key type it does not support, no protocol version in common).
    Rustls(rustls::Error),
    /// `start_tls` on a transport that already speaks TLS.
    AlreadyTls,
    /// The transport is closed, closing, or has no socket (a `MemoryTransport`).
    NotConnected,
    /// A TLS question ([`when_handshake_done`]) asked of a transport that does not
    /// speak TLS.
    ///
    /// [`when_handshake_done`]: crate::reactor::Transport::when_handshake_done
    NotTls,
}

impl fmt::Display for TlsSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsSetupError::InvalidServerName(name) => write!(f, "invalid TLS server name {name:?}"),
            TlsSetupError::Pem(why) => write!(f, "PEM: {why}"),
            TlsSetupError::Rustls(e) => write!(f, "TLS configuration: {e}"),
            TlsSetupError::AlreadyTls => f.write_str("start_tls: the transport already speaks TLS"),
            TlsSetupError::NotConnected => f.write_str("start_tls: the transport is closed or has no socket"),
            TlsSetupError::NotTls => f.write_str("the transport does not speak TLS"),
        }
    }
}

impl std::error::Error for TlsSetupError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsSetupError::Rustls(e) => Some(e),
            _ => None,
        }
    }
}

impl From<rustls::Error> for TlsSetupError {
    fn from(e: rustls::Error) -> TlsSetupError {
        TlsSetupError::Rustls(e)
    }
}
