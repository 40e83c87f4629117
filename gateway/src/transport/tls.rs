//! TLS over TCP (rustls). The server's identity is a certificate chain and its key, from PEM
//! files in production or a self-signed pair for development ([`TlsIdentity::self_signed`]).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::tcp::TcpAcceptor;
use super::{Acceptor, AnyStream, Establishing};

/// Why a TLS identity could not be loaded or made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the certificate and key (they do not match, or the key type is not
    /// supported).
    #[error("certificate and key refused: {0}")]
    Rejected(#[from] rustls::Error),
    /// A self-signed pair could not be generated.
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
}

/// A server's certificate chain and private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// Leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// A self-signed identity and its certificate in PEM, which clients add as their trusted CA.
#[derive(Clone, Debug)]
pub struct SelfSigned {
    /// What the server presents.
    pub identity: TlsIdentity,
    /// The certificate, PEM: what a development client trusts.
    pub cert_pem: String,
    /// The private key, PEM.
    pub key_pem: String,
}

impl TlsIdentity {
    /// Reads a certificate chain (leaf first) and its private key from PEM files.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<TlsIdentity, TlsError> {
        let pem_error = |path: &Path, reason: String| TlsError::Pem {
            path: path.display().to_string(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_error(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_error(cert, e.to_string()))?;
        if certs.is_empty() {
            return Err(pem_error(cert, "no certificate in the file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_error(key, e.to_string()))?;
        Ok(TlsIdentity { certs, key })
    }

    /// A new self-signed certificate for `hosts` (DNS names or IP literals), for development
    /// and tests: clients must be told to trust it ([`SelfSigned::cert_pem`]).
    pub fn self_signed(hosts: &[String]) -> Result<SelfSigned, TlsError> {
        let generated = rcgen::generate_simple_self_signed(hosts.to_vec())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let key = PrivateKeyDer::try_from(generated.key_pair.serialize_der())
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        Ok(SelfSigned {
            identity: TlsIdentity {
                certs: vec![generated.cert.der().clone()],
                key,
            },
            cert_pem: generated.cert.pem(),
            key_pem: generated.key_pair.serialize_pem(),
        })
    }

    /// A rustls server configuration presenting this identity, offering `alpn` protocols
    /// (empty = no ALPN).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

/// Accepts TLS clients on a TCP listener. The TLS handshake runs in each connection's own task
/// (see [`Acceptor::establish`]), within the handshake deadline.
pub struct TlsAcceptor {
    tcp: TcpAcceptor,
    tls: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for TlsAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsAcceptor")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl TlsAcceptor {
    /// Listens on `addr` and presents `identity`. Accepted sockets get a kernel send buffer of
    /// `send_buffer` bytes (0 = the kernel's autotuning).
    pub fn bind(
        addr: SocketAddr,
        send_buffer: u32,
        identity: &TlsIdentity,
    ) -> Result<TlsAcceptor, std::io::Error> {
        let config = identity
            .server_config(&[])
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        Ok(TlsAcceptor {
            tcp: TcpAcceptor::bind(addr, send_buffer)?,
            tls: tokio_rustls::TlsAcceptor::from(config),
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

impl Acceptor for TlsAcceptor {
    const TRANSPORT: &'static str = "tls";
    type Incoming = TcpStream;
    type Stream = AnyStream<TlsStream<TcpStream>>;

    async fn accept(&mut self) -> std::io::Result<(TcpStream, String)> {
        self.tcp.accept().await
    }

    fn establish(&self, stream: TcpStream) -> Establishing<Self::Stream> {
        let tls = self.tls.clone();
        Box::pin(async move {
            let _ = stream.set_nodelay(true);
            Ok(AnyStream(tls.accept(stream).await?))
        })
    }
}
