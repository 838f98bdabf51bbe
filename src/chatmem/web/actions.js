// What a user does to one message (SPEC §3b): swipe through a reply's alternatives
// (‹ 2/3 ›), regenerate or continue the last reply, edit, delete, and fork the chat
// from here. Every action is a real <button> with a label, so it works from the
// keyboard (Tab, Enter) and by touch on a phone-sized screen.
//
// Regenerate and continue stream like a send (reply.js); the others are one request
// each, and the message shown is replaced by the one the server answers.
import { apiJson, sessionPath } from "./api.js";

export function createActions(page) {
  // page: { current, messageItem, replaceMessage, removeMessage, revise, forked,
  //         showError, clearError, busy }
  const messages = new WeakMap(); // message <li> → the message as the API gave it

  function button(label, text, onClick, className = "") {
    const b = document.createElement("button");
    b.type = "button";
    b.className = `msg-action ${className}`.trim();
    b.textContent = text;
    b.title = label;
    b.setAttribute("aria-label", label);
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      onClick(b);
    });
    return b;
  }

  const sid = () => page.current() && page.current().session_id;

  function guard(fn) {
    return async (...args) => {
      if (page.busy()) {
        page.showError("Wait for the reply being written to finish (or press Stop) first.");
        return;
      }
      page.clearError();
      try {
        await fn(...args);
      } catch (err) {
        page.showError(err);
      }
    };
  }

  // --- alternatives ----------------------------------------------------------------

  const select = guard(async (li, index) => {
    const msg = messages.get(li);
    const out = await apiJson("PATCH", sessionPath(sid(), `/messages/${msg.msg_id}`), {
      selected: index,
    });
    page.replaceMessage(li, out.message);
  });

  function swiper(li, msg) {
    const box = document.createElement("span");
    box.className = "swipe";
    const n = msg.alternatives;
    const at = msg.selected || 0;
    const prev = button("Previous alternative", "‹", () => select(li, at - 1), "swipe-prev");
    const next = button("Next alternative", "›", () => select(li, at + 1), "swipe-next");
    prev.disabled = at <= 0;
    next.disabled = at >= n - 1;
    const count = document.createElement("span");
    count.className = "swipe-count";
    count.textContent = `${at + 1}/${n}`;
    count.setAttribute("aria-label", `alternative ${at + 1} of ${n}`);
    box.append(prev, count, next);
    return box;
  }

  // --- edit ------------------------------------------------------------------------

  function startEdit(li) {
    const msg = messages.get(li);
    if (li.querySelector(".edit-box")) return;
    const bubble = li.querySelector(".bubble");
    const box = document.createElement("form");
    box.className = "edit-box";
    const area = document.createElement("textarea");
    area.className = "edit-input";
    area.value = msg.content;
    area.rows = Math.min(12, Math.max(2, msg.content.split("\n").length + 1));
    area.setAttribute("aria-label", "Edit the message");
    const save = document.createElement("button");
    save.type = "submit";
    save.className = "primary edit-save";
    save.textContent = "Save";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "edit-cancel";
    cancel.textContent = "Cancel";
    const bar = document.createElement("div");
    bar.className = "edit-actions";
    bar.append(save, cancel);
    box.append(area, bar);
    const close = () => {
      box.remove();
      bubble.hidden = false;
      li.classList.remove("editing");
    };
    cancel.addEventListener("click", close);
    area.addEventListener("keydown", (e) => {
      if (e.key === "Escape") {
        e.preventDefault();
        e.stopPropagation();
        close();
      } else if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
        e.preventDefault();
        box.requestSubmit();
      }
    });
    box.addEventListener(
      "submit",
      guard(async (e) => {
        e.preventDefault();
        const content = area.value;
        if (!content.trim()) {
          page.showError("A message cannot be empty: delete it instead.");
          return;
        }
        const out = await apiJson("PATCH", sessionPath(sid(), `/messages/${msg.msg_id}`), {
          content,
        });
        page.replaceMessage(li, out.message);
      }),
    );
    bubble.hidden = true;
    li.classList.add("editing");
    li.insertBefore(box, bubble.nextSibling);
    area.focus();
  }

  // --- delete: a second press within a few seconds confirms (no native dialog) ------

  function armDelete(b, li) {
    if (b.dataset.armed === "true") {
      remove(li);
      return;
    }
    b.dataset.armed = "true";
    b.textContent = "Delete?";
    b.classList.add("armed");
    setTimeout(() => {
      if (b.isConnected) {
        b.dataset.armed = "false";
        b.textContent = "Delete";
        b.classList.remove("armed");
      }
    }, 4000);
  }

  const remove = guard(async (li) => {
    const msg = messages.get(li);
    await apiJson("DELETE", sessionPath(sid(), `/messages/${msg.msg_id}`));
    page.removeMessage(li);
  });

  const fork = guard(async (li) => {
    const msg = messages.get(li);
    const out = await apiJson("POST", sessionPath(sid(), "/fork"), { message_id: msg.msg_id });
    await page.forked(out.session);
  });

  const revise = (kind) => {
    if (page.busy()) {
      page.showError("Wait for the reply being written to finish (or press Stop) first.");
      return;
    }
    page.revise(kind);
  };

  // The toolbar under a stored message. Regenerate and Continue show on the last
  // reply only (CSS: .message:last-child), as the API revises the newest message.
  function decorate(li, msg) {
    messages.set(li, msg);
    if (!msg.msg_id) return;
    const bar = document.createElement("div");
    bar.className = "msg-actions";
    bar.setAttribute("role", "toolbar");
    bar.setAttribute("aria-label", "Message actions");
    if (msg.alternatives > 1) bar.append(swiper(li, msg));
    if (msg.role === "assistant") {
      if (!(msg.metadata && msg.metadata.greeting)) {
        bar.append(button("Regenerate", "Regenerate", () => revise("regenerate"), "only-last regenerate"));
      }
      bar.append(button("Continue", "Continue", () => revise("continue"), "only-last continue"));
    }
    bar.append(
      button("Edit", "Edit", () => startEdit(li), "edit"),
      button("Delete", "Delete", (b) => armDelete(b, li), "delete"),
      button("Fork the chat from here", "Fork", () => fork(li), "fork"),
    );
    li.append(bar);
  }

  // The "cut off" mark's own Continue (the last reply stopped at its length limit).
  function continueButton() {
    return button("Continue the reply", "Continue", () => revise("continue"), "tag-continue");
  }

  return { decorate, continueButton, messageOf: (li) => messages.get(li) };
}
