//! `wxhub-worker`: the shared service `main` around [`wxhub_worker::run`].

use std::process::ExitCode;

use wxhub_runtime::service;
use wxhub_worker::Config;

fn main() -> ExitCode {
    service::main(
        "wxhub-worker",
        "Consumes wxhub's jobs and calls WeChat",
        Config::load,
        |c: &Config| &c.telemetry,
        |config: Config, shutdown| async move {
            let listener = service::bind(&config.worker.ops_listen, "worker.ops_listen").await?;
            wxhub_worker::run(config, listener, shutdown.cancelled_owned()).await
        },
    )
}
