// The browser half of the browser <-> Rust client media test (tests/tests/browser.rs, which
// starts the server and the Rust client and runs this): one page signs in, calls the Rust user
// (or is called and accepts), and checks that it shows the Rust side's VP8 video and hears its
// Opus tone (the dominant frequency, measured with WebAudio). Its microphone is Chromium's fake
// device playing CALLPLUS_FAKE_AUDIO (a tone the Rust side finds in its recording).
//
// It tells the Rust side where it is with lines on stdout: `@ready`, `@checked`, `@done`.
//
// Environment: CALLPLUS_URL (the server's http:// root), CALLPLUS_TOKEN, CALLPLUS_USER,
// CALLPLUS_PEER (the Rust user), CALLPLUS_ROLE (`caller`, `callee`, or `other-device`: the user
// is also on a Rust client, which answers), CALLPLUS_PEER_TONE_HZ,
// CALLPLUS_FAKE_AUDIO (a WAV file), CALLPLUS_SFU (`1`: a group call whose media goes through the
// server's SFU; the page also views the Rust side's tiny simulcast layer and back).

import { check, finish, hasEvent, launch, log, peerConnections, seesAndHears, signIn, waitFor } from './harness.mjs';

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

/** Tells the Rust side how far the page got. */
function tell(what) { console.log(`@${what}`); }

async function main() {
  const [url, token, user, peer, role] = ['CALLPLUS_URL', 'CALLPLUS_TOKEN', 'CALLPLUS_USER', 'CALLPLUS_PEER', 'CALLPLUS_ROLE'].map(env);
  const tone = Number(env('CALLPLUS_PEER_TONE_HZ'));
  const context = await launch([`--use-file-for-fake-audio-capture=${env('CALLPLUS_FAKE_AUDIO')}`]);
  const page = await signIn(context, url, user, token);
  await page.evaluate((peer) => window.view(peer), peer);
  tell('ready');

  if (role === 'other-device') {
    // The same user is signed in on a Rust client too, which answers.
    await waitFor(page, `${user}'s tab rings`, () => window.incoming !== null);
    tell('ringing');
    await waitFor(page, `${user}'s tab stops ringing: answered on the other device`, hasEvent,
      ['callEnded', 'reason', 'ACCEPTED_ON_OTHER_DEVICE']);
    check(await page.evaluate(() => !window.events.some((e) => e.type === 'callConnected')), 'the tab never joined the call');
    const peers = await page.evaluate(async () => Object.keys(await window.client.getMediaStats()).length);
    check(peers === 0, 'the tab started no media');
    tell('done');
    return;
  }

  if (role === 'caller') {
    const started = await page.evaluate((peer) => window.client.startCall({ userIds: [peer], mediaType: 'AUDIO_VIDEO' }), peer);
    check(started.code === 0, `${user} calls ${peer} (${JSON.stringify(started)})`);
  } else {
    await waitFor(page, `${user} is called`, () => window.incoming !== null);
    const accepted = await page.evaluate(() => window.client.accept(window.incoming));
    check(accepted.code === 0, `${user} accepts (${JSON.stringify(accepted)})`);
  }
  await waitFor(page, `${user}: call connected`, hasEvent, ['callConnected', null, null]);
  await seesAndHears(page, user, peer);
  if (process.env.CALLPLUS_SFU === '1') {
    // One connection, to the SFU: the Rust side's tracks arrive in a stream named after it.
    const pcs = await peerConnections(page);
    check(pcs.length === 1 && pcs[0].streams.includes(peer) && pcs[0].state === 'connected',
      `${user} has one peer connection, to the SFU, carrying ${peer} (${JSON.stringify(pcs)})`);

    // The Rust side publishes both simulcast layers (a test pattern of a fixed size): the page
    // views it tiny and decodes half the width and height, then full again.
    const size = async () => page.evaluate(async (u) => (await window.client.getMediaStats())[u].video, peer);
    const full = await size();
    const view = (tiny) => page.evaluate(([u, t]) => window.client.setVideoView(u, window.videos[u], t), [peer, tiny]);
    check((await view(true)).code === 0, `${user} views ${peer} tiny`);
    await waitFor(page, `${user} decodes ${peer}'s tiny layer (half of ${full.frameWidth}x${full.frameHeight})`, async ([u, w, h]) => {
      const v = (await window.client.getMediaStats())[u].video;
      return v.frameWidth * 2 === w && v.frameHeight * 2 === h && window.videos[u].videoWidth * 2 === w;
    }, [peer, full.frameWidth, full.frameHeight]);
    check((await view(false)).code === 0, `${user} views ${peer} full again`);
    await waitFor(page, `${user} decodes ${peer}'s full layer again`, async ([u, w, h]) => {
      const v = (await window.client.getMediaStats())[u].video;
      return v.frameWidth === w && v.frameHeight === h && window.videos[u].videoWidth === w;
    }, [peer, full.frameWidth, full.frameHeight]);
  }

  // The Rust side's tone: the loudest bin of an FFT over its received audio, five times running.
  await page.evaluate((peer) => {
    const ctx = new AudioContext();
    const stream = new MediaStream(window.client.getRemoteMediaStream(peer).getAudioTracks());
    const analyser = ctx.createAnalyser();
    analyser.fftSize = 8192;
    ctx.createMediaStreamSource(stream).connect(analyser);
    window.dominant = () => {
      const bins = new Float32Array(analyser.frequencyBinCount);
      analyser.getFloatFrequencyData(bins);
      let best = 0;
      for (let i = 1; i < bins.length; i++) if (bins[i] > bins[best]) best = i;
      return { hz: (best * ctx.sampleRate) / analyser.fftSize, db: bins[best], state: ctx.state };
    };
    window.toneReadings = [];
    return ctx.resume();
  }, peer);
  await waitFor(page, `${user} hears ${peer}'s ${tone} Hz tone`, async (tone) => {
    const r = window.dominant();
    window.toneReadings.push(r);
    const last = window.toneReadings.slice(-5);
    return last.length === 5 && last.every((x) => Math.abs(x.hz - tone) <= 15 && x.db > -70);
  }, tone);
  const readings = await page.evaluate(() => window.toneReadings.slice(-5));
  log(`   ${user} <- ${peer}: dominant ${readings.map((r) => `${r.hz.toFixed(1)} Hz @ ${r.db.toFixed(0)} dB`).join(', ')}`);
  tell('checked');

  await waitFor(page, `${user}: call ended by ${peer}`, hasEvent, ['callEnded', null, null]);
  await waitFor(page, `${user}: call record`, hasEvent, ['receivedCallRecord', null, null]);
  tell('done');
}

await finish(main);
