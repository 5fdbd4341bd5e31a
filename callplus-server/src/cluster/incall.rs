//! In-call marks: which users hold a connected leg in a live call, and which node owns it.
//!
//! `callplus:{app}:incall:{user}` is a hash with one field per call the user is in (the call id,
//! which names its owner; the value is unused). The owner sets a field when the user's leg
//! connects and deletes it when the leg or the call ends (`NodeOutput::InCall`). A node starting
//! a call reads its callees' marks first (`NodeOutput::CheckBusy`), so a callee in a call
//! another node owns is busy exactly as on one node. The reader keeps only marks whose owner is
//! alive: a dead owner's marks never make anyone busy, and the survivor that ends its calls
//! deletes them. See "Busy across nodes" in `docs/architecture.md`.

use redis::aio::ConnectionManager;

use super::ClusterError;

fn marks_key(app_key: &str, user_id: &str) -> String {
    format!("callplus:{app_key}:incall:{user_id}")
}

/// Sets, clears and reads in-call marks.
#[derive(Clone)]
pub struct InCallMarks {
    conn: ConnectionManager,
}

impl std::fmt::Debug for InCallMarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InCallMarks").finish_non_exhaustive()
    }
}

impl InCallMarks {
    /// Marks on `conn`.
    pub fn new(conn: ConnectionManager) -> InCallMarks {
        InCallMarks { conn }
    }

    /// Marks `user` in `call_id` (`on`) or clears the mark.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn set(
        &self,
        app_key: &str,
        user_id: &str,
        call_id: &str,
        on: bool,
    ) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let key = marks_key(app_key, user_id);
        if on {
            redis::cmd("HSET").arg(key).arg(call_id).arg(1).query_async::<()>(&mut conn).await?;
        } else {
            redis::cmd("HDEL").arg(key).arg(call_id).query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    /// The calls each of `users` is marked in, in one round trip: (user, call id) pairs.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn read(&self, app_key: &str, users: &[&str]) -> Result<Vec<(String, String)>, ClusterError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HKEYS").arg(marks_key(app_key, user));
        }
        let found: Vec<Vec<String>> = pipe.query_async(&mut conn).await?;
        Ok(users
            .iter()
            .zip(found)
            .flat_map(|(user, calls)| calls.into_iter().map(move |call| ((*user).to_owned(), call)))
            .collect())
    }
}
