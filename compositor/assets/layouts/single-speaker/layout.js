// single-speaker: only the screen share or the active speaker, full frame.
import { cameraTile, fit, shareTile } from '/static/sdk/stage.js';

export default function singleSpeaker(view) {
  const { width: W, height: H, participants, speaker: active, screenShare } = view;
  const frame = { x: 0, y: 0, w: W, h: H };
  if (screenShare) return [shareTile(screenShare, fit(frame))];
  const p = active || participants[0];
  return p ? [cameraTile(p, fit(frame))] : [];
}
