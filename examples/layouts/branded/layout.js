// People in a grid on the right half, below the title bar; the left half shows the brand.
// Custom scripts import the page SDK by its absolute path.
import { cameraTile, gridCells } from '/static/sdk/stage.js';

export default function branded(view) {
  const { width: W, height: H } = view;
  const box = { x: W / 2, y: H * 0.15, w: W / 2, h: H * 0.85 };
  const cells = gridCells(view.participants.length, box);
  return view.participants.map((p, i) => cameraTile(p, cells[i]));
}
