//! `wxhub-relay`: the shared service `main` around [`Relay`].

use std::process::ExitCode;

use wxhub_relay::Relay;

// Every relayed call allocates small, short-lived buffers (headers, URLs, bodies) on every
// runtime thread; mimalloc's per-thread free lists serve that far better than glibc's malloc
// (the gateway and the worker made the same choice; the relay bench measures with it).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    wxhub_runtime::service::main::<Relay>()
}
