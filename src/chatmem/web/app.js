// The chatmem web page: plain DOM, no framework, no build step.
//
// Safety rule: text from the API (messages, titles, character cards) only ever reaches
// the page through textContent / text nodes, never innerHTML — except a reply's Markdown,
// which the server renders and sanitizes and markdown.js checks again.
//
// Modules: api.js talks to the API; reply.js streams a reply in (sent or re-attached,
// over stream.js and sse.js); messages.js shows one message, markdown.js its Markdown,
// tools.js its tool calls, actions.js the actions under it; sessions.js is the
// sidebar's list of chats; header.js the open chat's header; picker.js the character
// picker, characters.js its editor; panels.js the chat's settings, context inspector and
// export / import; memories.js the character's long-term memories; identity.js who the
// page speaks as; layout.js the drawer and composer sizing. This one is the rest: the
// page's state, opening a chat and its history, the composer's keys, start-up.
import {
  ApiError,
  STORE,
  apiJson,
  describe,
  onKeySaved,
  sessionPath,
  storageGet,
  storageSet,
} from "./api.js";
import { createActions } from "./actions.js";
import { createCharacterEditor } from "./characters.js";
import { showHeader } from "./header.js";
import { createIdentity } from "./identity.js";
import { createLayout } from "./layout.js";
import { markPending, renderPending } from "./markdown.js";
import { createMemories } from "./memories.js";
import { createMessageView } from "./messages.js";
import { createPanels } from "./panels.js";
import { createPicker } from "./picker.js";
import { createReplies } from "./reply.js";
import { createSessionList } from "./sessions.js";

const HISTORY_PAGE = 50;

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
  search: $("session-search"),
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
  typingWhat: $("typing-what"),
  composer: $("composer"),
  input: $("input"),
  send: $("send"),
  stop: $("stop"),
};

const state = {
  characters: new Map(),
  defaultCharacter: "",
  sessions: [],
  current: null, // the open session's meta
  nextBefore: null, // history cursor for "load older"
  allSessions: false, // the listing holds every session (not only the most recent page)
};

// --- identity ----------------------------------------------------------------

const identity = createIdentity({ onChange: () => boot().catch(showError) });
const showIdentity = () => identity.show();

// --- errors --------------------------------------------------------------------

function showError(err) {
  if (err && err.name === "AbortError") return;
  ui.error.classList.remove("notice");
  ui.errorText.textContent = typeof err === "string" ? err : describe(err);
  ui.error.dataset.code = (err && err.code) || "";
  ui.error.hidden = false;
}

// Good news in the same place (an import's report, say).
function showNotice(text) {
  ui.errorText.textContent = text;
  ui.error.dataset.code = "";
  ui.error.classList.add("notice");
  ui.error.hidden = false;
}

function clearError() {
  ui.error.classList.remove("notice");
  ui.error.hidden = true;
  ui.errorText.textContent = "";
  ui.error.dataset.code = "";
}

const layout = createLayout(ui);
const picker = createPicker({ ui, state, userName: () => identity.displayName() || "User" });
const characterName = picker.name;
const view = createMessageView({ ui, actions: () => actions });
const { messageItem, replaceMessage, markCutOff, markStopped, scrollToEnd, nearEnd } = view;

// --- the open chat (the sidebar list of chats: sessions.js) ------------------------

async function newSession() {
  replies.detach();
  const data = await apiJson("POST", "/v1/sessions", { character_id: picker.chosen() });
  setCurrent(data.session);
  ui.messages.replaceChildren();
  if (data.greeting) ui.messages.append(messageItem(data.greeting));
  renderPending(ui.messages);
  state.nextBefore = null;
  ui.loadOlder.hidden = true;
  sessionList.putFirst(data.session);
  layout.closeSidebar();
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
  panels.showTools();
  showHeader(ui, state.current, characterName);
}

function showNoSession() {
  replies.detach();
  setCurrent(null);
  ui.messages.replaceChildren();
  ui.loadOlder.hidden = true;
  sessionList.render();
}

// Open a chat: its history, then the reply being written in it, if one is.
async function openSession(sid) {
  if (replies.activeSid() === sid) return;
  replies.detach();
  clearError();
  const [meta, history] = await Promise.all([
    apiJson("GET", sessionPath(sid)),
    apiJson("GET", historyPath(sid)),
  ]);
  setCurrent(meta);
  renderHistory(history);
  sessionList.render();
  replies.reattach(sid).catch(showError);
}

const historyPath = (sid) => sessionPath(sid, `/messages?limit=${HISTORY_PAGE}`);

function renderHistory(history) {
  ui.messages.replaceChildren(...history.messages.map(messageItem));
  state.nextBefore = history.next_before;
  ui.loadOlder.hidden = !history.next_before;
  scrollToEnd();
  renderPending(ui.messages).then(() => {
    if (nearEnd()) scrollToEnd();
  });
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
  await renderPending(ui.messages);
}

// --- messages (one message: messages.js) ------------------------------------------

function removeMessage(li) {
  li.remove();
  // Seqs are positions (README, "Editing"): the older messages' move up by one, and the
  // "load older" cursor with them, or the next page would skip one.
  if (state.nextBefore) state.nextBefore += 1;
  sessionList.refreshCurrent();
}

// A fork: the new chat joins the sidebar and opens.
async function forked(meta) {
  sessionList.putFirst(meta);
  await openSession(meta.session_id);
}

// --- the composer ---------------------------------------------------------------

function wire() {
  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    replies.send();
  });
  ui.input.addEventListener("keydown", (e) => {
    // isComposing: Enter that confirms an IME candidate (Chinese, Japanese) must not send.
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      replies.send();
    } else if (e.key === "Escape" && replies.activeSid()) {
      e.preventDefault();
      replies.stop();
    }
  });
  ui.stop.addEventListener("click", () => replies.stop());
  ui.newSession.addEventListener("click", () => {
    clearError();
    newSession().catch(showError);
  });
  ui.loadOlder.addEventListener("click", () => loadOlder().catch(showError));
  ui.search.addEventListener("input", () => sessionList.search().catch(showError));
  ui.errorClose.addEventListener("click", clearError);
  ui.forgetKey.addEventListener("click", () => {
    storageSet(STORE.key, null);
    showIdentity();
    boot().catch(showError);
  });
}

async function boot() {
  showIdentity();
  state.allSessions = false;
  await identity.load();
  await picker.load();
  characterEditor.setAdmin(identity.isAdmin());
  panels.setAdmin(identity.isAdmin());
  await sessionList.load();
  const saved = storageGet(STORE.session);
  const target = state.sessions.find((s) => s.session_id === saved) || state.sessions[0];
  if (!target) showNoSession();
  else {
    try {
      await openSession(target.session_id);
    } catch (err) {
      // Expired between the listing and now: start from a clean page.
      if (!(err instanceof ApiError && err.status === 404)) throw err;
      await sessionList.load();
      showNoSession();
    }
  }
  showIdentity();
  document.body.dataset.ready = "true";
}

const sessionList = createSessionList({
  ui,
  state,
  characterName,
  openSession,
  showNoSession,
  showSessionHeader,
  closeSidebar: layout.closeSidebar,
  showError,
  replies: () => replies,
});

const characterEditor = createCharacterEditor({
  selected: picker.selected,
  reload: async (selectId) => {
    await picker.load(selectId);
    sessionList.render();
  },
  showError,
  showNotice,
  clearError,
});

const panels = createPanels({
  current: () => state.current,
  updated: (meta) => sessionList.changed(meta),
  sessionsChanged: () => sessionList.load(),
  showError,
  showNotice,
  clearError,
  identity: {
    displayName: identity.displayName,
    setDisplayName: async (name) => {
      await identity.setDisplayName(name);
      picker.show(); // the greeting shown in the picker says the new name
    },
  },
});

createMemories({ current: () => state.current, characterName, showError, clearError });

const actions = createActions({
  current: () => state.current,
  replaceMessage,
  removeMessage,
  revise: (kind) => replies.revise(kind),
  forked,
  showError,
  clearError,
  busy: () => Boolean(replies.activeSid()),
});

const replies = createReplies({
  ui,
  current: () => state.current,
  characterName,
  messageItem,
  replaceMessage,
  messageOf: (li) => actions.messageOf(li),
  markStopped,
  markCutOff,
  markPending,
  renderPending,
  nearEnd,
  scrollToEnd,
  refreshCurrent: () => sessionList.refreshCurrent(),
  newSession,
  showHistory,
  showError,
  clearError,
  autosize: layout.autosize,
});
onKeySaved(showIdentity);

wire();
boot()
  .catch(showError)
  .finally(() => {
    document.body.dataset.ready = "true";
  });
ui.input.focus();
