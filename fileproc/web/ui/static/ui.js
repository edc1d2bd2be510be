// fileproc dashboard: live refresh. A page that sets data-refresh="N" on <body> is fetched again
// every N seconds, and each element marked data-live is replaced by its fresh copy (open <details>
// stay open). Nothing runs while the tab is hidden; refreshing stops once a page no longer asks for it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var every = Number(document.body.dataset.refresh || 0);
  var lastOk = new Date();

  function stamp(ok) {
    if (!live) return;
    live.hidden = false;
    live.classList.toggle("stale", !ok);
    if (ok) lastOk = new Date();
    live.textContent = (ok ? "live · " : "not updated since ") + lastOk.toLocaleTimeString();
  }

  function replace(fresh) {
    document.querySelectorAll("[data-live]").forEach(function (old) {
      var next = fresh.getElementById(old.id);
      if (!next) return;
      old.querySelectorAll("details[open]").forEach(function (d) {
        var same = d.id && next.querySelector("#" + CSS.escape(d.id));
        if (same) same.open = true;
      });
      old.replaceWith(document.importNode(next, true));
    });
  }

  function tick() {
    if (document.hidden) return schedule();
    fetch(location.href, { credentials: "same-origin", headers: { "X-Requested-With": "fileproc-live" } })
      .then(function (r) {
        if (r.redirected || !r.ok) throw new Error(String(r.status));
        return r.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        replace(fresh);
        stamp(true);
        every = Number(fresh.body.dataset.refresh || 0);
        if (!live) return;
        if (every) schedule(); else live.textContent = "up to date · " + new Date().toLocaleTimeString();
      })
      .catch(function () { stamp(false); schedule(); });
  }

  function schedule() { if (every) setTimeout(tick, every * 1000); }

  // A form with data-confirm asks first (retry all failed).
  document.addEventListener("submit", function (e) {
    var ask = e.target.dataset && e.target.dataset.confirm;
    if (ask && !window.confirm(ask)) e.preventDefault();
  });

  if (every) { stamp(true); schedule(); }
})();
