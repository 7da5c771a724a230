//! `wxhub-gateway`: the shared service `main` around [`Gateway`]: binds `gateway.listen` and
//! serves until SIGTERM/SIGINT, then drains within `shutdown.grace_ms`.

use std::process::ExitCode;

use wxhub_gateway::Gateway;

// The hot path allocates small, short-lived buffers per callback on two threads at once;
// mimalloc's per-thread free lists serve that far better than glibc's malloc.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    wxhub_runtime::service::main::<Gateway>()
}
