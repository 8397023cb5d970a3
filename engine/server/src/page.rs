//! The fleet page at `GET /`: one static document that renders
//! `GET /v1/fleet` and refreshes it every two seconds. Text goes in through
//! `textContent`, never as markup, so nothing a sidecar registers can
//! inject script.

/// The page.
pub const HTML: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>meshgov fleet</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin-top: 1em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: left; }
th { background: #f4f4f4; }
.in_sync { color: #176117; } .pending { color: #8a6d00; }
.nacked, .unreachable, .halted, .failed { color: #b00020; font-weight: bold; }
#error { color: #b00020; }
</style>
</head>
<body>
<h1>meshgov fleet</h1>
<p id="summary">loading…</p>
<p id="build"></p>
<p id="rollout"></p>
<p id="error"></p>
<table>
<thead><tr><th>sidecar</th><th>product</th><th>state</th><th>ACKed revision</th><th>target</th><th>bundle age</th><th>last contact</th><th>last error</th></tr></thead>
<tbody id="sidecars"></tbody>
</table>
<script>
"use strict";
function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "—" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
}
function secs(s) { return s === null || s === undefined ? null : s + " s"; }
async function refresh() {
  try {
    const r = await fetch("/v1/fleet", {cache: "no-store"});
    const f = await r.json();
    const rel = f.released;
    document.getElementById("summary").textContent =
      "mesh " + (f.mesh || "?") + ", released revision " + (rel ? rel.revision : "none") +
      (rel ? " (expires " + rel.expires_at + ")" : "") + ", " + f.sidecars.length + " sidecars";
    const b = f.last_build;
    const build = document.getElementById("build");
    build.textContent = b ? "last build " + b.at + ": " + (b.ok ? "ok, revision " + b.revision + (b.renewal ? " (renewal)" : "") : "FAILED: " + b.error) : "";
    build.className = b && !b.ok ? "failed" : "";
    const ro = f.rollout;
    const rollout = document.getElementById("rollout");
    rollout.textContent = "rollout of revision " + (ro.revision === null ? "—" : ro.revision) + ": " + ro.phase +
      (ro.canaries.length ? " (canaries: " + ro.canaries.join(", ") + ")" : "") + (ro.reason ? " — " + ro.reason : "");
    rollout.className = ro.phase;
    const body = document.getElementById("sidecars");
    body.replaceChildren();
    for (const s of f.sidecars) {
      const row = document.createElement("tr");
      row.dataset.sidecar = s.id;
      cell(row, s.id + (s.canary ? " (canary)" : ""));
      cell(row, s.product);
      cell(row, s.state, s.state);
      cell(row, s.acked_revision);
      cell(row, s.target_revision);
      cell(row, secs(s.bundle_age_seconds));
      cell(row, s.last_contact + " (" + s.last_contact_seconds_ago + " s ago)");
      cell(row, s.last_error);
      body.appendChild(row);
    }
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "cannot load /v1/fleet: " + e;
  }
}
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"#;
