/* Outpost console: the little JavaScript the pages need. No framework; htmx does the requests.
 *
 * - Charts: a page holds empty <div id="chart-x"> elements and, inside its live (polled)
 *   partial, <script type="application/json" data-chart-for="chart-x"> blocks with a plotly
 *   figure built server-side (console/charts.py). We draw with Plotly.react so a refresh
 *   updates the chart in place (zoom is kept through layout.uirevision) instead of
 *   re-creating it.
 * - Live regions: an element with data-live polls with htmx; with data-follow-location it
 *   asks for the current address, so filters, sorting and paging pushed by htmx are kept.
 * - Filter forms with data-drop-empty leave empty fields out of the address.
 * - Copy buttons: data-copy-target="<element id>".
 */
(function () {
  "use strict";

  var CHART_SELECTOR = 'script[type="application/json"][data-chart-for]';
  var PLOTLY_CONFIG = { responsive: true, displaylogo: false, modeBarButtonsToRemove: ["lasso2d", "select2d"] };

  function drawCharts(root) {
    if (!window.Plotly || !root || !root.querySelectorAll) return;
    var blocks = Array.prototype.slice.call(root.querySelectorAll(CHART_SELECTOR));
    if (root.matches && root.matches(CHART_SELECTOR)) blocks.push(root);
    blocks.forEach(function (block) {
      var target = document.getElementById(block.dataset.chartFor);
      if (!target) return;
      var text = block.textContent;
      // Polls every few seconds usually bring the same figure; skip the redraw then.
      if (target.dataset.figure === text) return;
      var figure = JSON.parse(text);
      window.Plotly.react(target, figure.data || [], figure.layout || {}, PLOTLY_CONFIG);
      target.dataset.figure = text;
    });
  }

  function setLiveStatus(ok, detail) {
    document.querySelectorAll("[data-live-status]").forEach(function (el) {
      el.classList.toggle("text-bg-success", ok);
      el.classList.toggle("text-bg-warning", !ok);
      el.textContent = ok ? "Live · " + new Date().toLocaleTimeString() : detail;
      el.title = ok ? "Refreshes every few seconds" : "Showing the last data received";
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    drawCharts(document);
  });

  document.body.addEventListener("htmx:load", function (evt) {
    drawCharts(evt.target);
  });

  document.body.addEventListener("htmx:configRequest", function (evt) {
    if (evt.detail.elt.hasAttribute("data-follow-location")) {
      evt.detail.path = window.location.pathname + window.location.search;
    }
    // Filter forms leave unset fields out, so the pushed address reads ?region=eu-west
    // rather than ?q=&region=eu-west&node_class=&status=.
    if (evt.detail.elt.hasAttribute("data-drop-empty")) {
      var parameters = evt.detail.parameters;
      Object.keys(parameters).forEach(function (name) {
        if (parameters[name] === "") delete parameters[name];
      });
    }
  });

  document.body.addEventListener("htmx:beforeSwap", function (evt) {
    // A session that expired answers a poll with the login page (after a redirect); swapping
    // it into a table would be confusing, so reload the page and let the login take over.
    var loginUrl = document.body.dataset.loginUrl;
    var responseUrl = evt.detail.xhr && evt.detail.xhr.responseURL;
    if (loginUrl && responseUrl && new URL(responseUrl).pathname.indexOf(loginUrl) === 0) {
      evt.detail.shouldSwap = false;
      window.location.reload();
    }
  });

  document.body.addEventListener("htmx:afterRequest", function (evt) {
    if (!evt.detail.elt.hasAttribute("data-live")) return;
    if (evt.detail.successful) {
      setLiveStatus(true);
    } else if (evt.detail.failed && evt.detail.xhr && evt.detail.xhr.status) {
      setLiveStatus(false, "Not updating · server answered " + evt.detail.xhr.status);
    } else {
      setLiveStatus(false, "Not updating · console unreachable");
    }
  });

  function copyBySelection(text) {
    // Plain http on another host has no Clipboard API, and it may refuse (no focus); the old
    // selection copy still works in both cases.
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try {
      ok = document.execCommand("copy");
    } finally {
      document.body.removeChild(area);
    }
    return ok ? Promise.resolve() : Promise.reject(new Error("copy refused"));
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () { return copyBySelection(text); });
    }
    return copyBySelection(text);
  }

  function selectContents(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  document.addEventListener("click", function (evt) {
    var button = evt.target.closest("[data-copy-target]");
    if (!button) return;
    var source = document.getElementById(button.dataset.copyTarget);
    if (!source) return;
    var label = button.textContent;
    copyText(source.textContent.trim()).then(
      function () { button.textContent = "Copied"; },
      function () {
        // Leave the text selected so that Ctrl+C is all that is left to do.
        selectContents(source);
        button.textContent = "Press Ctrl+C to copy";
      }
    );
    window.setTimeout(function () { button.textContent = label; }, 2000);
  });
})();
