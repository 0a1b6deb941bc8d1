// The mlfix review grid: a keyboard-driven thumbnail grid (st.components.v2, no build step).
//
// Streamlit calls the default export on every script run that changes `data`, on the same element
// (the component has a key): the DOM and the state below are built once per element and updated.
//
// Python -> JS (`data`):
//   view       string; a new value (class, sort, page, view changed) resets focus and selection
//   items      [{id, url, label, status, new_label, suggested}]  (status: unreviewed|relabeled|flagged|ok)
//   palette    [{label, key, color}]
//   panel      {id, url, label, status, new_label, suggested, score, neighbours: [items]} | null
//   counter    {reviewed, total, title}
//   page       {index, count}
//   acks       {session: highest seq Python has applied}
//   errors     [string]                          (shown in the bar)
// JS -> Python:
//   trigger `actions`: {session, focus, actions: [{seq, client_id, kind, ids?, label?, delta?, undoes?}]}
//       every action not yet acknowledged, resent until `acks[session]` covers it (applied exactly
//       once), and the focused sample id (for the side panel's neighbours). One channel, so that a
//       decision and the focus move it causes cost one script run, not two.

const LETTER_KEYS = new Set(["f", "o", "z", "n", "p"]);
const STATUS_TEXT = { flagged: "⚑ wrong", ok: "✓ ok" };
const UNLABELED = "unlabeled"; // what a sample without a label (null) shows, where a label is expected
// An unacknowledged batch is resent after RESEND_MS, then after twice as long each time, up to
// RESEND_MAX_MS. Every resend starts a script run and Streamlit stops a running script for a new
// one: a fixed short interval on a loaded server (20 reviewers, 2 cores) kept interrupting the very
// runs that would have stored the batch. Progress (an acknowledgement) or a new key press resets it.
const RESEND_MS = 1500;
const RESEND_MAX_MS = 30000;
// Unacknowledged actions survive a remount or a reload of the tab (sessionStorage): Python applies
// them once (same session id and seq; the store also keeps client ids unique).
const STORAGE_KEY = "mlfix-review-grid";
const HISTORY_KEPT = 50;
const FOCUS_DEBOUNCE_MS = 160;

function uuid() {
  if (globalThis.crypto && crypto.randomUUID) return crypto.randomUUID();
  return "x" + Date.now().toString(36) + Math.random().toString(36).slice(2);
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = text;
  return node;
}

function init(parentElement) {
  const root = parentElement.querySelector("#mlfix-root") || parentElement.appendChild(el("div"));
  root.replaceChildren();
  const wrap = el("div", "wrap");
  wrap.tabIndex = 0;
  wrap.setAttribute("role", "application");
  wrap.setAttribute("aria-label", "Review grid: arrows move, space selects, a palette key relabels");
  const bar = el("div", "bar");
  const counter = el("div", "counter");
  const palette = el("div", "palette");
  const help = el("div", "help");
  help.innerHTML =
    "<kbd>←↑↓→</kbd> move <kbd>space</kbd> select <kbd>shift</kbd> range " +
    "<kbd>f</kbd> wrong <kbd>o</kbd> ok <kbd>z</kbd> undo <kbd>n</kbd>/<kbd>p</kbd> page <kbd>esc</kbd> clear" +
    "<span class='suggesthelp'> <kbd>enter</kbd> take suggestion</span>" +
    "<span class='nofocus'> · click the grid to use the keys</span>";
  const message = el("div", "message");
  bar.append(counter, palette, help, message);
  const main = el("div", "main");
  const grid = el("div", "grid");
  grid.setAttribute("role", "grid");
  const panel = el("aside", "panel");
  main.append(grid, panel);
  wrap.append(bar, main);
  root.append(wrap);

  const s = {
    root, wrap, bar, counter, palette, help, message, grid, panel,
    session: uuid(), seq: 0, pending: [], lastSent: 0, resendDelay: RESEND_MS, history: [],
    overlay: new Map(), // id -> {status, new_label, seq}: shown until Python acknowledges seq
    items: [], index: new Map(), tiles: [], view: null,
    focus: 0, anchor: 0, selected: new Set(), keys: new Map(), labels: [], colors: new Map(),
    data: null, setTrigger: null, setState: null, focusTimer: null, sentFocus: null,
  };
  restore(s);
  wrap.addEventListener("keydown", (e) => onKey(s, e));
  grid.addEventListener("click", (e) => onClick(s, e));
  grid.addEventListener("mouseover", (e) => onHover(s, e));
  palette.addEventListener("click", (e) => {
    const chip = e.target.closest(".chip");
    if (chip) { decide(s, "relabel", chip.dataset.label); wrap.focus({ preventScroll: true }); }
  });
  s.resendTimer = setInterval(() => {
    if (!s.root.isConnected) {  // unmounted (another page): stop, let it be collected
      clearInterval(s.resendTimer);
      window.removeEventListener("resize", s.onResize);
      return;
    }
    if (s.pending.length && Date.now() - s.lastSent > s.resendDelay) {
      s.resendDelay = Math.min(2 * s.resendDelay, RESEND_MAX_MS);
      send(s);
    }
  }, 500);
  s.onResize = () => fitHeight(s);
  window.addEventListener("resize", s.onResize);
  return s;
}

// ------------------------------------------------------------------------------------ rendering

function update(s, data) {
  s.data = data || {};
  const items = s.data.items || [];
  if (s.data.view !== s.view) {
    s.view = s.data.view;
    s.items = items;
    s.focus = 0; s.anchor = 0; s.selected.clear();
    buildTiles(s);
    s.grid.scrollTop = 0;
  } else {
    s.items = items;
    if (s.tiles.length !== items.length) buildTiles(s);
  }
  s.index = new Map(s.items.map((it, i) => [it.id, i]));
  acknowledge(s);
  buildPalette(s);
  s.tiles.forEach((_, i) => paintTile(s, i));
  paintCounter(s);
  paintPanel(s);
  paintMessage(s);
  s.help.querySelector(".suggesthelp").style.display = s.items.some((it) => it.suggested) ? "" : "none";
  fitHeight(s);
}

function buildTiles(s) {
  const frag = document.createDocumentFragment();
  s.tiles = s.items.map((it, i) => {
    const tile = el("div", "tile");
    tile.dataset.i = i;
    tile.setAttribute("role", "gridcell");
    const img = el("img");
    img.loading = "lazy";
    img.decoding = "async";
    img.draggable = false;
    img.alt = it.id;
    img.src = it.url;
    const badge = el("span", "badge");
    const tick = el("span", "tick", "✓");
    const caption = el("span", "caption");
    tile.append(img, caption, badge, tick);
    frag.append(tile);
    return tile;
  });
  s.grid.replaceChildren(frag);
}

function buildPalette(s) {
  const pal = s.data.palette || [];
  const signature = pal.map((p) => p.label + ":" + p.key).join("|");
  if (signature === s.paletteSignature) return;
  s.paletteSignature = signature;
  s.keys = new Map(pal.filter((p) => p.key).map((p) => [p.key, p.label]));
  s.colors = new Map(pal.map((p) => [p.label, p.color]));
  const frag = document.createDocumentFragment();
  for (const p of pal) {
    const chip = el("button", "chip");
    chip.type = "button";
    chip.dataset.label = p.label;
    chip.title = `Relabel the selection (or the focused image) as “${p.label}”`;
    chip.style.setProperty("--c", p.color);
    if (p.key) chip.append(el("kbd", "", p.key));
    chip.append(el("span", "", p.label));
    frag.append(chip);
  }
  s.palette.replaceChildren(frag);
}

function shown(s, it) {
  const o = s.overlay.get(it.id);
  return o ? { ...it, status: o.status, new_label: o.new_label, pending: true } : it;
}

function paintTile(s, i) {
  const tile = s.tiles[i];
  const it = shown(s, s.items[i]);
  if (tile.firstChild.getAttribute("src") !== it.url) tile.firstChild.src = it.url;
  tile.classList.toggle("focus", i === s.focus);
  tile.classList.toggle("selected", s.selected.has(it.id));
  tile.classList.toggle("pending", !!it.pending);
  tile.dataset.status = it.status || "unreviewed";
  const badge = tile.querySelector(".badge");
  if (it.status === "relabeled") {
    badge.textContent = "→ " + it.new_label;
    tile.style.setProperty("--c", s.colors.get(it.new_label) || "#2563eb");
  } else {
    badge.textContent = STATUS_TEXT[it.status] || "";
    tile.style.removeProperty("--c");
  }
  const caption = tile.querySelector(".caption");
  const hint = s.data.show_suggested && it.suggested && it.suggested !== it.label && it.status === "unreviewed";
  const label = s.data.show_labels && it.label != null ? it.label : "";  // unlabeled: no caption
  caption.textContent = label + (hint ? (label ? " · " : "") + it.suggested + "?" : "");
  caption.classList.toggle("hint", !!hint);
  tile.title = `${it.id}\nlabel: ${it.label ?? UNLABELED}` + (it.suggested ? `\nsuggested: ${it.suggested}` : "");
}

function paintCounter(s) {
  const c = s.data.counter || { reviewed: 0, total: 0 };
  const page = s.data.page || { index: 0, count: 1 };
  // Optimistic: count the overlay's newly reviewed images until Python confirms them.
  let extra = 0;
  for (const [id, o] of s.overlay) {
    const i = s.index.get(id);
    if (i === undefined) continue;
    const was = s.items[i].status || "unreviewed";
    if (was === "unreviewed" && o.status !== "unreviewed") extra += 1;
    if (was !== "unreviewed" && o.status === "unreviewed") extra -= 1;
  }
  const reviewed = Math.max(0, Math.min(c.total, c.reviewed + extra));
  const share = c.total ? reviewed / c.total : 0;
  s.counter.innerHTML = "";
  const title = el("div", "ctitle", c.title || "");
  const nums = el("div", "nums");
  nums.innerHTML = `<b>${reviewed.toLocaleString()}</b> / ${c.total.toLocaleString()} reviewed` +
    ` · page ${page.index + 1}/${page.count}` + (s.selected.size ? ` · <b>${s.selected.size}</b> selected` : "");
  const meter = el("div", "meter");
  const fill = el("div", "fill");
  fill.style.width = (100 * share).toFixed(1) + "%";
  meter.append(fill);
  s.counter.append(title, nums, meter);
  s.counter.dataset.reviewed = reviewed;
}

function paintPanel(s) {
  const it = s.items[s.focus];
  if (!it) { s.panel.replaceChildren(el("div", "empty", "No images on this page.")); return; }
  const cur = shown(s, it);
  const p = s.data.panel && s.data.panel.id === it.id ? s.data.panel : null;
  const wantUrl = p ? p.url : it.url;
  let big = s.panel.querySelector("img.big");
  if (!big) {
    s.panel.replaceChildren();
    big = el("img", "big");
    big.alt = "focused image";
    const meta = el("div", "meta");
    const nb = el("div", "nbtitle", "Nearest neighbours");
    const nbs = el("div", "nbs");
    s.panel.append(big, meta, nb, nbs);
  }
  if (big.getAttribute("src") !== wantUrl) {
    // keep the small thumbnail until the large one is ready: no flash of empty space
    if (!p) big.src = it.url; else { const pre = new Image(); pre.onload = () => { big.src = wantUrl; }; pre.src = wantUrl; }
  }
  const meta = s.panel.querySelector(".meta");
  const status = cur.status === "relabeled" ? `relabeled → ${cur.new_label}` : (cur.status || "unreviewed");
  meta.replaceChildren();
  const name = el("div", "name", it.id);
  const rows = el("div", "rows");
  const add = (k, v, cls) => { rows.append(el("span", "k", k), el("span", "v " + (cls || ""), v)); };
  add("label", it.label ?? UNLABELED);
  add("state", status, "st-" + (cur.status || "unreviewed"));
  if (p && p.suggested && p.suggested !== it.label) add("suggested", p.suggested, "sugg");
  if (p && p.score !== undefined && p.score !== null) add("score", Number(p.score).toFixed(3));
  meta.append(name, rows);
  const nbs = s.panel.querySelector(".nbs");
  const list = p && p.neighbours ? p.neighbours : [];
  const sig = list.map((n) => n.id + n.status + (n.new_label || "")).join("|");
  if (nbs.dataset.sig !== sig) {
    nbs.dataset.sig = sig;
    nbs.replaceChildren(...list.map((n) => {
      const cell = el("div", "nb");
      const img = el("img");
      img.src = n.url; img.alt = n.id;
      const lab = el("span", "nblabel" + (n.label !== it.label ? " other" : ""),
        n.status === "relabeled" ? "→ " + n.new_label : (n.label ?? ""));
      cell.title = `${n.id}\nlabel: ${n.label ?? UNLABELED}` + (n.status && n.status !== "unreviewed" ? `\n${n.status}` : "");
      cell.append(img, lab);
      return cell;
    }));
  }
  s.panel.querySelector(".nbtitle").style.display = list.length ? "" : "none";
}

function paintMessage(s) {
  const errors = s.data.errors || [];
  s.message.textContent = errors.join(" · ");
  s.message.style.display = errors.length ? "" : "none";
}

function fitHeight(s) {
  // Fill the window below the grid's top edge: the page itself does not need to scroll.
  const top = s.grid.getBoundingClientRect().top;
  const h = Math.max(320, Math.floor(window.innerHeight - Math.max(0, top) - 24));
  s.grid.style.height = h + "px";
  s.panel.style.maxHeight = h + "px";
}

// ------------------------------------------------------------------------------------ actions

function targets(s) {
  if (s.selected.size) return s.items.filter((it) => s.selected.has(it.id)).map((it) => it.id);
  const it = s.items[s.focus];
  return it ? [it.id] : [];
}

function push(s, action) {
  s.seq += 1;
  const full = { seq: s.seq, client_id: uuid(), ...action };
  s.pending.push(full);
  s.resendDelay = RESEND_MS;
  save(s);
  send(s);
  return full;
}

function save(s) {
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify({
      session: s.session, seq: s.seq, pending: s.pending, history: s.history.slice(-HISTORY_KEPT) }));
  } catch (e) { /* storage full or disabled: the in-memory copy still resends */ }
}

function restore(s) {
  try {
    const saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
    if (saved && typeof saved.session === "string") {
      s.session = saved.session;
      s.seq = saved.seq || 0;
      s.pending = Array.isArray(saved.pending) ? saved.pending : [];
      s.history = Array.isArray(saved.history) ? saved.history : [];
    }
  } catch (e) { /* unreadable: start afresh */ }
}

function send(s) {
  if (!s.setTrigger) return;
  const it = s.items[s.focus];
  s.lastSent = Date.now();
  s.sentFocus = it ? it.id : null;
  clearTimeout(s.focusTimer);
  s.setTrigger("actions", { session: s.session, focus: s.sentFocus, actions: s.pending.slice() });
}

function acknowledge(s) {
  const acked = (s.data.acks || {})[s.session] || 0;
  const before = s.pending.length;
  s.pending = s.pending.filter((a) => a.seq > acked);
  if (s.pending.length !== before) { save(s); s.resendDelay = RESEND_MS; }
  for (const [id, o] of s.overlay) if (o.seq <= acked) s.overlay.delete(id);
}

function decide(s, kind, label) {
  const ids = targets(s);
  if (!ids.length) return;
  const status = { relabel: "relabeled", flag: "flagged", ok: "ok" }[kind];
  const before = ids.map((id) => {
    const it = shown(s, s.items[s.index.get(id)]);
    return [id, { status: it.status || "unreviewed", new_label: it.new_label || null }];
  });
  const single = !s.selected.size;
  s.selected.clear();
  // Move on first, so that the batch carries the new focus: one script run answers both.
  if (single && s.focus < s.items.length - 1) moveFocus(s, s.focus + 1, false, true);
  const action = push(s, kind === "relabel" ? { kind, ids, label } : { kind, ids });
  for (const id of ids) s.overlay.set(id, { status, new_label: kind === "relabel" ? label : null, seq: action.seq });
  s.history.push({ ids, before, client_id: action.client_id });
  save(s);
  repaint(s);
}

function acceptSuggestion(s) {
  // Enter: relabel the selection (or the focused image) to what the scores suggest, per image.
  const groups = new Map();
  for (const id of targets(s)) {
    const it = s.items[s.index.get(id)];
    if (it && it.suggested && it.suggested !== it.label && s.colors.has(it.suggested)) {
      if (!groups.has(it.suggested)) groups.set(it.suggested, []);
      groups.get(it.suggested).push(id);
    }
  }
  if (!groups.size) { flash(s, "No suggestion that differs from the label here."); return; }
  const keep = new Set(s.selected);
  for (const [label, ids] of groups) {
    s.selected = new Set(ids.length > 1 || keep.size ? ids : []);
    if (!s.selected.size) s.focus = s.index.get(ids[0]);
    decide(s, "relabel", label);
  }
  s.selected.clear();
  repaint(s);
}

function undo(s) {
  const last = s.history.pop();
  save(s);
  if (!last) {
    // Nothing done in this tab yet: undo your latest decision on the selection / focused image.
    const ids = targets(s).filter((id) => (shown(s, s.items[s.index.get(id)]).status || "unreviewed") !== "unreviewed");
    if (!ids.length) { flash(s, "Nothing to undo here."); return; }
    push(s, { kind: "undo", ids });
    s.selected.clear();
    repaint(s);
    return;
  }
  const action = push(s, { kind: "undo", ids: last.ids, undoes: last.client_id });
  for (const [id, b] of last.before) s.overlay.set(id, { ...b, seq: action.seq });
  repaint(s);
}

function page(s, delta) {
  const pg = s.data.page || { index: 0, count: 1 };
  const next = pg.index + delta;
  if (next < 0 || next >= pg.count) { flash(s, delta > 0 ? "Last page." : "First page."); return; }
  push(s, { kind: "page", delta });
}

function flash(s, text) {
  s.message.textContent = text;
  s.message.style.display = "";
  clearTimeout(s.flashTimer);
  s.flashTimer = setTimeout(() => paintMessage(s), 1800);
}

function repaint(s) {
  s.tiles.forEach((_, i) => paintTile(s, i));
  paintCounter(s);
  paintPanel(s);
}

// ------------------------------------------------------------------------------------ focus, selection

function columns(s) {
  if (s.tiles.length < 2) return 1;
  const top = s.tiles[0].offsetTop;
  let n = 1;
  while (n < s.tiles.length && s.tiles[n].offsetTop === top) n += 1;
  return n;
}

function moveFocus(s, i, extend, quiet) {
  if (!s.items.length) return;
  const prev = s.focus;
  s.focus = Math.max(0, Math.min(s.items.length - 1, i));
  if (extend) selectRange(s, s.anchor, s.focus);
  else s.anchor = s.focus;
  if (s.tiles[prev]) paintTile(s, prev);
  paintTile(s, s.focus);
  s.tiles[s.focus].scrollIntoView({ block: "nearest", inline: "nearest" });
  paintPanel(s);
  paintCounter(s);
  if (!quiet) sendFocus(s);
}

function sendFocus(s) {
  clearTimeout(s.focusTimer);
  s.focusTimer = setTimeout(() => {
    const it = s.items[s.focus];
    if (!it || it.id === s.sentFocus) return;
    send(s);
  }, FOCUS_DEBOUNCE_MS);
}

function selectRange(s, a, b) {
  const [lo, hi] = a < b ? [a, b] : [b, a];
  for (let i = lo; i <= hi; i += 1) s.selected.add(s.items[i].id);
}

function toggle(s, i) {
  const id = s.items[i].id;
  if (s.selected.has(id)) s.selected.delete(id); else s.selected.add(id);
}

function onClick(s, e) {
  const tile = e.target.closest(".tile");
  if (!tile) return;
  const i = Number(tile.dataset.i);
  if (e.shiftKey) selectRange(s, s.anchor, i);
  else toggle(s, i);
  const keepAnchor = e.shiftKey;
  const anchor = s.anchor;
  moveFocus(s, i, false);
  if (keepAnchor) s.anchor = anchor;
  repaint(s);
  s.wrap.focus({ preventScroll: true });
}

function onHover(s, e) {
  // Enlarge towards the inside of the grid so that edge tiles are not clipped.
  const tile = e.target.closest(".tile");
  if (!tile || tile.dataset.origin) return;
  const g = s.grid.getBoundingClientRect();
  const t = tile.getBoundingClientRect();
  const x = t.left - g.left < t.width ? "left" : g.right - t.right < t.width * 1.2 ? "right" : "center";
  const y = t.top - g.top < t.height ? "top" : g.bottom - t.bottom < t.height ? "bottom" : "center";
  tile.style.setProperty("--origin", `${x} ${y}`);
}

function onKey(s, e) {
  if (e.target.closest && e.target.closest("input, textarea, select")) return;
  const key = e.key;
  const plain = !e.ctrlKey && !e.metaKey && !e.altKey;
  let handled = true;
  const cols = columns(s);
  if (key === "ArrowRight") moveFocus(s, s.focus + 1, e.shiftKey);
  else if (key === "ArrowLeft") moveFocus(s, s.focus - 1, e.shiftKey);
  else if (key === "ArrowDown") moveFocus(s, s.focus + cols, e.shiftKey);
  else if (key === "ArrowUp") moveFocus(s, s.focus - cols, e.shiftKey);
  else if (key === "Home") moveFocus(s, 0, e.shiftKey);
  else if (key === "End") moveFocus(s, s.items.length - 1, e.shiftKey);
  else if (key === " " || key === "Spacebar") { if (s.items.length) { toggle(s, s.focus); s.anchor = s.focus; repaint(s); } }
  else if (key === "Escape") { s.selected.clear(); repaint(s); }
  else if ((key === "a" || key === "A") && (e.ctrlKey || e.metaKey)) { s.items.forEach((it) => s.selected.add(it.id)); repaint(s); }
  else if (plain && s.keys.has(key.toLowerCase()) && !LETTER_KEYS.has(key.toLowerCase())) decide(s, "relabel", s.keys.get(key.toLowerCase()));
  else if (plain && (key === "f" || key === "F")) decide(s, "flag");
  else if (plain && (key === "o" || key === "O")) decide(s, "ok");
  else if (plain && (key === "z" || key === "Z")) undo(s);
  else if ((e.ctrlKey || e.metaKey) && (key === "z" || key === "Z")) undo(s);
  else if (plain && key === "Enter") acceptSuggestion(s);
  else if (plain && (key === "n" || key === "N")) page(s, 1);
  else if (plain && (key === "p" || key === "P")) page(s, -1);
  else handled = false;
  if (handled) e.preventDefault();
  // Streamlit's own hotkeys (r: rerun, c: clear cache) must not fire while the grid has focus.
  if (plain || handled) e.stopPropagation();
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let s = parentElement.__mlfixGrid;
  if (!s || !s.root.isConnected) {
    s = init(parentElement);
    parentElement.__mlfixGrid = s;
    requestAnimationFrame(() => s.wrap.focus({ preventScroll: true }));
  }
  s.setTrigger = setTriggerValue;
  update(s, data);
  if (s.pending.length && !s.lastSent) send(s);  // restored after a reload: deliver them now
}
