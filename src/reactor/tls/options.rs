//! What a TLS session is set up with: [`TlsServerOptions`], [`TlsClientOptions`], and
//! the sealed [`TlsOptions`] both are.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::TlsSetupError;

/// How long a handshake may take unless the options say otherwise.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server side of TLS (Twisted's `CertificateOptions` for a server): a rustls
/// [`ServerConfig`] and a handshake timeout. Cheap to clone (the config is an `Arc`).
///
/// ```
/// use std::time::Duration;
/// use weft::reactor::tls::TlsServerOptions;
/// # fn main() -> Result<(), weft::reactor::tls::TlsSetupError> {
/// # let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
/// # let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
/// let tls = TlsServerOptions::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())?
///     .with_alpn(["h2", "http/1.1"])
///     .with_handshake_timeout(Duration::from_secs(5));
/// assert_eq!(tls.config().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsServerOptions {
    config: Arc<ServerConfig>,
    handshake_timeout: Duration,
}

impl TlsServerOptions {
    /// Serves with `config` as it is (client certificates, session resumption, ALPN:
    /// whatever it sets up), and the default handshake timeout (10 s).
    pub fn new(config: Arc<ServerConfig>) -> TlsServerOptions {
        TlsServerOptions { config, handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT }
    }

    /// Serves the certificate chain in `cert_chain_pem` (the server's certificate
    /// first, then any intermediates) with the private key in `key_pem` (PKCS#8, PKCS#1
    /// or SEC1), TLS 1.2 and 1.3 with rustls's safe defaults, no client certificates.
    ///
    /// # Errors
    ///
    /// [`TlsSetupError::Pem`] if either holds no certificate or key, and
    /// [`TlsSetupError::Rustls`] if the key does not fit the certificate or is of a
    /// kind rustls does not support.
    pub fn from_pem(cert_chain_pem: &[u8], key_pem: &[u8]) -> Result<TlsServerOptions, TlsSetupError> {
        let chain = certificates(cert_chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| TlsSetupError::Pem(format!("no private key: {e}")))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        Ok(TlsServerOptions::new(Arc::new(config)))
    }

    /// Offers these application protocols, most preferred first (ALPN: `"h2"`,
    /// `"http/1.1"`): the first of them the client also offers is chosen, and
    /// [`Transport::negotiated_protocol`](crate::reactor::Transport::negotiated_protocol)
    /// says which. A client that offers protocols, none of them these, is refused
    /// (`NoApplicationProtocol`); one that offers none is served without.
    #[must_use = "the options are returned, not changed in place"]
    pub fn with_alpn<P: AsRef<[u8]>>(mut self, protocols: impl IntoIterator<Item = P>) -> TlsServerOptions {
        Arc::make_mut(&mut self.config).alpn_protocols = alpn_list(protocols);
        self
    }

    /// How long the handshake may take before the connection is aborted with
    /// [`TlsError::HandshakeTimeout`](super::TlsError::HandshakeTimeout); counted from
    /// `start_tls` (for `listen_tls`, from the accept).
    #[must_use = "the options are returned, not changed in place"]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> TlsServerOptions {
        self.handshake_timeout = timeout;
        self
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

impl fmt::Debug for TlsServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsServerOptions")
            .field("alpn", &self.config.alpn_protocols)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// The client side of TLS (Twisted's `optionsForClientTLS`): the server's name, which
/// its certificate must be valid for, a rustls [`ClientConfig`], and a handshake
/// timeout. Cheap to clone.
///
/// Verification is on: by default the server's certificate must chain to one of the
/// web's public roots (Mozilla's list, built in through `webpki-roots`) and be valid for
/// the server name. To trust a private CA instead, use
/// [`with_root_certificates_pem`](Self::with_root_certificates_pem); for anything else
/// (client certificates, the platform's roots), build a `ClientConfig` and use
/// [`with_config`](Self::with_config).
///
/// ```
/// use weft::reactor::tls::TlsClientOptions;
/// # fn main() -> Result<(), weft::reactor::tls::TlsSetupError> {
/// let tls = TlsClientOptions::new("example.org")?.with_alpn(["http/1.1"]);
/// assert_eq!(tls.server_name(), "example.org");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct TlsClientOptions {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    handshake_timeout: Duration,
}

impl TlsClientOptions {
    /// For a server named `server_name` (a DNS name, or an IP address its certificate
    /// names), verified against the web's public roots.
    ///
    /// # Errors
    ///
    /// [`TlsSetupError::InvalidServerName`] if `server_name` is neither.
    pub fn new(server_name: &str) -> Result<TlsClientOptions, TlsSetupError> {
        static WEB_PKI: OnceLock<Arc<ClientConfig>> = OnceLock::new();
        let config = WEB_PKI.get_or_init(|| {
            let roots = RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
            Arc::new(client_config(roots).expect("rustls's defaults build"))
        });
        TlsClientOptions::with_config(server_name, config.clone())
    }

    /// For a server named `server_name`, with `config` as it is.
    ///
    /// # Errors
    ///
    /// [`TlsSetupError::InvalidServerName`] if `server_name` is neither a DNS name nor
    /// an IP address.
    pub fn with_config(
        server_name: &str,
        config: Arc<ClientConfig>,
    ) -> Result<TlsClientOptions, TlsSetupError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsSetupError::InvalidServerName(server_name.to_owned()))?;
        Ok(TlsClientOptions { config, server_name, handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT })
    }

    /// Trusts the CA certificates in `pem` and no others (a private CA, or a test's);
    /// the ALPN protocols set so far are kept, anything else the config set up is
    /// replaced by rustls's defaults.
    ///
    /// # Errors
    ///
    /// [`TlsSetupError::Pem`] if `pem` holds no certificate, [`TlsSetupError::Rustls`]
    /// if one is not a usable trust anchor.
    pub fn with_root_certificates_pem(self, pem: &[u8]) -> Result<TlsClientOptions, TlsSetupError> {
        let mut roots = RootCertStore::empty();
        for cert in certificates(pem)? {
            roots.add(cert)?;
        }
        let mut config = client_config(roots)?;
        config.alpn_protocols = self.config.alpn_protocols.clone();
        Ok(TlsClientOptions { config: Arc::new(config), ..self })
    }

    /// Offers these application protocols, most preferred first (ALPN). If the server
    /// picks none of them the handshake goes on without, and
    /// [`Transport::negotiated_protocol`](crate::reactor::Transport::negotiated_protocol)
    /// says `None`.
    #[must_use = "the options are returned, not changed in place"]
    pub fn with_alpn<P: AsRef<[u8]>>(mut self, protocols: impl IntoIterator<Item = P>) -> TlsClientOptions {
        Arc::make_mut(&mut self.config).alpn_protocols = alpn_list(protocols);
        self
    }

    /// How long the handshake may take before the connection is aborted with
    /// [`TlsError::HandshakeTimeout`](super::TlsError::HandshakeTimeout), counted from
    /// `start_tls` (for `connect_tls`, from the TCP connection).
    #[must_use = "the options are returned, not changed in place"]
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> TlsClientOptions {
        self.handshake_timeout = timeout;
        self
    }

    /// The name the server's certificate must be valid for.
    pub fn server_name(&self) -> String {
        self.server_name.to_str().into_owned()
    }

    /// The rustls configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// The handshake timeout.
    pub fn handshake_timeout(&self) -> Duration {
        self.handshake_timeout
    }
}

impl fmt::Debug for TlsClientOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsClientOptions")
            .field("server_name", &self.server_name)
            .field("alpn", &self.config.alpn_protocols)
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Options [`Transport::start_tls`](crate::reactor::Transport::start_tls) takes: a
/// [`TlsServerOptions`] (this end is the TLS server) or a [`TlsClientOptions`] (this end
/// is the client). Sealed.
pub trait TlsOptions: sealed::Session {}

impl TlsOptions for TlsServerOptions {}
impl TlsOptions for TlsClientOptions {}

pub(super) mod sealed {
    use std::time::Duration;

    use super::super::TlsSetupError;

    /// What `start_tls` needs of the options.
    pub trait Session {
        /// A new rustls session, before its handshake.
        fn session(&self) -> Result<rustls::Connection, TlsSetupError>;
        /// How long its handshake may take.
        fn timeout(&self) -> Duration;
    }

    impl Session for super::TlsServerOptions {
        fn session(&self) -> Result<rustls::Connection, TlsSetupError> {
            Ok(rustls::ServerConnection::new(self.config.clone())?.into())
        }

        fn timeout(&self) -> Duration {
            self.handshake_timeout
        }
    }

    impl Session for super::TlsClientOptions {
        fn session(&self) -> Result<rustls::Connection, TlsSetupError> {
            Ok(rustls::ClientConnection::new(self.config.clone(), self.server_name.clone())?.into())
        }

        fn timeout(&self) -> Duration {
            self.handshake_timeout
        }
    }
}

/// The crypto weft's own configs use: rustls's `ring` provider (see ARCHITECTURE.md).
fn provider() -> Arc<CryptoProvider> {
    static RING: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    RING.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())).clone()
}

fn client_config(roots: RootCertStore) -> Result<ClientConfig, TlsSetupError> {
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let chain = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Pem(format!("bad certificate: {e}")))?;
    if chain.is_empty() {
        return Err(TlsSetupError::Pem("no certificate".into()));
    }
    Ok(chain)
}

fn alpn_list<P: AsRef<[u8]>>(protocols: impl IntoIterator<Item = P>) -> Vec<Vec<u8>> {
    protocols.into_iter().map(|p| p.as_ref().to_vec()).collect()
}
