//! Several SFU processes behind one server (`serve --sfu-url URL,URL,…`): each call's media is
//! placed on one of them, and a call whose SFU is lost moves to another.
//!
//! Placement happens at a call's first SFU work: the attached SFU carrying the fewest of this
//! server's participant connections gets it (the first listed on a tie), and keeps it until the
//! call ends. Participants, not calls, because an SFU's work grows with the connections it
//! terminates and the streams it forwards: one 16-party call weighs more than ten 1:1 calls
//! moved there by a switch to MULTI. A call counts its members as they join, so a call placed
//! early and grown since weighs what it has become. Each SFU
//! has its own relay stream ([`super::media_relay_remote`]), which says when it attaches and when
//! it is lost. When one is lost while another is attached, its calls are moved at once: the
//! lost stream forgets them (so it does not report them again when it comes back), and every
//! participant device of those calls is reported failed, so the switchboard routes each afresh
//! (a new token, a new connection) and the new signals land on a live SFU. With no other SFU
//! attached the calls stay placed, and recover when their SFU attaches again, as with one SFU.

use std::collections::{HashMap, HashSet};

use callplus_session::{CallId, DeviceId, UserId};
use tokio::sync::mpsc;

use super::driver::{DriverHandle, Input};
use super::media_relay::SfuCommand;
use super::media_relay_remote::{self, LinkState};
use crate::relay::RemoteSfu;

/// Where each call's media is, and who is in it.
#[derive(Debug, Default)]
struct Placement {
    /// Per SFU (by index in the list): attached now.
    attached: Vec<bool>,
    /// The SFU each live call is on.
    calls: HashMap<CallId, usize>,
    /// The participant devices each call has sent the SFU work for.
    members: HashMap<CallId, HashSet<(UserId, DeviceId)>>,
}

impl Placement {
    fn new(sfus: usize) -> Self {
        Placement { attached: vec![false; sfus], ..Placement::default() }
    }

    /// The SFU `call` is on, placing it first if it is new.
    fn place(&mut self, call: &CallId) -> usize {
        if let Some(&sfu) = self.calls.get(call) {
            return sfu;
        }
        // Each call weighs its participant devices (at least one: it is about to get its first).
        let load = |sfu: usize| -> usize {
            self.calls
                .iter()
                .filter(|&(_, &on)| on == sfu)
                .map(|(id, _)| self.members.get(id).map_or(0, HashSet::len).max(1))
                .sum()
        };
        let all = 0..self.attached.len();
        let attached: Vec<usize> = all.clone().filter(|&i| self.attached[i]).collect();
        // With none attached the work waits on some SFU's stream, as it would with one SFU.
        let candidates: Vec<usize> = if attached.is_empty() { all.collect() } else { attached };
        let sfu = candidates.into_iter().min_by_key(|&i| (load(i), i)).unwrap_or(0);
        self.calls.insert(call.clone(), sfu);
        sfu
    }

    /// Keeps the call's members up to date with `command`, which is about to go to its SFU.
    fn note(&mut self, command: &SfuCommand) {
        match command {
            SfuCommand::Signal { call_id, user, device, .. } => {
                self.members.entry(call_id.clone()).or_default().insert((user.clone(), device.clone()));
            }
            SfuCommand::Leave { call_id, user, device } => {
                if let Some(members) = self.members.get_mut(call_id) {
                    members.remove(&(user.clone(), device.clone()));
                }
            }
            SfuCommand::EndCall { call_id } => {
                self.members.remove(call_id);
                self.calls.remove(call_id);
            }
            SfuCommand::Pause { .. } => {}
        }
    }

    /// SFU `lost` went away: when another is attached, unplaces its calls and returns them with
    /// their members, to be moved; otherwise nothing (they wait for it to come back).
    fn lose(&mut self, lost: usize) -> Vec<(CallId, HashSet<(UserId, DeviceId)>)> {
        if let Some(state) = self.attached.get_mut(lost) {
            *state = false;
        }
        if !self.attached.iter().any(|&a| a) {
            return Vec::new();
        }
        let moving: Vec<CallId> =
            self.calls.iter().filter(|&(_, &sfu)| sfu == lost).map(|(call, _)| call.clone()).collect();
        moving
            .into_iter()
            .map(|call| {
                self.calls.remove(&call);
                let members = self.members.remove(&call).unwrap_or_default();
                (call, members)
            })
            .collect()
    }
}

/// Runs until the driver is gone: one relay stream per SFU, and the placement in between.
pub(crate) async fn run(
    remotes: Vec<RemoteSfu>,
    mut rx: mpsc::UnboundedReceiver<SfuCommand>,
    driver: DriverHandle,
) {
    let (state_tx, mut states) = mpsc::unbounded_channel();
    let mut links = Vec::with_capacity(remotes.len());
    for (index, remote) in remotes.iter().enumerate() {
        let (tx, link_rx) = mpsc::unbounded_channel();
        let report = state_tx.clone();
        let on_state = move |state: LinkState| {
            let _ = report.send((index, state));
        };
        tokio::spawn(media_relay_remote::run(remote.clone(), link_rx, driver.clone(), on_state));
        links.push(tx);
    }
    drop(state_tx);
    let mut placement = Placement::new(remotes.len());
    loop {
        tokio::select! {
            command = rx.recv() => {
                let Some(command) = command else { return };
                let sfu = placement.place(command.call_id());
                placement.note(&command);
                if let Some(link) = links.get(sfu) {
                    let _ = link.send(command);
                }
            }
            Some((sfu, state)) = states.recv() => match state {
                LinkState::Attached => {
                    if let Some(attached) = placement.attached.get_mut(sfu) {
                        *attached = true;
                    }
                }
                LinkState::Lost => {
                    let moving = placement.lose(sfu);
                    if !moving.is_empty() {
                        let url = remotes.get(sfu).map(|r| r.url.as_str()).unwrap_or_default();
                        tracing::warn!(%url, calls = moving.len(), "lost an SFU; moving its calls to another");
                    }
                    for (call_id, members) in moving {
                        // The lost stream forgets the call, so it is not reported again later.
                        if let Some(link) = links.get(sfu) {
                            let _ = link.send(SfuCommand::EndCall { call_id: call_id.clone() });
                        }
                        for (user, device) in members {
                            let input =
                                Input::SfuConnection { call_id: call_id.clone(), user, device, connected: false };
                            if !driver.send(input).await {
                                return;
                            }
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn call(id: &str) -> CallId {
        CallId::new(id).unwrap()
    }

    fn signal(call_id: &str, user: &str) -> SfuCommand {
        SfuCommand::Signal {
            call_id: call(call_id),
            user: UserId::new(user).unwrap(),
            device: DeviceId::new("d").unwrap(),
            payload: callplus_session::MediaPayload::SdpOffer(String::new()),
        }
    }

    #[test]
    fn calls_go_to_the_least_loaded_attached_sfu_and_stay_there() {
        let mut p = Placement::new(3);
        p.attached = vec![true, false, true];
        assert_eq!(p.place(&call("a")), 0);
        assert_eq!(p.place(&call("b")), 2, "the detached SFU gets nothing");
        assert_eq!(p.place(&call("c")), 0);
        assert_eq!(p.place(&call("a")), 0, "a call stays where it is");
        p.note(&SfuCommand::EndCall { call_id: call("a") });
        p.note(&SfuCommand::EndCall { call_id: call("c") });
        assert_eq!(p.place(&call("d")), 0, "ended calls no longer count");
    }

    #[test]
    fn a_big_call_weighs_its_participants() {
        let mut p = Placement::new(2);
        p.attached = vec![true, true];
        for user in ["u1", "u2", "u3", "u4", "u5"] {
            let command = signal("big", user);
            p.place(command.call_id());
            p.note(&command);
        }
        assert_eq!(p.calls[&call("big")], 0);
        assert_eq!(p.place(&call("x")), 1);
        assert_eq!(p.place(&call("y")), 1, "two calls of one on SFU 1 weigh less than five on SFU 0");
        for user in ["u1", "u2", "u3", "u4", "u5"] {
            p.note(&signal("x", user));
        }
        assert_eq!(p.place(&call("z")), 0, "x grew to five: SFU 1 carries six, SFU 0 five");
    }

    #[test]
    fn with_none_attached_work_still_has_a_place() {
        let mut p = Placement::new(2);
        assert_eq!(p.place(&call("a")), 0);
        assert_eq!(p.place(&call("b")), 1);
    }

    #[test]
    fn a_lost_sfus_calls_move_with_their_members_only_when_another_is_attached() {
        let mut p = Placement::new(2);
        p.attached = vec![true, true];
        for (c, user) in [("a", "alice"), ("a", "bob"), ("b", "carol")] {
            let command = signal(c, user);
            p.place(command.call_id());
            p.note(&command);
        }
        assert_eq!((p.calls[&call("a")], p.calls[&call("b")]), (0, 1));
        p.note(&SfuCommand::Leave {
            call_id: call("a"),
            user: UserId::new("bob").unwrap(),
            device: DeviceId::new("d").unwrap(),
        });
        let moved = p.lose(0);
        assert_eq!(moved.len(), 1);
        assert_eq!(moved[0].0, call("a"));
        let users: Vec<&str> = moved[0].1.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(users, ["alice"], "bob left before");
        assert_eq!(p.place(&call("a")), 1, "placed again on the live SFU");

        // The last SFU lost: nowhere to move to, so its calls wait for it.
        assert!(p.lose(1).is_empty());
        assert_eq!(p.calls[&call("b")], 1);
    }
}
