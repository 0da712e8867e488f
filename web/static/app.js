// The teachers' page: plain JavaScript, no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  limits: null, middle: null, rows: [], fileName: "", pasteBusy: false, csvBusy: false,
};
const SCORES = ["1", "2", "3", "4", "5", "6"];
const WARN_ICON = "\u26a0";
// roughly the server's word count (aes_core.essay_stats), for the live counter only
const WORD_RE = /[\p{L}\p{N}]+(?:['\u2019-][\p{L}\p{N}]+)*/gu;

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
function plural(n, word) {
  return `${fmt(n)} ${word}${n === 1 ? "" : "s"}`;
}
function showError(el, msg) {
  el.textContent = msg;
  el.hidden = !msg;
}
function unreachable(e) {
  return `Could not reach the server (${e.message || e}). Check that it is still running, ` +
    "then try again.";
}
async function errorText(resp) {
  try {
    const body = await resp.json();
    return body.error || JSON.stringify(body);
  } catch (e) {
    return `The server answered ${resp.status} ${resp.statusText}.`;
  }
}

// ---- warnings (any code: too short, gaming / off-topic flags; level "notice" is softer) ---
function evidenceText(ev) {
  if (ev === null || ev === undefined || ev === "") return "";
  return typeof ev === "string" ? ev : JSON.stringify(ev);
}
function codeLabel(code) {
  const s = String(code).replace(/_/g, " ");
  return s.charAt(0).toUpperCase() + s.slice(1);
}
function levelClass(w) {
  return w.level === "notice" ? " notice" : "";
}
function warningHtml(w) {
  const ev = evidenceText(w.evidence);
  return `<div class="warning${levelClass(w)}" data-code="${esc(w.code)}">` +
    `<span class="warning-icon" aria-hidden="true">${WARN_ICON}</span><div>` +
    `<div class="warning-message">${esc(w.message)}</div>` +
    (ev ? `<div class="warning-evidence">${esc(ev)}</div>` : "") + "</div></div>";
}
function renderWarnings(el, warnings) {
  const list = warnings || [];
  el.innerHTML = list.map(warningHtml).join("");
  el.hidden = list.length === 0;
}
function warningPills(warnings) {
  return (warnings || []).map((w) => {
    const ev = evidenceText(w.evidence);
    const tip = w.message + (ev ? ` (${ev})` : "");
    return `<span class="warn-pill${levelClass(w)}" data-code="${esc(w.code)}" ` +
      `title="${esc(tip)}">` +
      `<span aria-hidden="true">${WARN_ICON}</span> ${esc(codeLabel(w.code))}</span>`;
  }).join(" ");
}

// ---- model info -------------------------------------------------------------------------
async function loadInfo() {
  let info;
  try {
    const resp = await fetch("/api/info");
    info = await resp.json();
  } catch (e) {
    $("model-info").textContent = unreachable(e);
    $("csv-limits").textContent = "unknown (the server did not answer)";
    return;
  }
  state.limits = info.limits;
  const tr = info.typical_ranges || {};
  state.middle = tr.high_q ? Math.round((tr.high_q - tr.low_q) * 100) : null;
  const lim = info.limits;
  $("csv-limits").textContent = `${fmt(lim.max_rows)} essays, ` +
    `${fmt(lim.max_upload_bytes / 1e6, 1)} MB, ${fmt(lim.max_essay_chars)} characters per essay`;
  if (info.ready) {
    const n = info.members.length;
    $("model-info").textContent = `Scored by an ensemble of ${plural(n, "model")}.`;
    const qwk = info.oof_qwk && (info.oof_qwk.blend ?? info.oof_qwk.ensemble);
    $("model-tech").textContent = (qwk ? `Validation QWK ${fmt(qwk, 3, true)}. ` : "") +
      `Thresholds ${info.thresholds.map((t) => fmt(t, 2, true)).join(", ")}. ` +
      `Profile ${info.profile}.`;
  } else {
    $("model-info").textContent = `Scoring is not available yet: ${info.error}`;
  }
  updateCount();
}

// ---- tabs (click, or arrow keys / Home / End as in the ARIA tabs pattern) ----------------
const TABS = Array.from(document.querySelectorAll(".tab"));
function selectTab(btn, focus) {
  TABS.forEach((b) => {
    const on = b === btn;
    b.classList.toggle("active", on);
    b.setAttribute("aria-selected", on ? "true" : "false");
    b.tabIndex = on ? 0 : -1;
    $(b.dataset.panel).hidden = !on;
  });
  if (focus) btn.focus();
}
function tabKeys(ev) {
  const i = TABS.indexOf(document.activeElement);
  if (i < 0) return;
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: TABS.length - 1 }[ev.key];
  if (next === undefined) return;
  ev.preventDefault();
  selectTab(TABS[(next + TABS.length) % TABS.length], true);
}

// ---- charts -----------------------------------------------------------------------------
function barChart(values, labels, highlight, opts) {
  const W = 520, H = opts.height || 190, padL = 8, padB = 26, padT = 22;
  const n = values.length, gap = 14;
  const bw = (W - padL * 2 - gap * (n - 1)) / n;
  const max = Math.max(opts.max || 0, ...values, 1e-9);
  const aria = `${opts.aria}: ` + values.map((v, i) => `${labels[i]}: ${opts.valueText(v)}`)
    .join(", ");
  let svg = `<svg viewBox="0 0 ${W} ${H}" role="img" aria-label="${esc(aria)}">`;
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
  const text = $("essay-text").value;
  const n = text.length, words = (text.match(WORD_RE) || []).length;
  const max = state.limits ? state.limits.max_essay_chars : null;
  const minWords = state.limits ? state.limits.min_words : null;
  let msg = `${plural(words, "word")} · ${plural(n, "character")}` +
    (max ? ` (limit ${fmt(max)})` : "");
  if (minWords && words > 0 && words < minWords) {
    msg += ` · under ${fmt(minWords)} words the score is unreliable`;
  }
  $("char-count").textContent = msg;
  $("char-count").style.color = max && n > max ? "#a61b1b" : "";
}

function rangeText(t, digits) {
  if (!t) return "n/a";
  return `${fmt(t.low, digits)} – ${fmt(t.high, digits)}`;
}

function renderResult(r) {
  renderWarnings($("paste-warnings"), r.warnings);
  $("score-value").textContent = r.score;
  $("spread-chart").innerHTML = barChart(r.spread, SCORES, r.score - 1, {
    aria: "Model confidence per score", max: 1,
    valueText: (v) => `${Math.round(v * 100)}%`,
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
  $("score-blend").textContent = `Blended prediction ${fmt(r.blended, 2, true)} on the ` +
    "1–6 scale.";
  const memBody = $("members-table").querySelector("tbody");
  memBody.innerHTML = r.members.map((m) =>
    `<tr><td>${esc(m.name)}</td><td class="num">${fmt(m.weight, 3)}</td>` +
    `<td class="num member-pred">${fmt(m.prediction, 2, true)}</td></tr>`).join("");
  $("result").hidden = false;
}

async function scoreEssay() {
  if (state.pasteBusy) return;
  const text = $("essay-text").value;
  showError($("paste-error"), "");
  if (!text.trim()) {
    showError($("paste-error"), "The essay is empty: paste the essay text first.");
    $("result").hidden = true;
    $("essay-text").focus();
    return;
  }
  state.pasteBusy = true;
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
    showError($("paste-error"), unreachable(e));
    $("result").hidden = true;
  } finally {
    state.pasteBusy = false;
    $("score-btn").disabled = false;
    $("score-btn").textContent = "Score essay";
  }
}

// ---- CSV --------------------------------------------------------------------------------
// What teachers see; the downloaded file keeps every column (model details for the data team).
const CSV_COLUMNS = [
  ["essay_id", "Essay"], ["score", "Score"], ["warnings", "Check"], ["words", "Words"],
  ["paragraphs", "Paragraphs"], ["mean_sentence_words", "Words per sentence"],
];
const NUM_DIGITS = { words: 0, paragraphs: 0, mean_sentence_words: 1 };

function renderTableHead() {
  $("csv-table").querySelector("thead").innerHTML = "<tr>" + CSV_COLUMNS.map(([c, label]) =>
    `<th class="${c in NUM_DIGITS || c === "score" ? "num" : ""}">${esc(label)}</th>`)
    .join("") + "</tr>";
}
function cellHtml(r, c) {
  if (c === "essay_id") return `<td class="essay-id">${esc(r[c])}</td>`;
  if (c === "score") {
    return `<td class="num"><span class="score-pill row-score">${esc(r[c])}</span></td>`;
  }
  if (c === "warnings") return `<td class="row-warnings">${warningPills(r[c])}</td>`;
  return `<td class="num">${fmt(r[c], NUM_DIGITS[c], true)}</td>`;
}
function appendRows(rows) {
  const html = rows.map((r) => {
    const flagged = r.warnings && r.warnings.length ? ' class="flagged"' : "";
    return `<tr${flagged}>` + CSV_COLUMNS.map(([c]) => cellHtml(r, c)).join("") + "</tr>";
  }).join("");
  $("csv-table").querySelector("tbody").insertAdjacentHTML("beforeend", html);
}
function renderDistribution() {
  const counts = [0, 0, 0, 0, 0, 0];
  state.rows.forEach((r) => { counts[r.score - 1] += 1; });
  $("csv-dist").innerHTML = barChart(counts, SCORES, -1, {
    aria: "Essays per score", height: 150, valueText: (v) => fmt(v, 0),
  });
  const mean = state.rows.reduce((a, r) => a + r.score, 0) / Math.max(state.rows.length, 1);
  $("csv-summary").textContent = `${plural(state.rows.length, "essay")} scored · mean score ` +
    `${fmt(mean, 2)}`;
  const flagged = state.rows.filter((r) => r.warnings && r.warnings.length);
  const box = $("csv-warn-summary");
  box.hidden = flagged.length === 0;
  if (!flagged.length) return;
  box.innerHTML = `<div class="warning"><span class="warning-icon" aria-hidden="true">` +
    `${WARN_ICON}</span><div><div class="warning-message">` +
    `${esc(plural(flagged.length, "essay"))} ${flagged.length === 1 ? "needs" : "need"} a ` +
    "check before you use the score:</div>" +
    "<ul class=\"warning-list\">" + flagged.map((r) => `<li><b>${esc(r.essay_id)}</b>: ` +
      r.warnings.map((w) => esc(w.message) + (evidenceText(w.evidence)
        ? ` <span class="warning-evidence">(${esc(evidenceText(w.evidence))})</span>` : ""))
        .join("; ") + "</li>").join("") + "</ul></div></div>";
}
function setProgress(done, total) {
  const pct = total ? Math.round((100 * done) / total) : 0;
  $("csv-progress").style.width = `${pct}%`;
  $("csv-progress").setAttribute("aria-valuenow", String(pct));
  $("csv-status").textContent = `${fmt(done)} / ${fmt(total)} essays (${pct}%)`;
}
function resetProgress() {
  setProgress(0, 0);
  $("csv-status").textContent = "";
  $("csv-progress-wrap").hidden = true;
}
function failCsv(msg) {
  resetProgress();
  showError($("csv-error"), msg);
}

async function scoreCsv() {
  if (state.csvBusy) return;
  const file = $("csv-file").files[0];
  showError($("csv-error"), "");
  resetProgress();
  if (!file) {
    showError($("csv-error"), "Choose a CSV file first.");
    $("csv-file").focus();
    return;
  }
  if (state.limits && file.size > state.limits.max_upload_bytes) {
    showError($("csv-error"), `${file.name}: the file has ${fmt(file.size)} bytes; the limit is ` +
      `${fmt(state.limits.max_upload_bytes)} bytes.`);
    return;
  }
  state.csvBusy = true;
  state.rows = [];
  state.fileName = file.name;
  $("csv-btn").disabled = true;
  $("csv-result").hidden = true;
  $("csv-table").querySelector("tbody").innerHTML = "";
  $("csv-progress-wrap").hidden = false;
  $("csv-status").textContent = "Uploading…";
  let total = 0, finished = false;
  try {
    const params = new URLSearchParams({ name: file.name, keep: $("keep-copy").checked });
    const resp = await fetch(`/api/score-csv?${params}`, {
      method: "POST", headers: { "Content-Type": "text/csv" }, body: file,
    });
    if (!resp.ok) {
      failCsv(await errorText(resp));
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
          total = msg.total;
          setProgress(0, msg.total);
        } else if (msg.type === "rows") {
          if (!state.rows.length) {
            renderTableHead();
            $("csv-result").hidden = false;
          }
          state.rows.push(...msg.rows);
          appendRows(msg.rows);
          setProgress(msg.done, msg.total);
          renderDistribution();
        } else if (msg.type === "error") {
          finished = true;
          showError($("csv-error"), msg.error);
          $("csv-status").textContent = `Stopped after ${fmt(state.rows.length)} of ` +
            `${fmt(total)} essays.`;
        } else if (msg.type === "done") {
          finished = true;
          $("csv-status").textContent = `Done: ${plural(msg.total, "essay")} scored` +
            (msg.kept_as ? ` · copy kept as ${msg.kept_as}` : "");
        }
      }
      if (done) break;
    }
    if (!finished) {
      showError($("csv-error"), `The connection closed after ${fmt(state.rows.length)} of ` +
        `${fmt(total)} essays; please try again.`);
    }
  } catch (e) {
    if (state.rows.length) {
      showError($("csv-error"), unreachable(e));
    } else {
      failCsv(unreachable(e));
    }
  } finally {
    state.csvBusy = false;
    $("csv-btn").disabled = false;
  }
}

// the same text columns as the server's CSV (web.essay_warnings)
function warningCodes(ws) {
  return (ws || []).map((w) => w.code).join(";");
}
function warningDetails(ws) {
  return (ws || []).map((w) => {
    const ev = evidenceText(w.evidence);
    return ev ? `${w.message} (${ev})` : w.message;
  }).join(" | ");
}
function csvField(v) {
  const s = v === null || v === undefined ? "" : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}
function downloadCsv() {
  if (!state.rows.length) return;
  const cols = [];
  Object.keys(state.rows[0]).forEach((c) => {
    cols.push(c);
    if (c === "warnings") cols.push("warning_details");
  });
  const value = (r, c) => (c === "warnings" ? warningCodes(r.warnings)
    : c === "warning_details" ? warningDetails(r.warnings) : r[c]);
  const lines = [cols.map(csvField).join(",")];
  state.rows.forEach((r) => lines.push(cols.map((c) => csvField(value(r, c))).join(",")));
  const blob = new Blob([lines.join("\n") + "\n"], { type: "text/csv" });
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = "scored_" + state.fileName.replace(/(\.csv)?(\.gz)?$/i, "") + ".csv";
  document.body.appendChild(a);
  a.click();
  setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
}

// ---- wiring -----------------------------------------------------------------------------
TABS.forEach((b) => b.addEventListener("click", () => selectTab(b, false)));
document.querySelector(".tabs").addEventListener("keydown", tabKeys);
$("essay-text").addEventListener("input", updateCount);
$("essay-text").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey)) {
    ev.preventDefault();
    scoreEssay();
  }
});
$("score-btn").addEventListener("click", scoreEssay);
$("clear-btn").addEventListener("click", () => {
  $("essay-text").value = "";
  updateCount();
  $("result").hidden = true;
  showError($("paste-error"), "");
  $("essay-text").focus();
});
$("csv-file").addEventListener("change", () => showError($("csv-error"), ""));
$("csv-btn").addEventListener("click", scoreCsv);
$("download-btn").addEventListener("click", downloadCsv);
loadInfo();
