// callplus for web pages: calls through a callplus server from the browser.
//
// `CallPlusClient` is shaped like the cloud SDKs' RCCallPlusClient: connect with a token, then
// startCall / accept / hangup / invite / joinCall, media-type changes, camera and microphone,
// video views, call records, and the same event callbacks. Every decision is the client
// engine's (the Rust sans-IO engine compiled to WebAssembly, in ./pkg/): this file only moves
// WebSocket messages, runs its timers on a monotonic clock, reconnects with backoff, and hands
// the engine's media commands to the RTCPeerConnection executor (./media.js).

import init, { Engine } from './pkg/callplus_web.js';
import { MediaExecutor } from './media.js';
import { AudioConfigBuilder, VideoConfigBuilder } from './config.js';

export { AudioConfigBuilder, VideoConfigBuilder, VideoFps, VideoResolution } from './config.js';

/** Result codes the SDK itself produces (the server's are passed through as they come). */
export const CallPlusCode = Object.freeze({
  SUCCESS: 0,
  NOT_CONNECTED: 81001,
});

export const CallType = Object.freeze({ SINGLE: 'SINGLE', MULTI: 'MULTI' });
export const MediaType = Object.freeze({ AUDIO: 'AUDIO', AUDIO_VIDEO: 'AUDIO_VIDEO' });
export const ConnectionState = Object.freeze({
  IDLE: 'IDLE', CONNECTING: 'CONNECTING', CONNECTED: 'CONNECTED',
  RECONNECTING: 'RECONNECTING', DISCONNECTED: 'DISCONNECTED', KICKED: 'KICKED',
});

/** The engine's clock: monotonic milliseconds. */
const now = () => performance.timeOrigin + performance.now();

let loading = null;

/** Loads and instantiates the WebAssembly engine once (`wasmUrl` overrides its location). */
export function loadEngine(wasmUrl) {
  if (!loading) loading = init(wasmUrl ? { module_or_path: wasmUrl } : undefined);
  return loading;
}

/** An error the engine threw (its message is `{code, name, message}` as JSON) as a result. */
function failure(e) {
  try {
    const parsed = JSON.parse(e.message);
    if (typeof parsed.code === 'number') return parsed;
  } catch (_) { /* not one of the engine's */ }
  return { code: -1, name: 'SDK_ERROR', message: String(e && e.message ? e.message : e) };
}

function notConnected(message) {
  return { code: CallPlusCode.NOT_CONNECTED, name: 'NOT_CONNECTED', message };
}

/** `ws://host:port/v1/ws` from `ws://`, `wss://`, `http://`, `https://` or `host:port`. */
export function webSocketUrl(server) {
  if (!server) {
    const secure = typeof location !== 'undefined' && location.protocol === 'https:';
    return `${secure ? 'wss' : 'ws'}://${location.host}/v1/ws`;
  }
  let url = server.includes('://') ? server : `ws://${server}`;
  url = url.replace(/^http:/, 'ws:').replace(/^https:/, 'wss:');
  const parsed = new URL(url);
  if (parsed.pathname === '/' || parsed.pathname === '') parsed.pathname = '/v1/ws';
  return parsed.toString();
}

function randomDeviceId() {
  const bytes = new Uint8Array(8);
  crypto.getRandomValues(bytes);
  return `web-${Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('')}`;
}

/** A call as the engine describes it, with the seed's getters. */
export class CallSession {
  #serverNow;
  /** `serverNow`: the server's clock now, in Unix ms (the engine measures the device's offset). */
  constructor(json, serverNow = Date.now) {
    Object.assign(this, json);
    this.#serverNow = serverNow;
  }
  getCallId() { return this.callId; }
  getCallType() { return this.callType; }
  getMediaType() { return this.mediaType; }
  getCallerUserId() { return this.creator; }
  /** The seed's name of `getCallerUserId`. */
  getCreatorUserId() { return this.creator; }
  getInviterUserId() { return this.inviter || this.creator; }
  getState() { return this.state; }
  getExtra() { return this.extra; }
  getUserList() { return this.participants.map((p) => ({ userId: p.userId, state: p.state })); }
  /** When the call was created, Unix ms (server clock). */
  getCreateTime() { return this.createdAt; }
  /** The seed's name of `getCreateTime`. */
  getCreateTimestamp() { return this.createdAt; }
  /** When the call connected (billing start), Unix ms, or null before. */
  getStartTime() { return this.startedAt ?? null; }
  /**
   * Talk time in ms: from the start to the end, or to now while the call lasts; 0 before it
   * connected. Counted on the server's clock, whatever the device's clock says.
   */
  getDuration() {
    if (this.startedAt == null) return 0;
    return Math.max(0, (this.endedAt ?? this.#serverNow()) - this.startedAt);
  }
}



export class CallPlusClient {
  #engine = null;
  #ws = null;
  #url = null;
  #wasmUrl;
  #deviceId;
  #clientVersion;
  #listener = {};
  #statusListener = {};
  #pending = new Map();
  #timer = null;
  #retryTimer = null;
  #backoffMin;
  #backoffMax;
  #connectTimeout;
  #backoff;
  #connectWaiter = null;
  #connecting = null;
  #finished = false;
  #pumping = false;
  #again = false;
  #media;

  /**
   * @param options {deviceId?, clientVersion?, wasmUrl?, reconnectBackoffMin?, reconnectBackoffMax?,
   *   connectTimeoutMs?, simulcast?} — this page's video goes to the SFU in two layers, so that
   *   others can view it tiny; `simulcast: false` sends one (less encoding work)
   */
  constructor(options = {}) {
    this.#deviceId = options.deviceId || randomDeviceId();
    this.#clientVersion = options.clientVersion || 'callplus-web/0.1.0';
    this.#wasmUrl = options.wasmUrl;
    this.#backoffMin = options.reconnectBackoffMin ?? 100;
    this.#backoffMax = options.reconnectBackoffMax ?? 5000;
    this.#backoff = this.#backoffMin;
    this.#connectTimeout = options.connectTimeoutMs ?? 10000;
    this.#media = new MediaExecutor({
      signal: (callId, toUser, toDevice, kind, text, sdpMid, mLineIndex) => {
        this.#input((t) => this.#engine.sendMediaSignal(t, callId, toUser, toDevice, kind, text, sdpMid, mLineIndex));
      },
      firstFrame: (callId) => this.#input((t) => this.#engine.mediaFirstFrame(t, callId)),
      userMediaAvailable: (userId, mediaType) => this.#emit('onUserMediaAvailable', userId, mediaType),
      audioLevel: (userId, level) => this.#emit('onUserAudioLevelChanged', userId, level),
      activeSpeaker: (callId, userId) => this.#emit('onActiveSpeakerChanged', callId, userId),
      sendPacketLoss: (rate, delay) => this.#statusListener.onSendPacketLoss?.(rate, delay),
      receivePacketLoss: (data) => this.#statusListener.onReceivePacketLoss?.(data),
      error: (userId, message) => this.#emit('onFetchRemoteMediaError', userId, message),
    }, { simulcast: options.simulcast });
  }

  /** This tab's device id (each `CallPlusClient` is one device of its user). */
  get deviceId() { return this.#deviceId; }

  /** The signed-in user, once connected. */
  get userId() { return this.#engine ? this.#engine.userId() ?? null : null; }

  setCallPlusEventListener(listener) { this.#listener = listener || {}; }

  setStatusReportListener(listener) { this.#statusListener = listener || {}; }

  getConnectionState() { return this.#engine ? this.#engine.connectionState() : ConnectionState.IDLE; }

  getCurrentCallSession() { return this.#engine ? this.#session(JSON.parse(this.#engine.currentCall() ?? 'null')) : null; }

  /**
   * Connects to `serverUrl` (`ws://host:port`, `https://…`; default: the page's own host) with a
   * token from `callplus token` or the app's backend. Resolves `{code: 0, userId}` once the
   * server welcomed this device, or `{code, name, message}`. Lost connections are resumed
   * inside; `onConnectionStateChanged` tells the app.
   */
  async connect(token, serverUrl) {
    await loadEngine(this.#wasmUrl);
    if (this.#connecting) return this.#connecting;
    if (this.#engine && !this.#finished) return { code: CallPlusCode.SUCCESS, userId: this.userId };
    try {
      this.#engine = new Engine(this.#deviceId, token, this.#clientVersion);
      this.#url = webSocketUrl(serverUrl);
    } catch (e) {
      return failure(e);
    }
    this.#finished = false;
    this.#backoff = this.#backoffMin;
    this.#connecting = new Promise((resolve) => {
      this.#connectWaiter = resolve;
      this.#open();
    });
    try {
      return await this.#connecting;
    } finally {
      this.#connecting = null;
    }
  }

  /** Says goodbye to the server and stops (the call, if any, ends for this device). */
  async disconnect() {
    if (!this.#engine || this.#finished) return { code: CallPlusCode.SUCCESS };
    this.#engine.disconnect(now());
    this.#pump();
    this.#finished = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#timer);
    const ws = this.#ws;
    this.#ws = null;
    if (ws) ws.close(1000);
    this.#failPending('disconnected');
    await this.#media.handle({ type: 'stop' });
    return { code: CallPlusCode.SUCCESS };
  }

  /** Replaces the token the next (re)connection presents. */
  setToken(token) { this.#engine?.setToken(token); }

  // ----- calls ------------------------------------------------------------------------------

  /**
   * `startCall({userIds, callType, mediaType, extra, pushConfig, ringTimeoutMs})`, or the
   * seed's positional `startCall(userIds, callType, mediaType, pushConfig?, extra?)`.
   * Resolves `{code, callId, busyUsers}`.
   */
  async startCall(arg, callType, mediaType, pushConfig, extra) {
    const o = Array.isArray(arg) ? { userIds: arg, callType, mediaType, pushConfig, extra } : (arg || {});
    const media = o.mediaType || MediaType.AUDIO;
    this.#media.prepare(this.userId, media);
    const push = o.pushConfig ? JSON.stringify(o.pushConfig) : '';
    const r = await this.#request((t) => this.#engine.startCall(t, o.userIds || [], o.callType || CallType.SINGLE,
      media, o.extra || '', o.ringTimeoutMs ?? -1, push));
    if (r.code !== CallPlusCode.SUCCESS) return r;
    return { code: r.code, callId: r.result.call.callId, busyUsers: r.result.busyUsers };
  }

  async accept(callId) {
    const call = this.getCurrentCallSession();
    this.#media.prepare(this.userId, call && call.callId === callId ? call.mediaType : MediaType.AUDIO);
    return this.#plain(await this.#request((t) => this.#engine.accept(t, callId)));
  }

  /**
   * Hangs up (or rejects) `callId`, by default the current call. `pushConfig` is for the "call
   * cancelled" push to callees who were pushed the invitation (the seed's `hangup(pushConfig)`).
   */
  async hangup(callId, pushConfig) {
    const push = pushConfig ? JSON.stringify(pushConfig) : '';
    return this.#plain(await this.#request((t) => this.#engine.hangup(t, callId || '', push)));
  }

  async joinCall(callId) { return this.#plain(await this.#request((t) => this.#engine.joinCall(t, callId))); }

  /** Invites users into the current call; resolves `{code, busyUsers}`. */
  async invite(userIds, options = {}) {
    const push = options.pushConfig ? JSON.stringify(options.pushConfig) : '';
    const r = await this.#request((t) => this.#engine.invite(t, userIds, options.extra || '', push));
    return r.code === CallPlusCode.SUCCESS ? { code: r.code, busyUsers: r.result?.busyUsers || [] } : r;
  }

  /** Resolves `{code, transactionId}`. */
  async requestChangeMediaType(mediaType) {
    const r = await this.#request((t) => this.#engine.requestChangeMediaType(t, mediaType));
    return r.code === CallPlusCode.SUCCESS ? { code: r.code, transactionId: r.result.transactionId } : r;
  }

  async cancelChangeMediaType(transactionId) {
    return this.#plain(await this.#request((t) => this.#engine.cancelChangeMediaType(t, transactionId)));
  }

  async replyChangeMediaType(transactionId, isAgree) {
    return this.#plain(await this.#request((t) => this.#engine.replyChangeMediaType(t, transactionId, !!isAgree)));
  }

  async startCamera() { return this.#plain(await this.#request((t) => this.#engine.setCameraEnabled(t, true))); }
  async stopCamera() { return this.#plain(await this.#request((t) => this.#engine.setCameraEnabled(t, false))); }
  async startMicrophone() { return this.#plain(await this.#request((t) => this.#engine.setMicrophoneEnabled(t, true))); }
  async stopMicrophone() { return this.#plain(await this.#request((t) => this.#engine.setMicrophoneEnabled(t, false))); }

  /**
   * Whether this page's microphone is on (`startMicrophone` / `stopMicrophone`): in a call, as
   * the server confirmed it (so it holds as soon as their promise resolves); outside one, the
   * capture setting.
   */
  isMicrophoneEnable() {
    const call = this.getCurrentCallSession();
    return call ? !!call.microphoneEnabled : this.#media.micEnabled;
  }

  /** A builder of the local video's capture settings (`setVideoConfig`). */
  createVideoConfigBuilder() { return new VideoConfigBuilder(); }

  /** A builder of the local audio's capture settings (`setAudioConfig`). */
  createAudioConfigBuilder() { return new AudioConfigBuilder(); }

  /**
   * Capture settings for the camera: resolution, frame rate and camera at the next capture (a
   * new call, a switched camera); the maximum bitrate on the current senders at once.
   */
  async setVideoConfig(config) { return this.#local(() => this.#media.setConfig('VIDEO', config || {})); }

  /** Capture settings for the microphone, as `setVideoConfig`. */
  async setAudioConfig(config) { return this.#local(() => this.#media.setConfig('AUDIO', config || {})); }

  async switchCamera(cameraId) { return this.#local(() => this.#media.switchDevice('VIDEO', cameraId)); }
  async switchMicrophone(microphoneId) { return this.#local(() => this.#media.switchDevice('AUDIO', microphoneId)); }

  /**
   * Where a user's video plays: `setVideoView(userId, element, isTiny?)` or the seed's
   * `setVideoView([{userId, videoElement, isTiny}])`. The local user's element shows the
   * preview. `isTiny` asks for that user's small video (a quarter of the pixels) in calls
   * through the SFU, for a small view; the choice holds, in later calls too, until the next
   * `setVideoView` of that user (peer-to-peer calls always carry the full video).
   */
  setVideoView(listOrUser, element, isTiny) {
    const list = Array.isArray(listOrUser) ? listOrUser : [{ userId: listOrUser, videoElement: element, isTiny }];
    for (const item of list) this.#media.setView(item.userId, item.videoElement, !!item.isTiny);
    return { code: CallPlusCode.SUCCESS };
  }

  /** Stops showing a user's video in the element given to `setVideoView`. */
  removeVideoView(userId) {
    this.#media.removeView(userId);
    return { code: CallPlusCode.SUCCESS };
  }

  /**
   * Plays a user's media (after `onUserMediaAvailable`); the local user's sound never plays.
   * `VIDEO_VIEW_NOT_SET` when video is asked for and the user has no view (their sound still
   * plays); `PLAY_MEDIA_FAILED` when the browser refuses to play (autoplay rules).
   */
  async playMedia(userId, mediaType) { return this.#local(() => this.#media.play(userId, mediaType)); }

  /** Plays every remote user's sound on the output device `deviceId` (`HTMLMediaElement.setSinkId`). */
  async setAudioOutput(deviceId) { return this.#local(() => this.#media.setAudioOutput(deviceId)); }

  muteAllRemoteAudio(mute) {
    this.#media.muteAllRemoteAudio(!!mute);
    return { code: CallPlusCode.SUCCESS };
  }

  /** A remote user's received audio and video as a MediaStream (null before any arrived). */
  getRemoteMediaStream(userId) { return this.#media.remoteStream(userId); }

  /** What was received from each remote user so far (getStats, summed over its devices). */
  getMediaStats() { return this.#media.stats(); }

  /** Through the SFU, the current call's active speaker (null before anyone spoke, or without one). */
  getActiveSpeaker() { return this.#media.activeSpeaker(); }

  // ----- call records -----------------------------------------------------------------------

  /**
   * A page of call records: `syncTime` -1 for the first; `order` 0 ascending (after
   * `syncTime`), 1 descending. Resolves `{code, result: {list, hasMore, syncTime}}`.
   */
  async getCallRecords(syncTime = -1, count = 20, order = 0) {
    const dir = order === 1 || order === 'DESC' ? 'DESC' : 'ASC';
    const r = await this.#request((t) => this.#engine.getCallRecords(t, syncTime, count, dir));
    if (r.code !== CallPlusCode.SUCCESS) return r;
    return { code: r.code, result: { list: r.result.records, hasMore: r.result.hasMore, syncTime: r.result.syncTime } };
  }

  async deleteCallRecords(callIds) {
    return this.#plain(await this.#request((t) => this.#engine.deleteCallRecords(t, callIds)));
  }

  async deleteAllCallRecords() { return this.#plain(await this.#request((t) => this.#engine.deleteAllCallRecords(t))); }

  /** The seed's name of `deleteCallRecords`. */
  deleteCallRecordsFromServer(callIds) { return this.deleteCallRecords(callIds); }

  /** The seed's name of `deleteAllCallRecords`. */
  deleteAllCallRecordsFromServer() { return this.deleteAllCallRecords(); }

  /** One call as the server sees it (one this user is or was in): `{code, call}`. */
  async getCall(callId) {
    const r = await this.#request((t) => this.#engine.getCall(t, callId));
    return r.code === CallPlusCode.SUCCESS ? { code: r.code, call: r.result } : r;
  }

  /** The SDK's version, once its engine is loaded. */
  async version() {
    await loadEngine(this.#wasmUrl);
    return Engine.sdkVersion();
  }

  /** The seed's name of `version`. */
  getVersion() { return this.version(); }

  /** Unended group calls this user can join: `{code, records}`. */
  async getAvailableCallRecordsFromServer() {
    const r = await this.#request((t) => this.#engine.getAvailableCalls(t));
    return r.code === CallPlusCode.SUCCESS ? { code: r.code, records: r.result.calls } : r;
  }

  getAvailableCalls() { return this.getAvailableCallRecordsFromServer(); }

  // ----- the engine's I/O -------------------------------------------------------------------

  /** A session object whose duration counts on the server's clock, as the engine measures it. */
  #session(json) {
    if (!json) return null;
    return new CallSession(json, () => (this.#engine ? this.#engine.serverTime(now()) : Date.now()));
  }

  #plain(r) { return r.code === CallPlusCode.SUCCESS ? { code: r.code } : r; }

  async #local(job) {
    try {
      await job();
      return { code: CallPlusCode.SUCCESS };
    } catch (e) {
      return failure(e);
    }
  }

  /** Runs an operation on the engine; resolves with its outcome `{code, result}` or error. */
  #request(op) {
    if (!this.#engine || this.#finished) return Promise.resolve(notConnected('not connected'));
    let id;
    try {
      id = op(now());
    } catch (e) {
      return Promise.resolve(failure(e));
    }
    const done = new Promise((resolve) => this.#pending.set(id, resolve));
    this.#pump();
    return done;
  }

  /** Feeds the engine something that has no outcome to wait for. */
  #input(op) {
    if (!this.#engine || this.#finished) return;
    try {
      op(now());
    } catch (e) {
      this.#emit('onFetchRemoteMediaError', null, failure(e).message);
    }
    this.#pump();
  }

  #emit(name, ...args) {
    const f = this.#listener[name];
    if (typeof f !== 'function') return;
    try {
      f.apply(this.#listener, args);
    } catch (e) {
      console.error(`callplus: ${name} threw`, e);
    }
  }

  #open() {
    let ws;
    try {
      ws = new WebSocket(this.#url, 'callplus.v1');
    } catch (e) {
      this.#lost(String(e));
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.#ws = ws;
    // A socket that neither opens nor fails (a silent network, a blocked URL) counts as lost.
    const opening = setTimeout(() => {
      if (this.#ws !== ws || ws.readyState === WebSocket.OPEN) return;
      this.#ws = null;
      ws.close();
      this.#lost('no answer to the WebSocket handshake');
    }, this.#connectTimeout);
    ws.onopen = () => {
      clearTimeout(opening);
      if (this.#ws !== ws) return;
      this.#engine.transportConnected(now());
      this.#pump();
    };
    ws.onmessage = (m) => {
      if (this.#ws !== ws || typeof m.data === 'string') return;
      try {
        this.#engine.handleFrame(now(), new Uint8Array(m.data));
      } catch (e) {
        console.warn('callplus: dropped a server frame', failure(e).message);
      }
      this.#pump();
    };
    ws.onclose = (e) => {
      clearTimeout(opening);
      if (this.#ws !== ws) return;
      this.#ws = null;
      this.#lost(`closed (${e.code})`);
    };
  }

  #stopped() {
    const s = this.#engine.connectionState();
    return s === ConnectionState.DISCONNECTED || s === ConnectionState.KICKED;
  }

  #lost(why) {
    if (this.#finished) return;
    if (this.#connectWaiter && this.#engine.connectionState() !== ConnectionState.CONNECTED) {
      // The first connection never got its Welcome: report instead of retrying.
      this.#engine.transportLost(now());
      this.#pump();
      this.#finish(notConnected(`connection lost: ${why}`));
      return;
    }
    if (this.#stopped()) {
      this.#finish(null);
      return;
    }
    this.#engine.transportLost(now());
    this.#pump();
    this.#scheduleRetry();
  }

  #scheduleRetry() {
    if (this.#finished || this.#retryTimer !== null || this.#ws) return;
    const delay = this.#backoff * (0.5 + Math.random() / 2);
    this.#backoff = Math.min(this.#backoff * 2, this.#backoffMax);
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      if (!this.#finished && !this.#ws) this.#open();
    }, delay);
  }

  #finish(result) {
    this.#finished = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#timer);
    const waiter = this.#connectWaiter;
    this.#connectWaiter = null;
    if (waiter) waiter(result || notConnected(this.#engine.connectionState()));
    this.#failPending(this.#engine.connectionState());
    this.#media.handle({ type: 'stop' });
  }

  #failPending(why) {
    const pending = [...this.#pending.values()];
    this.#pending.clear();
    for (const resolve of pending) resolve(notConnected(`request abandoned: ${why}`));
  }

  /** Drains the engine: frames out, media commands, request outcomes, events; then the timer. */
  #pump() {
    if (this.#pumping) {
      this.#again = true;
      return;
    }
    this.#pumping = true;
    try {
      do {
        this.#again = false;
        let progressed = false;
        for (let bytes = this.#engine.pollTransmit(); bytes; bytes = this.#engine.pollTransmit()) {
          progressed = true;
          if (this.#ws && this.#ws.readyState === WebSocket.OPEN) this.#ws.send(bytes);
        }
        const media = [];
        for (let c = this.#engine.pollMedia(); c; c = this.#engine.pollMedia()) media.push(JSON.parse(c));
        const driver = [];
        for (let d = this.#engine.pollDriverEvent(); d; d = this.#engine.pollDriverEvent()) driver.push(JSON.parse(d));
        const events = [];
        for (let e = this.#engine.pollEvent(); e; e = this.#engine.pollEvent()) events.push(JSON.parse(e));
        if (progressed || media.length || driver.length || events.length) this.#again = true;
        // Media first: an app reacting to callConnected finds the call's media on its way.
        for (const c of media) this.#media.handle(c);
        for (const d of driver) this.#onDriverEvent(d);
        for (const e of events) this.#route(e);
      } while (this.#again);
    } finally {
      this.#pumping = false;
    }
    this.#arm();
  }

  #arm() {
    clearTimeout(this.#timer);
    this.#timer = null;
    if (this.#finished) return;
    const at = this.#engine.pollTimeout();
    if (at === undefined || at === null) return;
    this.#timer = setTimeout(() => {
      this.#timer = null;
      if (this.#finished) return;
      this.#engine.handleTimeout(now());
      this.#pump();
    }, Math.max(0, at - now()));
  }

  #onDriverEvent(d) {
    if (d.type === 'requestCompleted') {
      const resolve = this.#pending.get(d.requestId);
      this.#pending.delete(d.requestId);
      if (resolve) resolve(d.error ? d.error : { code: CallPlusCode.SUCCESS, result: d.result });
    } else if (d.type === 'transportStale') {
      // The engine already counts the transport as lost: close it and try again.
      const ws = this.#ws;
      this.#ws = null;
      if (ws) ws.close(4000, 'stale');
      if (this.#connectWaiter) this.#finish(notConnected('no answer from the server'));
      else if (!this.#stopped()) this.#scheduleRetry();
    }
  }

  #route(e) {
    this.#emit('onEvent', e);
    switch (e.type) {
      case 'connectionStateChanged':
        this.#emit('onConnectionStateChanged', e.state, e.reason);
        if (e.state === ConnectionState.CONNECTED) {
          this.#backoff = this.#backoffMin;
          const waiter = this.#connectWaiter;
          this.#connectWaiter = null;
          if (waiter) waiter({ code: CallPlusCode.SUCCESS, userId: this.userId });
        } else if (e.state === ConnectionState.DISCONNECTED || e.state === ConnectionState.KICKED) {
          this.#finish(notConnected(e.state));
        }
        break;
      case 'connectionRejected': {
        const waiter = this.#connectWaiter;
        this.#connectWaiter = null;
        if (waiter) waiter(e.error);
        this.#emit('onConnectionRejected', e.error);
        break;
      }
      case 'receivedCall': {
        const s = this.#session(e.session);
        // The app is shown the call now: the caller sees this device ringing.
        try {
          this.#engine.ringing(now(), s.callId);
        } catch (err) {
          console.warn('callplus: ringing', failure(err).message);
        }
        this.#emit('onReceivedCall', s, e.extra, e.inviter);
        break;
      }
      case 'callConnected': this.#emit('onCallConnected', this.#session(e.session)); break;
      case 'callEnded': this.#emit('onCallEnded', this.#session(e.session), e.reason); break;
      case 'remoteUserStateChanged': this.#emit('onRemoteUserStateChanged', e.callId, e.userId, e.state, e.reason); break;
      case 'remoteUserInvited': this.#emit('onRemoteUserInvited', e.invitees, e.inviter, e.callId); break;
      case 'callTypeChanged': this.#emit('onCallTypeChanged', e.callType, e.callId); break;
      case 'remoteCameraStateChanged': this.#emit('onRemoteCameraStateChanged', e.callId, e.userId, e.disabled); break;
      case 'remoteMicrophoneStateChanged': this.#emit('onRemoteMicrophoneStateChanged', e.callId, e.userId, e.disabled); break;
      case 'receivedCallRecord': this.#emit('onReceivedCallRecord', e.record); break;
      case 'receivedCallPlusSummaryMessage': this.#emit('onReceivedCallPlusSummaryMessage', e.summary); break;
      case 'changeMediaTypeRequest': this.#emit('onReceivedChangeMediaTypeRequest', e.userId, e.transactionId, e.mediaType, e.callId); break;
      case 'changeMediaTypeResult':
        this.#emit('onReceivedChangeMediaTypeResult', {
          // `code` is the seed's name of the result; `result` is kept for earlier pages.
          callId: e.callId, userId: e.userId, transactionId: e.transactionId, mediaType: e.mediaType, code: e.result, result: e.result,
        });
        break;
      case 'callStartTime':
        this.#emit('onReceivedCallStartTime', { callId: e.callId, callType: e.callType, callStartTime: e.time });
        break;
      case 'callFirstFrameTime': this.#emit('onReceivedCallFirstFrameTime', e.callId, e.time); break;
      case 'deliveryChanged': this.#emit('onDeliveryChanged', e.callId, e.userId, e.delivery); break;
      default: break;
    }
  }
}
