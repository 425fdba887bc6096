//! A TCP proxy between pgws and PostgreSQL that can cut the network: the chaos run's
//! `net-cut` fault and the integration tests' network-cut test (tests/it includes this file).
//!
//! It listens on `127.0.0.1:<port>` and forwards every connection to PostgreSQL's Unix socket. [`Proxy::cut`] drops every forwarded connection at once (reset, as a network
//! failure does: no orderly goodbye to either side) and, until [`Proxy::heal`], refuses new
//! connections (accepted and reset at once) or blackholes them (accepted, never answered: the
//! client waits for its own time-out); healing resets the blackholed ones and forwards again.
//! Only tokio and the standard library, so that the bench crate and the tests share it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Where the proxy forwards to.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A Unix socket file (PostgreSQL's `<dir>/.s.PGSQL.<port>`).
    Unix(PathBuf),
}

/// How new connections are treated while the network is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CutMode {
    /// Accepted and reset at once (what a closed port or a rejecting firewall looks like).
    Refuse,
    /// Accepted and never answered until the cut heals (a silent firewall, a dead route).
    Blackhole,
}

impl CutMode {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Blackhole => "blackhole",
        }
    }
}

/// The proxy's state; every forwarded connection watches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct State {
    /// `None`: forwarding; `Some`: cut.
    cut: Option<CutMode>,
    /// Incremented by every cut: a connection made before it ends.
    generation: u64,
}

/// A running proxy; dropping it stops accepting (forwarded connections end with their peers).
pub struct Proxy {
    addr: SocketAddr,
    state: watch::Sender<State>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards to `upstream`.
    pub async fn start(upstream: Upstream) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (state, _) = watch::channel(State {
            cut: None,
            generation: 0,
        });
        let held = Arc::new(Mutex::new(Vec::new()));
        let accept = tokio::spawn(accept_loop(listener, upstream, state.clone(), held.clone()));
        Ok(Self {
            addr,
            state,
            held,
            accept,
        })
    }

    /// The address to connect to instead of PostgreSQL.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Cuts the network: every forwarded connection is reset, new ones are treated by `mode`.
    pub fn cut(&self, mode: CutMode) {
        self.state.send_modify(|s| {
            s.cut = Some(mode);
            s.generation += 1;
        });
    }

    /// Forwards again; connections blackholed meanwhile are reset (their clients gave up or will).
    pub fn heal(&self) {
        self.state.send_modify(|s| s.cut = None);
        let held: Vec<TcpStream> = std::mem::take(&mut *self.held.lock().expect("held list"));
        for s in held {
            reset(s);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.send_modify(|s| s.generation += 1);
    }
}

/// Closes with a reset (linger 0) instead of an orderly FIN.
fn reset(s: TcpStream) {
    // Deprecated because a non-zero linger blocks the thread on drop; a zero linger does not
    // wait at all (the kernel discards the send buffer and sends a reset).
    #[allow(deprecated)]
    let _ = s.set_linger(Some(std::time::Duration::ZERO));
    drop(s);
}

async fn accept_loop(
    listener: TcpListener,
    upstream: Upstream,
    state: watch::Sender<State>,
    held: Arc<Mutex<Vec<TcpStream>>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let now = *state.borrow();
        match now.cut {
            Some(CutMode::Refuse) => reset(client),
            Some(CutMode::Blackhole) => held.lock().expect("held list").push(client),
            None => {
                let rx = state.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = client.set_nodelay(true);
                    let Upstream::Unix(path) = &upstream;
                    match UnixStream::connect(path).await {
                        Ok(up) => forward(client, up, rx, now.generation).await,
                        Err(_) => reset(client),
                    }
                });
            }
        }
    }
}

/// Copies both ways until either side ends or a cut comes (then the client side is reset and the
/// upstream side dropped).
async fn forward<U>(
    mut client: TcpStream,
    mut up: U,
    mut state: watch::Receiver<State>,
    generation: u64,
) where
    U: AsyncRead + AsyncWrite + Unpin,
{
    let cut = async {
        let _ = state.wait_for(|s| s.generation != generation).await;
    };
    let ended = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut up) => false,
        _ = cut => true,
    };
    drop(up);
    if ended {
        reset(client);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    async fn echo_server() -> (PathBuf, JoinHandle<()>) {
        let dir = std::env::temp_dir().join(format!("chaos-proxy-test-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("echo.sock");
        let _ = std::fs::remove_file(&path);
        let l = UnixListener::bind(&path).unwrap();
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 256];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (path, task)
    }

    async fn round_trip(s: &mut TcpStream, text: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(text).await?;
        let mut got = vec![0u8; text.len()];
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        Ok(got)
    }

    #[tokio::test]
    async fn forwards_cuts_refuses_blackholes_and_heals() {
        let (path, _server) = echo_server().await;
        let proxy = Proxy::start(Upstream::Unix(path)).await.unwrap();
        let mut a = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut a, b"hello").await.unwrap(), b"hello");
        proxy.cut(CutMode::Refuse);
        // The forwarded connection is gone: a read ends (reset or end of stream).
        let mut b = [0u8; 8];
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), a.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        // New connections are reset.
        let mut c = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(round_trip(&mut c, b"x").await.is_err());
        // Blackholed: accepted, never answered.
        proxy.cut(CutMode::Blackhole);
        let mut d = TcpStream::connect(proxy.addr()).await.unwrap();
        d.write_all(b"y").await.unwrap();
        let silent =
            tokio::time::timeout(std::time::Duration::from_millis(300), d.read(&mut b)).await;
        assert!(silent.is_err(), "no answer while blackholed");
        proxy.heal();
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), d.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "reset at heal: {r:?}");
        let mut e = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_eq!(round_trip(&mut e, b"again").await.unwrap(), b"again");
    }
}
