//! Where the services are and which token to use.
//!
//! The CLI needs two keys of the services' configuration, `amqp.url` and `api.listen`. It
//! reads them with the services' loader (the same file and `DFE__SECTION__KEY` layering) but
//! into its own partial view rather than `Config`, because that demands the sections only
//! services need (registry, provisioners), and because `dfe` must work with no configuration
//! file at all, on the defaults of a local setup.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use dfe_shared::config::AmqpUrls;
use dfe_shared::secret::Secret;
use serde::Deserialize;

use crate::args::GlobalArgs;

/// RabbitMQ URL of a local setup.
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// dfe-api address of a local setup.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8080";

/// The part of the configuration file the CLI reads; other sections are ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct PartialConfig {
    /// `[amqp]`.
    pub amqp: AmqpSection,
    /// `[api]`.
    pub api: ApiSection,
}

/// `[amqp]` as far as the CLI cares.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AmqpSection {
    /// `amqp.url`: one URL or a cluster's node URLs.
    pub url: Option<AmqpUrls>,
}

/// `[api]` as far as the CLI cares.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ApiSection {
    /// `api.listen`.
    pub listen: Option<String>,
}

impl PartialConfig {
    /// Reads `path` (when given) and the `DFE__SECTION__KEY` variables of `env` (the
    /// process environment when `None`), with the loader the services use
    /// ([`dfe_shared::config::load_layers`]), so a variable means the same to every binary.
    pub fn load(path: Option<&Path>, env: Option<HashMap<String, String>>) -> anyhow::Result<Self> {
        if let Some(path) = path {
            if !path.is_file() {
                bail!(
                    "configuration file {} does not exist — fix --config or DFE_CONFIG, or leave both \
                     unset to use the defaults of a local setup",
                    path.display()
                );
            }
        }
        dfe_shared::config::load_layers(path, env).with_context(|| match path {
            Some(p) => format!("reading the configuration {}", p.display()),
            None => "reading the DFE__… environment variables".to_owned(),
        })
    }
}

/// Everything the commands need to reach the services, resolved from options, environment,
/// configuration and defaults, in that order.
#[derive(Debug)]
pub struct Settings {
    /// Base URL of dfe-api, without a trailing slash.
    api_url: Result<String, String>,
    /// RabbitMQ URL(s) (they hold passwords: print them only redacted).
    pub amqp_url: AmqpUrls,
    /// Where the token comes from.
    token_file: Option<PathBuf>,
}

impl Settings {
    /// Resolves the settings of `global`.
    pub fn resolve(global: &GlobalArgs) -> anyhow::Result<Self> {
        let file = PartialConfig::load(global.config.as_deref(), None)?;
        Ok(Settings::from_parts(global, file))
    }

    /// Combines the options with an already loaded configuration.
    pub fn from_parts(global: &GlobalArgs, file: PartialConfig) -> Self {
        // An empty DFE_API_URL counts as unset, as an empty variable usually does.
        let api_url = match global.api_url.as_deref().map(str::trim).filter(|u| !u.is_empty()) {
            Some(url) => Ok(normalize_api_url(url)),
            None => api_url_from_listen(file.api.listen.as_deref().unwrap_or(DEFAULT_API_LISTEN)),
        };
        let amqp_url = global.amqp_url.clone().or(file.amqp.url).unwrap_or_default();
        Settings { api_url, amqp_url, token_file: global.token_file.clone() }
    }

    /// The API's base URL.
    pub fn api_url(&self) -> anyhow::Result<&str> {
        self.api_url.as_deref().map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The `--token-file` given, if any.
    pub fn token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }

    /// The bearer token: `--token-file`, else `DFE_TOKEN`.
    pub fn token(&self) -> anyhow::Result<Secret> {
        read_token(self.token_file.as_deref())?.ok_or_else(|| {
            anyhow::anyhow!(
                "no API token — set DFE_TOKEN or --token-file FILE (mint one with `dfe token` and \
                 add its [[api.clients]] entry to the dfe-api configuration)"
            )
        })
    }
}

/// The token of `--token-file` (when given) or `DFE_TOKEN`, if any.
pub fn read_token(token_file: Option<&Path>) -> anyhow::Result<Option<Secret>> {
    let raw = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the token file {} (--token-file)", path.display()))?,
        None => match std::env::var("DFE_TOKEN") {
            Ok(t) => t,
            Err(std::env::VarError::NotPresent) => return Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => bail!("DFE_TOKEN is not valid UTF-8"),
        },
    };
    let token = raw.trim();
    if token.is_empty() {
        return match token_file {
            Some(path) => Err(anyhow::anyhow!("the token file {} is empty", path.display())),
            None => Err(anyhow::anyhow!("DFE_TOKEN is set but empty")),
        };
    }
    Ok(Some(Secret::new(token)))
}

/// A base URL without a trailing slash; `host:port` alone means plain HTTP.
pub fn normalize_api_url(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// `http://<listen>`, with a wildcard listen address replaced by loopback (the API listens
/// on all addresses, so it answers on loopback too).
pub fn api_url_from_listen(listen: &str) -> Result<String, String> {
    let listen = listen.trim();
    let (host, port) = listen
        .rsplit_once(':')
        .ok_or_else(|| format!("api.listen = {listen:?} is not HOST:PORT — set --api-url or DFE_API_URL"))?;
    if port == "0" {
        return Err(format!(
            "api.listen = {listen:?} lets dfe-api pick a free port, so the CLI cannot know it — \
             set --api-url or DFE_API_URL to the address dfe-api logged"
        ));
    }
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" => "[::1]",
        other => other,
    };
    Ok(format!("http://{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Via;

    fn global() -> GlobalArgs {
        GlobalArgs { config: None, api_url: None, token_file: None, amqp_url: None, via: Via::Api }
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("dfe-cli-{}-{name}", uuid::Uuid::new_v4()));
        std::fs::write(&path, contents).expect("write temp file");
        path
    }

    #[test]
    fn without_a_configuration_the_local_defaults_apply() {
        let file = PartialConfig::load(None, Some(HashMap::new())).expect("no file is fine");
        let s = Settings::from_parts(&global(), file);
        assert_eq!(s.api_url().expect("url"), "http://127.0.0.1:8080");
        assert_eq!(s.amqp_url.urls(), [DEFAULT_AMQP_URL]);
    }

    #[test]
    fn a_services_configuration_file_is_read_for_its_two_keys() {
        let path = temp_file(
            "dfe.toml",
            "[amqp]\nurl = \"amqp://u:p@mq:5672/dfe\"\n[api]\nlisten = \"0.0.0.0:9090\"\n\
             [[api.clients]]\nid = \"x\"\ntoken-sha256 = \"00\"\n[registry]\nurl = \"postgres://h/db\"\n",
        );
        let file = PartialConfig::load(Some(&path), Some(HashMap::new())).expect("loads");
        let _ = std::fs::remove_file(&path);
        let s = Settings::from_parts(&global(), file);
        assert_eq!(s.api_url().expect("url"), "http://127.0.0.1:9090");
        assert_eq!(s.amqp_url.urls(), ["amqp://u:p@mq:5672/dfe"]);
    }

    #[test]
    fn environment_overrides_the_file_and_options_override_both() {
        let env = [("DFE__AMQP__URL".to_owned(), "amqp://env/%2f".to_owned())].into_iter().collect();
        let file = PartialConfig::load(None, Some(env)).expect("loads");
        assert_eq!(file.amqp.url.as_ref().map(AmqpUrls::urls), Some(&["amqp://env/%2f".to_owned()][..]));
        let mut g = global();
        g.amqp_url = Some(AmqpUrls::parse("amqp://flag/%2f,amqp://flag2/%2f").expect("two nodes"));
        g.api_url = Some("http://api.example:8080/".into());
        let s = Settings::from_parts(&g, file);
        assert_eq!(s.amqp_url.urls(), ["amqp://flag/%2f", "amqp://flag2/%2f"]);
        assert_eq!(s.api_url().expect("url"), "http://api.example:8080");
    }

    #[test]
    fn a_missing_configuration_file_is_named() {
        let err = PartialConfig::load(Some(Path::new("/nonexistent/dfe.toml")), Some(HashMap::new()))
            .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/dfe.toml"), "{err}");
    }

    #[test]
    fn a_partial_file_is_enough_and_a_broken_one_is_named() {
        let path = temp_file("partial.toml", "[api]\nlisten = \"api.example:8081\"\n");
        let file = PartialConfig::load(Some(&path), Some(HashMap::new())).expect("a partial file loads");
        let _ = std::fs::remove_file(&path);
        assert_eq!((file.api.listen.as_deref(), file.amqp.url.is_none()), (Some("api.example:8081"), true));
        let path = temp_file("broken.toml", "[api\nlisten = 1\n");
        let err = PartialConfig::load(Some(&path), Some(HashMap::new())).expect_err("not TOML");
        let _ = std::fs::remove_file(&path);
        assert!(format!("{err:#}").contains(&path.display().to_string()), "{err:#}");
    }

    #[test]
    fn api_urls_are_normalized() {
        assert_eq!(normalize_api_url("http://h:1/"), "http://h:1");
        assert_eq!(normalize_api_url("127.0.0.1:8080"), "http://127.0.0.1:8080");
        let mut g = global();
        g.api_url = Some(String::new());
        let s = Settings::from_parts(&g, PartialConfig::default());
        assert_eq!(s.api_url().expect("url"), "http://127.0.0.1:8080");
    }

    #[test]
    fn listen_addresses_become_urls() {
        assert_eq!(api_url_from_listen("127.0.0.1:8080"), Ok("http://127.0.0.1:8080".into()));
        assert_eq!(api_url_from_listen("0.0.0.0:80"), Ok("http://127.0.0.1:80".into()));
        assert_eq!(api_url_from_listen("[::]:8080"), Ok("http://[::1]:8080".into()));
        assert_eq!(api_url_from_listen("api:8080"), Ok("http://api:8080".into()));
        assert!(api_url_from_listen("127.0.0.1:0").expect_err("port 0").contains("--api-url"));
    }

    #[test]
    fn a_token_file_is_trimmed_and_must_not_be_empty() {
        let path = temp_file("token", "abc123\n");
        let token = read_token(Some(&path)).expect("reads").expect("a token");
        assert_eq!(token.expose(), "abc123");
        std::fs::write(&path, "\n").expect("write");
        assert!(read_token(Some(&path)).is_err());
        let _ = std::fs::remove_file(&path);
    }
}
