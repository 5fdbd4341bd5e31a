// Capture settings for the local camera and microphone: the seed's RCVideoConfigBuilder and
// RCAudioConfigBuilder. A built config is a plain frozen object; `setVideoConfig` /
// `setAudioConfig` keep it, and it takes effect at the next capture (a new call, a camera
// turned back on after the call dropped video, a switched device), as in the cloud SDKs. The
// bitrate bounds apply to the senders at once.

/** Capture resolutions (the seed's RCResolution names): width × height in pixels. */
export const VideoResolution = Object.freeze({
  W176_H144: 'W176_H144',
  W320_H180: 'W320_H180',
  W320_H240: 'W320_H240',
  W480_H360: 'W480_H360',
  W640_H360: 'W640_H360',
  W640_H480: 'W640_H480',
  W1280_H720: 'W1280_H720',
  W1920_H1080: 'W1920_H1080',
});

/** Capture frame rates (the seed's RCFps names). */
export const VideoFps = Object.freeze({ FPS_10: 10, FPS_15: 15, FPS_24: 24, FPS_30: 30 });

/** `{width, height}` of a `VideoResolution` name such as `W640_H360`, or null. */
export function parseResolution(name) {
  const m = /^W(\d{2,4})_H(\d{2,4})$/.exec(String(name));
  return m ? { width: Number(m[1]), height: Number(m[2]) } : null;
}

/** Bitrate bounds in kbps: both positive, min ≤ max; either may be omitted. */
function checkBitrate(min, max) {
  for (const v of [min, max]) {
    if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new RangeError(`bitrate must be a positive number of kbps, not ${v}`);
  }
  if (min !== undefined && max !== undefined && min > max) throw new RangeError(`minimum bitrate ${min} is above the maximum ${max}`);
}

/**
 * Builds the local video's capture settings.
 *
 * ```js
 * const config = client.createVideoConfigBuilder()
 *   .setVideoResolution(VideoResolution.W640_H360).setFps(VideoFps.FPS_24).setBitrate(300, 800).build();
 * client.setVideoConfig(config);
 * ```
 */
export class VideoConfigBuilder {
  #config = {};

  setVideoResolution(resolution) {
    const size = parseResolution(resolution);
    if (!size) throw new RangeError(`unknown video resolution ${resolution}`);
    Object.assign(this.#config, size);
    return this;
  }

  setFps(fps) {
    if (!(Number.isFinite(fps) && fps > 0 && fps <= 60)) throw new RangeError(`frame rate must be in 1..60, not ${fps}`);
    this.#config.frameRate = fps;
    return this;
  }

  setDefaultCameraId(cameraId) {
    this.#config.cameraId = cameraId ? String(cameraId) : undefined;
    return this;
  }

  /** Minimum and maximum send bitrate in kbps. */
  setBitrate(min, max) {
    checkBitrate(min, max);
    this.#config.minBitrate = min;
    this.#config.maxBitrate = max;
    return this;
  }

  build() { return Object.freeze({ ...this.#config }); }
}

/** Builds the local audio's capture settings (microphone, sample rate, bitrate). */
export class AudioConfigBuilder {
  #config = {};

  setDefaultMicrophoneId(microphoneId) {
    this.#config.microphoneId = microphoneId ? String(microphoneId) : undefined;
    return this;
  }

  setSampleRate(sampleRate) {
    if (!(Number.isInteger(sampleRate) && sampleRate >= 8000 && sampleRate <= 48000)) {
      throw new RangeError(`sample rate must be 8000..48000 Hz, not ${sampleRate}`);
    }
    this.#config.sampleRate = sampleRate;
    return this;
  }

  /** Minimum and maximum send bitrate in kbps. */
  setBitrate(min, max) {
    checkBitrate(min, max);
    this.#config.minBitrate = min;
    this.#config.maxBitrate = max;
    return this;
  }

  build() { return Object.freeze({ ...this.#config }); }
}

/**
 * getUserMedia constraints for the camera under `config` (device `cameraId` wins over it).
 *
 * The size is asked with `resizeMode: 'crop-and-scale'`. Without it a browser may pick the
 * camera's own format at that size and pass frames through unscaled; when another page opens the
 * same camera at another size at the same moment, the camera runs at that page's size and ours
 * follows it (Chromium shares one running camera between pages). Scaling keeps our track at the
 * config whatever the camera runs at.
 */
export function videoConstraints(config, cameraId) {
  const c = {};
  const device = cameraId || config.cameraId;
  if (device) c.deviceId = { exact: device };
  if (config.width) c.width = { ideal: config.width };
  if (config.height) c.height = { ideal: config.height };
  if (config.width || config.height) c.resizeMode = 'crop-and-scale';
  if (config.frameRate) c.frameRate = { ideal: config.frameRate };
  return Object.keys(c).length ? c : true;
}

/** getUserMedia constraints for the microphone under `config`. */
export function audioConstraints(config, microphoneId) {
  const c = {};
  const device = microphoneId || config.microphoneId;
  if (device) c.deviceId = { exact: device };
  if (config.sampleRate) c.sampleRate = { ideal: config.sampleRate };
  return Object.keys(c).length ? c : true;
}

/** The tiny simulcast layer's `rid` (the SFU takes any other for the full layer). */
export const TINY_RID = 'q';

/** The least maximum bitrate (bps) of the tiny layer, as callplus-media's `VideoConfig::tiny`. */
const TINY_MIN_BPS = 30000;

/**
 * Sets an RTCRtpSender's maximum bitrate (kbps) when it differs; senders without encodings are
 * left. The tiny simulcast layer gets a quarter of it (at least 30 kbps), as callplus-media's.
 */
export async function applyMaxBitrate(sender, maxKbps) {
  if (!sender || !sender.track) return;
  const params = sender.getParameters();
  if (!params.encodings || params.encodings.length === 0) return;
  const full = maxKbps ? maxKbps * 1000 : undefined;
  const want = (e) => (full === undefined || e.rid !== TINY_RID ? full : Math.max(TINY_MIN_BPS, Math.round(full / 4)));
  if (params.encodings.every((e) => e.maxBitrate === want(e))) return;
  for (const e of params.encodings) {
    const bps = want(e);
    if (bps === undefined) delete e.maxBitrate; else e.maxBitrate = bps;
  }
  await sender.setParameters(params);
}
