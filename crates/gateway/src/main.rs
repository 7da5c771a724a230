//! `wxhub-gateway`: loads the configuration, installs telemetry, binds `gateway.listen` and serves
//! until SIGTERM/SIGINT, then drains within `shutdown.grace_ms`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use wxhub_gateway::GatewayConfig;
use wxhub_runtime::config::{Source, dump};

// The hot path allocates small, short-lived buffers per callback on two threads at once;
// mimalloc's per-thread free lists serve that far better than glibc's malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "wxhub-gateway",
    version,
    about = "WeChat callback gateway of wxhub"
)]
struct Args {
    /// Config file (TOML); defaults to $WXHUB_CONFIG. Every key can be overridden with
    /// WXHUB_<SECTION>__<KEY>.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    dump_config: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match GatewayConfig::load(&Source::from_process(args.config)) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "wxhub-gateway: {e}");
            return ExitCode::from(2);
        }
    };
    if args.dump_config {
        let _ = write!(std::io::stdout(), "{}", dump(&config));
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = writeln!(
                std::io::stderr(),
                "wxhub-gateway: cannot start the runtime: {e}"
            );
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gateway failed");
            let _ = writeln!(std::io::stderr(), "wxhub-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: GatewayConfig) -> anyhow::Result<()> {
    let telemetry = wxhub_runtime::telemetry::init("wxhub-gateway", &config.telemetry)?;
    let addr = config.gateway.listen_addr()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot bind gateway.listen {addr}: {e}"))?;
    let signal = wxhub_runtime::shutdown::on_signal();
    let result = wxhub_gateway::run(config, listener, signal.cancelled_owned()).await;
    telemetry.shutdown(Duration::from_secs(2));
    result
}
