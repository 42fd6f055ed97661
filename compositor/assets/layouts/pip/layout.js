// pip: the screen share (or the active speaker) fills the frame inside its
// margin; the speaker sits in a small overlay in its bottom-right corner.
import { cameraTile, fit, inset, shareTile, snap, ASPECT } from '/static/sdk/stage.js';

export default function pip(view) {
  const { width: W, height: H, gap, participants, speaker: active, screenShare } = view;
  if (!participants.length) return [];
  const frame = fit(inset({ x: 0, y: 0, w: W, h: H }, gap));
  const featured = active || participants[0];
  let main;
  let overlay;
  if (screenShare) {
    main = shareTile(screenShare, frame);
    overlay = featured;
  } else {
    main = cameraTile(featured, frame);
    overlay = participants.filter((p) => p !== featured).sort((a, b) => b.lastSpokeAt - a.lastSpokeAt)[0];
  }
  const tiles = [main];
  if (overlay) {
    const w = Math.round(Math.min(W, H * ASPECT) * 0.25);
    const h = w / ASPECT;
    const margin = Math.round(Math.min(W, H) * 0.03);
    const x = frame.x + frame.w - w - margin;
    const y = frame.y + frame.h - h - margin;
    tiles.push(cameraTile(overlay, snap({ x, y, w, h }), { z: 2, className: 'overlay' }));
  }
  return tiles;
}
