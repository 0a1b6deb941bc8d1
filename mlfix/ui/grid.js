// The mlfix review grid: a keyboard-driven thumbnail grid (st.components.v2, no build step).
//
// Streamlit calls the default export on every script run that changes `data`, on the same element
// (the component has a key): the DOM and the state below are built once per element and updated.
//
// Python -> JS (`data`):
//   view       string; a new value (class, sort, page, view changed) resets focus and selection
//   items      [{id, url, label, status, new_label, suggested, run?}]  (status: unreviewed|relabeled|flagged|ok;
//              run: the run id in a similarity order, mlfix.pipeline.ordering.runs; a bar marks each new run)
//   palette    [{label, key, color}]
//   panel      {id, url, label, status, new_label, suggested, score, neighbours: [items]} | null
//   counter    {reviewed, total, title}
//   page       {index, count}
//   acks       {session: highest seq Python has applied}
//   errors     [string]                          (shown in the bar)
//   reviewer_tag  string | null: stamped as `by` on every action made (a batch is never stored under
//              whoever signs in next); while actions are unacknowledged, leaving the page asks first
// JS -> Python:
//   trigger `actions`: {session, focus, actions: [{seq, client_id, kind, ids?, label?, delta?, undoes?, by?}]}
//       every action not yet acknowledged, resent until `acks[session]` covers it (applied exactly
//       once), and the focused sample id (for the side panel's neighbours). One channel, so that a
//       decision and the focus move it causes cost one script run, not two.

const LETTER_KEYS = new Set(["f", "o", "z", "n", "p", "r"]);  // commands: never label keys (grid.py COMMAND_KEYS)
const STATUS_TEXT = { flagged: "⚑ wrong", ok: "✓ ok", duplicate: "⧉ duplicate" };  // duplicate: Duplicates page
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

// Characters that reorder or hide text (bidi overrides, isolates, marks; line separators) are shown as
// [U+202E], as everywhere in the app (mlfix.ui.text.visible): a label cannot pose as another text.
const HIDDEN = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/g;
function visibleText(text) {
  return (text == null ? "" : String(text)).replace(HIDDEN, (c) => /[\t\n\r\v\f]/.test(c) ? " " :
    "[U+" + c.charCodeAt(0).toString(16).toUpperCase().padStart(4, "0") + "]");
}

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) node.textContent = visibleText(text);
  return node;
}

function init(parentElement) {
  const root = parentElement.querySelector("#mlfix-root") || parentElement.appendChild(el("div"));
  root.replaceChildren();
  const wrap = el("div", "wrap");
  wrap.tabIndex = 0;
  wrap.setAttribute("role", "application");
  wrap.setAttribute("aria-label", "Review grid: arrows move, space selects, r selects a run, a palette key relabels");
  const bar = el("div", "bar");
  const counter = el("div", "counter");
  const palette = el("div", "palette");
  const help = el("div", "help");
  help.innerHTML =
    "<kbd>←↑↓→</kbd> move <kbd>space</kbd> select <kbd>shift</kbd> range " +
    "<span class='reviewhelp'><kbd>f</kbd> wrong <kbd>o</kbd> ok </span><kbd>z</kbd> undo <kbd>n</kbd>/<kbd>p</kbd> page <kbd>esc</kbd> clear" +
    "<span class='suggesthelp'> <kbd>enter</kbd> take suggestion</span>" +
    "<span class='runhelp' title='A bar marks where the similarity drops: a new run. r selects the run around " +
    "the focused image (shift+r adds it), [ and ] go to the previous or next run, click-drag selects a span, " +
    "shift-click selects from the focused image to the one clicked; " +
    "then one key labels the whole selection.'> <kbd>r</kbd> run <kbd>[</kbd><kbd>]</kbd> runs</span>" +
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
  grid.addEventListener("mousedown", (e) => dragStart(s, e));
  grid.addEventListener("mouseover", (e) => dragOver(s, e));
  s.onMouseUp = () => dragEnd(s);
  window.addEventListener("mouseup", s.onMouseUp);
  grid.addEventListener("mouseover", (e) => onHover(s, e));
  palette.addEventListener("click", (e) => {
    const chip = e.target.closest(".chip");
    if (chip) { decide(s, "relabel", chip.dataset.label); wrap.focus({ preventScroll: true }); }
  });
  s.resendTimer = setInterval(() => {
    if (!s.root.isConnected) {  // unmounted (another page): stop, let it be collected
      clearInterval(s.resendTimer);
      window.removeEventListener("resize", s.onResize);
      window.removeEventListener("mouseup", s.onMouseUp);
      window.removeEventListener("beforeunload", s.onUnload);
      return;
    }
    if (s.pending.length && Date.now() - s.lastSent > s.resendDelay) {
      s.resendDelay = Math.min(2 * s.resendDelay, RESEND_MAX_MS);
      send(s);
    }
  }, 500);
  s.onResize = () => fitHeight(s);
  window.addEventListener("resize", s.onResize);
  s.onUnload = (e) => warnUnsent(s, e);
  window.addEventListener("beforeunload", s.onUnload);
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
  // f/o judge a given label: on a page of images that came without one (labelling from scratch) they mean nothing.
  s.help.querySelector(".reviewhelp").style.display = s.items.some((it) => it.label != null) ? "" : "none";
  s.help.querySelector(".runhelp").style.display = hasRuns(s) ? "" : "none";
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
    chip.title = visibleText(`Relabel the selection (or the focused image) as “${p.label}”`);
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
  tile.classList.toggle("runstart", i > 0 && it.run != null && s.items[i - 1].run !== it.run);
  if (it.run != null) tile.dataset.run = it.run; else delete tile.dataset.run;
  tile.dataset.status = it.status || "unreviewed";
  const badge = tile.querySelector(".badge");
  if (it.status === "relabeled") {
    badge.textContent = visibleText("→ " + it.new_label);
    tile.style.setProperty("--c", s.colors.get(it.new_label) || "#2563eb");
  } else {
    badge.textContent = STATUS_TEXT[it.status] || "";
    tile.style.removeProperty("--c");
  }
  const caption = tile.querySelector(".caption");
  const hint = s.data.show_suggested && it.suggested && it.suggested !== it.label && it.status === "unreviewed";
  const label = s.data.show_labels && it.label != null ? it.label : "";  // unlabeled: no caption
  const sure = typeof it.confidence === "number" ? " " + it.confidence.toFixed(2) : "";  // mlfix.ui.suggestions
  caption.textContent = visibleText(label + (hint ? (label ? " · " : "") + (sure ? "suggest: " + it.suggested + sure : it.suggested + "?") : ""));
  caption.classList.toggle("hint", !!hint);
  tile.title = `${visibleText(it.id)}\nlabel: ${visibleText(it.label ?? UNLABELED)}` + (it.suggested ? `\nsuggested: ${visibleText(it.suggested)}` : "");
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
      cell.title = `${visibleText(n.id)}\nlabel: ${visibleText(n.label ?? UNLABELED)}` + (n.status && n.status !== "unreviewed" ? `\n${n.status}` : "");
      cell.append(img, lab);
      return cell;
    }));
  }
  s.panel.querySelector(".nbtitle").style.display = list.length ? "" : "none";
}

function paintMessage(s) {
  const errors = s.data.errors || [];
  s.message.textContent = visibleText(errors.join(" · "));
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
  if (s.data && s.data.reviewer_tag) full.by = s.data.reviewer_tag;  // whose decision: never stored under another
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

function unsent(s) {
  // Decisions not acknowledged yet (page turns do not count: nothing of them would be lost).
  return s.pending.filter((a) => a.kind !== "page").length;
}

function warnUnsent(s, e) {
  // Closing (or reloading) the tab while decisions are unsent: the browser asks "Leave site?".
  if (!unsent(s)) return undefined;
  e.preventDefault();
  e.returnValue = "Decisions are not saved yet: stay on the page until they are.";
  return e.returnValue;
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
  const last = Math.max(...ids.map((id) => s.index.get(id)));
  s.selected.clear();
  // Move on (past the last image decided) first, so that the batch carries the new focus: one
  // script run answers both. After a run, the focus is on the next run's first image.
  if (last < s.items.length - 1) moveFocus(s, last + 1, false, true);
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
  if (!tile || s.dragged) return;  // the end of a drag is not a click
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

// ------------------------------------------------------------------------------------ runs, drag

function hasRuns(s) {
  return s.items.some((it) => it.run != null);
}

function runBounds(s, i) {
  // [first, last] positions of the run around position i (on this page)
  const run = s.items[i].run;
  let lo = i, hi = i;
  while (lo > 0 && s.items[lo - 1].run === run) lo -= 1;
  while (hi < s.items.length - 1 && s.items[hi + 1].run === run) hi += 1;
  return [lo, hi];
}

function selectRun(s, add) {
  // r: the selection becomes the run around the focused image (shift+r: adds it to the selection)
  const it = s.items[s.focus];
  if (!it || it.run == null) { flash(s, "No runs here: they show in a similarity order (Sort by: Similarity)."); return; }
  const [lo, hi] = runBounds(s, s.focus);
  if (!add) s.selected.clear();
  for (let i = lo; i <= hi; i += 1) s.selected.add(s.items[i].id);
  s.anchor = lo;
  repaint(s);
}

function jumpRun(s, step) {
  // ] / [: focus the first image of the next / previous run
  if (!s.items.length || s.items[s.focus].run == null) { flash(s, "No runs here."); return; }
  const [lo, hi] = runBounds(s, s.focus);
  if (step > 0) { if (hi < s.items.length - 1) moveFocus(s, hi + 1, false); else flash(s, "Last run on this page."); }
  else if (lo > 0) moveFocus(s, runBounds(s, lo - 1)[0], false);
  else if (s.focus > 0) moveFocus(s, 0, false);
  else flash(s, "First run on this page.");
}

function dragStart(s, e) {
  const tile = e.target.closest(".tile");
  s.dragged = false;
  if (!tile || e.button !== 0 || e.shiftKey || e.ctrlKey || e.metaKey) { s.drag = null; return; }
  s.drag = { start: Number(tile.dataset.i), base: new Set(s.selected) };
}

function dragOver(s, e) {
  // click-drag selects the span from where the button went down to the tile under the mouse
  const tile = e.target.closest(".tile");
  if (!s.drag || !tile || !(e.buttons & 1)) return;
  const i = Number(tile.dataset.i);
  if (i === s.drag.start && !s.dragged) return;
  s.dragged = true;
  s.grid.classList.add("dragging");
  s.selected = new Set(s.drag.base);
  selectRange(s, s.drag.start, i);
  moveFocus(s, i, false);
  s.anchor = s.drag.start;
  repaint(s);
}

function dragEnd(s) {
  if (!s.drag) return;
  s.drag = null;
  s.grid.classList.remove("dragging");
  if (s.dragged) {
    s.wrap.focus({ preventScroll: true });
    setTimeout(() => { s.dragged = false; }, 0);  // after the click that ends the drag, if any
  }
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
  else if (plain && (key === "r" || key === "R")) selectRun(s, e.shiftKey);
  else if (plain && (key === "]" || key === "[")) jumpRun(s, key === "]" ? 1 : -1);
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
