// Types of the callplus Web SDK (index.js). Enum values are the protocol's names without their
// prefix ("ON_CALL", "AUDIO_VIDEO", "REMOTE_HANGUP"); times are milliseconds on the server's clock.

export type CallTypeName = 'SINGLE' | 'MULTI';
export type MediaTypeName = 'AUDIO' | 'AUDIO_VIDEO';
export type ConnectionStateName = 'IDLE' | 'CONNECTING' | 'CONNECTED' | 'RECONNECTING' | 'DISCONNECTED' | 'KICKED';
export type CallStateName = 'IDLE' | 'DIALING' | 'INCOMING' | 'CONNECTING' | 'ON_CALL' | 'ENDED';
export type ParticipantStateName = 'IDLE' | 'INCOMING' | 'RINGING' | 'CONNECTING' | 'ON_CALL' | 'ENDED';
/** `HANGUP`, `REMOTE_HANGUP`, `REJECT`, `NO_RESPONSE`, `ACCEPTED_ON_OTHER_DEVICE`, … */
export type EndReasonName = string;
export type DeliveryName = 'UNREACHABLE' | 'PUSHED' | 'DELIVERED' | 'RINGING';
export type DirectionName = 'OUTGOING' | 'INCOMING';
export type ChangeMediaTypeResultName = 'ACCEPTED' | 'CANCELLED' | 'REJECTED' | 'TIMEOUT' | 'CONFLICT';

export declare const CallPlusCode: Readonly<{ SUCCESS: 0; NOT_CONNECTED: 81001 }>;
export declare const CallType: Readonly<{ SINGLE: 'SINGLE'; MULTI: 'MULTI' }>;
export declare const MediaType: Readonly<{ AUDIO: 'AUDIO'; AUDIO_VIDEO: 'AUDIO_VIDEO' }>;
export declare const ConnectionState: Readonly<{ [K in ConnectionStateName]: K }>;

/** Capture resolutions: `W{width}_H{height}`. */
export type VideoResolutionName = 'W176_H144' | 'W320_H180' | 'W320_H240' | 'W480_H360' | 'W640_H360' | 'W640_H480'
  | 'W1280_H720' | 'W1920_H1080';
export declare const VideoResolution: Readonly<{ [K in VideoResolutionName]: K }>;
export declare const VideoFps: Readonly<{ FPS_10: 10; FPS_15: 15; FPS_24: 24; FPS_30: 30 }>;

/** The local video's capture settings, built by `VideoConfigBuilder`. */
export interface VideoConfig {
  readonly width?: number;
  readonly height?: number;
  readonly frameRate?: number;
  readonly cameraId?: string;
  /** kbps; accepted for compatibility, browsers only bound the maximum. */
  readonly minBitrate?: number;
  readonly maxBitrate?: number;
}

/** The local audio's capture settings, built by `AudioConfigBuilder`. */
export interface AudioConfig {
  readonly microphoneId?: string;
  readonly sampleRate?: number;
  readonly minBitrate?: number;
  readonly maxBitrate?: number;
}

/** Builds a `VideoConfig`; setters throw `RangeError` on values out of range. */
export declare class VideoConfigBuilder {
  setVideoResolution(resolution: VideoResolutionName): this;
  setFps(fps: number): this;
  setDefaultCameraId(cameraId: string): this;
  /** Minimum and maximum send bitrate in kbps. */
  setBitrate(min?: number, max?: number): this;
  build(): VideoConfig;
}

/** Builds an `AudioConfig`; setters throw `RangeError` on values out of range. */
export declare class AudioConfigBuilder {
  setDefaultMicrophoneId(microphoneId: string): this;
  setSampleRate(sampleRate: number): this;
  setBitrate(min?: number, max?: number): this;
  build(): AudioConfig;
}

/** A failure: the server's (or the SDK's) code, the seeds' numbers, with its name and message. */
export interface Failure { code: number; name: string; message: string }
/**
 * What every operation resolves to, as in the seed: `code` 0 (`CallPlusCode.SUCCESS`) with the
 * operation's fields, or a failure's `code`, `name` and `message`. Operations never reject.
 */
export type Result<T = {}> = { code: number; name?: string; message?: string } & Partial<T>;

export interface DeviceLeg { deviceId: string; delivery: DeliveryName }

export interface Participant {
  userId: string;
  state: ParticipantStateName;
  reason: EndReasonName | null;
  inviter: string | null;
  invitedAt: number;
  connectedAt: number;
  endedAt: number;
  devices: DeviceLeg[];
  delivery: DeliveryName;
  cameraDisabled: boolean;
  microphoneDisabled: boolean;
  deviceId: string | null;
}

/** A call as this device sees it. */
export declare class CallSession {
  callId: string;
  localUser: string;
  state: CallStateName;
  callType: CallTypeName;
  mediaType: MediaTypeName;
  creator: string;
  inviter: string | null;
  participants: Participant[];
  createdAt: number;
  startedAt: number;
  firstFrameAt: number;
  endedAt: number;
  endReason: EndReasonName | null;
  extra: string;
  outgoing: boolean;
  cameraEnabled: boolean;
  microphoneEnabled: boolean;
  version: number;
  getCallId(): string;
  getCallType(): CallTypeName;
  getMediaType(): MediaTypeName;
  getCallerUserId(): string;
  /** The seed's name of `getCallerUserId`. */
  getCreatorUserId(): string;
  getInviterUserId(): string;
  getState(): CallStateName;
  getExtra(): string;
  getUserList(): { userId: string; state: ParticipantStateName }[];
  /** When the call was created, Unix ms (server clock). */
  getCreateTime(): number;
  /** The seed's name of `getCreateTime`. */
  getCreateTimestamp(): number;
  /** When the call connected (billing start), Unix ms, or null before. */
  getStartTime(): number | null;
  /** Talk time in ms: to the end, or to now while the call lasts; 0 before it connected. */
  getDuration(): number;
}

/** A call as the server keeps it (records, available calls). */
export interface CallInfo {
  callId: string;
  callType: CallTypeName;
  mediaType: MediaTypeName;
  creator: string;
  participants: Participant[];
  createdAt: number;
  startedAt: number;
  firstFrameAt: number;
  endedAt: number;
  extra: string;
  version: number;
}

export interface CallRecord {
  owner: string;
  call: CallInfo;
  inviter: string | null;
  endReason: EndReasonName;
  direction: DirectionName;
  /** Talk time in milliseconds (0 when never connected). */
  duration: number;
  syncTime: number;
}

export interface CallSummary {
  owner: string;
  callId: string;
  caller: string;
  peer: string;
  mediaType: MediaTypeName;
  createdAt: number;
  startedAt: number;
  endedAt: number;
  endReason: EndReasonName;
  direction: DirectionName;
  duration: number;
}

/** The seed's `IRCCallPlusPushConfig`: how callees with no connected device are notified. */
export interface PushConfig {
  title?: string;
  content?: string;
  templateId?: string;
  disablePush?: boolean;
  customData?: string;
  ios?: { threadId?: string; apnsCollapseId?: string; category?: string; richMediaUri?: string; voip?: boolean };
  android?: { channelId?: string; collapseKey?: string; vendor?: Record<string, string> };
}

export interface StartCallOptions {
  userIds: string[];
  callType?: CallTypeName;
  mediaType?: MediaTypeName;
  /** Delivered to the callees with the invitation (at most 4 KiB). */
  extra?: string;
  pushConfig?: PushConfig;
  /** Ring timeout of this call; omitted for the server's default, 0 to ring until answered. */
  ringTimeoutMs?: number;
}

/** One raw engine event (what `onEvent` receives); `type` names the callback without `on`. */
export interface EngineEvent { type: string; [field: string]: unknown }

/** The seed's `ICallPlusEventListener`; every callback is optional. */
export interface CallPlusEventListener {
  onReceivedCall?(session: CallSession, extra: string, inviter: string): void;
  onCallConnected?(session: CallSession): void;
  onCallEnded?(session: CallSession, reason: EndReasonName): void;
  onRemoteUserStateChanged?(callId: string, userId: string, state: ParticipantStateName, reason: EndReasonName | null): void;
  onRemoteUserInvited?(inviteeUserList: string[], inviterUserId: string, callId: string): void;
  onCallTypeChanged?(type: CallTypeName, callId: string): void;
  onRemoteCameraStateChanged?(callId: string, userId: string, disabled: boolean): void;
  onRemoteMicrophoneStateChanged?(callId: string, userId: string, disabled: boolean): void;
  onReceivedCallRecord?(record: CallRecord): void;
  onReceivedCallPlusSummaryMessage?(summary: CallSummary): void;
  onReceivedChangeMediaTypeRequest?(userId: string, transactionId: string, mediaType: MediaTypeName, callId: string): void;
  onReceivedChangeMediaTypeResult?(info: { callId: string; userId: string; transactionId: string; mediaType: MediaTypeName; code: ChangeMediaTypeResultName; result: ChangeMediaTypeResultName }): void;
  onReceivedCallStartTime?(info: { callId: string; callType: CallTypeName; callStartTime: number }): void;
  onReceivedCallFirstFrameTime?(callId: string, callFirstFrameTime: number): void;
  onDeliveryChanged?(callId: string, userId: string, delivery: DeliveryName): void;
  /** A user's media can be played (`playMedia`); `mediaType` AUDIO for sound, AUDIO_VIDEO for video. */
  onUserMediaAvailable?(userId: string, mediaType: MediaTypeName): void;
  onFetchRemoteMediaError?(userId: string | null, message: string): void;
  /**
   * A user's audio level, 0-100. Peer to peer: each remote user's, once a second. Through the
   * SFU (group calls): every participant's that publishes audio, this user's own too, as the
   * SFU measures it, when it changes (at most five times a second).
   */
  onUserAudioLevelChanged?(userId: string, audioLevel: number): void;
  /**
   * Through the SFU: the call's active speaker changed (the loudest participant for a moment;
   * it stays through silence). `null` until someone has spoken, or once the speaker left.
   */
  onActiveSpeakerChanged?(callId: string, userId: string | null): void;
  onConnectionStateChanged?(state: ConnectionStateName, reason?: EndReasonName): void;
  onConnectionRejected?(error: Failure): void;
  /** Every engine event, raw, before the callback it maps to. */
  onEvent?(event: EngineEvent): void;
}

export interface StatusReportListener {
  /** Loss (0-100) of what this device sends and the round-trip delay (ms), once a second. */
  onSendPacketLoss?(packetLostRate: number, delay: number): void;
  /** Per remote user: loss (0-100) and bit rate (kbps) of what this device receives. */
  onReceivePacketLoss?(data: Record<string, { packetLostRate: number; bitRate: number }>): void;
}

export interface ReceivedMediaStats {
  audio: { packetsReceived: number; packetsLost: number; bytesReceived: number; totalAudioEnergy: number; audioLevel: number };
  video: { packetsReceived: number; packetsLost: number; bytesReceived: number; framesDecoded: number; frameWidth: number; frameHeight: number };
  connectionState: RTCPeerConnectionState;
  roundTripTime: number;
  fractionLost: number;
}

export interface CallPlusClientOptions {
  /** This tab's device id (1-64 of [A-Za-z0-9_-]); random by default. */
  deviceId?: string;
  clientVersion?: string;
  /** Where the engine's .wasm is, when not next to pkg/callplus_web.js. */
  wasmUrl?: string | URL;
  reconnectBackoffMin?: number;
  reconnectBackoffMax?: number;
  /** How long a WebSocket may take to open before it counts as lost (default 10000 ms). */
  connectTimeoutMs?: number;
  /**
   * Send this page's video to the SFU in two layers (rid "f" and a tiny "q"), so that others can
   * view it tiny (`setVideoView(…, isTiny)`). On by default; `false` sends one layer (less
   * encoding work).
   */
  simulcast?: boolean;
}

/** Loads the WebAssembly engine (done by `connect` too). */
export declare function loadEngine(wasmUrl?: string | URL): Promise<unknown>;
/** The WebSocket URL of a server address (`ws://host:port/v1/ws`). */
export declare function webSocketUrl(server?: string): string;

export declare class CallPlusClient {
  constructor(options?: CallPlusClientOptions);
  readonly deviceId: string;
  readonly userId: string | null;
  setCallPlusEventListener(listener: CallPlusEventListener): void;
  setStatusReportListener(listener: StatusReportListener): void;
  getConnectionState(): ConnectionStateName;
  getCurrentCallSession(): CallSession | null;
  /** `serverUrl`: `ws://`, `wss://`, `http://`, `https://` or `host:port`; default the page's host. */
  connect(token: string, serverUrl?: string): Promise<Result<{ userId: string }>>;
  disconnect(): Promise<Result>;
  setToken(token: string): void;

  startCall(options: StartCallOptions): Promise<Result<{ callId: string; busyUsers: string[] }>>;
  startCall(userIds: string[], callType?: CallTypeName, mediaType?: MediaTypeName, pushConfig?: PushConfig, extra?: string): Promise<Result<{ callId: string; busyUsers: string[] }>>;
  accept(callId: string): Promise<Result>;
  hangup(callId?: string, pushConfig?: PushConfig): Promise<Result>;
  joinCall(callId: string): Promise<Result>;
  invite(userIds: string[], options?: { extra?: string; pushConfig?: PushConfig }): Promise<Result<{ busyUsers: string[] }>>;
  requestChangeMediaType(mediaType: MediaTypeName): Promise<Result<{ transactionId: string }>>;
  cancelChangeMediaType(transactionId: string): Promise<Result>;
  replyChangeMediaType(transactionId: string, isAgree: boolean): Promise<Result>;
  startCamera(): Promise<Result>;
  stopCamera(): Promise<Result>;
  startMicrophone(): Promise<Result>;
  stopMicrophone(): Promise<Result>;
  /** Whether this page's microphone is on. */
  isMicrophoneEnable(): boolean;
  createVideoConfigBuilder(): VideoConfigBuilder;
  createAudioConfigBuilder(): AudioConfigBuilder;
  /** Resolution, frame rate and camera at the next capture; the maximum bitrate at once. */
  setVideoConfig(config: VideoConfig): Promise<Result>;
  setAudioConfig(config: AudioConfig): Promise<Result>;
  switchCamera(cameraId: string): Promise<Result>;
  switchMicrophone(microphoneId: string): Promise<Result>;
  /**
   * Where `userId`'s video plays; `isTiny` (default false) asks for that user's small video (a
   * quarter of the pixels) in calls through the SFU. The choice holds across calls.
   */
  setVideoView(userId: string, element: HTMLVideoElement | null, isTiny?: boolean): Result;
  setVideoView(list: { userId: string; videoElement: HTMLVideoElement | null; isTiny?: boolean }[]): Result;
  /** Stops showing a user's video in the element given to `setVideoView`. */
  removeVideoView(userId: string): Result;
  /** VIDEO_VIEW_NOT_SET (80105) when video is asked for without a view (the sound still plays); PLAY_MEDIA_FAILED (80104) when the browser refuses. */
  playMedia(userId: string, mediaType: MediaTypeName): Promise<Result>;
  /** Plays remote sound on output device `deviceId` (`HTMLMediaElement.setSinkId`), in later calls too. */
  setAudioOutput(deviceId: string): Promise<Result>;
  muteAllRemoteAudio(mute: boolean): Result;
  getMediaStats(): Promise<Record<string, ReceivedMediaStats>>;
  getRemoteMediaStream(userId: string): MediaStream | null;
  /** Through the SFU, the current call's active speaker; null before anyone spoke, peer to peer, or outside a call. */
  getActiveSpeaker(): string | null;

  /** `order`: 0 ascending after `syncTime`, 1 descending before it. */
  getCallRecords(syncTime?: number, count?: number, order?: 0 | 1): Promise<Result<{ result: { list: CallRecord[]; hasMore: boolean; syncTime: number } }>>;
  deleteCallRecords(callIds: string[]): Promise<Result>;
  /** The seed's name of `deleteCallRecords`. */
  deleteCallRecordsFromServer(callIds: string[]): Promise<Result>;
  deleteAllCallRecords(): Promise<Result>;
  /** The seed's name of `deleteAllCallRecords`. */
  deleteAllCallRecordsFromServer(): Promise<Result>;
  getAvailableCallRecordsFromServer(): Promise<Result<{ records: CallInfo[] }>>;
  getAvailableCalls(): Promise<Result<{ records: CallInfo[] }>>;
  /** One call this user is or was in, as the server sees it. */
  getCall(callId: string): Promise<Result<{ call: CallInfo }>>;
  /** The SDK's version (loads the engine if needed). */
  version(): Promise<string>;
  /** The seed's name of `version`. */
  getVersion(): Promise<string>;
}
