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
    /// A registry query failed.
    #[error("registry: {context}")]
    Registry {
        /// What was being done.
        context: &'static str,
        /// The PostgreSQL client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// The registry holds something it should not (a bug or a concurrent manual edit).
    #[error("registry inconsistency: {0}")]
    Inconsistent(String),
    /// No registry connection could be had.
    #[error("registry connection pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The registry connection pool could not be built.
    #[error("registry connection pool could not be created")]
    CreatePool(#[from] deadpool_postgres::CreatePoolError),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a registry error with what was being done.
    pub fn registry(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Registry { context, source }
    }

    /// Wraps a broker error with what was being done.
    pub fn broker(context: &'static str) -> impl FnOnce(lapin::Error) -> Error {
        move |source| Error::Broker { context, source }
    }
}
