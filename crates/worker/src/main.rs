//! `wxhub-worker`: the shared service `main` around [`Worker`].

use std::process::ExitCode;

use wxhub_worker::Worker;

// Every job allocates small, short-lived buffers (its gRPC request, Redis replies, the WeChat
// body and answer) on every runtime thread; glibc's malloc spent a fifth of the process's CPU
// on them in the messaging bench (perf), mimalloc's per-thread free lists far less. The gateway
// made the same choice.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    wxhub_runtime::service::main::<Worker>()
}
