//! Test support: a stand-in HTTP server on a free loopback port, answering canned responses.

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

/// Serves `answers` in turn (then the last one forever), one per connection, and returns
/// the base URL. Requests are read up to the end of their headers; bodies are not needed.
pub async fn serve(answers: Vec<Answer>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a free port");
    let addr = listener.local_addr().expect("bound address");
    tokio::spawn(async move {
        let mut next = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
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
    format!("http://{addr}")
}
