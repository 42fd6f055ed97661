// grid: equal 16:9 tiles, the grid chosen by count, a gap between them; past
// 25, the most recently active 25. A screen share switches to the speaker layout.
import { byActivity, cameraTile, gridCells, inset } from '/static/sdk/stage.js';
import speaker from '../speaker/layout.js';

const MAX_TILES = 25;

export default function grid(view) {
  if (view.screenShare) return speaker(view);
  const { width: W, height: H, gap } = view;
  let shown = view.participants;
  if (shown.length > MAX_TILES) {
    const keep = new Set(byActivity(shown).slice(0, MAX_TILES));
    shown = shown.filter((p) => keep.has(p));
  }
  const cells = gridCells(shown.length, inset({ x: 0, y: 0, w: W, h: H }, gap), H > W, gap);
  return shown.map((p, i) => cameraTile(p, cells[i]));
}
