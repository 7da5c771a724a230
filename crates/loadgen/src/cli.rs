//! The `wxhub-loadgen` command line. `main.rs` only hands over the process's arguments and
//! streams, so tests run it in-process.
//!
//! Exit status: 0 success, 2 bad usage or an error (one line on stderr).

use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::{Encryption, LoadConfig, LoadError, parse_mix};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Mode {
    Safe,
    Compatible,
    Plain,
}

/// wxhub-loadgen: posts signed, encrypted callbacks to a gateway and reports throughput and
/// latency.
#[derive(Debug, Parser)]
#[command(name = "wxhub-loadgen", version, about)]
pub struct Args {
    /// Gateway base URL.
    #[arg(long)]
    gateway: String,
    /// Tenant id.
    #[arg(long)]
    tenant: String,
    /// Authorizer appid (path segment).
    #[arg(long)]
    appid: String,
    /// Message token of the component.
    #[arg(long, env = "WXHUB_LOADGEN_TOKEN")]
    token: String,
    /// EncodingAESKey of the component.
    #[arg(long, env = "WXHUB_LOADGEN_AES_KEY")]
    aes_key: String,
    /// Component appid (receive-id inside the ciphertext).
    #[arg(long)]
    component_appid: String,
    /// ToUserName (the authorizer's gh_ id).
    #[arg(long, default_value = "gh_load_test")]
    to_user_name: String,
    /// Target rate per second (open loop).
    #[arg(long, conflicts_with = "max")]
    rate: Option<f64>,
    /// As fast as possible (closed loop with --concurrency workers).
    #[arg(long)]
    max: bool,
    /// --max: workers (one connection each); --rate: the most requests in flight (connections
    /// are opened as needed), so a slow answer delays no other request.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Duration, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Mix of kinds, e.g. text=80,event=20 (text, image, voice, location, link, event).
    #[arg(long, default_value = "text=80,event=20")]
    mix: String,
    /// Framing.
    #[arg(long, value_enum, default_value = "safe")]
    mode: Mode,
    /// Per-request timeout, milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Memory bound of the pre-generated pool, MiB.
    #[arg(long, default_value_t = 256)]
    pool_mib: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs the CLI with explicit arguments and streams; returns the process exit code.
pub async fn main_with<I, T>(args: I, stdout: &mut dyn Write, stderr: &mut dyn Write) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let result = match Args::try_parse_from(args) {
        // `--help` and `--version` come as "errors" that belong on stdout.
        Err(e) if !e.use_stderr() => {
            let _ = write!(stdout, "{}", e.render());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let _ = write!(stderr, "{}", e.render());
            return ExitCode::from(2);
        }
        Ok(args) => run(args).await,
    };
    match result {
        Ok(out) => {
            let _ = writeln!(stdout, "{out}");
            let _ = stdout.flush();
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(stderr, "error: {}", e.to_string().replace('\n', " "));
            ExitCode::from(2)
        }
    }
}

/// One run; the report as text, or as JSON with `--json`.
async fn run(args: Args) -> Result<String, LoadError> {
    if args.rate.is_none() && !args.max {
        return Err(LoadError::Config("give --rate R or --max".into()));
    }
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration <= 86_400.0) {
        return Err(LoadError::Config(
            "--duration must be within (0, 86400] seconds".into(),
        ));
    }
    let mut cfg = LoadConfig::new(
        &args.gateway,
        &args.tenant,
        &args.appid,
        &args.token,
        &args.aes_key,
        &args.component_appid,
    );
    cfg.to_user_name = args.to_user_name;
    cfg.rate = args.rate;
    cfg.concurrency = args.concurrency;
    cfg.duration = Duration::from_secs_f64(args.duration);
    cfg.mix = parse_mix(&args.mix)?;
    cfg.mode = match args.mode {
        Mode::Safe => Encryption::Safe,
        Mode::Compatible => Encryption::Compatible,
        Mode::Plain => Encryption::Plain,
    };
    cfg.timeout = Duration::from_millis(args.timeout_ms);
    cfg.pool_bytes = args.pool_mib.saturating_mul(1024 * 1024);
    let report = crate::run(cfg).await?;
    Ok(if args.json {
        serde_json::to_string_pretty(&report)?
    } else {
        report.to_string()
    })
}
