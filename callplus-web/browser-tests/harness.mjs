// What the browser tests share: Chromium with fake devices (three cameras, three microphones), pages signed in through the SDK,
// checks, and waits for conditions with a deadline.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/lib/chromium/chromium';
/** How long any one condition may take to come true. */
export const DEADLINE_MS = 20000;

/** Run in reverse order at the end ([`finish`]). */
export const cleanups = [];
let failures = 0;

export function log(...args) { console.log('browser-tests:', ...args); }

export async function launch(extraArgs = []) {
  const profile = mkdtempSync(join(tmpdir(), 'callplus-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream=device-count=3',
      '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required', ...extraArgs],
  });
  cleanups.push(async () => { await context.close(); rmSync(profile, { recursive: true, force: true }); });
  // Every RTCPeerConnection a page makes, so that tests can check the media's topology.
  await context.addInitScript(() => {
    const Native = window.RTCPeerConnection;
    window.peerConnections = [];
    window.RTCPeerConnection = class extends Native {
      constructor(...args) {
        super(...args);
        window.peerConnections.push(this);
        this.streamIds = new Set();
        this.addEventListener('track', (e) => e.streams.forEach((m) => this.streamIds.add(m.id)));
      }
    };
  });
  return context;
}

/**
 * Opens the server's root in a new tab and signs `user` in through the SDK (not the page's UI),
 * with `options` for its `CallPlusClient`.
 */
export async function signIn(context, url, user, token, serverUrl, options = {}) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') log(`[${user}] ${m.text()}`); });
  page.on('pageerror', (e) => log(`[${user}] page error: ${e.message}`));
  await page.goto(url);
  const result = await page.evaluate(async ({ user, token, serverUrl, options }) => {
    const sdk = await import('/sdk/index.js');
    const client = new sdk.CallPlusClient(options);
    window.sdk = sdk;
    window.client = client;
    window.events = [];
    window.media = [];
    window.incoming = null;
    window.videos = {};
    window.view = (userId) => {
      if (!window.videos[userId]) {
        const v = document.createElement('video');
        v.dataset.user = userId;
        document.body.append(v);
        window.videos[userId] = v;
        client.setVideoView(userId, v);
      }
      return window.videos[userId];
    };
    window.levels = [];
    window.speakers = [];
    window.reports = [];
    client.setStatusReportListener({
      onSendPacketLoss: (rate, delay) => window.reports.push({ send: { rate, delay } }),
      onReceivePacketLoss: (data) => window.reports.push({ receive: data }),
    });
    client.setCallPlusEventListener({
      onEvent: (e) => window.events.push(e),
      onUserAudioLevelChanged: (userId, level) => window.levels.push({ userId, level }),
      onActiveSpeakerChanged: (callId, userId) => window.speakers.push({ callId, userId }),
      // What the app finds in the same turn as the call's end.
      onCallEnded: () => { window.speakerAtEnd = client.getActiveSpeaker(); },
      onReceivedChangeMediaTypeResult: (info) => {
        window.changeResults = (window.changeResults || []).concat([info]);
      },
      onReceivedChangeMediaTypeRequest: (userId, transactionId, mediaType) => {
        window.changeRequests = (window.changeRequests || []).concat([{ userId, transactionId, mediaType }]);
      },
      onReceivedCall: (s) => { window.incoming = s.getCallId(); },
      onUserMediaAvailable: (userId, mediaType) => {
        window.media.push({ userId, mediaType });
        if (userId !== user) client.playMedia(userId, mediaType);
      },
    });
    window.view(user);
    return client.connect(token, serverUrl || undefined);
  }, { user, token, serverUrl, options });
  check(result.code === 0 && result.userId === user, `${user} connects (${JSON.stringify(result)})`);
  return page;
}

export function check(ok, what) {
  if (ok) {
    log(`ok: ${what}`);
  } else {
    failures += 1;
    log(`FAILED: ${what}`);
    throw new Error(what);
  }
}

/**
 * Waits until a condition evaluated in the page (a function of `arg`, possibly async) holds,
 * checking it every 100 ms up to the deadline.
 */
export async function waitFor(page, what, fn, arg) {
  const deadline = Date.now() + DEADLINE_MS;
  for (;;) {
    if (await page.evaluate(fn, arg)) {
      log(`ok: ${what}`);
      return;
    }
    if (Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  failures += 1;
  const events = await page.evaluate(() => window.events.map((e) => e.type + (e.state ? `:${e.state}` : ''))).catch(() => []);
  log(`FAILED: ${what} within ${DEADLINE_MS} ms (events: ${events.join(', ')})`);
  throw new Error(what);
}

export const hasEvent = ([type, field, value]) => window.events.some((e) => e.type === type && (field === null || e[field] === value));

/** The remote user's received media, from getStats, plus what its video element shows. */
export function remoteMedia(page, userId) {
  return page.evaluate(async (userId) => {
    const stats = (await window.client.getMediaStats())[userId];
    const v = window.videos[userId];
    return { stats, videoWidth: v ? v.videoWidth : 0, videoHeight: v ? v.videoHeight : 0 };
  }, userId);
}

/** Waits until `userId`'s video is decoded and shown and its frames and audio energy advance. */
export async function seesAndHears(page, me, userId) {
  await waitFor(page, `${me} shows ${userId}'s video`, (u) => {
    const v = window.videos[u];
    return v && v.videoWidth > 0 && v.videoHeight > 0 && !v.paused;
  }, userId);
  const first = await remoteMedia(page, userId);
  await waitFor(page, `${me} decodes more of ${userId}'s frames and audio`, async ([u, frames, energy]) => {
    const s = (await window.client.getMediaStats())[u];
    return s && s.video.framesDecoded > frames + 10 && s.audio.totalAudioEnergy > energy && s.audio.packetsReceived > 20;
  }, [userId, first.stats.video.framesDecoded, first.stats.audio.totalAudioEnergy]);
  const now = await remoteMedia(page, userId);
  log(`   ${me} <- ${userId}: ${now.videoWidth}x${now.videoHeight}, ${now.stats.video.framesDecoded} frames, ` +
    `audio energy ${now.stats.audio.totalAudioEnergy.toFixed(3)}`);
}


/**
 * The page's open peer connections: each one's DTLS fingerprints (local and remote) and the
 * ids of the streams (users, through the SFU) whose tracks it received.
 */
export function peerConnections(page) {
  return page.evaluate(() => {
    const fingerprint = (d) => (d && d.sdp.match(/^a=fingerprint:(.*)$/m) || [])[1] || null;
    return window.peerConnections.filter((pc) => pc.connectionState !== 'closed').map((pc) => ({
      local: fingerprint(pc.localDescription),
      remote: fingerprint(pc.remoteDescription),
      state: pc.connectionState,
      streams: [...pc.streamIds].sort(),
    }));
  });
}

/** Runs `main`, then the cleanups; exits 0 when every check passed. */
export async function finish(main) {
  try {
    await main();
  } catch (e) {
    if (failures === 0) failures = 1;
    log(`error: ${e && e.stack ? e.stack : e}`);
  } finally {
    for (const cleanup of cleanups.reverse()) {
      try { await cleanup(); } catch (_) { /* best effort */ }
    }
  }
  log(failures === 0 ? 'all passed' : `${failures} failed`);
  process.exit(failures === 0 ? 0 : 1);
}
