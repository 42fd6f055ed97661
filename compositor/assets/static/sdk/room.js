// The room model every layout renders from, whatever the room kind
// (synthetic here; LiveKit plugs in below the same model).
//
// Events (all on the Room, as CustomEvent with {detail}):
//   participantJoined, participantLeft, trackPublished, trackUnpublished,
//   trackMuted, speakingChanged, ended; and `change` after any of them.
//
// Who is recorded (consent): setFilter({ include } | { exclude }) keeps out
// of the room model whoever the filter leaves out. They are held aside in
// `hidden` (their tracks and speaking state still followed), so layouts never
// see them; a change moves people in and out as if they joined or left, and
// the room kinds silence their sound (setAudible).

export const CAMERA = 'camera';
export const SCREEN_SHARE = 'screen_share';
export const MICROPHONE = 'microphone';

export class Track {
  // makeElement() returns a fresh element showing the track; each attach()
  // gets its own, as livekit-client's Track.attach() does. isMuted() reads
  // the room's own mute state (a synthetic track is never muted).
  // frameCounter(element) -> count, if given, makes the counter of pictures
  // an attached element has shown; without it a <video> element counts its own.
  constructor({ sid, kind, source, participant, makeElement, isMuted = () => false, frameCounter = null }) {
    this.sid = sid;
    this.kind = kind;
    this.source = source;
    this.participant = participant;
    this._makeElement = makeElement;
    this._isMuted = isMuted;
    this._frameCounter = frameCounter;
  }

  get muted() { return this._isMuted(); }

  attach() {
    const el = this._makeElement();
    el.dataset.trackSid = this.sid;
    return el;
  }

  // A function that tells how many pictures `el` (from attach()) has shown so far, or null when the element
  // cannot tell. Read now and then: a callback on every frame of every video would cost the page a main-thread
  // frame each time (~0.02 core for four 30 fps cameras).
  frameCounter(el) {
    if (this._frameCounter) return this._frameCounter(el);
    const video = el.tagName === 'VIDEO' ? el : el.querySelector('video');
    if (!video || !video.getVideoPlaybackQuality) return null;
    return () => video.getVideoPlaybackQuality().totalVideoFrames;
  }
}

export class Participant {
  constructor({ identity, name, color = null, joinedAt = 0 }) {
    this.identity = identity;
    this.name = name || identity;
    this.color = color;
    this.joinedAt = joinedAt;
    this.tracks = new Map();
    this.speaking = false;
    this.lastSpokeAt = -Infinity;
    this.speakingSince = -Infinity;
  }

  get camera() { return this.tracks.get(CAMERA) || null; }
  get screenShare() { return this.tracks.get(SCREEN_SHARE) || null; }
  get microphone() { return this.tracks.get(MICROPHONE) || null; }
}

export class Room extends EventTarget {
  constructor(name = '') {
    super();
    this.name = name;
    this.participants = new Map();
    this.hidden = new Map(); // identity -> Participant the filter leaves out
    this.filter = null; // { include: [...] } | { exclude: [...] } | null: everyone
  }

  // Whether the filter lets `identity` be seen and heard.
  admits(identity) {
    const f = this.filter;
    if (!f) return true;
    return f.include ? f.include.includes(identity) : !(f.exclude || []).includes(identity);
  }

  // The participant, shown or held aside.
  _find(identity) {
    return this.participants.get(identity) || this.hidden.get(identity);
  }

  // A room kind silences (false) or plays again (true) everything of `identity`; the base room has no sound.
  setAudible(_identity, _audible) {}

  // Applies a new filter (replacing the old): the newly left out are silenced
  // first, then leave the layouts; the newly let in join them in join order.
  setFilter(filter) {
    this.filter = filter || null;
    const out = this.list.filter((p) => !this.admits(p.identity));
    const back = [...this.hidden.values()].filter((p) => this.admits(p.identity));
    for (const p of out) {
      this.setAudible(p.identity, false);
      this.participants.delete(p.identity);
      this.hidden.set(p.identity, p);
      this._emit('participantLeft', { participant: p });
    }
    if (back.length) {
      for (const p of back) this.hidden.delete(p.identity);
      const all = [...this.participants.values(), ...back].sort((a, b) => a.joinedAt - b.joinedAt);
      this.participants = new Map(all.map((p) => [p.identity, p]));
    }
    for (const p of back) {
      this.setAudible(p.identity, true);
      this._emit('participantJoined', { participant: p });
    }
  }

  // Participants in join order.
  get list() { return [...this.participants.values()]; }

  _emit(type, detail = {}) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
    this.dispatchEvent(new CustomEvent('change', { detail: { type, ...detail } }));
  }

  addParticipant(p) {
    if (this._find(p.identity)) return;
    p.joinedAt = performance.now();
    if (!this.admits(p.identity)) {
      this.hidden.set(p.identity, p);
      return;
    }
    this.participants.set(p.identity, p);
    this._emit('participantJoined', { participant: p });
  }

  removeParticipant(identity) {
    if (this.hidden.delete(identity)) return;
    const p = this.participants.get(identity);
    if (!p) return;
    this.participants.delete(identity);
    this._emit('participantLeft', { participant: p });
  }

  publish(identity, track) {
    const p = this._find(identity);
    if (!p) return;
    track.publishedAt = performance.now();
    p.tracks.set(track.source, track);
    if (this.participants.has(identity)) this._emit('trackPublished', { participant: p, track });
  }

  unpublish(identity, source) {
    const p = this._find(identity);
    const track = p && p.tracks.get(source);
    if (!track) return;
    p.tracks.delete(source);
    if (this.participants.has(identity)) this._emit('trackUnpublished', { participant: p, track });
  }

  // A track of `identity` was muted or unmuted (its `muted` already says which).
  muteChanged(identity, track) {
    const p = this._find(identity);
    if (p && this.participants.has(identity)) this._emit('trackMuted', { participant: p, track });
  }

  setSpeaking(identity, speaking) {
    const p = this._find(identity);
    if (!p || p.speaking === speaking) return;
    const now = performance.now();
    p.speaking = speaking;
    if (speaking) p.speakingSince = now;
    p.lastSpokeAt = now;
    if (this.participants.has(identity)) this._emit('speakingChanged', { participant: p });
  }

  end() { this._emit('ended'); }
}

// The participant a layout should feature, changed no more often than
// holdMs so the picture does not flicker between voices.
export class ActiveSpeaker extends EventTarget {
  constructor(room, holdMs = 1000) {
    super();
    this.room = room;
    this.holdMs = holdMs;
    this.current = null;
    this._switchedAt = -Infinity;
    this._byDefault = false;
    this._timer = null;
    room.addEventListener('change', () => this.update());
    this.update();
  }

  _candidate() {
    const speaking = this.room.list.filter((p) => p.speaking);
    if (!speaking.length) return null;
    // The latest to start talking has the floor.
    return speaking.reduce((a, b) => (b.speakingSince > a.speakingSince ? b : a));
  }

  update() {
    const room = this.room;
    const now = performance.now();
    let next = this.current;
    if (!next || !room.participants.has(next.identity)) {
      next = this._candidate() || room.list[0] || null;
    } else if (!next.speaking) {
      const candidate = this._candidate();
      if (candidate && candidate !== next) {
        // A pick made while nobody spoke gives way at once to the first voice.
        const wait = this._byDefault ? 0 : this._switchedAt + this.holdMs - now;
        if (wait > 0) {
          clearTimeout(this._timer);
          this._timer = setTimeout(() => this.update(), wait + 1);
          return;
        }
        next = candidate;
      }
    }
    if (next !== this.current) {
      this.current = next;
      this._byDefault = !!next && !next.speaking;
      this._switchedAt = now;
      this.dispatchEvent(new CustomEvent('change', { detail: { participant: next } }));
    }
  }
}

// The newest screen share in the room, if any.
export function latestScreenShare(room) {
  let best = null;
  for (const p of room.list) {
    const t = p.screenShare;
    if (t && (!best || (t.publishedAt || 0) >= (best.track.publishedAt || 0))) best = { participant: p, track: t };
  }
  return best;
}
