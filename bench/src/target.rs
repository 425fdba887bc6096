//! Where the traffic goes: the server address (loopback only), URL paths in
//! the postgres-websockets forms, and the loopback source addresses client
//! sockets are spread over.

use anyhow::{Result, bail};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The server under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Address connected to (always 127.0.0.1).
    pub addr: SocketAddr,
    /// Value of the `Host` header.
    pub host_header: String,
    /// Source addresses to bind client sockets to, round robin.
    pub sources: Vec<IpAddr>,
}

impl Target {
    /// Validates `host` (only `127.0.0.1` and `localhost`) and builds the target.
    pub fn new(host: &str, port: u16, source_addrs: u8) -> Result<Self> {
        if host != "127.0.0.1" && host != "localhost" {
            bail!("refusing host {host:?}: traffic only to 127.0.0.1/localhost");
        }
        if port == 0 {
            bail!("--port must be given (non-zero)");
        }
        let n = source_addrs.max(1);
        let sources = (1..=n)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect();
        Ok(Self {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            host_header: format!("{host}:{port}"),
            sources,
        })
    }

    /// Source address for the `i`-th client socket.
    pub fn source(&self, i: usize) -> IpAddr {
        self.sources[i % self.sources.len()]
    }
}

/// Path of the `/:channel/:token` form.
pub fn channel_path(channel: &str, token: &str) -> String {
    format!("/{channel}/{token}")
}

/// Path of the `/:token` form.
pub fn token_path(token: &str) -> String {
    format!("/{token}")
}

/// Rejects PostgreSQL connection strings that point anywhere but a unix
/// socket directory or the loopback interface.
pub fn check_pg_conninfo(conninfo: &str) -> Result<()> {
    let config: tokio_postgres::Config = conninfo.parse()?;
    for host in config.get_hosts() {
        match host {
            tokio_postgres::config::Host::Unix(_) => {}
            tokio_postgres::config::Host::Tcp(h) => {
                if h != "127.0.0.1" && h != "localhost" {
                    bail!(
                        "refusing PostgreSQL host {h:?}: only unix sockets and 127.0.0.1/localhost"
                    );
                }
            }
        }
    }
    if config.get_hosts().is_empty() {
        bail!("--pg needs an explicit host= (unix socket directory or 127.0.0.1)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts() {
        assert!(Target::new("127.0.0.1", 3000, 4).is_ok());
        assert!(Target::new("localhost", 3000, 4).is_ok());
        assert!(Target::new("10.0.0.1", 3000, 4).is_err());
        assert!(Target::new("example.com", 3000, 4).is_err());
    }

    #[test]
    fn sources_round_robin() {
        let t = Target::new("127.0.0.1", 1, 3).unwrap();
        assert_eq!(t.source(0).to_string(), "127.0.0.1");
        assert_eq!(t.source(2).to_string(), "127.0.0.3");
        assert_eq!(t.source(3).to_string(), "127.0.0.1");
    }

    #[test]
    fn url_forms() {
        assert_eq!(channel_path("c1", "a.b.c"), "/c1/a.b.c");
        assert_eq!(token_path("a.b.c"), "/a.b.c");
    }

    #[test]
    fn pg_hosts() {
        assert!(check_pg_conninfo("host=/tmp/x port=5 user=p dbname=postgres").is_ok());
        assert!(check_pg_conninfo("host=127.0.0.1 user=p").is_ok());
        assert!(check_pg_conninfo("host=db.example.com user=p").is_err());
        assert!(check_pg_conninfo("user=p").is_err());
    }
}
