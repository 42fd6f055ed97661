// A synthetic room: participants scripted by spec (colour, voice tone,
// speaking windows, screen share, join/leave times, looping video, camera
// freezes), for the demo, layout authoring and tests. Room time 0 is
// START_RECORDING.

import { AudioRouter } from './audio.js';
import { CAMERA, MICROPHONE, Participant, Room, SCREEN_SHARE, Track } from './room.js';

const VOICE_LEVEL = 0.2;
const CLICK_HZ = 3000;
const CLICK_S = 0.015;
const FLASH_MS = 100;
// Marker n comes MARKER_STEPS_MS[n % 10] after second n: the steps cover a frame's time at 30 fps, so a run's
// markers fall at every place between two captured frames and their mean offset is the recording's, not
// where one run's frame grid happened to fall (up to ±17 ms of phase, the same for every marker of a run).
const MARKER_STEPS_MS = [0, 23.3, 10, 30, 16.7, 3.3, 26.7, 13.3, 6.7, 20];

// The room time (ms) of marker n.
function markerMs(n) {
  return n * 1000 + MARKER_STEPS_MS[n % MARKER_STEPS_MS.length];
}
const AUDIO_LOOKAHEAD_S = 0.3;

function div(className, style = {}) {
  const el = document.createElement('div');
  el.className = className;
  Object.assign(el.style, style);
  return el;
}

// A coloured picture with a moving square, so every frame differs; plus the
// white flash used by sync markers. Names are the layout's business (labels).
function colourPicture(color) {
  const el = div('syn-track', { background: color });
  el.append(div('syn-mover'), div('syn-flash'));
  return el;
}

function videoPicture(src) {
  const el = div('syn-track');
  const video = document.createElement('video');
  Object.assign(video, { src, loop: true, muted: true, autoplay: true, playsInline: true });
  el.append(video, div('syn-flash'));
  return el;
}

// Stops (or restarts) a synthetic picture: the moving square halts, a looping clip pauses.
function still(el, frozen) {
  el.classList.toggle('frozen', frozen);
  const video = el.querySelector('video');
  if (video && frozen) video.pause();
  else if (video && video.paused) video.play().catch(() => {});
  return el;
}

// A synthetic camera's picture counter: a new picture whenever it is read, none while the script freezes it
// (see Track.frameCounter).
function cameraFrames(spec) {
  let count = 0;
  return () => (spec.frozen ? count : ++count);
}

function within(windows, t) {
  return windows.some(([s, e]) => t >= s && t < e);
}

export class SyntheticRoom extends Room {
  constructor(desc, { syncMarkers = false, routing = null } = {}) {
    super(desc.name || 'synthetic');
    this.specs = (desc.participants || []).map((s, i) => ({
      ...s,
      identity: s.name || `P${i + 1}`,
      joins: s.joins || 0,
      leaves: s.leaves ?? Infinity,
      // null speaks = all the time while present
      windows: (s.speaks ?? [{ start: 0, end: Infinity }]).map((w) => [w.start, w.end]),
      freezes: (s.freezes || []).map((w) => [w.start, w.end]),
      frozen: false,
      mutes: (s.mutes || []).map((w) => [w.start, w.end]),
      muted: false,
    }));
    this.syncMarkers = syncMarkers;
    this.routing = routing;
    this.router = null;
    this.t0 = null;
    // The sound starts now, while the layout loads: it takes a while to flow (see _audioSettled).
    this.audio = new AudioContext({ sampleRate: 48000 });
    this._audioFlowing = this._audioSettled();
    this._soundQueue = [];
    this._clockOffsets = [];
    this._videos = [];
    this._consent = new Map(); // identity -> GainNode: 1 while the filter admits them, else 0
  }

  time() { return this.t0 === null ? 0 : (performance.now() - this.t0) / 1000; }

  // (A muted microphone is not heard: its owner is not speaking.)
  _speaksAt(spec, t) { return spec.tone > 0 && within(spec.windows, t) && !within(spec.mutes, t); }

  _join(spec, t) {
    const p = new Participant({ identity: spec.identity, name: spec.name, color: spec.color });
    this.addParticipant(p);
    if (spec.video !== 'off') {
      this.publish(spec.identity, new Track({
        sid: `TR_${spec.identity}_cam`, kind: 'video', source: CAMERA, participant: p,
        makeElement: () => still(spec.video ? this._trackVideo(videoPicture(spec.video)) : colourPicture(spec.color),
          spec.frozen),
        frameCounter: () => cameraFrames(spec),
      }));
    }
    if (spec.tone > 0) {
      this.publish(spec.identity, new Track({
        sid: `TR_${spec.identity}_mic`, kind: 'audio', source: MICROPHONE, participant: p, makeElement: () => div('syn-audio'),
        isMuted: () => spec.muted,
      }));
    }
    if (spec.screenshare && t >= spec.screenshare.start && t < spec.screenshare.end) this._share(spec);
    this.setSpeaking(spec.identity, this._speaksAt(spec, t));
  }

  _share(spec) {
    const p = this.participants.get(spec.identity);
    if (!p) return;
    this.publish(spec.identity, new Track({
      sid: `TR_${spec.identity}_screen`, kind: 'video', source: SCREEN_SHARE, participant: p,
      makeElement: () => colourPicture(spec.screenshare.color),
    }));
  }

  _trackVideo(el) {
    this._videos.push(el.querySelector('video'));
    return el;
  }

  // Everyone present at time 0, rendered and (for looping clips) playing.
  async prepare() {
    for (const spec of this.specs) if (spec.joins === 0) this._join(spec, 0);
    await new Promise((r) => requestAnimationFrame(r));
    const videosReady = Promise.all(this._videos.map((v) => (v.readyState >= 3 ? null : new Promise((resolve) => {
      v.addEventListener('playing', resolve, { once: true });
      v.addEventListener('error', resolve, { once: true });
      setTimeout(resolve, 5000);
    }))));
    if (this.routing) {
      this.router = new AudioRouter(this.audio, this.routing);
      // The script says who joins when: the voices' sides (dual_channel_alternate) follow that order.
      const voices = this.specs.filter((s) => s.tone > 0).sort((a, b) => a.joins - b.joins);
      for (const spec of voices) this.router.takeSide(spec.identity);
    }
    await Promise.all([videosReady, this._audioFlowing]);
  }

  // getOutputTimestamp() maps the audio clock onto performance.now() only
  // once sound flows: wait for that (read often: this wait is most of a warm
  // start), take the first reading, then keep a running median of the mapping
  // (single readings jitter by ~10 ms under load; _pumpSound adds one every
  // 100 ms, well before the first sync marker at 1 s).
  async _audioSettled(timeoutMs = 3000) {
    await this.audio.resume();
    const until = performance.now() + timeoutMs;
    let first = null;
    while (performance.now() < until) {
      await new Promise((r) => setTimeout(r, 10));
      const now = this.audio.getOutputTimestamp();
      if (now.performanceTime <= 0) continue;
      first ??= now;
      if (now.contextTime - first.contextTime > 0.02) break;
    }
    this._sampleClock();
  }

  _sampleClock() {
    const ts = this.audio.getOutputTimestamp();
    if (ts.performanceTime <= 0) return;
    this._clockOffsets.push(ts.contextTime * 1000 - ts.performanceTime);
    if (this._clockOffsets.length > 15) this._clockOffsets.shift();
  }

  // Audio-clock time at which room time t (seconds) is heard.
  _audioTime(t) {
    const sorted = [...this._clockOffsets].sort((a, b) => a - b);
    const offset = sorted[Math.floor(sorted.length / 2)] ?? 0;
    return (this.t0 + t * 1000 + offset) / 1000;
  }

  _at(t, fn) {
    setTimeout(fn, Math.max(0, this.t0 + t * 1000 - performance.now()));
  }

  // Sound events are handed to the audio clock shortly before they are due,
  // with the clock mapping of that moment, so drift never accumulates.
  _sound(t, fn) {
    this._soundQueue.push({ t, fn });
  }

  _pumpSound() {
    this._sampleClock();
    const horizon = this.time() + AUDIO_LOOKAHEAD_S;
    this._soundQueue.sort((a, b) => a.t - b.t);
    while (this._soundQueue.length && this._soundQueue[0].t <= horizon) {
      const { t, fn } = this._soundQueue.shift();
      fn(this._audioTime(t));
    }
  }

  start(t0 = performance.now()) {
    this.t0 = t0;
    for (const spec of this.specs) {
      if (spec.joins > 0) this._at(spec.joins, () => this._join(spec, spec.joins));
      if (Number.isFinite(spec.leaves)) this._at(spec.leaves, () => this._leave(spec));
      for (const [s, e] of spec.windows) {
        if (s > 0) this._at(s, () => this.setSpeaking(spec.identity, this._speaksAt(spec, s)));
        if (Number.isFinite(e)) this._at(e, () => this.setSpeaking(spec.identity, this._speaksAt(spec, e)));
      }
      for (const [s, e] of spec.freezes) {
        this._at(s, () => this._freeze(spec, true));
        this._at(e, () => this._freeze(spec, false));
      }
      for (const [s, e] of spec.mutes) {
        this._at(s, () => this._mute(spec, true, s));
        if (Number.isFinite(e)) this._at(e, () => this._mute(spec, false, e));
      }
      if (spec.screenshare) {
        const { start, end } = spec.screenshare;
        if (start > 0) this._at(start, () => this._share(spec));
        this._at(end, () => this.unpublish(spec.identity, SCREEN_SHARE));
      }
      this._voice(spec);
    }
    if (this.syncMarkers) this._startMarkers();
    this._pumpSound();
    setInterval(() => this._pumpSound(), 100);
  }

  // The script's network drop: every picture of the camera stops where it is, and no new frames come.
  _freeze(spec, frozen) {
    spec.frozen = frozen;
    for (const el of document.querySelectorAll(`[data-track-sid="${CSS.escape(`TR_${spec.identity}_cam`)}"]`)) {
      still(el, frozen);
    }
  }

  // The script mutes or unmutes the microphone at room time t: the model says so (mute icon, idle stop) and
  // the speaking state follows; the sound itself is gated on the audio clock (see _voice).
  _mute(spec, muted, t) {
    spec.muted = muted;
    const p = this._find(spec.identity);
    const mic = p && p.tracks.get(MICROPHONE);
    if (mic) this.muteChanged(spec.identity, mic);
    this.setSpeaking(spec.identity, this._speaksAt(spec, t));
  }

  _leave(spec) {
    this.removeParticipant(spec.identity);
    const pending = this.specs.some((s) => s.joins > this.time());
    // Someone the filter leaves out is still in the room: it goes on (silent, empty) while they are.
    if (this.participants.size === 0 && this.hidden.size === 0 && !pending) this.end();
  }

  // The participant's tone, gated to their speaking windows while present.
  _voice(spec) {
    if (!(spec.tone > 0)) return;
    const ctx = this.audio;
    const osc = new OscillatorNode(ctx, { type: 'sine', frequency: spec.tone });
    const gain = new GainNode(ctx, { gain: 0 });
    // After the speaking gate, a gate of its own for the filter: the two never schedule over each other.
    const consent = new GainNode(ctx, { gain: this.admits(spec.identity) ? 1 : 0 });
    this._consent.set(spec.identity, consent);
    // And one for the script's mutes, on the audio clock like the speaking windows.
    const mic = new GainNode(ctx, { gain: within(spec.mutes, 0) ? 0 : 1 });
    for (const [s, e] of spec.mutes) {
      if (s > 0) this._sound(s, (at) => mic.gain.setTargetAtTime(0, at, 0.002));
      if (Number.isFinite(e)) this._sound(e, (at) => mic.gain.setTargetAtTime(1, at, 0.002));
    }
    osc.connect(gain).connect(mic).connect(consent);
    if (this.router) {
      this.router.play(consent, { trackSid: `TR_${spec.identity}_mic`, identity: spec.identity, kind: spec.kind || 'standard' });
    } else {
      consent.connect(ctx.destination);
    }
    osc.start();
    for (const [s, e] of spec.windows) {
      const from = Math.max(s, spec.joins);
      const to = Math.min(e, spec.leaves);
      if (to <= from) continue;
      this._sound(from, (at) => gain.gain.setTargetAtTime(VOICE_LEVEL, at, 0.002));
      if (Number.isFinite(to)) this._sound(to, (at) => gain.gain.setTargetAtTime(0, at, 0.002));
    }
  }

  // The filter let `identity` in or out: their voice plays or stops from the next render quantum.
  setAudible(identity, audible) {
    const consent = this._consent.get(identity);
    if (!consent) return;
    consent.gain.cancelScheduledValues(0);
    consent.gain.setValueAtTime(audible ? 1 : 0, this.audio.currentTime);
  }

  // Once a second (markerMs): a white flash on every tile and a click, on one clock.
  _startMarkers() {
    let next = 1;
    const click = (at) => {
      const osc = new OscillatorNode(this.audio, { type: 'sine', frequency: CLICK_HZ });
      osc.connect(new GainNode(this.audio, { gain: 0.6 })).connect(this.audio.destination);
      osc.start(at);
      osc.stop(at + CLICK_S);
    };
    const queueClicks = () => {
      for (; next <= this.time() + 2; next += 1) this._sound(markerMs(next) / 1000, click);
    };
    queueClicks();
    setInterval(queueClicks, 500);
    // A flash shows from the page's frame nearest its marker's time, as a video shows the picture nearest its
    // sound's clock. (From the first frame after it, a flash would be half a frame late on average: 8 ms at
    // 60 Hz, 17 ms when Chromium draws at 30 Hz, as it does on a busy machine.) The frame period is the median
    // of the last few.
    const periods = [];
    let last = null;
    const frame = (now) => {
      if (last !== null && now > last) periods.push(now - last);
      if (periods.length > 9) periods.shift();
      last = now;
      const half = periods.length ? [...periods].sort((a, b) => a - b)[periods.length >> 1] / 2 : 0;
      const ms = now - this.t0 + half;
      const n = Math.floor(ms / 1000);
      const at = markerMs(n);
      document.body.classList.toggle('sync-flash', n >= 1 && ms >= at && ms < at + FLASH_MS);
      requestAnimationFrame(frame);
    };
    requestAnimationFrame(frame);
  }
}
