//! A simulated media stack: executes the engine's media commands as a real driver would, and
//! negotiates over signalling with the other devices' stacks (offer → answer), so tests see
//! which devices exchange media and that every offer finds its answer.

use std::collections::{BTreeMap, BTreeSet};

use callplus_session::client::{ClientEngine, MediaCommand, MediaPeer};
use callplus_session::media_token::attach_media_token;
use callplus_session::{CallId, DeviceId, MediaKind, MediaPayload, MediaType, UserId};

/// One call's media as the stack runs it.
#[derive(Debug, Clone, Default)]
pub struct SimCallMedia {
    pub media_type: Option<MediaType>,
    /// Peers (user, device) and whether their media is up (offer answered). Through an SFU:
    /// the other participants, never up themselves (their media comes over the SFU's
    /// connection).
    pub peers: BTreeMap<(UserId, DeviceId), bool>,
    /// The SFU's address when the media goes through it, and whether its connection is up.
    pub sfu: Option<((UserId, DeviceId), bool)>,
}

/// The stack of one device.
#[derive(Debug, Clone, Default)]
pub struct SimMediaStack {
    pub calls: BTreeMap<CallId, SimCallMedia>,
    /// Camera / microphone switches, in order.
    pub devices: Vec<(MediaKind, bool)>,
    /// Commands that made no sense to a real stack (a peer added twice, a signal for a call
    /// that does not run, …), described.
    pub violations: Vec<String>,
    /// First frames reported to the engine.
    pub first_frames: BTreeSet<CallId>,
}

impl SimMediaStack {
    pub fn execute(&mut self, now: i64, engine: &mut ClientEngine, command: MediaCommand) {
        match command {
            MediaCommand::Start {
                call_id,
                peers,
                media_type,
                microphone_enabled,
                camera_enabled,
                sfu,
                ..
            } => {
                if self.calls.contains_key(&call_id) {
                    self.violations.push(format!("{call_id} started twice"));
                }
                self.devices.push((MediaKind::Audio, microphone_enabled));
                self.devices.push((MediaKind::Video, camera_enabled));
                self.calls.insert(
                    call_id.clone(),
                    SimCallMedia {
                        media_type: Some(media_type),
                        sfu: sfu.as_ref().map(|r| ((r.user_id.clone(), r.device_id.clone()), false)),
                        ..Default::default()
                    },
                );
                if let Some(route) = sfu {
                    // One connection, to the SFU, offered with the token.
                    let offer = MediaPayload::SdpOffer(attach_media_token("offer", &route.token));
                    if let Err(e) =
                        engine.send_media_signal(now, &call_id, &route.user_id, &route.device_id, offer)
                    {
                        self.violations.push(format!("{call_id}: cannot offer to the sfu: {e}"));
                    }
                }
                for peer in peers {
                    self.add_peer(now, engine, &call_id, peer);
                }
            }
            MediaCommand::AddPeer { call_id, peer } => self.add_peer(now, engine, &call_id, peer),
            MediaCommand::RemovePeer { call_id, user_id, device_id } => {
                let removed = self
                    .calls
                    .get_mut(&call_id)
                    .and_then(|c| c.peers.remove(&(user_id.clone(), device_id.clone())));
                if removed.is_none() {
                    self.violations.push(format!("{call_id}: removed unknown peer {user_id}/{device_id}"));
                }
            }
            MediaCommand::SetMediaType { call_id, media_type } => match self.calls.get_mut(&call_id) {
                Some(call) => call.media_type = Some(media_type),
                None => self.violations.push(format!("{call_id}: media type of a call without media")),
            },
            MediaCommand::ApplySignal { call_id, from_user, from_device, payload } => {
                let Some(call) = self.calls.get_mut(&call_id) else {
                    self.violations.push(format!("{call_id}: signal for a call without media"));
                    return;
                };
                if let Some((address, up)) = &mut call.sfu {
                    if *address != (from_user.clone(), from_device.clone()) {
                        self.violations
                            .push(format!("{call_id}: signal from {from_user}/{from_device}, not the sfu"));
                        return;
                    }
                    if matches!(payload, MediaPayload::SdpAnswer(_)) {
                        *up = true;
                        self.frame(now, engine, &call_id);
                    }
                    return;
                }
                let Some(up) = call.peers.get_mut(&(from_user.clone(), from_device.clone())) else {
                    self.violations
                        .push(format!("{call_id}: signal from non-peer {from_user}/{from_device}"));
                    return;
                };
                match payload {
                    MediaPayload::SdpOffer(_) => {
                        *up = true;
                        let answer = MediaPayload::SdpAnswer("answer".to_owned());
                        if let Err(e) =
                            engine.send_media_signal(now, &call_id, &from_user, &from_device, answer)
                        {
                            self.violations.push(format!("{call_id}: cannot answer: {e}"));
                        }
                        self.frame(now, engine, &call_id);
                    }
                    MediaPayload::SdpAnswer(_) => {
                        *up = true;
                        self.frame(now, engine, &call_id);
                    }
                    MediaPayload::IceCandidate { .. } => {}
                }
            }
            MediaCommand::SetDevice { kind, enabled } => self.devices.push((kind, enabled)),
            MediaCommand::Stop { call_id } => {
                if self.calls.remove(&call_id).is_none() {
                    self.violations.push(format!("{call_id}: stopped without media"));
                }
            }
        }
    }

    fn add_peer(&mut self, now: i64, engine: &mut ClientEngine, call_id: &CallId, peer: MediaPeer) {
        let Some(call) = self.calls.get_mut(call_id) else {
            self.violations.push(format!("{call_id}: peer added to a call without media"));
            return;
        };
        if call.peers.insert((peer.user_id.clone(), peer.device_id.clone()), false).is_some() {
            self.violations.push(format!("{call_id}: peer {}/{} added twice", peer.user_id, peer.device_id));
        }
        if peer.offerer && call.sfu.is_none() {
            let offer = MediaPayload::SdpOffer("offer".to_owned());
            if let Err(e) = engine.send_media_signal(now, call_id, &peer.user_id, &peer.device_id, offer) {
                self.violations.push(format!("{call_id}: cannot offer: {e}"));
            }
        }
    }

    /// Media flowed: the first frame of the call is reported (the engine decides whether it
    /// goes to the server).
    fn frame(&mut self, now: i64, engine: &mut ClientEngine, call_id: &CallId) {
        self.first_frames.insert(call_id.clone());
        engine.media_first_frame(now, call_id);
    }

    /// Whether media with `user`'s `device` is up in `call_id`.
    pub fn connected_with(&self, call_id: &CallId, user: &str, device: &str) -> bool {
        self.calls.get(call_id).is_some_and(|c| {
            c.peers.iter().any(|((u, d), up)| *up && u.as_str() == user && d.as_str() == device)
        })
    }

    /// Whether the connection to the SFU is up in `call_id` (its answer arrived).
    pub fn connected_to_sfu(&self, call_id: &CallId) -> bool {
        self.calls.get(call_id).is_some_and(|c| c.sfu.as_ref().is_some_and(|(_, up)| *up))
    }

    /// The peers of a running call, as `user/device` strings.
    pub fn peers(&self, call_id: &CallId) -> Vec<String> {
        self.calls
            .get(call_id)
            .map(|c| c.peers.keys().map(|(u, d)| format!("{u}/{d}")).collect())
            .unwrap_or_default()
    }
}
