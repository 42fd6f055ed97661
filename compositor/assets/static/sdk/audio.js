// Audio routing: which voice plays in which channel of the recording
// (LiveKit's AudioConfig routes and RoomComposite audio_mixing). The
// request's `audio` reaches the page as JSON in the `audio` query parameter:
//   { routes: [{ trackId | participantIdentity | participantKind, channel }],
//     captureAll, mixing: 'default' | 'dual_channel_agent' | 'dual_channel_alternate' }
// Without it the page plays every voice as before, in both channels.
//
// Each routed voice goes into one ChannelMerger, on its left or right input
// (a merger input takes its voice down to mono), or straight to the
// destination for both channels (a mono voice is heard in both at full
// level, as an <audio> element plays it). One merger, one destination: the
// sound leaves the page through the same output, and the recording stays stereo.

const LEFT = 0;
const RIGHT = 1;

export class AudioRouter {
  constructor(ctx, { routes = [], captureAll = false, mixing = 'default' } = {}) {
    this.ctx = ctx;
    this.routes = routes;
    this.captureAll = captureAll;
    this.mixing = mixing;
    this.sides = new Map(); // identity -> 'left' | 'right' (dual_channel_alternate), for good once given
    this.merger = new ChannelMergerNode(ctx, { numberOfInputs: 2 });
    this.merger.connect(ctx.destination);
  }

  // With dual_channel_alternate a participant takes the next side when first heard (the rooms play the
  // voices of the people present in join order), and keeps it.
  takeSide(identity) {
    if (!this.sides.has(identity)) this.sides.set(identity, this.sides.size % 2 ? 'right' : 'left');
  }

  // 'both', 'left', 'right', or null (left out) for a voice: its track sid, participant identity and kind.
  channel({ trackSid, identity, kind }) {
    if (this.mixing === 'dual_channel_agent') return kind === 'agent' ? 'left' : 'right';
    if (this.mixing === 'dual_channel_alternate') {
      this.takeSide(identity);
      return this.sides.get(identity);
    }
    if (!this.routes.length) return 'both';
    // The most specific route names the voice: its track, then its participant, then their kind.
    const route = this.routes.find((r) => r.trackId === trackSid)
      || this.routes.find((r) => r.participantIdentity === identity)
      || this.routes.find((r) => r.participantKind === kind);
    if (route) return route.channel || 'both';
    return this.captureAll ? 'both' : null;
  }

  // Plays `node` (a voice) in its channel; returns what stops it playing.
  play(node, who) {
    const channel = this.channel(who);
    if (channel === null) return () => {};
    if (channel === 'both') node.connect(this.ctx.destination);
    else node.connect(this.merger, 0, channel === 'left' ? LEFT : RIGHT);
    return () => node.disconnect();
  }
}

// The routing the page's query asks for, or null (every voice in both channels).
export function routingFrom(params) {
  const text = params.get('audio');
  return text ? JSON.parse(text) : null;
}
