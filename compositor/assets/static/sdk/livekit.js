// A LiveKit room behind the same room model the layouts render from: the
// recorder joins hidden and subscribe-only (its token says so), follows
// participants, their camera / screen-share / microphone tracks and who is
// speaking, and plays every microphone into the page's sound.
//
// A participant or track egress records part of the room: `focus` names one
// identity (its camera and microphone, or with screenShare its screen share
// and that sound) or a set of track ids; nothing else is even subscribed.
//
// With audio routing (audio.js), each voice plays through the router into
// its channel instead of through its own <audio> element.
//
// Whoever the participant filter (room.js) leaves out is not subscribed: their
// sound and pictures are dropped here the moment the filter changes, and the
// server stops sending them.

import { Room as LkRoom, ParticipantKind, RoomEvent, Track as LkTrack } from '/vendor/livekit-client.mjs';
import { AudioRouter } from './audio.js';
import { LipSync } from './lipsync.js';
import { CAMERA, MICROPHONE, Participant, Room, SCREEN_SHARE, Track } from './room.js';

const SOURCES = {
  [LkTrack.Source.Camera]: CAMERA,
  [LkTrack.Source.ScreenShare]: SCREEN_SHARE,
  [LkTrack.Source.Microphone]: MICROPHONE,
};
const PERSON = [LkTrack.Source.Camera, LkTrack.Source.Microphone];
const SHARE = [LkTrack.Source.ScreenShare, LkTrack.Source.ScreenShareAudio];

// Speaking is measured here, from the sound we decode: the server's active
// speakers rely on audio levels the publisher may not send (server SDKs, SIP).
const SPEAKING_RMS = 0.01; // about -40 dBFS
const SPEAKING_HOLD_MS = 600; // a pause between words is not silence
const LEVEL_EVERY_MS = 100;

// A participant's kind as the routes name it (LiveKit's ParticipantInfo.Kind, lowercased); an agent is also
// whoever holds the agent grant, as livekit-client's isAgent says.
function kindOf(p) {
  return p.isAgent ? 'agent' : String(ParticipantKind[p.kind] ?? 'standard').toLowerCase();
}

export class LiveKitRoom extends Room {
  constructor(url, token, focus = {}, routing = null) {
    super('');
    this.url = url;
    this.token = token;
    this.focus = focus;
    this.partial = Boolean(focus.identity || focus.trackIds?.length);
    // Adaptive stream: each tile asks for the simulcast layer that fits its size.
    this.lk = new LkRoom({ adaptiveStream: true, dynacast: false });
    this.sound = document.createElement('div');
    this.sound.hidden = true;
    document.body.appendChild(this.sound);
    this.levels = new Map(); // identity -> {analyser, buffer, heardAt}
    this.hearing = false; // some sound is subscribed
    this.audioContext = null;
    this.routing = routing;
    this.router = null;
    this.routed = new Map(); // track sid -> {element, stop}: voices playing through the router
    this.lipSync = new LipSync(); // each picture waits for its sound
  }

  // Whether this egress records `pub` of participant `p`.
  wants(pub, p) {
    const { identity, screenShare, trackIds } = this.focus;
    if (identity) return p.identity === identity && (screenShare ? SHARE : PERSON).includes(pub.source);
    if (trackIds?.length) return trackIds.includes(pub.trackSid);
    return true;
  }

  async prepare() {
    const lk = this.lk;
    if (this.routing) {
      this.audioContext = new AudioContext();
      this.router = new AudioRouter(this.audioContext, this.routing);
      await this.audioContext.resume();
    }
    lk.on(RoomEvent.ParticipantConnected, (p) => { if (!this.partial) this._join(p); })
      .on(RoomEvent.ParticipantDisconnected, (p) => this.removeParticipant(p.identity))
      .on(RoomEvent.TrackPublished, (pub, p) => { if (this.partial && this.wants(pub, p)) pub.setSubscribed(true); })
      .on(RoomEvent.TrackSubscribed, (track, pub, p) => this._subscribed(track, pub, p))
      .on(RoomEvent.TrackUnsubscribed, (track, _pub, p) => this._unsubscribed(track, p))
      // Layouts show a muted microphone and put a muted camera's avatar in its place.
      .on(RoomEvent.TrackMuted, (pub, p) => this._muteChanged(pub, p))
      .on(RoomEvent.TrackUnmuted, (pub, p) => this._muteChanged(pub, p))
      .on(RoomEvent.SignalReconnecting, () => console.warn('livekit: signal connection lost; resuming'))
      .on(RoomEvent.Reconnecting, () => console.warn('livekit: reconnecting'))
      .on(RoomEvent.Reconnected, () => console.log('livekit: reconnected'))
      // The client retries a lost connection itself (Reconnecting); Disconnected is final:
      // the room was deleted, the recorder removed, or reconnecting failed.
      .on(RoomEvent.Disconnected, (reason) => {
        console.log(`livekit: disconnected (reason ${reason})`);
        this.end();
      });
    // Tracks subscribed while connecting are taken below, once everyone present is placed in join order.
    this.connecting = true;
    await lk.connect(this.url, this.token, { autoSubscribe: !this.partial });
    this.connecting = false;
    setInterval(() => this._measure(), LEVEL_EVERY_MS);
    this.name = lk.name;
    // The room's order is who joined first (the server's list is not in that order); joinedAt
    // has whole seconds, the server's joined_at_ms tells apart people who joined within one.
    const joined = (p) => Number(p.participantInfo?.joinedAtMs ?? 0) || (p.joinedAt?.getTime() ?? 0);
    const present = [...lk.remoteParticipants.values()].sort((a, b) => joined(a) - joined(b));
    for (const p of present) {
      // Those present who publish sound take their sides (dual_channel_alternate) in join order, whichever of
      // their tracks is subscribed first; whoever comes later, when first heard.
      const sound = [...p.trackPublications.values()].some((pub) => pub.kind === 'audio' && this.wants(pub, p));
      if (sound) this.router?.takeSide(p.identity);
      if (!this.partial) this._join(p);
      for (const pub of p.trackPublications.values()) {
        if (this.partial && this.wants(pub, p) && !pub.isSubscribed) pub.setSubscribed(true);
        else if (pub.track && pub.isSubscribed) this._subscribed(pub.track, pub, p);
      }
    }
  }

  // Resolves once there is something to record: a decoded video frame, or
  // (nobody on camera) subscribed audio; or after `timeoutMs`, saying so.
  ready(root, timeoutMs) {
    return new Promise((resolve) => {
      const check = () => {
        const video = [...root.querySelectorAll('video')].some((v) => v.readyState >= 2 && v.videoWidth > 0);
        const cameras = this.list.some((p) => p.camera || p.screenShare);
        if (video || (!cameras && this.hearing)) return done(video ? 'video' : 'audio');
        return undefined;
      };
      const timer = setTimeout(() => done('timeout'), timeoutMs);
      const poll = setInterval(check, 50);
      function done(why) {
        clearTimeout(timer);
        clearInterval(poll);
        if (why === 'timeout') console.warn(`livekit: nothing to record after ${timeoutMs} ms; starting anyway`);
        resolve(why);
      }
      check();
    });
  }

  start() {}

  _join(p) {
    this.addParticipant(new Participant({ identity: p.identity, name: p.name || p.identity }));
  }

  _subscribed(track, pub, p) {
    if (this.connecting || (this.partial && !this.wants(pub, p))) return;
    if (!this.admits(p.identity)) {
      pub.setSubscribed(false);
      return;
    }
    // Every sound plays (a screen share's audio too); the room model holds what layouts arrange.
    if (track.kind === 'audio') {
      if (this.router) this._route(track, pub, p);
      else this.sound.appendChild(track.attach());
      this.hearing = true;
      if (track.source === LkTrack.Source.Microphone) this._listen(p.identity, track);
    }
    // A participant egress shows its person whatever they publish; a track egress shows only video tracks.
    if (this.focus.identity || (this.partial && track.kind === 'video')) this._join(p);
    this.lipSync.add(p.identity, track);
    const source = SOURCES[track.source];
    if (!source) return;
    this.publish(p.identity, new Track({
      sid: track.sid, kind: track.kind, source, participant: this.participants.get(p.identity),
      makeElement: () => track.attach(),
      isMuted: () => pub.isMuted,
    }));
  }

  _unsubscribed(track, p) {
    this.lipSync.remove(p.identity, track);
    const source = SOURCES[track.source];
    if (track.kind === 'audio') track.detach().forEach((el) => el.remove());
    this._unroute(track.sid);
    if (track.source === LkTrack.Source.Microphone) this._unlisten(p.identity);
    if (source) this.unpublish(p.identity, source);
  }

  _muteChanged(pub, p) {
    const track = this._find(p.identity)?.tracks.get(SOURCES[pub.source]);
    if (track) this.muteChanged(p.identity, track);
  }

  // The filter let `identity` in (subscribe again: _subscribed plays and shows them) or out: stop their sound
  // and pictures now, before the server hears of the unsubscription.
  setAudible(identity, audible) {
    const p = this.lk.remoteParticipants.get(identity);
    if (!p) return;
    for (const pub of p.trackPublications.values()) {
      if (audible) {
        pub.setSubscribed(true);
      } else {
        if (pub.track) this._unsubscribed(pub.track, p);
        pub.setSubscribed(false);
      }
    }
  }

  // The voice into its channel. Chrome feeds WebAudio a remote WebRTC track only while a media element plays
  // it too: a muted one does.
  _route(track, pub, p) {
    this._unroute(track.sid);
    const stream = new MediaStream([track.mediaStreamTrack]);
    const element = new Audio();
    element.muted = true;
    element.srcObject = stream;
    element.play().catch((err) => console.warn(`livekit: muted element for ${track.sid}: ${err}`));
    this.sound.appendChild(element);
    const stop = this.router.play(this.audioContext.createMediaStreamSource(stream),
      { trackSid: pub.trackSid, identity: p.identity, kind: kindOf(p) });
    this.routed.set(track.sid, { element, stop });
  }

  _unroute(sid) {
    const voice = this.routed.get(sid);
    if (!voice) return;
    voice.stop();
    voice.element.srcObject = null;
    voice.element.remove();
    this.routed.delete(sid);
  }

  _listen(identity, track) {
    this._unlisten(identity);
    this.audioContext ??= new AudioContext();
    const analyser = this.audioContext.createAnalyser();
    analyser.fftSize = 1024;
    const input = this.audioContext.createMediaStreamSource(new MediaStream([track.mediaStreamTrack]));
    input.connect(analyser); // measured only: the <audio> element plays it
    this.levels.set(identity, { input, analyser, buffer: new Float32Array(analyser.fftSize), heardAt: -Infinity });
  }

  _unlisten(identity) {
    const level = this.levels.get(identity);
    if (!level) return;
    level.input.disconnect();
    this.levels.delete(identity);
    this.setSpeaking(identity, false);
  }

  _measure() {
    const now = performance.now();
    for (const [identity, level] of this.levels) {
      level.analyser.getFloatTimeDomainData(level.buffer);
      const rms = Math.sqrt(level.buffer.reduce((sum, x) => sum + x * x, 0) / level.buffer.length);
      if (rms >= SPEAKING_RMS) level.heardAt = now;
      this.setSpeaking(identity, now - level.heardAt < SPEAKING_HOLD_MS);
    }
  }
}
