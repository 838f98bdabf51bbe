// The OpenAI route's agent loop in the page (SPEC §4): an assistant message's tool calls
// and a tool's result, shown compact — "called tool NAME(args)", "tool result" — instead
// of an empty bubble and a plain one. Text only (textContent, never HTML).
import { node } from "./dom.js";

const MAX_CHARS = 200; // a call's arguments, a result's first line: cut past this

function cut(text) {
  const flat = String(text).replace(/\s+/g, " ").trim();
  return flat.length > MAX_CHARS ? `${flat.slice(0, MAX_CHARS - 1)}…` : flat;
}

// A call's arguments as compact JSON (as sent when they are not JSON).
function argumentsText(raw) {
  try {
    return JSON.stringify(typeof raw === "string" ? JSON.parse(raw) : (raw ?? {}));
  } catch {
    return String(raw);
  }
}

// One line per tool call of an assistant message.
export function toolCallsView(calls) {
  const box = node("div", "tool-calls");
  for (const call of calls) {
    const fn = (call && call.function) || {};
    const line = node("div", "tool-call");
    line.append(
      node("span", "tool-label", "called tool "),
      node("code", "tool-name", String(fn.name || "?")),
      node("code", "tool-args", `(${cut(argumentsText(fn.arguments))})`),
    );
    if (call && call.id) line.title = `call ${call.id}`;
    box.append(line);
  }
  return box;
}

// A tool message: a "tool result" label, the result's text (folded when long).
export function toolResultView(msg) {
  const box = node("details", "bubble tool-result");
  const text = String(msg.content || "");
  const summary = node("summary");
  summary.append(
    node("span", "tool-label", "tool result "),
    node("span", "tool-brief", cut(text)),
  );
  box.append(summary, node("pre", "tool-text", text));
  const id = (msg.metadata || {}).tool_call_id;
  if (id) box.title = `result of call ${id}`;
  return box;
}
