use std::process::ExitCode;

fn main() -> ExitCode {
    wxhub_cli::main_with(
        std::env::args_os(),
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}
