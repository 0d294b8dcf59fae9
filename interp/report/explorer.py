"""The circuit explorer: pick any head (a heatmap click or the selectors) and see its attention
under every condition side by side on the same stored prompt, with its score, interval and rank
in each condition. One offline block of HTML and JavaScript; the attention data come from the
shift run (``probes["explorer"]``, quantised), so nothing runs a model here.

JavaScript API: ``window.interpExplorer.select(layer, head)`` and
``window.interpExplorer.conditions()``; the views render into ``#explorer``, one child per
condition carrying ``data-condition``.
"""

from __future__ import annotations

import json
from pathlib import Path
from uuid import uuid4

from interp.errors import ConfigError
from interp.files import read_json
from interp.report.html import circuitsvis_bundle, esc

_SCRIPT = r"""
(function () {
  const data = JSON.parse(document.getElementById("explorer-data").textContent);
  const root = document.getElementById("explorer");
  const state = {layer: data.initial[0], head: data.initial[1], prompt: 0};
  const decoded = {};
  function bytes(cond, p) {
    const key = cond + "|" + p;
    if (!decoded[key]) {
      const s = atob(data.attention[cond][p].data);
      const a = new Uint8Array(s.length);
      for (let i = 0; i < s.length; i++) a[i] = s.charCodeAt(i);
      decoded[key] = a;
    }
    return decoded[key];
  }
  function matrix(cond, p, index) {
    const e = data.attention[cond][p], K = e.keys, R = e.rows, raw = bytes(cond, p);
    const m = [];
    for (let i = 0; i < K; i++) m.push(new Array(K).fill(0));
    for (let r = 0; r < R; r++)
      for (let k = 0; k < K; k++)
        m[K - R + r][k] = raw[(index * R + r) * K + k] / 255;
    return m;
  }
  function rank(cond, l, h) {
    const v = data.scores[cond].value, x = Math.abs(v[l][h]);
    let above = 0;
    for (const row of v) for (const y of row) if (Math.abs(y) > x) above++;
    return above + 1;
  }
  function fmt(x) { return (x === null || x === undefined) ? "-" : Number(x).toFixed(3); }
  function render() {
    const l = state.layer, h = state.head, index = l * data.n_heads + h;
    document.getElementById("explorer-layer").value = l;
    document.getElementById("explorer-head").value = h;
    for (const cond of data.order) {
      const cell = root.querySelector('[data-condition="' + cond + '"]');
      const s = data.scores[cond];
      const ci = s.low ? " [" + fmt(s.low[l][h]) + ", " + fmt(s.high[l][h]) + "]" : "";
      cell.querySelector(".explorer-info").textContent =
        "L" + l + "H" + h + ": score " + fmt(s.value[l][h]) + ci + ", rank " + rank(cond, l, h)
        + " of " + data.n_layers * data.n_heads;
      const holder = cell.querySelector(".explorer-view");
      holder.innerHTML = "";
      const view = document.createElement("div");
      view.id = "explorer-view-" + cond.replace(/[^a-z0-9]/gi, "") + "-" + (++state.renders);
      view.className = "explorer-rendered";
      holder.appendChild(view);
      const e = data.attention[cond][state.prompt];
      CircuitsVis.render(view.id, CircuitsVis.AttentionPatterns,
                         {tokens: e.tokens, attention: [matrix(cond, state.prompt, index)],
                          headLabels: ["L" + l + "H" + h]});
    }
  }
  state.renders = 0;
  function select(layer, head) {
    layer = Number(layer); head = Number(head);
    if (!(layer >= 0 && layer < data.n_layers && head >= 0 && head < data.n_heads))
      throw new Error("no head L" + layer + "H" + head);
    state.layer = layer; state.head = head;
    render();
    return true;
  }
  document.getElementById("explorer-layer").addEventListener("change", e =>
    select(e.target.value, state.head));
  document.getElementById("explorer-head").addEventListener("change", e =>
    select(state.layer, e.target.value));
  document.getElementById("explorer-prompt").addEventListener("change", e => {
    state.prompt = Number(e.target.value); render(); });
  function hookHeatmaps() {
    for (const div of document.querySelectorAll(".js-plotly-plot")) {
      if (!div.id.startsWith("heatmap-") || div.dataset.explorer) continue;
      div.dataset.explorer = "1";
      div.on("plotly_click", ev => select(ev.points[0].y, ev.points[0].x));
    }
  }
  window.interpExplorer = {select: select, conditions: () => data.all_conditions.slice(),
                           state: () => Object.assign({}, state)};
  render();
  hookHeatmaps();
  window.addEventListener("load", hookHeatmaps);
})();
"""


def explorer_payload(results: dict) -> dict:
    """What the explorer's page needs from a shift run's results."""
    att = (results.get("probes") or {}).get("explorer")
    if not att:
        raise ConfigError("these results hold no explorer data (run interp shift with probes)")
    order = [c for c in results["conditions"] if c in att["conditions"]]
    first = results["maps"]["base-icl"]["heads"]
    best = max(((l, h) for l in range(len(first)) for h in range(len(first[0]))),
               key=lambda lh: abs(first[lh[0]][lh[1]]))
    scores = {}
    for cond in order:
        ci = (results.get("map_ci") or {}).get(cond) or {}
        scores[cond] = {"value": results["maps"][cond]["heads"], "low": ci.get("low"),
                        "high": ci.get("high")}
    return {"order": order, "all_conditions": list(results["conditions"]),
            "n_layers": att["n_layers"], "n_heads": att["n_heads"], "initial": list(best),
            "prompts": att["prompts"], "attention": att["conditions"], "scores": scores}


def explorer_html(results: dict) -> str:
    """The explorer block (needs the circuitsvis bundle on the page)."""
    data = explorer_payload(results)
    options = "".join(f"<option value='{i}'>pair {p['pair'][-10:]} ({p['side']})</option>"
                      for i, p in enumerate(data["prompts"]))
    cells = "".join(
        f"<div data-condition='{esc(c)}' class='explorer-cell' style='display:inline-block;"
        f"vertical-align:top;width:430px;margin:6px;border:1px solid #ddd;padding:6px'>"
        f"<b>{esc(c)}</b><div class='explorer-info note'></div>"
        f"<div class='explorer-view'></div></div>" for c in data["order"])
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")
    return ("<h2 id='explorer-title'>Circuit explorer</h2><p class='note'>Click a cell of a head "
            "heatmap, or choose a layer and head: its attention under every condition on the "
            "same prompt (the last positions' rows; the instruction and each demonstration "
            "collapsed to one key), its score with 95 % interval and its rank.</p>"
            f"<p>layer <input id='explorer-layer' type='number' min='0' "
            f"max='{data['n_layers'] - 1}' style='width:4em'> head <input id='explorer-head' "
            f"type='number' min='0' max='{data['n_heads'] - 1}' style='width:4em'> prompt "
            f"<select id='explorer-prompt'>{options}</select></p>"
            f"<div id='explorer'>{cells}</div>"
            f"<script type='application/json' id='explorer-data'>{payload}</script>"
            f"<script>{_SCRIPT}</script>")


def explorer(results_dir: str | Path):
    """The explorer of a shift run as one notebook output (offline: the circuitsvis bundle is
    inlined)."""
    from IPython.display import HTML

    results = read_json(Path(results_dir) / "results.json")
    stage = read_json(Path(results_dir) / "explorer.json")
    if results is None or stage is None:
        raise ConfigError(f"no readable results.json and explorer.json in {results_dir}")
    block = explorer_html({**results, "probes": {**(results.get("probes") or {}),
                                                 "explorer": stage["data"]}})
    suffix = uuid4().hex[:6]   # one explorer per output cell
    block = block.replace("explorer-", f"explorer{suffix}-").replace('"explorer"',
                                                                      f'"explorer{suffix}"')
    block = block.replace("id='explorer'", f"id='explorer{suffix}'")
    return HTML(f"<script>{circuitsvis_bundle()}</script>" + block)
