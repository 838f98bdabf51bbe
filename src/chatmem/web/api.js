// Talking to the chatmem API: who the user is, requests with their errors as ApiError,
// the API key dialog when the server asks for one, and what each error means to a user.

export const STORE = {
  user: "chatmem.user",
  key: "chatmem.apiKey",
  session: "chatmem.sessionId",
  character: "chatmem.characterId",
};
export function storageGet(name) {
  try {
    return localStorage.getItem(name);
  } catch {
    return null;
  }
}

export function storageSet(name, value) {
  try {
    if (value === null) localStorage.removeItem(name);
    else localStorage.setItem(name, value);
  } catch {
    // Private mode without storage: the page still works for this visit.
  }
}

export const USER_ID_PATTERN = /^[A-Za-z0-9_.@-]{1,128}$/;

// Open mode: the user id chosen on this page ("Change" in the sidebar), else none — the
// server's default user, the same one `chatmem chat` and `chatmem sessions` use.
export function userId() {
  const id = storageGet(STORE.user);
  return id && USER_ID_PATTERN.test(id) ? id : null;
}

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function requestHeaders(hasBody, accept, extra) {
  const h = { ...extra, Accept: accept || "application/json" };
  const user = userId();
  if (user) h["X-User-Id"] = user;
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

export async function api(method, path, body, options = {}) {
  let rejected = false;
  for (;;) {
    let res;
    try {
      // options.contentType: `body` goes as it is (a PNG's bytes, say), not as JSON.
      const raw = options.contentType !== undefined;
      const headers = requestHeaders(body !== undefined && !raw, options.accept, options.headers);
      if (raw) headers["Content-Type"] = options.contentType;
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined || raw ? body : JSON.stringify(body),
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

export async function apiJson(method, path, body) {
  const res = await api(method, path, body);
  return res.status === 204 ? null : res.json();
}

export const sessionPath = (sid, rest = "") => `/v1/sessions/${encodeURIComponent(sid)}${rest}`;

let keyPrompt = null;
let keySaved = () => {};

// Called whenever the user has entered a key.
export function onKeySaved(fn) {
  keySaved = fn;
}

function askForKey(reason) {
  if (keyPrompt) return keyPrompt;
  const $ = (id) => document.getElementById(id);
  const ui = {
    keyDialog: $("key-dialog"),
    keyForm: $("key-form"),
    keyInput: $("key-input"),
    keyReason: $("key-reason"),
  };
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
      keySaved();
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

export function describe(err) {
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
