//! TLS to PostgreSQL with libpq's `sslmode` meanings, on rustls.
//!
//! The original links libpq, so its users put `sslmode=require` or `sslmode=verify-full` with
//! `sslrootcert=…` in `PGWS_DB_URI`. tokio-postgres knows only `disable`, `prefer` and `require`
//! and no certificate options, so [`split`] takes the TLS parameters out of the connection string
//! before tokio-postgres parses it, and [`Connector`] applies them:
//!
//! | `sslmode` | TLS | certificate check |
//! |---|---|---|
//! | `disable` | never | — |
//! | `allow`, `prefer` (the default) | when the server offers it | none (as libpq) |
//! | `require` | always | none, or the chain when `sslrootcert` is given (as libpq) |
//! | `verify-ca` | always | chain to `sslrootcert` |
//! | `verify-full` | always | chain to `sslrootcert` and the host name |
//!
//! `sslrootcert=system` uses the operating system's trusted roots (PostgreSQL 16's spelling).
//! `sslcert` and `sslkey` (PEM, unencrypted key) present a client certificate, for `cert`
//! authentication or `clientcert=verify-*` in `pg_hba.conf`. TLS applies to TCP hosts;
//! Unix-socket connections never use it.
//!
//! The file stays whole (about 520 lines of code, the rest tests): the parameter split, the
//! verifiers and the connector are one policy, libpq's `sslmode` table above, and reading
//! it in one place is what makes it reviewable.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::Socket;
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// libpq tries without TLS first; here the same as `prefer`.
    Allow,
    /// TLS when the server offers it, without checking its certificate.
    #[default]
    Prefer,
    /// TLS always; the certificate is checked only when `sslrootcert` is given.
    Require,
    /// TLS always; the chain must lead to `sslrootcert`.
    VerifyCa,
    /// TLS always; chain and host name are checked.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Result<Self, TlsConfigError> {
        Ok(match value {
            "disable" => Self::Disable,
            "allow" => Self::Allow,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            other => return Err(TlsConfigError::SslMode(other.to_string())),
        })
    }

    /// What tokio-postgres negotiates; certificate checks are [`Connector`]'s part.
    pub fn negotiation(self) -> PgSslMode {
        match self {
            Self::Disable => PgSslMode::Disable,
            Self::Allow | Self::Prefer => PgSslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => PgSslMode::Require,
        }
    }
}

/// Where trusted roots come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCert {
    /// A PEM file with one or more CA certificates.
    File(PathBuf),
    /// The operating system's trusted roots (`sslrootcert=system`).
    System,
}

/// The TLS parameters of a connection string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsSettings {
    /// `sslmode`.
    pub mode: SslMode,
    /// `sslrootcert`.
    pub root_cert: Option<RootCert>,
    /// `sslcert`: the client certificate chain (PEM).
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM, not encrypted).
    pub client_key: Option<PathBuf>,
}

/// A TLS setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// Unknown `sslmode`.
    #[error(
        "invalid sslmode {0:?}: expected disable, allow, prefer, require, verify-ca or verify-full"
    )]
    SslMode(String),
    /// verify-ca/verify-full without roots.
    #[error(
        "sslmode={0} needs sslrootcert=<CA file> (or sslrootcert=system) in the connection string"
    )]
    NoRoots(&'static str),
    /// The root certificate file cannot be used.
    #[error("sslrootcert {path}: {detail}")]
    RootCert {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Only one of `sslcert` and `sslkey`.
    #[error("sslcert and sslkey go together: {0} is missing")]
    ClientPair(&'static str),
    /// The client certificate or key cannot be used.
    #[error("{key} {path}: {detail}")]
    ClientCert {
        /// `sslcert` or `sslkey`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Takes `sslmode`, `sslrootcert`, `sslcert` and `sslkey` out of a libpq connection string (URL or
/// key=value form).
/// The rest is returned unchanged for tokio-postgres; a string this function cannot tokenise is
/// returned as it is, so that tokio-postgres reports the error.
pub fn split(uri: &str) -> Result<(String, TlsSettings), TlsConfigError> {
    let mut settings = TlsSettings::default();
    let rest = take_params(uri, |key, value| -> Result<bool, TlsConfigError> {
        match key {
            "sslmode" => settings.mode = SslMode::parse(value)?,
            "sslrootcert" => {
                settings.root_cert = Some(if value == "system" {
                    RootCert::System
                } else {
                    RootCert::File(PathBuf::from(value))
                })
            }
            "sslcert" => settings.client_cert = Some(PathBuf::from(value)),
            "sslkey" => settings.client_key = Some(PathBuf::from(value)),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    Ok((rest, settings))
}

/// Takes the parameters `take` accepts (it returns `true`) out of a connection string, URL or
/// key=value, and returns the rest for tokio-postgres: how pgws handles the libpq parameters
/// tokio-postgres does not know (the TLS ones here, `target_session_attrs` in
/// [`super::hosts`]). What it cannot tokenise is returned as it is.
pub(crate) fn take_params<E>(
    uri: &str,
    mut take: impl FnMut(&str, &str) -> Result<bool, E>,
) -> Result<String, E> {
    let rest = if uri.starts_with("postgres://") || uri.starts_with("postgresql://") {
        match uri.split_once('?') {
            None => uri.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for part in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = part.split_once('=').unwrap_or((part, ""));
                    let k = percent_decode_str(k).decode_utf8_lossy();
                    let v = percent_decode_str(v).decode_utf8_lossy();
                    if !take(&k, &v)? {
                        kept.push(part);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        match key_values(uri) {
            None => uri.to_string(),
            Some(pairs) => {
                let mut kept = Vec::new();
                for (key, value, raw) in pairs {
                    if !take(&key, &value)? {
                        kept.push(raw);
                    }
                }
                kept.join(" ")
            }
        }
    };
    Ok(rest)
}

/// Tokenises a key=value connection string: `(key, unquoted value, the pair's original text)`.
fn key_values(s: &str) -> Option<Vec<(String, String, &str)>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() {
            return Some(out);
        }
        let start = i;
        while i < b.len() && b[i] != b'=' && !b[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = s[start..i].to_string();
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == b.len() || b[i] != b'=' || key.is_empty() {
            return None;
        }
        i += 1;
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            loop {
                match b.get(i)? {
                    b'\'' => {
                        i += 1;
                        break;
                    }
                    b'\\' => {
                        value.push(*b.get(i + 1)?);
                        i += 2;
                    }
                    c => {
                        value.push(*c);
                        i += 1;
                    }
                }
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' {
                    value.push(*b.get(i + 1)?);
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
        }
        out.push((key, String::from_utf8(value).ok()?, &s[start..i]));
    }
}

/// Makes TLS connections for tokio-postgres with the checks `sslmode` asks for.
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

impl Connector {
    /// Reads the root certificates (if any) and builds the rustls configuration.
    pub fn new(settings: &TlsSettings) -> Result<Self, TlsConfigError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let roots = match &settings.root_cert {
            None => None,
            Some(root) => Some(Arc::new(load_roots(root)?)),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, roots) {
            (SslMode::VerifyCa, None) => return Err(TlsConfigError::NoRoots("verify-ca")),
            (SslMode::VerifyFull, None) => return Err(TlsConfigError::NoRoots("verify-full")),
            (SslMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
            (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Arc::new(Lenient {
                provider: provider.clone(),
                chain: Some(webpki(roots, &provider)?),
            }),
            // libpq checks nothing in these modes; neither do we (encryption only).
            (_, _) => Arc::new(Lenient {
                provider: provider.clone(),
                chain: None,
            }),
        };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let config = match (&settings.client_cert, &settings.client_key) {
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(TlsConfigError::ClientPair("sslkey")),
            (None, Some(_)) => return Err(TlsConfigError::ClientPair("sslcert")),
            (Some(cert), Some(key)) => {
                let (chain, key) = load_client_identity(cert, key)?;
                builder.with_client_auth_cert(chain, key)?
            }
        };
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

fn webpki(
    roots: Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>, TlsConfigError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))
}

fn load_client_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsConfigError> {
    let fail =
        |which: &'static str, path: &std::path::Path, detail: String| TlsConfigError::ClientCert {
            key: which,
            path: path.to_path_buf(),
            detail,
        };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| fail("sslcert", cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail("sslcert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(fail("sslcert", cert, "no certificate in the file".into()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| fail("sslkey", key, e.to_string()))?;
    Ok((chain, key_der))
}

fn load_roots(root: &RootCert) -> Result<RootCertStore, TlsConfigError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let fail = |detail: String| TlsConfigError::RootCert {
                path: path.clone(),
                detail,
            };
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| fail(e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(e.to_string()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(fail("no usable CA certificate in the file".into()));
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsConfigError::RootCert {
                    path: PathBuf::from("system"),
                    detail: "no trusted roots found on this system".into(),
                });
            }
        }
    }
    Ok(store)
}

/// The certificate check of `prefer`/`require`/`verify-ca`: with `chain` unset (libpq's
/// `prefer` and `require` without roots) any certificate is accepted, encryption only; with it
/// the chain must lead to a trusted root but the host name is not compared. Handshake signatures
/// are always checked.
#[derive(Debug)]
struct Lenient {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for Lenient {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl MakeTlsConnect<Socket> for Connector {
    type Stream = PgTlsStream;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, io::Error> {
        // tokio-postgres asks for a connector even for Unix sockets (no host name); it never
        // runs the handshake there.
        let domain = if domain.is_empty() {
            "localhost"
        } else {
            domain
        };
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect {
            config: self.config.clone(),
            name,
        })
    }
}

/// One pending TLS handshake.
pub struct Connect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl TlsConnect<Socket> for Connect {
    type Stream = PgTlsStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTlsStream>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(PgTlsStream(Box::new(tls)))
        })
    }
}

/// A TLS connection to PostgreSQL. Offers no channel binding, so SCRAM runs without `-PLUS`.
pub struct PgTlsStream(Box<tokio_rustls::client::TlsStream<Socket>>);

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_ok(uri: &str) -> (String, TlsSettings) {
        split(uri).expect("splits")
    }

    #[test]
    fn url_form() {
        let (rest, s) = split_ok(
            "postgres://u:p@db.example.com:5432/app?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        );
        assert_eq!(
            rest,
            "postgres://u:p@db.example.com:5432/app?application_name=x"
        );
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert, Some(RootCert::File("/etc/ca.pem".into())));
        let (rest, s) = split_ok("postgresql://localhost/app?sslmode=require");
        assert_eq!(rest, "postgresql://localhost/app");
        assert_eq!(s.mode, SslMode::Require);
        assert_eq!(s.root_cert, None);
        let (rest, s) = split_ok("postgres://localhost/app");
        assert_eq!(rest, "postgres://localhost/app");
        assert_eq!(s, TlsSettings::default());
        assert_eq!(s.mode, SslMode::Prefer);
    }

    #[test]
    fn key_value_form() {
        let (rest, s) = split_ok(
            "host=db port=5432 sslmode = verify-ca  password='a b\\'c' sslrootcert='/my ca.pem' dbname=app",
        );
        assert_eq!(rest, "host=db port=5432 password='a b\\'c' dbname=app");
        assert_eq!(s.mode, SslMode::VerifyCa);
        assert_eq!(s.root_cert, Some(RootCert::File("/my ca.pem".into())));
        let (rest, s) =
            split_ok("host=db sslrootcert=system sslmode=verify-full sslcert=/c.pem sslkey=/k.pem");
        assert_eq!(rest, "host=db");
        assert_eq!(s.root_cert, Some(RootCert::System));
        assert_eq!(s.client_cert, Some("/c.pem".into()));
        assert_eq!(s.client_key, Some("/k.pem".into()));
        // What it cannot tokenise goes to tokio-postgres as it is.
        let (rest, _) = split_ok("host=db password='unterminated");
        assert_eq!(rest, "host=db password='unterminated");
    }

    #[test]
    fn the_rest_still_parses_and_negotiation_follows_the_mode() {
        let (rest, s) = split_ok("host=db user=u sslmode=verify-full sslrootcert=x.pem");
        let cfg: tokio_postgres::Config = rest.parse().expect("tokio-postgres parses the rest");
        assert_eq!(cfg.get_user(), Some("u"));
        assert_eq!(s.mode.negotiation(), PgSslMode::Require);
        assert_eq!(SslMode::Allow.negotiation(), PgSslMode::Prefer);
        assert_eq!(SslMode::Disable.negotiation(), PgSslMode::Disable);
    }

    #[test]
    fn bad_settings_are_explained() {
        let e = split("postgres://h/d?sslmode=sometimes").unwrap_err();
        assert!(e.to_string().contains("\"sometimes\""), "{e}");
        let e = Connector::new(&TlsSettings {
            mode: SslMode::VerifyFull,
            ..TlsSettings::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("sslrootcert"), "{e}");
        let e = Connector::new(&TlsSettings {
            mode: SslMode::VerifyCa,
            root_cert: Some(RootCert::File("/nonexistent/ca.pem".into())),
            ..TlsSettings::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = Connector::new(&TlsSettings {
            client_cert: Some("/c.pem".into()),
            ..TlsSettings::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("sslkey is missing"), "{e}");
        let e = Connector::new(&TlsSettings {
            client_cert: Some("/nonexistent/c.pem".into()),
            client_key: Some("/nonexistent/k.pem".into()),
            ..TlsSettings::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("sslcert /nonexistent/c.pem"), "{e}");
        assert!(Connector::new(&TlsSettings::default()).is_ok());
    }
}
