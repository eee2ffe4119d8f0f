// Admin pages: confirm destructive buttons, submit filter selects, refresh an order until it settles.
"use strict";
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) event.preventDefault();
});
document.addEventListener("change", (event) => {
  if (event.target.matches("select[data-autosubmit]")) event.target.form.submit();
});
(function refreshOrder() {
  const section = document.querySelector("[data-refresh='true']");
  if (!section) return;
  setTimeout(async () => {
    try {
      const reply = await fetch(window.location.href, { headers: { Accept: "text/html" } });
      if (!reply.ok) return;
      const fresh = new DOMParser().parseFromString(await reply.text(), "text/html").getElementById(section.id);
      if (fresh) section.replaceWith(fresh);
    } catch (error) { /* the next page load shows it */ }
    refreshOrder();
  }, 1000);
})();
