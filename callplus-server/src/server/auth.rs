//! Token checks: token → app (its secret from storage, cached) → verified user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use callplus_session::{AppKey, Code, Error, UserId};

use crate::storage::Storage;
use crate::token::{self, TokenError};

/// Unknown app keys reload the app table at most this often (a client cannot make every Hello
/// hit the database).
const RELOAD_INTERVAL: Duration = Duration::from_secs(1);

/// Looks up app secrets and verifies tokens.
pub(crate) struct Auth {
    storage: Arc<dyn Storage>,
    apps: RwLock<HashMap<String, String>>,
    last_reload: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// An authenticator over `storage`, starting with these apps.
    pub(crate) fn new(storage: Arc<dyn Storage>, apps: &[token::AppCredentials]) -> Self {
        let map = apps.iter().map(|a| (a.app_key.clone(), a.app_secret.clone())).collect();
        Auth { storage, apps: RwLock::new(map), last_reload: Mutex::new(Some(Instant::now())) }
    }

    /// The secret of `app_key`, reloading the app table (throttled) when it is not known.
    pub(crate) async fn secret(&self, app_key: &str) -> Option<String> {
        if let Some(s) = self.cached(app_key) {
            return Some(s);
        }
        {
            let mut last = self.last_reload.lock().unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < RELOAD_INTERVAL) {
                return None;
            }
            *last = Some(Instant::now());
        }
        let storage = self.storage.clone();
        match tokio::task::spawn_blocking(move || storage.apps()).await {
            Ok(Ok(apps)) => {
                let map = apps.into_iter().map(|a| (a.app_key, a.app_secret)).collect();
                *self.apps.write().unwrap_or_else(PoisonError::into_inner) = map;
            }
            Ok(Err(e)) => tracing::error!(error = %e, "cannot reload apps"),
            Err(e) => tracing::error!(error = %e, "app reload task failed"),
        }
        self.cached(app_key)
    }

    fn cached(&self, app_key: &str) -> Option<String> {
        self.apps.read().unwrap_or_else(PoisonError::into_inner).get(app_key).cloned()
    }

    /// Checks a token at `now_secs` (Unix seconds) and returns its app and user.
    ///
    /// A token that names an app this server does not have is `TOKEN_INVALID`, exactly as a
    /// forged one: the app field is not signed by anything the server can check, so a
    /// distinct answer would let anyone probe which app keys exist.
    ///
    /// # Errors
    /// `TOKEN_INVALID` for a malformed or forged token or an unknown app, `TOKEN_EXPIRED`.
    pub(crate) async fn authenticate(
        &self,
        token_str: &str,
        now_secs: u64,
    ) -> Result<(AppKey, UserId), Error> {
        let app_key = token::peek_app_key(token_str).map_err(token_error)?;
        let Some(secret) = self.secret(&app_key).await else {
            tracing::debug!(app = %app_key, "token of an unknown app");
            return Err(Error::new(Code::TokenInvalid, token::TokenError::BadSignature.to_string()));
        };
        let claims = token::verify(token_str, &secret, now_secs).map_err(token_error)?;
        let app = AppKey::new(&claims.app_key).map_err(|e| Error::new(Code::TokenInvalid, e.message))?;
        let user = UserId::new(&claims.user_id).map_err(|e| Error::new(Code::TokenInvalid, e.message))?;
        Ok((app, user))
    }
}

fn token_error(e: TokenError) -> Error {
    let code = match e {
        TokenError::Expired { .. } => Code::TokenExpired,
        _ => Code::TokenInvalid,
    };
    Error::new(code, e.to_string())
}
