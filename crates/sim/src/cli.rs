//! The `wxhub-sim` command line: `serve` and `release-check`. `main.rs` only hands
//! over the process's arguments and streams, so tests run every command in-process.
//!
//! Exit status: 0 success (for `release-check`: every step passed), 1 the release check
//! failed, 2 bad usage or an error (one line on stderr).

use std::ffi::OsString;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::release::{ReleaseCheckConfig, ReleaseCheckReport};
use crate::seed::{Seed, SimConfig};

/// wxhub-sim: a strict WeChat simulator.
#[derive(Debug, Parser)]
#[command(name = "wxhub-sim", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the simulator (WeChat APIs, login pages, admin API under /sim).
    Serve(ServeArgs),
    /// Play the full-network release check (全网发布) through a running sim.
    ReleaseCheck(ReleaseArgs),
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Listen address.
    #[arg(long, default_value = "127.0.0.1:9080")]
    listen: SocketAddr,
    /// TOML seed file (tenants, accounts, users).
    #[arg(long)]
    seed: Option<PathBuf>,
    /// expires_in of access tokens and JS-SDK tickets, seconds.
    #[arg(long, default_value_t = 7200)]
    token_ttl: u64,
    /// Validity of the previous token after a refresh, seconds.
    #[arg(long, default_value_t = 300)]
    token_overlap: u64,
    /// Disable the automatic component_verify_ticket push every 10 virtual minutes.
    #[arg(long)]
    no_auto_ticket: bool,
    /// Timeout of one push attempt, milliseconds.
    #[arg(long, default_value_t = 5000)]
    push_timeout_ms: u64,
    /// Seed for fault-injection probabilities.
    #[arg(long)]
    fault_seed: Option<u64>,
    /// Return a new refresh token on every api_authorizer_token.
    #[arg(long)]
    rotate_refresh_tokens: bool,
    /// Push each template or subscribe send's delivery report (TEMPLATESENDJOBFINISH,
    /// subscribe_msg_sent_event) this many milliseconds after the send (default: none).
    #[arg(long)]
    delivery_report_ms: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct ReleaseArgs {
    /// Base URL of the running sim.
    #[arg(long)]
    sim: String,
    /// Component appid to check (seeded in the sim).
    #[arg(long)]
    component: String,
    /// Gateway base URL; with --tenant the URLs are {gateway}/wx/{tenant}/component and
    /// {gateway}/wx/{tenant}/callback/$APPID$. Without it the component's seeded URLs are used.
    #[arg(long)]
    gateway: Option<String>,
    /// Tenant id for --gateway.
    #[arg(long, requires = "gateway")]
    tenant: Option<String>,
    /// Explicit authorization-event URL (overrides --gateway).
    #[arg(long)]
    auth_event_url: Option<String>,
    /// Explicit message URL template with $APPID$ (overrides --gateway).
    #[arg(long)]
    message_url_template: Option<String>,
    /// Groups to run, e.g. 1,2 (default all five).
    #[arg(long, value_delimiter = ',')]
    groups: Option<Vec<u8>>,
    /// Reply limit per push, milliseconds.
    #[arg(long, default_value_t = 5000)]
    reply_limit_ms: u64,
    /// Wait for the `_from_api` customer-service message, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    api_wait_ms: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct CliError(String);

fn err(e: impl std::fmt::Display) -> CliError {
    CliError(e.to_string())
}

/// Runs the CLI with explicit arguments and streams; returns the process exit code.
pub async fn main_with<I, T>(args: I, stdout: &mut dyn Write, stderr: &mut dyn Write) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let rendered = e.render().to_string();
            let _ = if e.use_stderr() {
                stderr.write_all(rendered.as_bytes())
            } else {
                stdout.write_all(rendered.as_bytes())
            };
            return ExitCode::from(code);
        }
    };
    let result = match cli.command {
        Command::Serve(args) => serve(args, stdout).await,
        Command::ReleaseCheck(args) => release_check(args, stdout).await,
    };
    let _ = stdout.flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(stderr, "error: {}", e.0.replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

async fn serve(args: ServeArgs, stdout: &mut dyn Write) -> Result<ExitCode, CliError> {
    let seed = match &args.seed {
        Some(path) => Some(Seed::load(path).map_err(err)?),
        None => None,
    };
    let config = SimConfig {
        listen: args.listen,
        token_ttl: Duration::from_secs(args.token_ttl),
        token_overlap: Duration::from_secs(args.token_overlap),
        auto_ticket_push: !args.no_auto_ticket,
        push_timeout: Duration::from_millis(args.push_timeout_ms),
        fault_seed: args.fault_seed,
        rotate_refresh_tokens: args.rotate_refresh_tokens,
        delivery_report_delay: args.delivery_report_ms.map(Duration::from_millis),
        seed,
        ..SimConfig::default()
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| err(format!("cannot bind {}: {e}", config.listen)))?;
    let addr = listener.local_addr().map_err(err)?;
    let _ = writeln!(stdout, "wxhub-sim listening on http://{addr}");
    let _ = stdout.flush();
    crate::run(config, listener, shutdown_signal())
        .await
        .map_err(err)?;
    Ok(ExitCode::SUCCESS)
}

async fn release_check(args: ReleaseArgs, stdout: &mut dyn Write) -> Result<ExitCode, CliError> {
    let mut cfg = match (&args.gateway, &args.tenant) {
        (Some(gateway), Some(tenant)) => {
            ReleaseCheckConfig::for_gateway(&args.component, gateway, tenant)
        }
        (Some(_), None) => return Err(err("--gateway needs --tenant")),
        _ => ReleaseCheckConfig::new(&args.component),
    };
    if args.auth_event_url.is_some() {
        cfg.auth_event_url = args.auth_event_url.clone();
    }
    if args.message_url_template.is_some() {
        cfg.message_url_template = args.message_url_template.clone();
    }
    if let Some(groups) = args.groups {
        cfg.groups = groups;
    }
    cfg.reply_limit_ms = args.reply_limit_ms;
    cfg.api_wait_ms = args.api_wait_ms;
    let client = crate::push::http_client(4);
    let url = format!("{}/sim/release-check", args.sim.trim_end_matches('/'));
    let resp = client
        .post(&url)
        .json(&cfg)
        .send()
        .await
        .map_err(|e| err(format!("cannot reach the sim at {url}: {e}")))?;
    let status = resp.status();
    let text = resp.text().await.map_err(err)?;
    if !status.is_success() {
        return Err(err(format!("sim answered {status}: {text}")));
    }
    let report: ReleaseCheckReport =
        serde_json::from_str(&text).map_err(|e| err(format!("unexpected answer: {e}")))?;
    let out = if args.json {
        serde_json::to_string_pretty(&report).map_err(err)?
    } else {
        report.to_string()
    };
    let _ = writeln!(stdout, "{out}");
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
