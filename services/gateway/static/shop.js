// Storefront behaviour on top of the server-rendered pages, talking to the JSON API (same origin, cookies).
"use strict";

const FINAL = ["paid", "fulfilled", "cancelled", "expired", "needs_review", "disputed", "dispute_lost", "refunded"];
const $ = (selector, root = document) => root.querySelector(selector);

async function api(method, path, body, headers = {}) {
  const init = { method, headers: { Accept: "application/json", ...headers }, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let reply;
  try {
    reply = await fetch(path, init);
  } catch (error) {
    return { status: 0, data: null, error: { code: "offline", message: "The shop cannot be reached. Check your connection." } };
  }
  const data = reply.status === 204 ? null : await reply.json().catch(() => null);
  return { status: reply.status, data, error: (data && data.error) || (reply.ok ? null : { message: `The shop answered ${reply.status}.` }) };
}

function money(cents, currency) {
  if (cents === null || cents === undefined) return "";
  let digits = 2;
  try { digits = new Intl.NumberFormat("en", { style: "currency", currency }).resolvedOptions().maximumFractionDigits; } catch (e) { /* keep 2 */ }
  const amount = (cents / 10 ** digits).toLocaleString("en", { minimumFractionDigits: digits, maximumFractionDigits: digits });
  return `${amount} ${currency || ""}`.trim();
}

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "text") node.textContent = value;
    else if (value !== false && value !== null && value !== undefined) node.setAttribute(name, value === true ? "" : value);
  }
  node.append(...children);
  return node;
}

function flash(message) {
  const box = $("#flash");
  if (box) box.textContent = message;
}

function problemText(error, fallback) {
  if (!error) return fallback;
  if (error.code === "out_of_stock" && error.available !== undefined) {
    return error.available > 0 ? `Only ${error.available} left in stock.` : "Sorry, this is out of stock.";
  }
  if (error.code === "rate_limited" || error.code === "too_many_requests") return "Too many attempts; wait a moment and try again.";
  return error.message || fallback;
}

// -- adding to the cart ----------------------------------------------------------------------

async function addToCart(productId, quantity, button) {
  if (button) button.disabled = true;
  const reply = await api("POST", "/api/cart/items", { product_id: productId, quantity });
  if (button) button.disabled = false;
  if (reply.status === 200) flash(`Added to your cart (${reply.data.item_count} items).`);
  else flash(problemText(reply.error, "Could not add this to the cart."));
}

document.addEventListener("click", async (event) => {
  const target = event.target.closest("[data-action]");
  if (!target) return;
  const action = target.dataset.action;
  if (action === "add") addToCart(target.dataset.product, 1, target);
  else if (action === "remove") renderReply(await api("DELETE", `/api/cart/items/${target.dataset.product}`));
  else if (action === "sign-out") {
    await api("POST", "/api/auth/logout");
    window.location.assign("/");
  } else if (action === "accept-prices") checkout(true);
});

document.addEventListener("change", async (event) => {
  const input = event.target;
  if (input.matches("select[data-autosubmit]")) input.form.submit();
  if (!input.matches("input.qty")) return;
  const quantity = Number.parseInt(input.value, 10);
  if (!Number.isInteger(quantity) || quantity < 0) return;
  renderReply(await api("PATCH", `/api/cart/items/${input.dataset.product}`, { quantity }));
});

document.addEventListener("submit", (event) => {
  const form = event.target;
  const action = form.dataset.action;
  if (!action) return;
  event.preventDefault();
  if (action === "add-form") addToCart(form.dataset.product, Number.parseInt(form.quantity.value, 10) || 1, $("button", form));
  else if (action === "checkout") checkout(false);
  else if (action === "sign-in") signIn(form);
  else if (action === "sign-up") signUp(form);
  else if (action === "pay") pay(form);
});

// -- the cart, live across tabs ---------------------------------------------------------------

let shown = { id: null, version: -1 };

function renderReply(reply) {
  if (reply.status === 200) renderCart(reply.data);
  else flash(problemText(reply.error, "The cart could not be changed."));
}

function renderCart(cart) {
  const section = $("#cart[data-cart-live]");
  if (!section) return;
  if (cart.id && cart.id === shown.id && cart.version !== undefined && cart.version < shown.version) return;
  shown = { id: cart.id, version: cart.version === undefined ? -1 : cart.version };
  section.dataset.currency = cart.currency || "";
  const focused = document.activeElement && document.activeElement.matches("input.qty") ? document.activeElement.dataset.product : null;
  section.dataset.count = cart.item_count;
  section.replaceChildren();
  $("#checkout").hidden = cart.items.length === 0 || cart.status !== "active";
  if (cart.status === "checked_out") section.append(el("p", { text: "This cart was checked out. Adding a product starts a new one." }));
  if (cart.items.length === 0) {
    section.append(el("p", { "data-testid": "cart-empty" }, "Your cart is empty. ", el("a", { href: "/", text: "Browse products" })));
    return;
  }
  const rows = cart.items.map((line) => el("tr", { "data-product": line.product_id },
    el("td", {}, el("a", { href: `/products/${line.product_id}`, text: line.name })),
    el("td", { text: money(line.unit_price_cents, cart.currency) }),
    el("td", {},
      el("label", { class: "visually-hidden", for: `qty-${line.product_id}`, text: `Quantity of ${line.name}` }),
      el("input", { id: `qty-${line.product_id}`, class: "qty", type: "number", min: 0, max: 99, value: line.quantity, "data-product": line.product_id })),
    el("td", { text: money(line.line_total_cents, cart.currency) }),
    el("td", {}, el("button", { type: "button", class: "link", "data-action": "remove", "data-product": line.product_id, text: "Remove" }))));
  const head = el("tr", {}, ...["Product", "Price", "Quantity", "Total"].map((text) => el("th", { scope: "col", text })),
    el("th", { scope: "col" }, el("span", { class: "visually-hidden", text: "Remove" })));
  section.append(
    el("table", { class: "lines" }, el("thead", {}, head), el("tbody", {}, ...rows)),
    el("p", { class: "total" }, "Total ", el("strong", { "data-testid": "cart-total", text: money(cart.total_cents, cart.currency) }),
      " · ", el("span", { "data-testid": "cart-count", text: String(cart.item_count) }), " items"));
  if (focused) { const input = document.getElementById(`qty-${focused}`); if (input) input.focus(); }
}

function watchCart() {
  const section = $("#cart[data-cart-live]");
  if (!section || !window.EventSource) return;
  shown = { id: section.dataset.cartId || null, version: Number(section.dataset.version || -1) };
  const events = new EventSource("/api/cart/events");
  events.addEventListener("cart", (event) => {
    try { renderCart(JSON.parse(event.data)); } catch (error) { /* a malformed event: wait for the next */ }
  });
  window.addEventListener("pagehide", () => events.close());
}

// -- checkout ----------------------------------------------------------------------------------

function cartNames() {
  const names = {};
  for (const row of document.querySelectorAll("#cart tr[data-product]")) names[row.dataset.product] = $("a", row).textContent;
  return names;
}

async function checkout(acceptPrices) {
  const problem = $("#checkout-problem");
  problem.replaceChildren();
  const body = { accept_price_changes: acceptPrices };
  const email = $("#email");
  if (email && email.value.trim()) body.email = email.value.trim();
  const button = $("#checkout button[type=submit]");
  button.disabled = true;
  // One key per cart version: a second click, or a retry after a lost answer, is the same checkout.
  const key = shown.id && shown.version >= 0 ? `cart-${shown.id}-v${shown.version}` : crypto.randomUUID();
  const reply = await api("POST", "/api/checkout", body, { "Idempotency-Key": key });
  button.disabled = false;
  if (reply.status === 201) {
    window.location.assign(`/orders/${encodeURIComponent(reply.data.order_id)}`);
    return;
  }
  const error = reply.error || {};
  const box = el("div", { class: "problem" });
  if (error.code === "out_of_stock") {
    const names = cartNames();
    box.append(el("p", { text: "Some items are no longer in stock in that quantity:" }),
      el("ul", {}, ...(error.lines || []).map((line) => el("li", { text:
        `${names[line.product_id] || line.product_id}: ${line.available} available (you asked for ${line.requested})` }))),
      el("p", { text: "Change the quantities above and place the order again." }));
  } else if (error.code === "price_changed") {
    const currency = $("#cart").dataset.currency;
    box.append(el("p", { text: "Some prices changed since you added these items:" }),
      el("ul", {}, ...(error.changes || []).map((change) => el("li", { text:
        `${change.name}: was ${money(change.old_unit_price_cents, currency)}, now ${money(change.new_unit_price_cents, currency)}` }))),
      el("button", { type: "button", "data-action": "accept-prices", text: "Accept new prices and place the order" }));
  } else {
    const fields = error.fields || [];
    const emailProblem = fields.find((f) => (f.field || "").endsWith("email"));
    const slot = $("[data-error-for=email]", $("#checkout"));
    if (emailProblem && slot) slot.textContent = emailProblem.message;
    box.append(el("p", { text: error.code === "empty_cart" ? "Your cart is empty." : problemText(error, "The order could not be placed.") }));
  }
  problem.append(box);
}

// -- accounts ----------------------------------------------------------------------------------

function showFieldErrors(form, reply) {
  for (const slot of form.querySelectorAll("[data-error-for]")) slot.textContent = "";
  $(".form-error", form).textContent = "";
  const fields = (reply.error && reply.error.fields) || [];
  for (const problem of fields) {
    const name = (problem.field || "").replace(/^body\./, "");
    const slot = $(`[data-error-for="${name}"]`, form);
    if (slot) slot.textContent = problem.message;
    else $(".form-error", form).textContent = problem.message;
  }
  if (!fields.length && reply.error) {
    const slot = reply.error.code === "email_taken" ? $("[data-error-for=email]", form) : $(".form-error", form);
    slot.textContent = reply.status === 429 ? "Too many attempts; wait a moment and try again." : reply.error.message;
  }
}

async function signIn(form, credentials) {
  const body = credentials || { email: form.email.value.trim(), password: form.password.value };
  const reply = await api("POST", "/api/auth/login", body);
  if (reply.status !== 200) return showFieldErrors(form, reply);
  const adjustments = reply.data.adjustments || [];
  if (!adjustments.length) {
    window.location.assign(reply.data.cart.item_count ? "/cart" : "/");
    return;
  }
  const reasons = { out_of_stock: "not enough stock", line_limit: "the cart holds no more lines", quantity_limit: "more than allowed per order",
    currency_mismatch: "priced in another currency", not_for_sale: "no longer for sale" };
  const box = $("#adjustments");
  $("ul", box).replaceChildren(...adjustments.map((a) => el("li", { text:
    `${a.name}: ${a.quantity} of ${a.requested} moved to your cart (${reasons[a.reason] || a.reason})` })));
  box.hidden = false;
  for (const other of document.querySelectorAll("form[data-action^=sign]")) other.hidden = true;
}

async function signUp(form) {
  const credentials = { email: form.email.value.trim(), password: form.password.value };
  const reply = await api("POST", "/api/auth/register", credentials);
  if (reply.status !== 201) return showFieldErrors(form, reply);
  return signIn(form, credentials);
}

// -- an order, until it settles ------------------------------------------------------------------

function showOrder(order) {
  const section = $("#order");
  section.dataset.status = order.status;
  const status = $("#order-status");
  status.textContent = order.status.replace(/_/g, " ");
  status.className = `status status-${order.status}`;
  $("#pay").hidden = !["awaiting_payment", "payment_failed"].includes(order.status);  // another card after a decline
  const declined = $("#payment-error");
  declined.hidden = !order.payment.last_error;
  declined.textContent = order.payment.last_error ? `Payment declined: ${order.payment.last_error}` : "";
  $("#order-done").hidden = !["paid", "fulfilled"].includes(order.status);
}

async function pay(form) {
  const button = $("button", form);
  button.disabled = true;
  const id = $("#order").dataset.orderId;
  const reply = await api("POST", `/api/orders/${encodeURIComponent(id)}/pay`, { payment_method: form.payment_method.value });
  button.disabled = false;
  if (reply.status === 200) showOrder(reply.data);
  else flash(problemText(reply.error, "The payment could not be made."));
}

function followOrder() {
  const section = $("#order");
  if (!section) return;
  const poll = async () => {
    if (FINAL.includes(section.dataset.status)) return;
    const reply = await api("GET", `/api/orders/${encodeURIComponent(section.dataset.orderId)}`);
    if (reply.status === 200) showOrder(reply.data);
    setTimeout(poll, 1000);
  };
  setTimeout(poll, 1000);
}

watchCart();
followOrder();
