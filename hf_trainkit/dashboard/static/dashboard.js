// hf-trainkit dashboard: polls /api/data about every second for what is new (paused while the tab is hidden),
// draws with uPlot (vendored, MIT), acts only through POST /api/save and /api/stop (live-control request files).
"use strict";
(function () {
  const POLL_MS = 1000, DETAILS_MS = 4000;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];
  const DASHES = [[], [6, 3], [2, 2], [8, 3, 2, 3]];
  const GROUPS = [
    {id: "main", title: "Reward / loss", match: (k, run) => k === run.primary || k === "eval_loss"},
    {id: "eval", title: "Eval metrics and pass@k", match: k => (k.startsWith("eval_") && k !== "eval_loss" &&
      !/(runtime|per_second)$/.test(k)) || k.includes("pass@")},
    {id: "lr", title: "Learning rate", match: k => k === "learning_rate"},
    {id: "grad", title: "Grad norm", match: k => k === "grad_norm"},
    {id: "modes", title: "Mode metrics (kept / positive / negative)",
      match: k => /(kept_ratio|positive_ratio|negative_ratio|pos_neg_ratio)$/.test(k)},
  ];

  const params = new URLSearchParams(location.search);
  if (params.get("token")) {
    sessionStorage.setItem("hfTrainkitToken", params.get("token"));
    history.replaceState(null, "", location.pathname);  // the token leaves the address bar (and the history)
  }
  let token = sessionStorage.getItem("hfTrainkitToken") || "";
  const runs = [];  // {id, label, generation, cursor, series: key -> {x, e, t, y}, state, line, primary, loading}
  const charts = {};  // group id -> {plot, signature, zoomed}
  let connected = false, polling = null, lastDetails = 0, readOnly = false;
  const $ = id => document.getElementById(id);

  function api(path, options) {
    const headers = Object.assign({"Authorization": "Bearer " + token}, (options || {}).headers || {});
    return fetch(path, Object.assign({}, options || {}, {headers: headers, cache: "no-store"})).then(response =>
      response.json().catch(() => ({error: "HTTP " + response.status})).then(body => {
        if (response.status === 401) { showLogin(body.error || "wrong token"); throw new Error("unauthorized"); }
        if (!response.ok) { const e = new Error(body.error || ("HTTP " + response.status)); e.status = response.status;
          throw e; }
        return body;
      }));
  }

  function showLogin(message) {
    clearTimeout(polling);
    $("main").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = "Login failed: " + message;
    $("connection").textContent = "not logged in";
  }

  $("login-form").addEventListener("submit", event => {
    event.preventDefault();
    token = $("login-token").value.trim();
    sessionStorage.setItem("hfTrainkitToken", token);
    $("login").hidden = true;
    start();
  });

  // --- data -----------------------------------------------------------------------------------------------------
  function merge(run, update) {
    // A run the server is still reading a first time: its state now, its curves once read (the cursor stays null,
    // so the poll after that is a new client's and gets every series).
    run.loading = update.loading ? (update.loaded_fraction || 0) : null;
    if (update.loading) { run.state = update.state; return; }
    if (update.reset) run.series = {};
    for (const [key, column] of Object.entries(update.series)) {
      const mine = run.series[key];
      if (!mine || update.reset) { run.series[key] = column; continue; }
      for (const name of ["x", "e", "t", "y"]) Array.prototype.push.apply(mine[name], column[name]);
    }
    run.generation = update.generation;
    run.cursor = update.cursor;
    run.state = update.state;
    run.line = update.line;
    run.primary = (update.line && update.line.metric) || ("reward" in run.series ? "reward" : "loss");
  }

  function poll() {
    clearTimeout(polling);
    if (document.hidden) return;  // resumed by visibilitychange
    const cursors = runs.map(r => r.cursor === null ? "" : r.generation + ":" + r.cursor).join(",");
    const points = Math.max(200, Math.min(4000, Math.round(window.innerWidth * (window.devicePixelRatio || 1))));
    api("/api/data?points=" + points + "&c=" + encodeURIComponent(cursors)).then(body => {
      body.runs.forEach(update => merge(runs[update.id], update));
      setConnected(true);
      render();
      if (Date.now() - lastDetails > DETAILS_MS) { lastDetails = Date.now(); details(); }
      polling = setTimeout(poll, POLL_MS);
    }).catch(error => {
      if (error.message === "unauthorized") return;
      setConnected(false, error.message);
      polling = setTimeout(poll, 3 * POLL_MS);
    });
  }

  function setConnected(ok, why) {
    connected = ok;
    const loading = runs.filter(r => r.loading !== null).length;
    $("connection").textContent = ok ? "live · updated " + new Date().toLocaleTimeString() +
      (loading ? " · reading " + loading + " of " + runs.length + " run(s)" : "")
      : "dashboard server not reachable (" + why + "): showing the last state";
    $("connection").className = ok ? "muted" : "error";
    if (!ok) updateActions();
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });

  // --- drawing --------------------------------------------------------------------------------------------------
  function ema(values, weight) {  // TensorBoard's debiased EMA (the monitor's --smooth), nulls skipped
    if (!(weight > 0)) return values;
    let last = 0, count = 0;
    return values.map(v => {
      if (v === null || !isFinite(v)) return v;
      last = last * weight + (1 - weight) * v;
      count += 1;
      return last / (1 - Math.pow(weight, count));
    });
  }

  function groupSeries(group) {
    const out = [];
    runs.forEach((run, r) => {
      Object.keys(run.series).sort().filter(k => group.match(k, run)).forEach((key, k) => {
        out.push({run: r, key: key, label: (runs.length > 1 ? run.label + " " : "") + key,
                  color: COLORS[r % COLORS.length], dash: DASHES[k % DASHES.length]});
      });
    });
    return out;
  }

  function chartData(list, axis, smoothing, detail) {
    const tables = list.map(s => {
      const zoomed = detail && detail[s.run] && detail[s.run][s.key];
      const column = zoomed ? mergedDetail(zoomed, runs[s.run].series[s.key], axis) : runs[s.run].series[s.key];
      const xs = [], ys = [];
      const t0 = axis === "t" ? firstTime(runs[s.run]) : 0;
      for (let i = 0; i < column.y.length; i++) {
        const x = column[axis][i];
        if (x === null || x === undefined) continue;
        if (xs.length && x <= xs[xs.length - 1]) continue;  // uPlot needs increasing x
        xs.push(axis === "t" ? (x - t0) / 60 : x);
        ys.push(column.y[i]);
      }
      return [xs, ys, ema(ys, smoothing)];
    });
    const joined = uPlot.join(tables.flatMap(([xs, ys, smooth]) => smoothing > 0 ? [[xs, ys], [xs, smooth]]
      : [[xs, ys]]));
    return joined;
  }

  function mergedDetail(zoomed, live, axis) {
    // The zoomed window in detail, then whatever arrived live after it.
    const last = zoomed[axis].length ? zoomed[axis][zoomed[axis].length - 1] : -Infinity;
    const out = {x: zoomed.x.slice(), e: zoomed.e.slice(), t: zoomed.t.slice(), y: zoomed.y.slice()};
    for (let i = 0; i < live.y.length; i++) {
      if (live[axis][i] !== null && live[axis][i] > last) for (const n of ["x", "e", "t", "y"]) out[n].push(live[n][i]);
    }
    return out;
  }

  function zoom(groupId, low, high) {
    // Show [low, high] of the x axis, fetched again from the server in full detail (the overview is thinned).
    const holder = charts[groupId];
    if (!holder) return Promise.resolve();
    holder.zoomed = true;
    holder.range = [low, high];
    const axis = $("x-axis").value, list = groupSeries(GROUPS.find(g => g.id === groupId));
    const t0 = {};
    const points = Math.max(200, Math.round(holder.div.clientWidth * (window.devicePixelRatio || 1)));
    const requests = [...new Set(list.map(s => s.run))].map(r => {
      const keys = list.filter(s => s.run === r).map(s => s.key);
      t0[r] = axis === "t" ? firstTime(runs[r]) : 0;
      const scale = v => axis === "t" ? t0[r] + v * 60 : v;
      return api("/api/window?run=" + r + "&axis=" + axis + "&from=" + scale(low) + "&to=" + scale(high) +
                 "&points=" + points + "&keys=" + encodeURIComponent(keys.join(","))).then(body => [r, body.series]);
    });
    return Promise.all(requests).then(results => {
      if (!holder.zoomed) return;
      holder.detail = Object.fromEntries(results);
      render();
      holder.plot.setScale("x", {min: low, max: high});
    }).catch(() => {});
  }

  function unzoom(holder) { holder.zoomed = false; holder.detail = null; holder.range = null; }

  function firstTime(run) {
    let first = Infinity;
    for (const column of Object.values(run.series)) for (const t of column.t) if (t !== null) { first = Math.min(first, t); break; }
    return isFinite(first) ? first : 0;
  }

  function render() {
    renderRuns();
    const axis = $("x-axis").value, smoothing = parseFloat($("smoothing").value);
    const width = Math.max(320, Math.min(900, $("charts").clientWidth / (window.innerWidth > 1200 ? 2 : 1) - 16));
    for (const group of GROUPS) {
      const list = groupSeries(group);
      let holder = charts[group.id];
      if (!list.length) { if (holder) { holder.plot.destroy(); holder.div.remove(); delete charts[group.id]; } continue; }
      const data = chartData(list, axis, smoothing, holder && holder.zoomed ? holder.detail : null);
      const signature = list.map(s => s.label).join("|") + axis + (smoothing > 0);
      if (holder && holder.signature !== signature) { holder.plot.destroy(); holder.div.remove(); holder = null; }
      if (!holder) {
        const div = document.createElement("div");
        div.className = "chart";
        div.dataset.group = group.id;
        $("charts").appendChild(div);
        const series = [{label: {x: "step", e: "epoch", t: "minutes"}[axis]}];
        list.forEach(s => {
          series.push({label: s.label + (smoothing > 0 ? " (raw)" : ""), stroke: s.color + (smoothing > 0 ? "40" : ""),
                       width: 1, dash: s.dash, spanGaps: true});
          if (smoothing > 0) series.push({label: s.label, stroke: s.color, width: 2, dash: s.dash, spanGaps: true});
        });
        if (smoothing > 0) div.classList.add("smoothed");  // the legend lists the smoothed lines only
        const opts = {title: group.title, width: width, height: 260, series: series,
          scales: {x: {time: false}},
          cursor: {sync: {key: "hf-trainkit"}, drag: {x: true, y: false}},
          legend: {live: true}, axes: [{}, {size: 76, values: (u, ticks) => ticks.map(tick)}],
          hooks: {setSelect: [u => {
            if (u.select.width > 0) {
              zoom(group.id, u.posToVal(u.select.left, "x"), u.posToVal(u.select.left + u.select.width, "x"));
            }
          }]}};
        holder = {div: div, signature: signature, zoomed: false, detail: null, range: null};
        holder.plot = new uPlot(opts, data, div);
        div.addEventListener("dblclick", () => { unzoom(holder); render(); });
        charts[group.id] = holder;
      } else {
        holder.plot.setData(data, !holder.zoomed);
        if (holder.zoomed && holder.range) holder.plot.setScale("x", {min: holder.range[0], max: holder.range[1]});
      }
    }
  }

  function tick(v) {  // 3e-4 rather than uPlot's 0 for a learning rate
    if (v === null || v === undefined) return "";
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3).replace(/\.?0+e/, "e") : String(+v.toPrecision(4));
  }

  function fmt(v, digits) { return v === null || v === undefined ? "?" : Number(v).toPrecision(digits || 4); }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "?";
    const s = Math.round(seconds), h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    return (h ? h + " h " : "") + (h || m ? m + " min " : "") + (s % 60) + " s";
  }

  function renderRuns() {
    const box = $("runs");
    runs.forEach((run, i) => {
      let div = box.querySelector('[data-run="' + i + '"]');
      if (!div) {
        div = document.createElement("div");
        div.className = "run";
        div.dataset.run = i;
        div.innerHTML = '<span class="label"></span><span class="state"></span><span class="line"></span>' +
          '<div class="progress muted"></div><div class="bar"><div></div></div>';
        box.appendChild(div);
      }
      div.querySelector(".label").textContent = run.label;
      div.querySelector(".label").style.color = COLORS[i % COLORS.length];
      const state = run.state ? run.state.state : "?";
      const loading = run.loading !== null;
      div.querySelector(".state").textContent = loading ? "loading" : state;
      div.querySelector(".state").className = "state " + (loading ? "loading" : state);
      div.querySelector(".line").textContent = loading ? "reading its log: " + (100 * run.loading).toFixed(0) + " %"
        : run.line ? run.line.text : "";
      const p = (run.line && run.line.progress) || {};
      const fraction = p.fraction !== undefined && p.fraction !== null ? p.fraction
        : (run.line && run.line.max_steps ? run.line.step / run.line.max_steps : null);
      div.querySelector(".progress").textContent = fraction === null ? "" :
        (100 * fraction).toFixed(1) + " % · " + (p.seconds_per_step ? fmt(p.seconds_per_step, 3) + " s/step · " : "") +
        (state === "running" && p.eta_seconds !== null && p.eta_seconds !== undefined ? "ETA " + duration(p.eta_seconds) : state);
      div.querySelector(".bar > div").style.width = fraction === null ? "0" : (100 * fraction) + "%";
    });
    updateActions();
  }

  // --- details: checkpoints, diagnostics --------------------------------------------------------------------------
  function selectedRun() { return parseInt($("action-run").value || "0", 10); }

  function details() {
    const i = selectedRun();
    api("/api/details?run=" + i).then(body => {
      const rows = $("checkpoints").querySelector("tbody");
      rows.textContent = "";
      body.checkpoints.forEach(c => {
        const tr = document.createElement("tr");
        const metrics = Object.entries(c.metrics || {}).filter(([k]) => ["loss", "reward", "eval_loss"].includes(k))
          .map(([k, v]) => k + "=" + fmt(v)).join(" ");
        [c.step, c.checkpoint, c.name || "-", c.reason || "-", metrics, size(c.size_bytes),
         c.valid ? "yes" : "no: " + c.why_not].forEach(text => {
          const td = document.createElement("td"); td.textContent = text === null ? "-" : text; tr.appendChild(td);
        });
        tr.dataset.checkpoint = c.checkpoint;
        rows.appendChild(tr);
      });
      const d = body.diagnosis;
      $("diagnosis").textContent = d ? d.verdict.toUpperCase() + " (" + d.metric + ") - " + d.reason + ". " + d.advice
        : body.loading ? "reading the run's log: the diagnosis follows" : "no data yet";
      const list = $("findings");
      list.textContent = "";
      const mark = d && d.mode === "max" ? "higher" : "lower";
      const best = d ? (d.new_best || []).map(e => "Step " + e.step + ": " + d.metric + " level " + fmt(e.value) +
        " ± " + fmt(e.error) + " ✓ NEW BEST (beyond its noise)") : [];
      const plateau = d && d.logs_since_best ? ["No improvement of " + d.metric + " beyond its noise (" + mark +
        " is better) for " + d.logs_since_best + " logs."] : [];
      const lines = best.concat(body.findings, d ? d.findings.map(f => f.message) : [], plateau);
      lines.slice(-60).forEach(text => { const li = document.createElement("li"); li.textContent = text; list.appendChild(li); });
      $("report").textContent = "";
      if (body.report) {
        const a = document.createElement("a");
        a.href = "/api/report?run=" + i + "&token=" + encodeURIComponent(token);
        a.textContent = "report.html (hf-trainkit monitor)";
        a.target = "_blank"; a.rel = "noopener noreferrer"; a.id = "report-link";
        $("report").appendChild(a);
      }
    }).catch(() => {});
  }

  function size(bytes) {
    if (bytes === null || bytes === undefined) return "-";
    const units = ["B", "KB", "MB", "GB"]; let u = 0;
    while (bytes >= 1024 && u < 3) { bytes /= 1024; u++; }
    return (u ? bytes.toFixed(1) : bytes) + " " + units[u];
  }

  // --- actions: only through live control -----------------------------------------------------------------------
  let busy = false;
  function updateActions() {
    const run = runs[selectedRun()];
    const why = !connected ? "the dashboard server is not reachable"
      : !run || !run.state ? "loading" : run.state.can_act ? "" : run.state.why_not;
    $("save-btn").disabled = $("stop-btn").disabled = Boolean(why) || busy;
    $("action-why").textContent = why ? "Save and Stop are disabled: " + why + "." : "";
  }

  function act(action) {
    const i = selectedRun();
    const name = $("save-name").value.trim();
    if (action === "stop" && !window.confirm("Stop the training of " + runs[i].label +
        "? It saves a checkpoint and ends after the current step.")) return;
    busy = true; updateActions();
    $("action-result").className = "muted";
    $("action-result").textContent = action === "save" ? "Saving…" : "Stopping…";
    api("/api/" + action + "?run=" + i, {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify(action === "save" && name ? {name: name} : {})})
      .then(body => follow(i, body.id, action))
      .catch(error => { busy = false; updateActions(); result(false, action + " refused: " + error.message); });
  }

  function follow(i, id, action) {
    api("/api/requests?run=" + i + "&id=" + encodeURIComponent(id)).then(r => {
      if (r.status === "done") {
        busy = false;
        const label = r.name ? " as '" + r.name + "'" : "";
        const folder = (r.checkpoint || "").split("/").pop();
        result(true, action === "stop" ? "Stopped at step " + r.step + " (saved " + folder + label + ")."
          : "Saved " + folder + label + " at step " + r.step + ".");
        $("save-name").value = "";
        lastDetails = 0;
        updateActions();
      } else if (r.status === "rejected" || r.status === "failed") {
        busy = false; updateActions(); result(false, action + " " + r.status + ": " + r.error);
      } else {
        $("action-result").textContent = (action === "save" ? "Saving… " : "Stopping… ") + "(" + r.status + ")";
        setTimeout(() => follow(i, id, action), 500);
      }
    }).catch(error => { setTimeout(() => follow(i, id, action), 1000); });
  }

  function result(ok, text) { $("action-result").className = ok ? "ok" : "error"; $("action-result").textContent = text; }

  $("save-btn").addEventListener("click", () => act("save"));
  $("stop-btn").addEventListener("click", () => act("stop"));
  $("action-run").addEventListener("change", () => { lastDetails = 0; updateActions(); details(); });
  $("x-axis").addEventListener("change", () => { Object.values(charts).forEach(unzoom); render(); });
  $("smoothing").addEventListener("input", () => {
    $("smoothing-value").textContent = parseFloat($("smoothing").value).toFixed(2); render();
  });
  window.addEventListener("resize", () => { for (const h of Object.values(charts)) h.signature = ""; render(); });

  // For tests and curious users: how many points each run holds, per key.
  window.hfDashboard = {points: () => runs.map(r => Object.fromEntries(Object.entries(r.series).map(([k, c]) =>
    [k, c.y.length]))), runs: runs, charts: charts, zoom: zoom,
    drawn: groupId => charts[groupId] ? charts[groupId].plot.data : null};

  function start() {
    api("/api/runs").then(body => {
      readOnly = body.read_only;
      runs.length = 0;
      $("action-run").textContent = "";
      body.runs.forEach(r => {
        runs.push({id: r.id, label: r.label, generation: null, cursor: null, series: {}, state: null, line: null,
                   loading: 0});
        const option = document.createElement("option"); option.value = r.id; option.textContent = r.label;
        $("action-run").appendChild(option);
      });
      $("title").textContent = "· " + body.runs.map(r => r.label).join(" · ");
      document.title = body.runs.map(r => r.label).join(", ") + " · hf-trainkit";
      $("main").hidden = false;
      setConnected(true);
      renderRuns();  // every run's label at once, "loading" until its first data comes
      poll();
    }).catch(error => { if (error.message !== "unauthorized") setConnected(false, error.message); });
  }

  if (!token) showLogin("no token: open the URL the dashboard printed");
  else start();
})();
