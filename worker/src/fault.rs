//! Test-only fault hooks. With `DFE_TEST_HOLD_AFTER=<step>` (`storage`, `database`,
//! `instance`), a worker stops dead after that step of a job, holding the job
//! unacknowledged, so a test can SIGKILL it at a known point and watch another worker
//! finish the job. With `DFE_TEST_PANIC_AFTER=<step>`, the job body panics there instead
//! (what a bug would do). Never set them in production: a held job waits for the job
//! deadline on other workers.

use std::sync::OnceLock;
use std::time::Duration;

/// The hooks, read from the environment once (this sits on every job's path).
struct Hooks {
    hold_after: Option<String>,
    panic_after: Option<String>,
    step_delay: Option<Duration>,
}

fn hooks() -> &'static Hooks {
    static HOOKS: OnceLock<Hooks> = OnceLock::new();
    HOOKS.get_or_init(|| Hooks {
        hold_after: std::env::var("DFE_TEST_HOLD_AFTER").ok(),
        panic_after: std::env::var("DFE_TEST_PANIC_AFTER").ok(),
        step_delay: std::env::var("DFE_TEST_STEP_DELAY_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis),
    })
}

/// Holds the current task forever when the hook names `step`; with
/// `DFE_TEST_STEP_DELAY_MS=<ms>`, every step takes that much longer (slow jobs for shutdown
/// tests).
pub async fn hold_after(step: &str) {
    let hooks = hooks();
    if hooks.panic_after.as_deref() == Some(step) {
        tracing::warn!(step, "DFE_TEST_PANIC_AFTER: the job body panics after this step (test hook)");
        panic!("DFE_TEST_PANIC_AFTER={step}");
    }
    if hooks.hold_after.as_deref() == Some(step) {
        tracing::warn!(step, "DFE_TEST_HOLD_AFTER: holding the job after this step (test hook)");
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    }
    if let Some(delay) = hooks.step_delay {
        tokio::time::sleep(delay).await;
    }
}
