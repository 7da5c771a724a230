//! `wxhub-token-control`: the shared service `main` around [`TokenControl`].

use std::process::ExitCode;

use wxhub_token_control::TokenControl;

fn main() -> ExitCode {
    wxhub_runtime::service::main::<TokenControl>()
}
