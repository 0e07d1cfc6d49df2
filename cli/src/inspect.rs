//! `dfe jobs`, `dfe instances` and `dfe snapshots`: the API's registry views as tables,
//! details or JSON.

use dfe_shared::ids::{FieldError, InstanceId, OwnerId, Tag};
use dfe_shared::records::{InstanceRecord, JobRecord, SnapshotRecord};
use serde_json::Value;

use crate::api::{ApiClient, Fetched};
use crate::args::{InstancesArgs, JobsArgs, SnapshotsArgs};
use crate::error::CliError;
use crate::output::{detail, emit, or_dash, pretty, render, time_cell};
use crate::settings::Settings;

/// How many rows the API lists when not told otherwise.
const API_DEFAULT_LIMIT: usize = 100;

/// Headers of the job list; [`job_row`] fills them.
const JOB_COLUMNS: &[&str] = &["JOB-ID", "TYPE", "STATE", "ATTEMPTS", "INSTANCE-ID", "CREATED-AT"];

/// Headers of the instance list; [`instance_row`] fills them.
const INSTANCE_COLUMNS: &[&str] =
    &["INSTANCE-ID", "OWNER-ID", "STATE", "GUEST-LOCATION", "CLUSTER-ID", "HOST-ID", "RESOURCE-URI", "CREATED-AT"];

/// Headers of the snapshot list; [`snapshot_row`] fills them.
const SNAPSHOT_COLUMNS: &[&str] = &["SNAPSHOT-ID", "INSTANCE-ID", "OWNER-ID", "SIZE", "DESTINATION", "CREATED-AT"];

/// A row of the job list.
pub fn job_row(job: &JobRecord) -> Vec<String> {
    vec![
        job.job_id.clone(),
        job.kind.to_string(),
        job.state.to_string(),
        job.attempts.to_string(),
        job.instance_id.clone(),
        time_cell(job.created_at),
    ]
}

/// A row of the instance list.
pub fn instance_row(instance: &InstanceRecord) -> Vec<String> {
    vec![
        instance.instance_id.clone(),
        instance.owner_id.to_string(),
        instance.state.to_string(),
        instance.guest_location.clone(),
        or_dash(instance.cluster_id.as_deref()),
        or_dash(instance.host_id.as_deref()),
        or_dash(instance.resource_uri.as_deref()),
        time_cell(instance.created_at),
    ]
}

/// A row of the snapshot list; sizes for people (`--json` keeps the API's bytes).
pub fn snapshot_row(snapshot: &SnapshotRecord) -> Vec<String> {
    vec![
        snapshot.snapshot_id.clone(),
        snapshot.instance_id.clone(),
        or_dash(snapshot.owner_id.as_ref().map(OwnerId::as_text).as_deref()),
        u64::try_from(snapshot.size).map_or_else(|_| snapshot.size.to_string(), human_size),
        snapshot.destination.clone(),
        time_cell(snapshot.created_at),
    ]
}

/// `dfe jobs [ID] [--instance-id I] [--limit N] [--json]`.
pub async fn jobs(settings: &Settings, args: &JobsArgs) -> anyhow::Result<()> {
    let id = args.job_id.as_deref().map(|s| path_id("job-id", s)).transpose()?;
    let instance = args.instance_id.as_deref().map(instance_id).transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    match id {
        Some(id) => {
            let job = api.job(id.as_str()).await?;
            let first =
                ["job-id", "type", "state", "attempts", "instance-id", "requested-by", "request", "result", "error"];
            show_one(&job, args.json, &first)
        }
        None => {
            let mut query = limit_query(args.limit);
            if let Some(instance) = instance {
                query.push(("instance-id", instance.as_str().to_owned()));
            }
            let list = api.jobs(&query).await?;
            let rows: Vec<_> = list.record.jobs.iter().map(job_row).collect();
            show_list(&list.json, "jobs", JOB_COLUMNS, &rows, args.json, args.limit)
        }
    }
}

/// `dfe instances [ID] [--all] [--limit N] [--json]`.
pub async fn instances(settings: &Settings, args: &InstancesArgs) -> anyhow::Result<()> {
    let id = args.instance_id.as_deref().map(instance_id).transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    match id {
        Some(id) => {
            let instance = api.instance(id.as_str()).await?;
            let first = [
                "instance-id",
                "owner-id",
                "state",
                "guest-location",
                "cluster-id",
                "host-id",
                "database-server",
                "offerings",
                "resource-uri",
            ];
            show_one(&instance, args.json, &first)
        }
        None => {
            let mut query = limit_query(args.limit);
            if args.all {
                query.push(("include-removed", "true".to_owned()));
            }
            let list = api.instances(&query).await?;
            let rows: Vec<_> = list.record.instances.iter().map(instance_row).collect();
            show_list(&list.json, "instances", INSTANCE_COLUMNS, &rows, args.json, args.limit)
        }
    }
}

/// `dfe snapshots [ID] [--instance-id I] [--owner-id O] [--limit N] [--json]`.
pub async fn snapshots(settings: &Settings, args: &SnapshotsArgs) -> anyhow::Result<()> {
    let id = args.snapshot_id.as_deref().map(snapshot_id).transpose()?;
    let instance = args.instance_id.as_deref().map(instance_id).transpose()?;
    // Checked, but sent as typed: the API matches the owner id as text, so `007` must stay
    // `007` rather than become the number 7.
    let owner = args
        .owner_id
        .as_deref()
        .map(|s| OwnerId::parse_cli(s).map(|_| s).map_err(|m| CliError::Invalid(FieldError::new("owner-id", m))))
        .transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    match id {
        Some(id) => {
            let snapshot = api.snapshot(id.as_str()).await?;
            let first =
                ["snapshot-id", "instance-id", "owner-id", "job-id", "destination", "size", "sha256", "created-at"];
            show_one(&snapshot, args.json, &first)
        }
        None => {
            let mut query = limit_query(args.limit);
            if let Some(instance) = instance {
                query.push(("instance-id", instance.as_str().to_owned()));
            }
            if let Some(owner) = owner {
                query.push(("owner-id", owner.to_owned()));
            }
            let list = api.snapshots(&query).await?;
            let rows: Vec<_> = list.record.snapshots.iter().map(snapshot_row).collect();
            show_list(&list.json, "snapshots", SNAPSHOT_COLUMNS, &rows, args.json, args.limit)
        }
    }
}

/// An instance id, checked before it reaches a URL.
fn instance_id(s: &str) -> anyhow::Result<InstanceId> {
    Ok(InstanceId::parse(s).map_err(|m| CliError::Invalid(FieldError::new("instance-id", m)))?)
}

/// A snapshot id, checked before it reaches a URL.
pub fn snapshot_id(s: &str) -> anyhow::Result<Tag> {
    path_id("snapshot", s)
}

/// An id (job, snapshot) as the API would accept it in a path.
fn path_id(field: &str, s: &str) -> anyhow::Result<Tag> {
    let tag = Tag::parse(s).map_err(|m| CliError::Invalid(FieldError::new(field, m)))?;
    // `.` and `..` are tags, but as a path segment they would climb the URL.
    if s.bytes().all(|b| b == b'.') {
        return Err(CliError::Invalid(FieldError::new(field, "must not be only dots")).into());
    }
    Ok(tag)
}

fn limit_query(limit: Option<u16>) -> Vec<(&'static str, String)> {
    limit.map(|n| vec![("limit", n.to_string())]).unwrap_or_default()
}

/// `1.5 MiB`: a byte count for people.
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    // Precision is not the point of a display size; the float is exact enough.
    #[allow(clippy::cast_precision_loss)]
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One record: the API's JSON with `--json`, else a detail view. The record was read as its
/// type already (so a state this dfe does not know was refused); the view shows every member
/// of the answer, links included.
fn show_one<T>(item: &Fetched<T>, json: bool, first: &[&str]) -> anyhow::Result<()> {
    if json {
        emit(&format!("{}\n", pretty(&item.json)))
    } else {
        emit(&detail(&item.json, first))
    }
}

/// A list: the API's JSON with `--json`, else `rows` under `headers`.
fn show_list(
    answer: &Value,
    key: &str,
    headers: &[&str],
    rows: &[Vec<String>],
    json: bool,
    limit: Option<u16>,
) -> anyhow::Result<()> {
    if json {
        return emit(&format!("{}\n", pretty(answer)));
    }
    if rows.is_empty() {
        eprintln!("no {key}");
        return Ok(());
    }
    emit(&render(headers, rows))?;
    // A full page may not be everything: say so where scripts reading stdout won't see it.
    let limit = limit.map_or(API_DEFAULT_LIMIT, usize::from);
    if rows.len() >= limit {
        eprintln!("(the newest {limit} {key}; --limit N shows more, up to 1000)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_before_they_reach_a_url() {
        assert!(path_id("job-id", "6f1c2a4e-0000-4000-8000-000000000001").is_ok());
        assert!(path_id("job-id", "..").is_err());
        assert!(path_id("job-id", "a/b").is_err());
        let err = snapshot_id("a b").expect_err("a space");
        assert!(err.to_string().starts_with("snapshot: "), "{err}");
        assert!(instance_id("Acme").is_err());
    }

    #[test]
    fn rows_are_read_from_the_typed_records() {
        use crate::testing::{instance_json, job_json, snapshot_json};
        let job: JobRecord = serde_json::from_value(job_json("j-1", "retrying")).expect("a job record");
        assert_eq!(job_row(&job), ["j-1", "provision", "retrying", "1", "acme-1", "2026-11-26T18:38:31.973Z"]);
        let mut instance = instance_json("acme-1", "provisioned");
        instance["host-id"] = Value::Null;
        let instance: InstanceRecord = serde_json::from_value(instance).expect("an instance record");
        let row = instance_row(&instance);
        assert_eq!(row[..6], ["acme-1", "7", "provisioned", "docker", "local", "-"]);
        let snapshot: SnapshotRecord = serde_json::from_value(snapshot_json("s-1", 1536, "ab")).expect("a snapshot");
        assert_eq!(snapshot_row(&snapshot)[2..4], ["7", "1.5 KiB"]);
    }

    #[test]
    fn sizes_read_in_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
    }
}
