//! Plain text output: aligned tables, `key  value` detail views of JSON objects, and
//! printing that treats a closed pipe (`dfe jobs | head -1`) as the end rather than a crash.

use std::io::Write;

use serde_json::Value;

use crate::events::scalar_text;

/// Writes `text` to standard output. A reader that went away ends the output quietly.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("writing to standard output"))
        }
        _ => Ok(()),
    }
}

/// [`emit`] with a newline.
pub fn emit_line(line: &str) -> anyhow::Result<()> {
    emit(&format!("{line}\n"))
}

/// Lays out `rows` under `headers`, columns separated by two spaces, the last one unpadded.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let pad = w.saturating_sub(cell.chars().count());
            line.extend(std::iter::repeat_n(' ', pad));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON value, pretty-printed (`--json`).
pub fn pretty(v: &Value) -> String {
    // Serializing a `Value` cannot fail: its keys are strings.
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// A table cell of an optional text: `-` when absent.
pub fn or_dash(text: Option<&str>) -> String {
    text.filter(|t| !t.is_empty()).unwrap_or("-").to_owned()
}

/// A table cell of a time: to the millisecond, in UTC, as `dfe events` shows them.
pub fn time_cell(at: time::OffsetDateTime) -> String {
    crate::events::utc_millis(at)
}

/// A detail view of one object: its members in `first` order, then the others sorted;
/// nested objects are flattened to `parent.child` keys.
pub fn detail(item: &Value, first: &[&str]) -> String {
    let mut pairs = Vec::new();
    flatten(item, "", &mut pairs);
    pairs.sort_by_key(|(k, _)| {
        let top = k.split('.').next().unwrap_or(k);
        (first.iter().position(|f| *f == top).unwrap_or(first.len()), k.clone())
    });
    let rows: Vec<Vec<String>> = pairs.into_iter().map(|(k, v)| vec![k, v]).collect();
    let width = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    rows.iter().map(|r| format!("{:<width$}  {}\n", r[0], r[1]).trim_end().to_owned() + "\n").collect()
}

fn flatten(v: &Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            // As in event summaries: a secret never reaches the screen by accident.
            for (k, child) in map.iter().filter(|(k, _)| !crate::events::looks_secret(k)) {
                let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(child, &key, out);
            }
        }
        // A nested null, empty string or empty object says nothing; leave the row out.
        v if prefix.contains('.') && (crate::events::is_empty(v) || v == &Value::Object(Default::default())) => {}
        // A top-level empty object (a failed job's `result`) reads as nothing, like null.
        Value::Object(_) if !prefix.is_empty() => out.push((prefix.to_owned(), "-".to_owned())),
        other => out.push((if prefix.is_empty() { "value".to_owned() } else { prefix.to_owned() }, scalar_text(other))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn columns_are_aligned_and_lines_not_padded_at_the_end() {
        let rows = vec![
            vec!["j-1".to_owned(), "provision".to_owned(), "succeeded".to_owned()],
            vec!["job-long-id".to_owned(), "export".to_owned(), "-".to_owned()],
        ];
        assert_eq!(
            render(&["JOB-ID", "TYPE", "STATE"], &rows),
            "JOB-ID       TYPE       STATE\n\
             j-1          provision  succeeded\n\
             job-long-id  export     -\n"
        );
    }

    #[test]
    fn cells_show_absent_values_as_a_dash_and_times_in_utc_milliseconds() {
        assert_eq!(or_dash(Some("local")), "local");
        assert_eq!((or_dash(None), or_dash(Some(""))), ("-".to_owned(), "-".to_owned()));
        let at = time::OffsetDateTime::parse(
            "2026-11-26T19:38:31.973595+01:00",
            &time::format_description::well_known::Rfc3339,
        )
        .expect("a time");
        assert_eq!(time_cell(at), "2026-11-26T18:38:31.973Z");
    }

    #[test]
    fn details_flatten_nested_objects() {
        let job = json!({"state": "failed", "job-id": "j", "error": {"code": "c", "message": "m"}, "result": null,
                         "request": {"db-password": "hunter2"}});
        assert_eq!(
            detail(&job, &["job-id", "state"]),
            "job-id         j\nstate          failed\nerror.code     c\nerror.message  m\nresult         -\n"
        );
        let failed = json!({"job-id": "j", "result": {}});
        assert_eq!(detail(&failed, &["job-id"]), "job-id  j\nresult  -\n");
    }
}
