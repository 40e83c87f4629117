//! TLS over TCP (rustls). Verification is always on: the server's certificate must chain to a
//! trusted root and name the host dialled ([`ServerAddress::host`], sent as SNI). What is
//! trusted is a [`TlsTrust`]: the public Web PKI roots by default, plus or instead of a private
//! deployment's own CA.

use std::sync::Arc;

use futures::future::BoxFuture;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls_pki_types::pem::PemObject as _;

use super::{ByteStream, Connector, ServerAddress, TcpConnector};

/// A CA certificate that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsTrustError {
    /// The text holds no PEM certificate, or a malformed one.
    #[error("CA certificate: {0}")]
    Pem(String),
    /// The certificate parsed but is not usable as a trust anchor.
    #[error("CA certificate refused: {0}")]
    Anchor(#[from] rustls::Error),
    /// Nothing would be trusted: no Web PKI roots and no CA.
    #[error("no trusted certificate authority: pin a CA or keep the Web PKI roots")]
    Empty,
    /// The TLS configuration cannot serve this transport (QUIC needs TLS 1.3).
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// Which certificate authorities a client trusts.
#[derive(Clone, Debug)]
pub struct TlsTrust {
    web_pki: bool,
    extra: Vec<CertificateDer<'static>>,
}

impl Default for TlsTrust {
    /// The public Web PKI roots (Mozilla's list, compiled in).
    fn default() -> TlsTrust {
        TlsTrust {
            web_pki: true,
            extra: Vec::new(),
        }
    }
}

impl TlsTrust {
    /// Trusts only the CA certificates in `pem` (pinning a private deployment's CA, or a
    /// development server's self-signed certificate): a certificate from any public CA is then
    /// refused.
    pub fn pinned_ca_pem(pem: &[u8]) -> Result<TlsTrust, TlsTrustError> {
        Ok(TlsTrust {
            web_pki: false,
            extra: parse_certificates(pem)?,
        })
    }

    /// Also trusts the CA certificates in `pem`, besides whatever is trusted already.
    pub fn add_ca_pem(mut self, pem: &[u8]) -> Result<TlsTrust, TlsTrustError> {
        self.extra.extend(parse_certificates(pem)?);
        Ok(self)
    }

    /// The rustls client configuration: these roots, ring as the crypto provider, `alpn` offered
    /// (empty = none).
    pub fn client_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<Arc<rustls::ClientConfig>, TlsTrustError> {
        let mut roots = rustls::RootCertStore::empty();
        if self.web_pki {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        for ca in &self.extra {
            roots.add(ca.clone())?;
        }
        if roots.is_empty() {
            return Err(TlsTrustError::Empty);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

fn parse_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsTrustError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsTrustError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsTrustError::Pem("no certificate in the PEM text".into()));
    }
    Ok(certs)
}

/// TLS over TCP: connects with [`TcpConnector`] (or any other stream connector, such as an
/// HTTP proxy's CONNECT), then runs the TLS handshake for [`ServerAddress::host`].
pub struct TlsConnector {
    config: Arc<rustls::ClientConfig>,
    under: Arc<dyn Connector>,
}

impl TlsConnector {
    /// TLS over a direct TCP connection, trusting `trust`.
    pub fn new(trust: &TlsTrust) -> Result<TlsConnector, TlsTrustError> {
        TlsConnector::over(trust, Arc::new(TcpConnector))
    }

    /// TLS over the streams `under` opens (a proxy tunnel, say).
    pub fn over(
        trust: &TlsTrust,
        under: Arc<dyn Connector>,
    ) -> Result<TlsConnector, TlsTrustError> {
        Ok(TlsConnector {
            config: trust.client_config(&[])?,
            under,
        })
    }
}

impl Connector for TlsConnector {
    fn connect(
        &self,
        server: &ServerAddress,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn ByteStream>>> {
        let tls = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = ServerName::try_from(server.host.clone());
        let stream = self.under.connect(server);
        Box::pin(async move {
            let name =
                name.map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let stream = stream.await?;
            // A certificate that does not verify fails here, as an InvalidData error carrying
            // rustls's reason.
            let stream = tls.connect(name, stream).await?;
            Ok(Box::new(stream) as Box<dyn ByteStream>)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_without_a_certificate_is_refused_with_a_reason() {
        assert!(matches!(
            TlsTrust::pinned_ca_pem(b"not a certificate"),
            Err(TlsTrustError::Pem(_))
        ));
        assert!(TlsTrust::default().add_ca_pem(b"").is_err());
    }

    #[test]
    fn the_default_trusts_the_web_pki() {
        assert!(TlsTrust::default().client_config(&[]).is_ok());
    }
}
