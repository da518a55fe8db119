/* relay.js: one view per page view, sent once the page is visible (docs/api.md#portal-script).
   <script src=".../v1/relay.js?v=..." data-beacon="<beaconUrl>" async></script> */
(function (d, n) {
  "use strict";
  var MARK = "relayBeacon";

  function watch(url) {
    var sent = false;
    function send() {
      if (sent || d.visibilityState !== "visible") return;
      sent = true;
      try {
        if (n.sendBeacon && n.sendBeacon(url)) return;
      } catch (e) { /* refused by sendBeacon: fetch below */ }
      if (window.fetch) {
        fetch(url, {method: "POST", keepalive: true, mode: "cors", credentials: "omit"})
          ["catch"](function () {});
      }
    }
    d.addEventListener("visibilitychange", send);
    // Back from the back/forward cache: the page is seen again, a new page view.
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) { sent = false; send(); }
    });
    send();
  }

  // Its own tag (async too); run by a loader instead, every tag not started yet.
  var all = d.querySelectorAll("script[data-beacon]"), me = d.currentScript;
  var tags = me && me.getAttribute("data-beacon") ? [me] : all;
  for (var i = 0; i < tags.length; i++) {
    var url = tags[i].getAttribute("data-beacon"), seen = !url || tags[i][MARK];
    for (var j = 0; j < all.length && !seen; j++) {
      seen = all[j][MARK] && all[j].getAttribute("data-beacon") === url;
    }
    tags[i][MARK] = true;
    if (!seen) watch(url);  // the same beacon in two tags counts once
  }
})(document, navigator);
