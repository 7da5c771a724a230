//! `wxhub-relay`: the shared service `main` around [`Relay`].

use std::process::ExitCode;

use wxhub_relay::Relay;

fn main() -> ExitCode {
    wxhub_runtime::service::main::<Relay>()
}
