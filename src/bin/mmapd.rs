//! `mmapd`: one node of the cluster. See `mmapd --help` and man mmapd(8).

use std::process::ExitCode;

use clap::Parser;
use mmapd::server::{self, cli};

/// mimalloc instead of glibc malloc: per-request allocations (hyper buffers, oneshot
/// channels, batches) were 10.7% of the leader's CPU samples under write load
/// (BENCHMARKS.md, "Profile of the write path"), and glibc's per-thread arenas held
/// freed peer batches as resident memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // Everything the daemon creates is private to its user, as `UMask=0077` makes it
    // under the unit: a hand-started node's data must not be readable by every local
    // user. (The admin socket is made 0660 explicitly: its group may use it.)
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let argv = cli::normalize_legacy_flags(std::env::args());
    let args = cli::Args::parse_from(argv);
    init_tracing();
    let working_dir = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("mmapd: cannot read the working directory: {error}");
            return ExitCode::from(2);
        }
    };
    let settings = match args.resolve(&working_dir) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("mmapd: {error}");
            return ExitCode::from(2);
        }
    };
    let opened = match server::open(settings) {
        Ok(opened) => opened,
        Err(error @ (server::ServerError::Removed | server::ServerError::MustNotStart(_))) => {
            eprintln!("mmapd: {error}");
            return ExitCode::from(server::EXIT_REMOVED);
        }
        Err(error) => {
            // One line, on stderr (the journal under systemd); the log would repeat it.
            eprintln!("mmapd: {error}");
            return ExitCode::from(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mmapd: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(server::serve(opened)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ (server::ServerError::Removed | server::ServerError::MustNotStart(_))) => {
            eprintln!("mmapd: {error}");
            ExitCode::from(server::EXIT_REMOVED)
        }
        Err(error) => {
            // One line, on stderr (the journal under systemd); the log would repeat it.
            eprintln!("mmapd: {error}");
            ExitCode::from(1)
        }
    }
}

/// Logs to stderr; under journald (JOURNAL_STREAM set) without timestamps, which the
/// journal adds itself. `RUST_LOG` filters (default `info`).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        builder.without_time().with_ansi(false).init();
    } else {
        builder.init();
    }
}
