// SheLLM dashboard: copy buttons and a slow refresh; the pages work without it.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.hidden = false;
    button.addEventListener("click", function () {
      var source = document.getElementById(button.getAttribute("data-copy"));
      if (!source || !navigator.clipboard) { return; }
      navigator.clipboard.writeText(source.textContent.trim()).then(function () {
        button.textContent = "Copied";
      }, function () {
        button.textContent = "Select and copy by hand";
      });
    });
  });
  // The overview reloads itself, no more often than once a minute, and only
  // while it is in view.
  var marker = document.querySelector("[data-refresh]");
  var every = marker ? Number(marker.getAttribute("data-refresh")) : 0;
  if (every >= 60) {
    window.setInterval(function () {
      if (document.visibilityState === "visible") { window.location.reload(); }
    }, every * 1000);
  }
});
