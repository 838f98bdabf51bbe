// The page's layout: the session list as a drawer on narrow screens, and the composer
// growing with what is typed.
export function createLayout(ui) {
  const narrow = window.matchMedia("(max-width: 760px)");

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

  function autosize() {
    if (!ui.input.value) {
      ui.input.style.height = "";
      return;
    }
    ui.input.style.height = "auto";
    ui.input.style.height = `${Math.min(ui.input.scrollHeight, 200)}px`;
  }

  function setPlaceholder() {
    ui.input.placeholder = narrow.matches
      ? "Message…"
      : "Message…  (Enter sends, Shift+Enter for a new line)";
  }

  setPlaceholder();
  narrow.addEventListener("change", setPlaceholder);
  ui.input.addEventListener("input", autosize);
  ui.openSidebar.addEventListener("click", openSidebar);
  ui.closeSidebar.addEventListener("click", closeSidebar);
  ui.backdrop.addEventListener("click", closeSidebar);
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && ui.layout.classList.contains("sidebar-open")) closeSidebar();
  });

  return { closeSidebar, autosize };
}
