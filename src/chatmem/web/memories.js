// The Memories panel: the long-term memories the server keeps for this user and the
// open chat's character (GET/POST/PATCH/DELETE /v1/memories). Listed newest first; each
// can be edited or deleted, and a new one added. Memory text is shown as text only.
import { apiJson, describe } from "./api.js";
import { node } from "./dom.js";

const $ = (id) => document.getElementById(id);
const memoryPath = (id) => `/v1/memories/${encodeURIComponent(id)}`;

export function createMemories(page) {
  // page: { current, characterName, showError, clearError }
  const ui = {
    open: $("open-memories"),
    dialog: $("memories-dialog"),
    who: $("memories-who"),
    list: $("memories-list"),
    empty: $("memories-empty"),
    addForm: $("memory-add-form"),
    addText: $("memory-new"),
    error: $("memories-error"),
  };

  const characterId = () => {
    const meta = page.current();
    return meta ? meta.character_id : null;
  };

  // A failed request while the panel is open: said in the panel (the page's banner is
  // behind the modal dialog).
  function failed(err) {
    ui.error.textContent = describe(err);
    ui.error.hidden = false;
  }

  function clearFailed() {
    ui.error.hidden = true;
    ui.error.textContent = "";
  }

  async function load(report = failed) {
    const cid = characterId();
    if (!cid) return false;
    let data;
    try {
      data = await apiJson("GET", `/v1/memories?character_id=${encodeURIComponent(cid)}`);
    } catch (err) {
      report(err);
      return false;
    }
    render(data.memories || []);
    return true;
  }

  function render(memories) {
    ui.empty.hidden = memories.length > 0;
    ui.list.replaceChildren(...memories.map(item));
  }

  function item(m) {
    const li = node("li", "memory");
    li.dataset.memoryId = m.memory_id;
    const text = node("span", "memory-text", m.text);
    const edit = node("button", "link-button memory-edit", "Edit");
    edit.type = "button";
    const del = node("button", "link-button danger memory-delete", "Delete");
    del.type = "button";
    const tools = node("span", "memory-tools");
    tools.append(edit, del);
    li.append(text, tools);
    edit.addEventListener("click", () => startEdit(li, m));
    del.addEventListener("click", () => remove(m));
    return li;
  }

  function startEdit(li, m) {
    const form = node("form", "memory-edit-form");
    const input = node("input", "memory-input");
    input.maxLength = 500;
    input.required = true;
    input.value = m.text;
    input.setAttribute("aria-label", "Memory text");
    const save = node("button", "primary memory-save", "Save");
    save.type = "submit";
    const cancel = node("button", "memory-cancel", "Cancel");
    cancel.type = "button";
    form.append(input, save, cancel);
    cancel.addEventListener("click", () => li.replaceWith(item(m)));
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      clearFailed();
      try {
        const updated = await apiJson("PATCH", memoryPath(m.memory_id), { text });
        li.replaceWith(item(updated));
      } catch (err) {
        failed(err);
      }
    });
    li.replaceChildren(form);
    input.focus();
  }

  async function remove(m) {
    clearFailed();
    try {
      await apiJson("DELETE", memoryPath(m.memory_id));
    } catch (err) {
      failed(err);
    }
    await load();
  }

  async function add(e) {
    e.preventDefault();
    const cid = characterId();
    const text = ui.addText.value.trim();
    if (!cid || !text) return;
    clearFailed();
    try {
      await apiJson("POST", "/v1/memories", { character_id: cid, text });
      ui.addText.value = "";
    } catch (err) {
      failed(err);
    }
    await load();
  }

  async function open() {
    const cid = characterId();
    if (!cid) return;
    page.clearError();
    clearFailed();
    ui.who.textContent = `What chatmem remembers about you with ${page.characterName(cid)}.`;
    if (await load(page.showError)) {
      ui.dialog.showModal();
      ui.addText.focus();
    }
  }

  ui.open.addEventListener("click", open);
  ui.addForm.addEventListener("submit", add);
}
