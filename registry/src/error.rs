//! The error type of `dfe-registry`.

/// Everything that can fail in the registry. Variants keep their source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A query failed.
    #[error("registry: {context}")]
    Query {
        /// What was being done.
        context: &'static str,
        /// The PostgreSQL client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// No connection could be had.
    #[error("registry connection pool")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The pool could not be built (a bad `registry.url`).
    #[error("registry: {0}")]
    Setup(String),
    /// A row holds what this version cannot read (an unknown state or kind): a newer
    /// version wrote it, or it was edited by hand. Never guessed at.
    #[error("registry row {table}/{key}: {message}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// The row's key.
        key: String,
        /// What is wrong with it.
        message: String,
    },
    /// The registry holds something it should not (a bug or a concurrent manual edit).
    #[error("registry inconsistency: {0}")]
    Inconsistent(String),
    /// Publishing from an outbox failed.
    #[error(transparent)]
    Broker(#[from] dfe_shared::Error),
    /// A run's instance lock is gone: the lock session's connection broke while the run held
    /// it (PostgreSQL released it then), or the session has ended. The run's outcome was
    /// not recorded under the lock; it runs again.
    #[error("registry: instance lock lost: {0}")]
    LockLost(String),
    /// The failure of a batch of statements, shared by every run whose rows it held.
    #[error(transparent)]
    Batch(std::sync::Arc<Error>),
    /// A snapshot destination failed while a snapshot was being removed (the row stays).
    /// Boxed: a second unboxed `dfe_shared::Error` would make every registry error larger.
    #[error(transparent)]
    Store(Box<dfe_shared::Error>),
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a query error with what was being done.
    pub fn query(context: &'static str) -> impl FnOnce(tokio_postgres::Error) -> Error {
        move |source| Error::Query { context, source }
    }

    /// Whether the fault may pass by itself (the server unreachable, a connection lost, a
    /// serialization conflict); a data exception such as NUL in a string is permanent.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Query { source, .. } => crate::pg_is_transient(source),
            Error::Pool(_) => true,
            Error::Broker(e) => e.is_transient(),
            Error::Store(e) => e.is_transient(),
            Error::LockLost(_) => true,
            Error::Batch(e) => e.is_transient(),
            Error::Setup(_) | Error::Corrupt { .. } | Error::Inconsistent(_) => false,
        }
    }

    /// The SQLSTATE of a query error, if the server sent one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Query { source, .. } => source.code().map(|c| c.code()),
            Error::Batch(e) => e.sqlstate(),
            _ => None,
        }
    }
}
