//! Native TLS with `PGWS_CERTIFICATE_FILE` + `PGWS_KEY_FILE` (spec §2.4).

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::ServerName};

use crate::common::*;

pub(crate) const CERT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls-cert.pem");
pub(crate) const KEY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tls-key.pem");

fn connector() -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(CERT).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

pub(crate) async fn tls_stream(s: &TestServer) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(s.addr).await.unwrap();
    connector()
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake")
}

#[tokio::test]
async fn https_wss_and_plain_requests_on_the_tls_port() {
    let s = start(&["--certificate-file", CERT, "--key-file", KEY]).await;

    let mut tls = tls_stream(&s).await;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut buf))
        .await
        .expect("response");
    let (status, _, body) = parse_response(&buf);
    assert_eq!((status, body.as_slice()), (200, &b"Hello, Web!"[..]));

    let t = token(json!({"mode":"rw"}));
    let url = format!("wss://localhost:{}/chat/{t}", s.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, tls_stream(&s).await)
        .await
        .expect("wss handshake");
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text("over tls"))
        .await
        .unwrap();
    let frame = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(v["payload"], "over tls");

    let (status, headers, body) = get(s.addr, "GET", "/", "").await;
    assert_eq!(status, 426);
    assert_eq!(body, "This server only accepts secure HTTPS connections.");
    assert_eq!(header(&headers, "upgrade"), Some("TLS/1.0, HTTP/1.1"));
    s.stop().await.unwrap();
}
