// speaker: the screen share (or the active speaker) fills the main area;
// everyone else is a thumbnail in a strip along the bottom, a gap apart.
import { cameraTile, fit, inset, shareTile, snap, ASPECT } from '/static/sdk/stage.js';

export default function speaker(view) {
  const { width: W, height: H, gap, participants, speaker: active, screenShare } = view;
  if (!participants.length) return [];
  const frame = inset({ x: 0, y: 0, w: W, h: H }, gap);
  const main = screenShare ? null : active || participants[0];
  const others = participants.filter((p) => p !== main);
  if (!others.length) {
    return [cameraTile(main, fit(frame))];
  }
  const stripH = Math.round(H * 0.2);
  const mainBox = { x: frame.x, y: frame.y, w: frame.w, h: frame.h - stripH - gap };
  const tiles = [screenShare ? shareTile(screenShare, fit(mainBox)) : cameraTile(main, fit(mainBox))];
  const n = others.length;
  let h = stripH;
  let w = h * ASPECT;
  if (w * n + gap * (n - 1) > frame.w) { w = (frame.w - gap * (n - 1)) / n; h = w / ASPECT; }
  const left = frame.x + (frame.w - w * n - gap * (n - 1)) / 2;
  const top = frame.y + frame.h - stripH + (stripH - h) / 2;
  others.forEach((p, i) => tiles.push(cameraTile(p, snap({ x: left + i * (w + gap), y: top, w, h }), { className: 'thumb' })));
  return tiles;
}
