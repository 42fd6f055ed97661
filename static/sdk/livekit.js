// A LiveKit room behind the same room model the layouts render from: the
// recorder joins hidden and subscribe-only (its token says so), follows
// participants, their camera / screen-share / microphone tracks and who is
// speaking, and plays every microphone into the page's sound.

import { Room as LkRoom, RoomEvent, Track as LkTrack } from '/vendor/livekit-client.mjs';
import { CAMERA, MICROPHONE, Participant, Room, SCREEN_SHARE, Track } from './room.js';

const SOURCES = {
  [LkTrack.Source.Camera]: CAMERA,
  [LkTrack.Source.ScreenShare]: SCREEN_SHARE,
  [LkTrack.Source.Microphone]: MICROPHONE,
};

export class LiveKitRoom extends Room {
  constructor(url, token) {
    super('');
    this.url = url;
    this.token = token;
    // Adaptive stream: each tile asks for the simulcast layer that fits its size.
    this.lk = new LkRoom({ adaptiveStream: true, dynacast: false });
    this.sound = document.createElement('div');
    this.sound.hidden = true;
    document.body.appendChild(this.sound);
  }

  async prepare() {
    const lk = this.lk;
    lk.on(RoomEvent.ParticipantConnected, (p) => this._join(p))
      .on(RoomEvent.ParticipantDisconnected, (p) => this.removeParticipant(p.identity))
      .on(RoomEvent.TrackSubscribed, (track, _pub, p) => this._subscribed(track, p))
      .on(RoomEvent.TrackUnsubscribed, (track, _pub, p) => this._unsubscribed(track, p))
      .on(RoomEvent.ActiveSpeakersChanged, (speakers) => this._speakers(speakers))
      .on(RoomEvent.Reconnecting, () => console.warn('livekit: reconnecting'))
      .on(RoomEvent.Reconnected, () => console.log('livekit: reconnected'))
      // The client retries a lost connection itself (Reconnecting); Disconnected is final:
      // the room was deleted, the recorder removed, or reconnecting failed.
      .on(RoomEvent.Disconnected, (reason) => {
        console.log(`livekit: disconnected (reason ${reason})`);
        this.end();
      });
    await lk.connect(this.url, this.token, { autoSubscribe: true });
    this.name = lk.name;
    // The room's order is who joined first (the server's list is not in that order); joinedAt
    // has whole seconds, the server's joined_at_ms tells apart people who joined within one.
    const joined = (p) => Number(p.participantInfo?.joinedAtMs ?? 0) || (p.joinedAt?.getTime() ?? 0);
    const present = [...lk.remoteParticipants.values()].sort((a, b) => joined(a) - joined(b));
    for (const p of present) {
      this._join(p);
      for (const pub of p.trackPublications.values()) {
        if (pub.track && pub.isSubscribed) this._subscribed(pub.track, p);
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
        const audio = this.list.some((p) => p.microphone);
        if (video || (!cameras && audio)) return done(video ? 'video' : 'audio');
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

  _subscribed(track, p) {
    // Every sound plays (a screen share's audio too); the room model holds what layouts arrange.
    if (track.kind === 'audio') this.sound.appendChild(track.attach());
    const source = SOURCES[track.source];
    if (!source) return;
    this.publish(p.identity, new Track({
      sid: track.sid, kind: track.kind, source, participant: this.participants.get(p.identity),
      makeElement: () => track.attach(),
    }));
  }

  _unsubscribed(track, p) {
    const source = SOURCES[track.source];
    if (track.kind === 'audio') track.detach().forEach((el) => el.remove());
    if (source) this.unpublish(p.identity, source);
  }

  _speakers(speakers) {
    const now = new Set(speakers.map((s) => s.identity));
    for (const p of this.list) this.setSpeaking(p.identity, now.has(p.identity));
  }
}
