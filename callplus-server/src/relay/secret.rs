//! The media secret shared by a signalling server and its SFU process: the key of the media
//! tokens, and the source of the proof a server attaches with.
//!
//! It lives in a file (`--media-secret-file`): `callplus sfu` creates it when missing (32 random
//! bytes, base64url, mode 0600) and the operator copies it to the signalling servers. The file's
//! text, trimmed, is the secret; it must be at least [`MIN_SECRET_LEN`] characters.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore as _;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Shortest secret accepted, in characters.
pub const MIN_SECRET_LEN: usize = 32;
/// What the attach proof signs; versioned so the proof can change without ambiguity.
const ATTACH_CONTEXT: &[u8] = b"callplus media relay attach v1";

/// Why a media secret file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file cannot be read or created.
    #[error("cannot use the media secret file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file holds too short a secret.
    #[error("the media secret in {path} is shorter than {MIN_SECRET_LEN} characters")]
    TooShort {
        /// The file.
        path: PathBuf,
    },
}

/// The shared media secret.
#[derive(Clone)]
pub struct MediaSecret {
    bytes: Vec<u8>,
}

impl std::fmt::Debug for MediaSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MediaSecret(..)")
    }
}

impl MediaSecret {
    /// A fresh random secret.
    #[must_use]
    pub fn generate() -> Self {
        let mut raw = [0u8; 32];
        rand::rng().fill_bytes(&mut raw);
        MediaSecret { bytes: URL_SAFE_NO_PAD.encode(raw).into_bytes() }
    }

    /// Reads the secret from `path`.
    ///
    /// # Errors
    /// The file cannot be read or its secret is too short.
    pub fn read(path: &Path) -> Result<Self, SecretError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| SecretError::Io { path: path.to_owned(), source })?;
        let secret = text.trim();
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { path: path.to_owned() });
        }
        Ok(MediaSecret { bytes: secret.as_bytes().to_vec() })
    }

    /// Reads the secret from `path`, or writes a fresh one there first when the file does not
    /// exist (readable by its owner only). `true` with it when the file was created.
    ///
    /// # Errors
    /// The file cannot be read or created, or its secret is too short.
    pub fn read_or_create(path: &Path) -> Result<(Self, bool), SecretError> {
        if path.exists() {
            return Ok((Self::read(path)?, false));
        }
        let secret = Self::generate();
        let io = |source| SecretError::Io { path: path.to_owned(), source };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(io)?;
        let mut text = secret.bytes.clone();
        text.push(b'\n');
        std::io::Write::write_all(&mut file, &text).map_err(io)?;
        Ok((secret, true))
    }

    /// The key of the media tokens.
    #[must_use]
    pub fn token_key(&self) -> Vec<u8> {
        self.bytes.clone()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes a key of any length: `new_from_slice` cannot fail for it.
        let mut mac =
            HmacSha256::new_from_slice(&self.bytes).unwrap_or_else(|_| unreachable!("any key length"));
        mac.update(ATTACH_CONTEXT);
        mac
    }

    /// The proof an attaching server sends (`authorization: Bearer <proof>`): it shows the
    /// secret is known without sending it.
    #[must_use]
    pub fn attach_proof(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.mac().finalize().into_bytes())
    }

    /// Whether `proof` is this secret's attach proof (compared in constant time).
    #[must_use]
    pub fn verify_attach_proof(&self, proof: &str) -> bool {
        match URL_SAFE_NO_PAD.decode(proof) {
            Ok(tag) => self.mac().verify_slice(&tag).is_ok(),
            Err(_) => false,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn a_created_file_is_read_back_and_only_its_secret_proves_an_attach() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("media.secret");
        let (created, was_created) = MediaSecret::read_or_create(&path).unwrap();
        assert!(was_created);
        let (again, was_created) = MediaSecret::read_or_create(&path).unwrap();
        assert!(!was_created);
        assert_eq!(created.token_key(), again.token_key());
        assert!(again.verify_attach_proof(&created.attach_proof()));
        assert!(!again.verify_attach_proof(&MediaSecret::generate().attach_proof()));
        assert!(!again.verify_attach_proof("not base64 !"));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "owner only");
        }
        std::fs::write(&path, "short\n").unwrap();
        assert!(matches!(MediaSecret::read(&path), Err(SecretError::TooShort { .. })));
    }
}
