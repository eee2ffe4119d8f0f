// Storefront behaviour on top of the server-rendered pages, talking to the JSON API (same origin, cookies).
"use strict";

const FINAL = ["paid", "fulfilled", "cancelled", "expired", "needs_review", "disputed", "dispute_lost", "refunded"];
const $ = (selector, root = document) => root.querySelector(selector);
const LOCALE = document.documentElement.lang || "en";  // the shop's locale, as the server wrote its pages

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

function money(cents, currency) {  // as the server's Babel writes it: "€39.00", "¥500" in en
  if (cents === null || cents === undefined) return "";
  try {
    const format = new Intl.NumberFormat(LOCALE, { style: "currency", currency });
    return format.format(cents / 10 ** format.resolvedOptions().maximumFractionDigits);
  } catch (e) {  // no currency, or one this browser does not know
    return `${(cents / 100).toLocaleString(LOCALE, { minimumFractionDigits: 2 })} ${currency || ""}`.trim();
  }
}

function items(count) {
  return `${count} ${new Intl.PluralRules(LOCALE).select(count) === "one" ? "item" : "items"}`;
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
  if (reply.status === 200) {
    flash(`Added to your cart (${items(reply.data.item_count)}).`);
    showCount(reply.data.item_count);
    watchCart();  // a first cart: its count stays live from here
  }
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
  } else if (action === "accept-prices") checkout(true, target.dataset.mode === "hosted");
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
  else if (action === "checkout") checkout(false, event.submitter && event.submitter.value === "hosted");
  else if (action === "sign-in") signIn(form);
  else if (action === "sign-up") signUp(form);
  else if (action === "pay") (form.dataset.stripeKey ? payByCard(form) : pay(form));
});

// -- the cart, live across tabs ---------------------------------------------------------------

let shown = { id: null, version: -1 };

function renderReply(reply) {
  if (reply.status === 200) renderCart(reply.data);
  else flash(problemText(reply.error, "The cart could not be changed."));
}

function showCount(count) {  // the header's "Cart (3)"
  const badge = $("[data-testid=header-cart-count]");
  if (!badge) return;
  badge.textContent = `(${count})`;
  badge.hidden = !count;
}

const OPEN_CARTS = ["active", "abandoned"];  // abandoned: left a while, still the shopper's to check out

function renderCart(cart) {
  const open = OPEN_CARTS.includes(cart.status);
  showCount(open ? cart.item_count : 0);
  const section = $("#cart[data-cart-live]");
  if (!section) return;
  if (cart.id && cart.id === shown.id && cart.version !== undefined && cart.version < shown.version) return;
  shown = { id: cart.id, version: cart.version === undefined ? -1 : cart.version };
  section.dataset.currency = cart.currency || "";
  const focused = document.activeElement && document.activeElement.matches("input.qty") ? document.activeElement.dataset.product : null;
  section.dataset.count = cart.item_count;
  section.replaceChildren();
  $("#checkout").hidden = cart.items.length === 0 || !open;
  if (cart.status === "checked_out") section.append(el("p", { text: "This cart was checked out. Adding a product starts a new one." }));
  if (cart.items.length === 0) {
    const empty = el("p", { "data-testid": "cart-empty" }, "Your cart is empty. ", el("a", { href: "/", text: "Browse products" }));
    if (!$("[data-testid=who]")) empty.append(", or ", el("a", { href: "/signin", text: "sign in" }), " to see the cart you filled while signed in");
    empty.append(".");
    section.append(empty);
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
      " · ", el("span", { "data-testid": "cart-count", text: items(cart.item_count) })));
  if (focused) { const input = document.getElementById(`qty-${focused}`); if (input) input.focus(); }
}

let watching = null;

function watchCart() {  // the cart's event stream: the cart page and the header's count follow other tabs' changes
  if (watching || !window.EventSource) return;
  const section = $("#cart[data-cart-live]");
  if (section) shown = { id: section.dataset.cartId || null, version: Number(section.dataset.version || -1) };
  const events = watching = new EventSource("/api/cart/events");
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

async function checkout(acceptPrices, hosted) {
  const problem = $("#checkout-problem");
  problem.replaceChildren();
  const body = { accept_price_changes: acceptPrices, mode: hosted ? "hosted" : "elements" };
  const email = $("#email");
  if (email && email.value.trim()) body.email = email.value.trim();
  const buttons = document.querySelectorAll("#checkout button[type=submit]");
  for (const button of buttons) button.disabled = true;
  // One key per cart version and way of paying: a second click, or a retry after a lost answer, is the same checkout.
  const version = shown.id && shown.version >= 0 ? `cart-${shown.id}-v${shown.version}` : crypto.randomUUID();
  const reply = await api("POST", "/api/checkout", body, { "Idempotency-Key": `${version}-${body.mode}` });
  for (const button of buttons) button.disabled = false;
  if (reply.status === 201) {
    const page = reply.data.payment && reply.data.payment.checkout_url;  // hosted: pay on Stripe's page
    window.location.assign(page || `/orders/${encodeURIComponent(reply.data.order_id)}`);
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
      el("button", { type: "button", "data-action": "accept-prices", "data-mode": body.mode,
        text: "Accept new prices and place the order" }));
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

const PAYABLE = ["awaiting_payment", "payment_failed"];  // another card after a decline
const CARD_PAYABLE = ["reserved", ...PAYABLE];  // a card form waits for the order's intent ("Preparing payment…")
// Card entry's state: this page's last try (a decline's message, or confirmed) and the order as last polled.
const card = { stripe: null, element: null, confirmed: false, message: null, orderError: null, paid: false };

function showOrder(order) {
  const section = $("#order");
  section.dataset.status = order.status;
  const status = $("#order-status");
  status.textContent = order.status.replace(/_/g, " ");
  status.className = `status status-${order.status}`;
  const form = $("#pay");
  const byCard = Boolean(form && form.dataset.stripeKey);
  if (form) form.hidden = card.confirmed || !(byCard ? CARD_PAYABLE : PAYABLE).includes(order.status);
  if (byCard && order.payment.client_secret && !form.dataset.clientSecret) {
    form.dataset.clientSecret = order.payment.client_secret;  // the queued intent is made: the card can be taken
    mountCard(form);
  }
  const hosted = $("#hosted-payment");  // paid on Stripe's checkout page: its link while the page is open
  if (hosted) hosted.hidden = !order.payment.checkout_url;
  card.orderError = order.payment.last_error;
  card.paid = ["paid", "fulfilled"].includes(order.status);
  showPaymentProblem();
  $("#order-done").hidden = !card.paid;
  if (card.paid && $("#downloads-pending")) window.location.reload();  // the page makes the download links
}

function showPaymentProblem() {
  const message = card.confirmed ? null : (card.message || card.orderError);  // this page's last try, else the order's
  const declined = $("#payment-error");
  declined.hidden = !message;
  declined.textContent = message ? `Payment declined: ${message}` : "";
  const confirming = $("#payment-confirming");
  if (confirming) confirming.hidden = !card.confirmed || card.paid;
}

// -- paying by card with Stripe.js (offline: the embedded payment server's stand-in) ---------------

function mountCard(form) {
  if (card.element || form.hidden || !form.dataset.clientSecret) return;
  if (!card.stripe) {
    $("#card-problem").textContent = "The card form could not be loaded. Reload the page to try again.";
    return;
  }
  card.element = card.stripe.elements().create("card", { hidePostalCode: true });
  card.element.on("change", (event) => { $("#card-problem").textContent = event.error ? event.error.message : ""; });
  card.element.mount("#card-element");
  $("#payment-preparing").hidden = true;
  $("button[type=submit]", form).disabled = false;
}

async function payByCard(form) {
  if (!card.element) return;
  const button = $("button[type=submit]", form);
  button.disabled = true;
  card.message = null;
  $("#card-problem").textContent = "";
  const email = form.dataset.email;
  const result = await card.stripe.confirmCardPayment(form.dataset.clientSecret, {
    payment_method: { card: card.element, billing_details: email ? { email } : {} },
    return_url: `${window.location.origin}${window.location.pathname}`,  // where a redirect-based method comes back
  });
  button.disabled = false;
  if (result.error && result.error.type === "validation_error") $("#card-problem").textContent = result.error.message;
  else if (result.error) card.message = result.error.message || "The payment was not made.";  // try another card
  else settled(result.paymentIntent);
  showPaymentProblem();
}

function settled(intent) {
  // The order turns paid when the shop hears from Stripe (a webhook); followOrder's poll shows it.
  card.confirmed = ["succeeded", "processing"].includes(intent.status);
  if (card.confirmed) $("#pay").hidden = true;
  else if (intent.last_payment_error) card.message = intent.last_payment_error.message;
}

async function returnedFromRedirect() {
  const secret = new URLSearchParams(window.location.search).get("payment_intent_client_secret");
  if (!secret || !card.stripe) return;
  window.history.replaceState(null, "", window.location.pathname);
  const result = await card.stripe.retrievePaymentIntent(secret);
  if (result.paymentIntent) settled(result.paymentIntent);
  showPaymentProblem();
}

function startCardEntry() {
  const form = $("#pay[data-stripe-key]");
  if (!form || form.hidden) return;
  if (typeof window.Stripe === "function") card.stripe = window.Stripe(form.dataset.stripeKey);
  if (form.dataset.clientSecret) mountCard(form);
  returnedFromRedirect();
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

async function startHeaderCount() {
  if ($("#cart[data-cart-live]")) { showCount(Number($("#cart").dataset.count || 0)); watchCart(); return; }
  if (!$("[data-testid=header-cart-count]")) return;
  const reply = await api("GET", "/api/cart");
  if (reply.status !== 200) return;
  showCount(OPEN_CARTS.includes(reply.data.status) ? reply.data.item_count : 0);
  if (reply.data.id) watchCart();
}

startHeaderCount();
startCardEntry();
followOrder();
