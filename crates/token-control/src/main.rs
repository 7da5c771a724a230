//! `wxhub-token-control`: parses flags, loads the config, runs [`wxhub_token_control::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use wxhub_runtime::config::Source;
use wxhub_token_control::Config;

/// The WeChat credential authority (gRPC).
#[derive(Debug, Parser)]
#[command(name = "wxhub-token-control", version, about)]
struct Args {
    /// Config file (else WXHUB_CONFIG); WXHUB_<SECTION>__<KEY> variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration (secrets redacted) and exit.
    #[arg(long)]
    dump_config: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let config = match Config::load(&Source::from_process(args.config)) {
        Ok(c) => c,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            return ExitCode::from(2);
        }
    };
    if args.dump_config {
        #[allow(clippy::print_stdout)]
        {
            print!("{}", wxhub_runtime::config::dump(&config));
        }
        return ExitCode::SUCCESS;
    }
    let _telemetry = match wxhub_runtime::telemetry::init("wxhub-token-control", &config.telemetry)
    {
        Ok(g) => g,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            return ExitCode::from(2);
        }
    };
    let _ = wxhub_runtime::ops::prometheus();
    let listener = match tokio::net::TcpListener::bind(&config.token_control.listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, listen = %config.token_control.listen, "cannot bind the gRPC listener");
            return ExitCode::from(1);
        }
    };
    let shutdown = wxhub_runtime::shutdown::on_signal();
    match wxhub_token_control::run(config, listener, shutdown.cancelled_owned()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "token-control failed");
            ExitCode::from(1)
        }
    }
}
