// Sortable, filterable channel table; data comes from data.js (window.POLYPSI_DATA).
(function () {
  "use strict";
  var D = window.POLYPSI_DATA;
  var cols = D.columns, rows = D.rows, HREF = cols.length;
  var key = {}; cols.forEach(function (c, i) { key[c.key] = i; });
  var state = { sort: null, dir: -1 };
  var tbody = document.querySelector("#channels tbody");
  var headRow = document.querySelector("#channels thead tr");
  var filter = document.getElementById("filter"), layerSel = document.getElementById("layer");
  var okOnly = document.getElementById("okonly"), count = document.getElementById("count");

  function esc(s) {
    return String(s).replace(/[&<>"]/g, function (c) { return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
  }
  function fmt(v, kind) {
    if (v === null || v === undefined) return "—";
    if (kind === "num") return Math.abs(v) >= 100 ? v.toFixed(1) : v.toFixed(4);
    return esc(v);
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
    var q = filter.value.trim().toLowerCase(), l = layerSel.value, ok = okOnly.checked;
    var shown = rows.filter(function (r) {
      if (l && r[0] !== l) return false;
      if (ok && r[key.status] !== "ok") return false;
      if (!q) return true;
      return (r[0] + " " + r[1] + " " + r[key.clusters] + " " + r[key.status]).toLowerCase().indexOf(q) >= 0;
    });
    if (state.sort !== null) shown.sort(compare);
    var html = shown.map(function (r) {
      return "<tr>" + cols.map(function (c, i) {
        var v = fmt(r[i], c.kind);
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
  [filter, layerSel, okOnly].forEach(function (el) { el.addEventListener("input", render); el.addEventListener("change", render); });
  render();
  document.body.dataset.ready = "1";
})();
