//! `wxhub-token-control`: the shared service `main` around [`wxhub_token_control::run`].

use std::process::ExitCode;

use wxhub_runtime::service;
use wxhub_token_control::Config;

fn main() -> ExitCode {
    service::main(
        "wxhub-token-control",
        "The WeChat credential authority (gRPC)",
        Config::load,
        |c: &Config| &c.telemetry,
        |config: Config, shutdown| async move {
            let listener =
                service::bind(&config.token_control.listen, "token_control.listen").await?;
            wxhub_token_control::run(config, listener, shutdown.cancelled_owned()).await
        },
    )
}
