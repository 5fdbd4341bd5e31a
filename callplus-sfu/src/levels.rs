//! Audio levels and the active speaker of a call, from the publishers' RFC 6464 audio-level
//! header extension (`urn:ietf:params:rtp-hdrext:ssrc-audio-level`): nothing is decoded.
//!
//! Sans-IO: [`CallLevels`] takes levels and the time from its caller and says what to tell the
//! subscribers ([`AudioLevels`], sent on the control data channel). Each publisher's level is
//! held at its peaks for [`HOLD`] and then decays with a [`HALF_LIFE`] (a level meter, not a per-packet value), so
//! a publisher that stops sending falls silent by itself. The active speaker is the loudest
//! publisher above [`THRESHOLD`]; another takes over only after being the loudest for
//! [`DWELL`], so the speaker does not flap between two voices; it stays the last one through
//! silence.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use callplus_session::UserId;
use serde::{Deserialize, Serialize};

/// The URI of the RFC 6464 client-to-mixer audio level header extension.
pub const AUDIO_LEVEL_URI: &str = "urn:ietf:params:rtp-hdrext:ssrc-audio-level";
/// How often the SFU looks at the levels (and sends them if they changed).
pub const REPORT_INTERVAL: Duration = Duration::from_millis(200);
/// A peak is held this long (packets come every 20 ms; a steady tone must read steady)...
pub const HOLD: Duration = Duration::from_millis(100);
/// ...then halves in this time while its publisher stays quieter.
pub const HALF_LIFE: Duration = Duration::from_millis(150);
/// Below this level (0–1) nobody is speaking.
pub const THRESHOLD: f32 = 0.05;
/// How long a publisher must be the loudest before it becomes the active speaker.
pub const DWELL: Duration = Duration::from_millis(400);

/// The message the SFU sends each subscriber on the control channel:
/// `{"type":"audio_levels","levels":{"alice":0.42,"bob":0.0},"active_speaker":"alice"}`.
///
/// `levels` has every publisher of audio in the call (the subscriber itself included), 0–1 in
/// steps of 0.01 (linear amplitude: a full-scale sine is 1, as the Web SDK's levels);
/// `active_speaker` is `null` until someone has spoken.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "audio_levels")]
pub struct AudioLevels {
    /// Level per publisher user id.
    pub levels: BTreeMap<String, f32>,
    /// The active speaker's user id.
    pub active_speaker: Option<String>,
}

impl AudioLevels {
    /// The text sent on the channel.
    pub fn to_text(&self) -> String {
        // A derived Serialize of strings and finite floats cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads one message; `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<Self> {
        serde_json::from_slice(text).ok()
    }
}

/// The linear level (0–1) of an RFC 6464 value: the level in −dBov (0 loudest, 127 silence).
pub fn level_from_dbov(minus_dbov: u8) -> f32 {
    let minus_dbov = minus_dbov & 0x7f;
    if minus_dbov >= 127 {
        return 0.0;
    }
    10f32.powf(-f32::from(minus_dbov) / 20.0)
}

/// The extension id the offer `sdp` gives the audio level extension in its audio section.
pub fn audio_level_extension_id(sdp: &str) -> Option<u8> {
    let mut audio = false;
    for line in sdp.lines() {
        if let Some(media) = line.strip_prefix("m=") {
            audio = media.starts_with("audio");
        } else if audio
            && let Some(extmap) = line.strip_prefix("a=extmap:")
            && let Some((id, rest)) = extmap.split_once(' ')
            && rest.split_whitespace().next() == Some(AUDIO_LEVEL_URI)
        {
            // `a=extmap:<id>[/<direction>] <uri>`
            return id.split('/').next().and_then(|id| id.parse().ok());
        }
    }
    None
}

/// One publisher's level: held at its last peak, decaying from there.
#[derive(Debug, Clone, Copy)]
struct Meter {
    peak: f32,
    /// When the peak was reached (or last matched).
    at: Instant,
}

impl Meter {
    fn at(&self, now: Instant) -> f32 {
        let decaying = now.saturating_duration_since(self.at).saturating_sub(HOLD);
        self.peak * 0.5f32.powf(decaying.as_secs_f32() / HALF_LIFE.as_secs_f32())
    }
}

/// The levels of one call's publishers and its active speaker.
#[derive(Debug, Default)]
pub struct CallLevels {
    meters: HashMap<UserId, Option<Meter>>,
    paused: HashSet<UserId>,
    speaker: Option<UserId>,
    /// The loudest publisher that is not the speaker yet, and since when.
    candidate: Option<(UserId, Instant)>,
    last_sent: Option<AudioLevels>,
}

impl CallLevels {
    /// `user` publishes audio (reported at 0 until a level arrives).
    pub fn add(&mut self, user: &UserId) {
        self.meters.entry(user.clone()).or_insert(None);
    }

    /// `user` left the call.
    pub fn remove(&mut self, user: &UserId) {
        self.meters.remove(user);
        if self.speaker.as_ref() == Some(user) {
            self.speaker = None;
        }
        if self.candidate.as_ref().is_some_and(|(u, _)| u == user) {
            self.candidate = None;
        }
    }

    /// A level (0–1) from one of `user`'s packets.
    pub fn on_level(&mut self, user: &UserId, level: f32, now: Instant) {
        let level = level.clamp(0.0, 1.0);
        let meter = self.meters.entry(user.clone()).or_insert(None);
        match meter {
            Some(m) if m.at(now) > level => {} // still decaying from a louder peak
            _ => *meter = Some(Meter { peak: level, at: now }),
        }
    }

    /// The users whose microphone is off (signalled): silent whatever their packets say.
    pub fn set_paused(&mut self, paused: HashSet<UserId>) {
        self.paused = paused;
    }

    /// The levels now and the active speaker; `Some` when that differs from what was last
    /// returned (then it is sent to every subscriber).
    pub fn report(&mut self, now: Instant) -> Option<AudioLevels> {
        let levels: BTreeMap<&UserId, f32> = self
            .meters
            .iter()
            .map(|(user, meter)| {
                let level = match meter {
                    Some(m) if !self.paused.contains(user) => m.at(now),
                    _ => 0.0,
                };
                (user, (level * 100.0).round() / 100.0)
            })
            .collect();
        // The loudest above the threshold; ties go to the first user id.
        let loudest = levels
            .iter()
            .filter(|(_, level)| **level >= THRESHOLD)
            .fold(None::<(&UserId, f32)>, |best, (user, level)| match best {
                Some((_, top)) if top >= *level => best,
                _ => Some((*user, *level)),
            })
            .map(|(user, _)| user.clone());
        match loudest {
            Some(user) if self.speaker.as_ref() != Some(&user) => match &self.candidate {
                Some((candidate, since)) if *candidate == user => {
                    if now.saturating_duration_since(*since) >= DWELL {
                        self.speaker = Some(user);
                        self.candidate = None;
                    }
                }
                _ => self.candidate = Some((user, now)),
            },
            _ => self.candidate = None,
        }
        let report = AudioLevels {
            levels: levels.into_iter().map(|(user, level)| (user.to_string(), level)).collect(),
            active_speaker: self.speaker.as_ref().map(ToString::to_string),
        };
        if self.last_sent.as_ref() == Some(&report) {
            return None;
        }
        self.last_sent = Some(report.clone());
        Some(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid(s: &str) -> UserId {
        UserId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Feeds `levels` as 20 ms packets for `span` from `start`, reporting every
    /// [`REPORT_INTERVAL`]; the reports made.
    fn run(
        call: &mut CallLevels,
        start: Instant,
        span: Duration,
        levels: &[(&UserId, f32)],
    ) -> Vec<(Instant, AudioLevels)> {
        let mut reports = Vec::new();
        let mut t = Duration::ZERO;
        while t < span {
            let now = start + t;
            for (user, level) in levels {
                call.on_level(user, *level, now);
            }
            if t.as_millis().is_multiple_of(REPORT_INTERVAL.as_millis())
                && let Some(report) = call.report(now)
            {
                reports.push((now, report));
            }
            t += Duration::from_millis(20);
        }
        reports
    }

    #[test]
    fn dbov_and_sdp_ids() {
        assert_eq!(level_from_dbov(0), 1.0);
        assert!((level_from_dbov(20) - 0.1).abs() < 1e-6);
        assert_eq!(level_from_dbov(127), 0.0);
        assert_eq!(level_from_dbov(0x80 | 127), 0.0, "the voice bit is not level");
        let sdp = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=extmap:1 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
                   m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=extmap:4 urn:ietf:params:rtp-hdrext:sdes:mid\r\n\
                   a=extmap:7/sendrecv urn:ietf:params:rtp-hdrext:ssrc-audio-level vad=on\r\n";
        assert_eq!(audio_level_extension_id(sdp), Some(7));
        let video_only =
            "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=extmap:3 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n";
        assert_eq!(audio_level_extension_id(video_only), None);
    }

    #[test]
    fn the_loud_one_becomes_speaker_after_the_dwell_and_levels_are_reported() {
        let (alice, bob) = (uid("alice"), uid("bob"));
        let mut call = CallLevels::default();
        call.add(&bob);
        let t0 = Instant::now();
        let first = call.report(t0).unwrap_or_else(|| panic!("a first report"));
        assert_eq!(first.levels.get("bob"), Some(&0.0), "a publisher without packets is silent");
        assert_eq!(first.active_speaker, None);
        assert_eq!(call.report(t0 + REPORT_INTERVAL), None, "nothing changed, nothing sent");

        let reports = run(&mut call, t0, Duration::from_secs(1), &[(&alice, 0.5), (&bob, 0.01)]);
        let (at, became) = reports
            .iter()
            .find(|(_, r)| r.active_speaker.as_deref() == Some("alice"))
            .unwrap_or_else(|| panic!("alice never became the speaker: {reports:?}"));
        assert!(at.duration_since(t0) >= DWELL, "not before the dwell");
        assert!(at.duration_since(t0) < DWELL + 2 * REPORT_INTERVAL, "but soon after it");
        assert_eq!(became.levels.get("alice"), Some(&0.5));
        assert_eq!(became.levels.get("bob"), Some(&0.01));
        assert_eq!(
            reports.iter().filter(|(_, r)| r.active_speaker.is_some()).count(),
            1,
            "steady levels are sent once"
        );
        // JSON shape.
        let text = became.to_text();
        assert_eq!(
            text,
            r#"{"type":"audio_levels","levels":{"alice":0.5,"bob":0.01},"active_speaker":"alice"}"#
        );
        assert_eq!(AudioLevels::parse(text.as_bytes()).as_ref(), Some(became));
    }

    #[test]
    fn a_short_burst_does_not_take_over_and_silence_keeps_the_speaker() {
        let (alice, bob) = (uid("alice"), uid("bob"));
        let mut call = CallLevels::default();
        let t0 = Instant::now();
        run(&mut call, t0, Duration::from_secs(1), &[(&alice, 0.5), (&bob, 0.0)]);
        // Bob coughs for 100 ms, louder than alice.
        let t1 = t0 + Duration::from_secs(1);
        let burst = run(&mut call, t1, Duration::from_millis(100), &[(&alice, 0.5), (&bob, 0.9)]);
        let t2 = t1 + Duration::from_millis(100);
        let after = run(&mut call, t2, Duration::from_secs(1), &[(&alice, 0.5), (&bob, 0.0)]);
        assert!(
            burst.iter().chain(&after).all(|(_, r)| r.active_speaker.as_deref() == Some("alice")),
            "a burst shorter than the dwell does not move the speaker: {burst:?} {after:?}"
        );
        // Everyone silent: levels decay to 0, the speaker stays.
        let t3 = t2 + Duration::from_secs(1);
        let quiet = run(&mut call, t3, Duration::from_secs(2), &[(&alice, 0.0), (&bob, 0.0)]);
        let last = quiet.last().map(|(_, r)| r.clone()).unwrap_or_else(|| panic!("levels fell"));
        assert_eq!(last.levels.get("alice"), Some(&0.0));
        assert_eq!(last.active_speaker.as_deref(), Some("alice"));
        // Bob talks for longer than the dwell: he takes over.
        let t4 = t3 + Duration::from_secs(2);
        let bob_talks = run(&mut call, t4, Duration::from_secs(1), &[(&bob, 0.3)]);
        assert!(bob_talks.iter().any(|(_, r)| r.active_speaker.as_deref() == Some("bob")));
    }

    #[test]
    fn paused_or_gone_publishers_are_silent_and_levels_decay_without_packets() {
        let (alice, bob) = (uid("alice"), uid("bob"));
        let mut call = CallLevels::default();
        let t0 = Instant::now();
        run(&mut call, t0, Duration::from_secs(1), &[(&alice, 0.8), (&bob, 0.2)]);
        let t1 = t0 + Duration::from_secs(1);
        call.set_paused(HashSet::from([alice.clone()]));
        call.on_level(&alice, 0.8, t1);
        let report = call.report(t1).unwrap_or_else(|| panic!("alice's pause changes the levels"));
        assert_eq!(report.levels.get("alice"), Some(&0.0), "a paused microphone counts as silent");
        // Bob stops sending (his last packet 20 ms before t1): held for HOLD, then halving every
        // HALF_LIFE.
        let held = call.report(t1 + HOLD - Duration::from_millis(40));
        assert_eq!(held.map(|r| r.levels.get("bob").copied()), None, "held: nothing changed");
        let later = call.report(t1 + HOLD + HALF_LIFE).unwrap_or_else(|| panic!("bob's level fell"));
        let bob_level = later.levels.get("bob").copied().unwrap_or_default();
        assert!((0.08..=0.1).contains(&bob_level), "{bob_level}");
        call.remove(&alice);
        // (Before bob, the loudest now, has been so for the dwell.)
        let report = call.report(t1 + HOLD + HALF_LIFE + Duration::from_millis(10));
        let report = report.unwrap_or_else(|| panic!("alice left"));
        assert!(!report.levels.contains_key("alice"));
        assert_eq!(report.active_speaker, None, "the speaker who left is no longer the speaker");
    }
}
