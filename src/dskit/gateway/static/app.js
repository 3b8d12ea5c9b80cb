// The dskit gateway's web page. It only talks to the gateway's session API (it never sees
// the upstream key). Answers stream over the session's WebSocket (or, where none opens,
// EventSource, which reconnects by itself with Last-Event-ID); a reloaded page reopens the session named in the URL hash and replays the
// answer in progress from its first event, so nothing is missing and nothing repeats.
// Auth (when the gateway has keys): the key is exchanged once for an HttpOnly cookie
// (POST /v1/login), so scripts on the page can never read it back. A JWT (pasted in the
// same field) is exchanged the same way; its login answer says when it expires, and
// `refresh_before_seconds` before that the page renews it: from the configured
// `refresh_url` (POST with the page's cookies, answering {"token"}), else by asking again.
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
    if (response.status === 401) {
      if (path === "/v1/login") throw new Error(`That ${body.token ? "token" : "key"} was not accepted.`);
      showLogin();
      throw new Error("Sign in with a gateway key first.");
    }
    if (response.status === 204) return null;
    const data = await response.json();
    if (!response.ok) throw new Error((data.error && data.error.message) || response.statusText);
    return data;
  }

  function setStatus(text) { $("status").textContent = text || ""; }

  function showLogin() { $("login").hidden = false; $("logout").hidden = true; }

  // A token's sign-in: renew it before it expires (refresh_url, else re-prompt).
  let renewal = null;
  function scheduleRenewal(login) {
    clearTimeout(renewal);
    if (!login) { localStorage.removeItem("dskit.tokenLogin"); return; }
    localStorage.setItem("dskit.tokenLogin", JSON.stringify(login));
    const due = (login.expires_at - login.refresh_before_seconds) * 1000 - Date.now();
    renewal = setTimeout(() => renew(login), Math.max(0, Math.min(due, 2 ** 31 - 1)));
  }
  async function renew(login) {
    try {
      if (!login.refresh_url) throw new Error("no refresh_url");
      const response = await fetch(login.refresh_url, { method: "POST", credentials: "include" });
      const fresh = await response.json();
      scheduleRenewal(await api("POST", "/v1/login", { token: fresh.token }));
    } catch (e) {
      scheduleRenewal(null);
      showLogin();
      $("login-error").textContent = "Your sign-in is about to expire: paste a new token.";
      $("login-error").hidden = false;
    }
  }
  const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

  // A note under an answer that did not finish (stopped, cut by an error or a crash).
  function markIncomplete(el, text) {
    el.dataset.state = "incomplete";
    const note = document.createElement("p");
    note.className = "mark";
    note.textContent = text;
    el.appendChild(note);
  }

  // The header shows the open session's own settings; they shape new chats only.
  const MIGRATED = { "deepseek-chat": ["deepseek-flash", false], "deepseek-reasoner": ["deepseek-flash", true] };
  function showSettings(detail) {
    const open = detail !== null;
    const params = open ? (detail.parameters || {}) : {};
    let model = open ? detail.model : (localStorage.getItem("dskit.model") || "deepseek-flash");
    let implied = null;
    if (MIGRATED[model]) { implied = MIGRATED[model][1]; model = MIGRATED[model][0]; }
    const select = $("model");
    if (!Array.from(select.options).some((o) => o.value === model)) select.add(new Option(model, model));
    select.value = model;
    const think = open ? (typeof params.thinking === "boolean" ? params.thinking : implied !== false)
      : localStorage.getItem("dskit.think") !== "false";
    $("think").checked = think;
    select.disabled = open;
    $("think").disabled = open;
  }

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
        paint(el);
        if (m.incomplete) markIncomplete(el, "(incomplete: this answer was stopped or cut off)");
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
    showSettings(detail);
    refreshList();
    if (detail.active_answer) follow(id, detail.active_answer);
  }

  function newChat() {
    closeStream();
    state.session = null;
    history.replaceState(null, "", location.pathname);
    $("messages").innerHTML = "";
    showSettings(null);
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

  // An answer streams over the session's WebSocket (acking each event, so the gateway
  // coalesces deltas when the page falls behind); where no WebSocket opens, over
  // EventSource. Either way each event is applied once, by its seq: a reconnect resumes
  // after the last applied one.
  function follow(sessionId, answerId) {
    const el = addMessage("assistant", "");
    el.dataset.state = "streaming";
    el.dataset.answerId = answerId;
    let lastSeq = 0;
    let ended = false;
    state.answer = answerId;
    $("stop").hidden = false;
    $("send").disabled = true;

    function fresh(id) {  // drop anything already applied (exactly-once rendering)
      const seq = Number(String(id).split(":").pop());
      if (!(seq > lastSeq)) return false;
      lastSeq = seq;
      el.dataset.seq = String(seq);
      return true;
    }
    const handlers = {
      content: (data) => { el.dataset.raw += data.text; schedulePaint(el); },
      reasoning: (data) => { el.dataset.thinking += data.text; schedulePaint(el); },
      tool_call: (data) => {
        if (data.name) el.dataset.raw += "\n\n`tool call: " + data.name + "`\n";
        schedulePaint(el);
      },
      usage: () => {},
      done: () => {
        ended = true;
        el.dataset.state = "done";
        paint(el);
        closeStream();
        setStatus("");
        refreshList();
      },
      error: (error) => {
        ended = true;
        paint(el);
        if (error.type === "cancelled") {
          markIncomplete(el, "(stopped)");
        } else {
          el.dataset.state = "error";
          const note = document.createElement("p");
          note.className = "error";
          note.textContent = "Error: " + error.message;
          el.appendChild(note);
        }
        closeStream();
      },
    };
    function apply(kind, id, data) {
      if (fresh(id) && handlers[kind]) handlers[kind](data);
    }

    function overSocket(attempt) {
      const scheme = location.protocol === "https:" ? "wss://" : "ws://";
      const ws = new WebSocket(scheme + location.host + "/v1/sessions/" + sessionId + "/ws");
      let opened = false;
      state.source = { close: () => { ended = true; ws.close(); } };
      ws.addEventListener("open", () => {
        opened = true;
        el.dataset.transport = "websocket";
        setStatus("");
        ws.send(JSON.stringify({ type: "resume", after: answerId + ":" + lastSeq }));
      });
      ws.addEventListener("message", (e) => {
        const frame = JSON.parse(e.data);
        if (frame.event === undefined) {
          if (frame.type === "error") setStatus(frame.error.message);
          return;
        }
        apply(frame.event, frame.id, frame.data);
        if (!ended) ws.send(JSON.stringify({ type: "ack", id: frame.id }));
      });
      ws.addEventListener("close", () => {
        if (ended || state.answer !== answerId) return;
        if (!opened) { overEventSource(); return; }  // no WebSocket here: SSE instead
        setStatus("reconnecting...");
        setTimeout(() => overSocket(attempt + 1), Math.min(2000, 100 * 2 ** attempt));
      });
    }

    function overEventSource() {
      el.dataset.transport = "sse";
      const source = new EventSource("/v1/sessions/" + sessionId + "/answers/" + answerId +
        "/stream?after=" + lastSeq);
      state.source = source;
      for (const kind of Object.keys(handlers)) {
        source.addEventListener(kind, (e) => {
          if (kind === "error" && e.data === undefined) {  // EventSource reconnects by itself
            setStatus("reconnecting...");
            return;
          }
          apply(kind, e.lastEventId, JSON.parse(e.data));
        });
      }
      source.addEventListener("open", () => setStatus(""));
    }

    if (window.WebSocket && !window.dskitNoWebSocket) overSocket(0); else overEventSource();
  }

  async function send(text) {
    setStatus("");
    if (!state.session) {
      const created = await api("POST", "/v1/sessions", {
        model: $("model").value, parameters: { thinking: $("think").checked },
      });
      state.session = created.id;
      location.hash = "s=" + created.id;
      showSettings(created);
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
  function showThinking(on) {
    $("show-thinking").checked = on;
    document.body.classList.toggle("show-thinking", on);
  }
  $("show-thinking").addEventListener("change", (e) => {
    localStorage.setItem("dskit.showThinking", String(e.target.checked));
    showThinking(e.target.checked);
  });
  $("model").addEventListener("change", (e) => localStorage.setItem("dskit.model", e.target.value));
  $("think").addEventListener("change", (e) => localStorage.setItem("dskit.think", String(e.target.checked)));
  $("logout").addEventListener("click", async () => {
    await api("POST", "/v1/logout").catch(() => null);
    scheduleRenewal(null);
    newChat();
    $("session-list").innerHTML = "";
    $("logout").hidden = true;
    start();
  });
  $("login").addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const credential = $("login-key").value.trim();
      const isToken = JWT.test(credential);
      const login = await api("POST", "/v1/login", isToken ? { token: credential } : { key: credential });
      scheduleRenewal(isToken ? login : null);
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
    showThinking(localStorage.getItem("dskit.showThinking") !== "false");
    showSettings(null);
    let info = null;
    try {
      info = await api("GET", "/v1/gateway");
      $("simulator-banner").hidden = info.upstream !== "simulator";
    } catch (e) { /* the banner stays hidden */ }
    await refreshList();
    if (info && info.auth && $("login").hidden) $("logout").hidden = false;
    const saved = localStorage.getItem("dskit.tokenLogin");  // a reload keeps the schedule
    if (saved && $("login").hidden) scheduleRenewal(JSON.parse(saved));
    const match = location.hash.match(/^#(?:s=)?([A-Za-z0-9_-]+)$/);  // #s=<id> or #<id>
    if (match) openSession(match[1]).catch((e) => setStatus(e.message));
  }
  window.addEventListener("hashchange", () => {
    const match = location.hash.match(/^#(?:s=)?([A-Za-z0-9_-]+)$/);
    if (match && match[1] !== state.session) openSession(match[1]).catch((e) => setStatus(e.message));
  });
  start();
})();
