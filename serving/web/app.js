// The memory's web page: query by image, read the decision and its evidence, forget evidence
// and see the decision change, add images, browse versions and roll back. Plain JS over the
// same HTTP API as every other client (serving/router.py); no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { query: null, answer: null, token: sessionStorage.getItem("vmem-token") || "" };

async function api(method, path, body) {
  const headers = { "Content-Type": "application/json" };
  if (state.token) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, { method, headers, body: body ? JSON.stringify(body) : undefined });
  const data = await response.json().catch(() => ({ error: response.statusText, field: "" }));
  if (!response.ok) {
    const error = new Error(`${data.error || response.statusText}` + (data.field ? ` (field: ${data.field})` : ""));
    error.status = response.status;
    throw error;
  }
  return data;
}

function showError(error) {
  const box = $("error");
  box.textContent = error ? String(error.message || error) : "";
  box.hidden = !error;
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child));
  return node;
}

// ---- editing is enabled by a token ------------------------------------------------------------
function setEditing() {
  const enabled = Boolean(state.token);
  const reason = enabled ? "" : "enter the admin token to edit";
  for (const button of document.querySelectorAll("button.edit")) {
    button.disabled = !enabled || (button.id === "forget-label" && !$("label-filter").value);
    button.title = reason || (button.id === "forget-label" && !$("label-filter").value ? "choose a label" : "");
  }
  $("edit-state").textContent = enabled ? "edits enabled (an edit with a read-only token is refused)" : reason;
}

$("token").value = state.token;
$("token").addEventListener("input", (event) => {
  state.token = event.target.value.trim();
  sessionStorage.setItem("vmem-token", state.token);
  setEditing();
});

// ---- the memory: size, classes, versions ------------------------------------------------------
async function loadMemory() {
  const memory = await api("GET", "v1/memory");
  $("summary").textContent = `${memory.size} items · ${Object.keys(memory.classes).length} labels · ` +
    `${memory.shards} shards · ${memory.encoder} · version ${memory.version}`;
  $("segments").textContent = `${memory.segments} segments over ${memory.shards} shards · ` +
    `${memory.tombstoned} tombstoned items (hidden; their bytes leave the files at compaction)`;
  // a shard whose files of this version failed to load: counted from an older version, or not at all
  const degraded = Object.entries(memory.degraded_shards || {}).map(([shard, why]) =>
    `shard ${shard} ${why.serving ? `served from version ${why.serving}` : "left out"} (${why.reason})`);
  $("degraded").hidden = !degraded.length;
  $("degraded").textContent = degraded.length ? `STALE: ${degraded.join("; ")}` : "";
  // text queries: the memory's encoder must have a text tower (open_clip)
  $("text-form").hidden = !String(memory.encoder).startsWith("open_clip:");
  const classes = Object.entries(memory.classes).sort((a, b) => b[1] - a[1]);
  $("classes").replaceChildren(el("span", { class: "muted" }, "items per label: "),
    ...classes.map(([label, count], i) => `${i ? ", " : ""}${label} ${count}`));
  const { versions, serving } = await api("GET", "v1/memory/versions");
  const body = $("versions").querySelector("tbody");
  body.replaceChildren(...versions.slice().reverse().map((row) => el("tr", { class: row.latest ? "latest" : "" },
    el("td", {}, row.version + (row.version === serving ? " (serving)" : "")), el("td", {}, row.operation),
    el("td", {}, row.count), el("td", {}, row.shards), el("td", {}, row.created.slice(0, 19)),
    el("td", {}, row.latest ? "" : el("button", { class: "edit rollback", "data-version": row.version,
      onclick: () => rollback(row.version) }, "roll back to this")))));
  setEditing();
}

async function rollback(version) {
  try {
    const edit = await api("POST", "v1/memory/rollback", { to: version });
    await loadMemory();
    if (state.query) await classify(edit.version);
  } catch (error) { showError(error); }
}

// ---- the query --------------------------------------------------------------------------------
function readFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

async function setQuery(file) {
  if (!file) return;
  state.query = { image_base64: await readFile(file) };
  $("preview").src = URL.createObjectURL(file);
  $("run").disabled = false;
  await classify();
}

function queryBody(minVersion) {
  const body = { ...state.query, k: Number($("k").value) || 50, aggregator: $("aggregator").value,
                 rerank: $("rerank").value };
  if (minVersion) body.min_version = minVersion;
  return body;
}

async function classify(minVersion) {
  showError(null);
  try {
    const previous = state.answer;
    state.answer = await api("POST", "v1/classify", queryBody(minVersion));
    render(state.answer, minVersion ? previous : null);
  } catch (error) { showError(error); }
}

function render(answer, before) {
  $("result-panel").hidden = $("evidence-panel").hidden = false;
  const decision = $("decision");
  decision.textContent = answer.label === "unknown" ? "unknown (the evidence is weak)" : answer.label;
  decision.className = answer.label === "unknown" ? "unknown" : "";
  decision.dataset.label = answer.label;
  decision.append(el("span", { class: "muted" }, `  ${(100 * answer.confidence).toFixed(1)}% of the votes`));
  $("change").textContent = before ? `before: ${before.label} (${(100 * before.confidence).toFixed(1)}%) → ` +
    `after: ${answer.label} (${(100 * answer.confidence).toFixed(1)}%)` : "";
  const scores = Object.entries(answer.scores).sort((a, b) => b[1] - a[1]);
  const top = scores.length ? scores[0][1] : 1;
  $("votes").replaceChildren(...scores.map(([label, score]) => el("div",
    { class: `bar${label === answer.label ? " winner" : ""}`, "data-label": label },
    el("span", { class: "name" }, label), el("div", { class: "fill", style: `width:${Math.max(2, 300 * score / top)}px` }),
    el("span", { class: "muted" }, score.toFixed(3)))));
  $("answered").textContent = `version ${answer.version} · shards ${answer.shards_answered.length}/${answer.shards_total}` +
    (answer.partial ? " · PARTIAL: a shard did not answer" : "") +
    ((answer.shards_stale || []).length ? ` · STALE: shard ${answer.shards_stale.map((s) => s.shard).join(", ")} from an older version` : "") +
    ` · ${answer.aggregator} (${answer.parameter})` +
    (answer.reranked_by ? ` · re-ranked by ${answer.reranked_by}` : "");
  const filter = $("label-filter");
  const chosen = filter.value;
  const labels = [...new Set(answer.neighbours.map((n) => n.label))].sort();
  filter.replaceChildren(el("option", { value: "" }, "all"), ...labels.map((l) => el("option", { value: l }, l)));
  filter.value = labels.includes(chosen) ? chosen : "";
  $("gallery").replaceChildren(...answer.neighbours.map(card));
  applyFilter();
}

function card(n) {
  const image = el("div", { class: "noimg" }, "no image");
  if (n.source && !n.source.startsWith("api:")) loadThumbnail(n.source, image);
  // Ids are 64-bit hashes, beyond a JS number's 53 bits, and a key may name several items (one
  // per batch): the page names an item by its id as a decimal string (id_str).
  return el("div", { class: "card", "data-id": n.id_str, "data-key": n.key, "data-label": n.label },
    image, el("div", { class: "label" }, n.label),
    el("div", {}, `rank ${n.rank} · distance ${n.distance.toFixed(3)}`),
    el("div", {}, `vote ${n.vote.toFixed(3)} · weight ${n.item_weight.toFixed(2)}`),
    el("div", { class: "muted", title: n.source }, n.key),
    el("button", { class: "like", onclick: () => queryItem(n) }, "more like this"),
    el("button", { class: "edit forget", onclick: () => forget({ ids: [n.id_str] }) }, "forget this image"));
}

// query by an item of the memory: its stored embedding is the query (by id_str: see card())
function queryItem(n) {
  state.query = { item_id: n.id_str };
  const shown = document.querySelector(`#gallery .card[data-id="${CSS.escape(n.id_str)}"] img`);
  if (shown) $("preview").src = shown.src; else $("preview").removeAttribute("src");
  $("run").disabled = false;
  classify();
}

async function loadThumbnail(source, holder) {
  const headers = state.token ? { Authorization: `Bearer ${state.token}` } : {};
  try {
    const response = await fetch(`v1/thumbnail?size=160&source=${encodeURIComponent(source)}`, { headers });
    if (!response.ok) {
      holder.textContent = response.status === 403 ? "outside the allowed roots" : "image unavailable";
      return;
    }
    const img = el("img", { alt: source, src: URL.createObjectURL(await response.blob()) });
    holder.replaceWith(img);
  } catch (error) { holder.textContent = "image unavailable"; }
}

function applyFilter() {
  const label = $("label-filter").value;
  for (const node of $("gallery").children) node.hidden = Boolean(label) && node.dataset.label !== label;
  const button = $("forget-label");
  button.dataset.armed = "";
  button.textContent = label ? `forget every image labelled ${label}` : "forget every image with this label";
  setEditing();
}

async function forget(what) {
  showError(null);
  try {
    const edit = await api("DELETE", "v1/memory/items", what);
    await loadMemory();
    if (state.query) await classify(edit.version);  // the same query, from the edit's version on
  } catch (error) { showError(error); }
}

// ---- adding -----------------------------------------------------------------------------------
async function add() {
  showError(null);
  const files = [...$("add-files").files];
  const label = $("add-label").value.trim();
  if (!files.length || !label) { showError("choose image files and a label"); return; }
  try {
    const stamp = Date.now();
    const items = await Promise.all(files.map(async (file, i) => ({
      key: `web/${stamp}-${i}-${file.name}`, label, image_base64: await readFile(file) })));
    const edit = await api("POST", "v1/memory/items", { items });
    $("add-result").textContent = `added ${edit.added} → version ${edit.version} (${edit.size} items)`;
    await loadMemory();
    if (state.query) await classify(edit.version);
  } catch (error) { showError(error); }
}

// ---- wiring -----------------------------------------------------------------------------------
$("file").addEventListener("change", (event) => {
  setQuery(event.target.files[0]);
  event.target.value = "";  // choosing the same file again must query again
});
$("text-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value.trim();
  if (!text) return;
  state.query = { text };
  $("preview").removeAttribute("src");
  $("run").disabled = false;
  classify();
});
$("run").addEventListener("click", () => classify());
$("label-filter").addEventListener("change", applyFilter);
$("forget-label").addEventListener("click", () => {
  const button = $("forget-label");
  const label = $("label-filter").value;
  if (!label) return;
  if (!button.dataset.armed) {  // two clicks: a whole label is many images
    button.dataset.armed = "1";
    button.textContent = `click again to forget every image labelled ${label}`;
    return;
  }
  button.dataset.armed = "";
  forget({ labels: [label] });
});
$("add").addEventListener("click", add);
const drop = $("drop");
drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  setQuery(event.dataTransfer.files[0]);
});
document.addEventListener("paste", (event) => {
  const item = [...(event.clipboardData || {}).items || []].find((i) => i.type.startsWith("image/"));
  if (item) setQuery(item.getAsFile());
});
setEditing();
loadMemory().catch(showError);
