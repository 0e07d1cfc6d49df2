//! Submitting a job (`provision`, `deprovision`, `import`, `export`) through the API or
//! straight onto the queue, and following it with `--wait`.

use std::process::ExitCode;
use std::time::Duration;

use dfe_shared::job::Job;
use dfe_shared::records::JobState;
use lapin::Consumer;

use crate::api::ApiClient;
use crate::args::{SubmitArgs, Via};
use crate::broker::Broker;
use crate::error::CliError;
use crate::follow::{follow, Followed};
use crate::output::emit_line;
use crate::request::new_job_id;
use crate::settings::Settings;

/// The binding key `--wait` listens with: every event, filtered by job id here.
const WAIT_PATTERN: &str = "dfe.#";

/// Submits `job` and, with `--wait`, follows it to its end.
pub async fn run(settings: &Settings, via: Via, job: Job, opts: &SubmitArgs) -> anyhow::Result<ExitCode> {
    match via {
        Via::Api => via_api(settings, job, opts).await,
        Via::Queue => via_queue(settings, job, opts).await,
    }
}

async fn via_api(settings: &Settings, job: Job, opts: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    // Subscribed before submitting, so not even the fastest worker's events are missed. The
    // API's job record is polled as well, so the wait still works (less chattily) when the
    // broker cannot be reached from here.
    let (broker, events) = if opts.wait {
        match subscribe(settings).await {
            Ok((broker, events)) => (Some(broker), Some(events)),
            Err(e) => {
                eprintln!("warning: {e:#}; following the job by polling the API only");
                (None, None)
            }
        }
    } else {
        (None, None)
    };
    let accepted = api.submit(&job, opts.idempotency_key.as_deref()).await?;
    let status = accepted.status.map_or("accepted", JobState::as_str);
    emit_line(&format!("{} job {} {status} (instance {})", job.kind(), accepted.job_id, job.instance_id()))?;
    let code = if opts.wait {
        let followed =
            Followed { kind: job.kind(), job_id: &accepted.job_id, timeout: Duration::from_secs(opts.timeout) };
        follow(&followed, events, Some(&api)).await
    } else {
        Ok(ExitCode::SUCCESS)
    };
    if let Some(broker) = broker {
        broker.close().await;
    }
    code
}

async fn via_queue(settings: &Settings, mut job: Job, opts: &SubmitArgs) -> anyhow::Result<ExitCode> {
    if opts.idempotency_key.is_some() {
        return Err(CliError::Usage(
            "--idempotency-key needs --via api: the queue has no idempotency keys \
             (--job-id names the job instead)"
                .into(),
        )
        .into());
    }
    // The API would assign the id; on the queue the publisher does, so it can be followed.
    if job.job_id().is_none() {
        job.set_job_id(new_job_id());
    }
    let job_id = job.job_id().map(|t| t.as_str().to_owned()).unwrap_or_default();
    let broker = Broker::connect(&settings.amqp_url).await?;
    let events = if opts.wait { Some(broker.subscribe(WAIT_PATTERN).await?) } else { None };
    broker.publish_job(&job).await?;
    emit_line(&format!(
        "{} job {job_id} published onto {} (instance {})",
        job.kind(),
        dfe_shared::topology::JOBS_EXCHANGE,
        job.instance_id()
    ))?;
    let code = if opts.wait {
        // Polling needs the API and a token; without them the events alone are followed.
        let api = match (settings.api_url(), crate::settings::read_token(settings.token_file())) {
            (Ok(url), Ok(Some(token))) => ApiClient::new(url, token).ok(),
            _ => None,
        };
        let followed = Followed { kind: job.kind(), job_id: &job_id, timeout: Duration::from_secs(opts.timeout) };
        follow(&followed, events, api.as_ref()).await
    } else {
        Ok(ExitCode::SUCCESS)
    };
    broker.close().await;
    code
}

async fn subscribe(settings: &Settings) -> anyhow::Result<(Broker, Consumer)> {
    let broker = Broker::connect(&settings.amqp_url).await?;
    let events = broker.subscribe(WAIT_PATTERN).await?;
    Ok((broker, events))
}
