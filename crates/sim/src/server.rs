//! The HTTP server: one listener for the WeChat API, the login pages and the admin API, with
//! fault injection on the API paths and the virtual-time ticket schedule.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{Request, State as AxState};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::serve::{IncomingStream, Listener};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::SimError;
use crate::codes::ApiError;
use crate::endpoint::Endpoint;
use crate::sim::{Sim, lock};

/// A connection the fault layer can cut: once `killed`, every read and write fails, so hyper
/// drops the connection without writing a response.
pub(crate) struct ConnStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

fn aborted() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "dropped by fault injection",
    )
}

impl AsyncRead for ConnStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    /// Vectored, so hyper queues a large body's chunks instead of copying them into its
    /// write buffer (a 10 MB media download would otherwise be copied once more).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Per-connection info: the peer and the switch that cuts the connection.
#[derive(Debug, Clone)]
pub(crate) struct ConnInfo {
    #[allow(dead_code)]
    pub peer: SocketAddr,
    pub killed: Arc<AtomicBool>,
}

pub(crate) struct SimListener(pub TcpListener);

impl Listener for SimListener {
    type Io = ConnStream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((inner, peer)) => {
                    let _ = inner.set_nodelay(true);
                    let killed = Arc::new(AtomicBool::new(false));
                    return (
                        ConnStream {
                            inner,
                            killed: Arc::clone(&killed),
                        },
                        ConnInfo { peer, killed },
                    );
                }
                // Too many open files and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnInfo {
            peer: self.0.local_addr()?,
            killed: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Connected<IncomingStream<'_, SimListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, SimListener>) -> Self {
        stream.remote_addr().clone()
    }
}

async fn fault_layer(AxState(sim): AxState<Arc<Sim>>, req: Request, next: Next) -> Response {
    if !sim.faults_armed.load(Ordering::Relaxed) {
        return next.run(req).await;
    }
    // The layer wraps the API routes only, so the path is always an endpoint's.
    let Some(endpoint) = Endpoint::from_path(req.uri().path()) else {
        return next.run(req).await;
    };
    let decision = lock(&sim.faults).decide(endpoint);
    if let Some(latency) = decision.latency {
        tokio::time::sleep(latency).await;
    }
    if decision.drop {
        if let Some(ConnectInfo(info)) = req.extensions().get::<ConnectInfo<ConnInfo>>() {
            info.killed.store(true, Ordering::Relaxed);
        }
        sim.record_call(endpoint, None, -2);
        return StatusCode::OK.into_response();
    }
    if let Some((code, errmsg)) = decision.error {
        sim.record_call(endpoint, None, code);
        let errmsg = errmsg.unwrap_or_else(|| ApiError::new(code).message());
        return axum::Json(json!({"errcode": code, "errmsg": errmsg})).into_response();
    }
    let response = next.run(req).await;
    if let Some(delay) = decision.respond_after {
        tokio::time::sleep(delay).await;
    }
    response
}

async fn unknown_path(req: Request) -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(json!({
            "errcode": -1,
            "errmsg": format!("wxhub-sim does not serve {} {}", req.method(), req.uri().path()),
        })),
    )
        .into_response()
}

pub(crate) fn app(sim: &Arc<Sim>) -> Router {
    let api = crate::api::router().layer(axum::middleware::from_fn_with_state(
        Arc::clone(sim),
        fault_layer,
    ));
    api.merge(crate::login::router())
        .merge(crate::admin::router())
        .fallback(unknown_path)
        .with_state(Arc::clone(sim))
}

/// Pushes tickets whenever sim time crosses a multiple of the ticket interval, including
/// crossings caused by [`crate::VirtualClock::advance`].
async fn ticket_schedule(sim: Arc<Sim>) {
    let interval = i64::try_from(sim.config.ticket_interval.as_millis())
        .unwrap_or(600_000)
        .max(1000);
    let mut last_mark = sim.clock.now_ms().div_euclid(interval);
    loop {
        let notified = sim.clock.moved_notify().notified();
        tokio::pin!(notified);
        // Register before reading the clock so an advance in between is not missed.
        notified.as_mut().enable();
        let now = sim.clock.now_ms();
        let mark = now.div_euclid(interval);
        if mark > last_mark {
            last_mark = mark;
            let due: Vec<String> = lock(&sim.state)
                .components
                .values()
                .filter(|c| c.auto_ticket_push && c.auth_event_url.is_some())
                .map(|c| c.appid.clone())
                .collect();
            for component in due {
                sim.spawn_ticket_push(&component);
            }
        }
        let wait = u64::try_from((mark + 1) * interval - now).unwrap_or(1000);
        tokio::select! {
            _ = sim.cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(wait)) => {}
            _ = &mut notified => {}
        }
    }
}

/// Serves until `shutdown` resolves; in-flight requests get 5 s to finish.
pub(crate) async fn serve(
    sim: Arc<Sim>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), SimError> {
    let addr = listener.local_addr().map_err(SimError::Bind)?;
    let _ = sim.base_url.set(format!("http://{addr}"));
    if sim.config.auto_ticket_push {
        sim.tasks.spawn(ticket_schedule(Arc::clone(&sim)));
    }
    let app = app(&sim);
    let cancel = sim.cancel.clone();
    let server = axum::serve(
        SimListener(listener),
        app.into_make_service_with_connect_info::<ConnInfo>(),
    )
    .with_graceful_shutdown({
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                _ = shutdown => {}
                _ = cancel.cancelled() => {}
            }
            cancel.cancel();
        }
    });
    let drain_deadline = {
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    };
    let result = tokio::select! {
        r = server.into_future() => r.map_err(SimError::Serve),
        _ = drain_deadline => Ok(()),
    };
    cancel.cancel();
    sim.tasks.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), sim.tasks.wait()).await;
    result
}
