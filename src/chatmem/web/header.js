// The open chat's header: its title, its character and what it has cost so far.
const numberFormat = new Intl.NumberFormat();

function formatCost(usd) {
  const v = Number(usd) || 0;
  if (v === 0) return "$0";
  if (v < 0.0001) return "<$0.0001";
  return `$${v.toFixed(v < 1 ? 4 : 2)}`;
}

export function showHeader(ui, meta, characterName) {
  if (!meta) {
    ui.title.textContent = "chatmem";
    ui.sessionCharacter.textContent = "";
    showUsage(ui, null);
    document.title = "chatmem";
    return;
  }
  const name = characterName(meta.character_id);
  ui.title.textContent = meta.title || name;
  ui.sessionCharacter.textContent = meta.title && meta.title !== name ? `with ${name}` : "";
  document.title = `${ui.title.textContent} · chatmem`;
  showUsage(ui, meta);
}

function showUsage(ui, meta) {
  const usage = (meta && meta.usage) || {};
  const total = usage.total_tokens || 0;
  ui.usageTokens.textContent = `${numberFormat.format(total)} tokens`;
  ui.usageCost.textContent = formatCost(usage.cost_usd);
  ui.usage.title = meta
    ? `prompt ${numberFormat.format(usage.prompt_tokens || 0)} + completion ` +
      `${numberFormat.format(usage.completion_tokens || 0)} tokens, ` +
      `cost ${formatCost(usage.cost_usd)}; ` +
      `${numberFormat.format(meta.total_tokens || 0)} tokens held in memory`
    : "";
}
