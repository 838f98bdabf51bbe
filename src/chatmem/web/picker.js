// The character picker: the characters the server offers (GET /v1/characters), the one
// it suggests preselected unless this browser chose another, and what the chosen one is.
import { STORE, apiJson, storageGet, storageSet } from "./api.js";
import { node } from "./dom.js";

// As the server fills a greeting in for a new chat (characters/placeholders.py).
function fill(text, charName, userName) {
  // One pass, and a function, not a replacement string: a name may hold "$&" or "{{user}}".
  return text.replace(/\{\{(char|user)\}\}|<(bot|user)>/gi, (_, a, b) =>
    ["char", "bot"].includes((a || b).toLowerCase()) ? charName : userName,
  );
}

export function createPicker({ ui, state, userName }) {
  // userName: () => the user's display name ("User" when they set none).
  async function load(selectId) {
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
    show();
  }

  function show() {
    const c = state.characters.get(ui.character.value);
    ui.characterDescription.textContent = c ? c.description || "" : "";
    ui.characterGreeting.textContent = c ? fill(c.greeting || "", c.name, userName()) : "";
    ui.characterGreeting.hidden = !(c && c.greeting);
  }

  ui.character.addEventListener("change", () => {
    storageSet(STORE.character, ui.character.value);
    show();
  });

  return {
    load,
    show,
    chosen: () => ui.character.value || state.defaultCharacter,
    selected: () => state.characters.get(ui.character.value) || null,
    name: (id) => {
      const c = state.characters.get(id);
      return c ? c.name : id;
    },
  };
}
