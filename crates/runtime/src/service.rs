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
