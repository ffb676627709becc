// Sortable, filterable channel table; data comes from data.js (window.POLYPSI_DATA).
// A row holds the columns' values, then D.fields (the page link, the concept names two or more of the
// channel's clusters share). The table opens sorted by D.sort (the index), highest first.
(function () {
  "use strict";
  var D = window.POLYPSI_DATA;
  var cols = D.columns, rows = D.rows;
  var key = {}; cols.forEach(function (c, i) { key[c.key] = i; });
  var field = {}; D.fields.forEach(function (f, i) { field[f] = cols.length + i; });
  var HREF = field.href, SAME = field.same_name;
  var state = { sort: D.sort in key ? key[D.sort] : null, dir: -1 };
  var tbody = document.querySelector("#channels tbody");
  var headRow = document.querySelector("#channels thead tr");
  var filter = document.getElementById("filter"), layerSel = document.getElementById("layer");
  var okOnly = document.getElementById("okonly"), sameOnly = document.getElementById("sameonly");
  var count = document.getElementById("count");

  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
  }
  function fmt(v, kind) {
    if (v === null || v === undefined) return "—";
    if (kind === "num") return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4);
    return esc(v);
  }
  function isDead(r) { return String(r[key.status]).indexOf("dead") === 0; }
  function sameText(r) { return r[SAME] ? "same name: " + r[SAME].join(", ") : ""; }
  // What the clusters cell shows: nothing but the dead mark for a dead channel; else a same-name badge
  // (when two or more clusters carry one name) before the names.
  function clustersCell(r) {
    if (isDead(r)) return '<span class="badge dead">' + esc(D.dead_text) + "</span>";
    var badge = r[SAME] ? '<span class="badge same-name">' + esc(sameText(r)) + "</span> " : "";
    return badge + esc(r[key.clusters]);
  }
  cols.forEach(function (c, i) {
    var th = document.createElement("th");
    th.textContent = c.label; th.dataset.key = c.key; th.dataset.kind = c.kind; th.title = "sort by " + c.label;
    th.addEventListener("click", function () { sortBy(i); });
    headRow.appendChild(th);
  });
  Array.from(new Set(rows.map(function (r) { return r[0]; }))).forEach(function (l) {
    var o = document.createElement("option"); o.value = l; o.textContent = l; layerSel.appendChild(o);
  });

  function sortBy(i) {
    // Numbers sort high-to-low first (the interesting channels on top); text A-to-Z first.
    if (state.sort === i) state.dir = -state.dir;
    else { state.sort = i; state.dir = cols[i].kind === "text" ? 1 : -1; }
    render();
  }
  function compare(a, b) {
    var i = state.sort, x = a[i], y = b[i];
    if (x === null && y === null) return 0;
    if (x === null) return 1;   // missing values always last
    if (y === null) return -1;
    if (cols[i].kind === "text") return state.dir * String(x).localeCompare(String(y));
    return state.dir * (x - y);
  }
  function render() {
    var q = filter.value.trim().toLowerCase(), l = layerSel.value, ok = okOnly.checked, same = sameOnly.checked;
    var shown = rows.filter(function (r) {
      if (l && r[0] !== l) return false;
      if (ok && r[key.status] !== "ok") return false;
      if (same && !r[SAME]) return false;
      if (!q) return true;
      var text = [r[0], r[1], r[key.clusters], r[key.status], sameText(r), isDead(r) ? D.dead_text : ""].join(" ");
      return text.toLowerCase().indexOf(q) >= 0;
    });
    if (state.sort !== null) shown.sort(compare);
    var html = shown.map(function (r) {
      var cls = (isDead(r) ? " dead" : "") + (r[SAME] ? " same-name" : "");
      var attrs = (cls ? ' class="' + cls.trim() + '"' : "") + (isDead(r) ? ' data-dead="1"' : "") +
                  (r[SAME] ? ' data-same-name="' + esc(r[SAME].join(", ")) + '"' : "");
      return "<tr" + attrs + ">" + cols.map(function (c, i) {
        var v = c.key === "clusters" ? clustersCell(r) : fmt(r[i], c.kind);
        if (c.key === "channel") v = '<a href="' + r[HREF] + '">' + v + "</a>";
        return '<td data-key="' + c.key + '" data-value="' + (r[i] === null ? "" : esc(r[i])) + '">' + v + "</td>";
      }).join("") + "</tr>";
    }).join("");
    tbody.innerHTML = html;
    count.textContent = shown.length + " of " + rows.length + " channels";
    headRow.querySelectorAll("th").forEach(function (th, i) {
      th.className = state.sort === i ? (state.dir < 0 ? "desc" : "asc") : "";
    });
  }
  [filter, layerSel, okOnly, sameOnly].forEach(function (el) {
    el.addEventListener("input", render); el.addEventListener("change", render);
  });
  render();
  document.body.dataset.ready = "1";
})();
