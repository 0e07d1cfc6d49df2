//! Docker over SSH with host keys checked. bollard's own `ssh` transport starts `ssh` with
//! `StrictHostKeyChecking=accept-new` and the user's default known_hosts, which would trust
//! any engine the first time it is reached; here the engine's key must be in the host's
//! configured `ssh-known-hosts` (`StrictHostKeyChecking=yes`), never accepted blindly.
//!
//! One SSH master connection (`openssh`, the system's `ssh`) per host is kept and reused;
//! each HTTP connection of the Docker client runs `docker system dial-stdio` over it, as
//! the Docker CLI's own ssh transport does, and bollard speaks the API through its stdio.

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::{BollardRequest, ClientVersion, Docker};
use futures::future::BoxFuture;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::sync::Mutex;

/// How to reach one engine over SSH.
#[derive(Debug, Clone)]
pub struct SshTarget {
    /// `ssh://user@host[:port]`.
    pub destination: String,
    /// The known_hosts file its host key must be in.
    pub known_hosts: PathBuf,
    /// The private key, if not the user's default ones.
    pub key: Option<PathBuf>,
}

/// A Docker client that reaches the engine through `target`.
pub fn docker(target: SshTarget, timeout_secs: u64, version: &ClientVersion) -> Result<Docker, bollard::errors::Error> {
    let connector = SshConnector { target: Arc::new(target), session: Arc::new(Mutex::new(None)) };
    let client = Arc::new(Client::builder(TokioExecutor::new()).build(connector));
    Docker::connect_with_custom_transport(
        move |req: BollardRequest| {
            let client = client.clone();
            async move { client.request(req).await.map_err(bollard::errors::Error::from) }
        },
        Some("http://docker.ssh"),
        timeout_secs,
        version,
    )
}

/// Makes one byte stream to the engine per HTTP connection.
#[derive(Clone)]
struct SshConnector {
    target: Arc<SshTarget>,
    /// The master connection, made on first use and made again when it died.
    session: Arc<Mutex<Option<Arc<Session>>>>,
}

impl SshConnector {
    async fn session(&self) -> Result<Arc<Session>, openssh::Error> {
        let mut slot = self.session.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.check().await.is_ok() {
                return Ok(s.clone());
            }
        }
        let mut builder = SessionBuilder::default();
        builder
            .known_hosts_check(KnownHosts::Strict)
            .user_known_hosts_file(&self.target.known_hosts)
            .connect_timeout(Duration::from_secs(10))
            .server_alive_interval(Duration::from_secs(15));
        if let Some(key) = &self.target.key {
            builder.keyfile(key);
        }
        let (builder, destination) = builder.resolve(&self.target.destination);
        let session = Arc::new(builder.connect(destination).await?);
        *slot = Some(session.clone());
        Ok(session)
    }
}

impl tower_service::Service<hyper::Uri> for SshConnector {
    type Response = SshStream;
    type Error = openssh::Error;
    type Future = BoxFuture<'static, Result<SshStream, openssh::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _destination: hyper::Uri) -> Self::Future {
        let me = self.clone();
        Box::pin(async move {
            let session = me.session().await?;
            let mut child = session
                .arc_command("docker")
                .arg("system")
                .arg("dial-stdio")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .await?;
            let missing = || openssh::Error::ChildIo(io::Error::other("the remote docker has no stdio"));
            let stdin = child.stdin().take().ok_or_else(missing)?;
            let stdout = child.stdout().take().ok_or_else(missing)?;
            Ok(SshStream { stdin: TokioIo::new(stdin), stdout: TokioIo::new(stdout), _child: child })
        })
    }
}

/// The stdio of a remote `docker system dial-stdio`, as one byte stream.
struct SshStream {
    stdin: TokioIo<openssh::ChildStdin>,
    stdout: TokioIo<openssh::ChildStdout>,
    /// Kept so the remote process lives as long as the stream.
    _child: openssh::Child<Arc<Session>>,
}

impl Connection for SshStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdout).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SshStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stdin).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_shutdown(cx)
    }
}
