use std::process::ExitCode;

/// The daemon's records are built on one thread and freed on others (the drainer, the
/// pipeline, the subscribers' streams); glibc's malloc serialises those frees on its arena
/// locks, mimalloc frees them without a lock. Measured by `cargo xtask bench events`.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = governance::cli::parse();
    governance::logging::init_logging(&cli.log, cli.log_format);
    match governance::cli::main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("governance: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
