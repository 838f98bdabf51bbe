// The chatmem web page: plain DOM, no framework, no build step.
//
// Safety rule: text from the API (messages, titles, character cards) only ever reaches
// the page through textContent / text nodes, never innerHTML — except a reply's Markdown,
// which the server renders and sanitizes and markdown.js checks again.
//
// Modules: api.js talks to the API; reply.js streams a reply in (sent or re-attached,
// over sse.js); markdown.js shows replies' Markdown; sessions.js is the sidebar's list;
// actions.js the actions under each message; panels.js the chat's settings, context
// inspector and export / import; memories.js the character's long-term memories;
// characters.js the character editor; identity.js who the page speaks as; tools.js a
// message's tool calls and a tool's result. This one is the rest of the page:
// characters, history, composer, layout.
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
import { createIdentity } from "./identity.js";
import { markPending, renderPending } from "./markdown.js";
import { node } from "./dom.js";
import { createMemories } from "./memories.js";
import { createPanels } from "./panels.js";
import { createReplies } from "./reply.js";
import { createSessionList } from "./sessions.js";
import { toolCallsView, toolResultView } from "./tools.js";

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

// --- formatting ------------------------------------------------------------------

const numberFormat = new Intl.NumberFormat();

function formatCost(usd) {
  const v = Number(usd) || 0;
  if (v === 0) return "$0";
  if (v < 0.0001) return "<$0.0001";
  return `$${v.toFixed(v < 1 ? 4 : 2)}`;
}

function characterName(id) {
  const c = state.characters.get(id);
  return c ? c.name : id;
}

// --- characters ------------------------------------------------------------------

async function loadCharacters(selectId) {
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
  if (selectId && state.characters.has(selectId)) storageSet(STORE.character, selectId);
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

// --- sessions (the sidebar list: sessions.js) -------------------------------------

async function newSession() {
  replies.detach();
  const characterId = ui.character.value || state.defaultCharacter;
  const data = await apiJson("POST", "/v1/sessions", { character_id: characterId });
  const sid = data.session.session_id;
  state.sessions = [data.session, ...state.sessions.filter((s) => s.session_id !== sid)];
  setCurrent(data.session);
  ui.messages.replaceChildren();
  if (data.greeting) ui.messages.append(messageItem(data.greeting));
  renderPending(ui.messages);
  state.nextBefore = null;
  ui.loadOlder.hidden = true;
  sessionList.render();
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
  panels.showTools();
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
    sessionList.render();
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
  const tool = msg.role === "tool";
  const bubble = tool ? toolResultView(msg) : node("div", "bubble", msg.content);
  li.append(bubble);
  if (md.tool_calls && md.tool_calls.length) {
    bubble.hidden = !msg.content; // a reply that only calls tools: no empty bubble
    li.append(toolCallsView(md.tool_calls));
  }
  if (msg.role !== "user" && !tool) markPending(li, msg.content);
  if (md.interrupted) markStopped(li);
  else if (md.finish_reason === "length") markCutOff(li);
  actions.decorate(li, msg);
  return li;
}

// A message the server changed (edited, another alternative selected, stored at last).
function replaceMessage(li, msg) {
  const fresh = messageItem(msg);
  li.replaceWith(fresh);
  renderPending(ui.messages);
  return fresh;
}

function removeMessage(li) {
  li.remove();
  // Seqs are positions (README, "Editing"): the older messages' move up by one, and the
  // "load older" cursor with them, or the next page would skip one.
  if (state.nextBefore) state.nextBefore += 1;
  refreshCurrent();
}

// A fork: the new chat joins the sidebar and opens.
async function forked(meta) {
  state.sessions = [meta, ...state.sessions.filter((s) => s.session_id !== meta.session_id)];
  await openSession(meta.session_id);
}

// The reply reached its length limit (the character's or the model's max tokens); the
// last one can be continued from the mark itself.
function markCutOff(li) {
  li.classList.add("cut-off");
  if (li.querySelector(".tag")) return;
  const tag = node("span", "tag", "cut off");
  tag.title = "The reply reached its length limit and ends mid-way.";
  const bar = li.querySelector(".msg-actions");
  li.insertBefore(tag, bar);
  if (li.dataset.msgId) li.insertBefore(actions.continueButton(), bar);
}

function markStopped(li) {
  li.classList.add("interrupted");
  if (li.querySelector(".tag")) return;
  li.insertBefore(node("span", "tag", "stopped"), li.querySelector(".msg-actions"));
}

function scrollToEnd() {
  ui.scroll.scrollTop = ui.scroll.scrollHeight;
}

function nearEnd() {
  return ui.scroll.scrollHeight - ui.scroll.scrollTop - ui.scroll.clientHeight < 80;
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
  ui.input.addEventListener("input", autosize);
  ui.stop.addEventListener("click", () => replies.stop());
  ui.newSession.addEventListener("click", () => {
    clearError();
    newSession().catch(showError);
  });
  ui.character.addEventListener("change", () => {
    storageSet(STORE.character, ui.character.value);
    showCharacter();
  });
  ui.loadOlder.addEventListener("click", () => loadOlder().catch(showError));
  ui.search.addEventListener("input", () => sessionList.search().catch(showError));
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
  state.allSessions = false;
  await loadCharacters();
  await identity.load();
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
  closeSidebar,
  showError,
  replies: () => replies,
});

const characterEditor = createCharacterEditor({
  selected: () => state.characters.get(ui.character.value) || null,
  reload: async (selectId) => {
    await loadCharacters(selectId);
    sessionList.render();
  },
  showError,
  showNotice,
  clearError,
});

const panels = createPanels({
  current: () => state.current,
  updated: (meta) => {
    state.current = meta;
    state.sessions = state.sessions.map((s) => (s.session_id === meta.session_id ? meta : s));
    showSessionHeader();
    sessionList.render();
  },
  sessionsChanged: () => sessionList.load(),
  showError,
  showNotice,
  clearError,
  identity,
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
  refreshCurrent,
  newSession,
  showHistory,
  showError,
  clearError,
  autosize,
});
onKeySaved(showIdentity);

wire();
boot()
  .catch(showError)
  .finally(() => {
    document.body.dataset.ready = "true";
  });
ui.input.focus();
