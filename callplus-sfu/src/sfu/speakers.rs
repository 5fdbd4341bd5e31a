//! Sending each call's audio levels and active speaker ([`crate::levels`]) to its participants,
//! on their control channels, when they changed.

use std::collections::HashSet;
use std::time::Instant;

use callplus_session::{MediaKind, UserId};

use super::Task;
use crate::connection::lock;

impl Task {
    /// Every [`crate::levels::REPORT_INTERVAL`]: each call whose levels or speaker changed tells
    /// all its participants that have their control channel open.
    pub(super) fn report_levels(&mut self) {
        let now = Instant::now();
        for (call_id, levels) in &self.levels {
            let Some(call) = self.calls.get(call_id) else { continue };
            let paused: HashSet<UserId> = self
                .paused
                .keys()
                .filter(|(call, _, kind)| call == call_id && *kind == MediaKind::Audio)
                .map(|(_, (user, _), _)| user.clone())
                .collect();
            let report = {
                let mut levels = lock(levels);
                levels.set_paused(paused);
                levels.report(now)
            };
            let Some(report) = report else { continue };
            let text = report.to_text();
            for participant in call.values() {
                let Some(channel) = lock(&participant.shared.control).clone() else { continue };
                let text = text.clone();
                // Not awaited here: one slow connection must not hold up the SFU task.
                tokio::spawn(async move {
                    if let Err(e) = channel.send_text(&text).await {
                        tracing::trace!(error = %e, "sfu: audio levels not sent");
                    }
                });
            }
        }
    }
}
