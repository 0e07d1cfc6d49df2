//! A test-only fault hook. With `DFE_TEST_HOLD_AFTER=<step>` (`storage`, `database`,
//! `instance`), a worker stops dead after that step of a provision or deprovision, holding
//! the job unacknowledged, so a test can SIGKILL it at a known point and watch another
//! worker finish the job. Never set them in production: a held job waits for the job
//! deadline on other workers.

use std::time::Duration;

/// Holds the current task forever when the hook names `step`; with
/// `DFE_TEST_STEP_DELAY_MS=<ms>`, every step takes that much longer (slow jobs for shutdown
/// tests).
pub async fn hold_after(step: &str) {
    if std::env::var("DFE_TEST_HOLD_AFTER").is_ok_and(|s| s == step) {
        tracing::warn!(step, "DFE_TEST_HOLD_AFTER: holding the job after this step (test hook)");
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
    }
    if let Some(ms) = std::env::var("DFE_TEST_STEP_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}
