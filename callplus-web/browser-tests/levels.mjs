// The browser half of the audio levels test (tests/tests/browser.rs, which starts the server
// and a Rust client with a quiet tone, and runs this): two pages in a group (MULTI) call with
// the Rust user, through the server's SFU. Each page's microphone is a WebAudio sine whose
// volume the test sets (getUserMedia's audio is replaced by it, so no audio processing touches
// it). First page A is loud and page B silent: both pages are told A speaks and get a level for
// all three participants (their own included, which only the SFU can report); then A goes
// silent and B loud: both are told B speaks.
//
// It tells the Rust side how far it got with lines on stdout: `@ready`, `@checked`, `@done`.
//
// Environment: CALLPLUS_URL, CALLPLUS_USER_A, CALLPLUS_TOKEN_A, CALLPLUS_USER_B,
// CALLPLUS_TOKEN_B, CALLPLUS_PEER (the Rust user), CALLPLUS_PEER_LEVEL (its tone's level, 0-100).

import { check, finish, hasEvent, launch, log, signIn, waitFor } from './harness.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

function tell(what) { console.log(`@${what}`); }

/** The page's microphone becomes a 440 Hz sine at volume 0 (`window.setVolume(v)` changes it). */
function toneMicrophone() {
  const ctx = new AudioContext();
  const osc = ctx.createOscillator();
  osc.frequency.value = 440;
  const gain = ctx.createGain();
  gain.gain.value = 0;
  const out = ctx.createMediaStreamDestination();
  osc.connect(gain).connect(out);
  osc.start();
  window.setVolume = (v) => { gain.gain.value = v; return ctx.resume(); };
  const original = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
  navigator.mediaDevices.getUserMedia = async (constraints) => {
    const stream = constraints.video ? await original({ video: constraints.video }) : new MediaStream();
    if (constraints.audio) stream.addTrack(out.stream.getAudioTracks()[0].clone());
    return stream;
  };
  return ctx.resume();
}

/**
 * Holds once the page's last speaker event names `speaker` and its latest level of each user is
 * within `[min, max]` of `ranges` (`{userId: [min, max]}`).
 */
function heard([speaker, ranges]) {
  const last = window.speakers[window.speakers.length - 1];
  if (!last || last.userId !== speaker || window.client.getActiveSpeaker() !== speaker) return false;
  const latest = {};
  for (const { userId, level } of window.levels) latest[userId] = level;
  return Object.entries(ranges).every(([u, [min, max]]) => u in latest && latest[u] >= min && latest[u] <= max);
}

async function main() {
  const url = env('CALLPLUS_URL');
  const [a, b, peer] = [env('CALLPLUS_USER_A'), env('CALLPLUS_USER_B'), env('CALLPLUS_PEER')];
  const peerLevel = Number(env('CALLPLUS_PEER_LEVEL'));
  const context = await launch();
  const pages = { [a]: await signIn(context, url, a, env('CALLPLUS_TOKEN_A')), [b]: await signIn(context, url, b, env('CALLPLUS_TOKEN_B')) };
  for (const page of Object.values(pages)) await page.evaluate(toneMicrophone);
  tell('ready');

  for (const [user, page] of Object.entries(pages)) {
    await waitFor(page, `${user} is called`, () => window.incoming !== null);
    const accepted = await page.evaluate(() => window.client.accept(window.incoming));
    check(accepted.code === 0, `${user} accepts (${JSON.stringify(accepted)})`);
  }
  for (const [user, page] of Object.entries(pages)) {
    await waitFor(page, `${user}: call connected`, hasEvent, ['callConnected', null, null]);
  }

  // The Rust tone's level, as the SFU reads it from whole dB (up to 12 % off), and silence.
  const peerRange = [Math.floor(peerLevel * 0.85) - 1, Math.ceil(peerLevel * 1.15) + 1];
  const silent = [0, 3];
  const loud = [30, 100];
  await pages[a].evaluate(() => window.setVolume(0.8));
  for (const [user, page] of Object.entries(pages)) {
    await waitFor(page, `${user} is told ${a} speaks, with everyone's level`, heard,
      [a, { [a]: loud, [b]: silent, [peer]: peerRange }]);
  }

  await pages[a].evaluate(() => window.setVolume(0));
  await pages[b].evaluate(() => window.setVolume(0.8));
  for (const [user, page] of Object.entries(pages)) {
    await waitFor(page, `${user} is told ${b} speaks now, ${a} is silent`, heard,
      [b, { [a]: silent, [b]: loud, [peer]: peerRange }]);
  }
  for (const [user, page] of Object.entries(pages)) {
    const seen = await page.evaluate(() => ({
      latest: Object.fromEntries(window.levels.map(({ userId, level }) => [userId, level])),
      speakers: window.speakers.map((s) => s.userId),
      callIds: [...new Set(window.speakers.map((s) => s.callId))],
      call: window.client.getCurrentCallSession().getCallId(),
      levels: window.levels.length,
    }));
    // The speaker events of the call, in order: nobody (maybe), A, then B.
    const order = seen.speakers.filter((s) => s !== null);
    check(order.indexOf(a) >= 0 && order.lastIndexOf(a) < order.indexOf(b) && seen.callIds.length === 1 && seen.callIds[0] === seen.call,
      `${user}: speakers ${JSON.stringify(seen.speakers)} in call ${seen.call}, ${seen.levels} level events, ` +
      `latest ${JSON.stringify(seen.latest)}`);
  }
  tell('checked');

  for (const [user, page] of Object.entries(pages)) {
    const r = await page.evaluate(() => window.client.hangup());
    check(r.code === 0, `${user} hangs up`);
    await waitFor(page, `${user}: call ended`, hasEvent, ['callEnded', null, null]);
    // Checked in the callEnded handler too: the media's stop may still wait behind a
    // renegotiation (the other page leaving), and the app must not see the speaker meanwhile.
    check(await page.evaluate(() => window.speakerAtEnd === null && window.client.getActiveSpeaker() === null),
      `${user}: no speaker from the moment the call ended`);
  }
  log(`   levels and active speaker through the SFU: ${a}, ${b}, ${peer}`);
  tell('done');
}

await finish(main);
