//! A fault-injecting TCP proxy for the fault-injection suite: put it between a service and
//! what it talks to (Redis, the broker, WeChat) and change what the network does while the
//! service runs.
//!
//! The kernel here has no `netem` qdisc, so latency and cut connections are made in user space:
//! every byte passes through the proxy, which can delay each chunk ([`Mode::Latency`]), reset
//! every connection and refuse new ones ([`Mode::Reset`]: a crashed or firewalled peer that
//! answers RST), or keep the connections open and forward nothing in either direction
//! ([`Mode::Blackhole`]: a partition, where only timeouts and heartbeats notice anything).
//! Back to [`Mode::Pass`], new connections work again; connections cut by a reset stay cut,
//! those held by a blackhole forward again from where they stopped (bytes read meanwhile are
//! dropped, as on a lossy link past its retransmissions).
//!
//! [`FaultProxy::awaiting`] tells whether a request is in flight: the connections whose last
//! bytes went upstream with no answer since (for a request/response protocol such as HTTP/1.1,
//! a request without its response yet).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything at once.
    Pass,
    /// Forward every chunk this much later, in both directions.
    Latency(Duration),
    /// Reset every open connection (RST) and every new one.
    Reset,
    /// Accept and keep connections, forward nothing either way.
    Blackhole,
}

#[derive(Debug)]
struct State {
    mode: Mutex<Mode>,
    /// Cancelled by a reset: every connection opened before it ends.
    generation: Mutex<CancellationToken>,
    awaiting: AtomicUsize,
    connections: AtomicU64,
}

impl State {
    fn mode(&self) -> Mode {
        *self
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn generation(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// A running proxy on `127.0.0.1:<port>`; stopped (every connection closed) when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    /// Listens on `listen` and forwards to `upstream`.
    pub async fn start_on(listen: SocketAddr, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            mode: Mutex::new(Mode::Pass),
            generation: Mutex::new(CancellationToken::new()),
            awaiting: AtomicUsize::new(0),
            connections: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept(listener, upstream, state.clone(), stop.clone()));
        Ok(Self { addr, state, stop })
    }

    /// The address services should connect to instead of the upstream's.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Changes what the proxy does from now on; [`Mode::Reset`] also resets the open
    /// connections.
    pub fn set(&self, mode: Mode) {
        *self
            .state
            .mode
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = mode;
        if mode == Mode::Reset {
            let mut generation = self
                .state
                .generation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            generation.cancel();
            *generation = CancellationToken::new();
        }
    }

    /// Connections whose last bytes went upstream with nothing back since.
    pub fn awaiting(&self) -> usize {
        self.state.awaiting.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.state.generation().cancel();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    loop {
        let client = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((client, _)) => client,
                Err(_) => continue,
            },
        };
        state.connections.fetch_add(1, Ordering::SeqCst);
        if state.mode() == Mode::Reset {
            reset(client);
            continue;
        }
        tokio::spawn(connection(client, upstream, state.clone(), stop.clone()));
    }
}

/// Closes with RST instead of FIN (linger 0).
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    state: Arc<State>,
    stop: CancellationToken,
) {
    let generation = state.generation();
    // A blackholed new connection is held, never connected upstream, until it ends.
    while state.mode() == Mode::Blackhole {
        tokio::select! {
            () = stop.cancelled() => return,
            () = generation.cancelled() => return reset(client),
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return reset(client);
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let pending = Arc::new(AtomicBool::new(false));
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let up = pump(&mut client_read, &mut server_write, &state, &pending, true);
    let down = pump(&mut server_read, &mut client_write, &state, &pending, false);
    let cut = tokio::select! {
        () = stop.cancelled() => true,
        () = generation.cancelled() => true,
        _ = async { tokio::join!(up, down) } => false,
    };
    if pending.swap(false, Ordering::SeqCst) {
        state.awaiting.fetch_sub(1, Ordering::SeqCst);
    }
    if cut {
        // Both sides see a reset, as from a peer that crashed or a firewall that rejects.
        let _ = client_read.as_ref().set_zero_linger();
        let _ = server_read.as_ref().set_zero_linger();
    }
}

/// Copies one direction until EOF or an error, applying the mode to every chunk, and keeps
/// the `awaiting` count: bytes upstream open a request, bytes back close it.
async fn pump(
    from: &mut tokio::net::tcp::OwnedReadHalf,
    to: &mut tokio::net::tcp::OwnedWriteHalf,
    state: &State,
    pending: &AtomicBool,
    upstream: bool,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match state.mode() {
            Mode::Blackhole => continue,
            Mode::Latency(delay) => tokio::time::sleep(delay).await,
            Mode::Pass | Mode::Reset => {}
        }
        if upstream {
            if !pending.swap(true, Ordering::SeqCst) {
                state.awaiting.fetch_add(1, Ordering::SeqCst);
            }
        } else if pending.swap(false, Ordering::SeqCst) {
            state.awaiting.fetch_sub(1, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An echo server; its address.
    async fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(s: &mut TcpStream) -> std::io::Result<()> {
        s.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }

    #[tokio::test]
    async fn passes_delays_resets_and_blackholes() {
        let proxy = FaultProxy::start(echo().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut s).await.unwrap();
        assert_eq!(proxy.awaiting(), 0, "answered");

        proxy.set(Mode::Latency(Duration::from_millis(100)));
        let started = Instant::now();
        round_trip(&mut s).await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(200), "both ways");

        proxy.set(Mode::Blackhole);
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        let held = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(held.is_err(), "nothing comes back through a blackhole");

        proxy.set(Mode::Reset);
        let cut = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(
            matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
            "the open connection is cut: {cut:?}"
        );
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        assert!(
            round_trip(&mut fresh).await.is_err(),
            "new ones are refused"
        );

        proxy.set(Mode::Pass);
        let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
        round_trip(&mut again).await.unwrap();
        assert_eq!(proxy.connections(), 3);
    }

    #[tokio::test]
    async fn counts_requests_awaiting_their_answer() {
        // An upstream that reads and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        let proxy = FaultProxy::start(upstream).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"request").await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while proxy.awaiting() == 0 {
            assert!(Instant::now() < deadline, "the request is not counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(s);
        let deadline = Instant::now() + Duration::from_secs(2);
        while proxy.awaiting() != 0 {
            assert!(
                Instant::now() < deadline,
                "a closed connection still counts"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
