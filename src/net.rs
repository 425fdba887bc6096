//! Sockets and TLS: binding `PGWS_HOST`'s forms, and the rustls acceptor for
//! `PGWS_CERTIFICATE_FILE` + `PGWS_KEY_FILE`.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Where the server binds, decoded from `PGWS_HOST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPreference {
    /// `*`: every IPv4 and IPv6 address (a dual-stack socket when IPv6 exists).
    Any,
    /// `*4`: every IPv4 address (the original's default).
    AnyPreferV4,
    /// `!4`: every IPv4 address, IPv4 only.
    V4Only,
    /// `*6`: every address through a dual-stack IPv6 socket, falling back to IPv4.
    AnyPreferV6,
    /// `!6`: every IPv6 address, IPv6 only.
    V6Only,
    /// A host name or an address literal.
    Named(String),
}

impl HostPreference {
    /// Decodes Warp's host-preference syntax.
    pub fn parse(s: &str) -> Self {
        match s {
            "*" => Self::Any,
            "*4" => Self::AnyPreferV4,
            "!4" => Self::V4Only,
            "*6" => Self::AnyPreferV6,
            "!6" => Self::V6Only,
            other => Self::Named(other.to_string()),
        }
    }
}

/// The address as the user would write it in a URL (`0.0.0.0` for `*4`, `[::]` for `*`): what
/// bind errors show, instead of the variant's name.
impl std::fmt::Display for HostPreference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::AnyPreferV4 | Self::V4Only => f.write_str("0.0.0.0"),
            Self::Any | Self::AnyPreferV6 | Self::V6Only => f.write_str("[::]"),
            Self::Named(name) if name.contains(':') && !name.starts_with('[') => {
                write!(f, "[{name}]")
            }
            Self::Named(name) => f.write_str(name),
        }
    }
}

/// PEM files for native TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub certificate: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

fn listen(addr: SocketAddr, v6_only: Option<bool>) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(only) = v6_only {
        socket.set_only_v6(only)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Binds the listening socket for a host preference (Warp's syntax, spec §1.1).
pub async fn bind(host: &HostPreference, port: u16) -> io::Result<TcpListener> {
    let any4 = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let any6 = SocketAddr::from((Ipv6Addr::UNSPECIFIED, port));
    match host {
        HostPreference::Any | HostPreference::AnyPreferV6 => {
            listen(any6, Some(false)).or_else(|_| listen(any4, None))
        }
        HostPreference::AnyPreferV4 | HostPreference::V4Only => listen(any4, None),
        HostPreference::V6Only => listen(any6, Some(true)),
        HostPreference::Named(name) => {
            let mut last = io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                format!("PGWS_HOST '{name}' resolves to no address"),
            );
            for addr in tokio::net::lookup_host((name.as_str(), port)).await? {
                match listen(addr, addr.is_ipv6().then_some(true)) {
                    Ok(l) => return Ok(l),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{var} '{path}': {message}")]
    Pem {
        /// The variable naming the file.
        var: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// rustls refused the pair (its error is part of the text, not a `source`, so that printing
    /// the chain does not repeat it).
    #[error("TLS certificate and key do not form a usable pair: {0}")]
    Config(rustls::Error),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        Self::Config(e)
    }
}

/// Builds the TLS acceptor (HTTP/1.1 only; websockets need it).
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let cert_path = files.certificate.display().to_string();
    let key_path = files.key.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.certificate)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Pem {
            var: "PGWS_CERTIFICATE_FILE",
            path: cert_path.clone(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            var: "PGWS_CERTIFICATE_FILE",
            path: cert_path,
            message: "no certificate found".into(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Pem {
        var: "PGWS_KEY_FILE",
        path: key_path,
        message: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The original's answer to a plain-text request on the TLS port (warp-tls).
pub const PLAIN_ON_TLS_RESPONSE: &[u8] = b"HTTP/1.1 426 Upgrade Required\r\nUpgrade: TLS/1.0, HTTP/1.1\r\nConnection: Upgrade\r\nContent-Type: text/plain\r\nContent-Length: 50\r\n\r\nThis server only accepts secure HTTPS connections.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_on_tls_body_length_is_right() {
        let text = std::str::from_utf8(PLAIN_ON_TLS_RESPONSE).unwrap();
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        assert_eq!(body.len(), 50);
    }

    #[tokio::test]
    async fn binds_loopback_on_port_zero() {
        let l = bind(&HostPreference::Named("127.0.0.1".into()), 0)
            .await
            .unwrap();
        assert_ne!(l.local_addr().unwrap().port(), 0);
        let l = bind(&HostPreference::V4Only, 0).await.unwrap();
        assert!(l.local_addr().unwrap().is_ipv4());
    }

    #[test]
    fn hosts_display_as_addresses() {
        for (host, shown) in [
            ("*4", "0.0.0.0"),
            ("!4", "0.0.0.0"),
            ("*", "[::]"),
            ("*6", "[::]"),
            ("!6", "[::]"),
            ("localhost", "localhost"),
            ("::1", "[::1]"),
            ("127.0.0.1", "127.0.0.1"),
        ] {
            assert_eq!(HostPreference::parse(host).to_string(), shown, "{host}");
        }
    }
}
