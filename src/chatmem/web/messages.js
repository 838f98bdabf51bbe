// One message of the open chat as the page shows it: its bubble (text; a reply's
// Markdown rendered later by markdown.js), its tool calls, its "cut off" or "stopped"
// mark and its actions (actions.js). Also where the message list is scrolled.
import { markPending, renderPending } from "./markdown.js";
import { node } from "./dom.js";
import { toolCallsView, toolResultView } from "./tools.js";

export function createMessageView({ ui, actions }) {
  // actions: () => the message actions (actions.js), made after this view.

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
    actions().decorate(li, msg);
    return li;
  }

  // A message the server changed (edited, another alternative selected, stored at last).
  function replaceMessage(li, msg) {
    const fresh = messageItem(msg);
    li.replaceWith(fresh);
    renderPending(ui.messages);
    return fresh;
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
    if (li.dataset.msgId) li.insertBefore(actions().continueButton(), bar);
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

  return { messageItem, replaceMessage, markCutOff, markStopped, scrollToEnd, nearEnd };
}
