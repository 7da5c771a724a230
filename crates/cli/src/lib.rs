//! The `wxhub` operators' tool. `main.rs` only wires the process's arguments and streams into
//! [`main_with`], so tests can run every command in-process as well as through the binary.
//!
//! Failure contract (scripts rely on it): a one-line reason on stderr, exit status 2, nothing
//! on stdout.

mod crypto;
mod events;
mod messaging;
mod relay;
mod token;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// wxhub operators' tool.
#[derive(Debug, Parser)]
#[command(name = "wxhub", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign, verify, encrypt and decrypt WeChat callbacks (for debugging captured traffic).
    #[command(subcommand)]
    Crypto(crypto::CryptoCommand),
    /// Look at the queues: unrouted events, dead letters and their reasons.
    #[command(subcommand)]
    Events(events::EventsCommand),
    /// Access tokens from token-control.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Authorizers of a component tenant.
    #[command(subcommand)]
    Authorizers(token::AuthorizersCommand),
    /// Create a pre-auth code and print the authorization URL.
    AuthUrl(token::AuthUrlArgs),
    /// Custom menus of an authorizer, an Official Account or a WeCom app (through the relay).
    #[command(subcommand)]
    Menu(relay::MenuCommand),
    /// Temporary media (through the relay): `media get ... > file`, `media upload`.
    #[command(subcommand)]
    Media(relay::MediaCommand),
    /// Enqueue a message with the messaging service; prints {"job_id", "state"}.
    #[command(subcommand)]
    Send(messaging::SendCommand),
    /// A job of the messaging service (with --wait: until it settles).
    Job(messaging::JobArgs),
    /// A tenant's recent jobs, optionally of one state.
    Jobs(messaging::JobsArgs),
    /// Dead jobs: list and replay.
    #[command(subcommand)]
    Dead(messaging::DeadCommand),
    /// Campaigns: create, get, pause, resume, cancel.
    #[command(subcommand)]
    Campaign(messaging::CampaignCommand),
}

/// An error reported as one line on stderr with exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

impl CliError {
    pub(crate) fn new(what: impl std::fmt::Display) -> Self {
        Self(what.to_string())
    }
}

/// Runs the CLI with explicit arguments and streams; returns the process exit code.
pub fn main_with<I, T>(
    args: I,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are successes that print to stdout.
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
        Command::Crypto(cmd) => crypto::run(cmd, stdin),
        Command::Events(cmd) => events::run(cmd),
        Command::Token(cmd) => token::run_token(cmd),
        Command::Authorizers(cmd) => token::run_authorizers(cmd),
        Command::AuthUrl(args) => token::run_auth_url(args),
        Command::Menu(cmd) => relay::run_menu(cmd, stdin),
        Command::Media(cmd) => relay::run_media(cmd, stdout),
        Command::Send(cmd) => messaging::run_send(cmd),
        Command::Job(args) => messaging::run_job(args),
        Command::Jobs(args) => messaging::run_jobs(args),
        Command::Dead(cmd) => messaging::run_dead(cmd),
        Command::Campaign(cmd) => messaging::run_campaign(cmd),
    };
    match result {
        Ok(output) => {
            if stdout
                .write_all(output.as_bytes())
                .and_then(|()| stdout.flush())
                .is_err()
            {
                return ExitCode::from(2);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let line = e.to_string().replace('\n', " ");
            let _ = writeln!(stderr, "error: {line}");
            ExitCode::from(2)
        }
    }
}
