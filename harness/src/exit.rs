//! Exit codes shared by every subcommand.
use std::process::ExitCode;

/// Everything asked for was done.
pub const SUCCESS: u8 = 0;
/// Some work failed (a run diverged, a data check found problems); the rest was done.
pub const SOME_FAILED: u8 = 1;
/// Bad usage or configuration: nothing was done.
pub const BAD_CONFIG: u8 = 2;

/// An error that carries the exit code it should end the process with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub code: u8,
    pub message: String,
}

impl CliError {
    pub fn config(message: impl Into<String>) -> Self {
        Self { code: BAD_CONFIG, message: message.into() }
    }
    pub fn failed(message: impl Into<String>) -> Self {
        Self { code: SOME_FAILED, message: message.into() }
    }
}

/// Maps an error to an exit code: a `CliError` keeps its own, anything else is a failure.
pub fn code_of(err: &anyhow::Error) -> ExitCode {
    match err.downcast_ref::<CliError>() {
        Some(e) => ExitCode::from(e.code),
        None => ExitCode::from(SOME_FAILED),
    }
}

/// Verbosity chosen by `-q` / `-v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    Quiet,
    Normal,
    Verbose,
}
