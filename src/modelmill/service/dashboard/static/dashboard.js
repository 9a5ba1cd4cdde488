/* Shared helpers for the dashboard pages (no framework; the session cookie carries the API key). */
"use strict";
const MM = {
  async api(path, options = {}) {
    const r = await fetch(path, { credentials: "same-origin", headers: { "Accept": "application/json", ...(options.body ? { "Content-Type": "application/json" } : {}) }, ...options });
    if (r.status === 401) { window.location = "/login?next=" + encodeURIComponent(location.pathname + location.search); throw new Error("not signed in"); }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) { throw new Error((body.error && body.error.message) || r.statusText); }
    return body;
  },
  el(tag, attrs = {}, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") e.className = v; else if (k === "text") e.textContent = v; else e.setAttribute(k, v === true ? "" : v);
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
    return e;
  },
  duration(s) {
    if (s === null || s === undefined) return "–";
    s = Math.round(s);
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  },
  tokens(n, estimated) {
    if (n === null || n === undefined) return "–";
    const txt = n >= 1e6 ? (n / 1e6).toFixed(2) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k" : String(n);
    return (estimated ? "≈" : "") + txt;
  },
  when(ts) { return ts ? new Date(ts * 1000).toLocaleString() : ""; },
  num(v) { return typeof v === "number" ? (Math.abs(v) >= 100 || Number.isInteger(v) ? String(v) : v.toFixed(4)) : String(v); },
  status(s) { return MM.el("span", { class: "status " + s, text: s }); },
  progress(row) {
    if (row.step === null || row.step === undefined || !row.total_steps) return "–";
    return `${row.step}/${row.total_steps}`;
  },
  terminal(status) { return ["succeeded", "failed", "cancelled"].includes(status); },
  /* Call fn now and every `ms` while it returns true (fn may be async); stops on false. */
  poll(fn, ms) {
    const tick = async () => {
      let again = true;
      try { again = await fn(); } catch (e) { console.error(e); }
      if (again !== false) setTimeout(tick, ms);
    };
    tick();
  },
};
