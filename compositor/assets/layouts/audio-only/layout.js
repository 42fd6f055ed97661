// audio-only: a name tile per participant in a grid, the speaking ones ringed.
import { gridCells, inset } from '/static/sdk/stage.js';

export default function audioOnly(view) {
  const { width: W, height: H, gap, participants } = view;
  const cells = gridCells(participants.length, inset({ x: 0, y: 0, w: W, h: H }, gap), H > W, gap);
  return participants.map((p, i) => ({ key: `${p.identity}:name`, participant: p, track: null, ...cells[i] }));
}
