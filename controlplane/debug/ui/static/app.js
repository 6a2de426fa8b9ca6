// meshd /ui/: draws /ui/model.json (debug/ui/model.py) and polls it for live updates.
// No framework and nothing from elsewhere: the page must work on an isolated network.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(location.search);
  const interval = Math.max(500, Number(params.get("interval")) || 2000);
  const status = document.getElementById("status");
  const updated = document.getElementById("updated");
  const pauseButton = document.getElementById("pause");
  let paused = false;
  let timer = null;
  let lastVersion = null;

  const SECURITY_TEXT = {mutual_tls: "mutual TLS", none: "plaintext", mixed: "partly plaintext",
                         refused: "plaintext refused", unknown: "unknown"};
  const LOCK_SYMBOL = {locked: "#lock-closed", open: "#lock-open", refused: "#refused"};

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function row(cells, attrs) {
    const tr = el("tr", attrs);
    cells.forEach((c, i) => {
      const td = el(i === 0 ? "th" : "td", i === 0 ? {scope: "row"} : {});
      if (c && typeof c === "object" && !(c instanceof Node)) {
        td.textContent = c.text;
        if (c.cls) td.className = c.cls;
      } else if (c instanceof Node) td.appendChild(c); else td.textContent = c;
      tr.appendChild(td);
    });
    return tr;
  }
  function fill(tableId, rows) {
    const body = document.querySelector(`#${tableId} tbody`);
    body.replaceChildren(...rows);
  }
  const NODE_W = 160, NODE_H = 40;

  function drawGraph(model) {
    const byId = new Map(model.nodes.map(n => [n.id, n]));
    const nodes = document.getElementById("nodes");
    const edges = document.getElementById("edges");
    const graph = document.getElementById("graph");
    let maxX = 0, maxY = 0;
    nodes.replaceChildren(...model.nodes.map(n => {
      maxX = Math.max(maxX, n.x + NODE_W); maxY = Math.max(maxY, n.y + NODE_H);
      const cls = ["node", n.kind];
      if (n.plaintextAllowed && n.sidecar) cls.push("plaintext-allowed");
      const what = n.kind === "service" ? "service" : n.kind === "outside" ? "" : n.sidecar ? "workload" : "workload without sidecar";
      const mode = n.mode ? `, mTLS ${n.mode}` : "";
      const g = svg("g", {class: cls.join(" "), tabindex: "0", "data-node-id": n.id, "data-mode": n.mode || "",
                          role: "img", "aria-label": `${n.label}${n.namespace ? " in " + n.namespace : ""}${what ? ", " + what : ""}${mode}`});
      g.appendChild(svg("rect", {x: n.x - NODE_W / 2, y: n.y - NODE_H / 2, width: NODE_W, height: NODE_H, rx: 6}));
      g.appendChild(svg("text", {x: n.x, y: n.y - 3, "text-anchor": "middle"}, n.label));
      const sub = n.kind === "outside" ? "no sidecar / unknown" :
        `${n.namespace}${n.kind === "service" ? " · svc" : ""}${n.mode ? " · " + n.mode : (n.kind === "workload" && !n.sidecar ? " · no sidecar" : "")}`;
      g.appendChild(svg("text", {x: n.x, y: n.y + 12, "text-anchor": "middle", class: "sub"}, sub));
      return g;
    }));
    edges.replaceChildren(...model.edges.map(e => {
      const a = byId.get(e.from), b = byId.get(e.to);
      if (!a || !b) return svg("g");
      const x1 = a.x + NODE_W / 2, y1 = a.y, x2 = b.x - NODE_W / 2, y2 = b.y;
      // An edge across more than one layer bows above the nodes between its ends; the
      // refused and plaintext edges between the same two nodes bow apart.
      const layers = Math.round(Math.abs(b.x - a.x) / 230);
      const apart = e.security === "refused" ? 40 : 0;
      const cx = (x1 + x2) / 2;
      const cy = layers > 1 ? Math.min(y1, y2) - 40 - 12 * layers - apart : (y1 + y2) / 2 + apart;
      const mx = (x1 + 2 * cx + x2) / 4, my = (y1 + 2 * cy + y2) / 4;  // the curve's midpoint
      const g = svg("g", {class: `edge ${e.kind} ${e.lock || ""}`, tabindex: e.kind === "call" ? "0" : "-1",
                          "data-edge-id": e.id, "data-lock": e.lock || "", "data-security": e.security || "",
                          role: "img", "aria-label": e.label});
      g.appendChild(svg("title", {}, e.label));
      g.appendChild(svg("path", {d: `M${x1},${y1} Q${cx},${cy} ${x2},${y2}`, "marker-end": "url(#arrow)"}));
      if (e.kind === "call") {
        const sym = LOCK_SYMBOL[e.lock];
        if (sym) g.appendChild(svg("use", {href: sym, x: mx - 8, y: my - 22, width: 16, height: 16, class: "lock"}));
        g.appendChild(svg("text", {x: mx, y: my + 14, "text-anchor": "middle"},
          `${e.rate.toFixed(2)}/s${e.errorRate ? " · " + (e.errorRate * 100).toFixed(0) + "% err" : ""}`));
      }
      return g;
    }));
    graph.setAttribute("height", Math.max(200, maxY + 40));
    graph.setAttribute("viewBox", `0 0 ${Math.max(600, maxX + 20)} ${Math.max(200, maxY + 40)}`);
  }

  function nodeText(model, id) {
    const n = model.nodes.find(x => x.id === id);
    if (!n) return id;
    return n.kind === "outside" ? n.label : `${n.label}.${n.namespace}${n.kind === "service" ? " (service)" : ""}`;
  }

  function render(model) {
    drawGraph(model);
    fill("calls-table", model.edges.filter(e => e.kind === "call").map(e => row([
      nodeText(model, e.from), nodeText(model, e.to),
      {text: SECURITY_TEXT[e.security] || e.security, cls: `lock-${e.lock}`},
      e.rate.toFixed(2), `${(e.errorRate * 100).toFixed(1)}%`, e.reporter,
    ], {"data-edge-id": e.id, "data-lock": e.lock, "data-security": e.security})));
    fill("workloads-table", model.workloads.map(w => {
      const ports = w.portModes.length ? w.portModes.map(p => `${p.port}: ${p.mode}` +
        (p.source !== w.modeSource ? ` (${p.source})` : "")).join(", ") : "—";
      const authz = w.authorizationPolicies.length ?
        w.authorizationPolicies.map(p => `${p.action} ${p.namespace}/${p.name}${p.note ? " (" + p.note + ")" : ""}`).join(", ") : "none";
      return row([w.name, w.namespace, {text: w.mode || w.note, cls: `mode-${w.mode || "none"}`},
                  w.modeSource || "—", ports, authz],
                 {"data-workload": `${w.namespace}/${w.name}`, "data-mode": w.mode || "",
                  "data-plaintext-allowed": String(w.plaintextAllowed)});
    }));
    fill("authz-table", model.authorizationPolicies.map(p => row([
      p.namespace, p.name, p.action,
      p.selector === null ? (p.namespace === "istio-system" ? "mesh-wide" : "namespace-wide") :
        Object.entries(p.selector).map(([k, v]) => `${k}=${v}`).join(", "),
      [p.dryRun ? "dry run" : "", ...p.errors].filter(Boolean).join("; "),
    ], {"data-policy": `${p.namespace}/${p.name}`})));
    fill("proxies-table", model.proxies.map(p => row([p.name, p.type, {text: p.state, cls: `state-${p.state}`}, p.message],
      {"data-proxy": p.name, "data-state": p.state})));
    const calls = model.edges.filter(e => e.kind === "call").length;
    const telemetry = model.telemetry && model.telemetry.enabled ?
      `${model.telemetry.proxiesReporting} proxies reporting traffic` : "no traffic reports (meshd without a secure port)";
    const changed = model.meshVersion !== lastVersion && lastVersion !== null ? " Configuration changed." : "";
    lastVersion = model.meshVersion;
    // Announced (aria-live) only when it changes, not at every poll.
    const summary = `${model.proxies.length} proxies, ${calls} calls, ${telemetry}.${changed}`;
    if (summary !== status.textContent) status.textContent = summary;
    updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.meshVersion = model.meshVersion || "";
    document.body.dataset.generated = model.generated || "";
  }

  async function refresh() {
    try {
      const r = await fetch("/ui/model.json", {cache: "no-store"});
      if (!r.ok) throw new Error(`${r.status} ${r.statusText}: ${(await r.text()).trim()}`);
      render(await r.json());
    } catch (err) {
      status.textContent = `Could not update: ${err.message}`;
    } finally {
      if (!paused) timer = setTimeout(refresh, interval);
    }
  }
  pauseButton.addEventListener("click", () => {
    paused = !paused;
    pauseButton.setAttribute("aria-pressed", String(paused));
    pauseButton.textContent = paused ? "Resume live updates" : "Pause live updates";
    if (paused) clearTimeout(timer); else refresh();
  });
  refresh();
})();
