/* tslint:disable */
/* eslint-disable */

/**
 * The client engine (`new Engine(deviceId, token, clientVersion)`).
 */
export class Engine {
    free(): void;
    [Symbol.dispose](): void;
    /**
     * Accept a call.
     */
    accept(now: number, call_id: string): number;
    /**
     * Withdraw a change request.
     */
    cancelChangeMediaType(now: number, transaction_id: string): number;
    /**
     * The connection state's name.
     */
    connectionState(): string;
    /**
     * The current call (JSON) or undefined.
     */
    currentCall(): string | undefined;
    /**
     * Delete all call records.
     */
    deleteAllCallRecords(now: number): number;
    /**
     * Delete some call records.
     */
    deleteCallRecords(now: number, call_ids: string[]): number;
    /**
     * Disconnect (queues a Goodbye).
     */
    disconnect(now: number): void;
    /**
     * Group calls this user can join.
     */
    getAvailableCalls(now: number): number;
    /**
     * A page of call records.
     */
    getCallRecords(now: number, sync_time: number, count: number, order: string): number;
    /**
     * One call as the server sees it.
     */
    getCall(now: number, call_id: string): number;
    /**
     * One binary message from the server.
     */
    handleFrame(now: number, bytes: Uint8Array | number[]): void;
    /**
     * A timer came due.
     */
    handleTimeout(now: number): void;
    /**
     * Hang up (empty id: the current call).
     */
    hangup(now: number, call_id: string, push: string): number;
    /**
     * Invite users into the current call.
     */
    invite(now: number, user_ids: string[], extra: string, push: string): number;
    /**
     * Join a group call.
     */
    joinCall(now: number, call_id: string): number;
    /**
     * A remote frame of a call was rendered.
     */
    mediaFirstFrame(now: number, call_id: string): void;
    /**
     * A new engine; throws for a malformed device id.
     */
    constructor(device_id: string, token: string, client_version: string);
    /**
     * The next driver event (JSON).
     */
    pollDriverEvent(): string | undefined;
    /**
     * The next app event (JSON).
     */
    pollEvent(): string | undefined;
    /**
     * The next media command (JSON).
     */
    pollMedia(): string | undefined;
    /**
     * When to call `handleTimeout` next.
     */
    pollTimeout(): number | undefined;
    /**
     * The next binary message to send.
     */
    pollTransmit(): Uint8Array | undefined;
    /**
     * Answer a change request.
     */
    replyChangeMediaType(now: number, transaction_id: string, agree: boolean): number;
    /**
     * Ask to change the media type.
     */
    requestChangeMediaType(now: number, media_type: string): number;
    /**
     * This device shows the call.
     */
    ringing(now: number, call_id: string): number;
    /**
     * The SDK's version (the engine's crate version), as `CallPlusClient.version()` reports it.
     */
    static sdkVersion(): string;
    /**
     * SDP or a candidate for one peer device.
     */
    sendMediaSignal(now: number, call_id: string, to_user: string, to_device: string, kind: string, text: string, sdp_mid: string, mline_index: number): number;
    /**
     * The server's clock at `now`.
     */
    serverTime(now: number): number;
    /**
     * Camera on or off.
     */
    setCameraEnabled(now: number, enabled: boolean): number;
    /**
     * Microphone on or off.
     */
    setMicrophoneEnabled(now: number, enabled: boolean): number;
    /**
     * Replace the token of the next Hello.
     */
    setToken(token: string): void;
    /**
     * Start a call.
     */
    startCall(now: number, user_ids: string[], call_type: string, media_type: string, extra: string, ring_timeout_ms: number, push: string): number;
    /**
     * The WebSocket opened.
     */
    transportConnected(now: number): void;
    /**
     * The WebSocket closed.
     */
    transportLost(now: number): void;
    /**
     * The signed-in user (from the Welcome) or undefined.
     */
    userId(): string | undefined;
}

export type InitInput = RequestInfo | URL | Response | BufferSource | WebAssembly.Module;

export interface InitOutput {
    readonly memory: WebAssembly.Memory;
    readonly __wbg_engine_free: (a: number, b: number) => void;
    readonly engine_accept: (a: number, b: number, c: number, d: number) => [number, number, number];
    readonly engine_cancelChangeMediaType: (a: number, b: number, c: number, d: number) => [number, number, number];
    readonly engine_connectionState: (a: number) => [number, number];
    readonly engine_currentCall: (a: number) => [number, number];
    readonly engine_deleteAllCallRecords: (a: number, b: number) => [number, number, number];
    readonly engine_deleteCallRecords: (a: number, b: number, c: number, d: number) => [number, number, number];
    readonly engine_disconnect: (a: number, b: number) => void;
    readonly engine_getAvailableCalls: (a: number, b: number) => [number, number, number];
    readonly engine_getCall: (a: number, b: number, c: number, d: number) => [number, number, number];
    readonly engine_getCallRecords: (a: number, b: number, c: number, d: number, e: number, f: number) => [number, number, number];
    readonly engine_handleFrame: (a: number, b: number, c: number, d: number) => [number, number];
    readonly engine_handleTimeout: (a: number, b: number) => void;
    readonly engine_hangup: (a: number, b: number, c: number, d: number, e: number, f: number) => [number, number, number];
    readonly engine_invite: (a: number, b: number, c: number, d: number, e: number, f: number, g: number, h: number) => [number, number, number];
    readonly engine_joinCall: (a: number, b: number, c: number, d: number) => [number, number, number];
    readonly engine_mediaFirstFrame: (a: number, b: number, c: number, d: number) => [number, number];
    readonly engine_new: (a: number, b: number, c: number, d: number, e: number, f: number) => [number, number, number];
    readonly engine_pollDriverEvent: (a: number) => [number, number];
    readonly engine_pollEvent: (a: number) => [number, number];
    readonly engine_pollMedia: (a: number) => [number, number];
    readonly engine_pollTimeout: (a: number) => [number, number];
    readonly engine_pollTransmit: (a: number) => [number, number];
    readonly engine_replyChangeMediaType: (a: number, b: number, c: number, d: number, e: number) => [number, number, number];
    readonly engine_requestChangeMediaType: (a: number, b: number, c: number, d: number) => [number, number, number];
    readonly engine_ringing: (a: number, b: number, c: number, d: number) => [number, number, number];
    readonly engine_sdkVersion: () => [number, number];
    readonly engine_sendMediaSignal: (a: number, b: number, c: number, d: number, e: number, f: number, g: number, h: number, i: number, j: number, k: number, l: number, m: number, n: number, o: number) => [number, number, number];
    readonly engine_serverTime: (a: number, b: number) => number;
    readonly engine_setCameraEnabled: (a: number, b: number, c: number) => [number, number, number];
    readonly engine_setMicrophoneEnabled: (a: number, b: number, c: number) => [number, number, number];
    readonly engine_setToken: (a: number, b: number, c: number) => void;
    readonly engine_startCall: (a: number, b: number, c: number, d: number, e: number, f: number, g: number, h: number, i: number, j: number, k: number, l: number, m: number) => [number, number, number];
    readonly engine_transportConnected: (a: number, b: number) => void;
    readonly engine_transportLost: (a: number, b: number) => void;
    readonly engine_userId: (a: number) => [number, number];
    readonly __wbindgen_malloc: (a: number, b: number) => number;
    readonly __wbindgen_realloc: (a: number, b: number, c: number, d: number) => number;
    readonly __wbindgen_free: (a: number, b: number, c: number) => void;
    readonly __wbindgen_externrefs: WebAssembly.Table;
    readonly __externref_table_dealloc: (a: number) => void;
    readonly __externref_table_alloc: () => number;
    readonly __externref_drop_slice: (a: number, b: number) => void;
    readonly __wbindgen_start: () => void;
}

export type SyncInitInput = BufferSource | WebAssembly.Module;

/**
 * Instantiates the given `module`, which can either be bytes or
 * a precompiled `WebAssembly.Module`.
 *
 * @param {{ module: SyncInitInput }} module - Passing `SyncInitInput` directly is deprecated.
 *
 * @returns {InitOutput}
 */
export function initSync(module: { module: SyncInitInput } | SyncInitInput): InitOutput;

/**
 * If `module_or_path` is {RequestInfo} or {URL}, makes a request and
 * for everything else, calls `WebAssembly.instantiate` directly.
 *
 * @param {{ module_or_path: InitInput | Promise<InitInput> }} module_or_path - Passing `InitInput` directly is deprecated.
 *
 * @returns {Promise<InitOutput>}
 */
export default function __wbg_init (module_or_path?: { module_or_path: InitInput | Promise<InitInput> } | InitInput | Promise<InitInput>): Promise<InitOutput>;
