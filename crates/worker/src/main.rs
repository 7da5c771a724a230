//! `wxhub-worker`: the shared service `main` around [`Worker`].

use std::process::ExitCode;

use wxhub_worker::Worker;

fn main() -> ExitCode {
    wxhub_runtime::service::main::<Worker>()
}
