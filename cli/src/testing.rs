//! Test support: a stand-in HTTP server on a free loopback port, answering canned responses,
//! and the JSON of the API's records (`dfe_shared::records`) to answer with.

use std::sync::{Arc, Mutex};

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One canned HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
}

impl Answer {
    /// A JSON answer.
    pub fn json(status: u16, body: &serde_json::Value) -> Self {
        Answer { status, content_type: "application/json", body: body.to_string() }
    }

    /// A problem+json answer.
    pub fn problem(status: u16, body: &serde_json::Value) -> Self {
        Answer { status, content_type: "application/problem+json", body: body.to_string() }
    }
}

/// The requests a stand-in server received: `METHOD /path?query body` each.
pub type Requests = Arc<Mutex<Vec<String>>>;

/// Serves `answers` in turn (then the last one forever), one per connection, and returns
/// the base URL.
pub async fn serve(answers: Vec<Answer>) -> String {
    serve_recording(answers).await.0
}

/// [`serve`], also returning the requests received.
pub async fn serve_recording(answers: Vec<Answer>) -> (String, Requests) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
    let addr = listener.local_addr().expect("bound address");
    let requests = Requests::default();
    let seen = requests.clone();
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            let request = read_request(&mut conn).await;
            if let Ok(mut seen) = seen.lock() {
                seen.push(request);
            }
            let a = &answers[next.min(answers.len() - 1)];
            next += 1;
            let head = format!(
                "HTTP/1.1 {} X\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                a.status,
                a.content_type,
                a.body.len()
            );
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(a.body.as_bytes()).await;
        }
    });
    (format!("http://{addr}"), requests)
}

/// Reads one request (its head, and a body of `content-length` bytes) as
/// `METHOD /path body`.
async fn read_request(conn: &mut tokio::net::TcpStream) -> String {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = request.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break request.len(),
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&request[..head_end]).into_owned();
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|n| n.trim().to_owned()))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    while request.len() < head_end + length {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = head.lines().next().unwrap_or_default();
    let target = line.rsplit_once(' ').map_or(line, |(t, _)| t);
    let body = String::from_utf8_lossy(&request[head_end.min(request.len())..]).into_owned();
    format!("{target} {body}").trim_end().to_owned()
}

/// A job record as `GET /api/v1/ops/jobs/{id}` answers it.
pub fn job_json(job_id: &str, state: &str) -> Value {
    json!({
        "job-id": job_id, "type": "provision", "state": state, "attempts": 1, "instance-id": "acme-1",
        "request": {"instance-id": "acme-1", "owner-id": 7}, "result": null, "error": null,
        "source": "api", "requested-by": "cli",
        "created-at": "2026-11-26T18:38:31.973595Z", "updated-at": "2026-11-26T18:38:32Z",
        "published-at": "2026-11-26T18:38:31.99Z", "started-at": null, "finished-at": null,
        "next-retry-at": null, "deadline-at": null
    })
}

/// An instance record as `GET /api/v1/instances/{id}` answers it.
pub fn instance_json(instance_id: &str, state: &str) -> Value {
    json!({
        "instance-id": instance_id, "owner-id": 7, "owner-type": null, "state": state,
        "guest-location": "docker", "cluster-id": "local", "host-id": "local",
        "database-server": "main", "offerings": {"image": "test"},
        "resource-uri": "http://127.0.0.1:32768/api/v2/system",
        "resources": {"container": format!("dfe-{instance_id}")}, "job-id": "j-1",
        "created-at": "2026-11-26T18:38:31Z", "updated-at": "2026-11-26T18:38:40Z",
        "provisioned-at": "2026-11-26T18:38:40Z", "deprovisioned-at": null
    })
}

/// A snapshot record as `GET /api/v1/snapshots/{id}` answers it.
pub fn snapshot_json(snapshot_id: &str, size: u64, sha256: &str) -> Value {
    json!({
        "snapshot-id": snapshot_id, "instance-id": "acme-1", "owner-id": 7, "job-id": "j-2",
        "destination": "default", "size": size, "sha256": sha256, "manifest": {"format": 1},
        "created-at": "2026-11-26T18:40:00Z",
        "links": {"download": format!("/api/v1/snapshots/{snapshot_id}/download")}
    })
}

/// A reconciliation as `GET /api/v1/reconcile/{id}` answers it; `report` is null unless done.
pub fn reconciliation_json(id: &str, state: &str, report: Value) -> Value {
    let finished = matches!(state, "done" | "failed");
    json!({
        "id": id, "state": state, "fix": false, "requested-by": "cli",
        "worker": if state == "requested" { Value::Null } else { json!("worker-1") },
        "requested-at": "2026-11-26T18:50:00Z",
        "finished-at": if finished { json!("2026-11-26T18:50:03Z") } else { Value::Null },
        "report": report, "error": null
    })
}
