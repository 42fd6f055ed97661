// Lip sync for what the recorder receives from a LiveKit room.
//
// LiveKit's server (unless a room is created with sync_streams) gives each
// track a stream of its own, so Chrome plays each one as soon as it can: a
// sound spends its jitter buffer (~40 ms) and the audio output's delay
// (~40 ms) before it is heard, a picture a few ms before it is shown, and
// the recording hears everyone ~80 ms after it sees them. Here each video is
// held back (its receiver's jitterBufferTarget) by as much as the sound of
// the same person (camera with microphone, screen share with its audio)
// takes longer from arrival to the speaker than the picture takes from
// arrival to the screen, measured from the receivers' own statistics over
// the last half second and followed as it changes.

const EVERY_MS = 500;
// Changes smaller than this are noise of the measure: the target stays.
const STEP_MS = 5;
const MAX_MS = 1000;
// The rest of a sound's way the statistics do not count (Chrome's output to PulseAudio), measured on this
// stack with sync markers: without it pictures still lead by ~25 ms.
const UNCOUNTED_MS = 25;
// A new measure moves the target this part of the way: one late second does not jolt the picture.
const EASE = 0.5;

// Which sound goes with which picture.
const PAIRS = { camera: 'person', microphone: 'person', screen_share: 'share', screen_share_audio: 'share' };

export class LipSync {
  constructor() {
    // `${identity}/${pair}` -> {audio, video: LiveKit RemoteTracks, last: {audio, video} stats, target}
    this.groups = new Map();
    this.timer = setInterval(() => this._tick(), EVERY_MS);
  }

  add(identity, track) {
    const key = this._key(identity, track);
    if (!key) return;
    const group = this.groups.get(key) ?? { target: 0, last: {} };
    group[track.kind] = track;
    group.last[track.kind] = null;
    this.groups.set(key, group);
  }

  remove(identity, track) {
    const key = this._key(identity, track);
    const group = key && this.groups.get(key);
    if (!group || group[track.kind] !== track) return;
    delete group[track.kind];
    if (!group.audio && !group.video) this.groups.delete(key);
  }

  close() {
    clearInterval(this.timer);
  }

  _key(identity, track) {
    const pair = PAIRS[track.source];
    return pair && (track.kind === 'audio' || track.kind === 'video') ? `${identity}/${pair}` : null;
  }

  async _tick() {
    for (const group of this.groups.values()) {
      if (!group.audio?.receiver || !group.video?.receiver) continue;
      try {
        await this._follow(group);
      } catch (err) {
        console.warn(`lipsync: ${err}`);
      }
    }
  }

  async _follow(group) {
    const [audio, video] = await Promise.all([read(group.audio.receiver), read(group.video.receiver)]);
    // The first time, the means since the tracks began: a first target at once, taken whole.
    const first = !group.last.audio || !group.last.video;
    const [before, beforeVideo] = [group.last.audio ?? {}, group.last.video ?? {}];
    group.last = { audio, video };
    const heard = per(audio, before, 'jitterBufferDelay', 'jitterBufferEmittedCount')
      + per(audio, before, 'totalPlayoutDelay', 'totalSamplesCount');
    // What a picture spends besides its jitter buffer (which is what the target sets).
    const shown = per(video, beforeVideo, 'totalDecodeTime', 'framesDecoded');
    if (!Number.isFinite(heard) || !Number.isFinite(shown)) return;
    const want = Math.min(MAX_MS, Math.max(0, (heard - shown) * 1000 + UNCOUNTED_MS));
    const next = first ? want : group.target + EASE * (want - group.target);
    if (Math.abs(next - group.target) < STEP_MS && want !== 0) return;
    group.target = Math.round(next);
    group.video.receiver.jitterBufferTarget = group.target;
  }
}

// The counters of a receiver's inbound stream and of the page's audio playout.
async function read(receiver) {
  const out = {};
  (await receiver.getStats()).forEach((s) => {
    if (s.type === 'inbound-rtp' || s.type === 'media-playout') {
      for (const [k, v] of Object.entries(s)) if (typeof v === 'number') out[k] = v;
    }
  });
  return out;
}

// The mean of `total` per `count` since `before` (seconds); 0 when the receiver has no such counter.
function per(now, before, total, count) {
  if (!(total in now)) return 0;
  const n = now[count] - (before[count] ?? 0);
  return n > 0 ? (now[total] - (before[total] ?? 0)) / n : NaN;
}
