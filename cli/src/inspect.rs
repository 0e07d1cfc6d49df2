//! `dfe jobs`, `dfe instances` and `dfe snapshots`: the API's registry views as tables,
//! details or JSON.

use dfe_shared::ids::{FieldError, InstanceId, OwnerId, Tag};
use serde_json::Value;

use crate::api::{list_of, ApiClient, Subject};
use crate::args::{InstancesArgs, JobsArgs, SnapshotsArgs};
use crate::error::CliError;
use crate::output::{cell, detail, emit, render};
use crate::settings::Settings;

/// How many rows the API lists when not told otherwise.
const API_DEFAULT_LIMIT: usize = 100;

/// Columns of the job list: (header, member).
const JOB_COLUMNS: &[(&str, &str)] = &[
    ("JOB-ID", "job-id"),
    ("TYPE", "type"),
    ("STATE", "state"),
    ("ATTEMPTS", "attempts"),
    ("INSTANCE-ID", "instance-id"),
    ("CREATED-AT", "created-at"),
];

/// Columns of the instance list: (header, member).
const INSTANCE_COLUMNS: &[(&str, &str)] = &[
    ("INSTANCE-ID", "instance-id"),
    ("OWNER-ID", "owner-id"),
    ("STATE", "state"),
    ("GUEST-LOCATION", "guest-location"),
    ("CLUSTER-ID", "cluster-id"),
    ("HOST", "host"),
    ("RESOURCE-URI", "resource-uri"),
    ("CREATED-AT", "created-at"),
];

/// Columns of the snapshot list: (header, member).
const SNAPSHOT_COLUMNS: &[(&str, &str)] = &[
    ("SNAPSHOT-ID", "snapshot-id"),
    ("INSTANCE-ID", "instance-id"),
    ("OWNER-ID", "owner-id"),
    ("SIZE", "size"),
    ("DESTINATION", "destination"),
    ("CREATED-AT", "created-at"),
];

/// `dfe jobs [ID] [--instance-id I] [--limit N] [--json]`.
pub async fn jobs(settings: &Settings, args: &JobsArgs) -> anyhow::Result<()> {
    let id = args.job_id.as_deref().map(|s| path_id("job-id", s)).transpose()?;
    let instance = args.instance_id.as_deref().map(instance_id).transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    match id {
        Some(id) => {
            let job = api.job(id.as_str()).await?;
            show_one(&job, args.json, &["job-id", "type", "state", "attempts", "request", "result", "error"])
        }
        None => {
            let mut query = limit_query(args.limit);
            if let Some(instance) = instance {
                query.push(("instance-id", instance.as_str().to_owned()));
            }
            let answer = api.get_with("/api/v1/ops/jobs", &query, Subject::Jobs).await?;
            show_list(answer, "jobs", JOB_COLUMNS, args.json, args.limit)
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
            let first = ["instance-id", "owner-id", "state", "guest-location", "cluster-id", "host", "resource-uri"];
            show_one(&instance, args.json, &first)
        }
        None => {
            let mut query = limit_query(args.limit);
            if args.all {
                query.push(("include-removed", "true".to_owned()));
            }
            let answer = api.get_with("/api/v1/instances", &query, Subject::Instances).await?;
            show_list(answer, "instances", INSTANCE_COLUMNS, args.json, args.limit)
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
            if args.json {
                return show_one(&snapshot, true, &[]);
            }
            let first =
                ["snapshot-id", "instance-id", "owner-id", "job-id", "destination", "size", "sha256", "created-at"];
            emit(&detail(&snapshot, &first))
        }
        None => {
            let mut query = limit_query(args.limit);
            if let Some(instance) = instance {
                query.push(("instance-id", instance.as_str().to_owned()));
            }
            if let Some(owner) = owner {
                query.push(("owner-id", owner.to_owned()));
            }
            let mut answer = api.snapshots(&query).await?;
            if !args.json {
                // Sizes for people; `--json` keeps the API's bytes.
                if let Some(items) = answer.get_mut("snapshots").and_then(Value::as_array_mut) {
                    for item in items {
                        if let Some(size) = item.get("size").and_then(Value::as_u64) {
                            item["size"] = Value::String(human_size(size));
                        }
                    }
                }
            }
            show_list(answer, "snapshots", SNAPSHOT_COLUMNS, args.json, args.limit)
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

fn show_one(item: &Value, json: bool, first: &[&str]) -> anyhow::Result<()> {
    if json {
        emit(&format!("{}\n", pretty(item)))
    } else {
        emit(&detail(item, first))
    }
}

fn show_list(answer: Value, key: &str, columns: &[(&str, &str)], json: bool, limit: Option<u16>) -> anyhow::Result<()> {
    if json {
        return emit(&format!("{}\n", pretty(&answer)));
    }
    let items = list_of(answer, key)?;
    if items.is_empty() {
        eprintln!("no {key}");
        return Ok(());
    }
    let headers: Vec<&str> = columns.iter().map(|(h, _)| *h).collect();
    let rows: Vec<Vec<String>> =
        items.iter().map(|item| columns.iter().map(|(_, member)| cell(item, member)).collect()).collect();
    emit(&render(&headers, &rows))?;
    // A full page may not be everything: say so where scripts reading stdout won't see it.
    let limit = limit.map_or(API_DEFAULT_LIMIT, usize::from);
    if items.len() >= limit {
        eprintln!("(the newest {limit} {key}; --limit N shows more, up to 1000)");
    }
    Ok(())
}

fn pretty(v: &Value) -> String {
    // Serializing a `Value` cannot fail: its keys are strings.
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
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
    fn sizes_read_in_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 << 30), "5.0 GiB");
    }
}
