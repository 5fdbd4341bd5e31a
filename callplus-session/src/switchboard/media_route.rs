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

use super::net::Net;
use super::{Output, Switchboard};
use crate::call::{Call, SessionKey};
use crate::model::ids::{CallId, DeviceId, UserId};
use crate::model::kinds::CallType;
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
        if let Some(device) = device {
            self.net.outputs.push_back(Output::SfuLeave { call_id: call_id.clone(), user, device });
        }
    }
}
