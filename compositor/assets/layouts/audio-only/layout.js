// audio-only: a name tile per participant in a grid, the speaking ones lit.
import { gridCells } from '/static/sdk/stage.js';

export default function audioOnly(view) {
  const { width: W, height: H, participants } = view;
  const cells = gridCells(participants.length, { x: 0, y: 0, w: W, h: H }, H > W);
  return participants.map((p, i) => ({ key: `${p.identity}:name`, participant: p, track: null, ...cells[i] }));
}
