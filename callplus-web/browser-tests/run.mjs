// Browser tests of the Web SDK: a real `callplus serve` on 127.0.0.1 (ephemeral port, fresh data
// directory), headless Chromium with its fake camera and microphone, pages that load the SDK the
// server serves (/sdk/index.js) and call each other. `cargo xtask ci` runs this inside a network
// namespace whose only interface is loopback. Exits non-zero on the first failed check.
//
// CALLPLUS_BIN: the `callplus` binary. CHROMIUM: the browser (default /usr/lib/chromium/chromium).

import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  DEADLINE_MS, check, cleanups, finish, hasEvent, launch, log, peerConnections, remoteMedia, seesAndHears, signIn, waitFor,
} from './harness.mjs';

const BIN = process.env.CALLPLUS_BIN || 'callplus';

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

/** Browser <-> browser, 1:1 AUDIO_VIDEO: ring, accept, media both ways, camera off, hang-up, records. */
async function oneToOneVideo(context, server) {
  log('--- browser <-> browser 1:1 AUDIO_VIDEO');
  const alice = await signIn(context, server.url, 'alice', token(server.dir, 'alice'));
  const bob = await signIn(context, server.url, 'bob', token(server.dir, 'bob'));
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
  await waitFor(alice, "alice gets bob's audio level and status reports", () => window.levels.some((l) => l.userId === 'bob' && l.level > 0)
    && window.reports.some((r) => r.receive && r.receive.bob && r.receive.bob.bitRate > 0)
    && window.reports.some((r) => r.send));

  // The session's times, the server's view of the call, the SDK's version.
  const times = await alice.evaluate(async (id) => {
    const s = window.client.getCurrentCallSession();
    const got = await window.client.getCall(id);
    const mic = [window.client.isMicrophoneEnable()];
    await window.client.stopMicrophone();
    mic.push(window.client.isMicrophoneEnable());
    await window.client.startMicrophone();
    mic.push(window.client.isMicrophoneEnable());
    return {
      start: s.getStartTime(), duration: s.getDuration(), got, version: await window.client.version(),
      seedNames: [s.getCreatorUserId() === 'alice', s.getCreateTimestamp() === got.call.createdAt,
        (await window.client.getVersion()) === (await window.client.version())],
      mic,
    };
  }, started.callId);
  check(typeof times.start === 'number' && times.duration > 0, `alice's session has a start and a duration (${JSON.stringify(times)})`);
  check(times.got.code === 0 && times.got.call.callId === started.callId && times.got.call.startedAt === times.start,
    `getCall answers the server's view of the call (${JSON.stringify(times.got)})`);
  check(/^\d+\.\d+\.\d+/.test(times.version), `version() is the SDK's (${times.version})`);
  check(times.seedNames.every((same) => same), `the seed's names answer as ours (${JSON.stringify(times.seedNames)})`);
  // Talk time counts on the clock the session is given (the engine's server time), not the
  // page's: a server clock an hour behind the page still gives the right duration.
  const skewed = await alice.evaluate(() => {
    const hourAgo = Date.now() - 3600000;
    const live = new window.sdk.CallSession({ startedAt: hourAgo - 90000, endedAt: null }, () => hourAgo);
    const ended = new window.sdk.CallSession({ startedAt: hourAgo - 90000, endedAt: hourAgo - 30000 }, () => hourAgo);
    const before = new window.sdk.CallSession({ startedAt: null, endedAt: null }, () => hourAgo);
    return [live.getDuration(), ended.getDuration(), before.getDuration()];
  });
  check(JSON.stringify(skewed) === '[90000,60000,0]', `getDuration counts on the server's clock (${JSON.stringify(skewed)})`);
  check(JSON.stringify(times.mic) === '[true,false,true]', `isMicrophoneEnable follows stop and start (${JSON.stringify(times.mic)})`);
  // Views and audio output: a removed view shows nothing and playing video without one says so.
  const views = await bob.evaluate(async () => {
    const removed = window.client.removeVideoView('alice');
    const cleared = window.videos.alice.srcObject === null;
    const withoutView = await window.client.playMedia('alice', 'AUDIO_VIDEO');
    window.client.setVideoView('alice', window.videos.alice);
    const shownAgain = window.videos.alice.srcObject !== null;
    const output = await window.client.setAudioOutput('default');
    return { removed: removed.code, cleared, withoutView, shownAgain, output };
  });
  check(views.removed === 0 && views.cleared && views.shownAgain, `bob removes alice's view and sets it again (${JSON.stringify(views)})`);
  check(views.withoutView.code === 80105 && views.withoutView.name === 'VIDEO_VIEW_NOT_SET',
    `playing video with no view is VIDEO_VIEW_NOT_SET (${JSON.stringify(views.withoutView)})`);
  check(views.output.code === 0, `bob plays remote sound on the default output (${JSON.stringify(views.output)})`);

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

/** Whether the page's tiles all show moving, non-blank video (drawn to a canvas and compared). */
function tilesShowVideo(page) {
  return page.evaluate(async () => {
    const videos = [...document.querySelectorAll('.tile video')];
    const sample = (v) => {
      const c = document.createElement('canvas');
      c.width = 64;
      c.height = 48;
      const g = c.getContext('2d');
      g.drawImage(v, 0, 0, 64, 48);
      const d = g.getImageData(0, 0, 64, 48).data;
      let sum = 0;
      let sq = 0;
      for (let i = 0; i < d.length; i += 4) { const y = d[i] + d[i + 1] + d[i + 2]; sum += y; sq += y * y; }
      const n = d.length / 4;
      return { variance: sq / n - (sum / n) ** 2, pixels: Array.from(d.filter((_, i) => i % 97 === 0)).join() };
    };
    const out = [];
    for (const v of videos) {
      const box = v.getBoundingClientRect();
      const a = sample(v);
      await new Promise((r) => v.requestVideoFrameCallback ? v.requestVideoFrameCallback(() => r()) : setTimeout(r, 100));
      await new Promise((r) => v.requestVideoFrameCallback ? v.requestVideoFrameCallback(() => r()) : setTimeout(r, 100));
      const b = sample(v);
      out.push({ user: v.parentElement.dataset.user, width: box.width, videoWidth: v.videoWidth, variance: a.variance, moving: a.pixels !== b.pixels });
    }
    return out;
  });
}

/** The demo page itself, driven through its buttons: sign in, call, ring, accept, two tiles, mute, hang up, log. */
async function demoPage(context, server, shots) {
  log('--- the demo page');
  const pages = {};
  for (const user of ['carol', 'dave']) {
    const page = await context.newPage();
    page.on('pageerror', (e) => log(`[${user}] page error: ${e.message}`));
    await page.goto(server.url);
    await page.fill('#token', token(server.dir, user));
    await page.click('#signin-button');
    await page.waitForSelector('#phone:not([hidden])', { timeout: DEADLINE_MS });
    check((await page.textContent('#status')).includes(user), `${user} signs in on the page`);
    pages[user] = page;
  }
  const { carol, dave } = pages;
  await carol.fill('#callee', 'dave');
  await carol.click('#call-video');
  await dave.waitForSelector('#incoming:not([hidden])', { timeout: DEADLINE_MS });
  check((await dave.textContent('#incoming-from')) === 'carol', 'dave\'s page rings with carol\'s call');
  await dave.click('#accept');
  for (const [page, who] of [[carol, 'carol'], [dave, 'dave']]) {
    await waitFor(page, `${who}'s page shows two video tiles with video`, () => {
      const videos = [...document.querySelectorAll('.tile video')];
      return videos.length === 2 && videos.every((v) => v.videoWidth > 0 && !v.paused);
    });
  }
  const tiles = await tilesShowVideo(carol);
  const path = join(shots, 'demo-call.png');
  await carol.screenshot({ path, fullPage: true });
  // The screenshot itself: each tile's pixels are a picture (a blank tile compresses to a few
  // hundred bytes of PNG) and change from one shot to the next.
  for (const user of ['carol', 'dave']) {
    const el = carol.locator(`.tile[data-user=${user}] video`);
    const first = await el.screenshot();
    let second = first;
    const deadline = Date.now() + DEADLINE_MS;
    while (second.equals(first) && Date.now() < deadline) second = await el.screenshot();
    check(first.length > 3000 && !second.equals(first), `the screenshot's ${user} tile shows moving video (${first.length} bytes of PNG)`);
  }
  log(`   screenshot ${path}: ${JSON.stringify(tiles)}`);
  check(tiles.length === 2 && tiles.every((t) => t.width > 100 && t.videoWidth > 0 && t.variance > 10 && t.moving),
    'the screenshot shows two tiles of moving video (carol and dave)');

  await carol.click('#mute');
  await waitFor(carol, 'carol mutes', () => document.getElementById('mute').textContent === 'Unmute');
  await carol.click('#camera');
  await waitFor(dave, 'dave\'s page greys out carol\'s tile', () => document.querySelector('.tile[data-user=carol]').classList.contains('off'));
  await dave.click('#hangup');
  for (const [page, who, other] of [[carol, 'carol', 'dave'], [dave, 'dave', 'carol']]) {
    await waitFor(page, `${who}'s page ends the call and logs it`, (o) => document.getElementById('call').hidden
      && [...document.querySelectorAll('#log li')].some((li) => li.textContent.includes(o) && li.textContent.includes('video')), other);
  }
  await carol.close();
  await dave.close();
}

/**
 * A TCP relay to the server on 127.0.0.1 that the test can cut (every relayed connection closed
 * at once) and hold (new connections closed as soon as they open).
 */
function relay(target) {
  const [host, port] = [target.hostname, Number(target.port)];
  const pairs = new Set();
  let held = false;
  let accepted = 0;
  const server = net.createServer((client) => {
    accepted += 1;
    if (held) {
      client.destroy();
      return;
    }
    const upstream = net.connect(port, host);
    const pair = [client, upstream];
    pairs.add(pair);
    const close = () => { client.destroy(); upstream.destroy(); pairs.delete(pair); };
    client.pipe(upstream);
    upstream.pipe(client);
    for (const s of pair) { s.on('error', close); s.on('close', close); }
  });
  cleanups.push(() => server.close());
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve({
    url: `ws://127.0.0.1:${server.address().port}`,
    accepted: () => accepted,
    hold: (on) => { held = on; },
    cut: () => { for (const [a, b] of pairs) { a.destroy(); b.destroy(); } pairs.clear(); },
  })));
}

const count = ([type, field, value]) => window.events.filter((e) => e.type === type && (field === null || e[field] === value)).length;

/** The page's socket is cut mid-call and comes back: the session resumes, nothing lost or doubled, media goes on. */
async function socketCut(context, server) {
  log('--- the socket is cut mid-call');
  const link = await relay(new URL(server.url));
  // Erin's page comes through the relay too: the page's CSP lets it open sockets to its own origin only.
  const erin = await signIn(context, link.url.replace('ws:', 'http:') + '/', 'erin', token(server.dir, 'erin'));
  const frank = await signIn(context, server.url, 'frank', token(server.dir, 'frank'));
  await erin.evaluate(() => window.view('frank'));
  await frank.evaluate(() => window.view('erin'));
  const started = await erin.evaluate(() => window.client.startCall({ userIds: ['frank'], mediaType: 'AUDIO_VIDEO' }));
  check(started.code === 0, 'erin calls frank (through the relay)');
  await waitFor(frank, 'frank receives the call', (id) => window.incoming === id, started.callId);
  check((await frank.evaluate((id) => window.client.accept(id), started.callId)).code === 0, 'frank accepts');
  await seesAndHears(erin, 'erin', 'frank');
  await seesAndHears(frank, 'frank', 'erin');

  // Cut erin's socket and keep her away while frank turns his camera off.
  link.hold(true);
  link.cut();
  await waitFor(erin, 'erin reconnects', hasEvent, ['connectionStateChanged', 'state', 'RECONNECTING']);
  check((await frank.evaluate(() => window.client.stopCamera())).code === 0, 'frank turns his camera off while erin is away');
  const tries = link.accepted();
  const deadline = Date.now() + DEADLINE_MS;
  while (link.accepted() === tries && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  check(link.accepted() > tries, 'erin tries again while the relay holds her off');
  link.hold(false);
  await waitFor(erin, 'erin is connected again', () => window.client.getConnectionState() === 'CONNECTED'
    && window.events.filter((e) => e.type === 'connectionStateChanged' && e.state === 'CONNECTED').length === 2);
  log(`   erin's connections through the relay: ${link.accepted()}`);
  await waitFor(erin, "erin hears of frank's camera, once", ([type, field, value]) => window.events.filter((e) => e.type === type && e[field] === value).length === 1, ['remoteCameraStateChanged', 'disabled', true]);
  check(await erin.evaluate(count, ['callConnected', null, null]) === 1, 'erin saw the call connect once');
  check(await erin.evaluate(count, ['callEnded', null, null]) === 0, 'the call did not end for erin');

  // Media went on peer to peer: erin still hears frank, frank still sees erin.
  const heard = (await remoteMedia(erin, 'frank')).stats.audio.packetsReceived;
  await waitFor(erin, 'erin still receives frank\'s audio', async (n) => (await window.client.getMediaStats()).frank.audio.packetsReceived > n + 50, heard);
  const seen = (await remoteMedia(frank, 'erin')).stats.video.framesDecoded;
  await waitFor(frank, 'frank still decodes erin\'s video', async (n) => (await window.client.getMediaStats()).erin.video.framesDecoded > n + 10, seen);

  // And the resumed session carries requests: erin hangs up.
  check((await erin.evaluate(() => window.client.hangup())).code === 0, 'erin hangs up over the resumed session');
  for (const [page, who] of [[erin, 'erin'], [frank, 'frank']]) {
    await waitFor(page, `${who}: the call ends once, with one record`, () => window.events.filter((e) => e.type === 'callEnded').length === 1
      && window.events.filter((e) => e.type === 'receivedCallRecord').length === 1);
  }
  await erin.close();
  await frank.close();
}

/** An AUDIO call upgraded to AUDIO_VIDEO by request and agreement: video starts both ways; records deleted. */
async function upgradeToVideo(context, server) {
  log('--- AUDIO -> AUDIO_VIDEO by request');
  const jack = await signIn(context, server.url, 'jack', token(server.dir, 'jack'));
  const kate = await signIn(context, server.url, 'kate', token(server.dir, 'kate'));
  await jack.evaluate(() => window.view('kate'));
  await kate.evaluate(() => window.view('jack'));
  const started = await jack.evaluate(() => window.client.startCall({ userIds: ['kate'], mediaType: 'AUDIO' }));
  check(started.code === 0, 'jack makes an audio call');
  await waitFor(kate, 'kate receives it', (id) => window.incoming === id, started.callId);
  check((await kate.evaluate((id) => window.client.accept(id), started.callId)).code === 0, 'kate accepts');
  await waitFor(jack, 'jack hears kate', async () => {
    const s = (await window.client.getMediaStats()).kate;
    return s && s.audio.packetsReceived > 20 && s.video.framesDecoded === 0;
  });
  const asked = await jack.evaluate(() => window.client.requestChangeMediaType('AUDIO_VIDEO'));
  check(asked.code === 0 && typeof asked.transactionId === 'string', `jack asks for video (${JSON.stringify(asked)})`);
  await waitFor(kate, "kate gets jack's request", (tx) => (window.changeRequests || []).some((r) => r.transactionId === tx && r.mediaType === 'AUDIO_VIDEO'), asked.transactionId);
  check((await kate.evaluate((tx) => window.client.replyChangeMediaType(tx, true), asked.transactionId)).code === 0, 'kate agrees');
  await waitFor(jack, 'jack: the change is accepted', hasEvent, ['changeMediaTypeResult', 'result', 'ACCEPTED']);
  const results = await jack.evaluate(() => window.changeResults || []);
  check(results.length === 1 && results[0].code === 'ACCEPTED' && results[0].transactionId === asked.transactionId,
    `onReceivedChangeMediaTypeResult carries the seed's code (${JSON.stringify(results)})`);
  await seesAndHears(jack, 'jack', 'kate');
  await seesAndHears(kate, 'kate', 'jack');
  check((await kate.evaluate(() => window.client.hangup())).code === 0, 'kate hangs up');
  await waitFor(jack, 'jack: record', hasEvent, ['receivedCallRecord', null, null]);
  const before = await jack.evaluate(() => window.client.getCallRecords(-1, 10, 1));
  check(before.code === 0 && before.result.list.length === 1 && before.result.list[0].call.mediaType === 'AUDIO_VIDEO', 'jack has one record, of a video call');
  check((await jack.evaluate((id) => window.client.deleteCallRecordsFromServer([id]), started.callId)).code === 0, 'jack deletes it');
  const after = await jack.evaluate(() => window.client.getCallRecords(-1, 10, 1));
  check(after.code === 0 && after.result.list.length === 0, 'jack has no record left');
  check((await kate.evaluate(() => window.client.deleteAllCallRecordsFromServer())).code === 0, 'kate deletes all hers');
  const kates = await kate.evaluate(() => window.client.getCallRecords(-1, 10, 1));
  check(kates.code === 0 && kates.result.list.length === 0, 'kate has no record left');
  await jack.close();
  await kate.close();
}

/** The aspect ratio of `userId`'s video as `page` shows it (0 before any frame). */
function shownAspect(page, userId) {
  return page.evaluate((u) => {
    const v = window.videos[u];
    return v && v.videoHeight > 0 ? v.videoWidth / v.videoHeight : 0;
  }, userId);
}

/**
 * A camera another page opens at the same moment: Chromium runs one capture per camera, at the
 * size of whichever page started it, and a track that only passes frames through follows it. The
 * SDK's capture constraints must keep the track at its config all the same. The race is won by
 * either page, so the check is made over several rounds.
 */
async function sharedCamera(context, server) {
  log('--- a camera opened by another page at the same moment');
  const pages = [];
  for (let i = 0; i < 2; i++) {
    const page = await context.newPage();
    await page.goto(server.url);
    pages.push(page);
  }
  const [mine, other] = pages;
  for (let round = 1; round <= 6; round++) {
    const open = (page, configured) => page.evaluate(async (configured) => {
      const { VideoConfigBuilder, VideoResolution, VideoFps, videoConstraints } = await import('/sdk/config.js');
      const config = configured
        ? new VideoConfigBuilder().setVideoResolution(VideoResolution.W320_H240).setFps(VideoFps.FPS_15).build() : {};
      const stream = await navigator.mediaDevices.getUserMedia({ video: videoConstraints(config) });
      const v = document.createElement('video');
      v.muted = true;
      v.srcObject = stream;
      window.sizes = [];
      const count = () => { window.sizes.push(`${v.videoWidth}x${v.videoHeight}`); v.requestVideoFrameCallback(count); };
      v.requestVideoFrameCallback(count);
      await v.play();
      window.capture = { stream, video: v };
    }, configured);
    await Promise.all([open(mine, true), open(other, false)]);
    await waitFor(mine, `round ${round}: the configured capture shows 30 frames`, () => window.sizes.length >= 30);
    const seen = await mine.evaluate(() => {
      const s = window.capture.stream.getVideoTracks()[0].getSettings();
      return { settings: `${s.width}x${s.height}@${s.frameRate}`, sizes: [...new Set(window.sizes)] };
    });
    const theirs = await other.evaluate(() => {
      const s = window.capture.stream.getVideoTracks()[0].getSettings();
      return `${s.width}x${s.height}`;
    });
    check(seen.settings === '320x240@15' && seen.sizes.length === 1 && seen.sizes[0] === '320x240',
      `round ${round}: the configured capture stays 320x240 at 15 fps with the other page's at ${theirs} (${JSON.stringify(seen)})`);
    for (const page of pages) {
      await page.evaluate(() => {
        for (const t of window.capture.stream.getTracks()) t.stop();
        window.capture.video.remove();
      });
    }
  }
  for (const page of pages) await page.close();
}

/**
 * Capture settings and devices: a video config (resolution, frame rate, maximum bitrate) set
 * before the call shapes what the peer receives; switching camera and microphone mid-call keeps
 * media flowing, and the new camera is captured under a config set meanwhile.
 */
async function captureSettings(context, server) {
  log('--- video config, switch camera and microphone');
  const lisa = await signIn(context, server.url, 'lisa', token(server.dir, 'lisa'));
  const mike = await signIn(context, server.url, 'mike', token(server.dir, 'mike'));
  await lisa.evaluate(() => window.view('mike'));
  await mike.evaluate(() => window.view('lisa'));

  const refused = await lisa.evaluate(() => {
    const b = window.client.createVideoConfigBuilder();
    const thrown = (f) => { try { f(); return null; } catch (e) { return e.name; } };
    return [thrown(() => b.setVideoResolution('W1_H')), thrown(() => b.setFps(0)), thrown(() => b.setBitrate(900, 100))];
  });
  check(refused.every((name) => name === 'RangeError'), `bad capture settings are refused (${refused})`);
  const set = await lisa.evaluate(() => {
    const { VideoResolution, VideoFps } = window.sdk;
    const config = window.client.createVideoConfigBuilder()
      .setVideoResolution(VideoResolution.W320_H240).setFps(VideoFps.FPS_15).setBitrate(100, 250).build();
    return window.client.setVideoConfig(config);
  });
  check(set.code === 0, 'lisa sets 320x240 at 15 fps, at most 250 kbps');

  const started = await lisa.evaluate(() => window.client.startCall({ userIds: ['mike'], mediaType: 'AUDIO_VIDEO' }));
  check(started.code === 0, 'lisa calls mike');
  await waitFor(mike, 'mike receives the call', (id) => window.incoming === id, started.callId);
  check((await mike.evaluate((id) => window.client.accept(id), started.callId)).code === 0, 'mike accepts');
  await seesAndHears(mike, 'mike', 'lisa');
  const local = await lisa.evaluate(() => {
    const t = window.videos.lisa.srcObject.getVideoTracks()[0].getSettings();
    const sender = window.peerConnections.flatMap((pc) => pc.getSenders()).find((s) => s.track && s.track.kind === 'video');
    return { width: t.width, height: t.height, frameRate: t.frameRate, deviceId: t.deviceId, maxBitrate: sender.getParameters().encodings[0].maxBitrate };
  });
  check(local.width === 320 && local.height === 240 && local.frameRate <= 15 && local.maxBitrate === 250000,
    `lisa captures and sends under her config (${JSON.stringify(local)})`);
  const before = await remoteMedia(mike, 'lisa');
  check(before.videoWidth <= 320 && Math.abs(before.videoWidth / before.videoHeight - 4 / 3) < 0.01,
    `mike receives lisa's 4:3 video of at most 320 wide (${before.videoWidth}x${before.videoHeight})`);

  // Another camera, captured under a config set after the call began.
  const switched = await lisa.evaluate(async (current) => {
    const { VideoResolution } = window.sdk;
    await window.client.setVideoConfig(window.client.createVideoConfigBuilder().setVideoResolution(VideoResolution.W640_H360).build());
    const cameras = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput');
    // Chromium's fake_device_1 is a depth camera (Y16) that WebRTC cannot encode.
    const other = cameras.find((d) => d.deviceId !== current && d.label !== 'fake_device_1');
    const r = await window.client.switchCamera(other.deviceId);
    const now = window.videos.lisa.srcObject.getVideoTracks();
    const settings = now[0].getSettings();
    return { code: r.code, wanted: other.deviceId, tracks: now.length, deviceId: settings.deviceId, size: `${settings.width}x${settings.height}` };
  }, local.deviceId);
  check(switched.code === 0 && switched.tracks === 1 && switched.deviceId === switched.wanted && switched.size === '640x360',
    `lisa switches to her other camera (${JSON.stringify(switched)})`);
  await waitFor(mike, "mike shows lisa's new camera, 16:9", (u) => {
    const v = window.videos[u];
    return v.videoHeight > 0 && Math.abs(v.videoWidth / v.videoHeight - 16 / 9) < 0.01;
  }, 'lisa');
  const frames = (await remoteMedia(mike, 'lisa')).stats.video.framesDecoded;
  await waitFor(mike, "lisa's frames keep coming after the switch", async ([u, n]) => (await window.client.getMediaStats())[u].video.framesDecoded > n + 10, ['lisa', frames]);

  const mic = await lisa.evaluate(async () => {
    const current = window.videos.lisa.srcObject.getAudioTracks()[0];
    const mics = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audioinput');
    const other = mics.find((d) => d.deviceId !== current.getSettings().deviceId && d.deviceId !== 'default');
    const r = await window.client.switchMicrophone(other.deviceId);
    const now = window.videos.lisa.srcObject.getAudioTracks();
    const sender = window.peerConnections.flatMap((pc) => pc.getSenders()).find((s) => s.track && s.track.kind === 'audio');
    return { code: r.code, wanted: other.deviceId, tracks: now.length, deviceId: now[0].getSettings().deviceId,
      sending: sender.track === now[0], oldEnded: current.readyState === 'ended' };
  });
  check(mic.code === 0 && mic.tracks === 1 && mic.deviceId === mic.wanted && mic.sending && mic.oldEnded,
    `lisa switches microphone and sends the new one (${JSON.stringify(mic)})`);
  const energy = (await remoteMedia(mike, 'lisa')).stats.audio.totalAudioEnergy;
  await waitFor(mike, "mike keeps hearing lisa after the switch", async ([u, e]) => (await window.client.getMediaStats())[u].audio.totalAudioEnergy > e, ['lisa', energy]);

  check((await mike.evaluate(() => window.client.hangup())).code === 0, 'mike hangs up');
  await waitFor(lisa, 'lisa: call ended', hasEvent, ['callEnded', null, null]);
  await lisa.close();
  await mike.close();
}

/**
 * Checks that every page's media goes through the SFU: one open peer connection each, whose far
 * end is none of the pages (its DTLS fingerprint is no page's own), and on which the page
 * received the tracks of each other user in `expected` (stream id = user id).
 */
async function throughSfu(pages, expected) {
  const all = {};
  for (const [u, page] of Object.entries(pages)) all[u] = await peerConnections(page);
  const locals = new Set(Object.values(all).flat().map((pc) => pc.local));
  for (const [u, pcs] of Object.entries(all)) {
    const others = expected.filter((o) => o !== u);
    const ok = pcs.length === 1 && pcs[0].remote && !locals.has(pcs[0].remote)
      && others.every((o) => pcs[0].streams.includes(o));
    check(ok, `${u} has one peer connection, to the SFU, carrying ${others.join(' and ')} (${JSON.stringify(pcs)})`);
  }
}

/**
 * Three browsers: a 1:1 call (peer to peer) becomes MULTI through invite, and its media moves to
 * the SFU; everyone sees the two others; one leaves and comes back; the call ends.
 */
async function multiCall(context, server) {
  log('--- three browsers, MULTI through invite');
  const users = ['gina', 'hank', 'ivy'];
  const pages = {};
  for (const u of users) {
    // Gina turns simulcast off; hank and ivy keep the default (on).
    const options = u === 'gina' ? { simulcast: false } : {};
    pages[u] = await signIn(context, server.url, u, token(server.dir, u), undefined, options);
    await pages[u].evaluate((others) => others.forEach((o) => window.view(o)), users.filter((o) => o !== u));
  }
  const { gina, hank, ivy } = pages;
  const started = await gina.evaluate(() => window.client.startCall({ userIds: ['hank'], mediaType: 'AUDIO_VIDEO' }));
  check(started.code === 0, 'gina calls hank');
  await waitFor(hank, 'hank receives the call', (id) => window.incoming === id, started.callId);
  check((await hank.evaluate((id) => window.client.accept(id), started.callId)).code === 0, 'hank accepts');
  await waitFor(gina, 'gina: connected', hasEvent, ['callConnected', null, null]);
  await seesAndHears(gina, 'gina', 'hank');
  const direct = await peerConnections(gina);
  const hanks = (await peerConnections(hank)).map((pc) => pc.local);
  check(direct.length === 1 && hanks.includes(direct[0].remote), 'the 1:1 call runs peer to peer, gina to hank');
  const invited = await gina.evaluate(() => window.client.invite(['ivy']));
  check(invited.code === 0, `gina invites ivy (${JSON.stringify(invited)})`);
  await waitFor(ivy, 'ivy receives the call', (id) => window.incoming === id, started.callId);
  await waitFor(hank, 'hank sees the call become MULTI', hasEvent, ['callTypeChanged', 'callType', 'MULTI']);
  check((await ivy.evaluate((id) => window.client.accept(id), started.callId)).code === 0, 'ivy accepts');
  for (const u of users) {
    for (const o of users.filter((x) => x !== u)) await seesAndHears(pages[u], u, o);
  }
  await throughSfu(pages, users);
  const answer = await gina.evaluate(() => window.peerConnections.find((c) => c.connectionState === 'connected').localDescription.sdp);
  check(/^m=application /m.test(answer) && !/a=simulcast/.test(answer),
    'with simulcast: false gina sends one video encoding to the SFU, and has the control channel');
  const hankOffer = await hank.evaluate(() => window.peerConnections.find((c) => c.connectionState === 'connected').localDescription.sdp);
  check(/a=simulcast:send f;q/.test(hankOffer), 'by default hank sends his video to the SFU in two layers');
  check((await ivy.evaluate(() => window.client.hangup())).code === 0, 'ivy leaves');
  for (const u of ['gina', 'hank']) {
    await waitFor(pages[u], `${u} sees ivy leave`, () => window.events.some((e) => e.type === 'remoteUserStateChanged'
      && e.userId === 'ivy' && e.state === 'ENDED'));
    check(await pages[u].evaluate(() => !window.events.some((e) => e.type === 'callEnded')), `the call goes on for ${u}`);
  }
  const other = (await remoteMedia(hank, 'gina')).stats.video.framesDecoded;
  await waitFor(hank, 'hank still decodes gina', async (n) => (await window.client.getMediaStats()).gina.video.framesDecoded > n + 10, other);

  // Ivy comes back: the call is among her available calls, and she joins it.
  const available = await ivy.evaluate(() => window.client.getAvailableCalls());
  check(available.code === 0 && available.records.some((c) => c.callId === started.callId), 'the call is available to ivy');
  check((await ivy.evaluate((id) => window.client.joinCall(id), started.callId)).code === 0, 'ivy joins it again');
  await waitFor(gina, 'gina sees ivy back', () => window.events.filter((e) => e.type === 'remoteUserStateChanged'
    && e.userId === 'ivy' && e.state === 'ON_CALL').length >= 2);
  // Her old connections closed when she left: these counts are of the new ones.
  await waitFor(ivy, 'ivy decodes gina again', async () => {
    const s = (await window.client.getMediaStats()).gina;
    return s && s.video.framesDecoded > 10 && s.audio.packetsReceived > 20;
  });
  await seesAndHears(ivy, 'ivy', 'hank');
  await seesAndHears(gina, 'gina', 'ivy');
  await throughSfu(pages, users);

  check((await gina.evaluate(() => window.client.hangup())).code === 0, 'gina hangs up');
  check((await hank.evaluate(() => window.client.hangup())).code === 0, 'hank hangs up');
  for (const u of users) {
    await waitFor(pages[u], `${u}: call ended and recorded`, () => window.events.some((e) => e.type === 'callEnded')
      && window.events.some((e) => e.type === 'receivedCallRecord'));
  }
  for (const u of users) await pages[u].close();
}

/**
 * Polls `fn` (run in node, across pages) every 100 ms until it returns `{ok: true, …}`, up to
 * `deadlineMs`; logs and returns its last result.
 */
async function until(what, fn, deadlineMs = DEADLINE_MS) {
  const deadline = Date.now() + deadlineMs;
  let last;
  for (;;) {
    last = await fn();
    if (last.ok || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  check(last.ok, `${what} (${JSON.stringify(last)})`);
  return last;
}

/** The size of `userId`'s video as the page decodes it now (getStats and the video element). */
function receivedSize(page, userId) {
  return page.evaluate(async (u) => {
    const s = (await window.client.getMediaStats())[u];
    const v = window.videos[u];
    return { width: s ? s.video.frameWidth : 0, height: s ? s.video.frameHeight : 0, frames: s ? s.video.framesDecoded : 0,
      videoWidth: v ? v.videoWidth : 0, videoHeight: v ? v.videoHeight : 0 };
  }, userId);
}

/** The video layers the page sends (rid -> {width, height, frames}) and why its quality is limited. */
function sentLayers(page) {
  return page.evaluate(async () => {
    const pc = window.peerConnections.find((c) => c.connectionState === 'connected');
    const out = {};
    if (pc) {
      (await pc.getStats()).forEach((s) => {
        if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) {
          out[s.rid] = { width: s.frameWidth || 0, height: s.frameHeight || 0, frames: s.framesEncoded || 0, limit: s.qualityLimitationReason };
        }
      });
    }
    return out;
  });
}

/**
 * Simulcast through the SFU: every page (with the `simulcast` option) sends its video in two
 * encodings (rid "f" and "q") and opens the `callplus-sfu` data channel; nora views owen tiny (chosen before the call, sent when
 * the channel opens) and gets his video at half the width and height of what pia (full) gets of
 * the same publisher at the same moment; back to full, nora gets pia's size; tiny again mid-call;
 * and the choice holds into the next call.
 * Sizes are compared with pia's, not with fixed numbers, so that bandwidth or CPU adaptation of
 * owen's camera cannot fail the test.
 */
async function tinyLayer(context, server) {
  log('--- simulcast: a tiny view through the SFU');
  const users = ['nora', 'owen', 'pia'];
  const pages = {};
  for (const u of users) {
    pages[u] = await signIn(context, server.url, u, token(server.dir, u), undefined, { simulcast: true });
    await pages[u].evaluate((others) => others.forEach((o) => window.view(o)), users.filter((o) => o !== u));
    // 15 fps: six encoders on a shared machine leave room for both layers.
    const config = await pages[u].evaluate(() => window.client.setVideoConfig(window.client.createVideoConfigBuilder()
      .setFps(window.sdk.VideoFps.FPS_15).build()));
    check(config.code === 0, `${u} captures at 15 fps`);
  }
  const { nora, owen, pia } = pages;
  // The seed's form, before any call: the choice waits for the SFU's channel.
  const chosen = await nora.evaluate(() => window.client.setVideoView([{ userId: 'owen', videoElement: window.videos.owen, isTiny: true }]));
  check(chosen.code === 0, 'nora chooses owen\'s tiny video before the call');
  const started = await nora.evaluate(() => window.client.startCall({ userIds: ['owen', 'pia'], callType: 'MULTI', mediaType: 'AUDIO_VIDEO' }));
  check(started.code === 0, `nora starts a MULTI call with owen and pia (${JSON.stringify(started)})`);
  for (const u of ['owen', 'pia']) {
    await waitFor(pages[u], `${u} receives the call`, (id) => window.incoming === id, started.callId);
    check((await pages[u].evaluate((id) => window.client.accept(id), started.callId)).code === 0, `${u} accepts`);
  }
  await seesAndHears(nora, 'nora', 'owen');
  await seesAndHears(pia, 'pia', 'owen');
  await throughSfu(pages, users);

  // What owen offered and sends: two encodings of his video, and the control channel.
  await waitFor(owen, 'owen sends both layers of his video to the SFU (rid f and q)', async () => {
    const pc = window.peerConnections.find((c) => c.connectionState === 'connected');
    if (!pc) return false;
    const sdp = pc.localDescription.sdp;
    const channel = /^m=application /m.test(sdp) && /a=simulcast:send f;q/.test(sdp);
    const layers = {};
    (await pc.getStats()).forEach((s) => {
      if (s.type === 'outbound-rtp' && s.kind === 'video' && s.rid) layers[s.rid] = s.framesEncoded || 0;
    });
    return channel && layers.f > 10 && layers.q > 10;
  });

  // Owen's layers come and go with his encoder's headroom (the SFU gives a silent layer's viewers
  // the other one): the sizes are compared at one moment, and may take a while to settle.
  const compare = async () => {
    const [tiny, full, sent] = await Promise.all([receivedSize(nora, 'owen'), receivedSize(pia, 'owen'), sentLayers(owen)]);
    return { tiny, full, sent, ratio: tiny.width ? +(full.width / tiny.width).toFixed(2) : 0 };
  };
  const SETTLE_MS = 3 * DEADLINE_MS;
  const half = (r) => r.tiny.width > 0 && r.tiny.height > 0 && Math.abs(r.full.width - 2 * r.tiny.width) <= 4
    && Math.abs(r.full.height - 2 * r.tiny.height) <= 4 && r.tiny.videoWidth === r.tiny.width;
  const small = await until('nora gets owen\'s tiny layer (half the width and height of what pia gets)', async () => {
    const r = await compare();
    return { ok: half(r), ...r };
  }, SETTLE_MS);
  // Still moving at that size.
  await waitFor(nora, 'nora keeps decoding owen\'s tiny video', async ([n, w]) => {
    const s = (await window.client.getMediaStats()).owen.video;
    return s.framesDecoded > n + 10 && s.frameWidth === w;
  }, [small.tiny.frames, small.tiny.width]);

  // Back to full, in the (userId, element, isTiny) form: nora now gets what pia gets.
  check((await nora.evaluate(() => window.client.setVideoView('owen', window.videos.owen, false))).code === 0, 'nora asks for owen\'s full video');
  await until('nora gets owen\'s full layer again (pia\'s size, twice the tiny one)', async () => {
    const r = await compare();
    const ok = r.full.width > 0 && r.tiny.width === r.full.width && r.tiny.height === r.full.height
      && r.full.width >= 2 * small.tiny.width - 4 && r.tiny.videoWidth === r.tiny.width;
    return { ok, ...r };
  }, SETTLE_MS);

  // And tiny again, asked mid-call.
  check((await nora.evaluate(() => window.client.setVideoView('owen', window.videos.owen, true))).code === 0, 'nora asks for owen\'s tiny video mid-call');
  await until('nora gets owen\'s tiny layer again, asked mid-call', async () => {
    const r = await compare();
    return { ok: half(r), ...r };
  }, SETTLE_MS);

  const hangUp = async (count) => {
    for (const u of ['nora', 'owen']) check((await pages[u].evaluate(() => window.client.hangup())).code === 0, `${u} hangs up`);
    for (const u of users) {
      await waitFor(pages[u], `${u}: call ended`, (n) => window.events.filter((e) => e.type === 'callEnded').length === n, count);
    }
  };
  await hangUp(1);

  // The choice holds across calls: the next call through the SFU brings owen tiny to nora at once.
  const again = await nora.evaluate(() => window.client.startCall({ userIds: ['owen', 'pia'], callType: 'MULTI', mediaType: 'AUDIO_VIDEO' }));
  check(again.code === 0, 'nora starts another MULTI call with owen and pia');
  for (const u of ['owen', 'pia']) {
    await waitFor(pages[u], `${u} receives the second call`, (id) => window.incoming === id, again.callId);
    check((await pages[u].evaluate((id) => window.client.accept(id), again.callId)).code === 0, `${u} accepts`);
  }
  await until('nora gets owen\'s tiny layer in the next call, without asking again', async () => {
    const r = await compare();
    return { ok: half(r), ...r };
  }, SETTLE_MS);
  await hangUp(2);
  for (const u of users) await pages[u].close();
}

/**
 * Simulcast after a renegotiation: three pages with the `simulcast` option; once their layers
 * flow, suki leaves and the SFU renegotiates quin's and ross's connections without her streams.
 * Chromium sent the `mid`/`rid` header extensions only on its first packets, so the SFU must keep
 * the SSRC of each layer it learnt: quin and ross go on decoding each other's video, and a tiny
 * view of ross chosen after the renegotiation still gets his tiny layer.
 */
async function simulcastAfterLeave(context, server) {
  log('--- simulcast: a renegotiation late in the call (one of three leaves)');
  const users = ['quin', 'ross', 'suki'];
  const pages = {};
  for (const u of users) {
    pages[u] = await signIn(context, server.url, u, token(server.dir, u), undefined, { simulcast: true });
    await pages[u].evaluate((others) => others.forEach((o) => window.view(o)), users.filter((o) => o !== u));
    const config = await pages[u].evaluate(() => window.client.setVideoConfig(window.client.createVideoConfigBuilder()
      .setFps(window.sdk.VideoFps.FPS_15).build()));
    check(config.code === 0, `${u} captures at 15 fps`);
  }
  const { quin, ross, suki } = pages;
  const started = await quin.evaluate(() => window.client.startCall({ userIds: ['ross', 'suki'], callType: 'MULTI', mediaType: 'AUDIO_VIDEO' }));
  check(started.code === 0, `quin starts a MULTI call with ross and suki (${JSON.stringify(started)})`);
  for (const u of ['ross', 'suki']) {
    await waitFor(pages[u], `${u} receives the call`, (id) => window.incoming === id, started.callId);
    check((await pages[u].evaluate((id) => window.client.accept(id), started.callId)).code === 0, `${u} accepts`);
  }
  for (const u of users) {
    for (const o of users.filter((x) => x !== u)) await seesAndHears(pages[u], u, o);
  }
  await throughSfu(pages, users);
  for (const u of ['quin', 'ross']) {
    await until(`${u} sends both layers of its video (rid f and q)`, async () => {
      const sent = await sentLayers(pages[u]);
      return { ok: sent.f && sent.q && sent.f.frames > 30 && sent.q.frames > 30, sent };
    }, 3 * DEADLINE_MS);
  }

  check((await suki.evaluate(() => window.client.hangup())).code === 0, 'suki leaves');
  for (const u of ['quin', 'ross']) {
    await waitFor(pages[u], `${u} sees suki leave`, () => window.events.some((e) => e.type === 'remoteUserStateChanged'
      && e.userId === 'suki' && e.state === 'ENDED'));
    // The SFU's new offer, applied: suki's sections no longer send.
    await waitFor(pages[u], `the SFU renegotiated ${u}'s connection without suki`, () => {
      const pc = window.peerConnections.find((c) => c.connectionState === 'connected');
      return pc && pc.signalingState === 'stable' && !/^a=msid:suki /m.test(pc.remoteDescription.sdp);
    });
  }
  // Well past the renegotiation (a second and a half of video at 15 fps), in both directions.
  for (const [me, other] of [['quin', 'ross'], ['ross', 'quin']]) {
    const before = (await remoteMedia(pages[me], other)).stats.video.framesDecoded;
    await waitFor(pages[me], `${me} still decodes ${other}'s simulcast video after the renegotiation`,
      async ([o, n]) => (await window.client.getMediaStats())[o].video.framesDecoded > n + 25, [other, before]);
  }
  // The layers are still told apart: quin's tiny view of ross gets his tiny layer (what ross
  // sends as "q", at most half his full layer's width).
  check((await quin.evaluate(() => window.client.setVideoView('ross', window.videos.ross, true))).code === 0, 'quin asks for ross\'s tiny video');
  await until('quin gets ross\'s tiny layer after the renegotiation', async () => {
    const [got, sent] = await Promise.all([receivedSize(quin, 'ross'), sentLayers(ross)]);
    const ok = sent.q && sent.f && got.width > 0 && got.width === sent.q.width && got.height === sent.q.height
      && 2 * got.width <= sent.f.width + 4;
    return { ok, got, sent };
  }, 3 * DEADLINE_MS);

  // Quin hangs up: ross is alone and the call ends.
  check((await quin.evaluate(() => window.client.hangup())).code === 0, 'quin hangs up');
  for (const u of ['quin', 'ross']) {
    await waitFor(pages[u], `${u}: call ended`, () => window.events.some((e) => e.type === 'callEnded'));
  }
  for (const u of users) await pages[u].close();
}

/** Connections that cannot work end with a clear code instead of hanging. */
async function refusedConnections(context, server) {
  log('--- refused connections');
  const page = await context.newPage();
  await page.goto(server.url);
  const results = await page.evaluate(async () => {
    const sdk = await import('/sdk/index.js');
    const forgedClient = new sdk.CallPlusClient();
    // Two connects at once share one outcome.
    const [forged, again] = await Promise.all([forgedClient.connect('cp1.forged.token'), forgedClient.connect('cp1.forged.token')]);
    if (JSON.stringify(forged) !== JSON.stringify(again)) return { forged: { code: -2, both: [forged, again] } };
    // The page's CSP lets no socket leave its origin: that socket never opens.
    const blocked = await new sdk.CallPlusClient({ connectTimeoutMs: 500 }).connect('t', 'ws://127.0.0.1:9');
    return { forged, blocked };
  });
  check(results.forged.code === 81002, `a forged token is refused with TOKEN_INVALID (${JSON.stringify(results.forged)})`);
  check(results.blocked.code === 81001, `a socket that never opens ends in NOT_CONNECTED (${JSON.stringify(results.blocked)})`);
  await page.close();
}

async function main() {
  const server = await startServer();
  log(`server at ${server.url}`);
  const context = await launch();
  // BROWSER_TESTS_ONLY=name,name runs only those parts (by function name), for working on one.
  const only = (process.env.BROWSER_TESTS_ONLY || '').split(',').filter(Boolean);
  const run = (part) => only.length === 0 || only.includes(part.name);
  if (run(refusedConnections)) await refusedConnections(context, server);
  if (run(oneToOneVideo)) await oneToOneVideo(context, server);
  if (run(socketCut)) await socketCut(context, server);
  if (run(multiCall)) await multiCall(context, server);
  if (run(tinyLayer)) await tinyLayer(context, server);
  if (run(simulcastAfterLeave)) await simulcastAfterLeave(context, server);
  if (run(upgradeToVideo)) await upgradeToVideo(context, server);
  if (run(sharedCamera)) await sharedCamera(context, server);
  if (run(captureSettings)) await captureSettings(context, server);
  const shots = process.env.CALLPLUS_SCREENSHOTS || mkdtempSync(join(tmpdir(), 'callplus-shots-'));
  if (run(demoPage)) await demoPage(context, server, shots);
}

await finish(main);
