// Small DOM helpers the page's modules share.

// An element with a class and text (text only: never HTML).
export function node(tag, className, text) {
  const n = document.createElement(tag);
  if (className) n.className = className;
  if (text !== undefined) n.textContent = text;
  return n;
}
