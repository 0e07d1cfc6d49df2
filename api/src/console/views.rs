//! The console's HTML: the page, and one fragment per view, rendered with maud (which
//! escapes every value it splices in). Times are written in UTC inside `<time datetime=…>`;
//! the page's script shows them in the browser's time zone, with the exact value on hover.
//!
//! States are matched by name, not by variant, so that a state added to the records (say,
//! `suspended`) shows here without a change.

use maud::{html, Markup, DOCTYPE};
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use dfe_shared::job::JobKind;
use dfe_shared::records::{
    DatabaseServerRecord, HostRecord, InstanceRecord, InstanceState, JobRecord, JobState, SnapshotRecord,
};

use super::{assets, duration, Count, InstanceFilters, JobFilters, Rights};

/// The page: sign-in, navigation, the frame the views are shown in, and the confirmation
/// dialog. It holds no data.
pub fn page() -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { "DFE console" }
                link rel="icon" type="image/svg+xml" href=(assets::url("icon.svg"));
                link rel="stylesheet" href=(assets::url("console.css"));
                script src=(assets::url("console.js")) defer {}
            }
            body {
                a.skip href="#main" data-skip { "Skip to content" }
                header.top {
                    a.brand href="#/" { "DFE console" }
                    nav #nav aria-label="Main" hidden {
                        ul {
                            li { a href="#/" data-nav="overview" { "Overview" } }
                            li { a href="#/instances" data-nav="instances" { "Instances" } }
                            li { a href="#/jobs" data-nav="jobs" { "Jobs" } }
                            li { a href="#/hosts" data-nav="hosts" { "Hosts" } }
                            li { a href="#/events" data-nav="events" { "Events" } }
                        }
                    }
                    div #session hidden {
                        span #live .live role="status" title="Live updates from /api/v1/events/stream" { "connecting…" }
                        span #who {}
                        button #sign-out type="button" { "Sign out" }
                    }
                }
                main #main tabindex="-1" {
                    section #signin .signin hidden aria-labelledby="signin-title" {
                        h1 #signin-title { "Sign in" }
                        p {
                            "Paste a bearer token of this API. It is kept in this browser tab's session only and sent \
                             as an Authorization header; the console offers what the token may do, nothing more."
                        }
                        form #signin-form autocomplete="off" {
                            label for="token" { "Bearer token" }
                            input #token type="password" name="token" required autocomplete="off" spellcheck="false";
                            button type="submit" { "Sign in" }
                        }
                        p #signin-error .error role="alert" {}
                    }
                    div #view {}
                }
                div #toasts .toasts aria-live="polite" {}
                dialog #confirm aria-labelledby="confirm-title" aria-describedby="confirm-text" {
                    form #confirm-form {
                        h2 #confirm-title {}
                        p #confirm-text {}
                        label #confirm-label for="confirm-input" {}
                        input #confirm-input autocomplete="off" spellcheck="false";
                        div.buttons {
                            button #confirm-cancel type="button" { "Cancel" }
                            button #confirm-ok .danger type="submit" disabled {}
                        }
                    }
                }
                noscript { p.error { "The console needs JavaScript (its own script, served by dfe-api)." } }
            }
        }
    }
}

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// A point in time: UTC here, the browser's zone once the script has run, exact on hover.
fn when(t: OffsetDateTime) -> Markup {
    let exact = rfc3339(t);
    html! { time datetime=(exact) title=(exact) { (exact.replace('T', " ")) } }
}

/// How long ago, exact on hover.
fn age(t: OffsetDateTime) -> Markup {
    let exact = rfc3339(t);
    html! { time datetime=(exact) title=(exact) data-age { (human_duration(OffsetDateTime::now_utc() - t)) } }
}

fn maybe_when(t: Option<OffsetDateTime>) -> Markup {
    match t {
        Some(t) => when(t),
        None => html! { span.muted { "—" } },
    }
}

/// `3 s`, `4 min`, `2 h`, `5 d`.
pub fn human_duration(d: time::Duration) -> String {
    let s = d.whole_seconds().max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h", s / 3600),
        _ => format!("{} d", s / 86_400),
    }
}

/// Milliseconds as a person reads them.
fn millis(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else if ms >= 1000.0 {
        format!("{:.2} s", ms / 1000.0)
    } else {
        format!("{ms:.0} ms")
    }
}

/// Bytes in binary units.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

fn badge(state: &str) -> Markup {
    html! { span class={ "badge s-" (state) } { (state) } }
}

/// A capacity bar with its numbers beside it; without a limit, the number alone.
fn capacity(label: &str, used: i64, max: Option<i64>, show: fn(i64) -> String) -> Markup {
    html! {
        @match max.filter(|m| *m > 0) {
            Some(max) => {
                span.capacity {
                    meter min="0" max=(max) value=(used.min(max)) low=(max * 6 / 10) high=(max * 85 / 100) optimum="0"
                        aria-label=(label) title={ (label) ": " (show(used)) " of " (show(max)) } {}
                    span { (show(used)) " / " (show(max)) }
                }
            }
            None => { span.capacity { span { (show(used)) } span.muted { " (no limit)" } } }
        }
    }
}

fn count(n: i64) -> String {
    n.to_string()
}

fn shown(c: &Count) -> String {
    if c.more {
        format!("{}+", c.n)
    } else {
        c.n.to_string()
    }
}

/// A link to an instance's `resource-uri`, when it is an http(s) URL (nothing else is a link).
fn resource_link(uri: Option<&str>) -> Markup {
    match uri {
        Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
            html! { a.uri href=(u) target="_blank" rel="noopener noreferrer" { (u) } }
        }
        Some(u) => html! { code { (u) } },
        None => html! { span.muted { "—" } },
    }
}

fn instance_link(id: &str) -> Markup {
    html! { a.iid href={ "#/instances/" (id) } { (id) } }
}

/// The fragment of the overview.
pub fn overview(
    instances: &[(&str, Count)],
    jobs: &[(JobState, Count)],
    hosts: &[HostRecord],
    servers: &[DatabaseServerRecord],
) -> Markup {
    let no_instances = instances.iter().all(|(_, c)| c.n == 0);
    let no_jobs = jobs.iter().all(|(_, c)| c.n == 0);
    html! {
        div.fragment data-live="any" data-title="Overview" {
            h1 { "Fleet overview" }
            section aria-labelledby="ov-instances" {
                h2 #ov-instances { "Instances by state" }
                ul.cards {
                    @for (state, c) in instances {
                        li { a.card href={ "#/instances?state=" (state) } {
                            span.count { (shown(c)) } (badge(state))
                        } }
                    }
                }
                @if no_instances {
                    p.empty { "No instances yet. Provision one through the REST API or with " code { "dfe provision" } "." }
                }
            }
            section aria-labelledby="ov-jobs" {
                h2 #ov-jobs { "Jobs in the last hour" }
                ul.cards {
                    @for (state, c) in jobs {
                        li { a.card href={ "#/jobs?state=" (state) } {
                            span.count { (shown(c)) } (badge(state.as_str()))
                        } }
                    }
                }
                @if no_jobs { p.empty { "No job was submitted in the last hour." } }
            }
            (hosts_table(hosts, Rights::default()))
            (servers_table(servers))
        }
    }
}

fn hosts_table(hosts: &[HostRecord], rights: Rights) -> Markup {
    html! {
        section aria-labelledby="hosts-title" {
            h2 #hosts-title { "Docker hosts" }
            @if hosts.is_empty() {
                p.empty { "No Docker host is configured ([clusters] of the configuration)." }
            } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "Host" } th scope="col" { "Cluster" } th scope="col" { "State" }
                        th scope="col" { "Instances" } th scope="col" { "Memory" } th scope="col" { "Last seen" }
                        th scope="col" { "Labels" }
                        @if rights.admin { th scope="col" { span.sr-only { "Actions" } } }
                    } }
                    tbody {
                        @for h in hosts {
                            tr data-host=(h.host_id) {
                                th scope="row" { (h.host_id) br; small.muted { code { (h.docker_host) } } }
                                td { (h.cluster_id) }
                                td { (badge(&h.state))
                                    @if let Some(e) = &h.last_error { br; small.error { (e) } } }
                                td { (capacity("instances", h.instances, h.max_instances.map(i64::from), count)) }
                                td { (capacity("memory", h.memory_reserved, h.memory_budget, bytes)) }
                                td { (maybe_when(h.last_seen_at)) }
                                td { @for (k, v) in &h.labels { span.label { (k) "=" (v) } " " } }
                                @if rights.admin {
                                    td.actions {
                                        @if h.cordoned {
                                            button type="button" data-action="uncordon" data-host=(h.host_id) { "Uncordon" }
                                        } @else {
                                            button type="button" data-action="cordon" data-host=(h.host_id) { "Cordon" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
        }
    }
}

fn servers_table(servers: &[DatabaseServerRecord]) -> Markup {
    html! {
        section aria-labelledby="servers-title" {
            h2 #servers-title { "Database servers" }
            @if servers.is_empty() {
                p.empty { "No database server is configured ([databases] of the configuration)." }
            } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "Server" } th scope="col" { "Engine" } th scope="col" { "State" }
                        th scope="col" { "Databases" } th scope="col" { "Last seen" }
                    } }
                    tbody {
                        @for s in servers {
                            tr {
                                th scope="row" { (s.server_id) }
                                td { (s.engine) }
                                td { (badge(&s.state)) @if let Some(e) = &s.last_error { br; small.error { (e) } } }
                                td { (capacity("databases", s.databases, s.max_databases.map(i64::from), count)) }
                                td { (maybe_when(s.last_seen_at)) }
                            }
                        }
                    }
                } }
            }
        }
    }
}

/// The fragment of the hosts view.
pub fn hosts(hosts: &[HostRecord], servers: &[DatabaseServerRecord], rights: Rights) -> Markup {
    html! {
        div.fragment data-live="hosts" data-title="Hosts" {
            h1 { "Hosts and database servers" }
            p.hint { "A cordoned host takes no new instances; the ones on it stay and are served as before." }
            (hosts_table(hosts, rights))
            (servers_table(servers))
        }
    }
}

/// The fragment of the instances view.
pub fn instances(
    f: &InstanceFilters,
    rows: &[InstanceRecord],
    next: Option<&str>,
    host_ids: &[String],
    _rights: Rights,
) -> Markup {
    let filtered = !f.q.is_empty() || !f.state.is_empty() || !f.owner_id.is_empty() || !f.host_id.is_empty();
    html! {
        div.fragment data-live="instances" data-title="Instances" {
            h1 { "Instances" }
            form.filters data-filter="instances" role="search" aria-label="Filter instances" {
                label { "Search" input type="search" name="q" value=(f.q) placeholder="instance or owner id"; }
                label { "State"
                    select name="state" {
                        option value="" selected[f.state.is_empty()] { "any but removed" }
                        @for s in InstanceState::ALL {
                            option value=(s.as_str()) selected[f.state == s.as_str()] { (s.as_str()) }
                        }
                    }
                }
                label { "Owner" input type="text" name="owner-id" value=(f.owner_id) placeholder="owner id" size="10"; }
                label { "Host"
                    select name="host-id" {
                        option value="" selected[f.host_id.is_empty()] { "any" }
                        @for h in host_ids { option value=(h) selected[&f.host_id == h] { (h) } }
                    }
                }
                label.check { input type="checkbox" name="include-removed" value="true" checked[f.include_removed]; "Include removed" }
                button type="submit" { "Apply" }
                a.button.secondary href="#/instances" { "Reset" }
            }
            @if !f.q.is_empty() {
                p.hint { "Search reads the instances in pages of 1000 and shows up to 50 matches at a time." }
            }
            @if rows.is_empty() {
                p.empty {
                    @if filtered { "No instance matches these filters." } @else { "No instances yet." }
                }
            } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "Instance" } th scope="col" { "State" } th scope="col" { "Owner" }
                        th scope="col" { "Host" } th scope="col" { "Age" } th scope="col" { "Resource URI" }
                    } }
                    tbody {
                        @for i in rows {
                            tr data-instance=(i.instance_id) {
                                th scope="row" { (instance_link(&i.instance_id)) }
                                td { (badge(i.state.as_str())) }
                                td { (i.owner_id.as_text()) }
                                td { (i.host_id.as_deref().unwrap_or("—")) }
                                td { (age(i.created_at)) }
                                td { (resource_link(i.resource_uri.as_deref())) }
                            }
                        }
                    }
                } }
            }
            nav.pager aria-label="Pages" {
                @if !f.cursor.is_empty() { a.button.secondary href={ "#/instances?" (f.console_query("")) } { "First page" } }
                @if let Some(next) = next { a.button href={ "#/instances?" (f.console_query(next)) } { "Next page" } }
            }
        }
    }
}

/// `expires-at` of an instance record, read from its serialized form so that the field shows
/// wherever the record carries it.
fn expires_at(record: &InstanceRecord) -> Option<OffsetDateTime> {
    let value = serde_json::to_value(record).ok()?;
    let text = value.get("expires-at")?.as_str()?.to_owned();
    OffsetDateTime::parse(&text, &Rfc3339).ok()
}

/// What the resources of an instance record say beside its details, shown apart.
const SHOWN_IN_DETAILS: &[&str] =
    &["cluster-id", "host", "host-id", "instance-id", "guest-location", "resource-uri", "database-server"];

/// Names of what was made, without what the details show and anything that could be a
/// secret.
fn parts(resources: &Value) -> Vec<(String, String)> {
    let Some(map) = resources.as_object() else { return Vec::new() };
    map.iter()
        .filter(|(k, _)| !SHOWN_IN_DETAILS.contains(&k.as_str()))
        .filter(|(k, _)| {
            let k = k.to_lowercase();
            !(k.contains("pass") || k.contains("secret") || k.contains("token"))
        })
        .filter_map(|(k, v)| match v {
            Value::String(s) => Some((k.clone(), s.clone())),
            Value::Number(n) => Some((k.clone(), n.to_string())),
            Value::Bool(b) => Some((k.clone(), b.to_string())),
            _ => None,
        })
        .collect()
}

/// The step timings of a job's last run (`result.timings`), as `(step, ms)`.
fn timings(job: &JobRecord) -> Vec<(String, f64)> {
    let Some(t) = job.result.as_ref().and_then(|r| r.get("timings")).and_then(Value::as_object) else {
        return Vec::new();
    };
    t.iter().filter_map(|(k, v)| Some((k.strip_suffix("-ms").unwrap_or(k).to_owned(), v.as_f64()?))).collect()
}

fn job_state(job: &JobRecord) -> Markup {
    html! {
        (badge(job.state.as_str()))
        @if let Some(e) = &job.error {
            br; small.error { code { (e.code) } ": " (e.message) }
        }
    }
}

/// The fragment of one instance.
pub fn instance(i: &InstanceRecord, jobs: &[JobRecord], snapshots: &[SnapshotRecord], rights: Rights) -> Markup {
    let state = i.state.as_str();
    let id = &i.instance_id;
    let can_export = rights.ops && matches!(state, "provisioned" | "suspended");
    let can_suspend = rights.ops && state == "provisioned";
    let can_resume = rights.ops && state == "suspended";
    let can_deprovision = rights.ops && matches!(state, "provisioned" | "suspended" | "failed");
    let can_expire = rights.admin && state != "deprovisioned";
    let expires = expires_at(i);
    let parts = parts(&i.resources);
    html! {
        div.fragment data-live={ "instance:" (id) } data-title=(id) {
            p.crumbs { a href="#/instances" { "Instances" } " / " }
            h1 { (id) " " (badge(state)) }
            @if can_export || can_suspend || can_resume || can_deprovision {
                div.actions role="group" aria-label="Actions" {
                    @if can_export { button type="button" data-action="export" data-instance=(id) { "Export" } }
                    @if can_suspend { button type="button" data-action="suspend" data-instance=(id) { "Suspend" } }
                    @if can_resume { button type="button" data-action="resume" data-instance=(id) { "Resume" } }
                    @if can_deprovision {
                        button.danger type="button" data-action="deprovision" data-instance=(id) { "Deprovision…" }
                    }
                }
            }
            div.columns {
                section aria-labelledby="i-details" {
                    h2 #i-details { "Details" }
                    dl.details {
                        dt { "Owner" } dd { (i.owner_id.as_text())
                            @if let Some(t) = &i.owner_type { span.muted { " (type " (t.as_text()) ")" } } }
                        dt { "Guest location" } dd { (i.guest_location) }
                        dt { "Cluster" } dd { (i.cluster_id.as_deref().unwrap_or("—")) }
                        dt { "Host" } dd { @match &i.host_id {
                            Some(h) => { a href="#/hosts" { (h) } },
                            None => { "—" },
                        } }
                        dt { "Database server" } dd { (i.database_server.as_deref().unwrap_or("—")) }
                        dt { "Offerings" } dd {
                            @if i.offerings.is_empty() { span.muted { "—" } }
                            @for (k, v) in &i.offerings { span.label { (k) "=" (v) } " " }
                        }
                        dt { "Resource URI" } dd { (resource_link(i.resource_uri.as_deref())) }
                        dt { "Created" } dd { (when(i.created_at)) }
                        dt { "Provisioned" } dd { (maybe_when(i.provisioned_at)) }
                        @if i.deprovisioned_at.is_some() { dt { "Deprovisioned" } dd { (maybe_when(i.deprovisioned_at)) } }
                        dt { "Updated" } dd { (when(i.updated_at)) }
                        dt { "Expires" } dd { @match expires { Some(t) => { (when(t)) }, None => { span.muted { "never" } } } }
                    }
                }
                section aria-labelledby="i-parts" {
                    h2 #i-parts { "Parts" }
                    @if parts.is_empty() {
                        p.empty { "Nothing recorded as made." }
                    } @else {
                        dl.details { @for (k, v) in &parts { dt { (k) } dd { code { (v) } } } }
                    }
                }
            }
            @if can_expire {
                section aria-labelledby="i-expiry" {
                    h2 #i-expiry { "Expiry" }
                    form.expiry data-expiry=(id) data-current=[expires.map(rfc3339)] {
                        label { "Expires at (your time zone)" input type="datetime-local" name="expires-at" required; }
                        button type="submit" { "Set expiry" }
                        @if expires.is_some() {
                            button.secondary type="button" data-action="clear-expiry" data-instance=(id) { "Clear expiry" }
                        }
                    }
                    p.hint { "An instance past its expiry is deprovisioned (or suspended) at the schedule's next run." }
                }
            }
            section aria-labelledby="i-jobs" {
                h2 #i-jobs { "Jobs" }
                @if jobs.is_empty() { p.empty { "No jobs." } } @else {
                    div.table-wrap { table {
                        thead { tr {
                            th scope="col" { "Type" } th scope="col" { "State" } th scope="col" { "Requested by" }
                            th scope="col" { "Created" } th scope="col" { "Took" } th scope="col" { "Steps" }
                        } }
                        tbody {
                            @for j in jobs {
                                tr data-job=(j.job_id) {
                                    th scope="row" { (j.kind.as_str()) br; small.muted { code title=(j.job_id) { (short(&j.job_id)) } } }
                                    td { (job_state(j)) }
                                    td { (j.requested_by) }
                                    td { (when(j.created_at)) }
                                    td.nowrap { @match duration(j) { Some(d) => { (millis(d.as_seconds_f64() * 1000.0)) }, None => { span.muted { "—" } } } }
                                    td { ul.steps { @for (step, ms) in timings(j) { li { (step) " " strong { (millis(ms)) } } } } }
                                }
                            }
                        }
                    } }
                    p { a href={ "#/jobs?instance-id=" (id) } { "All jobs of " (id) } }
                }
            }
            section aria-labelledby="i-snapshots" {
                h2 #i-snapshots { "Snapshots" }
                @if snapshots.is_empty() { p.empty { "No snapshots. An export makes one." } } @else {
                    div.table-wrap { table {
                        thead { tr {
                            th scope="col" { "Snapshot" } th scope="col" { "Created" } th scope="col" { "Size" }
                            th scope="col" { "Destination" } th scope="col" { span.sr-only { "Download" } }
                        } }
                        tbody {
                            @for s in snapshots {
                                tr data-snapshot=(s.snapshot_id) {
                                    th scope="row" { code { (s.snapshot_id) } }
                                    td { (when(s.created_at)) }
                                    td { (bytes(s.size)) }
                                    td { (s.destination) }
                                    td.actions { button type="button" data-action="download" data-snapshot=(s.snapshot_id)
                                        data-file=(dfe_shared::snapshot_store::file_name(&s.snapshot_id)) { "Download" } }
                                }
                            }
                        }
                    } }
                }
            }
        }
    }
}

/// The first 8 characters of an id (the whole on hover).
fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// The fragment of the jobs view.
pub fn jobs(f: &JobFilters, rows: &[JobRecord], next: Option<&str>, rights: Rights) -> Markup {
    let filtered = !f.state.is_empty() || !f.kind.is_empty() || !f.instance_id.is_empty();
    html! {
        div.fragment data-live="jobs" data-title="Jobs" {
            h1 { "Jobs" }
            form.filters data-filter="jobs" role="search" aria-label="Filter jobs" {
                label { "State"
                    select name="state" {
                        option value="" selected[f.state.is_empty()] { "any" }
                        @for s in JobState::ALL { option value=(s.as_str()) selected[f.state == s.as_str()] { (s.as_str()) } }
                    }
                }
                label { "Type"
                    select name="type" {
                        option value="" selected[f.kind.is_empty()] { "any" }
                        @for k in JobKind::ALL { option value=(k.as_str()) selected[f.kind == k.as_str()] { (k.as_str()) } }
                    }
                }
                label { "Instance" input type="text" name="instance-id" value=(f.instance_id) placeholder="instance id"; }
                button type="submit" { "Apply" }
                a.button.secondary href="#/jobs" { "Reset" }
            }
            @if rows.is_empty() {
                p.empty { @if filtered { "No job matches these filters." } @else { "No jobs yet." } }
            } @else {
                div.table-wrap { table {
                    thead { tr {
                        th scope="col" { "Job" } th scope="col" { "Type" } th scope="col" { "Instance" }
                        th scope="col" { "State" } th scope="col" { "Attempts" } th scope="col" { "Requested by" }
                        th scope="col" { "Created" } th scope="col" { "Took" }
                        @if rights.ops { th scope="col" { span.sr-only { "Actions" } } }
                    } }
                    tbody {
                        @for j in rows {
                            tr data-job=(j.job_id) data-state=(j.state.as_str()) {
                                th scope="row" { code title=(j.job_id) { (short(&j.job_id)) } }
                                td { (j.kind.as_str()) }
                                td { (instance_link(&j.instance_id)) }
                                td { (job_state(j)) }
                                td { (j.attempts) }
                                td { (j.requested_by) }
                                td { (when(j.created_at)) }
                                td.nowrap { @match duration(j) { Some(d) => { (millis(d.as_seconds_f64() * 1000.0)) }, None => { span.muted { "—" } } } }
                                @if rights.ops {
                                    td.actions {
                                        @if matches!(j.state, JobState::Queued | JobState::Retrying) {
                                            button type="button" data-action="cancel" data-job=(j.job_id) { "Cancel" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                } }
            }
            nav.pager aria-label="Pages" {
                @if !f.cursor.is_empty() { a.button.secondary href={ "#/jobs?" (f.console_query("")) } { "First page" } }
                @if let Some(next) = next { a.button href={ "#/jobs?" (f.console_query(next)) } { "Next page" } }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_read_as_a_person_reads_them() {
        assert_eq!(human_duration(time::Duration::seconds(5)), "5 s");
        assert_eq!(human_duration(time::Duration::minutes(5)), "5 min");
        assert_eq!(human_duration(time::Duration::hours(5)), "5 h");
        assert_eq!(human_duration(time::Duration::days(5)), "5 d");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(64 * 1024 * 1024), "64.0 MiB");
        assert_eq!(millis(12.4), "12 ms");
        assert_eq!(millis(1234.0), "1.23 s");
    }

    #[test]
    fn only_http_resource_uris_are_links() {
        let link = resource_link(Some("http://127.0.0.1:1234/api/v2/system")).into_string();
        assert!(link.contains("href=\"http://127.0.0.1:1234/api/v2/system\""), "{link}");
        let other = resource_link(Some("javascript:alert(1)")).into_string();
        assert!(!other.contains("href"), "{other}");
    }

    #[test]
    fn parts_leave_out_what_could_be_a_secret() {
        let p = parts(&serde_json::json!({"container": "dfe-a", "db-password": "x", "token": "y", "port": 80}));
        assert_eq!(p, [("container".to_owned(), "dfe-a".to_owned()), ("port".to_owned(), "80".to_owned())]);
    }

    #[test]
    fn values_are_escaped() {
        let html = badge("<script>").into_string();
        assert!(!html.contains("<script>"), "{html}");
    }
}
