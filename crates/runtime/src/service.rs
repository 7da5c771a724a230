//! The one shape of every service — gateway, token-control, worker — and the `main` around it.
//!
//! A [`Service`] is built from its configuration with injectable options (the clock, the
//! tenants, …: tests and the demo inject them, production takes the defaults), then serves on
//! [`Listeners`] its caller bound until a shutdown future resolves. Building is separate from
//! serving so a test reaches into the built service (its state, its engine) before it serves,
//! and so start-up errors surface before anything is bound to traffic.
//!
//! [`main`] is the `main` of every binary: `--config FILE` (else `WXHUB_CONFIG`),
//! `--dump-config`, one-line start-up errors with exit status 2, telemetry installed and flushed,
//! the configured addresses bound, SIGTERM/SIGINT turned into the shutdown future.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use serde::Serialize;
use tokio::net::TcpListener;

use crate::config::{ConfigError, Source};
use crate::telemetry::TelemetryConfig;

/// A wxhub service: built from its config, then served until shutdown.
pub trait Service: Sized + Send + 'static {
    /// The binary's name; also the telemetry service name and the broker connection name.
    const NAME: &'static str;
    /// The binary's `--help` line.
    const ABOUT: &'static str;
    /// The whole configuration of the binary.
    type Config: Serialize + Send + 'static;
    /// What tests, benchmarks and the demo inject; `Default` is production's.
    type Options: Default + Send + 'static;

    /// Loads and validates the configuration from `source`.
    fn load(source: &Source) -> Result<Self::Config, ConfigError>;

    /// The `[telemetry]` section of `config`.
    fn telemetry(config: &Self::Config) -> &TelemetryConfig;

    /// Binds the listeners `config` names (the binary; tests bind port 0 themselves).
    fn listen(config: &Self::Config) -> impl Future<Output = anyhow::Result<Listeners>> + Send;

    /// Builds the service: connects (lazily) what it needs and loads what it serves, but
    /// serves nothing yet.
    fn build(
        config: Self::Config,
        options: Self::Options,
    ) -> impl Future<Output = anyhow::Result<Self>> + Send;

    /// Serves on `listeners` until `shutdown` resolves, then drains within `shutdown.grace_ms`.
    fn serve(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// The sockets a service serves on, bound by its caller: the binary binds the configured
/// addresses, a test binds port 0 and reads the address back.
#[derive(Debug, Default)]
pub struct Listeners {
    /// The service's own protocol: the gateway's HTTP, token-control's gRPC. The worker has
    /// none (it consumes).
    pub main: Option<TcpListener>,
    /// `/healthz`, `/readyz`, `/metrics`. The gateway serves them on `main` and takes none.
    pub ops: Option<TcpListener>,
}

impl Listeners {
    /// A main listener with the ops endpoints on it (the gateway).
    pub fn main(main: TcpListener) -> Self {
        Self {
            main: Some(main),
            ops: None,
        }
    }

    /// A main listener and an ops listener (token-control).
    pub fn main_and_ops(main: TcpListener, ops: TcpListener) -> Self {
        Self {
            main: Some(main),
            ops: Some(ops),
        }
    }

    /// Only an ops listener (the worker).
    pub fn ops(ops: TcpListener) -> Self {
        Self {
            main: None,
            ops: Some(ops),
        }
    }

    /// The main listener, or an error naming the service that needs one.
    pub fn take_main(&mut self, service: &str) -> anyhow::Result<TcpListener> {
        self.main
            .take()
            .ok_or_else(|| anyhow::anyhow!("{service} needs a main listener"))
    }

    /// The ops listener, or an error naming the service that needs one.
    pub fn take_ops(&mut self, service: &str) -> anyhow::Result<TcpListener> {
        self.ops
            .take()
            .ok_or_else(|| anyhow::anyhow!("{service} needs an ops listener"))
    }
}

/// The flags of every service binary.
#[derive(Debug, Parser)]
struct ServiceArgs {
    #[command(flatten)]
    flags: ServiceFlags,
}

#[derive(Debug, Args)]
struct ServiceFlags {
    /// Config file (TOML); defaults to $WXHUB_CONFIG. Every key can be overridden with
    /// WXHUB_<SECTION>__<KEY>.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    dump_config: bool,
}

/// The `main` of service `S`: parses the flags, loads the config (errors: one line on stderr,
/// exit 2), handles `--dump-config`, then on a multi-threaded runtime with telemetry installed
/// binds, builds and serves `S` until SIGTERM/SIGINT.
pub fn main<S: Service>() -> ExitCode {
    let name = S::NAME;
    let command = ServiceArgs::command().name(name).about(S::ABOUT);
    let flags = match ServiceArgs::from_arg_matches(&command.get_matches()) {
        Ok(args) => args.flags,
        Err(e) => e.exit(),
    };
    let config = match S::load(&Source::from_process(flags.config)) {
        Ok(c) => c,
        Err(e) => return fail(name, &e.into(), 2),
    };
    if flags.dump_config {
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), "{}", crate::config::dump(&config));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(name, &anyhow::anyhow!("cannot start the runtime: {e}"), 1),
    };
    let result = runtime.block_on(async {
        let telemetry = crate::telemetry::init(name, S::telemetry(&config))?;
        let shutdown = crate::shutdown::on_signal();
        let result = async {
            let listeners = S::listen(&config).await?;
            S::build(config, S::Options::default())
                .await?
                .serve(listeners, shutdown.cancelled_owned())
                .await
        }
        .await;
        telemetry.shutdown(Duration::from_secs(2));
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "{} failed", name);
            fail(name, &e, 1)
        }
    }
}

/// A listener on `addr` with an accept queue of `backlog` connections (the kernel caps it at
/// `net.core.somaxconn`). `TcpListener::bind` asks for 128, which a burst of new connections
/// overflows: the kernel then drops handshakes and clients retry only after a second.
pub fn listener(addr: std::net::SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Binds `addr`; the error names the config key.
pub async fn bind(addr: &str, key: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind {key} {addr}: {e}"))
}

fn fail(name: &str, e: &anyhow::Error, code: u8) -> ExitCode {
    use std::io::Write as _;
    let line = format!("{e:#}").replace('\n', "; ");
    let _ = writeln!(std::io::stderr(), "{name}: {line}");
    ExitCode::from(code)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// 300 connections (fewer if the kernel's somaxconn is lower) complete their handshake while
    /// nothing accepts them: the accept queue holds them all. With `TcpListener::bind`'s 128 the
    /// kernel drops the SYNs past ~129 and those connects hang until the client's retransmit, a
    /// second later.
    #[tokio::test]
    async fn the_accept_queue_holds_a_burst_of_connections() {
        let listener = super::listener("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
        let addr = listener.local_addr().unwrap();
        // The kernel caps every backlog at somaxconn (4096 on kernels since 5.4).
        let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(4096);
        let n = somaxconn.min(300);
        let connects = (0..n).map(|_| {
            tokio::time::timeout(
                Duration::from_millis(900),
                tokio::net::TcpStream::connect(addr),
            )
        });
        let results = futures::future::join_all(connects).await;
        let connected = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
        assert_eq!(connected, n, "handshakes dropped by a full accept queue");
        drop(listener);
    }
}
