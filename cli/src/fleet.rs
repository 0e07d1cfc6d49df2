//! `dfe hosts [cordon|uncordon <host-id>]`: the Docker hosts and database servers as the
//! API shows them (state, what is placed on each against its limits), and cordoning.

use serde_json::Value;

use crate::api::ApiClient;
use crate::args::{HostsArgs, HostsCommand};
use crate::error::CliError;
use crate::inspect::human_size;
use crate::output::{detail, emit, pretty, render};
use crate::settings::Settings;
use dfe_shared::ids::{FieldError, Tag};

const HOST_COLUMNS: &[&str] = &["HOST-ID", "CLUSTER-ID", "STATE", "INSTANCES", "MEMORY", "LAST-SEEN-AT"];
const SERVER_COLUMNS: &[&str] = &["SERVER-ID", "ENGINE", "STATE", "DATABASES"];

/// A cell of a JSON member: text as is, numbers and booleans as written, `-` when absent.
fn cell(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(Value::String(_)) => "-".to_owned(),
        Some(other) => other.to_string(),
    }
}

/// `used/limit`, or `used` when there is no limit.
fn against(used: String, limit: String) -> String {
    if limit == "-" {
        used
    } else {
        format!("{used}/{limit}")
    }
}

fn bytes(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_u64).map_or_else(|| "-".to_owned(), human_size)
}

/// A row of the host table.
pub fn host_row(h: &Value) -> Vec<String> {
    vec![
        cell(h, "host-id"),
        cell(h, "cluster-id"),
        cell(h, "state"),
        against(cell(h, "instances"), cell(h, "max-instances")),
        against(bytes(h, "memory-reserved"), bytes(h, "memory-budget")),
        cell(h, "last-seen-at"),
    ]
}

/// A row of the database server table.
pub fn server_row(s: &Value) -> Vec<String> {
    vec![
        cell(s, "server-id"),
        cell(s, "engine"),
        cell(s, "state"),
        against(cell(s, "databases"), cell(s, "max-databases")),
    ]
}

fn rows(list: &Value, key: &str, row: fn(&Value) -> Vec<String>) -> Vec<Vec<String>> {
    list.get(key).and_then(Value::as_array).map(|a| a.iter().map(row).collect()).unwrap_or_default()
}

/// `dfe hosts`.
pub async fn hosts(settings: &Settings, args: &HostsArgs) -> anyhow::Result<()> {
    let cordon = match &args.action {
        Some(HostsCommand::Cordon { host_id }) => Some((host_id, true)),
        Some(HostsCommand::Uncordon { host_id }) => Some((host_id, false)),
        None => None,
    };
    if let Some((id, _)) = cordon {
        Tag::parse(id).map_err(|m| CliError::Invalid(FieldError::new("host-id", m)))?;
    }
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    if let Some((id, cordoned)) = cordon {
        let host = api.cordon(id, cordoned).await?;
        return if args.json {
            emit(&format!("{}\n", pretty(&host)))
        } else {
            emit(&detail(&host, &["host-id", "cluster-id", "state", "cordoned", "reachability", "instances"]))
        };
    }
    let (hosts, servers) = api.fleet().await?;
    if args.json {
        let both =
            serde_json::json!({ "hosts": hosts.get("hosts"), "database-servers": servers.get("database-servers") });
        return emit(&format!("{}\n", pretty(&both)));
    }
    let mut out = render(HOST_COLUMNS, &rows(&hosts, "hosts", host_row));
    out.push('\n');
    out.push_str(&render(SERVER_COLUMNS, &rows(&servers, "database-servers", server_row)));
    emit(&out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rows_show_use_against_limits() {
        let h = json!({"host-id": "a", "cluster-id": "c", "state": "cordoned", "instances": 3, "max-instances": 10,
                       "memory-reserved": 1_073_741_824u64, "memory-budget": null, "last-seen-at": null});
        assert_eq!(host_row(&h), ["a", "c", "cordoned", "3/10", "1.0 GiB", "-"]);
        let s =
            json!({"server-id": "pg", "engine": "postgres", "state": "active", "databases": 2, "max-databases": null});
        assert_eq!(server_row(&s), ["pg", "postgres", "active", "2"]);
    }
}
