//! The `main` every service binary shares: `--config FILE` (else `WXHUB_CONFIG`),
//! `--dump-config`, one-line startup errors with exit status 2, telemetry installed and flushed,
//! SIGTERM/SIGINT turned into the shutdown future handed to the service.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Source;
use crate::telemetry::TelemetryConfig;

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

/// Parses the flags, loads the config with `load` (errors: one line on stderr, exit 2), handles
/// `--dump-config`, then runs `serve` on a multi-threaded runtime with telemetry (from the
/// section `telemetry` picks) installed; `serve` runs until the token is cancelled by a signal.
/// `name` is the binary's and the telemetry service's name, `about` its `--help` line.
pub fn main<C, L, T, S, F>(
    name: &'static str,
    about: &'static str,
    load: L,
    telemetry: T,
    serve: S,
) -> ExitCode
where
    C: Serialize,
    L: FnOnce(&Source) -> anyhow::Result<C>,
    T: Fn(&C) -> &TelemetryConfig,
    S: FnOnce(C, CancellationToken) -> F,
    F: Future<Output = anyhow::Result<()>>,
{
    let command = ServiceArgs::command().name(name).about(about);
    let flags = match ServiceArgs::from_arg_matches(&command.get_matches()) {
        Ok(args) => args.flags,
        Err(e) => e.exit(),
    };
    let config = match load(&Source::from_process(flags.config)) {
        Ok(c) => c,
        Err(e) => return fail(name, &e, 2),
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
        let telemetry = crate::telemetry::init(name, telemetry(&config))?;
        let shutdown = crate::shutdown::on_signal();
        let result = serve(config, shutdown).await;
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
