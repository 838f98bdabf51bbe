// The chatmem web page: plain DOM, no framework, no build step.
//
// Safety rule: text from the API (messages, titles, character cards) only ever reaches
// the page through textContent / text nodes, never innerHTML.
"use strict";

(() => {
  const STORE = {
    user: "chatmem.userId",
    key: "chatmem.apiKey",
    session: "chatmem.sessionId",
    character: "chatmem.characterId",
  };
  const HISTORY_PAGE = 50;
  // After asking the server to stop, how long to wait for the reply's final event
  // before the page stops waiting (the server stores the stopped reply either way).
  const STOP_GRACE_MS = 1500;
  // A reply's connection that drops is resumed (Last-Event-ID) this many times in a row,
  // waiting a little longer each time.
  const RESUME_ATTEMPTS = 5;
  const RESUME_BACKOFF_MS = 400;

  const $ = (id) => document.getElementById(id);
  const ui = {
    layout: $("layout"),
    sidebar: $("sidebar"),
    backdrop: $("backdrop"),
    openSidebar: $("open-sidebar"),
    closeSidebar: $("close-sidebar"),
    character: $("character"),
    characterDescription: $("character-description"),
    characterGreeting: $("character-greeting"),
    newSession: $("new-session"),
    sessionList: $("session-list"),
    sessionsEmpty: $("sessions-empty"),
    identity: $("identity"),
    forgetKey: $("forget-key"),
    title: $("session-title"),
    sessionCharacter: $("session-character"),
    usageTokens: $("usage-tokens"),
    usageCost: $("usage-cost"),
    usage: $("usage"),
    error: $("error"),
    errorText: $("error-text"),
    errorClose: $("error-close"),
    scroll: $("messages-scroll"),
    loadOlder: $("load-older"),
    messages: $("messages"),
    welcome: $("welcome"),
    typing: $("typing"),
    typingName: $("typing-name"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    keyDialog: $("key-dialog"),
    keyForm: $("key-form"),
    keyInput: $("key-input"),
    keyReason: $("key-reason"),
  };

  const state = {
    characters: new Map(),
    defaultCharacter: "",
    sessions: [],
    current: null, // the open session's meta
    nextBefore: null, // history cursor for "load older"
    turn: null, // the reply being shown streaming (sent from here or re-attached): newTurn()
  };

  // --- storage and identity ----------------------------------------------------------

  function storageGet(name) {
    try {
      return localStorage.getItem(name);
    } catch {
      return null;
    }
  }

  function storageSet(name, value) {
    try {
      if (value === null) localStorage.removeItem(name);
      else localStorage.setItem(name, value);
    } catch {
      // Private mode without storage: the page still works for this visit.
    }
  }

  let cachedUser = null;

  // Open mode: a generated id, kept in localStorage, names this browser's user.
  function userId() {
    if (cachedUser) return cachedUser;
    let id = storageGet(STORE.user);
    if (!id || !/^[A-Za-z0-9_.@-]{1,128}$/.test(id)) {
      const bytes = new Uint8Array(8);
      crypto.getRandomValues(bytes);
      id = "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
      storageSet(STORE.user, id);
    }
    cachedUser = id;
    return id;
  }

  function showIdentity() {
    const hasKey = Boolean(storageGet(STORE.key));
    ui.identity.textContent = hasKey ? "Signed in with an API key" : `You are ${userId()}`;
    ui.forgetKey.hidden = !hasKey;
  }

  // --- the API ---------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message, retryAfter = null) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  function requestHeaders(hasBody, accept, extra) {
    const h = { ...extra, Accept: accept || "application/json", "X-User-Id": userId() };
    const key = storageGet(STORE.key);
    if (key) h.Authorization = `Bearer ${key}`;
    if (hasBody) h["Content-Type"] = "application/json";
    return h;
  }

  async function errorFrom(res) {
    let code = `http_${res.status}`;
    let message = `${res.status} ${res.statusText}`;
    try {
      const body = await res.json();
      if (body && body.error) {
        code = String(body.error.code || code);
        message = String(body.error.message || message);
      }
    } catch {
      // Not our JSON (a proxy's page, say): keep the status line.
    }
    return new ApiError(res.status, code, message, res.headers.get("Retry-After"));
  }

  async function api(method, path, body, options = {}) {
    let rejected = false;
    for (;;) {
      let res;
      try {
        res = await fetch(path, {
          method,
          headers: requestHeaders(body !== undefined, options.accept, options.headers),
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: options.signal,
          cache: "no-store",
        });
      } catch (err) {
        if (err && err.name === "AbortError") throw err;
        throw new ApiError(0, "network", "cannot reach the chatmem server");
      }
      if (res.status === 401) {
        const reason = rejected || storageGet(STORE.key)
          ? "The server did not accept that key. Please enter a valid API key."
          : "This chatmem server needs an API key.";
        storageSet(STORE.key, null);
        await askForKey(reason);
        rejected = true;
        continue;
      }
      if (!res.ok) throw await errorFrom(res);
      return res;
    }
  }

  async function apiJson(method, path, body) {
    const res = await api(method, path, body);
    return res.status === 204 ? null : res.json();
  }

  const sessionPath = (sid, rest = "") => `/v1/sessions/${encodeURIComponent(sid)}${rest}`;

  let keyPrompt = null;

  function askForKey(reason) {
    if (keyPrompt) return keyPrompt;
    keyPrompt = new Promise((resolve) => {
      ui.keyReason.textContent = reason;
      ui.keyInput.value = "";
      const done = (event) => {
        event.preventDefault();
        const key = ui.keyInput.value.trim();
        if (!key) return;
        ui.keyForm.removeEventListener("submit", done);
        storageSet(STORE.key, key);
        ui.keyDialog.close();
        keyPrompt = null;
        showIdentity();
        resolve();
      };
      ui.keyForm.addEventListener("submit", done);
      // The key is needed to go on: Escape does not dismiss the dialog.
      ui.keyDialog.addEventListener("cancel", (e) => e.preventDefault(), { once: true });
      ui.keyDialog.showModal();
      ui.keyInput.focus();
    });
    return keyPrompt;
  }

  // --- errors --------------------------------------------------------------------

  function describe(err) {
    if (!(err instanceof ApiError)) return `Something went wrong: ${err && err.message}`;
    switch (err.code) {
      case "session_busy":
        return "This chat is still answering an earlier message. Wait for it to finish (or press Stop), then send again.";
      case "rate_limited":
        return `You are sending messages too quickly. Try again in ${err.retryAfter || "a few"} seconds.`;
      case "empty_message":
        return "Type a message first.";
      case "message_too_long":
        return `That message is too long: ${err.message}.`;
      case "session_not_found":
        return "This chat no longer exists (it may have expired).";
      case "session_ended":
        return "This chat has ended; start a new one.";
      case "store_unavailable":
        return "chatmem cannot reach its memory store (Redis) right now. Try again shortly.";
      case "network":
        return "Cannot reach the chatmem server. Is it running?";
      case "provider_timeout":
        return "The model took too long to answer. Try again in a moment.";
      case "provider_rate_limited":
        return "The model provider is rate limiting chatmem. Try again in a moment.";
      case "provider_auth":
        return "The model provider rejected chatmem's credentials: the server's LLM API key needs fixing.";
      default:
        if (err.code.startsWith("provider_")) {
          return `The model is not available right now (${err.message}). Try again in a moment.`;
        }
        return err.message || "Something went wrong.";
    }
  }

  function showError(err) {
    if (err && err.name === "AbortError") return;
    ui.errorText.textContent = typeof err === "string" ? err : describe(err);
    ui.error.dataset.code = (err && err.code) || "";
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.errorText.textContent = "";
    ui.error.dataset.code = "";
  }

  // --- formatting ------------------------------------------------------------------

  const numberFormat = new Intl.NumberFormat();

  function formatCost(usd) {
    const v = Number(usd) || 0;
    if (v === 0) return "$0";
    if (v < 0.0001) return "<$0.0001";
    return `$${v.toFixed(v < 1 ? 4 : 2)}`;
  }

  function timeAgo(seconds) {
    if (!seconds) return "";
    const diff = Date.now() / 1000 - seconds;
    if (diff < 60) return "just now";
    if (diff < 3600) return `${Math.floor(diff / 60)} min ago`;
    if (diff < 86400) return `${Math.floor(diff / 3600)} h ago`;
    return new Date(seconds * 1000).toLocaleDateString();
  }

  function characterName(id) {
    const c = state.characters.get(id);
    return c ? c.name : id;
  }

  function node(tag, className, text) {
    const n = document.createElement(tag);
    if (className) n.className = className;
    if (text !== undefined) n.textContent = text;
    return n;
  }

  // --- characters ------------------------------------------------------------------

  async function loadCharacters() {
    const data = await apiJson("GET", "/v1/characters");
    state.characters = new Map(data.characters.map((c) => [c.id, c]));
    state.defaultCharacter = data.default || (data.characters[0] && data.characters[0].id) || "";
    ui.character.replaceChildren(
      ...data.characters.map((c) => {
        const option = node("option", "", c.name);
        option.value = c.id;
        return option;
      }),
    );
    const saved = storageGet(STORE.character);
    ui.character.value = state.characters.has(saved) ? saved : state.defaultCharacter;
    showCharacter();
  }

  function showCharacter() {
    const c = state.characters.get(ui.character.value);
    ui.characterDescription.textContent = c ? c.description || "" : "";
    ui.characterGreeting.textContent = c ? c.greeting || "" : "";
    ui.characterGreeting.hidden = !(c && c.greeting);
  }

  // --- sessions ------------------------------------------------------------------

  async function loadSessions() {
    const data = await apiJson("GET", "/v1/sessions");
    state.sessions = data.sessions;
    renderSessions();
  }

  function renderSessions() {
    const items = state.sessions.map((s) => sessionItem(s));
    ui.sessionList.replaceChildren(...items);
    ui.sessionsEmpty.hidden = state.sessions.length > 0;
  }

  function sessionItem(meta) {
    const li = node("li", "session");
    li.dataset.sessionId = meta.session_id;
    if (state.current && state.current.session_id === meta.session_id) {
      li.setAttribute("aria-current", "true");
    }
    const open = node("button", "session-open");
    open.type = "button";
    const title = node("span", "session-title", meta.title || characterName(meta.character_id));
    const preview = node(
      "span",
      "session-preview",
      meta.preview ? `${meta.preview_role === "user" ? "You: " : ""}${meta.preview}` : "(empty)",
    );
    const info = node(
      "span",
      "session-info",
      `${characterName(meta.character_id)} · ${timeAgo(meta.last_active_at)}`,
    );
    open.append(title, preview, info);
    open.addEventListener("click", () => {
      closeSidebar();
      openSession(meta.session_id).catch(showError);
    });

    const actions = node("div", "session-actions");
    const rename = node("button", "icon-button rename", "✎");
    rename.type = "button";
    rename.title = "Rename";
    rename.setAttribute("aria-label", `Rename ${meta.title}`);
    rename.addEventListener("click", () => startRename(li, meta));
    const del = node("button", "icon-button delete", "✕");
    del.type = "button";
    del.title = "Delete";
    del.setAttribute("aria-label", `Delete ${meta.title}`);
    del.addEventListener("click", () => confirmDelete(del, meta));
    actions.append(rename, del);
    li.append(open, actions);
    return li;
  }

  function startRename(li, meta) {
    const input = node("input", "rename-input");
    input.type = "text";
    input.maxLength = 200;
    input.value = meta.title;
    input.setAttribute("aria-label", "New title");
    let finished = false;
    const finish = async (save) => {
      if (finished) return;
      finished = true;
      const title = input.value.trim();
      if (save && title && title !== meta.title) {
        try {
          const updated = await apiJson("PATCH", sessionPath(meta.session_id), { title });
          Object.assign(meta, updated);
          if (state.current && state.current.session_id === meta.session_id) {
            state.current = updated;
            showSessionHeader();
          }
        } catch (err) {
          showError(err);
        }
      }
      renderSessions();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter") {
        e.preventDefault();
        finish(true);
      } else if (e.key === "Escape") {
        e.preventDefault();
        finish(false);
      }
    });
    input.addEventListener("blur", () => finish(true));
    li.replaceChildren(input);
    input.focus();
    input.select();
  }

  // Delete asks once more in place (no native dialog): a second click within a few
  // seconds confirms.
  function confirmDelete(button, meta) {
    if (button.dataset.armed !== "true") {
      button.dataset.armed = "true";
      button.textContent = "Delete?";
      button.classList.add("armed");
      setTimeout(() => {
        if (button.isConnected) {
          button.dataset.armed = "false";
          button.textContent = "✕";
          button.classList.remove("armed");
        }
      }, 4000);
      return;
    }
    deleteSession(meta.session_id).catch(showError);
  }

  async function deleteSession(sid) {
    if (state.turn && state.turn.sid === sid) await stopTurn();
    try {
      await apiJson("DELETE", sessionPath(sid));
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
    }
    state.sessions = state.sessions.filter((s) => s.session_id !== sid);
    if (state.current && state.current.session_id === sid) {
      const next = state.sessions[0];
      if (next) await openSession(next.session_id);
      else showNoSession();
    }
    renderSessions();
  }

  async function newSession() {
    detachTurn();
    const characterId = ui.character.value || state.defaultCharacter;
    const data = await apiJson("POST", "/v1/sessions", { character_id: characterId });
    const sid = data.session.session_id;
    state.sessions = [data.session, ...state.sessions.filter((s) => s.session_id !== sid)];
    setCurrent(data.session);
    ui.messages.replaceChildren();
    if (data.greeting) ui.messages.append(messageItem(data.greeting));
    state.nextBefore = null;
    ui.loadOlder.hidden = true;
    renderSessions();
    closeSidebar();
    ui.input.focus();
    return data.session;
  }

  function setCurrent(meta) {
    state.current = meta;
    storageSet(STORE.session, meta ? meta.session_id : null);
    ui.welcome.hidden = Boolean(meta);
    showSessionHeader();
  }

  function showSessionHeader() {
    const meta = state.current;
    if (!meta) {
      ui.title.textContent = "chatmem";
      ui.sessionCharacter.textContent = "";
      showUsage(null);
      document.title = "chatmem";
      return;
    }
    const name = characterName(meta.character_id);
    ui.title.textContent = meta.title || name;
    ui.sessionCharacter.textContent = meta.title && meta.title !== name ? `with ${name}` : "";
    document.title = `${ui.title.textContent} · chatmem`;
    showUsage(meta);
  }

  function showUsage(meta) {
    const usage = (meta && meta.usage) || {};
    const total = usage.total_tokens || 0;
    ui.usageTokens.textContent = `${numberFormat.format(total)} tokens`;
    ui.usageCost.textContent = formatCost(usage.cost_usd);
    ui.usage.title = meta
      ? `prompt ${numberFormat.format(usage.prompt_tokens || 0)} + completion ` +
        `${numberFormat.format(usage.completion_tokens || 0)} tokens, ` +
        `cost ${formatCost(usage.cost_usd)}; ` +
        `${numberFormat.format(meta.total_tokens || 0)} tokens held in memory`
      : "";
  }

  function showNoSession() {
    detachTurn();
    setCurrent(null);
    ui.messages.replaceChildren();
    ui.loadOlder.hidden = true;
    renderSessions();
  }

  // Open a chat: its history, then the reply being written in it, if one is.
  async function openSession(sid) {
    if (state.turn && state.turn.sid === sid) return;
    detachTurn();
    clearError();
    const [meta, history] = await Promise.all([
      apiJson("GET", sessionPath(sid)),
      apiJson("GET", historyPath(sid)),
    ]);
    setCurrent(meta);
    renderHistory(history);
    renderSessions();
    reattach(sid).catch(showError);
  }

  const historyPath = (sid) => sessionPath(sid, `/messages?limit=${HISTORY_PAGE}`);

  function renderHistory(history) {
    ui.messages.replaceChildren(...history.messages.map(messageItem));
    state.nextBefore = history.next_before;
    ui.loadOlder.hidden = !history.next_before;
    scrollToEnd();
  }

  async function showHistory(sid) {
    const history = await apiJson("GET", historyPath(sid));
    if (state.current && state.current.session_id === sid) renderHistory(history);
  }

  async function loadOlder() {
    if (!state.current || !state.nextBefore) return;
    const sid = state.current.session_id;
    const page = await apiJson(
      "GET",
      sessionPath(sid, `/messages?limit=${HISTORY_PAGE}&before=${state.nextBefore}`),
    );
    if (!state.current || state.current.session_id !== sid) return;
    const height = ui.scroll.scrollHeight;
    ui.messages.prepend(...page.messages.map(messageItem));
    ui.scroll.scrollTop += ui.scroll.scrollHeight - height;
    state.nextBefore = page.next_before;
    ui.loadOlder.hidden = !page.next_before;
  }

  async function refreshCurrent() {
    if (!state.current) return;
    const sid = state.current.session_id;
    try {
      const meta = await apiJson("GET", sessionPath(sid));
      if (state.current && state.current.session_id === sid) {
        state.current = meta;
        showSessionHeader();
      }
      state.sessions = [meta, ...state.sessions.filter((s) => s.session_id !== sid)];
      renderSessions();
    } catch (err) {
      showError(err);
    }
  }

  // --- messages ------------------------------------------------------------------

  function messageItem(msg) {
    const li = node("li", `message ${msg.role}`);
    li.dataset.role = msg.role;
    if (msg.msg_id) li.dataset.msgId = msg.msg_id;
    const md = msg.metadata || {};
    if (md.greeting) li.classList.add("greeting");
    const bubble = node("div", "bubble", msg.content);
    li.append(bubble);
    if (md.interrupted) markStopped(li);
    return li;
  }

  function markStopped(li) {
    li.classList.add("interrupted");
    if (!li.querySelector(".tag")) li.append(node("span", "tag", "stopped"));
  }

  function scrollToEnd() {
    ui.scroll.scrollTop = ui.scroll.scrollHeight;
  }

  function nearEnd() {
    return ui.scroll.scrollHeight - ui.scroll.scrollTop - ui.scroll.clientHeight < 80;
  }

  // --- server-sent events over fetch ------------------------------------------------

  function parseEvent(block) {
    let event = "message";
    let id = null;
    const data = [];
    for (const line of block.split("\n")) {
      if (!line || line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id" && !value.includes("\0")) id = value;
    }
    if (!data.length && id === null) return null;
    return { event, id, data: data.length ? data.join("\n") : null };
  }

  async function* readEvents(body) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        let text = buffer + decoder.decode(value, { stream: true });
        // A CR at the end may be the first half of a CRLF split across reads.
        let held = "";
        if (text.endsWith("\r")) {
          held = "\r";
          text = text.slice(0, -1);
        }
        text = text.replace(/\r\n?/g, "\n");
        let end;
        while ((end = text.indexOf("\n\n")) >= 0) {
          const parsed = parseEvent(text.slice(0, end));
          text = text.slice(end + 2);
          if (parsed) yield parsed;
        }
        buffer = text + held;
      }
      const last = parseEvent(buffer.replace(/\r\n?/g, "\n"));
      if (last) yield last;
    } finally {
      reader.releaseLock();
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // GET …/stream: the session's running (or just finished) generation from the start,
  // or after turn.lastEventId. null when there is none (204).
  async function openStream(turn) {
    const headers = turn.lastEventId ? { "Last-Event-ID": turn.lastEventId } : {};
    const res = await api("GET", sessionPath(turn.sid, "/stream"), undefined, {
      signal: turn.controller.signal,
      accept: "text/event-stream",
      headers,
    });
    const type = res.headers.get("Content-Type") || "";
    if (res.status === 204 || !type.startsWith("text/event-stream")) {
      if (res.body) res.body.cancel().catch(() => {});
      return null;
    }
    return res;
  }

  // The one reader of a reply's events, for a send and a re-attach alike. A connection
  // that drops before the reply's end is picked up again with Last-Event-ID; if the
  // server has nothing left to replay, the stored history shows how the reply ended.
  async function followReply(turn, res) {
    let failures = 0;
    for (;;) {
      if (res) {
        try {
          for await (const ev of readEvents(res.body)) {
            if (ev.id !== null) turn.lastEventId = ev.id;
            failures = 0;
            handleEvent(turn, ev);
            if (turn.ended) break;
          }
        } catch (err) {
          if (err && err.name === "AbortError") throw err;
          // The connection dropped (a network error mid-body): resume below.
        }
        if (turn.ended) {
          res.body.cancel().catch(() => {});
          return;
        }
      }
      if (++failures > RESUME_ATTEMPTS) {
        throw new ApiError(0, "network", "the connection to the server was lost");
      }
      await sleep(RESUME_BACKOFF_MS * failures);
      if (turn.controller.signal.aborted) throw new DOMException("detached", "AbortError");
      let nothingLeft = false;
      try {
        res = await openStream(turn);
        nothingLeft = res === null;
      } catch (err) {
        if (!(err instanceof ApiError)) throw err;
        // 404: a server without re-attach, as if there were nothing to replay.
        if (err.status !== 0 && err.status < 500 && err.status !== 404) throw err;
        nothingLeft = err.status === 404;
        res = null;
      }
      if (nothingLeft) {
        turn.ended = true;
        await showLatest(turn);
        return;
      }
    }
  }

  // --- a turn --------------------------------------------------------------------

  function setStreaming(on) {
    ui.send.hidden = on;
    ui.stop.hidden = !on;
    ui.stop.disabled = false;
    ui.composer.classList.toggle("busy", on);
    ui.layout.classList.toggle("streaming", on);
  }

  function showTyping(on) {
    if (on && state.current) ui.typingName.textContent = characterName(state.current.character_id);
    ui.typing.hidden = !on;
    if (on) scrollToEnd();
  }

  function newTurn(sid) {
    return {
      sid,
      controller: new AbortController(),
      stopRequested: false,
      detached: false,
      bubble: null,
      text: "",
      lastEventId: null,
      ended: false,
    };
  }

  // The page stops watching a reply (another chat was opened); the server goes on
  // writing it, and it is re-attached when its chat is opened again.
  function detachTurn() {
    const turn = state.turn;
    if (!turn) return;
    turn.detached = true;
    state.turn = null;
    turn.controller.abort();
    showTyping(false);
    setStreaming(false);
  }

  // Whatever ends a turn, the page ends it the same way.
  async function endTurn(turn, err) {
    if (err && err.name === "AbortError") {
      if (turn.bubble && !turn.detached) markStopped(turn.bubble);
    } else if (err) {
      if (turn.bubble) markStopped(turn.bubble);
      showError(err);
    }
    if (turn.bubble) turn.bubble.classList.remove("streaming");
    if (state.turn !== turn) return;
    state.turn = null;
    showTyping(false);
    setStreaming(false);
    await refreshCurrent();
  }

  async function send() {
    const text = ui.input.value.trim();
    if (!text) return;
    if (state.turn) {
      showError(new ApiError(409, "session_busy", "a reply is still being written"));
      return;
    }
    clearError();
    if (!state.current) {
      try {
        await newSession();
      } catch (err) {
        showError(err);
        return;
      }
    }
    const turn = newTurn(state.current.session_id);
    state.turn = turn;
    ui.input.value = "";
    autosize();
    const mine = messageItem({ role: "user", content: text });
    ui.messages.append(mine);
    setStreaming(true);
    showTyping(true);
    let res;
    try {
      res = await api(
        "POST",
        sessionPath(turn.sid, "/messages"),
        { content: text, stream: true },
        { signal: turn.controller.signal, accept: "text/event-stream" },
      );
    } catch (err) {
      if (!(err && err.name === "AbortError")) {
        // Refused before it was stored (busy, rate limited, too long): give it back.
        mine.remove();
        if (!ui.input.value) {
          ui.input.value = text;
          autosize();
        }
      }
      await endTurn(turn, err);
      finished("turns");
      return;
    }
    let failure = null;
    try {
      await followReply(turn, res);
    } catch (err) {
      failure = err;
    }
    await endTurn(turn, failure);
    if (!turn.detached) ui.input.focus();
    finished("turns");
  }

  // After a session's history is shown: if a reply is being written in it (the page was
  // reloaded mid-reply, or the chat was opened elsewhere), show it streaming.
  async function reattach(sid) {
    try {
      await followRunning(sid);
    } finally {
      finished("attaches");
    }
  }

  async function followRunning(sid) {
    if (state.turn) return;
    const turn = newTurn(sid);
    let res;
    try {
      res = await openStream(turn);
    } catch (err) {
      // 404: the chat is gone, or a server without re-attach. Nothing to show either way.
      if (!(err instanceof ApiError && err.status === 404)) showError(err);
      return;
    }
    if (!res) return;
    if (state.turn || !state.current || state.current.session_id !== sid) {
      // The page moved on (a send, another chat) while the request was out.
      res.body.cancel().catch(() => {});
      return;
    }
    state.turn = turn;
    setStreaming(true);
    showTyping(true);
    let failure = null;
    try {
      await followReply(turn, res);
    } catch (err) {
      failure = err;
    }
    await endTurn(turn, failure);
  }

  // For scripts and tests: how many sends (turns) and re-attach checks (attaches) ended.
  function finished(counter) {
    const n = Number(document.body.dataset[counter] || "0") + 1;
    document.body.dataset[counter] = String(n);
  }

  function ensureBubble(turn) {
    if (!turn.bubble) {
      showTyping(false);
      turn.bubble = messageItem({ role: "assistant", content: "" });
      turn.bubble.classList.add("streaming");
      ui.messages.append(turn.bubble);
    }
    return turn.bubble;
  }

  function shownMessage(msgId, except) {
    for (const li of ui.messages.querySelectorAll(".message")) {
      if (li !== except && li.dataset.msgId === msgId) return li;
    }
    return null;
  }

  function handleEvent(turn, ev) {
    if (ev.data === null) return;
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch {
      return;
    }
    if (ev.event === "delta") {
      const follow = nearEnd();
      const bubble = ensureBubble(turn);
      turn.text += data.content || "";
      bubble.querySelector(".bubble").textContent = turn.text;
      if (follow) scrollToEnd();
    } else if (ev.event === "done") {
      turn.ended = true;
      const msg = data.message || {};
      let bubble = ensureBubble(turn);
      // A reply that ended just before the history was read is shown already: the
      // replay updates that one rather than showing it twice.
      const shown = msg.msg_id ? shownMessage(msg.msg_id, bubble) : null;
      if (shown) {
        bubble.remove();
        turn.bubble = bubble = shown;
      }
      bubble.querySelector(".bubble").textContent = msg.content ?? turn.text;
      if (msg.msg_id) bubble.dataset.msgId = msg.msg_id;
      if (msg.metadata && msg.metadata.interrupted) markStopped(bubble);
      if (data.memory && data.memory !== "ok") {
        showError(`The reply was not fully saved to memory (${data.memory}).`);
      }
    } else if (ev.event === "error") {
      turn.ended = true;
      if (turn.bubble) markStopped(turn.bubble);
      showError(new ApiError(200, String(data.code || "error"), String(data.message || "")));
    }
  }

  // The reply ended while the page could not follow it: show it as stored.
  async function showLatest(turn) {
    if (!state.current || state.current.session_id !== turn.sid) return;
    if (turn.bubble) {
      turn.bubble.remove();
      turn.bubble = null;
    }
    await showHistory(turn.sid);
  }

  async function stopTurn() {
    const turn = state.turn;
    if (!turn || turn.stopRequested) return;
    turn.stopRequested = true;
    ui.stop.disabled = true;
    try {
      await api("POST", sessionPath(turn.sid, "/stop"));
    } catch (err) {
      // Closing our connection would not stop it: the server owns the reply.
      turn.stopRequested = false;
      ui.stop.disabled = false;
      showError(err);
      return;
    }
    // The stopped reply ends with its `done` event; if that does not come, stop waiting.
    setTimeout(() => {
      if (!turn.ended) turn.controller.abort();
    }, STOP_GRACE_MS);
  }

  // --- the composer and layout --------------------------------------------------

  function autosize() {
    if (!ui.input.value) {
      ui.input.style.height = "";
      return;
    }
    ui.input.style.height = "auto";
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
  }

  function openSidebar() {
    ui.layout.classList.add("sidebar-open");
    ui.backdrop.hidden = false;
    ui.openSidebar.setAttribute("aria-expanded", "true");
  }

  function closeSidebar() {
    ui.layout.classList.remove("sidebar-open");
    ui.backdrop.hidden = true;
    ui.openSidebar.setAttribute("aria-expanded", "false");
  }

  const narrow = window.matchMedia("(max-width: 760px)");

  function setPlaceholder() {
    ui.input.placeholder = narrow.matches
      ? "Message…"
      : "Message…  (Enter sends, Shift+Enter for a new line)";
  }

  function wire() {
    setPlaceholder();
    narrow.addEventListener("change", setPlaceholder);
    ui.composer.addEventListener("submit", (e) => {
      e.preventDefault();
      send();
    });
    ui.input.addEventListener("keydown", (e) => {
      // isComposing: Enter that confirms an IME candidate (Chinese, Japanese) must not send.
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
        e.preventDefault();
        send();
      } else if (e.key === "Escape" && state.turn) {
        e.preventDefault();
        stopTurn();
      }
    });
    ui.input.addEventListener("input", autosize);
    ui.stop.addEventListener("click", () => stopTurn());
    ui.newSession.addEventListener("click", () => {
      clearError();
      newSession().catch(showError);
    });
    ui.character.addEventListener("change", () => {
      storageSet(STORE.character, ui.character.value);
      showCharacter();
    });
    ui.loadOlder.addEventListener("click", () => loadOlder().catch(showError));
    ui.errorClose.addEventListener("click", clearError);
    ui.openSidebar.addEventListener("click", openSidebar);
    ui.closeSidebar.addEventListener("click", closeSidebar);
    ui.backdrop.addEventListener("click", closeSidebar);
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape" && ui.layout.classList.contains("sidebar-open")) closeSidebar();
    });
    ui.forgetKey.addEventListener("click", () => {
      storageSet(STORE.key, null);
      showIdentity();
      boot().catch(showError);
    });
  }

  async function boot() {
    showIdentity();
    await loadCharacters();
    await loadSessions();
    const saved = storageGet(STORE.session);
    const target = state.sessions.find((s) => s.session_id === saved) || state.sessions[0];
    if (!target) showNoSession();
    else {
      try {
        await openSession(target.session_id);
      } catch (err) {
        // Expired between the listing and now: start from a clean page.
        if (!(err instanceof ApiError && err.status === 404)) throw err;
        await loadSessions();
        showNoSession();
      }
    }
    showIdentity();
    document.body.dataset.ready = "true";
  }

  wire();
  boot()
    .catch(showError)
    .finally(() => {
      document.body.dataset.ready = "true";
    });
  ui.input.focus();
})();
