// The browser's media for callplus calls: carries out the engine's media commands on
// RTCPeerConnections and getUserMedia, and reports what the connections produce (SDP, ICE
// candidates, first frames) back through hooks. It decides nothing: who offers, when media
// starts and stops, and which devices are on all come from the engine's commands.
//
// Every peer connection negotiates one audio and one video transceiver, whatever the call's
// media type (as callplus-media does), so AUDIO <-> AUDIO_VIDEO changes swap tracks without
// renegotiation.
//
// A MULTI call whose `start` names an SFU opens ONE connection, to the SFU's signalling address:
// it offers (publishing audio and video once) with the call's media token as an SDP session
// attribute, answers the SFU's later offers (which add or drop other participants' tracks), and
// tells remote tracks apart by their stream id, which is the publishing user's id. `addPeer` and
// `removePeer` of participants open and close nothing there.
//
// Through the SFU the page opens the `callplus-sfu` data channel, on which it tells the SFU which
// layer of each publisher's video it wants (`setVideoView(…, isTiny)`):
// `{"type":"video_view","user":"alice","tiny":true}`, every choice so far when the channel
// opens, later ones as they are made. The page's own video goes to the SFU twice (rid "f", the
// full layer, and rid "q", the tiny one at half the width and height); with the option
// `simulcast: false`, and in every mesh call, it sends one encoding. The SFU sends back, on
// the same channel, every participant's audio level and the active speaker
// (`{"type":"audio_levels","levels":{"alice":0.42},"active_speaker":"alice"}`, levels 0-1, when
// they change, at most five times a second): they become `audioLevel` (0-100, for every user
// whose level changed, this page's own user too) and `activeSpeaker` hooks, and replace the
// once-a-second levels read from getStats for that call.

import { TINY_RID, applyMaxBitrate, audioConstraints, videoConstraints } from './config.js';

const KIND_AUDIO = 'AUDIO';

/** An error carrying one of the SPEC's result codes, as the client reports it (`{code, name, message}`). */
function sdkError(code, name, message) {
  return new Error(JSON.stringify({ code, name, message }));
}

const KIND_VIDEO = 'VIDEO';

/** The SDP session attribute carrying the media token to the SFU (callplus-session's media_token). */
const MEDIA_TOKEN_ATTRIBUTE = 'x-callplus-media-token';

/** The label of the data channel to the SFU that carries layer choices (callplus-sfu's CONTROL_LABEL). */
export const SFU_CONTROL_LABEL = 'callplus-sfu';

/** Longest control message read from the SFU; longer ones are ignored. */
const MAX_CONTROL_MESSAGE = 64 * 1024;

/**
 * The SFU's audio levels message as `{levels: Map(userId -> 0-100), speaker: userId | null}`, or
 * null for any other message.
 */
export function parseAudioLevels(text) {
  if (typeof text !== 'string' || text.length > MAX_CONTROL_MESSAGE) return null;
  let m;
  try { m = JSON.parse(text); } catch (_) { return null; }
  if (!m || m.type !== 'audio_levels' || typeof m.levels !== 'object' || m.levels === null) return null;
  const levels = new Map();
  for (const [userId, level] of Object.entries(m.levels)) {
    if (typeof level === 'number' && Number.isFinite(level)) levels.set(userId, Math.round(Math.min(Math.max(level, 0), 1) * 100));
  }
  const speaker = typeof m.active_speaker === 'string' ? m.active_speaker : null;
  return { levels, speaker };
}

/** The video sender's encodings to the SFU: the full layer and the tiny one (a quarter of the pixels). */
export const SFU_SEND_ENCODINGS = Object.freeze([
  Object.freeze({ rid: 'f' }),
  Object.freeze({ rid: TINY_RID, scaleResolutionDownBy: 2 }),
]);

/** The control message choosing `userId`'s tiny (`true`) or full video layer. */
export function videoViewMessage(userId, tiny) {
  return JSON.stringify({ type: 'video_view', user: userId, tiny: !!tiny });
}

/**
 * `sdp` with `a=x-callplus-media-token:<token>` right after the `t=` line, where session
 * attributes begin (appended when there is none), in the SDP's own line ending.
 */
export function attachMediaToken(sdp, token) {
  const eol = sdp.includes('\r\n') ? '\r\n' : '\n';
  const line = `a=${MEDIA_TOKEN_ATTRIBUTE}:${token}${eol}`;
  const parts = sdp.split(/(?<=\n)/);
  const at = parts.findIndex((part) => part.startsWith('t='));
  if (at >= 0) {
    parts.splice(at + 1, 0, line);
    return parts.join('');
  }
  const body = sdp && !sdp.endsWith('\n') ? sdp + eol : sdp;
  return body + line;
}

function iceServers(list) {
  return (list || []).map((s) => {
    const out = { urls: s.urls };
    if (s.username) out.username = s.username;
    if (s.credential) out.credential = s.credential;
    return out;
  });
}

/** One peer device of the running call. */
class Peer {
  constructor(userId, deviceId, offerer, pc) {
    this.userId = userId;
    this.deviceId = deviceId;
    this.offerer = offerer;
    this.pc = pc;
    /** Candidates that came before the remote description. */
    this.pendingCandidates = [];
    this.audio = null;
    this.video = null;
  }
}

export class MediaExecutor {
  /**
   * @param hooks {signal(callId, toUser, toDevice, kind, text, sdpMid, mLineIndex),
   *   firstFrame(callId), userMediaAvailable(userId, kind), audioLevel(userId, level),
   *   activeSpeaker(callId, userId | null),
   *   sendPacketLoss(rate, delay), receivePacketLoss(map), error(userId, message)}
   */
  constructor(hooks, options = {}) {
    this.hooks = hooks;
    /** Whether the video to an SFU goes in two encodings (the tiny layer too): unless turned off. */
    this.simulcast = options.simulcast !== false;
    this.queue = Promise.resolve();
    this.call = null;
    this.localUser = null;
    this.localStream = new MediaStream();
    this.micEnabled = true;
    this.camEnabled = true;
    this.cameraId = undefined;
    this.microphoneId = undefined;
    /** Capture settings (setVideoConfig / setAudioConfig), used at the next capture. */
    this.videoConfig = {};
    this.audioConfig = {};
    /** userId -> HTMLVideoElement the app chose (setVideoView). */
    this.views = new Map();
    /**
     * userId -> whether the app wants that user's tiny video layer (setVideoView's isTiny); kept
     * across calls, sent to the SFU of every call that goes through one.
     */
    this.tiny = new Map();
    /** userId -> {videoStream, audio: HTMLAudioElement} of remote users. */
    this.remotes = new Map();
    this.remoteAudioMuted = false;
    this.statsTimer = null;
    this.lastStats = new Map();
  }

  /**
   * Runs a media command after the ones before it. A `stop` marks the call ended at once: the
   * engine has ended it, and the app, told so in the same turn, must find no call behind the
   * getters (the active speaker) while earlier commands, a renegotiation say, still run.
   */
  handle(command) {
    const ending = command.type === 'stop' && this.currentCall(command.callId);
    if (ending) ending.ended = true;
    this.queue = this.queue
      .then(() => this.run(command))
      .catch((e) => this.hooks.error?.(null, `${command.type}: ${e && e.message ? e.message : e}`));
    return this.queue;
  }

  async run(c) {
    switch (c.type) {
      case 'start': return this.start(c);
      case 'addPeer': return this.call && this.call.callId === c.callId ? this.addPeer(c.peer) : undefined;
      case 'removePeer': return this.removePeer(c.userId, c.deviceId);
      case 'setMediaType': return this.setMediaType(c.mediaType);
      case 'applySignal': return this.applySignal(c);
      case 'setDevice': return this.setDevice(c.kind, c.enabled);
      case 'stop': return this.stop(c.callId);
      default: return undefined;
    }
  }

  // ----- local media ------------------------------------------------------------------------

  track(kind) {
    const list = kind === KIND_AUDIO ? this.localStream.getAudioTracks() : this.localStream.getVideoTracks();
    return list[0] || null;
  }

  /** Opens the microphone (and the camera for AUDIO_VIDEO) unless already open. */
  async ensureLocal(mediaType) {
    const wantVideo = mediaType === 'AUDIO_VIDEO';
    const constraints = {};
    if (!this.track(KIND_AUDIO)) constraints.audio = audioConstraints(this.audioConfig, this.microphoneId);
    if (wantVideo && !this.track(KIND_VIDEO)) constraints.video = videoConstraints(this.videoConfig, this.cameraId);
    if (!constraints.audio && !constraints.video) return;
    const stream = await navigator.mediaDevices.getUserMedia(constraints);
    for (const t of stream.getTracks()) this.localStream.addTrack(t);
    this.showLocal();
    this.hooks.userMediaAvailable?.(this.localUser, wantVideo ? 'AUDIO_VIDEO' : 'AUDIO');
  }

  /** Local preview before the call connects (called on startCall/accept). */
  prepare(localUser, mediaType) {
    this.localUser = localUser;
    this.queue = this.queue.then(() => this.ensureLocal(mediaType)).catch((e) => this.hooks.error?.(localUser, `${e}`));
  }

  dropVideo() {
    for (const t of this.localStream.getVideoTracks()) {
      t.stop();
      this.localStream.removeTrack(t);
    }
  }

  showLocal() {
    const el = this.localUser && this.views.get(this.localUser);
    if (el && el.srcObject !== this.localStream) {
      el.muted = true;
      el.srcObject = this.localStream;
    }
  }

  /** What a sender sends: the track of its kind when that device is on. */
  sendTrack(kind) {
    if (kind === KIND_AUDIO) return this.micEnabled ? this.track(KIND_AUDIO) : null;
    return this.camEnabled && this.call && this.call.mediaType === 'AUDIO_VIDEO' ? this.track(KIND_VIDEO) : null;
  }

  async refreshSenders() {
    if (!this.call) return;
    const jobs = [];
    for (const peer of this.call.peers.values()) {
      if (peer.audio) jobs.push(peer.audio.sender.replaceTrack(this.sendTrack(KIND_AUDIO)));
      if (peer.video) jobs.push(peer.video.sender.replaceTrack(this.sendTrack(KIND_VIDEO)));
    }
    await Promise.all(jobs);
    await this.applyBitrates();
  }

  /** The configured maximum bitrates on every sender that has a track. */
  async applyBitrates() {
    if (!this.call) return;
    await Promise.all([...this.call.peers.values()].map((peer) => this.applyPeerBitrates(peer)));
  }

  async applyPeerBitrates(peer) {
    if (peer.audio) await applyMaxBitrate(peer.audio.sender, this.audioConfig.maxBitrate);
    if (peer.video) await applyMaxBitrate(peer.video.sender, this.videoConfig.maxBitrate);
  }

  /** Keeps capture settings for the next capture; bitrate bounds apply to the senders now. */
  async setConfig(kind, config) {
    if (kind === KIND_AUDIO) this.audioConfig = { ...config }; else this.videoConfig = { ...config };
    await this.applyBitrates();
  }

  async switchDevice(kind, deviceId) {
    if (kind === KIND_AUDIO) this.microphoneId = deviceId; else this.cameraId = deviceId;
    const old = this.track(kind);
    if (!old) return;
    const stream = await navigator.mediaDevices.getUserMedia(kind === KIND_AUDIO
      ? { audio: audioConstraints(this.audioConfig, deviceId) } : { video: videoConstraints(this.videoConfig, deviceId) });
    const fresh = kind === KIND_AUDIO ? stream.getAudioTracks()[0] : stream.getVideoTracks()[0];
    fresh.enabled = kind === KIND_AUDIO ? this.micEnabled : this.camEnabled;
    this.localStream.removeTrack(old);
    old.stop();
    this.localStream.addTrack(fresh);
    await this.refreshSenders();
    this.hooks.userMediaAvailable?.(this.localUser, kind === KIND_AUDIO ? 'AUDIO' : 'AUDIO_VIDEO');
  }

  // ----- commands ---------------------------------------------------------------------------

  async start(c) {
    if (this.call) await this.stop(this.call.callId);
    this.localUser = c.localUser;
    this.micEnabled = c.microphoneEnabled;
    this.camEnabled = c.cameraEnabled;
    this.call = {
      callId: c.callId, mediaType: c.mediaType, iceServers: iceServers(c.iceServers), peers: new Map(), firstFrame: false,
      // Through the SFU: its address and our token; `senders` maps a received track's id and its
      // transceiver's mid to the user whose media it carries (for statistics).
      sfu: c.sfu ? { userId: c.sfu.userId, deviceId: c.sfu.deviceId, token: c.sfu.token } : null,
      senders: new Map(),
      /** The data channel to the SFU (layer choices out, audio levels in). */
      control: null,
      /** Through the SFU, once it sent levels: what was last reported of them (userId -> 0-100). */
      sfuLevels: null,
      /** The active speaker last reported; undefined before the SFU's first levels. */
      speaker: undefined,
    };
    if (c.mediaType !== 'AUDIO_VIDEO') this.dropVideo();
    await this.ensureLocal(c.mediaType);
    if (this.call.sfu) {
      const sfu = this.call.sfu;
      await this.connect({ userId: sfu.userId, deviceId: sfu.deviceId, offerer: true });
    } else {
      for (const p of c.peers) await this.addPeer(p);
    }
    this.statsTimer = setInterval(() => { this.report().catch(() => {}); }, 1000);
  }

  key(userId, deviceId) { return `${userId}/${deviceId}`; }

  /** Connects to a peer device of a mesh; through the SFU, its offers bring the peer's media. */
  async addPeer(p) {
    if (!this.call || this.call.sfu) return null;
    return this.connect(p);
  }

  /** Opens the peer connection to a device (a peer's, or the SFU's), offering if ours to. */
  async connect(p) {
    const call = this.call;
    if (!call) return null;
    const key = this.key(p.userId, p.deviceId);
    if (call.peers.has(key)) return call.peers.get(key);
    const pc = new RTCPeerConnection({ iceServers: call.iceServers });
    const peer = new Peer(p.userId, p.deviceId, p.offerer, pc);
    call.peers.set(key, peer);
    pc.onicecandidate = (e) => {
      if (e.candidate && e.candidate.candidate) {
        this.hooks.signal(call.callId, p.userId, p.deviceId, 'candidate', e.candidate.candidate,
          e.candidate.sdpMid || '', e.candidate.sdpMLineIndex || 0);
      }
    };
    pc.ontrack = (e) => {
      if (!call.sfu) {
        this.remoteTrack(peer.userId, e.track);
        return;
      }
      // Through the SFU the stream id names the publisher.
      const userId = e.streams[0] && e.streams[0].id;
      if (!userId || userId === this.localUser) return;
      call.senders.set(`track:${e.track.id}`, userId);
      if (e.transceiver && e.transceiver.mid !== null) call.senders.set(`mid:${e.transceiver.mid}`, userId);
      this.remoteTrack(userId, e.track);
    };
    if (p.offerer) {
      peer.audio = pc.addTransceiver('audio', { direction: 'sendrecv' });
      // To the SFU, two encodings (simulcast) when enabled; to a peer, one.
      peer.video = call.sfu && this.simulcast
        ? pc.addTransceiver('video', { direction: 'sendrecv', sendEncodings: SFU_SEND_ENCODINGS.map((e) => ({ ...e })) })
        : pc.addTransceiver('video', { direction: 'sendrecv' });
      // In the first offer, so that the SFU's connection has it from the start.
      if (call.sfu) this.openControl(call, pc);
      await peer.audio.sender.replaceTrack(this.sendTrack(KIND_AUDIO));
      await peer.video.sender.replaceTrack(this.sendTrack(KIND_VIDEO));
      await this.applyPeerBitrates(peer);
      const offer = await pc.createOffer();
      await pc.setLocalDescription(offer);
      const sdp = call.sfu ? attachMediaToken(pc.localDescription.sdp, call.sfu.token) : pc.localDescription.sdp;
      this.hooks.signal(call.callId, p.userId, p.deviceId, 'offer', sdp, '', 0);
    }
    return peer;
  }

  /** Opens the data channel to the SFU; once open, it carries every layer choice made so far. */
  openControl(call, pc) {
    const channel = pc.createDataChannel(SFU_CONTROL_LABEL);
    call.control = channel;
    channel.onopen = () => {
      if (this.call !== call) return;
      for (const [userId, tiny] of this.tiny) channel.send(videoViewMessage(userId, tiny));
    };
    channel.onmessage = (e) => this.onControlMessage(call, e.data);
  }

  /**
   * A message from the SFU: audio levels become `audioLevel` for each user whose level changed
   * and `activeSpeaker` when the speaker changed (and with the first levels); others are ignored.
   */
  onControlMessage(call, data) {
    if (this.call !== call || call.ended) return;
    const message = parseAudioLevels(data);
    if (!message) return;
    const last = call.sfuLevels || (call.sfuLevels = new Map());
    for (const [userId, level] of message.levels) {
      if (last.get(userId) === level) continue;
      last.set(userId, level);
      this.hooks.audioLevel?.(userId, level);
    }
    for (const userId of [...last.keys()]) if (!message.levels.has(userId)) last.delete(userId);
    if (call.speaker !== message.speaker) {
      call.speaker = message.speaker;
      this.hooks.activeSpeaker?.(call.callId, message.speaker);
    }
  }

  /** Through the SFU, the call's active speaker (null before anyone spoke, or outside a call). */
  activeSpeaker() {
    return (this.call && !this.call.ended && this.call.speaker) || null;
  }

  /** Remembers which layer of `userId`'s video the app wants and tells the SFU if the call has one. */
  setTiny(userId, tiny) {
    this.tiny.set(userId, tiny);
    const channel = this.call && this.call.control;
    if (channel && channel.readyState === 'open') channel.send(videoViewMessage(userId, tiny));
  }

  async removePeer(userId, deviceId) {
    if (!this.call) return;
    const key = this.key(userId, deviceId);
    const peer = this.call.peers.get(key);
    if (!peer) {
      // A participant left a call through the SFU (which drops its tracks in its next offer).
      if (this.call.sfu && userId !== this.localUser) this.dropRemote(userId);
      return;
    }
    peer.pc.close();
    this.call.peers.delete(key);
    if (![...this.call.peers.values()].some((q) => q.userId === userId)) this.dropRemote(userId);
  }

  async applySignal(c) {
    if (!this.call || this.call.callId !== c.callId) return;
    const key = this.key(c.fromUser, c.fromDevice);
    let peer = this.call.peers.get(key);
    const s = c.signal;
    if (!peer) {
      if (s.kind !== 'offer' || this.call.sfu) return;
      peer = await this.addPeer({ userId: c.fromUser, deviceId: c.fromDevice, offerer: false });
    }
    const pc = peer.pc;
    if (s.kind === 'offer') {
      await pc.setRemoteDescription({ type: 'offer', sdp: s.sdp });
      // Through the SFU our two sending transceivers are those of our first offer; the SFU's
      // offers add receive-only ones, which stay so.
      if (!this.call.sfu) {
        for (const t of pc.getTransceivers()) {
          const kind = t.receiver.track.kind;
          if (kind === 'audio' && !peer.audio) peer.audio = t;
          if (kind === 'video' && !peer.video) peer.video = t;
          t.direction = 'sendrecv';
        }
      }
      await this.refreshSenders();
      const answer = await pc.createAnswer();
      await pc.setLocalDescription(answer);
      this.hooks.signal(this.call.callId, peer.userId, peer.deviceId, 'answer', pc.localDescription.sdp, '', 0);
      await this.flushCandidates(peer);
    } else if (s.kind === 'answer') {
      await pc.setRemoteDescription({ type: 'answer', sdp: s.sdp });
      await this.flushCandidates(peer);
    } else if (s.kind === 'candidate') {
      const candidate = { candidate: s.candidate, sdpMid: s.sdpMid || null, sdpMLineIndex: s.sdpMLineIndex };
      if (pc.remoteDescription) await pc.addIceCandidate(candidate);
      else peer.pendingCandidates.push(candidate);
    }
  }

  async flushCandidates(peer) {
    const list = peer.pendingCandidates;
    peer.pendingCandidates = [];
    for (const c of list) await peer.pc.addIceCandidate(c);
  }

  async setMediaType(mediaType) {
    if (!this.call) return;
    this.call.mediaType = mediaType;
    if (mediaType === 'AUDIO_VIDEO') await this.ensureLocal(mediaType);
    else this.dropVideo();
    await this.refreshSenders();
  }

  async setDevice(kind, enabled) {
    if (kind === KIND_AUDIO) this.micEnabled = enabled; else this.camEnabled = enabled;
    const t = this.track(kind);
    if (t) t.enabled = enabled;
    await this.refreshSenders();
  }

  /** The current call, if `callId` names it or is not given; otherwise null. */
  currentCall(callId) {
    return this.call && (!callId || this.call.callId === callId) ? this.call : null;
  }

  async stop(callId) {
    if (!this.currentCall(callId)) return;
    for (const peer of this.call.peers.values()) peer.pc.close();
    this.call = null;
    clearInterval(this.statsTimer);
    this.statsTimer = null;
    this.lastStats.clear();
    for (const userId of [...this.remotes.keys()]) this.dropRemote(userId);
    for (const t of this.localStream.getTracks()) {
      t.stop();
      this.localStream.removeTrack(t);
    }
    const el = this.localUser && this.views.get(this.localUser);
    if (el) el.srcObject = null;
  }

  // ----- remote media -----------------------------------------------------------------------

  remote(userId) {
    let r = this.remotes.get(userId);
    if (!r) {
      const audio = document.createElement('audio');
      audio.autoplay = true;
      audio.muted = this.remoteAudioMuted;
      if (this.audioOutput && audio.setSinkId) audio.setSinkId(this.audioOutput).catch(() => {});
      r = { videoStream: new MediaStream(), audioStream: new MediaStream(), audio };
      audio.srcObject = r.audioStream;
      this.remotes.set(userId, r);
    }
    return r;
  }

  remoteTrack(userId, track) {
    const r = this.remote(userId);
    const stream = track.kind === 'audio' ? r.audioStream : r.videoStream;
    for (const old of (track.kind === 'audio' ? stream.getAudioTracks() : stream.getVideoTracks())) stream.removeTrack(old);
    stream.addTrack(track);
    if (track.kind === 'video') this.attachView(userId);
    const call = this.call;
    const available = () => {
      if (this.call !== call) return;
      if (call && !call.firstFrame) {
        call.firstFrame = true;
        this.hooks.firstFrame(call.callId);
      }
      this.hooks.userMediaAvailable?.(userId, track.kind === 'audio' ? 'AUDIO' : 'AUDIO_VIDEO');
    };
    if (track.muted) track.addEventListener('unmute', available, { once: true });
    else available();
  }

  attachView(userId) {
    const el = this.views.get(userId);
    const r = this.remotes.get(userId);
    if (el && r && el.srcObject !== r.videoStream) {
      el.muted = true; // the user's sound plays from its own audio element
      el.srcObject = r.videoStream;
    }
  }

  dropRemote(userId) {
    const r = this.remotes.get(userId);
    if (!r) return;
    r.audio.srcObject = null;
    this.remotes.delete(userId);
    const el = this.views.get(userId);
    if (el) el.srcObject = null;
  }

  /**
   * Where `userId`'s video plays, and (through an SFU) in which layer: the tiny one when
   * `isTiny`. The choice is kept for later calls too.
   */
  setView(userId, element, isTiny = false) {
    if (userId !== this.localUser) this.setTiny(userId, !!isTiny);
    if (element) this.views.set(userId, element); else this.views.delete(userId);
    if (!element) return;
    element.autoplay = true;
    element.playsInline = true;
    if (userId === this.localUser) this.showLocal(); else this.attachView(userId);
  }

  /** Stops showing `userId`'s video in its element, and forgets the element. */
  removeView(userId) {
    const el = this.views.get(userId);
    this.views.delete(userId);
    if (el) el.srcObject = null;
  }

  async play(userId, mediaType) {
    const jobs = [];
    const el = this.views.get(userId);
    if (el && mediaType !== 'AUDIO') jobs.push(el.play());
    const r = this.remotes.get(userId);
    if (r && userId !== this.localUser) jobs.push(r.audio.play());
    try {
      await Promise.all(jobs);
    } catch (e) {
      throw sdkError(80104, 'PLAY_MEDIA_FAILED', `the browser did not play ${userId}'s media: ${e && e.message ? e.message : e}`);
    }
    if (!el && mediaType !== 'AUDIO') {
      throw sdkError(80105, 'VIDEO_VIEW_NOT_SET', `no video view for ${userId}: setVideoView first`);
    }
  }

  /** Every remote user's sound, now and in later calls, on output device `deviceId`. */
  async setAudioOutput(deviceId) {
    const probe = document.createElement('audio');
    if (typeof probe.setSinkId !== 'function') {
      throw sdkError(80102, 'MEDIA_RESOURCE_INVALID', 'this browser cannot choose the audio output');
    }
    await Promise.all([...this.remotes.values()].map((r) => r.audio.setSinkId(deviceId)));
    this.audioOutput = deviceId;
  }

  /** A user's received audio and video tracks as one stream (for analysis or recording). */
  remoteStream(userId) {
    const r = this.remotes.get(userId);
    return r ? new MediaStream([...r.audioStream.getTracks(), ...r.videoStream.getTracks()]) : null;
  }

  muteAllRemoteAudio(mute) {
    this.remoteAudioMuted = mute;
    for (const r of this.remotes.values()) r.audio.muted = mute;
  }

  // ----- statistics -------------------------------------------------------------------------

  /**
   * Per remote user: what was received ({audio, video}) from `getStats`, summed over devices.
   * Through the SFU, the one connection's inbound streams are told apart by whose track they feed.
   */
  async stats() {
    const out = {};
    const call = this.call;
    if (!call) return out;
    for (const peer of call.peers.values()) {
      const entry = (userId) => out[userId] || (out[userId] = {
        audio: { packetsReceived: 0, packetsLost: 0, bytesReceived: 0, totalAudioEnergy: 0, audioLevel: 0 },
        video: { packetsReceived: 0, packetsLost: 0, bytesReceived: 0, framesDecoded: 0, frameWidth: 0, frameHeight: 0 },
        connectionState: peer.pc.connectionState,
        roundTripTime: 0, fractionLost: 0,
      });
      const users = new Set(call.sfu ? [] : [peer.userId]);
      for (const u of users) entry(u);
      let roundTripTime = 0;
      let fractionLost = 0;
      const report = await peer.pc.getStats();
      report.forEach((s) => {
        if (s.type === 'inbound-rtp' && (s.kind === 'audio' || s.kind === 'video')) {
          const userId = call.sfu
            ? call.senders.get(`track:${s.trackIdentifier}`) || call.senders.get(`mid:${s.mid}`)
            : peer.userId;
          if (!userId) return;
          users.add(userId);
          const k = entry(userId)[s.kind];
          k.packetsReceived += s.packetsReceived || 0;
          k.packetsLost += s.packetsLost || 0;
          k.bytesReceived += s.bytesReceived || 0;
          if (s.kind === 'audio') {
            k.totalAudioEnergy += s.totalAudioEnergy || 0;
            k.audioLevel = Math.max(k.audioLevel, s.audioLevel || 0);
          } else {
            k.framesDecoded += s.framesDecoded || 0;
            k.frameWidth = Math.max(k.frameWidth, s.frameWidth || 0);
            k.frameHeight = Math.max(k.frameHeight, s.frameHeight || 0);
          }
        } else if (s.type === 'remote-inbound-rtp') {
          roundTripTime = Math.max(roundTripTime, s.roundTripTime || 0);
          fractionLost = Math.max(fractionLost, s.fractionLost || 0);
        }
      });
      // What the far end reports of our sending is the link's (the SFU's, for everyone through it).
      for (const u of users) {
        const e = out[u];
        e.roundTripTime = Math.max(e.roundTripTime, roundTripTime);
        e.fractionLost = Math.max(e.fractionLost, fractionLost);
      }
    }
    return out;
  }

  /** Once a second: audio levels and packet loss, as the seed's status reports. */
  async report() {
    const stats = await this.stats();
    const receive = {};
    let sendLoss = 0;
    let delay = 0;
    // Through the SFU, once it sends levels, they come from it alone.
    const levelsFromSfu = !!(this.call && this.call.sfuLevels);
    for (const [userId, s] of Object.entries(stats)) {
      if (!levelsFromSfu) this.hooks.audioLevel?.(userId, Math.round(s.audio.audioLevel * 100));
      const last = this.lastStats.get(userId);
      const received = s.audio.packetsReceived + s.video.packetsReceived;
      const lost = s.audio.packetsLost + s.video.packetsLost;
      const bytes = s.audio.bytesReceived + s.video.bytesReceived;
      if (last) {
        const dr = received - last.received;
        const dl = lost - last.lost;
        receive[userId] = {
          packetLostRate: dr + dl > 0 ? Math.round((100 * dl) / (dr + dl)) : 0,
          bitRate: Math.round(((bytes - last.bytes) * 8) / 1000),
        };
      }
      this.lastStats.set(userId, { received, lost, bytes });
      sendLoss = Math.max(sendLoss, Math.round(s.fractionLost * 100));
      delay = Math.max(delay, Math.round(s.roundTripTime * 1000));
    }
    this.hooks.sendPacketLoss?.(sendLoss, delay);
    if (Object.keys(receive).length) this.hooks.receivePacketLoss?.(receive);
  }
}
