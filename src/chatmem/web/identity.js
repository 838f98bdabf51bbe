// Who the page speaks as. With auth on, the API key says it. In open mode, the server's
// default user (the one `chatmem chat` and `chatmem sessions` use) unless the user sets
// another id here; the id is kept in this browser's localStorage. Also the user's display
// name (GET / PATCH /v1/me), which the chat settings panel edits.
import { STORE, USER_ID_PATTERN, apiJson, storageGet, storageSet, userId } from "./api.js";

export function createIdentity({ onChange }) {
  const $ = (id) => document.getElementById(id);
  const ui = {
    identity: $("identity"),
    change: $("change-user"),
    form: $("user-form"),
    input: $("user-input"),
    cancel: $("user-cancel"),
    forgetKey: $("forget-key"),
  };
  let shownUser = null; // as the server named it (GET /v1/me)
  let admin = false;
  let displayName = null; // what characters call the user ({{user}}); null: the default

  function show() {
    const hasKey = Boolean(storageGet(STORE.key));
    const name = shownUser || userId();
    ui.identity.textContent = hasKey
      ? "Signed in with an API key"
      : name
        ? `You are ${name}`
        : "";
    ui.forgetKey.hidden = !hasKey;
    ui.change.hidden = hasKey || !ui.form.hidden;
  }

  async function load() {
    try {
      const me = await apiJson("GET", "/v1/me");
      shownUser = me && me.user_id ? String(me.user_id) : null;
      admin = Boolean(me && me.is_admin);
      displayName = me ? nameOf(me) : null;
    } catch {
      shownUser = null; // shown as far as the page knows; the error shows elsewhere
      admin = false;
      displayName = null;
    }
    show();
  }

  // "User" is the server's name for a user who set none: the field shows it empty.
  const nameOf = (me) => (me.display_name && me.display_name !== "User" ? me.display_name : null);

  // PATCH /v1/me: new chats' greetings and every next reply use it (null: "User").
  async function setDisplayName(name) {
    const me = await apiJson("PATCH", "/v1/me", { display_name: name });
    displayName = nameOf(me);
  }

  function openForm() {
    ui.form.hidden = false;
    ui.change.hidden = true;
    ui.input.value = userId() || "";
    ui.input.setCustomValidity("");
    ui.input.focus();
  }

  function closeForm() {
    ui.form.hidden = true;
    show();
  }

  ui.change.addEventListener("click", openForm);
  ui.cancel.addEventListener("click", closeForm);
  ui.input.addEventListener("input", () => ui.input.setCustomValidity(""));
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    const id = ui.input.value.trim();
    if (id && !USER_ID_PATTERN.test(id)) {
      ui.input.setCustomValidity("Letters, digits and _ . @ - only (at most 128).");
      ui.input.reportValidity();
      return;
    }
    // Empty: back to the server's default user.
    storageSet(STORE.user, id || null);
    storageSet(STORE.session, null);
    shownUser = null;
    closeForm();
    onChange();
  });

  return { show, load, setDisplayName, isAdmin: () => admin, displayName: () => displayName };
}
