//! Whether the outside programs and files a test drives are there: missing ones fail
//! the test in CI (where `.ci/run` installs them) and skip it elsewhere, with a
//! `SKIPPED` line on stderr.

use std::io::Write;
use std::path::Path;

/// Whether `tool` is an executable file on `PATH` (not an empty placeholder).
pub fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::metadata(dir.join(tool)).is_ok_and(|m| m.is_file() && m.len() > 0))
    })
}

/// Whether CI is set (`CI=true`, as `.ci/run` runs).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// `true` when `missing` is empty; else fails under CI, or prints the skip and
/// returns `false`.
pub fn ready(test: &str, missing: &[String]) -> bool {
    if missing.is_empty() {
        return true;
    }
    assert!(
        !in_ci(),
        "{test}: missing {missing:?} (CI is set; see .ci/run)"
    );
    // Straight to stderr, past the test harness's capture, so that the skip shows.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: missing {}",
        missing.join(", ")
    );
    false
}

/// What is not there of `tools` (programs on `PATH`, each named as given) and of
/// `files` (each named by the text that comes with it: its path, or how to get it), in
/// that order.
pub fn missing(tools: &[&str], files: &[(&Path, &str)]) -> Vec<String> {
    tools
        .iter()
        .filter(|t| !on_path(t))
        .copied()
        .chain(
            files
                .iter()
                .filter(|(file, _)| !file.is_file())
                .map(|(_, name)| *name),
        )
        .map(str::to_owned)
        .collect()
}

/// [`ready`] for programs on `PATH` and files.
pub fn tools_ready(test: &str, tools: &[&str], files: &[&str]) -> bool {
    let files: Vec<(&Path, &str)> = files.iter().map(|f| (Path::new(f), *f)).collect();
    ready(test, &missing(tools, &files))
}
