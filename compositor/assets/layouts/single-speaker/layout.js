// single-speaker: only the screen share or the active speaker, filling the frame inside its margin.
import { cameraTile, fit, inset, shareTile } from '/static/sdk/stage.js';

export default function singleSpeaker(view) {
  const { width: W, height: H, gap, participants, speaker: active, screenShare } = view;
  const frame = inset({ x: 0, y: 0, w: W, h: H }, gap);
  if (screenShare) return [shareTile(screenShare, fit(frame))];
  const p = active || participants[0];
  return p ? [cameraTile(p, fit(frame))] : [];
}
