//! Child processes (api, workers) with their output captured to a log file and kept in
//! memory, so tests can wait for a line and scan everything they printed.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// A running service process.
pub struct Proc {
    /// Its short name (`api`, `worker1`, …).
    pub name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns `cmd`, teeing stdout and stderr into `<dir>/<name>.log` and memory.
    pub fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Proc> {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let file = Arc::new(Mutex::new(std::fs::File::create(dir.join(format!("{name}.log")))?));
        let stdout = child.stdout.take().context("stdout")?;
        let stderr = child.stderr.take().context("stderr")?;
        for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
            let (lines, file) = (lines.clone(), file.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Ok(mut f) = file.lock() {
                        let _ = writeln!(f, "{line}");
                    }
                    if let Ok(mut l) = lines.lock() {
                        l.push(line);
                    }
                }
            });
        }
        Ok(Proc { name: name.to_owned(), child, lines })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    pub fn log(&self) -> String {
        self.lines.lock().map(|l| l.join("\n") + "\n").unwrap_or_default()
    }

    /// Waits for a line containing `needle`; returns it.
    pub async fn wait_for_line(&self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = self.lines.lock().ok().and_then(|l| l.iter().find(|l| l.contains(needle)).cloned()) {
                return Ok(l);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} printed no line with {needle:?} within {timeout:?}; it printed:\n{}", self.name, self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM (a graceful stop).
    pub fn terminate(&self) -> Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.child.id());
        }
        Ok(())
    }

    /// Waits for it to exit; its exit code (None: killed by a signal).
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}
