//! `dfe jobs`, `dfe instances` and `dfe snapshots`: the API's registry views as tables,
//! details or JSON, a page at a time or (`--all`) every page; and `dfe cancel`.

use dfe_shared::ids::{FieldError, InstanceId, OwnerId, Tag};
use dfe_shared::records::{InstanceRecord, JobRecord, SnapshotRecord};
use serde_json::Value;

use crate::api::{ApiClient, Fetched};
use crate::args::{CancelArgs, InstancesArgs, JobsArgs, PageArgs, SnapshotsArgs};
use crate::error::CliError;
use crate::output::{detail, emit, or_dash, pretty, render, time_cell};
use crate::settings::Settings;

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

/// `dfe jobs [ID] [--instance-id I] [--owner-id O] [--state S] [--type T] [--limit N] [--all] [--json]`.
pub async fn jobs(settings: &Settings, args: &JobsArgs) -> anyhow::Result<()> {
    let id = args.job_id.as_deref().map(|s| path_id("job-id", s)).transpose()?;
    let instance = args.instance_id.as_deref().map(instance_id).transpose()?;
    let owner = args.owner_id.as_deref().map(owner_id).transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    match id {
        Some(id) => {
            let job = api.job(id.as_str()).await?;
            let first =
                ["job-id", "type", "state", "attempts", "instance-id", "requested-by", "request", "result", "error"];
            show_one(&job, args.json, &first)
        }
        None => {
            let mut query = Vec::new();
            query.extend(instance.map(|i| ("instance-id", i.as_str().to_owned())));
            query.extend(owner.map(|o| ("owner-id", o.to_owned())));
            query.extend(args.state.clone().map(|s| ("state", s)));
            query.extend(args.kind.clone().map(|k| ("type", k)));
            let api = &api;
            let list = pages(&args.page, query, |q| async move {
                let page = api.jobs(&q).await?;
                Ok((page.json, page.record.jobs, page.record.next_cursor))
            })
            .await?;
            let rows: Vec<_> = list.rows.iter().map(job_row).collect();
            show_list(&list, "jobs", JOB_COLUMNS, &rows, args.json)
        }
    }
}

/// `dfe cancel ID [--json]`.
pub async fn cancel(settings: &Settings, args: &CancelArgs) -> anyhow::Result<()> {
    let id = path_id("job-id", &args.job_id)?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    let job = api.cancel(id.as_str()).await?;
    if args.json {
        return emit(&format!("{}\n", pretty(&job.json)));
    }
    let r = &job.record;
    let why = r.error.as_ref().map_or_else(String::new, |e| format!(" ({}: {})", e.code, e.message));
    emit(&format!("{} job {} cancelled: {}{why}\n", r.kind, r.job_id, r.state))
}

/// `dfe instances [ID] [--include-removed] [--owner-id O] [--state S] [--host-id H] [--limit N] [--all] [--json]`.
pub async fn instances(settings: &Settings, args: &InstancesArgs) -> anyhow::Result<()> {
    let id = args.instance_id.as_deref().map(instance_id).transpose()?;
    let owner = args.owner_id.as_deref().map(owner_id).transpose()?;
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
            let mut query = Vec::new();
            if args.include_removed {
                query.push(("include-removed", "true".to_owned()));
            }
            query.extend(owner.map(|o| ("owner-id", o.to_owned())));
            query.extend(args.state.clone().map(|s| ("state", s)));
            query.extend(args.host_id.clone().map(|h| ("host-id", h)));
            let api = &api;
            let list = pages(&args.page, query, |q| async move {
                let page = api.instances(&q).await?;
                Ok((page.json, page.record.instances, page.record.next_cursor))
            })
            .await?;
            let rows: Vec<_> = list.rows.iter().map(instance_row).collect();
            show_list(&list, "instances", INSTANCE_COLUMNS, &rows, args.json)
        }
    }
}

/// `dfe snapshots [ID] [--instance-id I] [--owner-id O] [--limit N] [--all] [--json]`.
pub async fn snapshots(settings: &Settings, args: &SnapshotsArgs) -> anyhow::Result<()> {
    let id = args.snapshot_id.as_deref().map(snapshot_id).transpose()?;
    let instance = args.instance_id.as_deref().map(instance_id).transpose()?;
    let owner = args.owner_id.as_deref().map(owner_id).transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    match id {
        Some(id) => {
            let snapshot = api.snapshot(id.as_str()).await?;
            let first =
                ["snapshot-id", "instance-id", "owner-id", "job-id", "destination", "size", "sha256", "created-at"];
            show_one(&snapshot, args.json, &first)
        }
        None => {
            let mut query = Vec::new();
            query.extend(instance.map(|i| ("instance-id", i.as_str().to_owned())));
            query.extend(owner.map(|o| ("owner-id", o.to_owned())));
            let api = &api;
            let list = pages(&args.page, query, |q| async move {
                let page = api.snapshots(&q).await?;
                Ok((page.json, page.record.snapshots, page.record.next_cursor))
            })
            .await?;
            let rows: Vec<_> = list.rows.iter().map(snapshot_row).collect();
            show_list(&list, "snapshots", SNAPSHOT_COLUMNS, &rows, args.json)
        }
    }
}

/// The pages of a list read: the rows, the JSON of each page, and whether more follow.
struct Listed<T> {
    rows: Vec<T>,
    pages: Vec<Value>,
    more: bool,
}

/// Reads one page of a list (`--all`: every page, following `next-cursor` to the end).
/// `fetch` reads the page of a query: its JSON, its rows and its next cursor.
async fn pages<T, F, Fut>(page: &PageArgs, query: Vec<(&'static str, String)>, fetch: F) -> anyhow::Result<Listed<T>>
where
    F: Fn(Vec<(&'static str, String)>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(Value, Vec<T>, Option<String>)>>,
{
    let mut listed = Listed { rows: Vec::new(), pages: Vec::new(), more: false };
    let mut cursor: Option<String> = None;
    loop {
        let mut q = query.clone();
        q.extend(page.limit.map(|n| ("limit", n.to_string())));
        q.extend(cursor.take().map(|c| ("cursor", c)));
        let (json, rows, next) = fetch(q).await?;
        listed.rows.extend(rows);
        listed.pages.push(json);
        match next {
            Some(next) if page.all => cursor = Some(next),
            Some(_) => {
                listed.more = true;
                return Ok(listed);
            }
            None => return Ok(listed),
        }
    }
}

/// An owner id, checked, but sent as typed: the API matches it as text, so `007` stays
/// `007` rather than becoming the number 7.
fn owner_id(s: &str) -> anyhow::Result<&str> {
    Ok(OwnerId::parse_cli(s).map(|_| s).map_err(|m| CliError::Invalid(FieldError::new("owner-id", m)))?)
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

/// A list: the API's JSON with `--json` (the pages' members joined into one answer when
/// `--all` read several), else `rows` under `headers`. When a page was left unread, a note on
/// stderr (where scripts reading stdout won't see it) says how to read the rest.
fn show_list<T>(list: &Listed<T>, key: &str, headers: &[&str], rows: &[Vec<String>], json: bool) -> anyhow::Result<()> {
    if json {
        return emit(&format!("{}\n", pretty(&joined(&list.pages, key))));
    }
    if rows.is_empty() {
        eprintln!("no {key}");
        return Ok(());
    }
    emit(&render(headers, rows))?;
    if list.more {
        eprintln!("(more {key} follow: --all lists every page)");
    }
    Ok(())
}

/// The answer of one page, or, for several, the first with the `key` members of all joined
/// and the last page's `next-cursor`.
fn joined(pages: &[Value], key: &str) -> Value {
    let mut pages = pages.iter();
    let Some(first) = pages.next() else { return Value::Null };
    let mut answer = first.clone();
    for page in pages {
        if let (Some(all), Some(more)) = (answer.get_mut(key).and_then(Value::as_array_mut), page[key].as_array()) {
            all.extend(more.iter().cloned());
        }
        answer["next-cursor"] = page["next-cursor"].clone();
    }
    answer
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
