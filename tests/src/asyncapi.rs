//! The AsyncAPI document the api serves, as a checker of what goes over the broker: every
//! job body under the message its AMQP `type` names, every event under the message its
//! `event` names.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The document, with a validator per message.
pub struct Document {
    /// The document as served.
    pub doc: Value,
    validators: BTreeMap<String, jsonschema::Validator>,
}

impl Document {
    /// Reads `GET /api/v1/asyncapi.json` of the api at `api_url` (no token needed).
    pub async fn fetch(api_url: &str) -> Result<Document> {
        let resp = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .get(format!("{api_url}/api/v1/asyncapi.json"))
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("GET /api/v1/asyncapi.json answered {}", resp.status());
        }
        Document::new(resp.json().await?)
    }

    /// A checker of `doc`.
    pub fn new(doc: Value) -> Result<Document> {
        if doc["asyncapi"] != "3.0.0" {
            bail!("not an AsyncAPI 3 document: {}", doc["asyncapi"]);
        }
        let mut validators = BTreeMap::new();
        for (name, message) in doc["components"]["messages"].as_object().context("components.messages")? {
            let mut root = message["payload"].clone();
            root["components"] = doc["components"].clone();
            let v = jsonschema::options()
                .with_draft(jsonschema::Draft::Draft202012)
                .should_validate_formats(true)
                .build(&root)
                .map_err(|e| anyhow::anyhow!("message {name}: its payload is no JSON Schema: {e}"))?;
            validators.insert(name.clone(), v);
        }
        Ok(Document { doc, validators })
    }

    /// Why `body` is not a valid message `name` (`None`: it is).
    pub fn check(&self, name: &str, body: &Value) -> Option<String> {
        let Some(v) = self.validators.get(name) else {
            return Some(format!("the document has no message {name:?}"));
        };
        let errors: Vec<String> = v.iter_errors(body).map(|e| format!("{e} at {}", e.instance_path())).collect();
        (!errors.is_empty()).then(|| format!("{name}: {body} does not validate: {errors:?}"))
    }

    /// Why `event` is not valid as the message its `event` names.
    pub fn check_event(&self, event: &Value) -> Option<String> {
        match event["event"].as_str() {
            Some(name) => self.check(name, event),
            None => Some(format!("an event without a name: {event}")),
        }
    }
}
