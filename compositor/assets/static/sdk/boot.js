// Starts a layout page: builds the room named by the query string, renders
// it with the layout, and signals START_RECORDING once the first frame worth
// recording is on screen.

import { routingFrom } from './audio.js';
import { egress } from './egress.js';
import { watchIdle } from './idle.js';
import { startClock } from './overlays.js';
import { reportRoom } from './sidecars.js';
import { Stage } from './stage.js';
import { SyntheticRoom } from './synthetic.js';

function decodeRoom(b64) {
  const text = atob(b64.replace(/-/g, '+').replace(/_/g, '/'));
  return JSON.parse(new TextDecoder().decode(Uint8Array.from(text, (c) => c.charCodeAt(0))));
}

function nextFrame() {
  return new Promise((r) => requestAnimationFrame(() => r()));
}

// A built-in layout by name, or a layout's script by its path on this server;
// a layout without a script arranges people as the grid does.
export async function loadLayout(name) {
  const url = !name ? '/layouts/grid/layout.js'
    : name.startsWith('/') ? name : `/layouts/${encodeURIComponent(name)}/layout.js`;
  const mod = await import(url);
  if (typeof mod.default !== 'function') throw new Error(`${url} has no default export (the layout's view function)`);
  return mod.default;
}

// The room the query string names: a scripted synthetic one, or a LiveKit room.
async function openRoom(url) {
  if (url.startsWith('synthetic:')) {
    return new SyntheticRoom(decodeRoom(egress.params.get('room') || ''), {
      syncMarkers: egress.params.get('sync') === '1',
      routing: routingFrom(egress.params),
    });
  }
  if (/^wss?:\/\//.test(url)) {
    const { LiveKitRoom } = await import('./livekit.js');
    const tracks = egress.params.get('tracks');
    return new LiveKitRoom(url, egress.getAccessToken(), {
      identity: egress.params.get('identity') || null,
      screenShare: egress.params.get('share') === '1',
      trackIds: tracks ? tracks.split(',') : [],
    }, routingFrom(egress.params));
  }
  throw new Error(`unsupported room URL ${url}`);
}

function setTheme(stage, theme) {
  document.body.classList.remove(`theme-${stage.theme}`);
  document.body.classList.add(`theme-${theme}`);
  stage.theme = theme;
}

export async function boot({ layout, root = document.getElementById('stage') }) {
  const room = await openRoom(egress.getRoomURL());
  // Who is recorded: applied before anyone is placed or heard. The recorder calls
  // window.compositorSetParticipants(filter) to change it; resolves once the change is on screen.
  const filter = egress.params.get('participants');
  if (filter) room.setFilter(JSON.parse(filter));
  window.compositorSetParticipants = async (next) => {
    room.setFilter(next);
    await nextFrame();
    await nextFrame();
  };
  const stage = new Stage(root, room, { layout: await loadLayout(layout), theme: egress.params.get('theme') || 'dark' });
  egress.onLayoutChanged(async (name) => {
    const [, base, theme] = name.match(/^(.*?)(?:-(light|dark))?$/);
    const layout = await loadLayout(base);
    if (theme) setTheme(stage, theme);
    stage.setLayout(layout);
  });
  room.addEventListener('ended', () => egress.endRecording());
  await room.prepare();
  stage.render();
  startClock();
  // Why recording starts: 'video', 'audio', or 'timeout' (nothing published; the recorder says so).
  const startedBy = room.ready ? await room.ready(root, Number(egress.params.get('wait') || 10000)) : 'ready';
  // Two frames: the first paints the tiles, the second is surely on screen.
  await nextFrame();
  await nextFrame();
  // Who is present now is told before START_RECORDING: the recorder lists them as there from the start.
  if (egress.params.get('sidecars') === '1') reportRoom(room);
  room.start(performance.now());
  egress.startRecording();
  const idle = egress.params.get('idle');
  if (idle) watchIdle(room, JSON.parse(idle));
  window.compositor = { room, stage, startedBy };
}
