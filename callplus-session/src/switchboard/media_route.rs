//! Where a call's media goes: peer to peer (a mesh), or through the selective forwarding unit
//! (SFU) the server runs.
//!
//! The switchboard decides the topology when a call is made (SINGLE: peer to peer; MULTI:
//! through the SFU unless it starts with at most [`MediaRouter::mesh_max`] participants), and
//! again when an invite turns a SINGLE call into MULTI; it tells every device that connects in a
//! MULTI call (and the devices of a call that just became MULTI) with an [`Event::MediaRoute`]. Signals a
//! participant addresses to the SFU come out as [`Output::SfuSignal`]; the driver hands the
//! SFU's answers back through [`Switchboard::sfu_signal`]. The media token is signed by the
//! server layer ([`MediaRouter::sign`]): the key never enters the sans-IO core.
//!
//! A call's route follows it as it changes:
//! - **Growth.** A mesh call that grows past [`MediaRouter::mesh_max`] (an invite, a join) moves
//!   to the SFU: its connected devices get the SFU's route, and their engines move their media
//!   there the way a SINGLE call that became MULTI does, without ending the call.
//! - **Recovery.** When the SFU reports a participant's connection failed
//!   ([`Switchboard::sfu_participant_failed`]), the switchboard drops that connection at the SFU
//!   ([`Output::SfuLeave`]) and sends the device a fresh route with a newly signed token; its
//!   engine restarts the call's media on it. A token is only checked when a connection opens,
//!   so every reconnection carries one just made and the token's lifetime never cuts a call.
//! - **Removal.** A participant whose SFU connection does not come back
//!   ([`Switchboard::sfu_participant_connected`]) within
//!   [`SwitchboardConfig::media_recovery_ms`](super::SwitchboardConfig::media_recovery_ms)
//!   (default [`MEDIA_RECOVERY_MS`](super::MEDIA_RECOVERY_MS)) of the failure leaves the call
//!   with NETWORK_ERROR, so the others see it go rather than a frozen tile.
//! - **Camera and microphone.** A participant's camera or microphone switched off or on
//!   becomes [`Output::SfuPause`]: the SFU stops (or resumes) forwarding that stream.

use super::net::Net;
use super::timer::Timer;
use super::{Output, Switchboard};
use crate::call::{Call, SessionKey};
use crate::model::ids::{CallId, DeviceId, UserId};
use crate::model::kinds::{CallType, EndReason, MediaKind};
use crate::model::message::{Event, MediaPayload, SfuRoute};

/// Signs the media token of one (call, user, device).
pub type TokenSigner = Box<dyn Fn(&CallId, &UserId, &DeviceId) -> String + Send + Sync>;

/// The SFU a switchboard routes MULTI calls through.
pub struct MediaRouter {
    /// The user id the SFU's signals carry (its signalling address).
    pub sfu_user: UserId,
    /// The device id the SFU's signals carry.
    pub sfu_device: DeviceId,
    /// MULTI calls made with at most this many participants (creator included) stay a mesh;
    /// 0: every MULTI call goes through the SFU. Decided when the call is made, and again for
    /// the group a SINGLE call becomes when an invite makes it MULTI; otherwise kept.
    pub mesh_max: usize,
    /// Signs a device's media token (the server layer holds the key and picks the expiry).
    pub sign: TokenSigner,
}

impl std::fmt::Debug for MediaRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRouter")
            .field("sfu_user", &self.sfu_user)
            .field("sfu_device", &self.sfu_device)
            .field("mesh_max", &self.mesh_max)
            .finish_non_exhaustive()
    }
}

impl MediaRouter {
    /// Whether a call made as `call_type` with `participants` (creator included) goes through
    /// the SFU.
    pub(super) fn routes(&self, call_type: CallType, participants: usize) -> bool {
        call_type == CallType::Multi && participants > self.mesh_max
    }

    /// Whether `call`, a mesh so far, has grown past the mesh size and moves to the SFU.
    pub(super) fn outgrown(&self, call: &Call) -> bool {
        !call.via_sfu && self.routes(call.call_type, call.active())
    }

    /// Whether `(user, device)` is the SFU's address in `call`.
    pub(super) fn is_sfu(&self, call: &Call, user: &UserId, device: &DeviceId) -> bool {
        call.via_sfu && user == &self.sfu_user && device == &self.sfu_device
    }
}

/// Tells the session `sk` (where `user` is in `call` on `device`) where the call's media goes.
/// Only MULTI calls: a SINGLE call's media is always peer to peer and its devices do not wait.
pub(super) fn send_route(
    router: Option<&MediaRouter>,
    net: &mut Net,
    call: &Call,
    sk: SessionKey,
    user: &UserId,
    device: &DeviceId,
) {
    if call.call_type != CallType::Multi {
        return;
    }
    let sfu = router.filter(|_| call.via_sfu).map(|r| SfuRoute {
        user_id: r.sfu_user.clone(),
        device_id: r.sfu_device.clone(),
        token: (r.sign)(&call.id, user, device),
    });
    net.send(sk, Event::MediaRoute { call_id: call.id.clone(), sfu });
}

impl Switchboard {
    /// Routes MULTI calls through this SFU from now on (calls made before keep their mesh).
    pub fn set_media_router(&mut self, router: MediaRouter) {
        self.router = Some(router);
    }

    /// SDP/ICE from the SFU to one participant device of one of its calls: delivered as a
    /// `MediaSignal` from the SFU's address, when that device is connected in the call.
    pub fn sfu_signal(
        &mut self,
        now_ms: i64,
        call_id: &CallId,
        to_user: &UserId,
        to_device: &DeviceId,
        payload: MediaPayload,
    ) {
        let Some(router) = &self.router else { return };
        let Some(call) = self.calls.get(call_id).filter(|c| c.via_sfu && !c.is_ended()) else { return };
        let target = call
            .index_of(to_user)
            .and_then(|j| call.party(j))
            .filter(|p| p.state.is_connected() && p.device.as_ref() == Some(to_device))
            .and_then(|p| p.bound);
        if let Some(sk) = target {
            let event = Event::MediaSignal {
                call_id: call_id.clone(),
                from_user: router.sfu_user.clone(),
                from_device: router.sfu_device.clone(),
                payload,
            };
            self.net.send(sk, event);
        }
        self.finish_input(now_ms);
    }

    /// Queues the SFU's side of a participant's leaving an SFU call.
    pub(super) fn sfu_leave(&mut self, call_id: &CallId, user: UserId, device: Option<DeviceId>) {
        self.media_lost.remove(&(call_id.clone(), user.clone()));
        if let Some(device) = device {
            self.net.outputs.push_back(Output::SfuLeave { call_id: call_id.clone(), user, device });
        }
    }
}

/// A participant connected in an SFU call on this device, and the session holding its leg.
fn sfu_party(call: &Call, user: &UserId, device: &DeviceId) -> Option<(usize, SessionKey)> {
    if !call.via_sfu || call.is_ended() {
        return None;
    }
    let idx = call.index_of(user)?;
    let party = call.party(idx).filter(|p| p.state.is_connected() && p.device.as_ref() == Some(device))?;
    Some((idx, party.bound?))
}

impl Switchboard {
    /// A mesh call that has grown past the mesh size moves to the SFU: every connected device
    /// but `except` (which is told on its own) gets the SFU's route.
    pub(super) fn reroute_if_outgrown(&mut self, id: &CallId, except: Option<SessionKey>) {
        let Some(router) = &self.router else { return };
        let Some(call) = self.calls.get_mut(id).filter(|c| !c.is_ended()) else { return };
        if !router.outgrown(call) {
            return;
        }
        call.via_sfu = true;
        for p in call.parties.iter().filter(|p| p.state.is_connected()) {
            if let (Some(sk), Some(device)) = (p.bound, &p.device)
                && Some(sk) != except
            {
                send_route(Some(router), &mut self.net, call, sk, &p.user, device);
            }
        }
    }

    /// The SFU reports that a participant device's connection failed. The failed connection is
    /// closed at the SFU and the device gets a fresh route (a new token): its engine restarts
    /// the call's media. If it has not connected again
    /// [`SwitchboardConfig::media_recovery_ms`](super::SwitchboardConfig::media_recovery_ms)
    /// after the first failure, it leaves the call with NETWORK_ERROR. Reports about devices that are not (or
    /// no longer) in the call on that device are ignored.
    pub fn sfu_participant_failed(
        &mut self,
        now_ms: i64,
        call_id: &CallId,
        user: &UserId,
        device: &DeviceId,
    ) {
        self.media_failed(now_ms, call_id, user, device);
        self.finish_input(now_ms);
    }

    fn media_failed(&mut self, now_ms: i64, call_id: &CallId, user: &UserId, device: &DeviceId) {
        let Some(router) = &self.router else { return };
        let Some(call) = self.calls.get(call_id) else { return };
        let Some((idx, sk)) = sfu_party(call, user, device) else { return };
        self.net.outputs.push_back(Output::SfuLeave {
            call_id: call_id.clone(),
            user: user.clone(),
            device: device.clone(),
        });
        send_route(Some(router), &mut self.net, call, sk, user, device);
        let key = (call_id.clone(), user.clone());
        if self.media_lost.get(&key).is_none_or(|(d, _)| d != device) {
            let deadline = now_ms.saturating_add(i64::from(self.cfg.media_recovery_ms));
            self.media_lost.insert(key, (device.clone(), deadline));
            self.timers.set(deadline, Timer::MediaLost(call_id.clone(), idx));
        }
    }

    /// The SFU reports that a participant device's connection is up (ICE and DTLS): a recovery
    /// in progress for it is over.
    pub fn sfu_participant_connected(
        &mut self,
        now_ms: i64,
        call_id: &CallId,
        user: &UserId,
        device: &DeviceId,
    ) {
        let key = (call_id.clone(), user.clone());
        if self.media_lost.get(&key).is_some_and(|(d, _)| d == device) {
            self.media_lost.remove(&key);
        }
        self.finish_input(now_ms);
    }

    /// The recovery deadline of participant `idx` passed: still without media, it leaves.
    pub(super) fn media_lost_timer(&mut self, now_ms: i64, id: &CallId, idx: usize, at: i64) {
        let Some(call) = self.calls.get(id) else { return };
        let Some(party) = call.party(idx) else { return };
        let key = (id.clone(), party.user.clone());
        let Some((device, deadline)) = self.media_lost.get(&key).cloned() else { return };
        if deadline != at {
            return;
        }
        self.media_lost.remove(&key);
        if party.state.is_connected() && party.device.as_ref() == Some(&device) && !call.is_ended() {
            tracing::info!(call = %id, user = %party.user, "no media from the participant since its SFU connection failed");
            self.leave(now_ms, id, idx, EndReason::NetworkError, None, EndReason::NetworkError);
        }
    }

    /// A participant turned its camera (video) or microphone (audio) off or on: in an SFU call,
    /// the SFU stops or resumes forwarding that stream.
    pub(super) fn sfu_pause(&mut self, call_id: &CallId, user: &UserId, kind: MediaKind, paused: bool) {
        let Some(call) = self.calls.get(call_id).filter(|c| c.via_sfu && self.router.is_some()) else {
            return;
        };
        let device = call.index_of(user).and_then(|j| call.party(j)).and_then(|p| p.device.clone());
        if let Some(device) = device {
            self.net.outputs.push_back(Output::SfuPause {
                call_id: call_id.clone(),
                user: user.clone(),
                device,
                kind,
                paused,
            });
        }
    }
}
