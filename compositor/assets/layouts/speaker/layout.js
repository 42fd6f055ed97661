// speaker: the screen share (or the active speaker) fills the main area;
// everyone else is a thumbnail in a strip along the bottom.
import { cameraTile, fit, shareTile, snap, ASPECT } from '/static/sdk/stage.js';

export default function speaker(view) {
  const { width: W, height: H, participants, speaker: active, screenShare } = view;
  if (!participants.length) return [];
  const main = screenShare ? null : active || participants[0];
  const others = participants.filter((p) => p !== main);
  if (!others.length) {
    return [cameraTile(main, fit({ x: 0, y: 0, w: W, h: H }))];
  }
  const stripH = Math.round(H * 0.2);
  const mainBox = { x: 0, y: 0, w: W, h: H - stripH };
  const tiles = [screenShare ? shareTile(screenShare, fit(mainBox)) : cameraTile(main, fit(mainBox))];
  let h = stripH;
  let w = h * ASPECT;
  if (w * others.length > W) { w = W / others.length; h = w / ASPECT; }
  const left = (W - w * others.length) / 2;
  const top = H - stripH + (stripH - h) / 2;
  others.forEach((p, i) => tiles.push(cameraTile(p, snap({ x: left + i * w, y: top, w, h }), { className: 'thumb' })));
  return tiles;
}
