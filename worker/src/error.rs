//! The error type of `dfe-worker`. Each variant keeps its source for the logs and has a
//! stable `code` for failure events; `Display` is what a client reads in the event, so it
//! never holds a secret.

use std::fmt::Write;

/// Everything a job can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The job cannot be carried out as asked (unknown provisioner, offering, cluster…).
    #[error("{0}")]
    Invalid(String),
    /// The instance id is held by another instance, or the instance is busy.
    #[error("{0}")]
    Conflict(String),
    /// The instance's state does not allow the job (it exists, does not exist, or is busy):
    /// the registry's refusal, with its code (`instance-exists`, `instance-not-found`,
    /// `instance-busy`).
    #[error("{message}")]
    Refused {
        /// The refusal's code.
        code: &'static str,
        /// What a person reads.
        message: String,
    },
    /// The offering's image is not on the Docker host.
    #[error("image {image} is not available on the Docker host")]
    ImageNotFound {
        /// The image reference.
        image: String,
    },
    /// A Docker engine call failed.
    #[error("docker: {context}")]
    Docker {
        /// What was being done.
        context: String,
        /// bollard's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// A database server call failed.
    #[error("database server {server}: {context}")]
    Database {
        /// Which database server.
        server: String,
        /// What was being done.
        context: String,
        /// The PostgreSQL client's error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A MySQL/MariaDB server call failed.
    #[error("database server {server}: {context}")]
    MySql {
        /// Which database server.
        server: String,
        /// What was being done.
        context: String,
        /// The MySQL client's error.
        #[source]
        source: mysql_async::Error,
    },
    /// The instance did not become healthy.
    #[error("instance did not answer on its resource-uri: {0}")]
    Unhealthy(String),
    /// A snapshot archive is refused (checksum, format, unsafe member).
    #[error("snapshot refused: {0}")]
    SnapshotInvalid(String),
    /// The snapshot is encrypted to keys this worker does not hold (or it holds none).
    #[error("snapshot refused: {0}")]
    SnapshotKeyMissing(String),
    /// The snapshot's database is of another engine than the target's.
    #[error("the snapshot holds a {snapshot} database and the target instance uses {target}; import it into an instance of a {snapshot} provisioner")]
    EngineMismatch {
        /// The snapshot's engine.
        snapshot: String,
        /// The target's engine.
        target: String,
    },
    /// No snapshot with that id is in the store.
    #[error("snapshot {0} is not in the snapshot store")]
    SnapshotNotFound(String),
    /// A file operation failed.
    #[error("{context}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An external tool (pg_dump, psql) failed.
    #[error("{tool} failed: {message}")]
    Tool {
        /// Which tool.
        tool: &'static str,
        /// Its exit status and error output.
        message: String,
    },
    /// The job's lock stayed taken by another job (it may pass: the other job ends).
    #[error("{0}")]
    LockBusy(String),
    /// The job ran past its deadline.
    #[error("the job did not finish within {0} seconds")]
    Timeout(u64),
    /// The broker failed, or a message or job is invalid.
    #[error(transparent)]
    Shared(#[from] dfe_shared::Error),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] dfe_registry::Error),
    /// The configuration is inconsistent.
    #[error("configuration: {0}")]
    Config(String),
}

/// Whether a Docker call failed because the engine could not be reached at all (no
/// connection, a broken one, no answer), as opposed to an answer it gave.
pub fn is_unreachable(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as B;
    matches!(
        e,
        B::HyperLegacyError { .. }
            | B::HyperResponseError { .. }
            | B::IOError { .. }
            | B::RequestTimeoutError
            | B::SocketNotFoundError(_)
    )
}

/// Whether a MySQL client error may pass by itself: the server unreachable, restarting,
/// overloaded, or a lock that did not come in time; refused credentials, syntax and
/// privileges are the same on every attempt.
fn mysql_is_transient(e: &mysql_async::Error) -> bool {
    use mysql_async::{DriverError, Error as E};
    match e {
        E::Io(_) => true,
        E::Driver(d) => matches!(d, DriverError::ConnectionClosed | DriverError::PoolDisconnected),
        // ER_CON_COUNT_ERROR, ER_SERVER_SHUTDOWN, ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK,
        // ER_CONNECTION_KILLED, and the client's CR_CONNECTION_ERROR, CR_CONN_HOST_ERROR,
        // CR_SERVER_GONE_ERROR, CR_SERVER_LOST.
        E::Server(s) => matches!(s.code, 1040 | 1053 | 1205 | 1213 | 1927 | 2002 | 2003 | 2006 | 2013),
        E::Other(_) | E::Url(_) => false,
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The stable code in failure events.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Invalid(_) => "invalid-job",
            Error::Conflict(_) => "conflict",
            Error::Refused { code, .. } => code,
            Error::ImageNotFound { .. } => "image-not-found",
            Error::Docker { source, .. } if is_unreachable(source) => "host-unreachable",
            Error::Docker { .. } => "docker-error",
            Error::Database { .. } | Error::MySql { .. } => "database-error",
            Error::Unhealthy(_) => "instance-unhealthy",
            Error::Timeout(_) => "timeout",
            Error::LockBusy(_) => "instance-busy",
            Error::SnapshotInvalid(_) => "snapshot-invalid",
            Error::SnapshotNotFound(_) => "snapshot-not-found",
            Error::SnapshotKeyMissing(_) => "snapshot-key-missing",
            Error::EngineMismatch { .. } => "engine-mismatch",
            Error::Io { .. } => "io-error",
            Error::Tool { .. } => "tool-failed",
            Error::Shared(dfe_shared::Error::Broker { .. } | dfe_shared::Error::NotConfirmed { .. }) => "broker-error",
            Error::Shared(dfe_shared::Error::Store { .. }) => "destination-error",
            Error::Shared(dfe_shared::Error::StoreNotFound { .. }) => "snapshot-not-found",
            Error::Shared(_) => "invalid-job",
            Error::Registry(_) => "registry-error",
            Error::Config(_) => "configuration-error",
        }
    }

    /// Whether the fault may pass by itself (an engine, server or the registry unreachable,
    /// a timeout), so the job is retried after a backoff; everything else fails at once.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Docker { source, .. } => match source {
                bollard::errors::Error::DockerResponseServerError { status_code, .. } => *status_code >= 500,
                bollard::errors::Error::JsonDataError { .. }
                | bollard::errors::Error::JsonSerdeError { .. }
                | bollard::errors::Error::DockerContainerWaitError { .. } => false,
                // Client certificates that cannot be read or parsed (bollard's `ssl` feature):
                // a configuration fault, not one that passes by itself.
                bollard::errors::Error::NoHomePathError
                | bollard::errors::Error::CertPathError { .. }
                | bollard::errors::Error::CertMultipleKeys { .. }
                | bollard::errors::Error::CertParseError { .. } => false,
                _ => true,
            },
            Error::Database { source, .. } => dfe_registry::pg_is_transient(source),
            Error::MySql { source, .. } => mysql_is_transient(source),
            Error::Tool { message, .. } => {
                let m = message.to_ascii_lowercase();
                m.contains("could not connect")
                    || m.contains("connection refused")
                    || m.contains("server closed the connection")
                    || m.contains("terminating connection")
                    // The MySQL/MariaDB client tools.
                    || m.contains("can't connect")
                    || m.contains("lost connection")
                    || m.contains("server has gone away")
            }
            // Only what lies between the worker and its services may pass by itself: a
            // validation or JSON error is the same on every attempt.
            Error::Shared(e) => e.is_transient(),
            Error::Registry(e) => e.is_transient(),
            Error::Timeout(_) | Error::LockBusy(_) => true,
            _ => false,
        }
    }

    /// The error with its chain of causes, `a: b: c`, for events and logs.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(s) = source {
            let text = s.to_string();
            if !out.ends_with(&text) {
                let _ = write!(out, ": {text}");
            }
            source = s.source();
        }
        out
    }

    /// Whether this is a write into a destination's sink that the destination had stopped
    /// taking (its upload failed, and says why).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    /// Wraps a Docker error with what was being done.
    pub fn docker(context: impl Into<String>) -> impl FnOnce(bollard::errors::Error) -> Error {
        let context = context.into();
        move |source| Error::Docker { context, source }
    }
}
