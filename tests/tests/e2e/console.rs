//! The operator console in a real browser: Debian's chromium, driven by playwright-core
//! (`deploy/console-tests/console.test.mjs`), against the real api and workers. The script
//! walks the operator's story and prints a line per step; this test starts the system,
//! runs it, and checks through the REST API that what the browser did happened.
//!
//! `DFE_CONSOLE_SCREENSHOTS=<dir>` keeps the screenshots there (`docs/` for the README);
//! otherwise they go to the environment's directory.

use std::path::PathBuf;
use std::time::Duration;

use dfe_tests::console::{browser_tests_dir, client_entry, CHROMIUM};
use dfe_tests::{random_hex, Options, TestEnv};

/// What the browser script does, each of which it must report as done.
const STEPS: &[&str] = &[
    "a wrong token is refused with a clear message",
    "signing in with a token shows the fleet overview",
    "an instance provisioned through the REST API appears and turns provisioned without a reload",
    "the instances view filters by state and search",
    "the instance page shows its parts and jobs with step timings",
    "a read-only token sees no action, and a forged action request is refused",
    "exporting from the instance page shows the snapshot, which downloads",
    "the jobs view filters by type and shows the export",
    "cordoning a host from the hosts view, and uncordoning it",
    "deprovisioning asks for a confirmation that names the instance",
    "the live event tail shows the instance's events",
    "the overview counts jobs of the last hour",
    "on a phone the pages fit the screen",
    "signing out forgets the token",
    "no script errors",
];

#[tokio::test]
async fn an_operator_provisions_exports_cordons_and_deprovisions_from_the_console_in_a_browser() {
    let dir = browser_tests_dir().expect("the browser test's tools");
    let readonly = format!("readonly-token-{}", random_hex(24));
    let options = Options {
        extra_config: client_entry("console-viewer", &readonly, "scopes = [\"read\"]"),
        // Limits, so that the hosts view has capacity to show.
        env: vec![
            ("DFE__CLUSTERS__LOCAL__MAX_INSTANCES".into(), "20".into()),
            ("DFE__CLUSTERS__LOCAL__MEMORY_BUDGET".into(), "2g".into()),
            ("DFE__DATABASES__LOCAL__MAX_DATABASES".into(), "50".into()),
        ],
        ..Default::default()
    };
    let env = TestEnv::start_with(options).await.expect("env");
    let instance = env.instance_id("console");
    let owner = format!("acme{}", random_hex(4));
    let shots = std::env::var_os("DFE_CONSOLE_SCREENSHOTS").map_or_else(|| env.dir.join("screenshots"), PathBuf::from);

    let run = tokio::process::Command::new("node")
        .arg("console.test.mjs")
        .current_dir(&dir)
        .env("DFE_API_URL", &env.api_url)
        .env("DFE_TOKEN", &env.token)
        .env("DFE_TOKEN_READONLY", &readonly)
        .env("DFE_OWNER", &owner)
        .env("DFE_INSTANCE", &instance)
        .env("DFE_HOST", "local")
        .env("DFE_SCREENSHOTS", &shots)
        .env("CHROMIUM", CHROMIUM)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(420), run)
        .await
        .expect("the browser test ends within 7 minutes")
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}\n(screenshots in {})",
        out.status,
        shots.display()
    );
    for step in STEPS {
        assert!(stdout.contains(&format!("ok - {step}\n")), "step not done: {step}\n{stdout}");
    }

    // What the browser did, as the REST API sees it.
    let (_, record) = env.get(&format!("/api/v1/instances/{instance}")).await.expect("instance");
    assert_eq!(record["state"], "deprovisioned", "{record}");
    let (_, snapshots) = env.get(&format!("/api/v1/snapshots?instance-id={instance}")).await.expect("snapshots");
    assert_eq!(snapshots["snapshots"].as_array().map(Vec::len), Some(1), "{snapshots}");
    let (_, host) = env.get("/api/v1/hosts/local").await.expect("host");
    assert_eq!(host["cordoned"], false, "the browser uncordoned it: {host}");
    let (_, jobs) = env.get(&format!("/api/v1/ops/jobs?instance-id={instance}")).await.expect("jobs");
    let jobs = jobs["jobs"].as_array().cloned().unwrap_or_default();
    let kinds: Vec<&str> = jobs.iter().filter_map(|j| j["type"].as_str()).collect();
    assert_eq!(kinds, ["deprovision", "export", "provision"], "newest first");
    assert!(jobs.iter().all(|j| j["requested-by"] == "tests"), "the read-only token submitted nothing: {jobs:?}");
    let logs = env.all_logs();
    assert!(!logs.contains(&env.token) && !logs.contains(&readonly), "a token reached the logs");
}
