//! `wxhub-gateway`: the shared service `main` around [`wxhub_gateway::run`]: binds
//! `gateway.listen` and serves until SIGTERM/SIGINT, then drains within `shutdown.grace_ms`.

use std::process::ExitCode;

use wxhub_gateway::GatewayConfig;
use wxhub_runtime::service;

// The hot path allocates small, short-lived buffers per callback on two threads at once;
// mimalloc's per-thread free lists serve that far better than glibc's malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    service::main(
        "wxhub-gateway",
        "WeChat callback gateway of wxhub",
        |source| Ok(GatewayConfig::load(source)?),
        |c: &GatewayConfig| &c.telemetry,
        |config: GatewayConfig, shutdown| async move {
            let addr = config.gateway.listen_addr()?;
            let listener = service::listener(addr, config.gateway.listen_backlog)
                .map_err(|e| anyhow::anyhow!("cannot bind gateway.listen {addr}: {e}"))?;
            wxhub_gateway::run(config, listener, shutdown.cancelled_owned()).await
        },
    )
}
