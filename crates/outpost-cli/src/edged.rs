//! `outpost-edged`: the edge daemon alone, what `outpost edge run` does, in an executable without the hub, the
//! operator commands and their parsers. Its resident set is mostly the executable's own pages that the daemon
//! touches; in the one `outpost` binary those pages sit among the hub's code, so the kernel's fault-around maps
//! much of the hub too. `outpost edge run` hands over to this executable when it lies beside `outpost` (see
//! `edge_command`), keeping its process id, so services and scripts that start `outpost edge run` get the lean
//! daemon without a change.
//!
//! Usage: `outpost-edged [--config PATH]` (or `OUTPOST_EDGE_CONFIG`; default `/etc/outpost/config.toml`). Logs
//! go to stderr, filtered by `OUTPOST_LOG` (default `info`), and to the bounded ring the support bundle reads.

use std::path::PathBuf;
use std::process::ExitCode;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// mimalloc rather than the C library's allocator: a message's buffers are made on a runtime thread and let go
/// on the log's writer thread, and glibc's allocator takes a lock of the owning thread's arena for each such
/// free (a third of the daemon's futex calls at full load, and malloc and free 18 % of its CPU). With it the
/// daemon spends about 15 % less CPU per routed 100-byte message (docs/benchmarks.md). Its arenas are committed
/// as they are used (`.cargo/config.toml`), so the idle daemon holds 0.7 MiB more, not 4.3.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Where the daemon's settings are unless `--config` says otherwise (as `outpost edge run`).
const DEFAULT_CONFIG: &str = "/etc/outpost/config.toml";

fn config_path(mut args: impl Iterator<Item = String>) -> Result<PathBuf, String> {
    let mut config = std::env::var_os("OUTPOST_EDGE_CONFIG").map(PathBuf::from);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" => {
                config = Some(args.next().ok_or("--config needs a path")?.into());
            }
            other => match other.strip_prefix("--config=") {
                Some(path) => config = Some(path.into()),
                None => {
                    return Err(format!(
                        "unexpected argument {other:?} (usage: outpost-edged [--config PATH])"
                    ))
                }
            },
        }
    }
    Ok(config.unwrap_or_else(|| DEFAULT_CONFIG.into()))
}

async fn shutdown_signal() {
    let Ok(mut terminate) =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

fn main() -> ExitCode {
    let config = match config_path(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("OUTPOST_LOG")
        .unwrap_or_else(|_| "info".into());
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(|| outpost_edge::daemon_log::RECENT.writer()),
        )
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    // One crypto provider for the whole process: two enabled providers make rustls panic.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        let config = outpost_edge::config::EdgeConfig::load(&config)?;
        match outpost_store::host::raise_open_files_limit() {
            Ok(limit) => tracing::info!(limit, "open-files soft limit raised to the hard limit"),
            Err(error) => tracing::warn!(%error, "cannot raise the open-files limit"),
        }
        outpost_edge::daemon::run(config, shutdown_signal()).await?;
        anyhow::Ok(())
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> impl Iterator<Item = String> {
        list.iter()
            .map(|s| (*s).to_owned())
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_config_comes_from_the_flag_in_either_spelling() {
        assert_eq!(
            config_path(args(&["--config", "/a.toml"])).unwrap(),
            PathBuf::from("/a.toml")
        );
        assert_eq!(
            config_path(args(&["--config=/b.toml"])).unwrap(),
            PathBuf::from("/b.toml")
        );
    }

    #[test]
    fn an_unknown_argument_or_a_missing_path_is_an_error() {
        assert!(config_path(args(&["--verbose"])).is_err());
        assert!(config_path(args(&["--config"])).is_err());
    }
}
