//! In-call marks: which users hold a connected leg in a live call, and which node owns it.
//!
//! `callplus:{app}:incall:{user}` is a hash with one field per call the user is rung in or
//! connected in (the call id, which names its owner), its value `ringing` or `connected`. The
//! owner keeps the fields in step with the call (`NodeOutput::InCall`). A node starting a call
//! reads its callees' marks first (`NodeOutput::CheckBusy`), so a callee connected in a call
//! another node owns is busy exactly as on one node; a node where a device of the user connects
//! finds the calls ringing them (`NodeOutput::FindRinging`) and has their owners offer them.
//! Readers keep only marks whose owner is alive: a dead owner's marks count for nothing, and the
//! survivor that ends its calls deletes them. See "Marks across nodes" in `docs/architecture.md`.

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

    /// Marks `user` in `call_id` with `mark` (`ringing`, `connected`) or, with `None`, clears
    /// the mark.
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn set(
        &self,
        app_key: &str,
        user_id: &str,
        call_id: &str,
        mark: Option<&str>,
    ) -> Result<(), ClusterError> {
        let mut conn = self.conn.clone();
        let key = marks_key(app_key, user_id);
        if let Some(mark) = mark {
            redis::cmd("HSET").arg(key).arg(call_id).arg(mark).query_async::<()>(&mut conn).await?;
        } else {
            redis::cmd("HDEL").arg(key).arg(call_id).query_async::<()>(&mut conn).await?;
        }
        Ok(())
    }

    /// The marks of each of `users`, in one round trip: (user, call id, mark).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis cannot be reached.
    pub async fn read(
        &self,
        app_key: &str,
        users: &[&str],
    ) -> Result<Vec<(String, String, String)>, ClusterError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        for user in users {
            pipe.cmd("HGETALL").arg(marks_key(app_key, user));
        }
        let found: Vec<Vec<(String, String)>> = pipe.query_async(&mut conn).await?;
        Ok(users
            .iter()
            .zip(found)
            .flat_map(|(user, calls)| {
                calls.into_iter().map(move |(call, mark)| ((*user).to_owned(), call, mark))
            })
            .collect())
    }
}
