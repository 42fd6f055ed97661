// pip: the screen share (or the active speaker) fills the frame; the
// speaker sits in a small overlay in the bottom-right corner.
import { cameraTile, fit, shareTile, snap, ASPECT } from '/static/sdk/stage.js';

export default function pip(view) {
  const { width: W, height: H, participants, speaker: active, screenShare } = view;
  if (!participants.length) return [];
  const frame = { x: 0, y: 0, w: W, h: H };
  const featured = active || participants[0];
  let main;
  let overlay;
  if (screenShare) {
    main = shareTile(screenShare, fit(frame));
    overlay = featured;
  } else {
    main = cameraTile(featured, fit(frame));
    overlay = participants.filter((p) => p !== featured).sort((a, b) => b.lastSpokeAt - a.lastSpokeAt)[0];
  }
  const tiles = [main];
  if (overlay) {
    const w = Math.round(Math.min(W, H * ASPECT) * 0.25);
    const h = w / ASPECT;
    const margin = Math.round(Math.min(W, H) * 0.03);
    tiles.push(cameraTile(overlay, snap({ x: W - w - margin, y: H - h - margin, w, h }), { z: 2, className: 'overlay' }));
  }
  return tiles;
}
