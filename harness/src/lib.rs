//! dfbench harness: protocol files to plans, data, training runs, metrics, stored results and
//! reports. The `bench` binary (src/main.rs) is a thin CLI over these modules.

pub mod data;
pub mod eval;
pub mod exit;
pub mod list;
pub mod metrics;
pub mod plan;
pub mod predict;
pub mod protocol;
pub mod report;
pub mod results;
pub mod runner;
pub mod slurm;
pub mod stats;
