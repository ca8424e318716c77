"""The page at ``GET /``: pick or drop an image, see it, see the top-k bars and the latency.

One HTML document with its CSS and script inline: no CDN, no font, no request but
``POST /predict`` to the same server, so it works offline.
"""

from __future__ import annotations

import html
import json

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>cnnlab · __TITLE__</title>
<style>
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
main{max-width:860px;margin:0 auto;padding:24px}
h1{font-size:22px;margin:0 0 4px}.sub{color:#5b6475;margin:0 0 18px}
#drop{border:2px dashed #8a94a8;border-radius:10px;padding:28px;text-align:center;background:#fff;cursor:pointer}
#drop.over{border-color:#2f6fed;background:#eef3ff}
#cols{display:flex;gap:24px;margin-top:20px;flex-wrap:wrap}
#preview{max-width:300px;max-height:300px;border-radius:8px;background:#fff;display:none;image-rendering:pixelated;min-width:120px}
#result{flex:1;min-width:280px}
.row{display:flex;align-items:center;gap:10px;margin:6px 0}
.label{width:140px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;font-weight:600}
.bar{flex:1;background:#e3e7ee;border-radius:4px;height:18px;overflow:hidden}
.fill{height:100%;background:#2f6fed}
.pct{width:64px;text-align:right;font-variant-numeric:tabular-nums}
#latency{color:#5b6475;margin-top:10px}#error{color:#b3261e;font-weight:600;margin-top:10px}
</style></head>
<body><main>
<h1>__TITLE__</h1>
<p class="sub">__SUBTITLE__</p>
<label id="drop" for="file">Drop an image here, or click to choose one
<input id="file" type="file" accept="image/*" hidden></label>
<div id="cols"><img id="preview" alt="the image sent">
<div id="result"><div id="bars"></div><div id="latency"></div><div id="error"></div></div></div>
</main>
<script>
const META = __META__;
const $ = (id) => document.getElementById(id);
function show(data, ms) {
  const bars = $("bars"); bars.innerHTML = "";
  for (const t of data.top) {
    const row = document.createElement("div"); row.className = "row";
    const pct = (100 * t.probability).toFixed(1) + "%";
    row.innerHTML = '<div class="label"></div><div class="bar"><div class="fill"></div></div>' +
      '<div class="pct"></div>';
    row.children[0].textContent = t.label; row.children[0].title = t.label;
    row.children[1].firstChild.style.width = (100 * t.probability) + "%";
    row.children[2].textContent = pct;
    bars.appendChild(row);
  }
  $("latency").textContent = "server " + data.latency_ms.total.toFixed(1) + " ms (decode " +
    data.latency_ms.decode.toFixed(1) + ", model " + data.latency_ms.inference.toFixed(1) +
    "), round trip " + ms.toFixed(1) + " ms";
  document.body.dataset.top = data.top[0].label;
}
async function send(file) {
  $("error").textContent = ""; $("bars").innerHTML = ""; $("latency").textContent = "";
  const img = $("preview"); img.src = URL.createObjectURL(file); img.style.display = "block";
  const t0 = performance.now();
  try {
    const res = await fetch("predict?top_k=" + Math.min(5, META.class_names.length),
                            {method: "POST", body: file});
    const data = await res.json();
    if (!res.ok) { $("error").textContent = data.error + ": " + data.detail; return; }
    show(data, performance.now() - t0);
  } catch (e) { $("error").textContent = "request failed: " + e; }
}
$("file").addEventListener("change", (e) => { if (e.target.files[0]) send(e.target.files[0]); });
const drop = $("drop");
for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => {
  e.preventDefault(); drop.classList.add("over"); });
for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, (e) => {
  e.preventDefault(); drop.classList.remove("over"); });
drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) send(f); });
</script></body></html>
"""


def render_page(meta: dict) -> str:
    """The page for a model described by ``meta`` (the ``/metadata`` answer)."""
    inp = meta["input"]
    n = len(meta["class_names"])
    subtitle = (
        f"{meta['format']} · {n} classes · input {inp['height']}×{inp['width']}×"
        f"{inp['channels']} ({inp['resize']}) · nothing leaves this server"
    )
    data = json.dumps({"class_names": meta["class_names"], "model": meta["model"]}).replace(
        "</", "<\\/"
    )
    return (
        _PAGE.replace("__TITLE__", html.escape(str(meta["model"])))
        .replace("__SUBTITLE__", html.escape(subtitle))
        .replace("__META__", data)
    )
