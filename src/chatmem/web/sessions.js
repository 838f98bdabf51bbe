// The sidebar's list of chats: the most recent, searched, renamed and deleted in place;
// the one place that changes the page's list of chats (state.sessions).
import { ApiError, apiJson, sessionPath } from "./api.js";
import { node } from "./dom.js";

function timeAgo(seconds) {
  if (!seconds) return "";
  const diff = Date.now() / 1000 - seconds;
  if (diff < 60) return "just now";
  if (diff < 3600) return `${Math.floor(diff / 60)} min ago`;
  if (diff < 86400) return `${Math.floor(diff / 3600)} h ago`;
  return new Date(seconds * 1000).toLocaleDateString();
}

export function createSessionList(page) {
  const {
    ui,
    state,
    characterName,
    openSession,
    showNoSession,
    showSessionHeader,
    closeSidebar,
    showError,
    replies,
  } = page;
  const isOpen = (sid) => Boolean(state.current && state.current.session_id === sid);

  // The sidebar lists the most recent chats; a search reads them all (up to the API's
  // 1000, the per-user cap's default) once, then filters as the user types.
  const SESSIONS_PAGE = 100;
  const SESSIONS_ALL = 1000;

  async function load(limit = state.allSessions ? SESSIONS_ALL : SESSIONS_PAGE) {
    const data = await apiJson("GET", `/v1/sessions?limit=${limit}`);
    state.sessions = data.sessions;
    state.allSessions = limit === SESSIONS_ALL || data.sessions.length < limit;
    render();
  }

  // A chat just created, used or opened: first in the list (the most recent).
  function putFirst(meta) {
    state.sessions = [meta, ...state.sessions.filter((s) => s.session_id !== meta.session_id)];
    render();
  }

  // A chat changed (renamed, its settings): in place, and in the header if it is open.
  function changed(meta) {
    state.sessions = state.sessions.map((s) => (s.session_id === meta.session_id ? meta : s));
    if (isOpen(meta.session_id)) {
      state.current = meta;
      showSessionHeader();
    }
    render();
  }

  // The open chat's meta read again (after a turn: its usage, preview and order).
  async function refreshCurrent() {
    if (!state.current) return;
    const sid = state.current.session_id;
    try {
      const meta = await apiJson("GET", sessionPath(sid));
      if (isOpen(sid)) {
        state.current = meta;
        showSessionHeader();
      }
      putFirst(meta);
    } catch (err) {
      showError(err);
    }
  }

  function searchText(meta) {
    return `${meta.title || ""}\n${meta.preview || ""}\n${characterName(meta.character_id)}`;
  }

  function render() {
    const query = ui.search.value.trim().toLowerCase();
    const shown = query
      ? state.sessions.filter((s) => searchText(s).toLowerCase().includes(query))
      : state.sessions;
    ui.sessionList.replaceChildren(...shown.map((s) => sessionItem(s)));
    ui.sessionsEmpty.hidden = shown.length > 0;
    ui.sessionsEmpty.textContent = query ? "No chats match." : "No chats yet.";
  }

  async function search() {
    if (ui.search.value.trim() && !state.allSessions) await load(SESSIONS_ALL);
    else render();
  }

  function sessionItem(meta) {
    const li = node("li", "session");
    li.dataset.sessionId = meta.session_id;
    if (isOpen(meta.session_id)) li.setAttribute("aria-current", "true");
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
          changed(await apiJson("PATCH", sessionPath(meta.session_id), { title }));
          return;
        } catch (err) {
          showError(err);
        }
      }
      render();
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
    if (replies().activeSid() === sid) await replies().stop();
    try {
      await apiJson("DELETE", sessionPath(sid));
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 404)) throw err;
    }
    state.sessions = state.sessions.filter((s) => s.session_id !== sid);
    if (isOpen(sid)) {
      const next = state.sessions[0];
      if (next) await openSession(next.session_id);
      else showNoSession();
    }
    render();
  }

  return { load, render, search, putFirst, changed, refreshCurrent };
}
