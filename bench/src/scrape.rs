//! Reading the server's Prometheus metrics from its admin listener (`PGWS_ADMIN_ADDRESS`,
//! loopback only): one `GET /metrics`, the text exposition format parsed into name → value.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response accepted.
const MAX_RESPONSE: u64 = 8 << 20;

/// One scrape: every sample, keyed by its name with labels (`pgws_drops_total{reason="x"}`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    /// Parses the text exposition format (comments and unparsable lines are skipped).
    pub fn parse(text: &str) -> Self {
        let mut m = BTreeMap::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            // `name{labels} value [timestamp]`: labels may contain spaces, so split after `}`.
            let (key, rest) = match line.find('}') {
                Some(close) => (&line[..=close], &line[close + 1..]),
                None => match line.split_once(' ') {
                    Some((k, r)) => (k, r),
                    None => continue,
                },
            };
            if let Some(v) = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
            {
                m.insert(key.trim().to_string(), v);
            }
        }
        Self(m)
    }

    /// Sum of every sample named `name` (whatever its labels); `None` when absent.
    pub fn get(&self, name: &str) -> Option<f64> {
        let mut found = None;
        for (k, v) in &self.0 {
            let base = k.split('{').next().unwrap_or(k);
            if base == name {
                *found.get_or_insert(0.0) += v;
            }
        }
        found
    }
}

/// Checks an admin address: `host:port` on the loopback interface.
pub fn check_addr(addr: &str) -> Result<SocketAddr> {
    let a: SocketAddr = addr
        .parse()
        .with_context(|| format!("--admin {addr:?}: expected ip:port"))?;
    if !a.ip().is_loopback() {
        bail!("refusing --admin {addr}: only loopback addresses");
    }
    Ok(a)
}

/// Fetches and parses `/metrics` from `addr`.
pub async fn scrape(addr: SocketAddr) -> Result<Metrics> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr)
            .await
            .context("connecting to the admin listener")?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .await?;
        let mut out = Vec::new();
        (&mut s).take(MAX_RESPONSE).read_to_end(&mut out).await?;
        let text = String::from_utf8_lossy(&out);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            bail!("malformed admin response");
        };
        if !head.starts_with("HTTP/1.1 200") {
            bail!(
                "admin answered {:?}",
                head.lines().next().unwrap_or_default()
            );
        }
        Ok(Metrics::parse(body))
    })
    .await
    .map_err(|_| anyhow::anyhow!("timeout scraping the admin listener"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exposition_format() {
        let m = Metrics::parse(
            "# HELP pgws_window_bytes Text bytes\n# TYPE pgws_window_bytes gauge\n\
             pgws_window_bytes 100000\npgws_replayed_total 12\n\
             pgws_drops_total{reason=\"a b\"} 2\npgws_drops_total{reason=\"c\"} 3 1700000000\n# EOF\n",
        );
        assert_eq!(m.get("pgws_window_bytes"), Some(100_000.0));
        assert_eq!(m.get("pgws_replayed_total"), Some(12.0));
        assert_eq!(m.get("pgws_drops_total"), Some(5.0));
        assert_eq!(m.get("pgws_nothing"), None);
        assert!(check_addr("127.0.0.1:9187").is_ok());
        assert!(check_addr("10.1.1.1:9187").is_err());
        assert!(check_addr("localhost").is_err());
    }
}
