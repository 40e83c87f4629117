//! `loadtest`: drives the real wire protocol from many simulated users and reports throughput,
//! latency and server cost. The workloads W1–W5 of BENCHMARKS.md are library functions (each
//! takes a [`common::Target`] and a config, returns a result struct) so that the smoke tests can
//! run them at small scale; the binary is a thin command line over them.

pub mod bench;
pub mod cli;
pub mod common;
pub mod relay;
pub mod w1;
pub mod w2;
pub mod w3;
pub mod w4;
pub mod w5;
pub mod wire;
