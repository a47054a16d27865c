// distribmail's screen: open a mail (double click, Enter), "show more", and a refresh
// every few seconds. Rows arrive as HTML rendered (and escaped) by the server's own
// templates; this script never builds markup from data.
(function () {
  "use strict";

  function rowOf(target) {
    return target && target.closest ? target.closest("tr[data-href]") : null;
  }

  function open(row) {
    if (row) window.location.assign(row.dataset.href);
  }

  document.addEventListener("dblclick", function (event) {
    open(rowOf(event.target));
  });

  document.addEventListener("keydown", function (event) {
    var row = rowOf(event.target);
    if (!row || event.target !== row) return; // keys inside the row's link stay the link's
    var next = null;
    if (event.key === "Enter") {
      event.preventDefault();
      open(row);
    } else if (event.key === "ArrowDown") {
      next = row.nextElementSibling;
    } else if (event.key === "ArrowUp") {
      next = row.previousElementSibling;
    }
    if (next && next.matches("tr[data-href]")) {
      event.preventDefault();
      next.focus();
    }
  });

  // Ticking a status filters at once; the "Show" button does the same without script.
  document.addEventListener("change", function (event) {
    var box = event.target;
    if (box.matches && box.matches("#chips input[type=checkbox]")) box.form.submit();
  });

  var table = document.getElementById("messages");
  if (!table) return;
  var tbody = document.getElementById("rows");
  var chips = document.getElementById("chips");
  var total = document.getElementById("total");
  var live = document.getElementById("live");
  var more = document.getElementById("load-more");
  var pageSize = parseInt(table.dataset.pageSize, 10) || 100;
  var maxRows = 1000; // the API's largest page: beyond it, a refresh could drop rows
  var busy = false;

  function fetchRows(extra) {
    var url = table.dataset.rowsUrl + "?" + table.dataset.query + "&" + extra;
    return fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (response.status === 401) {
          window.location.reload(); // the session ended: the server answers with the login
          throw new Error("signed out");
        }
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      });
  }

  function setNext(cursor) {
    more.dataset.next = cursor || "";
    more.hidden = !cursor;
  }

  function setLive(ok) {
    live.textContent = ok ? live.dataset.online : live.dataset.offline;
    live.classList.toggle("offline", !ok);
  }

  function shownIds() {
    var ids = {};
    tbody.querySelectorAll("tr[data-id]").forEach(function (row) { ids[row.dataset.id] = true; });
    return ids;
  }

  more.addEventListener("click", function () {
    if (busy || !more.dataset.next) return;
    busy = true;
    more.disabled = true;
    fetchRows("limit=" + pageSize + "&cursor=" + encodeURIComponent(more.dataset.next))
      .then(function (data) {
        tbody.insertAdjacentHTML("beforeend", data.rows);
        setNext(data.next);
        setLive(true);
      })
      .catch(function () { setLive(false); })
      .finally(function () { busy = false; more.disabled = false; });
  });

  // The refresh asks again for as many rows as are shown (at least a page), so rows that
  // "show more" brought stay, new mails appear on top and statuses change in place. The
  // cursor of "show more" is taken from the same answer, so no row is ever repeated.
  function refresh() {
    var shown = tbody.querySelectorAll("tr[data-id]").length;
    if (busy || document.hidden || shown > maxRows) return;
    busy = true;
    var before = shownIds();
    var focused = rowOf(document.activeElement);
    var focusedId = focused ? focused.dataset.id : null;
    fetchRows("limit=" + Math.min(maxRows, Math.max(pageSize, shown)))
      .then(function (data) {
        tbody.innerHTML = data.rows;
        if (!chips.contains(document.activeElement)) chips.innerHTML = data.chips;
        total.textContent = data.total;
        setNext(data.next);
        tbody.querySelectorAll("tr[data-id]").forEach(function (row) {
          if (shown && !before[row.dataset.id]) row.classList.add("fresh");
          if (row.dataset.id === focusedId) row.focus();
        });
        setLive(true);
      })
      .catch(function () { setLive(false); })
      .finally(function () { busy = false; });
  }

  var seconds = parseInt(table.dataset.refreshSeconds, 10) || 10;
  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", function () {
    if (!document.hidden) refresh();
  });
})();
