// The Navistore web page. Every value from the node is put in the page with textContent,
// never as HTML: a stored value is data, and must not run in the node's origin.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { etag: null, after: null, watching: null };

function token() {
  return sessionStorage.getItem("navistore-token") || "";
}

function say(text, isError) {
  const status = $("status");
  status.textContent = text;
  status.className = isError ? "error" : "";
}

// Every API call goes through here, so that each carries the token and every refusal is shown.
async function api(path, options) {
  const init = Object.assign({ headers: {} }, options || {});
  if (token()) init.headers["Authorization"] = "Bearer " + token();
  const answer = await fetch(path, init);
  if (answer.status === 401) say("Refused (401): the token is missing or wrong.", true);
  else if (answer.status === 403) say("Refused (403): this token may not do that.", true);
  return answer;
}

function encodePath(key) {
  return key.split("/").map(encodeURIComponent).join("/");
}

async function listKeys(more) {
  let prefix = $("prefix").value || "/";
  if (!prefix.startsWith("/")) prefix = "/" + prefix;
  if (!prefix.endsWith("/")) prefix += "/";
  if (!more) { $("keys").replaceChildren(); state.after = null; }
  let url = encodePath(prefix) + "?limit=20";
  if (state.after) url += "&after=" + encodeURIComponent(state.after);
  const answer = await api(url);
  if (!answer.ok) { if (answer.status !== 401 && answer.status !== 403) say("Listing failed: " + answer.status, true); return; }
  const page = await answer.json();
  for (const key of page.keys) {
    const item = document.createElement("li");
    item.textContent = key;
    item.addEventListener("click", () => openKey(key));
    $("keys").appendChild(item);
  }
  state.after = page.next;
  $("more").hidden = !page.next;
  say("Listed " + $("keys").children.length + " key(s) under " + prefix);
}

function hex(bytes) {
  return Array.from(bytes.slice(0, 32), (b) => b.toString(16).padStart(2, "0")).join(" ");
}

function isText(type) {
  return /^text\//.test(type) || /json|xml|javascript/.test(type);
}

async function openKey(key) {
  const answer = await api(encodePath(key));
  if (!answer.ok) { if (answer.status === 404) say("No such key: " + key, true); return; }
  const type = answer.headers.get("Content-Type") || "";
  const bytes = new Uint8Array(await answer.arrayBuffer());
  state.etag = answer.headers.get("ETag");
  $("key").value = key;
  $("key").dataset.opened = key;
  $("content-type").value = type;
  $("version").textContent = state.etag || "";
  $("expires").textContent = answer.headers.get("X-Navistore-Expires") || "never";
  $("size").textContent = bytes.length + " bytes";
  if (isText(type)) {
    const text = new TextDecoder().decode(bytes);
    let shown = text;
    if (/json/.test(type)) {
      try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (e) { shown = text; }
    }
    $("view").textContent = shown;
    $("value").value = text;
    $("value").disabled = false;
  } else {
    $("view").textContent = "binary, " + bytes.length + " bytes: " + hex(bytes) + (bytes.length > 32 ? " …" : "");
    $("value").value = "";
    $("value").disabled = true;
  }
  say("Opened " + key);
  await showConflicts(key);
}

async function showConflicts(key) {
  $("conflicts").hidden = true;
  $("conflict-list").replaceChildren();
  const answer = await api(encodePath(key) + "?conflicts=true");
  if (!answer.ok) return; // an older node without ?conflicts=true: nothing to show
  let doc;
  try { doc = await answer.json(); } catch (e) { return; }
  if (!doc || !Array.isArray(doc.conflicts) || doc.conflicts.length === 0) return;
  for (const loser of doc.conflicts) {
    const item = document.createElement("li");
    const what = loser.deleted ? "deleted" : String(loser.value);
    item.textContent = loser.version + " from " + loser.node + ": " + what;
    $("conflict-list").appendChild(item);
  }
  $("conflicts").hidden = false;
}

async function save(event) {
  event.preventDefault();
  const key = $("key").value;
  const headers = { "Content-Type": $("content-type").value || "text/plain; charset=utf-8" };
  if (state.etag && key === $("key").dataset.opened) headers["If-Match"] = state.etag;
  const answer = await api(encodePath(key), { method: "PUT", headers, body: $("value").value });
  if (answer.status === 412) { say("Not saved: the key changed since you opened it.", true); return; }
  if (!answer.ok) { if (answer.status !== 401 && answer.status !== 403) say("Save failed: " + answer.status, true); return; }
  await openKey(key);
  say("Saved " + key);
}

async function removeKey() {
  const key = $("key").value;
  const headers = {};
  if (state.etag) headers["If-Match"] = state.etag;
  const answer = await api(encodePath(key), { method: "DELETE", headers });
  if (answer.status === 412) { say("Not deleted: the key changed since you opened it.", true); return; }
  if (answer.ok) { say("Deleted " + key); state.etag = null; $("view").textContent = ""; }
}

async function removePrefix() {
  let prefix = $("prefix").value || "/";
  if (!prefix.endsWith("/")) prefix += "/";
  const answer = await api(encodePath(prefix) + "?recursive=true", { method: "DELETE" });
  if (answer.ok) { const doc = await answer.json(); say("Deleted " + doc.deleted + " under " + prefix); }
}

// Live watch: the long-poll feed of /_changes (an EventSource could not send the token).
async function watch(event) {
  event.preventDefault();
  const prefix = $("watch-prefix").value || "/";
  const run = {};
  state.watching = run;
  $("events").replaceChildren();
  // Start from now: every answer carries the node's newest seq (X-Navistore-Index).
  const first = await api("/_changes?limit=1&prefix=" + encodeURIComponent(prefix));
  if (!first.ok) { state.watching = null; return; }
  let since = Number(first.headers.get("X-Navistore-Index") || (await first.json()).last_seq || 0);
  say("Watching " + prefix);
  while (state.watching === run) {
    const answer = await api("/_changes?feed=longpoll&timeout=20&since=" + since + "&prefix=" + encodeURIComponent(prefix));
    if (!answer.ok) { state.watching = null; return; }
    const doc = await answer.json();
    for (const change of doc.results) {
      const item = document.createElement("li");
      item.textContent = (change.deleted ? "deleted " : "changed ") + change.key;
      $("events").appendChild(item);
    }
    since = doc.last_seq;
  }
}

async function peers() {
  const answer = await api("/_peers");
  if (!answer.ok) return;
  $("peers").replaceChildren();
  for (const peer of await answer.json()) {
    const row = document.createElement("tr");
    let lag = peer.lag_changes === undefined ? "" : peer.lag_changes + " change(s)";
    if (typeof peer.lag_seconds === "number") lag += ", " + peer.lag_seconds.toFixed(1) + " s";
    for (const cell of [peer.url, peer.state, lag]) {
      const td = document.createElement("td");
      td.textContent = cell === undefined || cell === null ? "" : String(cell);
      row.appendChild(td);
    }
    $("peers").appendChild(row);
  }
  say("Peers shown");
}

document.addEventListener("DOMContentLoaded", () => {
  $("token").value = token();
  $("token-save").addEventListener("click", () => { sessionStorage.setItem("navistore-token", $("token").value); say("Token set"); });
  $("browse").addEventListener("submit", (e) => { e.preventDefault(); listKeys(false); });
  $("more").addEventListener("click", () => listKeys(true));
  $("editor").addEventListener("submit", save);
  $("delete").addEventListener("click", removeKey);
  $("delete-prefix").addEventListener("click", removePrefix);
  $("watch").addEventListener("submit", watch);
  $("peers-load").addEventListener("click", peers);
});
