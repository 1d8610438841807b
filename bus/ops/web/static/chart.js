/* The execution chart, drawn as SVG by this file alone (no library).
 *
 * ExecChart.draw(svg, picture) draws one `picture_json` (bus/ops/picture.py): the touch as step lines
 * (bid, ask), the arrival mid, our order per attempt as a horizontal segment at its limit price (a market
 * order: a vertical dash-dot line), our fills as dots (maker: circle, taker: cross; size ~ qty) and events
 * (timeouts, the fallback, the end) as vertical dashed markers. Prices arrive as decimal strings: Number()
 * is used only to place things; the strings themselves are what the tooltips show.
 *
 * Every element a test may count carries data-kind: bid, ask, mid, arrival-mid, order, fill, fill-label,
 * event (and data-attempt, data-liquidity, data-event where they apply).
 */
"use strict";
(function (global) {
  const SVG = "http://www.w3.org/2000/svg";
  const W = 960, H = 440;
  const M = { left: 92, right: 18, top: 16, bottom: 44 };
  const ATTEMPT_COLOURS = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22"];
  const FALLBACK_COLOUR = "#e377c2";
  const EVENT_COLOURS = {
    timeout: "#7f7f7f", kept: "#17becf", fallback: "#e377c2", canceled: "#d62728", finished: "#555555", done: "#000000",
  };

  function el(name, attrs, parent, text) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) node.setAttribute(k, String(v));
    }
    if (text !== undefined) node.textContent = text;
    if (parent) parent.appendChild(node);
    return node;
  }

  function tip(node, text) {
    el("title", {}, node, text);
    return node;
  }

  function niceStep(span, count) {
    const raw = span / count;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  }

  function ticks(lo, hi, count) {
    const step = niceStep(hi - lo, count);
    const values = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) values.push(v);
    const places = Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    return values.map((v) => ({ v, text: v.toFixed(places) }));
  }

  function orderColour(order, index) {
    return order.fallback ? FALLBACK_COLOUR : ATTEMPT_COLOURS[index % ATTEMPT_COLOURS.length];
  }

  /** The legend's entries for a picture: [{kind, colour, label}]. */
  function legend(pic) {
    if (!pic) return [];
    const items = [];
    if ((pic.quotes || []).length) {
      items.push({ kind: "bid", colour: "#2ca02c", label: `best bid (${pic.quote_label || "touch"})` });
      items.push({ kind: "ask", colour: "#d62728", label: `best ask (${pic.quote_label || "touch"})` });
    }
    if (pic.arrival_mid !== null && pic.arrival_mid !== undefined) {
      items.push({ kind: "arrival-mid", colour: "#000000", label: `arrival mid ${pic.arrival_mid}` });
    }
    (pic.orders || []).forEach((o, i) => items.push({ kind: "order", colour: orderColour(o, i), label: o.label }));
    if ((pic.fills || []).some((f) => f.liquidity !== "label")) {
      items.push({ kind: "fill", colour: "#000000", label: "our fill (circle: maker, cross: taker; size ~ qty)" });
    }
    return items;
  }

  function draw(svg, pic) {
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    if (!pic || !((pic.quotes || []).length || (pic.orders || []).length || (pic.events || []).length)) {
      el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" }, svg, "nothing to draw yet");
      return;
    }
    const quotes = (pic.quotes || []).map((q) => ({ t: Number(q.t_s), bid: Number(q.bid), ask: Number(q.ask), raw: q }));
    const orders = pic.orders || [];
    const marks = (pic.fills || []).filter((f) => f.liquidity !== "label");
    const labels = (pic.fills || []).filter((f) => f.liquidity === "label");
    const events = pic.events || [];
    const info = pic.info || {};

    // x: seconds since arrival; y: price
    const times = [0, Number(info.end_s) || 0];
    quotes.forEach((q) => times.push(q.t));
    orders.forEach((o) => times.push(Number(o.start_s), Number(o.end_s)));
    (pic.fills || []).forEach((f) => times.push(Number(f.t_s)));
    events.forEach((e) => times.push(Number(e.t_s)));
    let x0 = Math.min(...times), x1 = Math.max(...times);
    if (x1 - x0 < 1e-3) x1 = x0 + 1;
    const xpad = (x1 - x0) * 0.03;
    x0 -= xpad; x1 += xpad;

    const prices = [];
    quotes.forEach((q) => prices.push(q.bid, q.ask));
    orders.forEach((o) => { if (o.price !== null && o.price !== undefined) prices.push(Number(o.price)); });
    (pic.fills || []).forEach((f) => prices.push(Number(f.price)));
    if (pic.arrival_mid !== null && pic.arrival_mid !== undefined) prices.push(Number(pic.arrival_mid));
    const finite = prices.filter((p) => Number.isFinite(p));
    let y0 = finite.length ? Math.min(...finite) : 0, y1 = finite.length ? Math.max(...finite) : 1;
    const ypad = y1 - y0 > 0 ? (y1 - y0) * 0.12 : Math.max(Math.abs(y1) * 1e-4, 1e-9);
    y0 -= ypad; y1 += ypad;

    const X = (t) => M.left + ((t - x0) / (x1 - x0)) * (W - M.left - M.right);
    const Y = (p) => H - M.bottom - ((p - y0) / (y1 - y0)) * (H - M.top - M.bottom);
    const end = Math.max(Number(info.end_s) || 0, ...times.filter((t) => Number.isFinite(t)));

    // axes and grid
    const axes = el("g", { "data-kind": "axes", class: "axes" }, svg);
    for (const tk of ticks(x0, x1, 8)) {
      el("line", { x1: X(tk.v), x2: X(tk.v), y1: M.top, y2: H - M.bottom, class: "grid" }, axes);
      el("text", { x: X(tk.v), y: H - M.bottom + 16, "text-anchor": "middle", class: "tick" }, axes, tk.text);
    }
    for (const tk of ticks(y0, y1, 6)) {
      el("line", { x1: M.left, x2: W - M.right, y1: Y(tk.v), y2: Y(tk.v), class: "grid" }, axes);
      el("text", { x: M.left - 6, y: Y(tk.v) + 4, "text-anchor": "end", class: "tick" }, axes, tk.text);
    }
    el("rect", { x: M.left, y: M.top, width: W - M.left - M.right, height: H - M.top - M.bottom, class: "frame" }, axes);
    el("text", { x: (M.left + W - M.right) / 2, y: H - 8, "text-anchor": "middle", class: "axis-label" }, axes,
       pic.x_label || "seconds");
    el("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle", class: "axis-label",
                 transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` }, axes, "price");

    const plot = el("g", { class: "plot" }, svg);
    // the touch: step lines held until the next quote, to the end
    if (quotes.length) {
      for (const side of ["bid", "ask"]) {
        let d = `M${X(quotes[0].t)},${Y(quotes[0][side])}`;
        for (let i = 1; i < quotes.length; i++) d += ` H${X(quotes[i].t)} V${Y(quotes[i][side])}`;
        d += ` H${X(end)}`;
        tip(el("path", { d, "data-kind": side, class: `quote ${side}` }, plot),
            `${side}: ` + quotes.map((q) => `${q.raw[side]} @ ${q.t.toFixed(3)} s`).join(", "));
      }
      let d = `M${X(quotes[0].t)},${Y((quotes[0].bid + quotes[0].ask) / 2)}`;
      for (let i = 1; i < quotes.length; i++) d += ` H${X(quotes[i].t)} V${Y((quotes[i].bid + quotes[i].ask) / 2)}`;
      el("path", { d: d + ` H${X(end)}`, "data-kind": "mid", class: "quote mid" }, plot);
    }
    if (pic.arrival_mid !== null && pic.arrival_mid !== undefined) {
      const y = Y(Number(pic.arrival_mid));
      tip(el("line", { x1: M.left, x2: W - M.right, y1: y, y2: y, "data-kind": "arrival-mid", class: "arrival" }, plot),
          `arrival mid ${pic.arrival_mid}`);
    }
    // our orders, one per attempt (and the fallback's)
    orders.forEach((o, i) => {
      const colour = orderColour(o, i);
      const attrs = { "data-kind": "order", "data-attempt": o.attempt, "data-order": o.client_order_id,
                      "data-order-type": o.kind, "data-fallback": o.fallback ? "1" : "0", stroke: colour };
      const xs = X(Number(o.start_s));
      let node;
      if (o.price !== null && o.price !== undefined) {
        const xe = Math.max(X(Number(o.end_s)), xs + 6);  // an order filled at once still shows
        const y = Y(Number(o.price));
        node = el("line", { ...attrs, x1: xs, x2: xe, y1: y, y2: y, class: "order limit" }, plot);
      } else {
        node = el("line", { ...attrs, x1: xs, x2: xs, y1: M.top, y2: H - M.bottom, class: "order market" }, plot);
      }
      tip(node, o.label + (o.status ? ` (${o.status})` : ""));
    });
    // events: vertical markers with their label at the top
    const placed = [];  // x of the labels so far: a label that would touch one moves left
    events.forEach((e) => {
      const x = X(Number(e.t_s));
      const colour = EVENT_COLOURS[e.kind] || "#7f7f7f";
      const g = el("g", { "data-kind": "event", "data-event": e.kind }, plot);
      el("line", { x1: x, x2: x, y1: M.top, y2: H - M.bottom, stroke: colour, class: "event" }, g);
      let tx = x - 4;
      while (placed.some((px) => Math.abs(px - tx) < 13)) tx -= 13;
      placed.push(tx);
      el("text", { x: tx, y: M.top + 6, fill: colour, class: "event-label", "text-anchor": "end",
                   transform: `rotate(-90 ${tx} ${M.top + 6})` }, g, e.label);
      tip(g, `${e.label} @ ${Number(e.t_s).toFixed(3)} s`);
    });
    // fills: size ~ qty
    const top = Math.max(1e-12, ...marks.map((f) => Number(f.qty) || 0));
    marks.forEach((f) => {
      const x = X(Number(f.t_s)), y = Y(Number(f.price));
      const r = 4 + 7 * Math.sqrt((Number(f.qty) || 0) / top);
      const attrs = { "data-kind": "fill", "data-liquidity": f.liquidity, class: `fill ${f.liquidity}` };
      const node = f.liquidity === "taker"
        ? el("path", { ...attrs, d: `M${x - r},${y - r} L${x + r},${y + r} M${x - r},${y + r} L${x + r},${y - r}` }, plot)
        : el("circle", { ...attrs, cx: x, cy: y, r }, plot);
      tip(node, `fill ${f.qty} @ ${f.price} (${f.liquidity}) at ${Number(f.t_s).toFixed(3)} s`);
    });
    labels.forEach((f) => {
      const x = X(Number(f.t_s)), y = Y(Number(f.price));
      const anchor = x > W * 0.7 ? "end" : "start";
      const below = y < M.top + 90;  // clear of the event labels along the top
      el("text", { x: anchor === "end" ? x - 16 : x + 12, y: below ? y + 26 : y - 14, "text-anchor": anchor,
                   "data-kind": "fill-label", class: "fill-label" }, plot, f.label);
    });
  }

  global.ExecChart = { draw, legend };
})(window);
