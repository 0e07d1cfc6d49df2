//! The CLI's own errors and the exit status each one maps to.
//!
//! Most failures are plain `anyhow` errors with context (exit status 1). The variants here
//! are the ones whose exit status differs, or whose message is already the whole story.

use std::process::ExitCode;

use dfe_shared::ids::FieldError;

/// Exit status of a failure: the job failed, a service could not be reached, a timeout.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status of rejected input: invalid arguments or fields, or the API refusing the request.
pub const EXIT_REJECTED: u8 = 2;
/// Exit status of `dfe reconcile` when the registry and what runs differ.
pub const EXIT_DIFFERS: u8 = 3;

/// Errors whose exit status or wording the CLI decides itself.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A value given on the command line is invalid for its job field.
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// Options that do not go together, or a value the CLI cannot use.
    #[error("{0}")]
    Usage(String),
    /// The API answered with an error status; `message` is the rendered problem.
    #[error("{message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// What to show the user.
        message: String,
    },
    /// The API answered with JSON this `dfe` cannot read as the record it asked for (a state
    /// or member it does not know, e.g. from a newer dfe-api): refused, never guessed at.
    #[error("{0}")]
    Unreadable(String),
}

impl CliError {
    /// The exit status this error ends the process with.
    pub fn exit_status(&self) -> u8 {
        match self {
            CliError::Invalid(_) | CliError::Usage(_) => EXIT_REJECTED,
            // The request itself was refused: malformed, unknown id, conflict, invalid field.
            CliError::Api { status: 400 | 404 | 409 | 422, .. } => EXIT_REJECTED,
            CliError::Api { .. } | CliError::Unreadable(_) => EXIT_FAILURE,
        }
    }
}

/// The exit status for any error: the first [`CliError`] in its chain decides, else 1.
pub fn exit_status(err: &anyhow::Error) -> u8 {
    err.chain().find_map(|e| e.downcast_ref::<CliError>()).map_or(EXIT_FAILURE, CliError::exit_status)
}

/// Prints `err` the one way errors reach the user, and returns its exit code.
pub fn report(err: &anyhow::Error) -> ExitCode {
    eprintln!("error: {err:#}");
    ExitCode::from(exit_status(err))
}

#[cfg(test)]
mod tests {
    use anyhow::Context;

    use super::*;

    #[test]
    fn rejected_input_exits_2_and_other_failures_1() {
        let invalid: anyhow::Error = CliError::Invalid(FieldError::new("instance-id", "bad")).into();
        assert_eq!(exit_status(&invalid), EXIT_REJECTED);
        let conflict = anyhow::Error::from(CliError::Api { status: 409, message: "exists".into() });
        assert_eq!(exit_status(&conflict.context("submitting")), EXIT_REJECTED);
        let unauthorized = anyhow::Error::from(CliError::Api { status: 401, message: "token".into() });
        assert_eq!(exit_status(&unauthorized), EXIT_FAILURE);
        let io: anyhow::Result<()> = Err(std::io::Error::other("refused")).context("connecting");
        assert_eq!(exit_status(&io.expect_err("an error")), EXIT_FAILURE);
    }
}
