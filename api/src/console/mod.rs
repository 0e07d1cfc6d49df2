//! The operator console: `GET /console`, served from what is compiled into this binary.
//!
//! - `GET /console`: the page (sign-in, navigation, the empty frame of every view), public:
//!   it holds no data. The token a person signs in with stays in the browser's
//!   `sessionStorage` and goes out only as an `Authorization` header.
//! - `GET /console/assets/{file}`: its script and style sheet ([`assets`]).
//! - `GET /console/fragments/…`: the views as HTML, rendered here ([`views`]) from the answers
//!   of the REST handlers themselves, called as a REST request with the same token would call
//!   them ([`Rest`]): a fragment shows exactly what the token may read, and offers an action
//!   only when the token holds its scope. Errors are the REST API's problem+json.
//!
//! Every action the console takes (export, suspend, resume, deprovision, expiry, cancel,
//! cordon, download) is a request of the REST API sent by the page's script; nothing here
//! changes anything. Live updates come from `GET /api/v1/events/stream`.

pub mod assets;
pub mod views;

use axum::extract::{FromRequestParts, Path, RawQuery, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Request};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use dfe_shared::config::Scope;
use dfe_shared::records::{InstanceRecord, InstanceState, JobRecord, JobState};
use time::OffsetDateTime;

use crate::auth::{Read, Scoped};
use crate::extract::{cursor, ListParams};
use crate::problem::Problem;
use crate::routes::fleet::{DatabaseServerList, HostList};
use crate::routes::read::{InstanceList, JobList, SnapshotList};
use crate::routes::{fleet, read};
use crate::AppState;

/// Rows of a page of the instances or jobs views.
const PAGE_ROWS: usize = 50;
/// Rows the overview and a search read per REST call (the largest `limit`).
const SCAN_ROWS: usize = 1000;
/// Pages the overview and a search read at most per count, so that a huge fleet costs a
/// bounded time; beyond, a count is shown as "at least".
const SCAN_PAGES: usize = 10;

/// The console's routes besides `GET /console` (which [`crate::routes()`] documents): its
/// assets and fragments, parts of the page rather than an API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console/assets/{file}", get(assets::asset))
        .route("/console/fragments/overview", get(overview))
        .route("/console/fragments/instances", get(instances))
        .route("/console/fragments/instances/{instance-id}", get(instance))
        .route("/console/fragments/jobs", get(jobs))
        .route("/console/fragments/hosts", get(hosts))
}

/// The headers of every page and fragment: nothing is cached (fragments hold tenants' data),
/// only this origin's script and styles run, and no other site frames it.
fn guarded(body: String) -> Response {
    let mut response = Html(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; \
             base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        ),
    );
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

/// GET /console
#[utoipa::path(
    get,
    path = "/console",
    operation_id = "console",
    tag = "console",
    summary = "The operator console (HTML)",
    description = "The operator console: a page for a browser, compiled into dfe-api. It needs no token to load; \
        a person signs in on it with a bearer token, which it keeps in the browser's session storage and sends \
        as an Authorization header only. It shows what `GET /api/v1/whoami` and the token's reads allow, and \
        every action it takes is a request of this API. Its script, style sheet and views are served under \
        `/console/assets/` and `/console/fragments/` (parts of the page, not an API).",
    responses((status = 200, description = "The console page", content_type = "text/html", body = String)),
)]
pub async fn page() -> Response {
    guarded(views::page().into_string())
}

/// The REST handlers a fragment is made from, called as a REST request with the fragment's
/// token and the given query would call them: the same checks of scope, owners and
/// parameters, the same answers and the same refusals.
struct Rest {
    state: AppState,
    authorization: Option<HeaderValue>,
}

impl Rest {
    fn new(state: &AppState, headers: &HeaderMap) -> Rest {
        Rest { state: state.clone(), authorization: headers.get(header::AUTHORIZATION).cloned() }
    }

    /// The parts of the REST request: the token, and `query`.
    fn request(&self, query: &str) -> Result<Parts, Problem> {
        let mut request = Request::builder().uri(format!("/?{query}"));
        if let Some(a) = &self.authorization {
            request = request.header(header::AUTHORIZATION, a);
        }
        let request = request.body(()).map_err(|e| Problem::internal(&e))?;
        Ok(request.into_parts().0)
    }

    /// The token's client and the list query, as a REST read extracts them.
    async fn read(&self, query: &str) -> Result<(Scoped<Read>, ListParams), Problem> {
        let mut parts = self.request(query)?;
        let client = Scoped::<Read>::from_request_parts(&mut parts, &self.state).await?;
        let q = ListParams::from_request_parts(&mut parts, &self.state).await?;
        Ok((client, q))
    }

    async fn instances(&self, query: &str) -> Result<InstanceList, Problem> {
        let (client, q) = self.read(query).await?;
        Ok(read::instances(State(self.state.clone()), client, q).await?.0)
    }

    async fn instance(&self, id: &str) -> Result<InstanceRecord, Problem> {
        let (client, _) = self.read("").await?;
        Ok(read::instance(State(self.state.clone()), client, Path(id.to_owned())).await?.0)
    }

    async fn jobs(&self, query: &str) -> Result<JobList, Problem> {
        let (client, q) = self.read(query).await?;
        Ok(read::jobs(State(self.state.clone()), client, q).await?.0)
    }

    async fn snapshots(&self, query: &str) -> Result<SnapshotList, Problem> {
        let (client, q) = self.read(query).await?;
        Ok(read::snapshots(State(self.state.clone()), client, q).await?.0)
    }

    async fn hosts(&self) -> Result<HostList, Problem> {
        // The console shows the whole fleet on one page: the most a page holds.
        let (client, q) = self.read("limit=1000").await?;
        Ok(fleet::hosts(State(self.state.clone()), client, q).await?.0)
    }

    async fn database_servers(&self) -> Result<DatabaseServerList, Problem> {
        let (client, q) = self.read("limit=1000").await?;
        let Json(list) = fleet::database_servers(State(self.state.clone()), client, q).await?;
        Ok(list)
    }
}

/// A query string of the pairs whose value is not empty.
fn query(pairs: &[(&str, &str)]) -> String {
    let mut q = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        q.append_pair(k, v);
    }
    q.finish()
}

/// The fragment's own query parameters, each at most once.
fn params(raw: Option<&str>) -> Result<Vec<(String, String)>, Problem> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(Problem::malformed_field(dfe_shared::ids::FieldError::new(
                k.into_owned(),
                "is given more than once",
            )));
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
    params.iter().find(|(k, _)| k == name).map_or("", |(_, v)| v.as_str())
}

/// What the signed-in token may do beyond reading, for the views to offer.
#[derive(Debug, Clone, Copy, Default)]
pub struct Rights {
    /// Job submissions and cancel (`ops`).
    pub ops: bool,
    /// Cordons and expiries (`admin`).
    pub admin: bool,
}

impl Rights {
    fn of(client: &Scoped<Read>) -> Rights {
        Rights { ops: client.scopes.contains(&Scope::Ops), admin: client.scopes.contains(&Scope::Admin) }
    }
}

/// A count read from at most [`SCAN_PAGES`] pages: `more` when it stopped before the end.
#[derive(Debug, Clone, Default)]
pub struct Count {
    /// What was counted.
    pub n: usize,
    /// Whether there are more than `n`.
    pub more: bool,
}

/// GET /console/fragments/overview: instances by state, jobs by state over the last hour,
/// hosts and database servers.
async fn overview(
    State(state): State<AppState>,
    // Refuses a request without the read scope before anything is read.
    _client: Scoped<Read>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let rest = Rest::new(&state, &headers);
    let mut instances = Vec::new();
    for s in InstanceState::ALL.into_iter().filter(|s| *s != InstanceState::Deprovisioned) {
        let mut count = Count::default();
        let mut after = String::new();
        for page in 0..SCAN_PAGES {
            let list = rest.instances(&query(&[("state", s.as_str()), ("limit", "1000"), ("cursor", &after)])).await?;
            count.n += list.instances.len();
            match list.next_cursor {
                Some(c) if page + 1 == SCAN_PAGES => count.more = !c.is_empty(),
                Some(c) => after = c,
                None => break,
            }
        }
        instances.push((s.as_str(), count));
    }
    let since = OffsetDateTime::now_utc() - time::Duration::hours(1);
    let mut jobs: Vec<(JobState, Count)> = JobState::ALL.iter().map(|s| (*s, Count::default())).collect();
    let mut after = String::new();
    'pages: for page in 0..SCAN_PAGES {
        let list = rest.jobs(&query(&[("limit", "1000"), ("cursor", &after)])).await?;
        for job in &list.jobs {
            if job.created_at < since {
                break 'pages;
            }
            if let Some((_, c)) = jobs.iter_mut().find(|(s, _)| *s == job.state) {
                c.n += 1;
            }
        }
        match list.next_cursor {
            Some(_) if page + 1 == SCAN_PAGES => jobs.iter_mut().for_each(|(_, c)| c.more = true),
            Some(c) => after = c,
            None => break,
        }
    }
    let hosts = rest.hosts().await?.hosts;
    let servers = rest.database_servers().await?.database_servers;
    Ok(guarded(views::overview(&instances, &jobs, &hosts, &servers).into_string()))
}

/// The filters of the instances view.
#[derive(Debug, Clone, Default)]
pub struct InstanceFilters {
    /// Search: a part of the instance id or owner id.
    pub q: String,
    /// `state`.
    pub state: String,
    /// `owner-id`.
    pub owner_id: String,
    /// `host-id`.
    pub host_id: String,
    /// `include-removed`.
    pub include_removed: bool,
    /// Where the page starts.
    pub cursor: String,
}

impl InstanceFilters {
    /// The REST query of these filters (the search aside, which the REST list does not have).
    fn rest_query(&self, limit: usize, cursor: &str) -> String {
        let limit = limit.to_string();
        let removed = if self.include_removed { "true" } else { "" };
        query(&[
            ("state", &self.state),
            ("owner-id", &self.owner_id),
            ("host-id", &self.host_id),
            ("include-removed", removed),
            ("limit", &limit),
            ("cursor", cursor),
        ])
    }

    /// The console's query of these filters starting at `cursor` (for the paging links).
    pub fn console_query(&self, cursor: &str) -> String {
        let removed = if self.include_removed { "true" } else { "" };
        query(&[
            ("q", &self.q),
            ("state", &self.state),
            ("owner-id", &self.owner_id),
            ("host-id", &self.host_id),
            ("include-removed", removed),
            ("cursor", cursor),
        ])
    }

    fn matches(&self, i: &InstanceRecord) -> bool {
        let q = self.q.trim().to_lowercase();
        i.instance_id.contains(&q) || i.owner_id.as_text().to_lowercase().contains(&q)
    }
}

/// GET /console/fragments/instances: filters, a page of instances, the link to the next.
async fn instances(
    State(state): State<AppState>,
    client: Scoped<Read>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let rest = Rest::new(&state, &headers);
    let p = params(raw.as_deref())?;
    if let Some((unknown, _)) = p
        .iter()
        .find(|(k, _)| !["q", "state", "owner-id", "host-id", "include-removed", "cursor"].contains(&k.as_str()))
    {
        return Err(Problem::invalid_field(dfe_shared::ids::FieldError::new(
            unknown.clone(),
            "is not a filter of this view",
        )));
    }
    let filters = InstanceFilters {
        q: param(&p, "q").trim().to_owned(),
        state: param(&p, "state").to_owned(),
        owner_id: param(&p, "owner-id").trim().to_owned(),
        host_id: param(&p, "host-id").to_owned(),
        include_removed: matches!(param(&p, "include-removed"), "true" | "1" | "on"),
        cursor: param(&p, "cursor").to_owned(),
    };
    let (rows, next) = if filters.q.is_empty() {
        let list = rest.instances(&filters.rest_query(PAGE_ROWS, &filters.cursor)).await?;
        (list.instances, list.next_cursor)
    } else {
        search(&rest, &filters).await?
    };
    let hosts = rest.hosts().await?.hosts;
    let host_ids: Vec<String> = hosts.into_iter().map(|h| h.host_id).collect();
    Ok(guarded(views::instances(&filters, &rows, next.as_deref(), &host_ids, Rights::of(&client)).into_string()))
}

/// The instances matching a search, read through the REST list page by page from the
/// filters' cursor: up to [`PAGE_ROWS`] matches within [`SCAN_PAGES`] pages, and the cursor
/// where the next search page goes on (the key the registry orders instances by, as the
/// REST list's own cursors are).
async fn search(rest: &Rest, filters: &InstanceFilters) -> Result<(Vec<InstanceRecord>, Option<String>), Problem> {
    let mut found = Vec::new();
    let mut after = filters.cursor.clone();
    for _ in 0..SCAN_PAGES {
        let list = rest.instances(&filters.rest_query(SCAN_ROWS, &after)).await?;
        for i in list.instances {
            if filters.matches(&i) {
                found.push(i);
                if found.len() == PAGE_ROWS {
                    let last = found.last().map(|i: &InstanceRecord| {
                        cursor::encode(&dfe_registry::After { created_at: i.created_at, id: i.instance_id.clone() })
                    });
                    return Ok((found, last));
                }
            }
        }
        match list.next_cursor {
            Some(c) => after = c,
            None => return Ok((found, None)),
        }
    }
    Ok((found, Some(after)))
}

/// GET /console/fragments/instances/{instance-id}: an instance, its parts, jobs, snapshots
/// and the actions the token may take on it.
async fn instance(
    State(state): State<AppState>,
    client: Scoped<Read>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let rest = Rest::new(&state, &headers);
    let record = rest.instance(&id).await?;
    let jobs = rest.jobs(&query(&[("instance-id", &record.instance_id), ("limit", "20")])).await?;
    let snapshots = rest.snapshots(&query(&[("instance-id", &record.instance_id), ("limit", "20")])).await?;
    Ok(guarded(views::instance(&record, &jobs.jobs, &snapshots.snapshots, Rights::of(&client)).into_string()))
}

/// The filters of the jobs view.
#[derive(Debug, Clone, Default)]
pub struct JobFilters {
    /// `state`.
    pub state: String,
    /// `type`.
    pub kind: String,
    /// `instance-id`.
    pub instance_id: String,
    /// Where the page starts.
    pub cursor: String,
}

impl JobFilters {
    /// The console's query of these filters starting at `cursor`.
    pub fn console_query(&self, cursor: &str) -> String {
        query(&[("state", &self.state), ("type", &self.kind), ("instance-id", &self.instance_id), ("cursor", cursor)])
    }
}

/// GET /console/fragments/jobs: filters, a page of jobs, the link to the next.
async fn jobs(
    State(state): State<AppState>,
    client: Scoped<Read>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, Problem> {
    let rest = Rest::new(&state, &headers);
    let p = params(raw.as_deref())?;
    let filters = JobFilters {
        state: param(&p, "state").to_owned(),
        kind: param(&p, "type").to_owned(),
        instance_id: param(&p, "instance-id").trim().to_owned(),
        cursor: param(&p, "cursor").to_owned(),
    };
    let limit = PAGE_ROWS.to_string();
    // Unknown parameters go on to the REST list, which refuses them by name.
    let mut rest_query: Vec<(&str, &str)> = p
        .iter()
        .filter(|(k, _)| !["state", "type", "instance-id", "cursor"].contains(&k.as_str()))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    rest_query.extend([
        ("state", filters.state.as_str()),
        ("type", filters.kind.as_str()),
        ("instance-id", filters.instance_id.as_str()),
        ("cursor", filters.cursor.as_str()),
        ("limit", limit.as_str()),
    ]);
    let list = rest.jobs(&query(&rest_query)).await?;
    Ok(guarded(views::jobs(&filters, &list.jobs, list.next_cursor.as_deref(), Rights::of(&client)).into_string()))
}

/// GET /console/fragments/hosts: Docker hosts and database servers.
async fn hosts(State(state): State<AppState>, client: Scoped<Read>, headers: HeaderMap) -> Result<Response, Problem> {
    let rest = Rest::new(&state, &headers);
    let hosts = rest.hosts().await?.hosts;
    let servers = rest.database_servers().await?.database_servers;
    Ok(guarded(views::hosts(&hosts, &servers, Rights::of(&client)).into_string()))
}

/// A job's duration: from its start (or recording) to its end, or to now while it runs.
pub fn duration(job: &JobRecord) -> Option<time::Duration> {
    let start = job.started_at?;
    Some(job.finished_at.unwrap_or_else(OffsetDateTime::now_utc) - start)
}
