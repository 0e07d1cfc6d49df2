//! `dfe snapshots delete ID` and `dfe snapshots prune [--dry-run]`: removing snapshots
//! through the API, which removes each archive from its destination and then its row.

use std::process::ExitCode;

use dfe_shared::records::Pruned;

use crate::api::ApiClient;
use crate::args::{DeleteArgs, PruneArgs};
use crate::inspect::snapshot_id;
use crate::output::{emit, emit_line, pretty, render, time_cell};
use crate::settings::Settings;

/// Headers of the pruning table; [`pruned_row`] fills them.
const PRUNED_COLUMNS: &[&str] =
    &["SNAPSHOT-ID", "INSTANCE-ID", "SCHEDULE", "DESTINATION", "CREATED-AT", "WHY", "STATUS"];

/// A row of the pruning table.
pub fn pruned_row(p: &Pruned, dry_run: bool) -> Vec<String> {
    let status = match (&p.error, p.removed, dry_run) {
        (Some(e), ..) => format!("failed: {e}"),
        (None, true, _) => "removed".to_owned(),
        (None, false, true) => "would be removed".to_owned(),
        (None, false, false) => "kept".to_owned(),
    };
    vec![
        p.snapshot_id.clone(),
        p.instance_id.clone(),
        p.schedule.clone(),
        p.destination.clone(),
        time_cell(p.created_at),
        p.reason.clone(),
        status,
    ]
}

/// `dfe snapshots delete ID [--json]`.
pub async fn delete(settings: &Settings, args: &DeleteArgs) -> anyhow::Result<()> {
    let id = snapshot_id(&args.snapshot_id)?;
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    let deleted = api.delete_snapshot(id.as_str()).await?;
    if args.json {
        return emit(&format!("{}\n", pretty(&deleted.json)));
    }
    let r = &deleted.record;
    emit_line(&format!(
        "deleted snapshot {} of {} ({} in destination {})",
        r.snapshot_id, r.instance_id, r.key, r.destination
    ))
}

/// `dfe snapshots prune [--dry-run] [--json]`: exit 1 when a removal failed.
pub async fn prune(settings: &Settings, args: &PruneArgs) -> anyhow::Result<ExitCode> {
    let api = ApiClient::new(settings.api_url()?, settings.token()?)?;
    let report = api.prune(args.dry_run).await?;
    let failed = report.record.snapshots.iter().filter(|p| p.error.is_some()).count();
    if args.json {
        emit(&format!("{}\n", pretty(&report.json)))?;
    } else if report.record.snapshots.is_empty() {
        eprintln!("nothing to prune: every schedule's snapshots are within its retention");
    } else {
        let rows: Vec<_> = report.record.snapshots.iter().map(|p| pruned_row(p, args.dry_run)).collect();
        emit(&render(PRUNED_COLUMNS, &rows))?;
        let n = rows.len();
        if args.dry_run {
            eprintln!("{n} snapshot(s) would be removed (dry run: nothing was)");
        } else {
            eprintln!("{} snapshot(s) removed, {failed} failed (they stay)", n - failed);
        }
    }
    Ok(if failed > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pruned_row_says_what_happened() {
        let p: Pruned = serde_json::from_value(serde_json::json!({
            "snapshot-id": "s-1", "instance-id": "acme-1", "schedule": "nightly", "destination": "offsite",
            "key": "dfe/s-1.snapshot.tar.gz", "created-at": "2026-11-26T18:38:31.973Z",
            "reason": "beyond keep-last 2", "removed": false, "error": null,
        }))
        .expect("a pruned snapshot");
        assert_eq!(pruned_row(&p, true)[5..], ["beyond keep-last 2", "would be removed"]);
        let done = Pruned { removed: true, ..p.clone() };
        assert_eq!(pruned_row(&done, false)[6], "removed");
        let failed = Pruned { error: Some("destination offsite: refused".into()), ..p };
        assert_eq!(pruned_row(&failed, false)[6], "failed: destination offsite: refused");
    }
}
