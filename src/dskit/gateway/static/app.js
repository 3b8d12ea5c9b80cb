// The dskit gateway's web page. It only talks to the gateway's session API (it never sees
// the upstream key). Answers stream over EventSource, which reconnects by itself with
// Last-Event-ID; a reloaded page reopens the session named in the URL hash and replays the
// answer in progress from its first event, so nothing is missing and nothing repeats.
// Auth (when the gateway has keys): the key is exchanged once for an HttpOnly cookie
// (POST /v1/login), so scripts on the page can never read it back.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const md = window.dskitMarkdown;
  const state = { session: null, source: null, answer: null };

  async function api(method, path, body) {
    const init = { method: method, headers: {}, credentials: "same-origin" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 401) { showLogin(); throw new Error("sign in first"); }
    if (response.status === 204) return null;
    const data = await response.json();
    if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
    return data;
  }

  function setStatus(text) { $("status").textContent = text || ""; }

  function showLogin() { $("login").hidden = false; }

  // ---- rendering -------------------------------------------------------------------

  function addMessage(role, text) {
    const el = document.createElement("div");
    el.className = "msg " + role;
    if (role === "user") {
      el.textContent = text;
    } else {
      el.innerHTML = '<div class="thinking"></div><div class="body"></div>';
      el.dataset.raw = text || "";
      el.dataset.thinking = "";
      el.dataset.state = "done";
      paint(el);
    }
    $("messages").appendChild(el);
    el.scrollIntoView({ block: "end" });
    return el;
  }

  function paint(el) {
    el.querySelector(".body").innerHTML = md.render(el.dataset.raw);
    el.querySelector(".thinking").textContent = el.dataset.thinking;
    el.querySelector(".thinking").hidden = !el.dataset.thinking;
  }

  let painting = null;
  function schedulePaint(el) {
    if (painting) return;
    painting = requestAnimationFrame(() => { painting = null; paint(el); el.scrollIntoView({ block: "end" }); });
  }

  function renderSession(detail) {
    $("messages").innerHTML = "";
    for (const m of detail.messages) {
      if (m.role === "user") addMessage("user", m.content);
      else if (m.role === "assistant") {
        const el = addMessage("assistant", m.content || "");
        el.dataset.thinking = m.reasoning_content || "";
        if (m.incomplete) el.dataset.state = "incomplete";
        paint(el);
      }
    }
  }

  // ---- sessions --------------------------------------------------------------------

  async function refreshList() {
    let list;
    try { list = await api("GET", "/v1/sessions?limit=100"); } catch (e) { return; }
    const ul = $("session-list");
    ul.innerHTML = "";
    for (const s of list.data) {
      const li = document.createElement("li");
      li.textContent = s.title || "New chat";
      li.dataset.id = s.id;
      if (state.session === s.id) li.className = "current";
      li.addEventListener("click", () => openSession(s.id));
      ul.appendChild(li);
    }
  }

  async function openSession(id) {
    closeStream();
    state.session = id;
    location.hash = "s=" + id;
    const detail = await api("GET", "/v1/sessions/" + id);
    renderSession(detail);
    refreshList();
    if (detail.active_answer) follow(id, detail.active_answer);
  }

  function newChat() {
    closeStream();
    state.session = null;
    history.replaceState(null, "", location.pathname);
    $("messages").innerHTML = "";
    refreshList();
    $("input").focus();
  }

  // ---- streaming -------------------------------------------------------------------

  function closeStream() {
    if (state.source) state.source.close();
    state.source = null;
    state.answer = null;
    $("stop").hidden = true;
    $("send").disabled = false;
  }

  function follow(sessionId, answerId) {
    const el = addMessage("assistant", "");
    el.dataset.state = "streaming";
    el.dataset.answerId = answerId;
    let lastSeq = 0;
    const source = new EventSource("/v1/sessions/" + sessionId + "/answers/" + answerId + "/stream");
    state.source = source;
    state.answer = answerId;
    $("stop").hidden = false;
    $("send").disabled = true;

    function fresh(event) {  // drop anything already applied (exactly-once rendering)
      const seq = Number(String(event.lastEventId).split(":").pop());
      if (!(seq > lastSeq)) return false;
      lastSeq = seq;
      el.dataset.seq = String(seq);
      return true;
    }
    source.addEventListener("content", (e) => {
      if (!fresh(e)) return;
      el.dataset.raw += JSON.parse(e.data).text;
      schedulePaint(el);
    });
    source.addEventListener("reasoning", (e) => {
      if (!fresh(e)) return;
      el.dataset.thinking += JSON.parse(e.data).text;
      schedulePaint(el);
    });
    source.addEventListener("tool_call", (e) => {
      if (!fresh(e)) return;
      const call = JSON.parse(e.data);
      if (call.name) el.dataset.raw += "\n\n`tool call: " + call.name + "`\n";
      schedulePaint(el);
    });
    source.addEventListener("usage", (e) => { fresh(e); });
    source.addEventListener("done", (e) => {
      if (!fresh(e)) return;
      el.dataset.state = "done";
      paint(el);
      closeStream();
      setStatus("");
      refreshList();
    });
    source.addEventListener("error", (e) => {
      if (e.data === undefined) {  // a network error: EventSource reconnects with Last-Event-ID
        setStatus("reconnecting...");
        return;
      }
      if (!fresh(e)) return;
      const error = JSON.parse(e.data);
      el.dataset.state = error.type === "cancelled" ? "incomplete" : "error";
      const note = document.createElement("p");
      note.className = "error";
      note.textContent = error.type === "cancelled" ? "(stopped)" : "Error: " + error.message;
      paint(el);
      el.appendChild(note);
      closeStream();
    });
    source.addEventListener("open", () => setStatus(""));
  }

  async function send(text) {
    setStatus("");
    if (!state.session) {
      const created = await api("POST", "/v1/sessions", { model: $("model").value });
      state.session = created.id;
      location.hash = "s=" + created.id;
    }
    addMessage("user", text);
    const handle = await api("POST", "/v1/sessions/" + state.session + "/messages",
      { content: text, background: true });
    follow(state.session, handle.answer_id);
    refreshList();
  }

  // ---- wiring ----------------------------------------------------------------------

  $("composer").addEventListener("submit", (event) => {
    event.preventDefault();
    const text = $("input").value.trim();
    if (!text || state.source) return;
    $("input").value = "";
    send(text).catch((e) => setStatus(e.message));
  });
  $("input").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("stop").addEventListener("click", () => {
    if (state.session) api("POST", "/v1/sessions/" + state.session + "/cancel").catch((e) => setStatus(e.message));
  });
  $("new-chat").addEventListener("click", newChat);
  $("show-thinking").addEventListener("change", (e) => {
    document.body.classList.toggle("show-thinking", e.target.checked);
  });
  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api("POST", "/v1/login", { key: $("login-key").value.trim() });
      $("login-key").value = "";
      $("login").hidden = true;
      $("login-error").hidden = true;
      start();
    } catch (e) {
      $("login-error").textContent = e.message;
      $("login-error").hidden = false;
    }
  });

  async function start() {
    try {
      const info = await api("GET", "/v1/gateway");
      $("simulator-banner").hidden = info.upstream !== "simulator";
    } catch (e) { /* the banner stays hidden */ }
    await refreshList();
    const match = location.hash.match(/^#s=([A-Za-z0-9_-]+)$/);
    if (match) openSession(match[1]).catch((e) => setStatus(e.message));
  }
  start();
})();
