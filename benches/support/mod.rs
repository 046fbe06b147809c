//! Support shared by the benchmarks (`registry`, `forwarder`, `cluster`): the HTTP/1.1
//! keep-alive load generator, finding nginx and its temp paths, process control, `/proc` sampling, environment knobs, the
//! r-nacos binary (`rnacos.rs`) and report helpers. Each bench includes it with
//! `mod support;`; this directory is not a bench target itself (Cargo.toml lists every
//! bench).
//!
//! Owns nothing a bench measures on its own: which server runs, what load it gets and
//! what the tables say stay in the bench files.

// Each bench compiles its own copy and uses only part of it.
#![allow(dead_code)]

pub mod http;
pub mod knobs;
pub mod nginx;
pub mod procs;
pub mod report;
pub mod rnacos;
pub mod sample;
