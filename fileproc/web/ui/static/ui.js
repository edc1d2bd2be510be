// fileproc dashboard: live refresh. A page that sets data-refresh="N" on <body> is fetched again
// every N seconds, and each element marked data-live is brought up to date from its fresh copy.
// The update changes only what changed (text, attributes, rows; rows matched by id or data-job), so
// the element that has the keyboard focus, an open <details> and a field being typed in stay as they
// are. When the server stops answering, a banner says so (role=alert) until it answers again.
// Nothing runs while the tab is hidden; refreshing stops once a page no longer asks for it.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var offline = document.getElementById("offline");
  var every = Number(document.body.dataset.refresh || 0);
  var lastOk = new Date();
  var refreshes = 0;

  function utc(date) { return date.toISOString().slice(11, 19) + " UTC"; }

  function stamp(ok, why) {
    if (ok) lastOk = new Date();
    if (live) {
      live.hidden = false;
      live.classList.toggle("stale", !ok);
      live.textContent = (ok ? "live · " : "not updated since ") + utc(lastOk);
    }
    if (!offline) return;
    if (ok) {
      offline.hidden = true;
      offline.textContent = "";
    } else {
      offline.hidden = false;
      offline.textContent = "No answer from the fileproc server since " + utc(lastOk) + " (" + why +
        "): what this page shows may be out of date. Trying again every " + (every || 5) + " s.";
    }
  }

  function keyOf(node) {
    if (node.nodeType !== 1) return null;
    return node.id || (node.dataset && (node.dataset.job || node.dataset.key)) || null;
  }

  function morph(old, next) {
    if (old.nodeType !== next.nodeType || old.nodeName !== next.nodeName) {
      old.replaceWith(document.importNode(next, true));
      return;
    }
    if (old.nodeType === 3 || old.nodeType === 8) {
      if (old.nodeValue !== next.nodeValue) old.nodeValue = next.nodeValue;
      return;
    }
    if (old.nodeType !== 1) return;
    Array.prototype.slice.call(old.attributes).forEach(function (a) {
      if (!next.hasAttribute(a.name) && !(a.name === "open" && old.nodeName === "DETAILS")) old.removeAttribute(a.name);
    });
    Array.prototype.slice.call(next.attributes).forEach(function (a) {
      if (a.name === "open" && old.nodeName === "DETAILS") return;  // the reader's choice, not the server's
      if (old.getAttribute(a.name) !== a.value) old.setAttribute(a.name, a.value);
    });
    if (old === document.activeElement && (old.nodeName === "TEXTAREA")) return;  // being typed in
    children(old, next);
  }

  function children(old, next) {
    var keyed = {};
    Array.prototype.forEach.call(old.childNodes, function (c) { var k = keyOf(c); if (k) keyed[k] = c; });
    var cursor = old.firstChild;
    Array.prototype.slice.call(next.childNodes).forEach(function (n) {
      var k = keyOf(n), match = null;
      if (k) match = keyed[k] || null;
      else if (cursor && !keyOf(cursor) && cursor.nodeName === n.nodeName) match = cursor;
      if (match) {
        delete keyed[k];
        if (match === cursor) cursor = cursor.nextSibling; else old.insertBefore(match, cursor);
        morph(match, n);
      } else {
        old.insertBefore(document.importNode(n, true), cursor);
      }
    });
    while (cursor) { var after = cursor.nextSibling; old.removeChild(cursor); cursor = after; }
  }

  function update(fresh) {
    document.querySelectorAll("[data-live]").forEach(function (old) {
      var next = fresh.getElementById(old.id);
      if (next) morph(old, next);
    });
  }

  function tick() {
    if (document.hidden) return schedule();
    fetch(location.href, { credentials: "same-origin", headers: { "X-Requested-With": "fileproc-live" } })
      .then(function (r) {
        if (r.redirected) throw new Error("logged out: reload the page to log in");
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.text();
      })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html");
        update(fresh);
        refreshes += 1;
        document.body.dataset.refreshed = String(refreshes);
        stamp(true);
        every = Number(fresh.body.dataset.refresh || 0);
        if (every) schedule(); else if (live) live.textContent = "up to date · " + utc(new Date());
      })
      .catch(function (error) {
        stamp(false, error && error.message && error.message !== "Failed to fetch" ? error.message
          : "the server does not answer");
        schedule();
      });
  }

  function schedule() { if (every) setTimeout(tick, every * 1000); }

  // A form with data-confirm asks first (retry all failed, redrive all).
  document.addEventListener("submit", function (e) {
    var ask = e.target.dataset && e.target.dataset.confirm;
    if (ask && !window.confirm(ask)) e.preventDefault();
  });

  // A saved test event chosen in the list is loaded into the form.
  document.addEventListener("change", function (e) {
    if (e.target.id === "saved-event" && e.target.value) {
      location.search = "?event=" + encodeURIComponent(e.target.value);
    }
  });

  if (every) { stamp(true); schedule(); }
})();
