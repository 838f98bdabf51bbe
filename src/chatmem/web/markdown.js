// Markdown in the page: the server renders it (POST /v1/render: markdown-it-py, Pygments,
// then nh3's allow-list), the page swaps the sanitized HTML in for the text it showed.
// A reply streams in as text and is rendered once, at its `done` event.
//
// The server's HTML is the only HTML the page ever inserts, and it is checked once more
// here: no element or attribute outside the renderer's own vocabulary survives, and the
// page's CSP (no inline script) would refuse an event handler anyway.
import { apiJson } from "./api.js";

const RENDER_BATCH = 100; // the most texts POST /v1/render takes at once
const sources = new WeakMap(); // message <li> → its Markdown, until rendered
const ALLOWED_TAGS = new Set(
  ("P BR HR H1 H2 H3 H4 H5 H6 STRONG EM DEL S CODE PRE BLOCKQUOTE UL OL LI A SPAN " +
    "TABLE THEAD TBODY TR TH TD").split(" "),
);
const ALLOWED_ATTRS = new Set(["href", "title", "rel", "class", "start", "data-lang"]);
const SAFE_URL = /^(https?:|mailto:)/i;

// The message `li` shows `text` now and is rendered by the next renderPending().
export function markPending(li, text) {
  if (!text) return;
  sources.set(li, text);
  li.dataset.markdown = "pending";
}

function safeFragment(html) {
  const template = document.createElement("template");
  template.innerHTML = html; // inert: a template's content runs nothing
  for (const el of [...template.content.querySelectorAll("*")]) {
    if (!ALLOWED_TAGS.has(el.tagName)) {
      el.replaceWith(document.createTextNode(el.textContent || ""));
      continue;
    }
    for (const attr of [...el.attributes]) {
      const name = attr.name.toLowerCase();
      const badUrl = name === "href" && !SAFE_URL.test(attr.value.trim());
      if (!ALLOWED_ATTRS.has(name) || badUrl) el.removeAttribute(attr.name);
    }
  }
  return template.content;
}

function addCopyButtons(bubble) {
  for (const pre of bubble.querySelectorAll("pre")) {
    const box = document.createElement("div");
    box.className = "code-box";
    const bar = document.createElement("div");
    bar.className = "code-bar";
    const lang = document.createElement("span");
    lang.className = "code-lang";
    lang.textContent = pre.dataset.lang || "";
    const copy = document.createElement("button");
    copy.type = "button";
    copy.className = "copy-code";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", "Copy the code");
    copy.addEventListener("click", () => copyCode(pre, copy));
    bar.append(lang, copy);
    pre.replaceWith(box);
    box.append(bar, pre);
  }
}

async function copyCode(pre, button) {
  const text = pre.textContent.replace(/\n$/, "");
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    // No clipboard access (an insecure origin, a denied permission): select it instead.
    const range = document.createRange();
    range.selectNodeContents(pre);
    const sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
    button.textContent = "Selected";
  }
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

function show(li, html) {
  const bubble = li.querySelector(".bubble");
  bubble.replaceChildren(safeFragment(html));
  bubble.classList.add("md");
  addCopyButtons(bubble);
  li.dataset.markdown = "done";
}

// Render every pending message under `root` (one request); a message whose render
// fails keeps its text.
export async function renderPending(root) {
  const items = [...root.querySelectorAll('.message[data-markdown="pending"]')].filter(
    (li) => !li.classList.contains("streaming"),
  );
  if (items.length) {
    for (const li of items) li.dataset.markdown = "rendering";
    for (let start = 0; start < items.length; start += RENDER_BATCH) {
      const batch = items.slice(start, start + RENDER_BATCH);
      try {
        const texts = batch.map((li) => sources.get(li));
        const out = await apiJson("POST", "/v1/render", { texts });
        batch.forEach((li, i) => {
          if (li.dataset.markdown === "rendering") show(li, out.html[i]);
          sources.delete(li);
        });
      } catch {
        for (const li of batch) li.dataset.markdown = "text";
      }
    }
  }
  const n = Number(document.body.dataset.renders || "0") + 1;
  document.body.dataset.renders = String(n);
}
