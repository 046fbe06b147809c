//! The r-nacos binary the registry bench compares against: found by `RNACOS_BIN`, on
//! `PATH` or in `~/.cargo/bin`, installed with `cargo install rnacos --locked` only when
//! `SB_BENCH_INSTALL_RNACOS=1` asks for it, and its version for the report.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use super::knobs;

fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("RNACOS_BIN").map(PathBuf::from) {
        if p.is_file() {
            return Some(p);
        }
        println!(
            "RNACOS_BIN={} is not a file; looking elsewhere",
            p.display()
        );
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .take(256)
            .map(|d| d.join("rnacos"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))?;
        let p = home.join("bin").join("rnacos");
        p.is_file().then_some(p)
    })
}

/// The r-nacos binary, installed first when asked for and missing; `None` (said why)
/// when there is none.
pub fn find_or_install() -> Option<PathBuf> {
    if let Some(p) = find() {
        return Some(p);
    }
    if knobs::flag("SB_BENCH_INSTALL_RNACOS") {
        println!("r-nacos: not found; running `cargo install rnacos --locked` (a long build)");
        let status = Command::new("cargo")
            .args(["install", "rnacos", "--locked"])
            .status();
        match status {
            Ok(s) if s.success() => {
                if let Some(p) = find() {
                    return Some(p);
                }
                println!("r-nacos: installed, but the `rnacos` binary is still not found");
            }
            Ok(s) => println!("r-nacos: `cargo install rnacos --locked` failed ({s})"),
            Err(err) => println!("r-nacos: cannot run cargo: {err}"),
        }
    }
    println!(
        "r-nacos: SKIPPED - no `rnacos` binary on PATH, in ~/.cargo/bin or in RNACOS_BIN. \
         Install it with `cargo install rnacos --locked`, or rerun with SB_BENCH_INSTALL_RNACOS=1."
    );
    None
}

/// `rnacos --version`, or "version unknown".
pub fn version(bin: &std::path::Path) -> String {
    Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "version unknown".to_owned())
}
