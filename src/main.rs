use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use tailhose::cli::{execute, init_logging, Cli};
use tailhose::pipeline::PipelineError;

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(execute(cli));
    // A thread stuck inside failed storage must not keep the process alive.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `tailhose queue show … | head`: the reader went away; that is not a failure.
        Err(error) if error.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(error.downcast_ref::<PipelineError>().map_or(1, PipelineError::exit_code))
        }
    }
}
