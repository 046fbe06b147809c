//! Environment knobs (`SB_BENCH_*`) and the entry point of the async benches.

use std::future::Future;

/// `name` as a whole number clamped to `min..=max`; `default` when unset or unparsable.
pub fn num(name: &str, default: u64, min: u64, max: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(default)
        .clamp(min, max)
}

/// [`num`] as a `usize`.
pub fn count(name: &str, default: usize, min: usize, max: usize) -> usize {
    let n = num(name, default as u64, min as u64, max as u64);
    usize::try_from(n).unwrap_or(max)
}

/// Whether `name` is `1`, `true` or `yes`.
pub fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes"))
}

/// Whether `name` is set at all.
pub fn is_set(name: &str) -> bool {
    std::env::var_os(name).is_some()
}

/// A comma list, trimmed and lower-cased, empty items dropped.
pub fn list(name: &str) -> Option<Vec<String>> {
    std::env::var(name).ok().map(|v| {
        v.split(',')
            .map(|s| s.trim().to_ascii_lowercase())
            .filter(|s| !s.is_empty())
            .collect()
    })
}

/// A comma list of sizes in `1..=max` (at most 8), or `default` when none is valid.
pub fn sizes(name: &str, default: &[usize], max: usize) -> Vec<usize> {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.split(',')
                .filter_map(|p| p.trim().parse::<usize>().ok())
                .filter(|n| (1..=max).contains(n))
                .take(8)
                .collect::<Vec<_>>()
        })
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

/// False, after saying so, unless run by `cargo bench` (`cargo test --all-targets` also
/// runs bench targets, without `--bench`: they stay quick).
pub fn asked_for(bench: &str) -> bool {
    let asked = std::env::args().any(|a| a == "--bench");
    if !asked {
        println!("{bench} bench: skipped (run it with `cargo bench --bench {bench}`)");
    }
    asked
}

/// Runs `run` on a tokio runtime (current-thread for `threads <= 1`); exits 1 on error.
pub fn block_on(bench: &str, threads: usize, run: impl Future<Output = anyhow::Result<()>>) {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("{bench} bench: cannot start the tokio runtime: {err}");
            std::process::exit(1);
        }
    };
    exit_on_error(bench, runtime.block_on(run));
}

/// Prints `err` and exits 1.
pub fn exit_on_error(bench: &str, outcome: anyhow::Result<()>) {
    if let Err(err) = outcome {
        eprintln!("{bench} bench failed: {err:#}");
        std::process::exit(1);
    }
}

/// The switchboard binary a bench runs: `SB_BENCH_BIN` (another build, an earlier
/// commit's, measured by the same bench), else this build's.
pub fn switchboard_bin() -> std::path::PathBuf {
    std::env::var_os("SB_BENCH_BIN").map_or_else(
        || std::path::PathBuf::from(env!("CARGO_BIN_EXE_switchboard")),
        std::path::PathBuf::from,
    )
}
