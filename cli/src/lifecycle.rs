//! `dfe expire --dry-run` (what the expiry schedule will do, and when), `dfe expire <id>
//! --at WHEN` (an instance's expiry) and `dfe owner <id>` (its instances against its quota).

use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::{Duration, OffsetDateTime};

use crate::api::ApiClient;
use crate::args::{ExpireArgs, OwnerArgs};
use crate::error::CliError;
use crate::output::{detail, emit, pretty, render};
use crate::settings::Settings;
use dfe_shared::ids::{FieldError, InstanceId, OwnerId};

const STEP_COLUMNS: &[&str] = &["INSTANCE-ID", "OWNER-ID", "STATE", "STEP", "AT", "DUE"];

/// `--at`: RFC 3339, `+N[s|m|h|d]` from `now`, or `never` (None).
pub fn parse_when(s: &str, now: OffsetDateTime) -> Result<Option<OffsetDateTime>, FieldError> {
    if s == "never" {
        return Ok(None);
    }
    if let Some(rel) = s.strip_prefix('+') {
        let (n, unit) = rel.split_at(rel.find(|c: char| !c.is_ascii_digit()).unwrap_or(rel.len()));
        let n: i64 = n.parse().map_err(|_| FieldError::new("at", "+N needs a number, e.g. +3d"))?;
        let d = match unit {
            "s" => Duration::seconds(n),
            "m" => Duration::minutes(n),
            "h" => Duration::hours(n),
            "d" => Duration::days(n),
            _ => return Err(FieldError::new("at", "a unit of s, m, h or d must follow +N, e.g. +3d")),
        };
        return Ok(Some(now + d));
    }
    OffsetDateTime::parse(s, &Rfc3339)
        .map(Some)
        .map_err(|_| FieldError::new("at", "must be RFC 3339 (2027-01-31T12:00:00Z), +N[s|m|h|d], or `never`"))
}

/// The rows of the dry run: one per step still to come.
pub fn step_rows(preview: &Value) -> Vec<Vec<String>> {
    let text = |v: &Value, k: &str| match v.get(k) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    let mut rows = Vec::new();
    for e in preview.get("expiries").and_then(Value::as_array).into_iter().flatten() {
        let steps = e.get("steps").and_then(Value::as_array).cloned().unwrap_or_default();
        if steps.is_empty() {
            rows.push(vec![
                text(e, "instance-id"),
                text(e, "owner-id"),
                text(e, "state"),
                "none".into(),
                text(e, "expires-at"),
                "-".into(),
            ]);
        }
        for s in steps {
            let step = match s.get("step").and_then(Value::as_str) {
                Some("warning") => format!("warn ({} d before)", text(&s, "days")),
                _ => text(&s, "action"),
            };
            let due = if s.get("due").and_then(Value::as_bool) == Some(true) { "next run" } else { "-" };
            rows.push(vec![
                text(e, "instance-id"),
                text(e, "owner-id"),
                text(e, "state"),
                step,
                text(&s, "at"),
                due.into(),
            ]);
        }
    }
    rows
}

/// `dfe expire`.
pub async fn expire(settings: &Settings, args: &ExpireArgs) -> anyhow::Result<()> {
    if args.dry_run {
        let mut query = Vec::new();
        if let Some(owner) = &args.owner_id {
            OwnerId::parse_cli(owner).map_err(|m| CliError::Invalid(FieldError::new("owner-id", m)))?;
            query.push(("owner-id", owner.clone()));
        }
        let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
        let preview = api.lifecycle(&query).await?;
        if args.json {
            return emit(&format!("{}\n", pretty(&preview)));
        }
        let rows = step_rows(&preview);
        if rows.is_empty() {
            eprintln!("no instance has an expiry");
            return Ok(());
        }
        let holder = preview.get("lease-holder").and_then(Value::as_str).unwrap_or("no worker (none is running)");
        eprintln!(
            "the schedule runs every {} s on {holder}; on expiry: {}",
            preview.get("interval-secs").unwrap_or(&Value::Null),
            preview.get("on-expiry").and_then(Value::as_str).unwrap_or("?")
        );
        return emit(&render(STEP_COLUMNS, &rows));
    }
    let (Some(id), Some(at)) = (&args.instance_id, &args.at) else {
        return Err(CliError::Usage(
            "`dfe expire --dry-run` shows the schedule; `dfe expire <instance-id> --at WHEN` sets an expiry".into(),
        )
        .into());
    };
    let id = InstanceId::parse(id).map_err(|m| CliError::Invalid(FieldError::new("instance-id", m)))?;
    let when = parse_when(at, OffsetDateTime::now_utc()).map_err(CliError::Invalid)?;
    let when = when.map(|t| t.format(&Rfc3339)).transpose()?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    let instance = api.set_expiry(id.as_str(), when.as_deref()).await?;
    if args.json {
        emit(&format!("{}\n", pretty(&instance.json)))
    } else {
        emit(&detail(&instance.json, &["instance-id", "owner-id", "state", "expires-at"]))
    }
}

/// `dfe owner`.
pub async fn owner(settings: &Settings, args: &OwnerArgs) -> anyhow::Result<()> {
    OwnerId::parse_cli(&args.owner_id).map_err(|m| CliError::Invalid(FieldError::new("owner-id", m)))?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    let usage = api.owner(&args.owner_id).await?;
    if args.json {
        emit(&format!("{}\n", pretty(&usage)))
    } else {
        emit(&detail(&usage, &["owner-id", "used", "max-instances", "available", "instances"]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn when_is_rfc3339_relative_or_never() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("time");
        assert_eq!(parse_when("never", now).expect("ok"), None);
        assert_eq!(parse_when("+90s", now).expect("ok"), Some(now + Duration::seconds(90)));
        assert_eq!(parse_when("+3d", now).expect("ok"), Some(now + Duration::days(3)));
        assert_eq!(
            parse_when("2027-01-31T12:00:00Z", now).expect("ok").map(|t| t.unix_timestamp()),
            Some(1_801_396_800)
        );
        for bad in ["+3", "+d", "+3w", "tomorrow", ""] {
            assert_eq!(parse_when(bad, now).expect_err(bad).field, "at");
        }
    }

    #[test]
    fn the_dry_run_has_a_row_per_step() {
        let preview = json!({"expiries": [
            {"instance-id": "a-1", "owner-id": 7, "state": "provisioned", "expires-at": "2027-01-01T00:00:00Z",
             "steps": [{"step": "warning", "days": 3.0, "at": "2026-12-29T00:00:00Z", "due": true},
                       {"step": "expiry", "action": "deprovision", "at": "2027-01-01T00:00:00Z", "due": false}]},
            {"instance-id": "b-1", "owner-id": "x", "state": "suspended", "expires-at": "2026-01-01T00:00:00Z", "steps": []}
        ]});
        let rows = step_rows(&preview);
        assert_eq!(rows[0], ["a-1", "7", "provisioned", "warn (3.0 d before)", "2026-12-29T00:00:00Z", "next run"]);
        assert_eq!(rows[1][3..], ["deprovision", "2027-01-01T00:00:00Z", "-"]);
        assert_eq!(rows[2][3], "none");
    }
}
