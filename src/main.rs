use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use tailhose::cli::{execute, init_logging, Cli};
use tailhose::pipeline::PipelineError;

fn main() -> ExitCode {
    limit_malloc_arenas();
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

/// glibc gives threads that allocate at the same time arenas of their own; with the runtime's,
/// sled's and the delivery tasks' threads that fragments memory. One arena cut peak RSS from 103
/// to 74 MiB for 1 M records (`cargo bench --bench end_to_end`) with the same throughput and CPU,
/// so it is the default unless `MALLOC_ARENA_MAX` says otherwise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only tunes the allocator; it runs first in main, before any other
        // thread exists, and a refused setting leaves the default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}
