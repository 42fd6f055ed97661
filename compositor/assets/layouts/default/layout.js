// default: speaker for one-to-one calls (and any screen share), grid for more.
import grid from '../grid/layout.js';
import speaker from '../speaker/layout.js';

export default function defaultLayout(view) {
  return view.participants.length === 2 || view.screenShare ? speaker(view) : grid(view);
}
