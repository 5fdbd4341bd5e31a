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
use super::batch::{Batch, Replies, Slot};

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
        let mut batch = Batch::default();
        let slot = InCallMarks::set_in(&mut batch, app_key, user_id, call_id, mark);
        batch.run(&mut self.conn.clone()).await?.take::<redis::Value>(slot)?;
        Ok(())
    }

    /// [`InCallMarks::set`] as part of `batch`.
    pub fn set_in(
        batch: &mut Batch,
        app_key: &str,
        user_id: &str,
        call_id: &str,
        mark: Option<&str>,
    ) -> Slot {
        let key = marks_key(app_key, user_id);
        let mut cmd;
        if let Some(mark) = mark {
            cmd = redis::cmd("HSET");
            cmd.arg(key).arg(call_id).arg(mark);
        } else {
            cmd = redis::cmd("HDEL");
            cmd.arg(key).arg(call_id);
        }
        batch.push(cmd)
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
        let mut batch = Batch::default();
        let slots: Vec<Slot> =
            users.iter().map(|user| InCallMarks::read_in(&mut batch, app_key, user)).collect();
        let mut replies = batch.run(&mut self.conn.clone()).await?;
        let mut found = Vec::new();
        for (user, slot) in users.iter().zip(slots) {
            for (call, mark) in InCallMarks::marks(&mut replies, slot)? {
                found.push(((*user).to_owned(), call, mark));
            }
        }
        Ok(found)
    }

    /// Reads `user`'s marks as part of `batch`; the answer is [`InCallMarks::marks`].
    pub fn read_in(batch: &mut Batch, app_key: &str, user_id: &str) -> Slot {
        let mut cmd = redis::cmd("HGETALL");
        cmd.arg(marks_key(app_key, user_id));
        batch.push(cmd)
    }

    /// The answer to a [`InCallMarks::read_in`]: (call id, mark).
    ///
    /// # Errors
    /// [`ClusterError::Redis`] when Redis refused the read.
    pub fn marks(replies: &mut Replies, slot: Slot) -> Result<Vec<(String, String)>, ClusterError> {
        replies.take(slot)
    }
}
