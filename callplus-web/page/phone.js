// The demo phone served at the device port's root: a person signs in with a token, calls,
// sees the ring, accepts or rejects, mutes, hangs up and reads the call log. It uses only the
// public Web SDK (/sdk/index.js), as any web app would.

import { CallPlusClient } from '/sdk/index.js';

const $ = (id) => document.getElementById(id);

let client = null;
let me = null;
let current = null;
let incoming = null;
let microphoneOn = true;
let cameraOn = true;
/** userId -> tile element (a video and a name). */
const tiles = new Map();

function show(id, visible) { $(id).hidden = !visible; }

function status(text) { $('status').textContent = text; }

function callState(text) { $('call-state').textContent = text; }

function tile(userId) {
  let t = tiles.get(userId);
  if (t) return t;
  t = document.createElement('div');
  t.className = 'tile';
  t.dataset.user = userId;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true;
  const name = document.createElement('span');
  name.textContent = userId === me ? `${userId} (you)` : userId;
  t.append(video, name);
  $('tiles').append(t);
  tiles.set(userId, t);
  client.setVideoView(userId, video);
  return t;
}

function dropTile(userId) {
  const t = tiles.get(userId);
  if (!t) return;
  client.setVideoView(userId, null);
  t.remove();
  tiles.delete(userId);
}

function clearTiles() {
  for (const userId of [...tiles.keys()]) dropTile(userId);
}

function resetDevices() {
  microphoneOn = true;
  cameraOn = true;
  $('mute').textContent = 'Mute';
  $('camera').textContent = 'Camera off';
}

/** Shows the call card for a call of `mediaType` with tiles for `others`. */
function showCall(mediaType, others) {
  show('call', true);
  show('dialer', false);
  $('camera').hidden = mediaType !== 'AUDIO_VIDEO';
  if (mediaType === 'AUDIO_VIDEO') {
    tile(me);
    for (const u of others) tile(u);
  }
}

function endCall(text) {
  current = null;
  incoming = null;
  show('call', false);
  show('incoming', false);
  show('dialer', true);
  clearTiles();
  resetDevices();
  status(text);
}

function when(ms) {
  return ms > 0 ? new Date(ms).toLocaleTimeString() : '';
}

async function refreshLog() {
  const r = await client.getCallRecords(-1, 20, 1);
  const list = $('log');
  list.replaceChildren();
  if (r.code !== 0) return;
  for (const record of r.result.list) {
    const others = record.call.participants.map((p) => p.userId).filter((u) => u !== me);
    const li = document.createElement('li');
    li.className = 'record';
    li.textContent = `${record.direction === 'OUTGOING' ? '\u2197' : '\u2199'} ${others.join(', ')} \u00b7 ` +
      `${record.call.mediaType === 'AUDIO_VIDEO' ? 'video' : 'audio'} \u00b7 ${record.endReason.toLowerCase()} \u00b7 ` +
      `${Math.round(record.duration / 1000)} s \u00b7 ${when(record.call.createdAt)}`;
    list.append(li);
  }
}

const listener = {
  onConnectionStateChanged(state) {
    status(me ? `${me}: ${state.toLowerCase()}` : state.toLowerCase());
  },
  onReceivedCall(session) {
    incoming = session.getCallId();
    $('incoming-from').textContent = session.getInviterUserId();
    $('incoming-media').textContent = session.getMediaType() === 'AUDIO_VIDEO' ? 'video' : 'audio';
    show('incoming', true);
  },
  onCallConnected(session) {
    current = session.getCallId();
    incoming = null;
    show('incoming', false);
    const others = session.participants.map((p) => p.userId).filter((u) => u !== me);
    showCall(session.getMediaType(), others);
    callState(`On a call with ${others.join(', ')}`);
  },
  onRemoteUserStateChanged(callId, userId, state) {
    if (callId !== current) return;
    const call = client.getCurrentCallSession();
    if (state === 'ON_CALL' && call && call.mediaType === 'AUDIO_VIDEO') tile(userId);
    if (state === 'ENDED') dropTile(userId);
  },
  onCallEnded(session, reason) {
    const id = session.getCallId();
    // Another call (one that rang while this one ran, say) ends without touching this one.
    if (current !== null && id !== current && id !== incoming) return;
    endCall(`${me}: call ended (${reason.toLowerCase().replace(/_/g, ' ')})`);
  },
  onUserMediaAvailable(userId, mediaType) {
    if (userId !== me) client.playMedia(userId, mediaType);
  },
  onRemoteCameraStateChanged(callId, userId, disabled) {
    tiles.get(userId)?.classList.toggle('off', disabled);
  },
  onReceivedChangeMediaTypeRequest(userId, transactionId, mediaType) {
    const agree = window.confirm(`${userId} asks to switch to ${mediaType === 'AUDIO_VIDEO' ? 'video' : 'audio'}. Agree?`);
    client.replyChangeMediaType(transactionId, agree);
  },
  onReceivedCallRecord() { refreshLog(); },
};

async function signIn() {
  const token = $('token').value.trim();
  if (!token) return;
  $('signin-button').disabled = true;
  show('signin-error', false);
  client = new CallPlusClient();
  client.setCallPlusEventListener(listener);
  const r = await client.connect(token);
  $('signin-button').disabled = false;
  if (r.code !== 0) {
    $('signin-error').textContent = `Cannot sign in: ${r.message || r.name} (${r.code})`;
    show('signin-error', true);
    client = null;
    return;
  }
  me = r.userId;
  $('token').value = '';
  status(`${me}: connected`);
  show('signin', false);
  show('phone', true);
  refreshLog();
}

async function call(mediaType) {
  const userIds = $('callee').value.split(/[\s,]+/).filter(Boolean);
  if (!userIds.length) return;
  showCall(mediaType, []);
  callState(`Calling ${userIds.join(', ')}\u2026`);
  const r = await client.startCall({ userIds, callType: userIds.length > 1 ? 'MULTI' : 'SINGLE', mediaType });
  if (r.code !== 0) {
    endCall(`${me}: cannot call (${r.message || r.name})`);
    return;
  }
  current = r.callId;
}

$('signin-button').addEventListener('click', signIn);
$('call-audio').addEventListener('click', () => call('AUDIO'));
$('call-video').addEventListener('click', () => call('AUDIO_VIDEO'));
$('accept').addEventListener('click', async () => {
  const id = incoming;
  show('incoming', false);
  const r = await client.accept(id);
  if (r.code !== 0) endCall(`${me}: cannot accept (${r.message || r.name})`);
});
$('reject').addEventListener('click', () => {
  const id = incoming;
  show('incoming', false);
  client.hangup(id);
});
$('hangup').addEventListener('click', () => client.hangup(current || undefined));
$('mute').addEventListener('click', async () => {
  const r = microphoneOn ? await client.stopMicrophone() : await client.startMicrophone();
  if (r.code !== 0) return;
  microphoneOn = !microphoneOn;
  $('mute').textContent = microphoneOn ? 'Mute' : 'Unmute';
});
$('camera').addEventListener('click', async () => {
  const r = cameraOn ? await client.stopCamera() : await client.startCamera();
  if (r.code !== 0) return;
  cameraOn = !cameraOn;
  $('camera').textContent = cameraOn ? 'Camera off' : 'Camera on';
  tiles.get(me)?.classList.toggle('off', !cameraOn);
});
$('clear-log').addEventListener('click', async () => {
  await client.deleteAllCallRecords();
  refreshLog();
});
$('signout').addEventListener('click', async () => {
  await client.disconnect();
  client = null;
  me = null;
  clearTiles();
  $('log').replaceChildren();
  show('phone', false);
  show('signin', true);
  status('signed out');
});
