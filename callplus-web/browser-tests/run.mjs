// Browser tests of the Web SDK: a real `callplus serve` on 127.0.0.1 (ephemeral port, fresh data
// directory), headless Chromium with its fake camera and microphone, pages that load the SDK the
// server serves (/sdk/index.js) and call each other. `cargo xtask ci` runs this inside a network
// namespace whose only interface is loopback. Exits non-zero on the first failed check.
//
// CALLPLUS_BIN: the `callplus` binary. CHROMIUM: the browser (default /usr/lib/chromium/chromium).

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = process.env.CALLPLUS_BIN || 'callplus';
const CHROMIUM = process.env.CHROMIUM || '/usr/lib/chromium/chromium';
/** How long any one condition may take to come true. */
const DEADLINE_MS = 20000;

const cleanups = [];
let failures = 0;

function log(...args) { console.log('browser-tests:', ...args); }

/** Starts `callplus serve` and resolves its page URL once it prints where it listens. */
function startServer() {
  const dir = mkdtempSync(join(tmpdir(), 'callplus-browser-'));
  const child = spawn(BIN, ['serve', '--listen', '127.0.0.1:0', '--admin-listen', 'off', '--data-dir', dir],
    { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'warn' } });
  cleanups.push(() => { child.kill('SIGTERM'); rmSync(dir, { recursive: true, force: true }); });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`callplus serve printed no WebSocket URL: ${out}`)), DEADLINE_MS);
    child.on('exit', (code) => reject(new Error(`callplus serve exited (${code}): ${out}`)));
    child.stdout.on('data', (chunk) => {
      out += chunk;
      const m = out.match(/WebSocket:\s+ws:\/\/([0-9.]+:[0-9]+)\//);
      if (m) {
        clearTimeout(timer);
        resolve({ url: `http://${m[1]}/`, dir });
      }
    });
  });
}

function token(dir, user) {
  return execFileSync(BIN, ['token', '--user', user, '--data-dir', dir], { stdio: ['ignore', 'pipe', 'ignore'] })
    .toString().trim();
}

async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'callplus-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--use-fake-device-for-media-stream',
      '--use-fake-ui-for-media-stream', '--allow-loopback-in-peer-connection',
      '--autoplay-policy=no-user-gesture-required'],
  });
  cleanups.push(async () => { await context.close(); rmSync(profile, { recursive: true, force: true }); });
  return context;
}

/** Opens the server's root in a new tab and signs `user` in through the SDK (not the page's UI). */
async function signIn(context, server, user) {
  const page = await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') log(`[${user}] ${m.text()}`); });
  page.on('pageerror', (e) => log(`[${user}] page error: ${e.message}`));
  await page.goto(server.url);
  const result = await page.evaluate(async ({ user, token }) => {
    const sdk = await import('/sdk/index.js');
    const client = new sdk.CallPlusClient();
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
    client.setCallPlusEventListener({
      onEvent: (e) => window.events.push(e),
      onReceivedCall: (s) => { window.incoming = s.getCallId(); },
      onUserMediaAvailable: (userId, mediaType) => {
        window.media.push({ userId, mediaType });
        if (userId !== user) client.playMedia(userId, mediaType);
      },
    });
    window.view(user);
    return client.connect(token);
  }, { user, token: token(server.dir, user) });
  check(result.code === 0 && result.userId === user, `${user} connects (${JSON.stringify(result)})`);
  return page;
}

function check(ok, what) {
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
async function waitFor(page, what, fn, arg) {
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

const hasEvent = ([type, field, value]) => window.events.some((e) => e.type === type && (field === null || e[field] === value));

/** The remote user's received media, from getStats, plus what its video element shows. */
function remoteMedia(page, userId) {
  return page.evaluate(async (userId) => {
    const stats = (await window.client.getMediaStats())[userId];
    const v = window.videos[userId];
    return { stats, videoWidth: v ? v.videoWidth : 0, videoHeight: v ? v.videoHeight : 0 };
  }, userId);
}

/** Waits until `userId`'s video is decoded and shown and its frames and audio energy advance. */
async function seesAndHears(page, me, userId) {
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

/** Browser <-> browser, 1:1 AUDIO_VIDEO: ring, accept, media both ways, camera off, hang-up, records. */
async function oneToOneVideo(context, server) {
  log('--- browser <-> browser 1:1 AUDIO_VIDEO');
  const alice = await signIn(context, server, 'alice');
  const bob = await signIn(context, server, 'bob');
  await alice.evaluate(() => window.view('bob'));
  await bob.evaluate(() => window.view('alice'));

  const started = await alice.evaluate(() => window.client.startCall({ userIds: ['bob'], callType: 'SINGLE', mediaType: 'AUDIO_VIDEO', extra: 'hi' }));
  check(started.code === 0 && typeof started.callId === 'string', `alice starts a call (${JSON.stringify(started)})`);
  await waitFor(bob, 'bob receives the call', (id) => window.incoming === id, started.callId);
  await waitFor(alice, 'alice sees bob ringing', hasEvent, ['deliveryChanged', 'delivery', 'RINGING']);
  const accepted = await bob.evaluate((id) => window.client.accept(id), started.callId);
  check(accepted.code === 0, `bob accepts (${JSON.stringify(accepted)})`);
  await waitFor(alice, 'alice: call connected', hasEvent, ['callConnected', null, null]);
  await waitFor(bob, 'bob: call connected', hasEvent, ['callConnected', null, null]);

  await seesAndHears(alice, 'alice', 'bob');
  await seesAndHears(bob, 'bob', 'alice');
  await waitFor(alice, 'alice: first-frame time reported', hasEvent, ['callFirstFrameTime', null, null]);

  const off = await alice.evaluate(() => window.client.stopCamera());
  check(off.code === 0, 'alice turns her camera off');
  await waitFor(bob, 'bob sees alice camera off', hasEvent, ['remoteCameraStateChanged', 'disabled', true]);
  await waitFor(bob, "alice's frames stop reaching bob", async () => {
    const frames = async () => (await window.client.getMediaStats()).alice.video.framesDecoded;
    const before = await frames();
    await new Promise((r) => setTimeout(r, 700));
    return (await frames()) === before;
  });
  const on = await alice.evaluate(() => window.client.startCamera());
  check(on.code === 0, 'alice turns her camera back on');
  await waitFor(bob, 'bob sees alice camera on', hasEvent, ['remoteCameraStateChanged', 'disabled', false]);
  const resumed = (await remoteMedia(bob, 'alice')).stats.video.framesDecoded;
  await waitFor(bob, "alice's frames reach bob again", async (n) => (await window.client.getMediaStats()).alice.video.framesDecoded > n + 10, resumed);

  const hung = await alice.evaluate(() => window.client.hangup());
  check(hung.code === 0, 'alice hangs up');
  for (const [page, who] of [[alice, 'alice'], [bob, 'bob']]) {
    await waitFor(page, `${who}: call ended`, hasEvent, ['callEnded', null, null]);
    await waitFor(page, `${who}: call record pushed`, hasEvent, ['receivedCallRecord', null, null]);
    const records = await page.evaluate(() => window.client.getCallRecords(-1, 10, 1));
    const record = records.code === 0 && records.result.list.find((r) => r.call.callId === started.callId);
    check(!!record && record.duration > 0 && record.call.mediaType === 'AUDIO_VIDEO',
      `${who} has the call's record (${record ? `${record.direction}, ${record.duration} ms, ${record.endReason}` : JSON.stringify(records)})`);
  }
  const peers = await alice.evaluate(async () => Object.keys(await window.client.getMediaStats()).length);
  check(peers === 0, 'alice closed her peer connections');
  await alice.close();
  await bob.close();
}

async function main() {
  const server = await startServer();
  log(`server at ${server.url}`);
  const context = await launch();
  await oneToOneVideo(context, server);
}

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
