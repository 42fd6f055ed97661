// Geometry helpers for layouts, and the Stage that turns a layout's tiles
// into positioned DOM elements without recreating video elements on re-flow.
//
// A layout is a function view -> [tile], where view is
//   { width, height, gap, participants, speaker, screenShare, theme }
// and a tile is { key, participant, track (or null for a name tile), x, y, w, h, z?, className? }.
// `gap` is the space the built-in layouts leave between tiles and around them.
//
// Each tile carries what a viewer of a call expects: a ring while its person
// speaks, a label (name; whose screen a share is), a muted-microphone icon,
// an initials avatar in place of a missing or muted camera, and a
// "Reconnecting" marker over a camera whose pictures stopped coming.

import { ActiveSpeaker, CAMERA, SCREEN_SHARE, latestScreenShare } from './room.js';

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

// The space between tiles (and between tiles and the frame's edge) for a
// frame: a share of its size, so every resolution looks alike.
export function gapFor(width, height) {
  return Math.max(4, Math.round(Math.min(width, height) * 0.016));
}

// `box` shrunk by `by` on every side.
export function inset(box, by) {
  return { x: box.x + by, y: box.y + by, w: Math.max(0, box.w - 2 * by), h: Math.max(0, box.h - 2 * by) };
}

// Equal 16:9 cells for `count` items inside `box`, `gap` apart, the last row centred.
export function gridCells(count, box, portrait = false, gap = 0) {
  const [cols, rows] = gridDims(count, portrait);
  const w = Math.min((box.w - (cols - 1) * gap) / cols, ((box.h - (rows - 1) * gap) / rows) * ASPECT);
  const h = w / ASPECT;
  const usedRows = Math.ceil(count / cols);
  const top = box.y + (box.h - usedRows * h - (usedRows - 1) * gap) / 2;
  const cells = [];
  for (let i = 0; i < count; i++) {
    const row = Math.floor(i / cols);
    const inRow = row === usedRows - 1 ? count - row * cols : cols;
    const left = box.x + (box.w - inRow * w - (inRow - 1) * gap) / 2;
    cells.push(snap({ x: left + (i % cols) * (w + gap), y: top + row * (h + gap), w, h }));
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

// A camera that has shown pictures and then none for this long is marked
// reconnecting (its publisher's network most likely dropped).
const STALL_MS = 2000;
const STALL_CHECK_MS = 250;

export class Stage {
  constructor(root, room, { layout, theme = 'dark', holdMs = 1000 } = {}) {
    this.root = root;
    this.room = room;
    this.theme = theme;
    this.layout = layout;
    this.speaker = new ActiveSpeaker(room, holdMs);
    this.tiles = new Map();
    this._queued = false;
    this._checkedAt = performance.now();
    room.addEventListener('change', () => this.schedule());
    this.speaker.addEventListener('change', () => this.schedule());
    window.addEventListener('resize', () => this.schedule());
    setInterval(() => this._checkStalls(), STALL_CHECK_MS);
  }

  setLayout(layout) {
    this.layout = layout;
    this.render();
  }

  view() {
    const width = this.root.clientWidth;
    const height = this.root.clientHeight;
    return {
      width,
      height,
      gap: gapFor(width, height),
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
        tile = { el: document.createElement('div'), picture: undefined, participant: null, frames: null };
        tile.el.dataset.key = item.key;
        this.root.appendChild(tile.el);
        this.tiles.set(item.key, tile);
      }
      // A muted camera shows the avatar, as a missing one does.
      const picture = item.track && !item.track.muted ? item.track : null;
      if (tile.picture !== picture || tile.participant !== item.participant) this._fill(tile, item, picture);
      const share = !!item.track && item.track.source === SCREEN_SHARE;
      const mic = item.participant.microphone;
      tile.el.className = `tile ${picture ? 'has-video' : 'no-video'} ${share ? 'share' : ''} ${item.className || ''}`;
      // The ring and the mute icon are about the person: a screen share has neither.
      tile.el.classList.toggle('speaking', !share && !!item.participant.speaking);
      tile.el.classList.toggle('muted', !share && (!mic || mic.muted));
      tile.el.classList.toggle('reconnecting', tile.stalled);
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

  // The tile's content for `picture` (a track, or null: the avatar), its label and its reconnecting marker;
  // a camera's pictures are watched from here on.
  _fill(tile, item, picture) {
    const content = picture ? picture.attach() : nameTile(item.participant);
    tile.el.replaceChildren(content, nameLabel(item), reconnectingMarker());
    tile.picture = picture;
    tile.participant = item.participant;
    tile.stalled = false;
    tile.lastFrameAt = null;
    // Only cameras: a screen share of a still page sends no new frames and is not stalled for it.
    const camera = picture && picture.kind === 'video' && picture.source === CAMERA;
    tile.frames = camera ? picture.frameCounter(content) : null;
    tile.frameCount = tile.frames ? tile.frames() : 0;
  }

  _setStalled(tile, stalled) {
    tile.stalled = stalled;
    tile.el.classList.toggle('reconnecting', stalled);
  }

  _checkStalls() {
    const now = performance.now();
    // A page too busy to run this check on time was too busy to show pictures as well: judge nothing this
    // round, only note what came. (Pictures are counted here, not as they come: see Track.frameCounter.)
    const late = now - this._checkedAt > STALL_CHECK_MS * 4;
    this._checkedAt = now;
    for (const tile of this.tiles.values()) {
      if (!tile.frames) continue;
      const count = tile.frames();
      if (count !== tile.frameCount) {
        tile.frameCount = count;
        tile.lastFrameAt = now;
        if (tile.stalled) this._setStalled(tile, false);
      } else if (!late && tile.lastFrameAt !== null && !tile.stalled && now - tile.lastFrameAt > STALL_MS
                 && !tile.picture.muted) {
        this._setStalled(tile, true);
      }
    }
  }
}

// What a viewer reads on a tile: a muted-microphone icon (shown on muted
// tiles) and the name (shown when the request turns names on); a screen
// share's label says whose it is.
export function nameLabel(item) {
  const el = document.createElement('div');
  el.className = 'tile-label';
  const mic = document.createElement('span');
  mic.className = 'tile-mic';
  mic.innerHTML = MIC_OFF_SVG;
  const name = document.createElement('span');
  name.className = 'tile-name';
  const screen = item.track && item.track.source === SCREEN_SHARE;
  name.textContent = screen ? `${item.participant.name}'s screen` : item.participant.name;
  el.append(mic, name);
  return el;
}

// A microphone struck through, drawn inline: the page fetches nothing for it.
const MIC_OFF_SVG = '<svg viewBox="0 0 24 24" aria-hidden="true"><circle cx="12" cy="12" r="12" fill="currentColor"/>'
  + '<g fill="none" stroke="#fff" stroke-width="2" stroke-linecap="round"><rect x="9.5" y="5" width="5" height="9" '
  + 'rx="2.5" fill="#fff" stroke="none"/><path d="M7 11.5a5 5 0 0 0 10 0M12 16.5V19M5.5 5.5l13 13"/></g></svg>';

function reconnectingMarker() {
  const el = document.createElement('div');
  el.className = 'tile-reconnecting';
  const badge = document.createElement('span');
  badge.textContent = 'Reconnecting…';
  el.append(badge);
  return el;
}

// Up to two letters: the first of the first and of the last word of a name.
export function initials(name) {
  const words = (name || '?').trim().split(/\s+/).filter(Boolean);
  if (!words.length) return '?';
  const first = Array.from(words[0])[0];
  const last = words.length > 1 ? Array.from(words[words.length - 1])[0] : '';
  return (first + last).toUpperCase();
}

// Avatar colours for people the room gives none (a LiveKit participant): one per identity, always the same.
const AVATAR_COLOURS = ['#5865f2', '#3ba55d', '#eb459e', '#faa61a', '#ed4245', '#9b59b6', '#1abc9c', '#e67e22'];

function avatarColour(participant) {
  if (participant.color) return participant.color;
  let h = 0;
  for (const c of participant.identity) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return AVATAR_COLOURS[h % AVATAR_COLOURS.length];
}

// The tile of someone without a picture: an initials avatar and the name.
export function nameTile(participant) {
  const el = document.createElement('div');
  el.className = 'name-tile';
  const avatar = document.createElement('div');
  avatar.className = 'avatar';
  avatar.style.background = avatarColour(participant);
  avatar.textContent = initials(participant.name);
  const name = document.createElement('div');
  name.className = 'name';
  name.textContent = participant.name;
  el.append(avatar, name);
  return el;
}
