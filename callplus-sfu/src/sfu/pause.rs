//! Pausing a published stream while its publisher's camera (or microphone) is off.
//!
//! The publisher's client already stops sending when the camera goes off, but the SFU does not
//! rely on it: the signalling layer tells it ([`super::Sfu::set_paused`]) and it takes every
//! subscriber's copy of that stream out of the stream's fan-out, so nothing of it is forwarded
//! whatever arrives. Subscribers that join while it is paused are held back the same way. When
//! the camera comes back the copies go back in and the publisher is asked for a key frame (a PLI),
//! so every subscriber decodes again at once instead of waiting for the encoder's next periodic
//! one.

use std::collections::HashMap;
use std::sync::Arc;

use callplus_session::{CallId, MediaKind};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

use super::{Member, Task};
use crate::forward::Target;

/// The subscribers' copies of one paused stream, by subscriber.
pub(super) type Held = HashMap<Member, Arc<Target>>;

/// A paused stream: (call, publisher, kind).
pub(super) type PausedKey = (CallId, Member, MediaKind);

impl Task {
    /// Stops (`paused`) or resumes forwarding `publisher`'s stream of `kind` in `call_id`.
    pub(super) async fn set_paused(
        &mut self,
        call_id: &CallId,
        publisher: Member,
        kind: MediaKind,
        paused: bool,
    ) {
        let key = (call_id.clone(), publisher.clone(), kind);
        if paused {
            tracing::debug!(call = %call_id, user = %publisher.0, ?kind, "sfu: forwarding paused");
            self.paused.entry(key).or_default();
            self.hold_paused(call_id);
            return;
        }
        let Some(held) = self.paused.remove(&key) else { return };
        let Some(call) = self.calls.get(call_id) else { return };
        let Some(published) = call.get(&publisher).and_then(|p| p.published.get(&kind)) else { return };
        {
            let mut fanout = published.fanout.write().unwrap_or_else(|p| p.into_inner());
            for (subscriber, target) in held {
                // Only copies that are still that subscriber's current one of this stream.
                let current = call.get(&subscriber).is_some_and(|s| {
                    s.subscriptions
                        .get(&(publisher.clone(), kind))
                        .is_some_and(|sub| Arc::ptr_eq(&sub.target, &target))
                });
                if current {
                    fanout.entry(subscriber).or_insert(target);
                }
            }
        }
        tracing::debug!(call = %call_id, user = %publisher.0, ?kind, "sfu: forwarding resumed");
        if kind == MediaKind::Video
            && let Some(media_ssrc) = published.ssrc.or_else(|| published.layers.any())
        {
            let pli = PictureLossIndication { sender_ssrc: 0, media_ssrc };
            if let Err(e) = published.track.write_rtcp(vec![Box::new(pli)]).await {
                tracing::debug!(error = %e, "sfu: PLI on resume not sent");
            }
        }
    }

    /// Takes the subscribers' copies of every paused stream of `call_id` out of its fan-out
    /// (after a join or a newly published track put some in).
    pub(super) fn hold_paused(&mut self, call_id: &CallId) {
        let Some(call) = self.calls.get(call_id) else { return };
        for ((_, publisher, kind), held) in self.paused.iter_mut().filter(|((c, _, _), _)| c == call_id) {
            let Some(published) = call.get(publisher).and_then(|p| p.published.get(kind)) else { continue };
            let mut fanout = published.fanout.write().unwrap_or_else(|p| p.into_inner());
            held.extend(fanout.drain());
        }
    }

    /// Forgets the paused streams of a call that ended.
    pub(super) fn forget_paused(&mut self, call_id: &CallId) {
        self.paused.retain(|(c, _, _), _| c != call_id);
    }
}
