//! Media decisions of the client engine: which devices a call's media connects to, who sends the
//! SDP offer, when media starts, grows, shrinks, changes type and stops, where inbound SDP/ICE
//! goes, and when the first frame is reported.
//!
//! The engine decides and a driver executes: every decision comes out of
//! [`ClientEngine::poll_media`](super::ClientEngine::poll_media) as a [`MediaCommand`], so the
//! async Rust client, the C ABI and a browser page all run the same media logic and only carry
//! out commands on their WebRTC stack.
//!
//! The plan is derived, not tracked event by event: whenever the driver polls, the engine
//! compares what media *should* run (every call connected on this device, with every other
//! participant that is connected and named the device it is in the call on) with what it last
//! told the driver, and emits the difference. Snapshots after a resume, joins, leaves, device
//! changes and media-type changes all go through the same comparison, so none can be missed.

use std::collections::{BTreeMap, VecDeque};

use crate::model::ids::{CallId, DeviceId, UserId};
use crate::model::kinds::{MediaKind, MediaType};
use crate::model::message::{MediaPayload, SfuRoute};
use crate::model::snapshot::IceServer;

/// SDP/ICE messages held per call while its media or the sending peer is not set up yet (they
/// can arrive between this device's answer and the server's confirmation of it).
const MAX_HELD_SIGNALS: usize = 64;
/// Calls for which early signals are held at once.
const MAX_CALLS_HOLDING: usize = 16;

/// The glare-free rule: of two devices, the one with the lexicographically smaller
/// `(user_id, device_id)` pair sends the SDP offer; the other answers.
///
/// Both ends compute it from the same two pairs, so exactly one offers and offers never cross.
/// `false` for a device paired with itself.
///
/// ```
/// use callplus_session::client::offers_to;
/// use callplus_session::{DeviceId, UserId};
/// let (alice, bob) = (UserId::new("alice")?, UserId::new("bob")?);
/// let (d1, d2) = (DeviceId::new("d1")?, DeviceId::new("d2")?);
/// assert!(offers_to((&alice, &d2), (&bob, &d1)));
/// assert!(!offers_to((&bob, &d1), (&alice, &d2)));
/// # Ok::<(), callplus_session::Error>(())
/// ```
pub fn offers_to(local: (&UserId, &DeviceId), remote: (&UserId, &DeviceId)) -> bool {
    (local.0.as_str(), local.1.as_str()) < (remote.0.as_str(), remote.1.as_str())
}

/// A remote device a call's media connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaPeer {
    /// The remote user.
    pub user_id: UserId,
    /// The device the remote user is in the call on.
    pub device_id: DeviceId,
    /// Whether this device sends the SDP offer (else it waits for the peer's offer and answers).
    pub offerer: bool,
}

/// One thing the driver's media stack must do, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub enum MediaCommand {
    /// The call connected on this device: set up media with these peers. Turn the microphone
    /// and camera on or off as the flags say, open the microphone (and, for AUDIO_VIDEO, the
    /// camera), create one peer connection per peer and send the offers this side owes.
    Start {
        /// The call.
        call_id: CallId,
        /// This user.
        local_user: UserId,
        /// This device.
        local_device: DeviceId,
        /// AUDIO or AUDIO_VIDEO.
        media_type: MediaType,
        /// The other participants' devices (possibly none yet, in a group call).
        peers: Vec<MediaPeer>,
        /// STUN/TURN servers from the server's Welcome.
        ice_servers: Vec<IceServer>,
        /// Whether the microphone sends.
        microphone_enabled: bool,
        /// Whether the camera sends.
        camera_enabled: bool,
        /// `Some`: a MULTI call whose media goes through the SFU. Open one peer connection, to
        /// the SFU's address, and offer to it with the token; `peers` are the other
        /// participants (their media arrives on that connection), `AddPeer`/`RemovePeer` open
        /// and close nothing, and every `ApplySignal` comes from the SFU. `None`: a mesh.
        sfu: Option<SfuRoute>,
    },
    /// A participant connected (or reconnected on another device): connect to its device.
    AddPeer {
        /// The call.
        call_id: CallId,
        /// The new peer.
        peer: MediaPeer,
    },
    /// A participant left, or moved to another device: close the connection to this device.
    RemovePeer {
        /// The call.
        call_id: CallId,
        /// The remote user.
        user_id: UserId,
        /// The device to disconnect from.
        device_id: DeviceId,
    },
    /// The call's media type changed (an accepted change request): start or stop video.
    SetMediaType {
        /// The call.
        call_id: CallId,
        /// The new media type.
        media_type: MediaType,
    },
    /// SDP or ICE from a peer device of a call whose media runs: apply it.
    ApplySignal {
        /// The call.
        call_id: CallId,
        /// The sending user.
        from_user: UserId,
        /// The sending device.
        from_device: DeviceId,
        /// What it sent.
        payload: MediaPayload,
    },
    /// The app turned the local microphone (audio) or camera (video) on or off.
    SetDevice {
        /// Which device.
        kind: MediaKind,
        /// On or off.
        enabled: bool,
    },
    /// The call is over on this device: close its media and release its sinks.
    Stop {
        /// The call.
        call_id: CallId,
    },
}

impl MediaCommand {
    /// The call the command is about; `None` for [`MediaCommand::SetDevice`].
    pub fn call_id(&self) -> Option<&CallId> {
        match self {
            MediaCommand::Start { call_id, .. }
            | MediaCommand::AddPeer { call_id, .. }
            | MediaCommand::RemovePeer { call_id, .. }
            | MediaCommand::SetMediaType { call_id, .. }
            | MediaCommand::ApplySignal { call_id, .. }
            | MediaCommand::Stop { call_id } => Some(call_id),
            MediaCommand::SetDevice { .. } => None,
        }
    }
}

/// What should run for one call, as the engine's sessions say: computed by the engine and
/// handed to [`MediaPlan::reconcile`].
#[derive(Debug, Clone)]
pub(super) struct WantedMedia {
    pub(super) call_id: CallId,
    pub(super) local_user: UserId,
    pub(super) media_type: MediaType,
    /// Connected remote users and the device each is in the call on.
    pub(super) peers: BTreeMap<UserId, DeviceId>,
    pub(super) microphone_enabled: bool,
    pub(super) camera_enabled: bool,
    /// The SFU the call's media goes through, if any.
    pub(super) sfu: Option<SfuRoute>,
}

/// What the driver was told for one call.
#[derive(Debug, Clone)]
struct RunningMedia {
    media_type: MediaType,
    /// The SFU route, when the media goes through it (signals come from its address).
    sfu: Option<SfuRoute>,
    peers: BTreeMap<UserId, DeviceId>,
    first_frame_reported: bool,
}

impl RunningMedia {
    /// Whether signals from this device are for the call's media: the SFU's, when the media
    /// goes through it; else a current peer's.
    fn sends(&self, user: &UserId, device: &DeviceId) -> bool {
        match &self.sfu {
            Some(route) => &route.user_id == user && &route.device_id == device,
            None => self.peers.get(user) == Some(device),
        }
    }
}

/// A signal kept until its call's media (or its sender's peer) is set up.
#[derive(Debug, Clone)]
struct HeldSignal {
    from_user: UserId,
    from_device: DeviceId,
    payload: MediaPayload,
}

/// The media commands already decided, and what the driver was told so far.
#[derive(Debug, Clone, Default)]
pub(super) struct MediaPlan {
    running: BTreeMap<CallId, RunningMedia>,
    held: BTreeMap<CallId, VecDeque<HeldSignal>>,
    commands: VecDeque<MediaCommand>,
}

impl MediaPlan {
    pub(super) fn pop(&mut self) -> Option<MediaCommand> {
        self.commands.pop_front()
    }

    /// Whether the driver was told to run media for this call.
    pub(super) fn runs(&self, call_id: &CallId) -> bool {
        self.running.contains_key(call_id)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub(super) fn push(&mut self, command: MediaCommand) {
        self.commands.push_back(command);
    }

    /// Marks the first remote frame of a call as reported; `true` the first time only, and only
    /// while the call's media runs.
    pub(super) fn first_frame(&mut self, call_id: &CallId) -> bool {
        match self.running.get_mut(call_id) {
            Some(media) if !media.first_frame_reported => {
                media.first_frame_reported = true;
                true
            }
            _ => false,
        }
    }

    /// A signal from a peer device. Applied at once when it comes from a current peer of a
    /// running call; held when `may_hold` (the call is live here and its media or that peer
    /// may still come); otherwise dropped.
    pub(super) fn signal(
        &mut self,
        call_id: &CallId,
        from_user: UserId,
        from_device: DeviceId,
        payload: MediaPayload,
        may_hold: bool,
    ) {
        let from_peer = self.running.get(call_id).is_some_and(|media| media.sends(&from_user, &from_device));
        if from_peer {
            self.commands.push_back(MediaCommand::ApplySignal {
                call_id: call_id.clone(),
                from_user,
                from_device,
                payload,
            });
            return;
        }
        if !may_hold || (!self.held.contains_key(call_id) && self.held.len() >= MAX_CALLS_HOLDING) {
            return;
        }
        let held = self.held.entry(call_id.clone()).or_default();
        if held.len() < MAX_HELD_SIGNALS {
            held.push_back(HeldSignal { from_user, from_device, payload });
        }
    }

    /// Emits what it takes to go from what runs to `wanted` (every call whose media should
    /// run on this device, in call-id order), and forgets held signals of calls in neither
    /// `wanted` nor `live`.
    pub(super) fn reconcile(
        &mut self,
        local_device: &DeviceId,
        ice_servers: &[IceServer],
        wanted: Vec<WantedMedia>,
        live: &dyn Fn(&CallId) -> bool,
    ) {
        let wanted: BTreeMap<CallId, WantedMedia> =
            wanted.into_iter().map(|w| (w.call_id.clone(), w)).collect();
        let stopped: Vec<CallId> =
            self.running.keys().filter(|id| !wanted.contains_key(*id)).cloned().collect();
        for call_id in stopped {
            self.running.remove(&call_id);
            self.held.remove(&call_id);
            self.commands.push_back(MediaCommand::Stop { call_id });
        }
        for (call_id, want) in wanted {
            if self.running.get(&call_id).is_some_and(|running| running.sfu != want.sfu) {
                // The call's media moves (a SINGLE call, or a mesh that outgrew the mesh size,
                // became a group through the SFU), or the server sent a fresh route because
                // this device's SFU connection failed: the connections it had close and it
                // starts again on the new route, with the new token.
                self.running.remove(&call_id);
                self.commands.push_back(MediaCommand::Stop { call_id: call_id.clone() });
            }
            match self.running.get_mut(&call_id) {
                None => {
                    let peers = want
                        .peers
                        .iter()
                        .map(|(user, device)| peer(&want.local_user, local_device, user, device))
                        .collect();
                    self.commands.push_back(MediaCommand::Start {
                        call_id: call_id.clone(),
                        local_user: want.local_user.clone(),
                        local_device: local_device.clone(),
                        media_type: want.media_type,
                        peers,
                        ice_servers: ice_servers.to_vec(),
                        microphone_enabled: want.microphone_enabled,
                        camera_enabled: want.camera_enabled,
                        sfu: want.sfu.clone(),
                    });
                    self.running.insert(
                        call_id.clone(),
                        RunningMedia {
                            media_type: want.media_type,
                            sfu: want.sfu,
                            peers: want.peers,
                            first_frame_reported: false,
                        },
                    );
                }
                Some(running) => {
                    let gone: Vec<(UserId, DeviceId)> = running
                        .peers
                        .iter()
                        .filter(|(user, device)| want.peers.get(*user) != Some(*device))
                        .map(|(u, d)| (u.clone(), d.clone()))
                        .collect();
                    for (user_id, device_id) in gone {
                        running.peers.remove(&user_id);
                        self.commands.push_back(MediaCommand::RemovePeer {
                            call_id: call_id.clone(),
                            user_id,
                            device_id,
                        });
                    }
                    for (user, device) in &want.peers {
                        if running.peers.contains_key(user) {
                            continue;
                        }
                        running.peers.insert(user.clone(), device.clone());
                        self.commands.push_back(MediaCommand::AddPeer {
                            call_id: call_id.clone(),
                            peer: peer(&want.local_user, local_device, user, device),
                        });
                    }
                    if running.media_type != want.media_type {
                        running.media_type = want.media_type;
                        self.commands.push_back(MediaCommand::SetMediaType {
                            call_id: call_id.clone(),
                            media_type: want.media_type,
                        });
                    }
                }
            }
            self.release_held(&call_id);
        }
        self.held.retain(|id, _| live(id));
    }

    /// Applies the held signals of a running call that now come from a current peer; drops
    /// those from a device the user is no longer in the call on.
    fn release_held(&mut self, call_id: &CallId) {
        let Some(running) = self.running.get(call_id) else { return };
        let Some(held) = self.held.get_mut(call_id) else { return };
        let mut keep = VecDeque::new();
        while let Some(signal) = held.pop_front() {
            if running.sfu.is_some() {
                if running.sends(&signal.from_user, &signal.from_device) {
                    self.commands.push_back(MediaCommand::ApplySignal {
                        call_id: call_id.clone(),
                        from_user: signal.from_user,
                        from_device: signal.from_device,
                        payload: signal.payload,
                    });
                }
                continue;
            }
            match running.peers.get(&signal.from_user) {
                Some(device) if *device == signal.from_device => {
                    self.commands.push_back(MediaCommand::ApplySignal {
                        call_id: call_id.clone(),
                        from_user: signal.from_user,
                        from_device: signal.from_device,
                        payload: signal.payload,
                    });
                }
                Some(_) => {}
                None => keep.push_back(signal),
            }
        }
        if keep.is_empty() {
            self.held.remove(call_id);
        } else {
            *held = keep;
        }
    }
}

fn peer(local_user: &UserId, local_device: &DeviceId, user: &UserId, device: &DeviceId) -> MediaPeer {
    MediaPeer {
        user_id: user.clone(),
        device_id: device.clone(),
        offerer: offers_to((local_user, local_device), (user, device)),
    }
}
