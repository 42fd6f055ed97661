// Geometry helpers for layouts, and the Stage that turns a layout's tiles
// into positioned DOM elements without recreating video elements on re-flow.
//
// A layout is a function view -> [tile], where view is
//   { width, height, participants, speaker, screenShare, theme }
// and a tile is { key, participant, track (or null for a name tile), x, y, w, h, z?, className? }.

import { ActiveSpeaker, SCREEN_SHARE, latestScreenShare } from './room.js';

export const ASPECT = 16 / 9;

// Columns x rows for n equal tiles (landscape frame; swapped for portrait).
export function gridDims(n, portrait = false) {
  const table = [[1, 1], [1, 1], [2, 1], [2, 2], [2, 2], [3, 2], [3, 2], [3, 3], [3, 3], [3, 3],
    [4, 3], [4, 3], [4, 3], [4, 4], [4, 4], [4, 4], [4, 4]];
  const [c, r] = n < table.length ? table[n] : [5, 5];
  return portrait ? [r, c] : [c, r];
}

// The largest 16:9 rectangle centred in a box, on whole pixels.
export function fit(box, aspect = ASPECT) {
  let w = box.w;
  let h = w / aspect;
  if (h > box.h) { h = box.h; w = h * aspect; }
  const x = box.x + (box.w - w) / 2;
  const y = box.y + (box.h - h) / 2;
  return snap({ x, y, w, h });
}

export function snap(r) {
  const x = Math.round(r.x), y = Math.round(r.y);
  return { x, y, w: Math.round(r.x + r.w) - x, h: Math.round(r.y + r.h) - y };
}

// Equal 16:9 cells for `items` inside `box`, the last row centred.
export function gridCells(count, box, portrait = false) {
  const [cols, rows] = gridDims(count, portrait);
  const w = Math.min(box.w / cols, (box.h / rows) * ASPECT);
  const h = w / ASPECT;
  const usedRows = Math.ceil(count / cols);
  const top = box.y + (box.h - usedRows * h) / 2;
  const cells = [];
  for (let i = 0; i < count; i++) {
    const row = Math.floor(i / cols);
    const inRow = row === usedRows - 1 ? count - row * cols : cols;
    const left = box.x + (box.w - inRow * w) / 2;
    cells.push(snap({ x: left + (i % cols) * w, y: top + row * h, w, h }));
  }
  return cells;
}

// The camera tile of a participant (a name tile when they have no camera).
export function cameraTile(participant, rect, extra = {}) {
  return { key: `${participant.identity}:camera`, participant, track: participant.camera, ...rect, ...extra };
}

export function shareTile(share, rect, extra = {}) {
  return { key: `${share.participant.identity}:screen`, participant: share.participant, track: share.track, ...rect, ...extra };
}

// Most recently active first (speaking now, then last spoke), join order breaking ties.
export function byActivity(participants) {
  return participants
    .map((p, i) => ({ p, i }))
    .sort((a, b) => (Number(b.p.speaking) - Number(a.p.speaking)) || (b.p.lastSpokeAt - a.p.lastSpokeAt) || (a.i - b.i))
    .map(({ p }) => p);
}

export class Stage {
  constructor(root, room, { layout, theme = 'dark', holdMs = 1000 } = {}) {
    this.root = root;
    this.room = room;
    this.theme = theme;
    this.layout = layout;
    this.speaker = new ActiveSpeaker(room, holdMs);
    this.tiles = new Map();
    this._queued = false;
    room.addEventListener('change', () => this.schedule());
    this.speaker.addEventListener('change', () => this.schedule());
    window.addEventListener('resize', () => this.schedule());
  }

  setLayout(layout) {
    this.layout = layout;
    this.render();
  }

  view() {
    return {
      width: this.root.clientWidth,
      height: this.root.clientHeight,
      participants: this.room.list,
      speaker: this.speaker.current,
      screenShare: latestScreenShare(this.room),
      theme: this.theme,
    };
  }

  // Coalesce bursts of room events into one render per frame.
  schedule() {
    if (this._queued) return;
    this._queued = true;
    queueMicrotask(() => { this._queued = false; this.render(); });
  }

  render() {
    const items = this.layout(this.view());
    const seen = new Set();
    for (const item of items) {
      seen.add(item.key);
      let tile = this.tiles.get(item.key);
      if (!tile) {
        tile = { el: document.createElement('div'), track: undefined };
        tile.el.dataset.key = item.key;
        this.root.appendChild(tile.el);
        this.tiles.set(item.key, tile);
      }
      if (tile.track !== item.track) {
        tile.el.replaceChildren(item.track ? item.track.attach() : nameTile(item.participant), nameLabel(item));
        tile.track = item.track;
      }
      tile.el.className = `tile ${item.track ? 'has-video' : 'no-video'} ${item.className || ''}`;
      tile.el.classList.toggle('speaking', !!item.participant.speaking);
      Object.assign(tile.el.style, {
        left: `${item.x}px`, top: `${item.y}px`, width: `${item.w}px`, height: `${item.h}px`,
        zIndex: String(item.z || 0),
      });
    }
    for (const [key, tile] of this.tiles) {
      if (!seen.has(key)) {
        tile.el.remove();
        this.tiles.delete(key);
      }
    }
  }
}

// The name label every video tile carries; shown when the request turns name labels on.
export function nameLabel(item) {
  const el = document.createElement('div');
  el.className = 'tile-label';
  const screen = item.track && item.track.source === SCREEN_SHARE;
  el.textContent = screen ? `${item.participant.name} (screen)` : item.participant.name;
  return el;
}

export function nameTile(participant) {
  const el = document.createElement('div');
  el.className = 'name-tile';
  const initial = document.createElement('div');
  initial.className = 'initial';
  initial.textContent = (participant.name || '?').trim().charAt(0).toUpperCase();
  const name = document.createElement('div');
  name.className = 'name';
  name.textContent = participant.name;
  el.append(initial, name);
  return el;
}
