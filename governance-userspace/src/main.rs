use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = governance::cli::Cli::parse();
    governance::cli::init_logging(&cli.log);
    match governance::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("governance: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
