// The teachers' page: plain JavaScript, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { limits: null, middle: null, rows: [], fileName: "", busy: false };

function esc(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  }[c]));
}
function fmt(x, digits, fixed) {
  if (x === null || x === undefined || Number.isNaN(x)) return "";
  return Number(x).toLocaleString("en-US", { maximumFractionDigits: digits,
    minimumFractionDigits: fixed ? digits : 0 });
}
function showError(el, msg) {
  el.textContent = msg;
  el.hidden = !msg;
}
async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.error || JSON.stringify(body);
  } catch (e) {
    return `The server answered ${resp.status} ${resp.statusText}.`;
  }
}

// ---- model info -------------------------------------------------------------------------
async function loadInfo() {
  try {
    const resp = await fetch("/api/info");
    const info = await resp.json();
    state.limits = info.limits;
    const tr = info.typical_ranges || {};
    state.middle = tr.high_q ? Math.round((tr.high_q - tr.low_q) * 100) : null;
    const lim = info.limits;
    $("csv-limits").textContent = `${fmt(lim.max_rows)} essays, ` +
      `${fmt(lim.max_upload_bytes / 1e6, 1)} MB, ${fmt(lim.max_essay_chars)} characters per essay`;
    if (info.ready) {
      const qwk = info.oof_qwk && (info.oof_qwk.blend ?? info.oof_qwk.ensemble);
      $("model-info").textContent = `Model: ensemble of ${info.members.length} ` +
        `(${info.members.join(", ")})` + (qwk ? ` · validation QWK ${fmt(qwk, 3)}` : "") +
        ` · profile ${info.profile}`;
    } else {
      $("model-info").textContent = `Model not available: ${info.error}`;
    }
    updateCount();
  } catch (e) {
    $("model-info").textContent = "Could not reach the server.";
  }
}

// ---- tabs -------------------------------------------------------------------------------
function selectTab(btn) {
  document.querySelectorAll(".tab").forEach((b) => {
    const on = b === btn;
    b.classList.toggle("active", on);
    b.setAttribute("aria-selected", on ? "true" : "false");
    $(b.dataset.panel).hidden = !on;
  });
}

// ---- charts -----------------------------------------------------------------------------
function barChart(values, labels, highlight, opts) {
  const W = 520, H = opts.height || 190, padL = 8, padB = 26, padT = 22;
  const n = values.length, gap = 14;
  const bw = (W - padL * 2 - gap * (n - 1)) / n;
  const max = Math.max(opts.max || 0, ...values, 1e-9);
  let svg = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(opts.aria)}">`;
  svg += `<line x1="0" y1="${H - padB}" x2="${W}" y2="${H - padB}" stroke="#d9e2ec"/>`;
  values.forEach((v, i) => {
    const h = Math.max((H - padB - padT) * (v / max), v > 0 ? 1.5 : 0);
    const x = padL + i * (bw + gap), y = H - padB - h;
    const fill = i === highlight ? "#2f6fb3" : "#c7dbf0";
    svg += `<rect class="bar" data-score="${i + 1}" x="${x}" y="${y}" width="${bw}" ` +
      `height="${h}" rx="3" fill="${fill}"><title>${esc(labels[i])}: ` +
      `${esc(opts.valueText(v))}</title></rect>`;
    svg += `<text class="val" x="${x + bw / 2}" y="${y - 6}" text-anchor="middle">` +
      `${esc(opts.valueText(v))}</text>`;
    svg += `<text x="${x + bw / 2}" y="${H - 8}" text-anchor="middle">${esc(labels[i])}</text>`;
  });
  return svg + "</svg>";
}

// ---- paste ------------------------------------------------------------------------------
function updateCount() {
  const n = $("essay-text").value.length;
  const max = state.limits ? state.limits.max_essay_chars : null;
  $("char-count").textContent = `${fmt(n)} characters` + (max ? ` (limit ${fmt(max)})` : "");
  $("char-count").style.color = max && n > max ? "#a61b1b" : "";
}

function rangeText(t, digits) {
  if (!t) return "n/a";
  return `${fmt(t.low, digits)} – ${fmt(t.high, digits)}`;
}

function renderResult(r) {
  $("score-value").textContent = r.score;
  $("score-blend").textContent = `Blended prediction ${fmt(r.blended, 2)} on the 1–6 scale`;
  $("spread-chart").innerHTML = barChart(r.spread, ["1", "2", "3", "4", "5", "6"], r.score - 1, {
    aria: "spread over scores", max: 1, valueText: (v) => `${Math.round(v * 100)}%`,
  });
  $("typical-head").textContent = `Typical for score ${r.score}`;
  const statsBody = $("stats-table").querySelector("tbody");
  statsBody.innerHTML = r.stats.map((s) => {
    const digits = s.name === "mean_sentence_words" ? 1 : 0;
    const status = s.status === "unknown" ? "no data" : s.status;
    return `<tr data-stat="${esc(s.name)}"><td>${esc(s.label)}</td>` +
      `<td class="num stat-value">${fmt(s.value, digits)}</td>` +
      `<td class="num">${esc(rangeText(s.typical, digits))}</td>` +
      `<td><span class="badge ${esc(s.status)}">${esc(status)}</span></td></tr>`;
  }).join("");
  const anyRange = r.stats.some((s) => s.typical);
  $("typical-note").textContent = anyRange
    ? `Typical range: the middle ${state.middle || 80}% of training essays that received ` +
      "this score."
    : "No typical range is available (training data not found).";
  const memBody = $("members-table").querySelector("tbody");
  memBody.innerHTML = r.members.map((m) =>
    `<tr><td>${esc(m.name)}</td><td class="num">${fmt(m.weight, 3)}</td>` +
    `<td class="num member-pred">${fmt(m.prediction, 2, true)}</td></tr>`).join("");
  $("result").hidden = false;
}

async function scoreEssay() {
  if (state.busy) return;
  const text = $("essay-text").value;
  showError($("paste-error"), "");
  if (!text.trim()) {
    showError($("paste-error"), "The essay is empty: paste the essay text first.");
    $("result").hidden = true;
    return;
  }
  state.busy = true;
  $("score-btn").disabled = true;
  $("score-btn").textContent = "Scoring…";
  try {
    const resp = await fetch("/api/score", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ text }),
    });
    if (!resp.ok) {
      showError($("paste-error"), await errorText(resp));
      $("result").hidden = true;
      return;
    }
    renderResult(await resp.json());
  } catch (e) {
    showError($("paste-error"), `Could not reach the server: ${e}`);
  } finally {
    state.busy = false;
    $("score-btn").disabled = false;
    $("score-btn").textContent = "Score essay";
  }
}

// ---- CSV --------------------------------------------------------------------------------
const HIDDEN_COLS = /^p_score_/;
const COL_DIGITS = { words: 0, paragraphs: 0, mean_sentence_words: 1 };

function renderTableHead(cols) {
  $("csv-table").querySelector("thead").innerHTML = "<tr>" + cols.map((c) =>
    `<th class="${c === "essay_id" ? "" : "num"}">${esc(c.replace(/_/g, " "))}</th>`)
    .join("") + "</tr>";
}
function appendRows(rows, cols) {
  const body = $("csv-table").querySelector("tbody");
  const html = rows.map((r) => "<tr>" + cols.map((c) => {
    if (c === "essay_id") return `<td class="essay-id">${esc(r[c])}</td>`;
    if (c === "score") return `<td class="num"><span class="score-pill row-score">${r[c]}</span></td>`;
    const digits = COL_DIGITS[c] ?? 2;
    return `<td class="num">${fmt(r[c], digits, true)}</td>`;
  }).join("") + "</tr>").join("");
  body.insertAdjacentHTML("beforeend", html);
}
function renderDistribution() {
  const counts = [0, 0, 0, 0, 0, 0];
  state.rows.forEach((r) => { counts[r.score - 1] += 1; });
  $("csv-dist").innerHTML = barChart(counts, ["1", "2", "3", "4", "5", "6"], -1, {
    aria: "essays per score", height: 150, valueText: (v) => fmt(v, 0),
  });
  const mean = state.rows.reduce((a, r) => a + r.score, 0) / Math.max(state.rows.length, 1);
  $("csv-summary").textContent = `${fmt(state.rows.length)} essays scored · mean score ` +
    `${fmt(mean, 2)}`;
}
function setProgress(done, total) {
  const pct = total ? Math.round((100 * done) / total) : 0;
  $("csv-progress").style.width = `${pct}%`;
  $("csv-progress").setAttribute("aria-valuenow", String(pct));
  $("csv-status").textContent = `${fmt(done)} / ${fmt(total)} essays (${pct}%)`;
}

async function scoreCsv() {
  if (state.busy) return;
  const file = $("csv-file").files[0];
  showError($("csv-error"), "");
  if (!file) {
    showError($("csv-error"), "Choose a CSV file first.");
    return;
  }
  if (state.limits && file.size > state.limits.max_upload_bytes) {
    showError($("csv-error"), `${file.name}: the file has ${fmt(file.size)} bytes; the limit is ` +
      `${fmt(state.limits.max_upload_bytes)} bytes.`);
    return;
  }
  state.busy = true;
  state.rows = [];
  state.fileName = file.name;
  $("csv-btn").disabled = true;
  $("csv-result").hidden = true;
  $("csv-table").querySelector("tbody").innerHTML = "";
  $("csv-progress-wrap").hidden = false;
  setProgress(0, 0);
  $("csv-status").textContent = "Uploading…";
  let cols = null;
  try {
    const params = new URLSearchParams({ name: file.name, keep: $("keep-copy").checked });
    const resp = await fetch(`/api/score-csv?${params}`, {
      method: "POST", headers: { "Content-Type": "text/csv" }, body: file,
    });
    if (!resp.ok) {
      showError($("csv-error"), await errorText(resp));
      $("csv-progress-wrap").hidden = true;
      return;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (value) buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl).trim();
        buf = buf.slice(nl + 1);
        if (!line) continue;
        const msg = JSON.parse(line);
        if (msg.type === "start") {
          setProgress(0, msg.total);
        } else if (msg.type === "rows") {
          if (!cols && msg.rows.length) {
            cols = Object.keys(msg.rows[0]).filter((c) => !HIDDEN_COLS.test(c));
            renderTableHead(cols);
            $("csv-result").hidden = false;
          }
          state.rows.push(...msg.rows);
          appendRows(msg.rows, cols);
          setProgress(msg.done, msg.total);
          renderDistribution();
        } else if (msg.type === "error") {
          showError($("csv-error"), msg.error);
        } else if (msg.type === "done") {
          $("csv-status").textContent = `Done: ${fmt(msg.total)} essays scored` +
            (msg.kept_as ? ` · copy kept as ${msg.kept_as}` : "");
        }
      }
      if (done) break;
    }
  } catch (e) {
    showError($("csv-error"), `Could not reach the server: ${e}`);
  } finally {
    state.busy = false;
    $("csv-btn").disabled = false;
  }
}

function csvField(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}
function downloadCsv() {
  if (!state.rows.length) return;
  const cols = Object.keys(state.rows[0]);
  const lines = [cols.map(csvField).join(",")];
  state.rows.forEach((r) => lines.push(cols.map((c) => csvField(r[c])).join(",")));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "scored_" + state.fileName.replace(/(\.csv)?(\.gz)?$/i, "") + ".csv";
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// ---- wiring -----------------------------------------------------------------------------
document.querySelectorAll(".tab").forEach((b) => b.addEventListener("click", () => selectTab(b)));
$("essay-text").addEventListener("input", updateCount);
$("score-btn").addEventListener("click", scoreEssay);
$("clear-btn").addEventListener("click", () => {
  $("essay-text").value = "";
  updateCount();
  $("result").hidden = true;
  showError($("paste-error"), "");
});
$("csv-btn").addEventListener("click", scoreCsv);
$("download-btn").addEventListener("click", downloadCsv);
loadInfo();
