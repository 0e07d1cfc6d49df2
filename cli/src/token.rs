//! `dfe token`: bearer tokens and the configuration entry that admits them.
//!
//! dfe-api stores only the SHA-256 of each token, so the token is shown once, here, and the
//! operator pastes the digest into `[[api.clients]]`.

use std::io::Read;

use anyhow::Context;
use dfe_shared::ids::Tag;
use dfe_shared::secret::Secret;
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::{Digest, Sha256};

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

/// The `[[api.clients]]` entry admitting `token` as `client_id`.
pub fn client_entry(client_id: &Tag, token: &Secret) -> String {
    // A tag holds only [A-Za-z0-9._-], so it needs no TOML escaping.
    format!("[[api.clients]]\nid = \"{client_id}\"\ntoken-sha256 = \"{}\"\n", digest(token))
}

/// `dfe token`.
pub fn run(args: &TokenArgs, token_file: Option<&std::path::Path>) -> anyhow::Result<()> {
    let client_id = Tag::parse(&args.client_id).map_err(|m| CliError::Usage(format!("--client-id: {m}")))?;
    if args.digest {
        let token = match crate::settings::read_token(token_file)? {
            Some(token) => token,
            None => read_stdin_token()?,
        };
        print!("{}", client_entry(&client_id, &token));
        return Ok(());
    }
    let token = mint();
    eprintln!("A new API token (shown only now; keep it secret, e.g. in a file for --token-file):");
    println!("{}", token.expose());
    eprintln!("\nAdd this to the dfe-api configuration and restart dfe-api:");
    print!("\n{}", client_entry(&client_id, &token));
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
    fn the_client_entry_is_toml_the_api_reads() {
        let id = Tag::parse("ops-laptop").expect("tag");
        let entry = client_entry(&id, &Secret::new("abc"));
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
