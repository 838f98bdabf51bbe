// Characters on the page, for admins (in open mode everyone is one): the editor (new,
// edit, delete; a built-in is saved as a copy) and Card V2/V3 import from a JSON file or
// a PNG image carrying the card (the server reads its `ccv3` / `chara` chunk).
import { api, apiJson } from "./api.js";

const $ = (id) => document.getElementById(id);

export function createCharacterEditor(page) {
  // page: { selected, reload(selectId), showError, showNotice, clearError }
  const ui = {
    tools: $("character-tools"),
    edit: $("edit-character"),
    add: $("add-character"),
    importCard: $("import-card"),
    file: $("card-file"),
    dialog: $("character-dialog"),
    form: $("character-form"),
    title: $("character-title"),
    id: $("ch-id"),
    name: $("ch-name"),
    description: $("ch-description"),
    greeting: $("ch-greeting"),
    prompt: $("ch-prompt"),
    temperature: $("ch-temperature"),
    note: $("ch-note"),
    del: $("ch-delete"),
    cancel: $("ch-cancel"),
  };
  let editing = null; // the character being edited (PUT), null for a new one (POST)

  function setAdmin(isAdmin) {
    ui.tools.hidden = !isAdmin;
  }

  async function open(existing) {
    page.clearError();
    let full = null;
    if (existing) {
      try {
        full = await apiJson("GET", `/v1/characters/${encodeURIComponent(existing.id)}`);
      } catch (err) {
        page.showError(err);
        return;
      }
    }
    const copy = Boolean(full && full.builtin);
    editing = full && !copy ? full : null;
    ui.title.textContent = editing
      ? `Edit ${full.name}`
      : copy
        ? `Copy of ${full.name}`
        : "New character";
    ui.id.value = full ? (copy ? `${full.id}-copy` : full.id) : "";
    ui.id.readOnly = Boolean(editing);
    ui.name.value = full ? full.name : "";
    ui.description.value = full ? full.description || "" : "";
    ui.greeting.value = full ? full.greeting || "" : "";
    ui.prompt.value = full ? full.system_prompt || "" : "";
    const t = full && full.params ? full.params.temperature : null;
    ui.temperature.value = t === null || t === undefined ? "" : String(t);
    ui.note.textContent = copy
      ? "Built-in characters cannot be changed: this saves a copy."
      : "Sent as written: {{char}} and {{user}} are filled in for imported cards only.";
    ui.del.hidden = !editing;
    delete ui.del.dataset.armed;
    ui.del.textContent = "Delete";
    ui.dialog.showModal();
    (editing ? ui.name : ui.id).focus();
  }

  async function save(e) {
    e.preventDefault();
    const body = {
      id: ui.id.value.trim(),
      name: ui.name.value.trim(),
      description: ui.description.value,
      greeting: ui.greeting.value,
      system_prompt: ui.prompt.value,
      params: {},
    };
    if (editing) {
      // What the form does not show is kept as it is.
      body.post_history_instructions = editing.post_history_instructions || "";
      body.extensions = editing.extensions || {};
      body.params = { ...(editing.params || {}) };
    }
    const t = ui.temperature.value.trim();
    body.params.temperature = t === "" ? null : Number(t);
    try {
      const saved = editing
        ? await apiJson("PUT", `/v1/characters/${encodeURIComponent(body.id)}`, body)
        : await apiJson("POST", "/v1/characters", body);
      ui.dialog.close();
      await page.reload(saved.id);
    } catch (err) {
      ui.dialog.close();
      page.showError(err);
    }
  }

  async function remove() {
    if (!editing) return;
    if (ui.del.dataset.armed !== "true") {
      ui.del.dataset.armed = "true";
      ui.del.textContent = "Delete? (press again)";
      return;
    }
    try {
      await apiJson("DELETE", `/v1/characters/${encodeURIComponent(editing.id)}`);
      ui.dialog.close();
      await page.reload(null);
    } catch (err) {
      ui.dialog.close();
      page.showError(err);
    }
  }

  async function importFile() {
    const file = ui.file.files[0];
    ui.file.value = "";
    if (!file) return;
    page.clearError();
    const isPng = file.type === "image/png" || file.name.toLowerCase().endsWith(".png");
    try {
      let res;
      if (isPng) {
        res = await api("POST", "/v1/characters/import", await file.arrayBuffer(), {
          contentType: "image/png",
        });
      } else {
        let card;
        try {
          card = JSON.parse(await file.text());
        } catch {
          page.showError(`${file.name} is not a JSON character card.`);
          return;
        }
        res = await api("POST", "/v1/characters/import", card);
      }
      const created = await res.json();
      await page.reload(created.id);
      page.showNotice(`Imported ${created.name}.`);
    } catch (err) {
      page.showError(err);
    }
  }

  ui.edit.addEventListener("click", () => open(page.selected()));
  ui.add.addEventListener("click", () => open(null));
  ui.importCard.addEventListener("click", () => ui.file.click());
  ui.file.addEventListener("change", importFile);
  ui.form.addEventListener("submit", save);
  ui.cancel.addEventListener("click", () => ui.dialog.close());
  ui.del.addEventListener("click", remove);

  return { setAdmin };
}
