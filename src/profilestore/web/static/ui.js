// A partial request whose session ended answers 401: go to the login form, and come back.
document.addEventListener("htmx:responseError", function (event) {
  if (event.detail.xhr.status === 401) {
    var back = window.location.pathname + window.location.search;
    window.location.assign("/ui/login?next=" + encodeURIComponent(back));
  }
});
