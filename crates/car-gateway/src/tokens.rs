//! The daemon and host tokens: generated at start, written to `auth-token` and
//! `host-token` in the data directory (mode 0600), compared in constant time, removed at a
//! clean stop.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Token file of the daemon token.
pub const AUTH_TOKEN_FILE: &str = "auth-token";
/// Token file of the host token.
pub const HOST_TOKEN_FILE: &str = "host-token";
/// Random bytes per token (PROTOCOL.md §9: 32, i.e. 43 base64url characters).
const TOKEN_BYTES: usize = 32;

/// A secret compared in constant time.
#[derive(Clone)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

impl Secret {
    /// A fresh random token.
    pub fn generate() -> Self {
        let mut bytes = [0u8; TOKEN_BYTES];
        rand::rng().fill_bytes(&mut bytes);
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A given token.
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    /// Whether `offered` is this token. The comparison takes the same time whatever the
    /// offered value (both sides are hashed first, so even the length does not leak).
    pub fn matches(&self, offered: &str) -> bool {
        let expected = Sha256::digest(self.0.as_bytes());
        let offered = Sha256::digest(offered.as_bytes());
        expected.ct_eq(&offered).into()
    }

    /// The token text (to write the token file).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Lowercase hex SHA-256 of the token: what the log keeps of an agent token.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

/// Whether `offered`'s SHA-256 is `expected_hex` (an agent token's hash from the log),
/// compared in constant time.
pub fn hash_matches(expected_hex: &str, offered: &str) -> bool {
    let Ok(expected) = hex::decode(expected_hex) else {
        return false;
    };
    let offered = Sha256::digest(offered.as_bytes());
    expected.as_slice().ct_eq(offered.as_slice()).into()
}

/// The folder of the agent token files (PROTOCOL.md §12.2).
pub const AGENT_TOKEN_DIR: &str = "agents";

/// Where an agent's token file is: `DATA_DIR/agents/<id>.token`. Agent ids cannot hold
/// `/` or be `.`/`..` (§12.1), so the path stays in the folder.
pub fn agent_token_path(data_dir: &Path, agent_id: &str) -> PathBuf {
    data_dir
        .join(AGENT_TOKEN_DIR)
        .join(format!("{agent_id}.token"))
}

/// Writes an agent's token file (0600, atomically), creating the folder (0700).
pub fn write_agent_token(data_dir: &Path, agent_id: &str, token: &Secret) -> std::io::Result<()> {
    let dir = data_dir.join(AGENT_TOKEN_DIR);
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    write_secret(&agent_token_path(data_dir, agent_id), token)
}

/// Deletes an agent's token file (`agents.remove`); a missing one is fine.
pub fn remove_agent_token(data_dir: &Path, agent_id: &str) -> std::io::Result<()> {
    match fs::remove_file(agent_token_path(data_dir, agent_id)) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// The two tokens and where they are written.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// The daemon token (roles `client` and `agent`).
    pub auth: Secret,
    /// The host token (role `host`).
    pub host: Secret,
    /// Path of `auth-token`.
    pub auth_path: PathBuf,
    /// Path of `host-token`.
    pub host_path: PathBuf,
}

impl Tokens {
    /// Generates the tokens (either may be given) and writes them, mode 0600.
    pub fn create(
        data_dir: &Path,
        auth_token: Option<String>,
        host_token: Option<String>,
    ) -> std::io::Result<Self> {
        let tokens = Self {
            auth: auth_token.map(Secret::new).unwrap_or_else(Secret::generate),
            host: host_token.map(Secret::new).unwrap_or_else(Secret::generate),
            auth_path: data_dir.join(AUTH_TOKEN_FILE),
            host_path: data_dir.join(HOST_TOKEN_FILE),
        };
        write_secret(&tokens.auth_path, &tokens.auth)?;
        write_secret(&tokens.host_path, &tokens.host)?;
        Ok(tokens)
    }

    /// Removes the token files (clean stop).
    pub fn remove(&self) {
        for path in [&self.auth_path, &self.host_path] {
            if let Err(err) = fs::remove_file(path) {
                if err.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(path = %path.display(), %err, "could not remove token file");
                }
            }
        }
    }
}

/// Writes a token file atomically: a 0600 temporary file renamed over the target, so a
/// reader never sees a partial token and the token is never readable by others.
fn write_secret(path: &Path, secret: &Secret) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.set_permissions(fs::Permissions::from_mode(0o600))?;
    file.write_all(secret.expose().as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&tmp, path)
}

/// Reads a token file (for clients and tests): the token without its newline.
pub fn read_token(path: &Path) -> std::io::Result<String> {
    Ok(fs::read_to_string(path)?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_43_chars_0600_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::create(dir.path(), None, None).unwrap();
        for path in [&tokens.auth_path, &tokens.host_path] {
            let token = read_token(path).unwrap();
            assert_eq!(token.len(), 43);
            assert!(
                token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            );
            let mode = fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_ne!(tokens.auth.expose(), tokens.host.expose());
        tokens.remove();
        assert!(!tokens.auth_path.exists() && !tokens.host_path.exists());
    }

    #[test]
    fn agent_tokens_are_0600_files_and_only_their_hash_matches() {
        let dir = tempfile::tempdir().unwrap();
        let token = Secret::generate();
        write_agent_token(dir.path(), "a.b-c", &token).unwrap();
        let path = agent_token_path(dir.path(), "a.b-c");
        assert_eq!(read_token(&path).unwrap(), token.expose());
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let hash = token.sha256_hex();
        assert_eq!(hash.len(), 64);
        assert!(hash_matches(&hash, token.expose()));
        assert!(!hash_matches(&hash, &token.expose()[1..]));
        assert!(!hash_matches("not hex", token.expose()));
        remove_agent_token(dir.path(), "a.b-c").unwrap();
        assert!(!path.exists());
        remove_agent_token(dir.path(), "a.b-c").unwrap();
    }

    #[test]
    fn a_given_daemon_token_is_used() {
        let dir = tempfile::tempdir().unwrap();
        let tokens = Tokens::create(dir.path(), Some("s3cret".into()), None).unwrap();
        assert_eq!(read_token(&tokens.auth_path).unwrap(), "s3cret");
        assert!(tokens.auth.matches("s3cret"));
        assert!(!tokens.auth.matches("s3cre"));
        assert!(!tokens.auth.matches(""));
    }
}
