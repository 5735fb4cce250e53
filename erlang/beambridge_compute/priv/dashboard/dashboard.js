// The compute service's dashboard: polls GET /cluster every second and redraws in place.
//
// The token (when the service has one) is kept in this tab's sessionStorage and sent only
// as a bearer header to this origin: never a cookie, which a browser would attach on its
// own to requests other pages make (and, for localhost, to every port). It comes from the
// form, or once from the URL's fragment (#token=...; a fragment is never sent to a server),
// which is then removed from the address bar. Everything shown is set as text, never as
// HTML, and the page's Content-Security-Policy allows only this script.
"use strict";

(function () {
  const POLL_MS = 1000;
  // How many ended jobs to list: ?finished=N in the page's URL (the service caps it at 200).
  const FINISHED = Math.min(200, parseInt(new URLSearchParams(location.search).get("finished"), 10) || 50);
  const KEY = "beambridge-compute-token";
  const $ = (id) => document.getElementById(id);
  let timer = null;
  let rendered = false;

  function token() {
    return sessionStorage.getItem(KEY) || "";
  }

  function headers(extra) {
    const h = Object.assign({ Accept: "application/json" }, extra || {});
    if (token()) h.Authorization = "Bearer " + token();
    return h;
  }

  function takeFragmentToken() {
    const m = /^#token=(.*)$/.exec(location.hash);
    if (m) {
      sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
      history.replaceState(null, "", location.pathname + location.search);
    }
  }

  // -- formatting --------------------------------------------------------------------

  function bytes(n) {
    if (typeof n !== "number") return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + units[i];
  }

  function duration(ms) {
    if (typeof ms !== "number") return "";
    if (ms < 1000) return ms + " ms";
    const s = ms / 1000;
    if (s < 60) return s.toFixed(1) + " s";
    const m = Math.floor(s / 60);
    if (m < 60) return m + " min " + Math.floor(s % 60) + " s";
    return Math.floor(m / 60) + " h " + (m % 60) + " min";
  }

  function clock(ms) {
    return typeof ms === "number" ? new Date(ms).toLocaleTimeString() : "";
  }

  function text(v) {
    return v === null || v === undefined ? "" : String(v);
  }

  function el(tag, cls, content) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (content !== undefined) e.textContent = text(content);
    return e;
  }

  function badge(status) {
    return el("span", "badge " + text(status), status);
  }

  // Keyed rows: a row per id is kept across polls (an open stack stays open, a button
  // keeps its place), cells are rewritten only when their text changes.
  function sync(tbody, items, key, build, update) {
    const seen = new Set();
    const rows = new Map();
    for (const row of Array.from(tbody.rows)) rows.set(row.dataset.key, row);
    let before = tbody.firstChild;
    for (const item of items) {
      const k = key(item);
      seen.add(k);
      let row = rows.get(k);
      if (!row) {
        row = build(item);
        row.dataset.key = k;
      }
      update(row, item);
      if (row !== before) tbody.insertBefore(row, before);
      before = row.nextSibling;
    }
    for (const [k, row] of rows) if (!seen.has(k)) row.remove();
  }

  function setCell(cell, value) {
    const t = text(value);
    if (cell.textContent !== t) cell.textContent = t;
  }

  // A job row's first three cells (id, op, function) and its data attributes; its cells.
  function jobRow(tr, j) {
    tr.dataset.jobId = j.id;
    tr.dataset.status = j.status;
    const c = tr.cells;
    setCell(c[0], j.id);
    setCell(c[1], j.op);
    setCell(c[2], j.fun);
    return c;
  }

  // -- sections ----------------------------------------------------------------------

  function roleOf(n) {
    if (n.role === "peer") {
      const own = n.node_role ? " (" + n.node_role + ")" : "";
      const kind = n.kind === "python" ? "python" : n.kind === "erlang" ? "erlang" : "node";
      return kind + " peer" + own;
    }
    return n.role === "local" ? "worker (local)" : n.role === "remote" ? "worker (remote)" : text(n.role);
  }

  function renderNodes(nodes) {
    $("node-count").textContent = "(" + nodes.length + ")";
    sync($("nodes").tBodies[0], nodes, (n) => n.name, () => {
      const tr = el("tr");
      for (let i = 0; i < 9; i++) tr.appendChild(el("td", i >= 3 && i <= 7 ? "num" : ""));
      tr.cells[0].classList.add("mono");
      return tr;
    }, (tr, n) => {
      tr.dataset.node = n.name;
      tr.dataset.role = n.role;
      const c = tr.cells;
      setCell(c[0], n.name);
      setCell(c[1], roleOf(n));
      setCell(c[2], n.host || (n.role === "service" ? "" : ""));
      setCell(c[3], n.os_pid);
      setCell(c[4], n.run_queue);
      setCell(c[5], n.process_count);
      setCell(c[6], bytes(n.memory_bytes));
      const conns = Array.isArray(n.connections) ? n.connections : [];
      setCell(c[7], conns.length ? conns.length : "");
      c[7].title = conns.join("\n");
      const status = text(n.status);
      if (c[8].dataset.status !== status) {
        c[8].replaceChildren(badge(status));
        c[8].dataset.status = status;
      }
    });
  }

  function renderRunning(jobs) {
    $("running-count").textContent = "(" + jobs.length + ")";
    $("running-empty").hidden = jobs.length > 0;
    sync($("running").tBodies[0], jobs, (j) => j.id, (j) => {
      const tr = el("tr");
      tr.appendChild(el("td", "mono"));
      tr.appendChild(el("td"));
      tr.appendChild(el("td", "mono"));
      const bar = el("td");
      const wrap = el("div", "bar");
      const p = el("progress", "job-progress");
      wrap.appendChild(p);
      wrap.appendChild(el("span", "muted count"));
      bar.appendChild(wrap);
      tr.appendChild(bar);
      tr.appendChild(el("td", "num"));
      const act = el("td");
      const b = el("button", "cancel", "cancel");
      b.type = "button";
      b.dataset.id = j.id;
      act.appendChild(b);
      tr.appendChild(act);
      return tr;
    }, (tr, j) => {
      const c = jobRow(tr, j);
      const done = (j.progress && j.progress.done) || 0;
      const total = (j.progress && j.progress.total) || 0;
      const p = c[3].querySelector("progress");
      p.max = Math.max(total, 1);
      p.value = done;
      p.dataset.done = done;
      p.dataset.total = total;
      setCell(c[3].querySelector(".count"), done + " / " + total);
      setCell(c[4], duration(j.elapsed_ms));
    });
  }

  function stackText(error) {
    const frames = (error && error.stack) || [];
    return frames.map((f) => {
      if (f.raw) return f.raw;
      const at = f.file ? " (" + f.file + (f.line ? ":" + f.line : "") + ")" : "";
      return f.module + ":" + f.function + "/" + f.arity + at;
    }).join("\n");
  }

  function reasonOf(j) {
    if (j.error) return text(j.error.kind) + ": " + text(j.error.reason);
    return text(j.reason);
  }

  function renderFinished(jobs) {
    $("finished-count").textContent = "(last " + jobs.length + ")";
    $("finished-empty").hidden = jobs.length > 0;
    sync($("finished").tBodies[0], jobs, (j) => j.id, () => {
      const tr = el("tr");
      tr.appendChild(el("td", "mono"));
      tr.appendChild(el("td"));
      tr.appendChild(el("td", "mono"));
      tr.appendChild(el("td"));
      tr.appendChild(el("td", "num"));
      tr.appendChild(el("td"));
      tr.appendChild(el("td", "wrap reason"));
      return tr;
    }, (tr, j) => {
      const c = jobRow(tr, j);
      if (c[3].dataset.status !== j.status) {
        c[3].replaceChildren(badge(j.status));
        c[3].dataset.status = j.status;
      }
      setCell(c[4], duration(j.duration_ms));
      setCell(c[5], clock(j.finished));
      const reason = reasonOf(j);
      const stack = stackText(j.error);
      const shown = reason + "\u0000" + stack;
      if (c[6].dataset.shown !== shown) {
        c[6].dataset.shown = shown;
        if (stack) {
          const d = el("details");
          d.appendChild(el("summary", "", reason));
          d.appendChild(el("pre", "mono stack", stack));
          c[6].replaceChildren(d);
        } else {
          c[6].textContent = reason;
        }
      }
    });
  }

  function renderChart(throughput) {
    const svg = $("chart");
    const buckets = (throughput && throughput.buckets) || [];
    const W = 600, H = 90, n = Math.max(buckets.length, 1);
    const sum = (b) => b.done + b.failed + (b.cancelled || 0);
    const max = Math.max(1, ...buckets.map(sum));
    const w = W / n;
    const ns = "http://www.w3.org/2000/svg";
    const frag = document.createDocumentFragment();
    let total = 0, failed = 0;
    buckets.forEach((b, i) => {
      total += sum(b);
      failed += b.failed;
      let y = H;
      for (const cls of ["done", "failed", "cancelled"]) {
        const h = ((b[cls] || 0) / max) * (H - 4);
        if (h <= 0) continue;
        y -= h;
        const r = document.createElementNS(ns, "rect");
        r.setAttribute("class", cls);
        r.setAttribute("x", (i * w + 0.5).toFixed(1));
        r.setAttribute("y", y.toFixed(1));
        r.setAttribute("width", Math.max(w - 1, 0.5).toFixed(1));
        r.setAttribute("height", h.toFixed(1));
        const t = document.createElementNS(ns, "title");
        t.textContent = clock(b.t) + ": " + b.done + " done, " + b.failed + " failed, " +
          (b.cancelled || 0) + " cancelled";
        r.appendChild(t);
        frag.appendChild(r);
      }
    });
    svg.replaceChildren(frag);
    $("throughput-total").textContent = "(" + total + " jobs in 5 min, " + failed + " failed; at most " +
      max + " per 5 s)";
  }

  function render(c) {
    $("service").textContent = c.node;
    renderNodes(c.nodes || []);
    renderRunning(c.running || []);
    renderFinished(c.finished || []);
    renderChart(c.throughput);
    if (!rendered) {
      rendered = true;
      performance.mark("bbc-first-render");
      document.body.dataset.ready = "true";
    }
  }

  function state(name, label) {
    const s = $("state");
    s.dataset.state = name;
    s.textContent = label;
  }

  // -- polling and actions -----------------------------------------------------------

  async function poll() {
    clearTimeout(timer);
    try {
      const r = await fetch("/cluster?finished=" + FINISHED, { headers: headers(), cache: "no-store" });
      if (r.status === 401) {
        askToken(token() ? "the token was refused" : "");
        return;
      }
      const body = await r.json();
      if (!r.ok) throw new Error(body.reason || ("HTTP " + r.status));
      $("login").hidden = true;
      $("main").hidden = false;
      $("forget").hidden = !token();
      render(body);
      state("live", "live · " + new Date().toLocaleTimeString());
    } catch (e) {
      state("error", "no answer: " + e.message);
    }
    timer = setTimeout(poll, POLL_MS);
  }

  function askToken(message) {
    $("main").hidden = true;
    $("login").hidden = false;
    $("forget").hidden = true;
    const err = $("login-error");
    err.hidden = !message;
    err.textContent = message;
    state("error", "token needed");
    $("token").focus();
  }

  async function cancel(id, button) {
    button.disabled = true;
    button.textContent = "cancelling";
    try {
      // DELETE as application/json: what the service asks of every DELETE (no form can).
      const r = await fetch("/jobs/" + encodeURIComponent(id), {
        method: "DELETE", headers: headers({ "Content-Type": "application/json" }) });
      if (!r.ok) {
        const body = await r.json().catch(() => ({}));
        throw new Error(body.reason || ("HTTP " + r.status));
      }
    } catch (e) {
      button.disabled = false;
      button.textContent = "cancel";
      state("error", "cancel failed: " + e.message);
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", () => {
    takeFragmentToken();
    $("login").addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(KEY, $("token").value.trim());
      $("token").value = "";
      poll();
    });
    $("forget").addEventListener("click", () => {
      sessionStorage.removeItem(KEY);
      askToken("");
    });
    $("running").addEventListener("click", (ev) => {
      const b = ev.target.closest("button.cancel");
      if (b) cancel(b.dataset.id, b);
    });
    poll();
  });
})();
