// A reply streaming in: sent from this page, or re-attached to one the server is
// writing (after a reload, or a chat opened again). The server owns the reply; the page
// follows its events (stream.js: resumed with Last-Event-ID), shows them, and can stop it.
import { ApiError, api, apiJson, sessionPath } from "./api.js";
import { followReply as follow, openStream } from "./stream.js";

// After asking the server to stop, how long to wait for the reply's final event
// before the page stops waiting (the server stores the stopped reply either way).
const STOP_GRACE_MS = 1500;
// A model that has not answered after this long, with at least this much to read,
// says so: "reading N tokens of history…" (a local model reads a long prompt first).
const READING_AFTER_MS = 700;
const READING_MIN_TOKENS = 200;

// The page's side: its elements and the helpers a reply needs.
export function createReplies(page) {
  const {
    ui,
    characterName,
    messageItem,
    replaceMessage,
    messageOf,
    markStopped,
    markCutOff,
    markPending,
    renderPending,
    nearEnd,
    scrollToEnd,
    refreshCurrent,
    newSession,
    showHistory,
    showError,
    clearError,
    autosize,
  } = page;
  let active = null; // the reply shown streaming: newTurn()

  const followReply = (turn, res) =>
    follow(turn, res, { onEvent: (ev) => handleEvent(turn, ev), onGone: () => showLatest(turn) });

  // --- a turn --------------------------------------------------------------------

  function setStreaming(on) {
    ui.send.hidden = on;
    ui.stop.hidden = !on;
    ui.stop.disabled = false;
    ui.composer.classList.toggle("busy", on);
    ui.layout.classList.toggle("streaming", on);
  }

  function showTyping(on) {
    if (on && page.current()) ui.typingName.textContent = characterName(page.current().character_id);
    if (on) {
      ui.typingWhat.textContent = "is typing";
      delete ui.typing.dataset.reading;
    }
    ui.typing.hidden = !on;
    if (on) scrollToEnd();
  }

  // While the model has not started its reply: how much it is reading (the context the
  // turn sends, GET …/context), once it has taken a moment.
  function watchReading(turn) {
    const tokens = apiJson("GET", sessionPath(turn.sid, "/context")).then(
      (view) => (view && view.tokens ? view.tokens.total || 0 : 0),
      () => 0,
    );
    setTimeout(async () => {
      const n = await tokens;
      if (active !== turn || turn.text || turn.ended || n < READING_MIN_TOKENS) return;
      ui.typingWhat.textContent = `is reading ${n.toLocaleString()} tokens of history`;
      ui.typing.dataset.reading = String(n);
    }, READING_AFTER_MS);
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
      revision: null, // "regenerate" or "continue" (SPEC §3b)
      prefix: "", // what a continued reply said before
      mine: null, // the user's message, shown before the server stored it
      hidden: null, // the reply a regenerate replaces, until it ends
    };
  }

  // The page stops watching a reply (another chat was opened); the server goes on
  // writing it, and it is re-attached when its chat is opened again.
  function detachTurn() {
    const turn = active;
    if (!turn) return;
    turn.detached = true;
    active = null;
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
    // A reply streamed in as text: its Markdown is shown now that it is complete.
    await renderPending(ui.messages);
    if (active !== turn) return;
    active = null;
    showTyping(false);
    setStreaming(false);
    await refreshCurrent();
  }

  async function send() {
    const text = ui.input.value.trim();
    if (!text) return;
    if (active) {
      showError(new ApiError(409, "session_busy", "a reply is still being written"));
      return;
    }
    clearError();
    if (!page.current()) {
      try {
        await newSession();
      } catch (err) {
        showError(err);
        return;
      }
    }
    const turn = newTurn(page.current().session_id);
    active = turn;
    ui.input.value = "";
    autosize();
    const mine = messageItem({ role: "user", content: text });
    turn.mine = mine;
    ui.messages.append(mine);
    setStreaming(true);
    showTyping(true);
    watchReading(turn);
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

  // Regenerate or continue the last reply: streamed like a send; the history shown
  // afterwards holds the result (a new alternative selected, or the longer reply).
  async function revise(kind) {
    const current = page.current();
    if (!current || active) return;
    const items = ui.messages.querySelectorAll(".message");
    const last = items.length ? items[items.length - 1] : null;
    if (!last || last.dataset.role !== "assistant") return;
    clearError();
    const turn = newTurn(current.session_id);
    turn.revision = kind;
    active = turn;
    if (kind === "continue") {
      const msg = messageOf(last);
      turn.prefix = (msg && msg.content) || "";
      turn.bubble = last;
      last.classList.add("streaming");
    } else {
      turn.hidden = last;
      last.hidden = true;
    }
    setStreaming(true);
    showTyping(kind !== "continue");
    watchReading(turn);
    let failure = null;
    try {
      const res = await api(
        "POST",
        sessionPath(turn.sid, `/${kind}`),
        { stream: true },
        { signal: turn.controller.signal, accept: "text/event-stream" },
      );
      await followReply(turn, res);
    } catch (err) {
      failure = err;
    }
    if (turn.hidden) turn.hidden.hidden = false;
    await endTurn(turn, failure);
    if (!turn.detached) {
      try {
        await showHistory(turn.sid);
      } catch (err) {
        showError(err);
      }
      ui.input.focus();
    }
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
    if (active) return;
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
    if (active || !page.current() || page.current().session_id !== sid) {
      // The page moved on (a send, another chat) while the request was out.
      res.body.cancel().catch(() => {});
      return;
    }
    active = turn;
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
      showTyping(false);
      turn.text += data.content || "";
      bubble.querySelector(".bubble").textContent = turn.prefix + turn.text;
      if (follow) scrollToEnd();
    } else if (ev.event === "done") {
      turn.ended = true;
      if (turn.revision) {
        // The history read next shows the revised reply as stored.
        if (data.memory && data.memory !== "ok") {
          showError(`The reply was not fully saved to memory (${data.memory}).`);
        }
        return;
      }
      if (turn.mine && data.user_message) {
        turn.mine = replaceMessage(turn.mine, data.user_message);
      }
      const msg = data.message || {};
      let bubble = ensureBubble(turn);
      // A reply that ended just before the history was read is shown already, as
      // stored since (another alternative selected, say): the replay is not shown twice.
      const shown = msg.msg_id ? shownMessage(msg.msg_id, bubble) : null;
      if (shown) {
        bubble.remove();
        turn.bubble = shown;
        return;
      }
      const text = msg.content ?? turn.text;
      if (msg.msg_id) {
        // The stored message, with its actions (edit, regenerate…).
        const stored = messageItem({ role: "assistant", ...msg, content: text });
        stored.classList.add("streaming"); // until endTurn renders its Markdown
        bubble.replaceWith(stored);
        turn.bubble = bubble = stored;
      } else {
        bubble.querySelector(".bubble").textContent = text;
        markPending(bubble, text);
        const md = msg.metadata || {};
        if (md.interrupted) markStopped(bubble);
        else if (md.finish_reason === "length") markCutOff(bubble);
      }
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
    if (!page.current() || page.current().session_id !== turn.sid) return;
    if (turn.bubble) {
      turn.bubble.remove();
      turn.bubble = null;
    }
    await showHistory(turn.sid);
  }

  async function stopTurn() {
    const turn = active;
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

  return {
    send,
    revise,
    reattach,
    stop: stopTurn,
    detach: detachTurn,
    activeSid: () => (active ? active.sid : null),
  };
}
