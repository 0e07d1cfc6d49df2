//! The error type of `dfe-shared`.

use crate::ids::FieldError;

/// Everything that can fail in the shared foundations. Variants keep their source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration could not be read or is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
    /// Loading the configuration file or environment failed.
    #[error("configuration could not be loaded")]
    ConfigLoad(#[from] config::ConfigError),
    /// A request or message is not valid JSON.
    #[error("malformed JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// A request or message is larger than a job may be.
    #[error("the body is {size} bytes; a job body is at most {limit} bytes")]
    TooLarge {
        /// Its size in bytes.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A field of a request or message is missing, unknown or invalid.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// Talking to RabbitMQ failed.
    #[error("broker: {context}")]
    Broker {
        /// What was being done.
        context: &'static str,
        /// The broker client's error.
        #[source]
        source: lapin::Error,
    },
    /// No node of the broker's cluster answered; each was tried once.
    #[error("broker: no node answered ({tried})")]
    Unreachable {
        /// Each node (its URL without the password) and why it did not answer.
        tried: String,
        /// The last node's error (none when it did not answer in time).
        #[source]
        source: Option<lapin::Error>,
    },
    /// The broker did not confirm a publication (nack, unroutable, or timeout).
    #[error("broker did not confirm the publication to {exchange}/{routing_key}: {reason}")]
    NotConfirmed {
        /// Target exchange.
        exchange: String,
        /// Routing key used.
        routing_key: String,
        /// Why the publication is not confirmed.
        reason: String,
    },
    /// A snapshot destination (a directory or an S3-compatible bucket) failed.
    #[error("snapshot destination {context}")]
    Store {
        /// The destination's name and what was being done (`offsite: uploading …`): one
        /// string, so that the error stays small.
        context: String,
        /// Whether it may pass by itself (the server unreachable, a timeout, a 5xx) rather
        /// than stay the same (refused credentials, a missing bucket is a 404 too).
        transient: bool,
        /// The object store's or the file system's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A destination holds no archive under that key.
    #[error("snapshot destination {destination} holds no {key}")]
    StoreNotFound {
        /// The destination's name.
        destination: String,
        /// The object key or file name.
        key: String,
    },
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether the fault may pass by itself, so that handling the message again later can
    /// succeed: the broker unreachable or not confirming. Invalid input or configuration
    /// stays the same however often it is tried.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Broker { .. } | Error::Unreachable { .. } | Error::NotConfirmed { .. } => true,
            Error::Store { transient, .. } => *transient,
            Error::StoreNotFound { .. } => false,
            Error::Config(_) | Error::ConfigLoad(_) | Error::Json(_) | Error::TooLarge { .. } | Error::Field(_) => {
                false
            }
        }
    }

    /// Wraps a broker error with what was being done.
    pub fn broker(context: &'static str) -> impl FnOnce(lapin::Error) -> Error {
        move |source| Error::Broker { context, source }
    }
}
