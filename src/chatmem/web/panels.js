// The open chat's panels: its settings (title, memory window, TTL, temperature; and the
// user's display name, PATCH /v1/me, which every chat uses for {{user}}), the context
// inspector (GET …/context: what the model sees next turn, with the token budget), and
// export (GET /v1/export) of one chat or all of them, and import (POST /v1/import,
// admins).
import { apiJson, sessionPath } from "./api.js";

const $ = (id) => document.getElementById(id);

export function createPanels(page) {
  // page: { current, updated, sessionsChanged, showError, clearError, identity }
  const ui = {
    tools: $("chat-tools"),
    openSettings: $("open-settings"),
    openContext: $("open-context"),
    settings: $("settings-dialog"),
    settingsForm: $("settings-form"),
    name: $("settings-name"),
    window: $("settings-window"),
    ttl: $("settings-ttl"),
    temperature: $("settings-temperature"),
    displayName: $("settings-display-name"),
    cancel: $("settings-cancel"),
    exportChat: $("export-chat"),
    context: $("context-dialog"),
    budgetSystem: $("budget-system"),
    budgetHistory: $("budget-history"),
    budget: $("context-budget"),
    figures: $("context-figures"),
    summary: $("context-summary"),
    list: $("context-list"),
    exportAll: $("export-all"),
    importChats: $("import-chats"),
    importFile: $("import-file"),
  };
  const numbers = new Intl.NumberFormat();

  // --- settings --------------------------------------------------------------------

  function openSettings() {
    const meta = page.current();
    if (!meta) return;
    ui.name.value = meta.title || "";
    ui.window.value = String(meta.window_size);
    ui.ttl.value = String(Math.max(1, Math.round((meta.ttl_s || 60) / 60)));
    ui.temperature.value = meta.temperature == null ? "" : String(meta.temperature);
    ui.displayName.value = page.identity.displayName() || "";
    ui.settings.showModal();
    ui.window.focus();
  }

  async function saveSettings(e) {
    e.preventDefault();
    const meta = page.current();
    if (!meta) return;
    const change = {};
    const title = ui.name.value.trim();
    if (title && title !== meta.title) change.title = title;
    const windowSize = Number(ui.window.value);
    if (windowSize !== meta.window_size) change.window_size = windowSize;
    const ttl = Math.round(Number(ui.ttl.value) * 60);
    if (ttl !== meta.ttl_s) change.ttl_s = ttl;
    // Empty: back to the character's temperature (null), as the API takes it.
    const temperature = ui.temperature.value.trim() === "" ? null : Number(ui.temperature.value);
    if (temperature !== (meta.temperature ?? null)) change.temperature = temperature;
    // Empty: back to the default name ("User").
    const name = ui.displayName.value.trim() || null;
    const nameChanged = name !== (page.identity.displayName() || null);
    try {
      if (Object.keys(change).length) {
        const updated = await apiJson("PATCH", sessionPath(meta.session_id), change);
        page.updated(updated);
      }
      if (nameChanged) await page.identity.setDisplayName(name);
      ui.settings.close();
    } catch (err) {
      ui.settings.close();
      page.showError(err);
    }
  }

  // --- the context inspector ---------------------------------------------------------

  async function openContext() {
    const meta = page.current();
    if (!meta) return;
    page.clearError();
    let view;
    try {
      view = await apiJson("GET", sessionPath(meta.session_id, "/context"));
    } catch (err) {
      page.showError(err);
      return;
    }
    const t = view.tokens || {};
    const budget = t.budget || t.total || 1;
    const pct = (n) => `${Math.min(100, (100 * (n || 0)) / budget).toFixed(1)}%`;
    ui.budgetSystem.style.width = pct(t.system);
    ui.budgetHistory.style.width = pct(t.history);
    const dropped = (t.dropped_by_window || 0) + (t.dropped_by_count || 0) + (t.dropped_by_budget || 0);
    ui.figures.textContent =
      `${numbers.format(t.total || 0)} of ${numbers.format(t.budget || 0)} tokens: ` +
      `system ${numbers.format(t.system || 0)}, history ${numbers.format(t.history || 0)} ` +
      `(${t.history_messages || 0} messages)` +
      (dropped ? `; ${dropped} older messages left out` : "");
    ui.budget.setAttribute("aria-label", ui.figures.textContent);
    const summary = view.summary || t.summary;
    ui.summary.hidden = !summary;
    ui.summary.textContent = summary ? `Summary of earlier messages: ${summary}` : "";
    ui.list.replaceChildren(
      ...(view.messages || []).map((m) => {
        const li = document.createElement("li");
        li.className = `context-message ${m.role}`;
        const head = document.createElement("span");
        head.className = "context-role";
        head.textContent =
          m.token_count === undefined ? m.role : `${m.role} · ${m.token_count} tokens`;
        const body = document.createElement("span");
        body.className = "context-content";
        body.textContent = typeof m.content === "string" ? m.content : JSON.stringify(m.content);
        li.append(head, body);
        return li;
      }),
    );
    ui.context.showModal();
  }

  // --- export and import -------------------------------------------------------------

  function download(doc, name) {
    const blob = new Blob([JSON.stringify(doc, null, 2)], { type: "application/json" });
    const url = URL.createObjectURL(blob);
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  const stamp = () => new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-");

  async function exportAll() {
    page.clearError();
    try {
      download(await apiJson("GET", "/v1/export"), `chatmem-export-${stamp()}.json`);
    } catch (err) {
      page.showError(err);
    }
  }

  async function exportChat() {
    const meta = page.current();
    if (!meta) return;
    ui.settings.close();
    try {
      const q = `?session_id=${encodeURIComponent(meta.session_id)}`;
      download(await apiJson("GET", `/v1/export${q}`), `chatmem-chat-${meta.session_id}.json`);
    } catch (err) {
      page.showError(err);
    }
  }

  async function importFile() {
    const file = ui.importFile.files[0];
    ui.importFile.value = "";
    if (!file) return;
    page.clearError();
    let doc;
    try {
      doc = JSON.parse(await file.text());
    } catch {
      page.showError(`${file.name} is not a JSON file made by an export.`);
      return;
    }
    try {
      const report = await apiJson("POST", "/v1/import", doc);
      await page.sessionsChanged();
      page.showNotice(
        `Imported ${report.sessions} chats: ${report.messages_added} messages added, ` +
          `${report.messages_skipped} already there.`,
      );
    } catch (err) {
      page.showError(err);
    }
  }

  function showTools() {
    ui.tools.hidden = !page.current();
  }

  // Import writes chats as they were, outside a user's caps: admins only (in open
  // mode, everyone), as on the API.
  function setAdmin(isAdmin) {
    ui.importChats.hidden = !isAdmin;
  }

  ui.openSettings.addEventListener("click", openSettings);
  ui.openContext.addEventListener("click", openContext);
  ui.settingsForm.addEventListener("submit", saveSettings);
  ui.cancel.addEventListener("click", () => ui.settings.close());
  ui.exportChat.addEventListener("click", exportChat);
  ui.exportAll.addEventListener("click", exportAll);
  ui.importChats.addEventListener("click", () => ui.importFile.click());
  ui.importFile.addEventListener("change", importFile);

  return { showTools, setAdmin };
}
