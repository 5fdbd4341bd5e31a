//! The once-a-second [`MediaStats`] of a call, from each peer connection's `get_stats`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use callplus_session::CallId;
use webrtc::peer_connection::{PeerConnection, RTCStatsReportEntry, StatsSelector};

use super::peer::PeerShared;
use super::{Inner, NO_LEVEL, PeerKey, lock};
use crate::adapter::{MediaEvent, MediaStats, PeerStats};
use crate::level::level_from_mean_square;

/// Turns one peer's stats report into the numbers of a status report.
#[derive(Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) bytes: u64,
    pub(super) received: u64,
    pub(super) lost: i64,
    pub(super) at: Option<Instant>,
}

/// Periodic stats for one call.
pub(super) async fn stats_loop(inner: Weak<Inner>, call_id: CallId, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    let mut previous: HashMap<PeerKey, Counters> = HashMap::new();
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { break };
        let (local_user, peers) = {
            let state = inner.state.lock().await;
            let Some(call) = state.calls.get(&call_id) else { break };
            let peers: Vec<(PeerKey, Arc<dyn PeerConnection>, Arc<PeerShared>)> = call
                .peers
                .iter()
                .filter(|(_, p)| p.shared.connected.load(Ordering::Acquire))
                .map(|(k, p)| (k.clone(), Arc::clone(&p.pc), Arc::clone(&p.shared)))
                .collect();
            (call.local_user.clone(), peers)
        };
        let mut per_peer = Vec::new();
        let (mut loss_sum, mut loss_n, mut rtt_sum, mut rtt_n) = (0.0, 0u32, 0.0, 0u32);
        for (key, pc, shared) in &peers {
            let now = Instant::now();
            let report = pc.get_stats(now, StatsSelector::None).await;
            let mut current = Counters { at: Some(now), ..Counters::default() };
            let (send_loss, rtcp_rtt, keyframe_requests_received) = {
                let mut reports = lock(&shared.reports);
                let (loss, rtt) = reports.take();
                (loss, rtt, reports.take_keyframe_requests())
            };
            if let Some(loss) = send_loss {
                loss_sum += loss;
                loss_n += 1;
            }
            let mut ice_rtt = None::<f64>;
            for entry in report.iter() {
                match entry {
                    RTCStatsReportEntry::InboundRtp(s) => {
                        current.bytes += s.bytes_received + s.header_bytes_received;
                        current.received += s.received_rtp_stream_stats.packets_received;
                        current.lost += s.received_rtp_stream_stats.packets_lost;
                    }
                    RTCStatsReportEntry::IceCandidatePair(s)
                        if s.nominated && s.current_round_trip_time > 0.0 =>
                    {
                        ice_rtt = Some(s.current_round_trip_time * 1000.0);
                    }
                    _ => {}
                }
            }
            // The receive paths wait for retransmissions and key frames by it; a peer that sends
            // us nothing has no RTCP RTT, but the ICE one is as good.
            lock(&shared.reports).ice_rtt = ice_rtt.map(|ms| Duration::from_secs_f64(ms / 1000.0));
            if let Some(rtt) = rtcp_rtt.map(|d| d.as_secs_f64() * 1000.0).or(ice_rtt) {
                rtt_sum += rtt;
                rtt_n += 1;
            }
            let before = previous.get(key).copied().unwrap_or_default();
            let elapsed = before.at.map(|at| now.duration_since(at).as_secs_f64()).unwrap_or(0.0);
            let bitrate_kbps = if elapsed > 0.0 {
                current.bytes.saturating_sub(before.bytes) as f64 * 8.0 / elapsed / 1000.0
            } else {
                0.0
            };
            let got = current.received.saturating_sub(before.received) as f64;
            let lost = (current.lost - before.lost).max(0) as f64;
            let recv_loss_pct = if got + lost > 0.0 { lost / (got + lost) * 100.0 } else { 0.0 };
            previous.insert(key.clone(), current);
            per_peer.push(PeerStats {
                user: key.0.clone(),
                device: key.1.clone(),
                recv_loss_pct,
                bitrate_kbps,
                keyframe_requests_sent: shared.plis_sent.swap(0, Ordering::Relaxed),
                keyframe_requests_received,
                video_packets_recovered: shared.video_recovered.swap(0, Ordering::Relaxed),
                video_packets_lost: shared.video_lost.swap(0, Ordering::Relaxed),
            });

            let levels = std::mem::take(&mut *lock(&shared.levels));
            for (user, (sum, n)) in levels {
                if n > 0 {
                    shared.emit(MediaEvent::AudioLevel {
                        call_id: call_id.clone(),
                        user,
                        level: level_from_mean_square(sum / n as f64),
                    });
                }
            }
        }
        previous.retain(|k, _| peers.iter().any(|(p, _, _)| p == k));
        if peers.is_empty() {
            continue;
        }
        let level = inner.local_level.load(Ordering::Acquire);
        if level != NO_LEVEL {
            let _ = inner.events.send(MediaEvent::AudioLevel {
                call_id: call_id.clone(),
                user: local_user,
                level,
            });
        }
        let _ = inner.events.send(MediaEvent::Stats(MediaStats {
            call_id: call_id.clone(),
            send_loss_pct: if loss_n > 0 { loss_sum / f64::from(loss_n) } else { 0.0 },
            rtt_ms: (rtt_n > 0).then(|| rtt_sum / f64::from(rtt_n)),
            per_peer,
        }));
    }
}
