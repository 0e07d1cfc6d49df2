//! `dfe jobs` and `dfe instances`: the API's registry views as tables, details or JSON.

use dfe_shared::ids::{InstanceId, Tag};
use serde_json::Value;

use crate::api::{list_of, ApiClient, Subject};
use crate::args::{InstancesArgs, JobsArgs};
use crate::error::CliError;
use crate::output::{cell, detail, emit, render};
use crate::settings::Settings;

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

/// `dfe jobs [ID] [--json]`.
pub async fn jobs(settings: &Settings, args: &JobsArgs) -> anyhow::Result<()> {
    let id = args.job_id.as_deref().map(job_id).transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    match id {
        Some(id) => {
            let job = api.job(id.as_str()).await?;
            show_one(&job, args.json, &["job-id", "type", "state", "attempts", "request", "result", "error"])
        }
        None => {
            let answer = api.get("/api/v1/ops/jobs", Subject::Jobs).await?;
            show_list(answer, "jobs", JOB_COLUMNS, args.json)
        }
    }
}

/// `dfe instances [ID] [--json]`.
pub async fn instances(settings: &Settings, args: &InstancesArgs) -> anyhow::Result<()> {
    let id = args
        .instance_id
        .as_deref()
        .map(|s| {
            InstanceId::parse(s).map_err(|m| CliError::Invalid(dfe_shared::ids::FieldError::new("instance-id", m)))
        })
        .transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    match id {
        Some(id) => {
            let instance = api.instance(id.as_str()).await?;
            let first = ["instance-id", "owner-id", "state", "guest-location", "cluster-id", "host", "resource-uri"];
            show_one(&instance, args.json, &first)
        }
        None => {
            let answer = api.get("/api/v1/instances", Subject::Instances).await?;
            show_list(answer, "instances", INSTANCE_COLUMNS, args.json)
        }
    }
}

/// A job id as the API would accept it in a path.
fn job_id(s: &str) -> anyhow::Result<Tag> {
    let tag = Tag::parse(s).map_err(|m| CliError::Invalid(dfe_shared::ids::FieldError::new("job-id", m)))?;
    // `.` and `..` are tags, but as a path segment they would climb the URL.
    if s.bytes().all(|b| b == b'.') {
        return Err(CliError::Invalid(dfe_shared::ids::FieldError::new("job-id", "must not be only dots")).into());
    }
    Ok(tag)
}

fn show_one(item: &Value, json: bool, first: &[&str]) -> anyhow::Result<()> {
    if json {
        emit(&format!("{}\n", pretty(item)))
    } else {
        emit(&detail(item, first))
    }
}

fn show_list(answer: Value, key: &str, columns: &[(&str, &str)], json: bool) -> anyhow::Result<()> {
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
    emit(&render(&headers, &rows))
}

fn pretty(v: &Value) -> String {
    // Serializing a `Value` cannot fail: its keys are strings.
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_are_checked_before_they_reach_a_url() {
        assert!(job_id("6f1c2a4e-0000-4000-8000-000000000001").is_ok());
        assert!(job_id("..").is_err());
        assert!(job_id("a/b").is_err());
    }
}
