/* The pages' behaviour: the live board (index.html) and one execution (execution.html).
 *
 * Both follow the server's event stream (/api/events, server-sent events): the board page gets a snapshot
 * of the board, then each changed row and each new fill; the execution page gets the execution's history
 * from the log, then each new message and the picture drawn again (chart.js). Numbers are shown as the
 * messages carry them (decimal strings); Number() only for the progress bar and the time left.
 */
"use strict";

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.appendChild(typeof child === "string" || typeof child === "number" ? document.createTextNode(String(child)) : child);
  }
  return node;
}

const dash = (v) => (v === undefined || v === null || v === "" ? "–" : String(v));

function clockOf(ns) {
  if (!ns) return "–";
  const d = new Date(Number(ns) / 1e6);
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function seconds(ns) {
  const s = Number(ns) / 1e9;
  return s < 10 ? s.toFixed(2) + " s" : s < 120 ? s.toFixed(1) + " s" : Math.round(s / 60) + " min";
}

function intentLink(id) {
  return h("a", { href: "/executions/" + encodeURIComponent(id), class: "intent" }, id);
}

function statusCell(row) {
  const status = row.status || row.phase;
  return h("td", { class: "status", "data-status": status, "data-phase": row.phase }, status);
}

/** EventSource with the connection state shown in #conn; `handlers` maps event names to functions. */
function follow(url, handlers) {
  const conn = document.getElementById("conn");
  const show = (state, text) => { conn.dataset.state = state; conn.textContent = text; };
  const source = new EventSource(url);
  source.onopen = () => show("live", "live");
  source.onerror = () => show("reconnecting", source.readyState === EventSource.CLOSED ? "disconnected" : "reconnecting");
  for (const [name, fn] of Object.entries(handlers)) {
    source.addEventListener(name, (ev) => fn(JSON.parse(ev.data)));
  }
  return source;
}

/** Calls `fn` once per animation frame at most, however often it is asked. */
function batched(fn) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => { queued = false; fn(); });
  };
}

// -- the board ----------------------------------------------------------------------------------------

function boardPage() {
  const rows = new Map();   // intent_id -> ExecutionRow (as JSON)
  let fills = [];
  const TAPE = 200;

  function inflightRow(r) {
    const pct = Number(r.qty) > 0 ? Math.min(100, (100 * Number(r.filled)) / Number(r.qty)) : 0;
    const left = r.deadline_ns ? (Number(r.deadline_ns) - Date.now() * 1e6) : null;
    return h("tr", { dataset: { intent: r.intent_id } },
      h("td", {}, intentLink(r.intent_id)), h("td", {}, dash(r.strategy)), h("td", { class: r.side }, dash(r.side)),
      h("td", { class: "num" }, dash(r.qty)), h("td", { class: "num", "data-field": "filled" }, dash(r.filled)),
      h("td", {}, h("span", { class: "bar" }, h("span", { style: `width:${pct.toFixed(1)}%` }))),
      statusCell(r), h("td", { class: "num" }, dash(r.attempt)),
      h("td", { class: "num" }, r.working_price ?? (r.working_order ? "market" : "–")),
      h("td", { class: "num" }, dash(r.bid)), h("td", { class: "num" }, dash(r.ask)),
      h("td", { class: "num" }, dash(r.avg_price ?? (Number(r.filled) ? "" : null))),
      h("td", { class: "num" }, dash(r.slippage_bps)),
      h("td", { class: "num", "data-deadline": r.deadline_ns || "" }, left === null ? "–" : left > 0 ? seconds(left) : "over"));
  }

  function finishedRow(r) {
    return h("tr", { dataset: { intent: r.intent_id } },
      h("td", {}, intentLink(r.intent_id)), h("td", {}, dash(r.strategy)), h("td", { class: r.side }, dash(r.side)),
      h("td", { class: "num" }, dash(r.qty)), h("td", { class: "num", "data-field": "filled" }, dash(r.filled)),
      statusCell(r), h("td", { class: "num" }, dash(r.attempt) + (r.fallback_used ? " +F" : "")),
      h("td", { class: "num" }, dash(r.avg_price)), h("td", { class: "num" }, dash(r.slippage_bps)),
      h("td", { class: "num" }, r.fees && r.fees !== "0" ? `${r.fees} ${r.fee_currency}` : "–"),
      h("td", { class: "num" }, r.finished_ns && r.started_ns ? seconds(r.finished_ns - r.started_ns) : "–"),
      h("td", {}, clockOf(r.finished_ns)), h("td", { class: "reason", title: r.reason || "" }, dash(r.reason)));
  }

  function fillRow(f) {
    return h("tr", { dataset: { intent: f.intent_id } },
      h("td", {}, clockOf(f.logged_ns)), h("td", {}, intentLink(f.intent_id)), h("td", {}, f.client_order_id),
      h("td", { class: f.side }, f.side), h("td", { class: "num" }, f.qty), h("td", { class: "num" }, f.price),
      h("td", { "data-liquidity": f.liquidity }, f.liquidity), h("td", { class: "num" }, `${f.fee} ${f.fee_currency}`));
  }

  function fill(id, items, make) {
    document.querySelector(`#${id} tbody`).replaceChildren(...items.map(make));
    const count = document.getElementById(`${id === "tape" ? "fills" : id}-count`);
    count.textContent = String(items.length);
    document.getElementById(`${id === "tape" ? "fills" : id}-empty`).hidden = items.length > 0;
  }

  const render = batched(() => {
    const all = [...rows.values()];
    const done = (r) => r.phase === "finished" || r.phase === "rejected";
    fill("inflight", all.filter((r) => !done(r)).sort((a, b) => b.started_ns - a.started_ns), inflightRow);
    fill("finished", all.filter(done).sort((a, b) => b.finished_ns - a.finished_ns), finishedRow);
    fill("tape", fills, fillRow);
  });

  follow("/api/events?board=1&records=0", {
    snapshot(snap) {
      rows.clear();
      for (const r of [...snap.in_flight, ...snap.finished]) rows.set(r.intent_id, r);
      fills = snap.fills.slice(0, TAPE);
      render();
    },
    row(r) { rows.set(r.intent_id, r); render(); },
    fill(f) { fills.unshift(f); if (fills.length > TAPE) fills.length = TAPE; render(); },
  });
  setInterval(render, 1000);  // the time left
}

// -- one execution ------------------------------------------------------------------------------------

const ROUTING = new Set(["type", "intent_id", "venue", "symbol", "msg_id", "ts_event", "ts_init", "epoch", "params"]);

function details(data) {
  const parts = [];
  for (const [k, v] of Object.entries(data || {})) {
    if (ROUTING.has(k) || v === null || v === "" || v === false || (Array.isArray(v) && !v.length)) continue;
    const text = typeof v === "object" ? JSON.stringify(v) : String(v);
    parts.push(h("span", { class: "kv" }, h("span", { class: "k" }, k + "="), text));
  }
  return parts;
}

function executionPage() {
  const intent = decodeURIComponent(location.pathname.split("/").filter(Boolean).pop() || "");
  document.getElementById("intent-id").textContent = intent;
  document.title = `execbus: ${intent}`;
  const svg = document.getElementById("chart");
  const body = document.querySelector("#timeline tbody");
  const seen = new Set();
  let start = null;

  function addRecord(rec) {
    if (seen.has(rec.seq)) return;
    seen.add(rec.seq);
    const at = Number((rec.data && rec.data.ts_event) || rec.time_ns);
    if (start === null) start = at;
    body.appendChild(h("tr", { dataset: { seq: rec.seq, type: rec.type } },
      h("td", { class: "num" }, ((at - start) / 1e6).toFixed(3)), h("td", { class: "num" }, rec.seq),
      h("td", { class: "type" }, rec.type || "?"), h("td", { class: "details" }, details(rec.data))));
    document.getElementById("records-count").textContent = String(seen.size);
  }

  function showPicture(pic) {
    ExecChart.draw(svg, pic);
    if (!pic) return;
    document.getElementById("title").textContent = pic.title;
    document.getElementById("subtitle").textContent = pic.subtitle;
    document.getElementById("footnote").textContent = pic.footnote || "";
    const info = pic.info || {};
    const facts = [["status", info.status], ["strategy", info.strategy], ["side", info.side], ["qty", info.qty],
                   ["filled", info.filled_qty], ["avg price", info.avg_price], ["slippage bps", info.slippage_bps],
                   ["fees", info.fees !== undefined ? `${info.fees} ${info.fee_currency || ""}` : undefined],
                   ["attempts", info.attempts], ["venue", info.venue], ["symbol", info.symbol]];
    document.getElementById("facts").replaceChildren(...facts.filter(([, v]) => v !== undefined && v !== null && v !== "")
      .flatMap(([k, v]) => [h("dt", {}, k), k === "status" ? h("dd", { class: "status", "data-status": v }, String(v)) : h("dd", {}, String(v))]));
    document.getElementById("legend").replaceChildren(...ExecChart.legend(pic).map((item) =>
      h("li", { "data-kind": item.kind }, h("span", { class: "swatch", style: `background:${item.colour}` }), item.label)));
  }

  follow(`/api/events?intent=${encodeURIComponent(intent)}&picture=1`, {
    execution(ex) {
      const missing = document.getElementById("missing");
      missing.hidden = ex.records.length > 0;
      missing.textContent = `No execution ${intent} in the log (yet): waiting for its messages.`;
      body.replaceChildren();
      seen.clear();
      start = null;
      ex.records.forEach(addRecord);
      showPicture(ex.picture);
    },
    record(rec) { document.getElementById("missing").hidden = true; addRecord(rec); },
    picture: showPicture,
  });
}

if (document.body.dataset.page === "board") boardPage();
else if (document.body.dataset.page === "execution") executionPage();
