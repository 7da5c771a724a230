//! The start-up and the shut-down every service shares, written once.
//!
//! [`Infra::start`] installs the metrics recorder before anything can count, creates the Redis
//! handle (lazily connected: a service starts while Redis is down) and starts the RabbitMQ
//! supervisor, which declares the topology on every connect. [`Infra::tenants`] loads the
//! tenants file and keeps it reloaded. [`Infra::serve`] runs the service's main [`Server`] and
//! the ops endpoints until the shutdown future resolves (or the main server stops by itself),
//! then drains in order within one `shutdown.grace_ms`:
//!
//! 1. the service's own steps, given the [`Drain`] and its main server: stop advertising, stop
//!    accepting, let in-flight work finish ([`Server::stop`]), then its own queues;
//! 2. background work (tenants reloader, bus supervisor, and every token the service derived
//!    from [`Infra::background`]) is cancelled;
//! 3. the ops server stops, and the bus closes.
//!
//! Readiness is the service's: [`crate::ops::Readiness::redis`] and
//! [`crate::ops::Readiness::rabbitmq`] are the shared checks, each with the service's policy.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wxhub_bus::{AmqpConfig, Bus, Topology};
use wxhub_store::{RedisConfig, Store};

use crate::config::ShutdownConfig;
use crate::ops::{self, Readiness};
use crate::shutdown::Drain;
use crate::tenants::{TenantsConfig, TenantsHandle};

/// What every service runs on: Redis, RabbitMQ (if it uses it), the token of its background
/// work, and its drain bound. Built in `build`, consumed by `serve`.
#[derive(Debug)]
pub struct Infra {
    name: &'static str,
    store: Store,
    bus: Option<Bus>,
    background: CancellationToken,
    grace: Duration,
}

impl Infra {
    /// Installs the metrics recorder, creates the store and (with `amqp`) starts the bus with
    /// the namespace's topology. `name` names the broker connection. Must run inside a Tokio
    /// runtime.
    pub fn start(
        name: &'static str,
        namespace: &str,
        redis: &RedisConfig,
        amqp: Option<&AmqpConfig>,
        shutdown: &ShutdownConfig,
    ) -> anyhow::Result<Self> {
        // Before anything can count (background tasks, the first requests): until a recorder
        // is installed, counters go nowhere.
        let _ = ops::prometheus();
        let background = CancellationToken::new();
        let store = Store::connect(redis, namespace).context("[redis]")?;
        let bus = amqp.map(|amqp| {
            let topology = Topology::new(namespace.to_owned(), amqp.delivery_limit);
            Bus::start(amqp.clone(), topology, name, background.clone())
        });
        Ok(Self {
            name,
            store,
            bus,
            background,
            grace: shutdown.grace(),
        })
    }

    /// `given` (tests, embedding), else the file of `config` loaded now; either way watched for
    /// changes until the drain cancels background work (a fixed handle has no file to watch).
    pub fn tenants(
        &self,
        config: &TenantsConfig,
        given: Option<TenantsHandle>,
    ) -> anyhow::Result<TenantsHandle> {
        let tenants = match given {
            Some(tenants) => tenants,
            None => TenantsHandle::load(&config.file)
                .with_context(|| format!("loading tenants from {}", config.file.display()))?,
        };
        tenants.spawn_reloader(config.reload_interval(), self.background.child_token());
        Ok(tenants)
    }

    /// The Redis store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The RabbitMQ bus, if this service started one.
    pub fn bus(&self) -> Option<&Bus> {
        self.bus.as_ref()
    }

    /// Cancelled when the drain reaches background work; a service hands child tokens of it to
    /// its own loops.
    pub fn background(&self) -> &CancellationToken {
        &self.background
    }

    /// The drain bound (`shutdown.grace_ms`).
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// Serves `main`, and the ops endpoints on `ops` (`None`: the service serves them on
    /// `main`), until `shutdown` resolves or `main` stops by itself; then drains as the module
    /// docs say, `drain` being the service's own steps. Returns the main server's failure, if
    /// it failed or stopped unasked.
    pub async fn serve<D, Fut>(
        self,
        main: Server,
        ops: Option<(TcpListener, Readiness)>,
        shutdown: impl Future<Output = ()> + Send,
        drain: D,
    ) -> anyhow::Result<()>
    where
        D: FnOnce(Drain, Server) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        let ops = ops.map(|(listener, readiness)| {
            let router = ops::router(readiness);
            Server::spawn("ops server", move |stop| async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .context("ops server")
            })
        });
        let mut main = main;
        tokio::select! {
            () = shutdown => {}
            () = main.ended() => {}
        }
        tracing::info!(
            service = self.name,
            grace_ms = self.grace.as_millis() as u64,
            "draining"
        );
        let bound = Drain::start(self.grace);
        let result = drain(bound, main).await;
        self.background.cancel();
        if let Some(ops) = ops {
            let _ = ops.stop(&bound).await;
        }
        if let Some(bus) = &self.bus {
            bound.step("bus", bus.close()).await;
        }
        tracing::info!(service = self.name, "stopped");
        result
    }
}

/// A server task with its own stop signal: a service's main server (HTTP, gRPC, a consumer)
/// or the ops server.
#[derive(Debug)]
pub struct Server {
    name: &'static str,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    /// How it ended, once it did on its own.
    ended: Option<anyhow::Result<()>>,
}

impl Server {
    /// Spawns `serve`, which runs until the token it is given is cancelled and then finishes
    /// its in-flight work.
    pub fn spawn<F, Fut>(name: &'static str, serve: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let stop = CancellationToken::new();
        Self {
            name,
            task: tokio::spawn(serve(stop.clone())),
            stop,
            ended: None,
        }
    }

    /// Resolves when the server stops by itself (it was not asked to).
    async fn ended(&mut self) {
        if self.ended.is_none() {
            let result = match (&mut self.task).await {
                Ok(Ok(())) => Err(anyhow::anyhow!("{} stopped unexpectedly", self.name)),
                Ok(Err(e)) => Err(e.context(format!("{} failed", self.name))),
                Err(e) => Err(anyhow::anyhow!("{} task failed: {e}", self.name)),
            };
            self.ended = Some(result);
        }
    }

    /// Stops accepting and waits, within what is left of `drain`, for in-flight work; past it
    /// the task is aborted. Returns the failure of a server that had ended by itself.
    pub async fn stop(mut self, drain: &Drain) -> anyhow::Result<()> {
        if let Some(ended) = self.ended.take() {
            return ended;
        }
        self.stop.cancel();
        match drain.step(self.name, &mut self.task).await {
            Some(Ok(result)) => result,
            Some(Err(e)) => Err(anyhow::anyhow!("{} task failed: {e}", self.name)),
            None => {
                self.task.abort();
                Ok(())
            }
        }
    }
}
