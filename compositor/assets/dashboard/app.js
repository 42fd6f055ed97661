// The compositor dashboard: the service's own API, called with the API key the user signs in with.
//
// Rules this file keeps:
// - every value from the server is shown through textContent (never innerHTML): room names, layout names and
//   error messages are whatever a caller put there;
// - the key lives in sessionStorage and goes only in the Authorization header, never in a URL (so never in
//   logs, history or a Referer); images that need it are fetched and shown as blob: URLs;
// - egresses change on screen as the server pushes their changes (GET /v1/events, read with fetch() because
//   EventSource cannot send the header), not by polling the list.

const KEY_STORE = 'compositor.apiKey';
const ENDED = new Set(['COMPLETE', 'FAILED', 'ABORTED', 'LIMIT_REACHED']);
const PREVIEW_EVERY_MS = 2000;
const RECONNECT_MS = [500, 1000, 2000, 5000];

const $ = (id) => document.getElementById(id);

let apiKey = sessionStorage.getItem(KEY_STORE);
let streamAbort = null;
let layouts = [];
const state = { page: 1, total: 0, items: new Map(), selected: null };
let previewTimer = null;
let previewUrl = null;

// ---- DOM helpers -------------------------------------------------------------------------------------------

/** An element with attributes/properties and children (strings become text nodes). */
function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === 'class') node.className = value;
    else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Kept across re-renders of the detail panel, so a pushed change does not blank the thumbnail.
const previewImg = el('img', { id: 'preview', alt: 'latest thumbnail' });
const previewCaption = el('figcaption', { id: 'preview-caption' });

function show(id, on) { $(id).hidden = !on; }

function say(text, isError = false) {
  const box = $('message');
  box.textContent = text;
  box.className = isError ? 'message error' : 'message';
  box.hidden = !text;
}

function fail(where, err) {
  const box = $(where);
  box.textContent = err ? err.message : '';
  box.hidden = !err;
}

// ---- API ---------------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
  }
}

async function call(method, path, body) {
  const headers = { Authorization: `Bearer ${apiKey}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
                                   cache: 'no-store', referrerPolicy: 'no-referrer' });
  if (resp.status === 401) { signOut('The API key was refused.'); throw new ApiError(401, await resp.json()); }
  const data = resp.headers.get('Content-Type')?.includes('json') ? await resp.json() : null;
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

/** An image the API serves only with the key, as a blob: URL (the caller revokes it). */
async function imageUrl(path) {
  const resp = await fetch(path, { headers: { Authorization: `Bearer ${apiKey}` }, cache: 'no-store' });
  if (!resp.ok) {
    const body = resp.headers.get('Content-Type')?.includes('json') ? await resp.json() : null;
    throw new ApiError(resp.status, body);
  }
  return URL.createObjectURL(await resp.blob());
}

// ---- formatting --------------------------------------------------------------------------------------------

function duration(info) {
  let s = info.durationSec;
  if (info.status === 'ACTIVE' && info.startedAt) s = (Date.now() - Date.parse(info.startedAt)) / 1000;
  if (s === null || s === undefined) return '—';
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  return (h ? `${h}:${String(m).padStart(2, '0')}` : `${m}`) + `:${String(sec).padStart(2, '0')}`;
}

function size(bytes) {
  if (bytes === null || bytes === undefined) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let n = bytes, i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i += 1; }
  return `${n.toFixed(i && n < 10 ? 1 : 0)} ${units[i]}`;
}

function when(iso) { return iso ? new Date(iso).toLocaleString() : '—'; }

function badge(status) { return el('span', { class: `status s-${String(status).toLowerCase()}` }, status); }

function health(streams) {
  if (!streams.length) return '—';
  return el('span', {}, streams.map((s) => el('span', { class: `dot s-${String(s.status).toLowerCase()}`,
                                                         title: `${s.url}: ${s.status}` }, '●')));
}

// ---- sign in / out -----------------------------------------------------------------------------------------

async function signIn(key) {
  apiKey = key;
  try {
    await call('GET', '/v1/egress?limit=1');
  } catch (err) {
    apiKey = null;
    throw err.status === 401 ? new Error('That API key was refused.') : err;
  }
  sessionStorage.setItem(KEY_STORE, key);
  await enter();
}

function signOut(why = '') {
  apiKey = null;
  sessionStorage.removeItem(KEY_STORE);
  if (streamAbort) streamAbort.abort();
  streamAbort = null;
  stopPreview();
  for (const id of ['nav', 'sign-out', 'live']) show(id, false);
  showView('sign-in');
  fail('sign-in-error', why ? new Error(why) : null);
}

async function enter() {
  show('nav', true);
  show('sign-out', true);
  await loadChoices();
  follow();
  route();
}

// ---- views -------------------------------------------------------------------------------------------------

const VIEWS = ['sign-in', 'egresses', 'start', 'recordings', 'auto-egress', 'layouts'];

function showView(name) {
  for (const view of VIEWS) show(`view-${view}`, view === name);
  for (const link of document.querySelectorAll('#nav a')) link.classList.toggle('on', link.dataset.view === name);
}

function route() {
  if (!apiKey) { showView('sign-in'); return; }
  const name = VIEWS.includes(location.hash.slice(1)) && location.hash !== '#sign-in' ? location.hash.slice(1)
    : 'egresses';
  showView(name);
  say('');
  const load = { egresses: loadEgresses, recordings: loadRecordings, 'auto-egress': loadAutoEgress,
                 layouts: loadLayouts }[name];
  if (load) load().catch((err) => say(err.message, true));
}

/** The layouts (and their themes) and qualities the forms offer. */
async function loadChoices() {
  layouts = (await call('GET', '/v1/layouts')).items;
  const names = layouts.flatMap((l) => (l.builtin ? [l.name, `${l.name}-light`, `${l.name}-dark`] : [l.name]));
  for (const select of document.querySelectorAll('.layout-choice')) {
    select.replaceChildren(...names.map((n) => el('option', { value: n }, n)));
    select.value = 'default';
  }
  const spec = await (await fetch('/openapi.json')).json();
  const qualities = spec.components.schemas.StartEgressRequest.properties.quality.enum;
  for (const select of [$('quality-choice'), $('auto-quality')]) {
    select.replaceChildren(...qualities.map((q) => el('option', { value: q }, q)));
    select.value = '720p';
  }
}

// ---- egresses, live ----------------------------------------------------------------------------------------

function filters() {
  const form = new FormData($('filters'));
  return { roomName: form.get('roomName').trim(), status: form.get('status'), limit: Number(form.get('limit')) };
}

function matches(info) {
  const f = filters();
  return (!f.roomName || info.roomName === f.roomName) && (!f.status || info.status === f.status);
}

async function loadEgresses() {
  const f = filters();
  const query = new URLSearchParams({ page: state.page, limit: f.limit });
  if (f.roomName) query.set('roomName', f.roomName);
  if (f.status) query.set('status', f.status);
  const list = await call('GET', `/v1/egress?${query}`);
  state.total = list.total;
  state.items = new Map(list.items.map((info) => [info.id, info]));
  if (state.selected) {
    // The open egress may have changed while the stream was away, on this page or not.
    state.detail = state.items.get(state.selected)
      || await call('GET', `/v1/egress/${encodeURIComponent(state.selected)}`).catch(() => null);
  }
  renderEgresses();
}

function renderEgresses() {
  const f = filters();
  const rows = [...state.items.values()].map((info) => el('tr', {
    class: info.id === state.selected ? 'selected' : '', dataset: { id: info.id },
    onclick: () => select(info.id),
  }, el('td', { class: 'mono' }, info.id), el('td', {}, badge(info.status)), el('td', {}, info.roomName),
  el('td', {}, info.mode), el('td', {}, info.layout), el('td', {}, info.quality),
  el('td', { class: 'duration', dataset: { id: info.id } }, duration(info)), el('td', {}, health(info.streams))));
  $('egress-rows').replaceChildren(...rows);
  show('no-egress', rows.length === 0);
  const pages = Math.max(1, Math.ceil(state.total / f.limit));
  $('page-of').textContent = `page ${state.page} of ${pages} (${state.total})`;
  $('prev').disabled = state.page <= 1;
  $('next').disabled = state.page >= pages;
  renderDetail();
}

/** An egress the server pushed: into the list if it belongs on this page, out if it no longer matches. */
function changed(info) {
  const had = state.items.has(info.id);
  if (matches(info)) {
    if (had || state.page === 1) {
      if (!had) state.total += 1;
      state.items.set(info.id, info);
      // Newest first, as the list API orders them; the page keeps its length.
      const sorted = [...state.items.values()].sort((a, b) => b.createdAt.localeCompare(a.createdAt));
      state.items = new Map(sorted.slice(0, filters().limit).map((i) => [i.id, i]));
    }
  } else if (had) {
    state.items.delete(info.id);
    state.total -= 1;
  }
  if (info.id === state.selected) state.detail = info;
  renderEgresses();
  if (!$('view-recordings').hidden && info.mode !== 'stream') loadRecordings().catch(() => {});
}

function deleted(id) {
  if (state.items.delete(id)) state.total -= 1;
  if (id === state.selected) { state.selected = null; state.detail = null; }
  renderEgresses();
}

/** Follow GET /v1/events (server-sent events) until signed out, reconnecting when it drops. */
async function follow() {
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  let attempt = 0;
  while (!abort.signal.aborted) {
    try {
      const resp = await fetch('/v1/events', { headers: { Authorization: `Bearer ${apiKey}`,
                                                          Accept: 'text/event-stream' },
                                               signal: abort.signal, cache: 'no-store' });
      if (resp.status === 401) { signOut('The API key was refused.'); return; }
      if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
      show('live', true);
      attempt = 0;
      await readEvents(resp.body, onEvent);
    } catch (err) {
      if (abort.signal.aborted) return;
    }
    show('live', false);
    await new Promise((r) => setTimeout(r, RECONNECT_MS[Math.min(attempt, RECONNECT_MS.length - 1)]));
    attempt += 1;
  }
}

/** Each `data:` of a server-sent event stream, parsed as JSON, to `handle`, until the stream ends. */
async function readEvents(body, handle) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart());
      if (data.length) handle(JSON.parse(data.join('\n')));
    }
  }
}

function onEvent(event) {
  if (event.type === 'egress') changed(event.egress);
  else if (event.type === 'deleted') deleted(event.id);
  else if (event.type === 'resync' && !$('view-egresses').hidden) loadEgresses().catch((err) => say(err.message, true));
}

// ---- one egress: detail, control, preview ------------------------------------------------------------------

function select(id) {
  state.selected = id;
  state.detail = state.items.get(id);
  stopPreview();
  renderEgresses();
}

function renderDetail() {
  const info = state.detail;
  const box = $('detail');
  box.hidden = !info;
  if (!info) return;
  const live = info.status === 'ACTIVE';
  const rows = [['Status', badge(info.status)], ['Room', info.roomName], ['Mode', info.mode],
    ['Layout', info.layout], ['Quality', info.quality], ['Created', when(info.createdAt)],
    ['Started', when(info.startedAt)], ['Ended', when(info.endedAt)], ['Duration', duration(info)],
    ['Node', info.node], ['File', info.file ? `${info.file.filename} (${size(info.file.size)})` : null],
    ['Error', info.error ? `${info.errorCode}: ${info.error}` : null]]
    .filter(([, v]) => v !== null && v !== undefined)
    .map(([k, v]) => el('tr', {}, el('th', {}, k), el('td', {}, v)));
  const streams = info.streams.map((s) => el('tr', {},
    el('td', { class: 'mono' }, s.url), el('td', {}, badge(s.status)), el('td', {}, s.retries),
    el('td', { class: 'error' }, s.error ? `${s.errorCode || ''} ${s.error}` : ''),
    el('td', {}, live ? el('button', { type: 'button', onclick: () => control(info, 'streams', { remove: [s.url] }) },
                           'Remove') : '')));
  const layoutSelect = el('select', { name: 'layout' },
    layouts.filter((l) => l.builtin).flatMap((l) => [l.name, `${l.name}-light`, `${l.name}-dark`])
      .map((n) => el('option', { value: n, selected: n === info.layout }, n)));
  const addUrl = el('input', { name: 'add', placeholder: 'rtmp://… to add', size: 40 });
  box.replaceChildren(
    el('h2', {}, 'Egress ', el('span', { class: 'mono' }, info.id)),
    el('div', { class: 'split' },
      el('table', { class: 'facts' }, rows),
      el('figure', { class: 'preview', hidden: !live }, previewImg, previewCaption)),
    info.mode !== 'record' ? el('div', {},
      el('h3', {}, 'Destinations'),
      el('table', { class: 'list' }, el('thead', {}, el('tr', {}, ['URL', 'Status', 'Retries', 'Last error', '']
        .map((h) => el('th', {}, h)))), el('tbody', {}, streams)),
      live ? el('form', { class: 'inline', onsubmit: (e) => { e.preventDefault();
        if (addUrl.value.trim()) control(info, 'streams', { add: [addUrl.value.trim()] }); } },
      addUrl, el('button', { type: 'submit' }, 'Add destination')) : null) : null,
    live ? el('form', { class: 'inline', onsubmit: (e) => { e.preventDefault();
      control(info, 'layout', { layout: layoutSelect.value }); } },
    el('label', {}, 'Layout ', layoutSelect), el('button', { type: 'submit' }, 'Change layout')) : null,
    el('div', { class: 'actions' },
      ENDED.has(info.status) ? null
        : el('button', { type: 'button', class: 'danger', onclick: () => control(info, 'stop') }, 'Stop'),
      el('button', { type: 'button', onclick: () => { state.selected = null; state.detail = null; stopPreview();
        renderEgresses(); } }, 'Close')),
    el('p', { id: 'detail-error', class: 'error', hidden: true }));
  if (live && info.id !== previewTimer?.id) startPreview(info);
  else if (!live) stopPreview();
}

async function control(info, action, body) {
  try {
    const updated = await call('POST', `/v1/egress/${encodeURIComponent(info.id)}/${action}`, body);
    changed(updated);
  } catch (err) {
    fail('detail-error', err);
  }
}

/** Show the running egress's latest thumbnail, fetched again every few seconds while it is selected. */
function startPreview(info) {
  stopPreview();
  const tick = async () => {
    try {
      const url = await imageUrl(`/v1/egress/${encodeURIComponent(info.id)}/preview`);
      if (previewUrl) URL.revokeObjectURL(previewUrl);
      previewUrl = url;
      previewImg.src = url;
      previewCaption.textContent = `latest thumbnail, ${new Date().toLocaleTimeString()}`;
    } catch (err) {
      previewCaption.textContent = err.message;
    }
  };
  previewTimer = { id: info.id, handle: setInterval(tick, PREVIEW_EVERY_MS) };
  tick();
}

function stopPreview() {
  if (previewTimer) clearInterval(previewTimer.handle);
  previewTimer = null;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = null;
  previewImg.removeAttribute('src');
  previewCaption.textContent = '';
}

// ---- start form --------------------------------------------------------------------------------------------

const PALETTE = ['#4363d8', '#e6194b', '#3cb44b', '#f58231', '#911eb4', '#42d4f4', '#f032e6', '#bfef45'];
const NAMES = ['Ada', 'Grace', 'Alan', 'Edsger', 'Barbara', 'Ken', 'Margaret', 'Linus'];

/** The POST /v1/egress/start body the form describes. */
function startRequest(form) {
  const f = new FormData(form);
  const body = { roomName: f.get('roomName').trim(), mode: f.get('mode'), layout: f.get('layout'),
                 quality: f.get('quality') };
  const sized = /^(\d+)x(\d+)$/.exec(f.get('size').trim());
  if (sized) body.advanced = { width: Number(sized[1]), height: Number(sized[2]) };
  const people = Number(f.get('synthetic') || 0);
  if (people > 0) {
    // Each speaks in turn, so the preview shows the speaker change.
    body.room = { participants: Array.from({ length: people }, (_, i) => ({
      name: NAMES[i % NAMES.length], color: PALETTE[i % PALETTE.length], tone: 300 + 60 * i,
      speaks: Array.from({ length: 30 }, (_, k) => ({ start: 2 * (k * people + i), end: 2 * (k * people + i) + 2 })),
    })) };
  }
  if (body.mode !== 'stream' && f.get('file')) body.file = { fileType: f.get('fileType') };
  if (f.get('hls')) body.segments = { filenamePrefix: 'hls/{egress_id}/segment' };
  if (f.get('preview')) body.images = { filenamePrefix: 'previews/{egress_id}/thumb', captureInterval: 1, width: 320 };
  const urls = f.get('destinations').split('\n').map((u) => u.trim()).filter(Boolean);
  if (body.mode !== 'record') body.stream = { urls };
  const limit = Number(f.get('maxDuration'));
  if (limit > 0) body.maxDuration = limit;
  return body;
}

async function start(event) {
  event.preventDefault();
  fail('start-error', null);
  try {
    const info = await call('POST', '/v1/egress/start', startRequest(event.target));
    changed(info);
    location.hash = '#egresses';
    select(info.id);
  } catch (err) {
    fail('start-error', err);
  }
}

// ---- recordings --------------------------------------------------------------------------------------------

async function loadRecordings() {
  const list = await call('GET', '/v1/recordings?limit=100');
  const rows = list.items.map((r) => el('tr', {},
    el('td', { class: 'mono' }, r.id), el('td', {}, badge(r.status)), el('td', {}, r.roomName),
    el('td', {}, when(r.startedAt)), el('td', {}, duration(r)), el('td', {}, size(r.file?.size)),
    el('td', {}, r.file && ENDED.has(r.status)
      ? el('button', { type: 'button', class: 'download', dataset: { id: r.id }, onclick: () => download(r) },
           'Download') : '')));
  $('recording-rows').replaceChildren(...rows);
  show('no-recording', rows.length === 0);
}

/** Download through a signed, expiring URL: the link carries its signature, never the API key. */
async function download(rec) {
  try {
    const { downloadUrl } = await call('GET', `/v1/recordings/${encodeURIComponent(rec.id)}/download-url`);
    const link = el('a', { href: downloadUrl, download: rec.file.filename, rel: 'noreferrer', hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (err) {
    say(err.message, true);
  }
}

// ---- auto egress -------------------------------------------------------------------------------------------

async function loadAutoEgress() {
  const config = await call('GET', '/v1/egress/auto-egress');
  const form = $('auto-form');
  for (const [key, value] of Object.entries(config)) {
    const field = form.elements.namedItem(key);
    if (!field) continue;
    if (field.type === 'checkbox') field.checked = Boolean(value);
    else field.value = value;
  }
}

async function saveAutoEgress(event) {
  event.preventDefault();
  fail('auto-error', null);
  const f = new FormData(event.target);
  try {
    await call('PUT', '/v1/egress/auto-egress', {
      enabled: f.get('enabled') === 'on', roomNamePattern: f.get('roomNamePattern'), mode: f.get('mode'),
      layout: f.get('layout'), quality: f.get('quality'), minParticipants: Number(f.get('minParticipants')),
      delaySeconds: Number(f.get('delaySeconds')) });
    say('Auto egress saved.');
  } catch (err) {
    fail('auto-error', err);
  }
}

// ---- layouts -----------------------------------------------------------------------------------------------

const snapshots = new Map();

async function loadLayouts() {
  layouts = (await call('GET', '/v1/layouts')).items;
  const cards = layouts.map((l) => {
    const img = el('img', { alt: `snapshot of ${l.name}` });
    const note = el('p', { class: 'hint' }, snapshots.has(l.name) ? '' : 'rendering a snapshot…');
    if (snapshots.has(l.name)) img.src = snapshots.get(l.name);
    return { l, img, note, card: el('article', { class: 'card layout' }, img,
      el('h3', {}, l.name, ' ', el('span', { class: 'tag' }, l.builtin ? 'built in' : 'custom')),
      el('p', {}, l.description), note) };
  });
  $('layout-cards').replaceChildren(...cards.map((c) => c.card));
  // One at a time: each is rendered by the real pipeline the first time.
  for (const { l, img, note } of cards) {
    if (snapshots.has(l.name)) continue;
    try {
      const url = await imageUrl(`/v1/layouts/${l.name.split('/').map(encodeURIComponent).join('/')}/snapshot`);
      snapshots.set(l.name, url);
      img.src = url;
      note.textContent = '';
    } catch (err) {
      note.textContent = err.message;
    }
  }
}

// ---- wiring ------------------------------------------------------------------------------------------------

$('sign-in').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = $('api-key');
  signIn(input.value).then(() => { input.value = ''; fail('sign-in-error', null); })
    .catch((err) => fail('sign-in-error', err));
});
$('sign-out').addEventListener('click', () => signOut());
$('filters').addEventListener('submit', (e) => { e.preventDefault(); state.page = 1; route(); });
$('prev').addEventListener('click', () => { state.page -= 1; route(); });
$('next').addEventListener('click', () => { state.page += 1; route(); });
$('start-form').addEventListener('submit', start);
$('auto-form').addEventListener('submit', saveAutoEgress);
window.addEventListener('hashchange', route);
// Running egresses' durations count up on screen between the server's changes.
setInterval(() => {
  for (const cell of document.querySelectorAll('td.duration')) {
    const info = state.items.get(cell.dataset.id);
    if (info?.status === 'ACTIVE') cell.textContent = duration(info);
  }
}, 1000);

if (apiKey) enter().catch((err) => signOut(err.message));
else route();
