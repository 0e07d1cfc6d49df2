//! `dfe token`: bearer tokens and the configuration entry that admits them.
//!
//! dfe-api stores only the SHA-256 of each token, so the token is shown once, here, and the
//! operator pastes the digest into `[[api.clients]]`.

use std::io::Read;

use anyhow::Context;
use dfe_shared::config::Scope;
use dfe_shared::ids::{OwnerId, Tag};
use dfe_shared::secret::Secret;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::args::TokenArgs;
use crate::error::CliError;

/// Random bytes in a token: 256 bits, beyond guessing.
const TOKEN_BYTES: usize = 32;

/// A fresh token: 32 bytes from the OS CSPRNG, as 64 lowercase hex characters.
pub fn mint() -> Secret {
    let mut bytes = [0u8; TOKEN_BYTES];
    OsRng.fill_bytes(&mut bytes);
    Secret::new(hex::encode(bytes))
}

/// The lowercase hex SHA-256 of the token string, as `token-sha256` wants it.
pub fn digest(token: &Secret) -> String {
    hex::encode(Sha256::digest(token.expose().as_bytes()))
}

/// What a token may do, as its `[[api.clients]]` entry says: nothing said is everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rights {
    /// Its scopes (empty: all three).
    pub scopes: Vec<Scope>,
    /// The owners it may see and act for (empty: every owner).
    pub owners: Vec<OwnerId>,
    /// When it stops being accepted.
    pub expires_at: Option<OffsetDateTime>,
}

/// The `[[api.clients]]` entry admitting `token` as `client_id` with `rights`.
pub fn client_entry(client_id: &Tag, token: &Secret, rights: &Rights) -> String {
    // A tag holds only [A-Za-z0-9._-], so it needs no TOML escaping; neither do owner ids
    // (a tag, or a number written bare) nor scope names.
    let mut entry = format!("[[api.clients]]\nid = \"{client_id}\"\ntoken-sha256 = \"{}\"\n", digest(token));
    if !rights.scopes.is_empty() {
        let scopes: Vec<String> = rights.scopes.iter().map(|s| format!("\"{s}\"")).collect();
        entry.push_str(&format!("scopes = [{}]\n", scopes.join(", ")));
    }
    if !rights.owners.is_empty() {
        let owners: Vec<String> = rights
            .owners
            .iter()
            .map(|o| match o {
                OwnerId::Number(n) => n.to_string(),
                OwnerId::Text(t) => format!("\"{t}\""),
            })
            .collect();
        entry.push_str(&format!("owners = [{}]\n", owners.join(", ")));
    }
    if let Some(at) = rights.expires_at {
        let at = at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default();
        entry.push_str(&format!("expires-at = \"{at}\"\n"));
    }
    entry
}

/// The rights `dfe token` was asked for.
fn rights(args: &TokenArgs, now: OffsetDateTime) -> anyhow::Result<Rights> {
    let mut scopes: Vec<Scope> = Vec::new();
    for s in &args.scopes {
        let scope: Scope = s.parse().map_err(|m: String| CliError::Usage(format!("--scope: {m}")))?;
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    // All three is what no list says, and says it shorter.
    if scopes.len() == Scope::ALL.len() {
        scopes.clear();
    }
    scopes.sort();
    let owners = args
        .owners
        .iter()
        .map(|o| OwnerId::parse_cli(o).map_err(|m| CliError::Usage(format!("--owner {o:?}: {m}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let expires_at = args.expires_in.map(|d| {
        // Whole seconds, so that the entry reads plainly.
        let at = now + time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
        at.replace_nanosecond(0).unwrap_or(at)
    });
    Ok(Rights { scopes, owners, expires_at })
}

/// `dfe token`.
pub fn run(args: &TokenArgs, token_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let client_id = Tag::parse(&args.client_id).map_err(|m| CliError::Usage(format!("--client-id: {m}")))?;
    let rights = rights(args, OffsetDateTime::now_utc())?;
    if args.digest {
        let token = match crate::settings::read_token(token_file)? {
            Some(token) => token,
            None => read_stdin_token()?,
        };
        print!("{}", client_entry(&client_id, &token, &rights));
        return Ok(());
    }
    let token = mint();
    eprintln!("A new API token (shown only now; keep it secret, e.g. in a file for --token-file):");
    println!("{}", token.expose());
    eprintln!("\nAdd this to the dfe-api configuration and restart dfe-api:");
    print!("\n{}", client_entry(&client_id, &token, &rights));
    Ok(())
}

fn read_stdin_token() -> anyhow::Result<Secret> {
    let mut raw = String::new();
    std::io::stdin().read_to_string(&mut raw).context("reading the token from standard input")?;
    let token = raw.trim();
    if token.is_empty() {
        return Err(CliError::Usage(
            "--digest needs a token: set --token-file or DFE_TOKEN, or pipe it on standard input".into(),
        )
        .into());
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_sha256_hex_of_the_token_string() {
        // FIPS 180-2's test vector for "abc".
        assert_eq!(digest(&Secret::new("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn minted_tokens_are_256_random_bits_in_hex() {
        let a = mint();
        let b = mint();
        assert_eq!(a.expose().len(), 2 * TOKEN_BYTES);
        assert!(a.expose().bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
    }

    #[test]
    fn a_limited_entry_names_its_scopes_owners_and_expiry_and_reads_back() {
        let id = Tag::parse("acme-ro").expect("tag");
        let args = TokenArgs {
            client_id: "acme-ro".into(),
            scopes: vec!["read".into(), "read".into()],
            owners: vec!["7".into(), "acme.co".into()],
            expires_in: Some(std::time::Duration::from_secs(30 * 86_400)),
            digest: false,
        };
        let now = OffsetDateTime::from_unix_timestamp(1_767_225_600).expect("a time");
        let entry = client_entry(&id, &Secret::new("abc"), &rights(&args, now).expect("rights"));
        assert!(
            entry.ends_with("scopes = [\"read\"]\nowners = [7, \"acme.co\"]\nexpires-at = \"2026-01-31T00:00:00Z\"\n"),
            "{entry}"
        );
        let client = &read_back(&entry)[0];
        assert_eq!(client.scopes, Some(vec![Scope::Read]));
        assert_eq!(client.owners, Some(vec![OwnerId::Number(7), OwnerId::Text("acme.co".into())]));
        assert_eq!(client.expires_at, Some(now + time::Duration::days(30)));
        let all = TokenArgs { scopes: vec!["admin".into(), "ops".into(), "read".into()], ..args };
        assert_eq!(rights(&all, now).expect("rights").scopes, [], "all three is what no list says");
        let bad = TokenArgs { owners: vec!["a b".into()], ..all };
        assert!(rights(&bad, now).is_err());
    }

    /// The `[[api.clients]]` of `entry`, as the services' configuration loader reads them.
    fn read_back(entry: &str) -> Vec<dfe_shared::config::ApiClient> {
        #[derive(serde::Deserialize)]
        struct Api {
            api: Clients,
        }
        #[derive(serde::Deserialize)]
        struct Clients {
            clients: Vec<dfe_shared::config::ApiClient>,
        }
        let path = std::env::temp_dir().join(format!("dfe-cli-{}-clients.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, entry).expect("write temp file");
        let parsed: Result<Api, _> = dfe_shared::config::load_layers(Some(&path), Some(Default::default()));
        let _ = std::fs::remove_file(&path);
        parsed.expect("valid TOML").api.clients
    }

    #[test]
    fn the_client_entry_is_toml_the_api_reads() {
        let id = Tag::parse("ops-laptop").expect("tag");
        let entry = client_entry(&id, &Secret::new("abc"), &Rights::default());
        assert_eq!(
            entry,
            "[[api.clients]]\nid = \"ops-laptop\"\n\
             token-sha256 = \"ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\"\n"
        );
        // The entry parses as the services' configuration loader and type read it.
        #[derive(serde::Deserialize)]
        struct Api {
            api: Clients,
        }
        #[derive(serde::Deserialize)]
        struct Clients {
            clients: Vec<dfe_shared::config::ApiClient>,
        }
        let path = std::env::temp_dir().join(format!("dfe-cli-{}-clients.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, &entry).expect("write temp file");
        let parsed: Result<Api, _> = dfe_shared::config::load_layers(Some(&path), Some(Default::default()));
        let _ = std::fs::remove_file(&path);
        let parsed = parsed.expect("valid TOML");
        assert_eq!(parsed.api.clients[0].id, "ops-laptop");
        assert_eq!(parsed.api.clients[0].token_sha256, digest(&Secret::new("abc")));
    }
}
