// Cartwheel's stand-in for Stripe.js v3, served by the embedded payment server at /js.stripe.com/v3/.
// The subset the storefront uses, with Stripe.js's names and answers, so the same page code runs against
// real Stripe: Stripe(key).elements().create("card"), confirmCardPayment (3-D Secure in a modal, like a
// bank's test page) and retrievePaymentIntent. The card fields live in the page (Stripe's live in an iframe).
"use strict";
(function () {
  const script = document.currentScript || document.querySelector("script[src*='/js.stripe.com/v3']");
  const API = new URL(script ? script.src : window.location.href).origin; // this server answers the API too
  const AUTHENTICATION_FAILED = "We are unable to authenticate your payment method. Please choose a different "
    + "payment method and try again.";

  function formPairs(value, prefix, pairs) {
    if (value === undefined || value === null) return pairs;
    if (typeof value === "object") {
      for (const [key, inner] of Object.entries(value)) formPairs(inner, prefix ? `${prefix}[${key}]` : key, pairs);
    } else pairs.append(prefix, String(value));
    return pairs;
  }

  async function call(method, path, params, query) {
    const url = new URL(path, API);
    formPairs(query, "", url.searchParams);
    const init = { method, headers: { Accept: "application/json" } };
    if (method !== "GET") init.body = formPairs(params, "", new URLSearchParams()); // a form, as Stripe.js sends
    let reply;
    try {
      reply = await fetch(url, init);
    } catch (error) {
      return { error: { type: "api_connection_error", message: "The payment server could not be reached." } };
    }
    const body = await reply.json().catch(() => ({}));
    if (reply.ok) return { body };
    return { error: body.error || { type: "api_error", message: `The payment server answered ${reply.status}.` } };
  }

  function luhn(digits) {
    let sum = 0;
    for (let i = 0; i < digits.length; i += 1) {
      let digit = Number(digits[digits.length - 1 - i]);
      if (i % 2 === 1) digit = digit * 2 > 9 ? digit * 2 - 9 : digit * 2;
      sum += digit;
    }
    return sum % 10 === 0;
  }

  const FIELDS = [
    { name: "number", label: "Card number", placeholder: "1234 1234 1234 1234", autocomplete: "cc-number", size: 19 },
    { name: "expiry", label: "Expiration date (MM / YY)", placeholder: "MM / YY", autocomplete: "cc-exp", size: 7 },
    { name: "cvc", label: "Security code (CVC)", placeholder: "CVC", autocomplete: "cc-csc", size: 4 },
  ];

  function validation(code, message) {
    return { type: "validation_error", code, message };
  }

  // The card as typed: {card: {number, exp_month, exp_year, cvc}} or {error}; `partial` tells incomplete from wrong.
  function readCard(values, partial) {
    const number = values.number.replace(/[\s-]/g, "");
    const expiry = values.expiry.replace(/\D/g, "");
    const cvc = values.cvc.trim();
    if (/\D/.test(number) || (number.length >= 16 && !luhn(number))) {
      return { error: validation("invalid_number", "Your card number is invalid.") };
    }
    if (number.length < 12) return partial ? {} : { error: validation("incomplete_number", "Your card number is incomplete.") };
    if (expiry.length < 4) return partial ? {} : { error: validation("incomplete_expiry", "Your card's expiration date is incomplete.") };
    const month = Number(expiry.slice(0, 2));
    const year = 2000 + Number(expiry.slice(2, 4));
    const now = new Date();
    if (month < 1 || month > 12) return { error: validation("invalid_expiry_month", "Your card's expiration date is invalid.") };
    if (year < now.getFullYear() || (year === now.getFullYear() && month < now.getMonth() + 1)) {
      return { error: validation("invalid_expiry_year_past", "Your card's expiration year is in the past.") };
    }
    if (!/^\d{3,4}$/.test(cvc)) return partial ? {} : { error: validation("incomplete_cvc", "Your card's security code is incomplete.") };
    return { card: { number, exp_month: month, exp_year: year, cvc } };
  }

  function createCardElement() {
    const handlers = {};
    let host = null;
    let inputs = {};
    const emit = (event, detail) => (handlers[event] || []).forEach((handler) => handler(detail));
    const values = () => Object.fromEntries(FIELDS.map((field) => [field.name, inputs[field.name] ? inputs[field.name].value : ""]));
    const changed = () => {
      const typed = values();
      const empty = Object.values(typed).every((value) => !value.trim());
      const read = readCard(typed, true);
      host.classList.toggle("StripeElement--empty", empty);
      host.classList.toggle("StripeElement--complete", Boolean(read.card));
      host.classList.toggle("StripeElement--invalid", Boolean(read.error));
      emit("change", { elementType: "card", empty, complete: Boolean(read.card), error: read.error, brand: "unknown" });
    };
    const element = {
      mount(target) {
        host = typeof target === "string" ? document.querySelector(target) : target;
        if (!host) throw new Error(`Stripe.js stand-in: nothing to mount the card element on (${target})`);
        const row = document.createElement("div");
        row.setAttribute("role", "group");
        row.setAttribute("aria-label", "Card details");
        Object.assign(row.style, { display: "flex", gap: "0.5rem", flexWrap: "wrap" });
        inputs = {};
        for (const field of FIELDS) {
          const input = document.createElement("input");
          Object.assign(input, { name: field.name, placeholder: field.placeholder, autocomplete: field.autocomplete, size: field.size });
          input.setAttribute("aria-label", field.label);
          input.setAttribute("inputmode", "numeric");
          input.addEventListener("input", changed);
          input.addEventListener("focus", () => { host.classList.add("StripeElement--focus"); emit("focus", { elementType: "card" }); });
          input.addEventListener("blur", () => { host.classList.remove("StripeElement--focus"); emit("blur", { elementType: "card" }); });
          inputs[field.name] = input;
          row.append(input);
        }
        host.classList.add("StripeElement", "StripeElement--empty");
        host.replaceChildren(row);
        emit("ready", { elementType: "card" });
      },
      on(event, handler) { (handlers[event] = handlers[event] || []).push(handler); return element; },
      off(event, handler) { handlers[event] = (handlers[event] || []).filter((known) => known !== handler); return element; },
      focus() { if (inputs.number) inputs.number.focus(); },
      clear() { Object.values(inputs).forEach((input) => { input.value = ""; }); if (host) changed(); },
      unmount() { if (host) host.replaceChildren(); host = null; inputs = {}; },
      destroy() { element.unmount(); },
      _read() { return host ? readCard(values(), false) : { error: validation("incomplete_number", "The card element is not mounted.") }; },
    };
    return element;
  }

  // The bank's 3-D Secure page, as a modal: resolves true (Complete) or false (Fail, or Escape).
  function challenge() {
    return new Promise((resolve) => {
      const overlay = document.createElement("div");
      Object.assign(overlay.style, { position: "fixed", inset: "0", background: "rgba(0,0,0,.5)", display: "grid",
        placeItems: "center", zIndex: "2147483647" });
      const dialog = document.createElement("div");
      dialog.setAttribute("role", "dialog");
      dialog.setAttribute("aria-modal", "true");
      dialog.setAttribute("aria-labelledby", "stripe-standin-3ds-title");
      Object.assign(dialog.style, { background: "#fff", color: "#1d232b", padding: "1.5rem", borderRadius: "8px", maxWidth: "24rem" });
      const title = document.createElement("h2");
      title.id = "stripe-standin-3ds-title";
      title.textContent = "3D Secure test payment";
      const text = document.createElement("p");
      text.textContent = "Your bank asks you to confirm this payment (the embedded payment server's test page).";
      const finish = (passed) => {
        document.removeEventListener("keydown", onKey, true);
        overlay.remove();
        resolve(passed);
      };
      const onKey = (event) => { if (event.key === "Escape") finish(false); };
      const buttons = [["Complete", true], ["Fail", false]].map(([label, passed]) => {
        const button = document.createElement("button");
        button.type = "button";
        button.textContent = label;
        button.setAttribute("aria-label", `${label} authentication`);
        button.style.marginRight = "0.5rem";
        button.addEventListener("click", () => finish(passed));
        return button;
      });
      dialog.append(title, text, ...buttons);
      overlay.append(dialog);
      document.addEventListener("keydown", onKey, true);
      document.body.append(overlay);
      buttons[0].focus();
    });
  }

  function outcome(intent) {
    const error = intent.last_payment_error;
    if (intent.status === "requires_payment_method" && error) {
      const message = error.code === "payment_intent_authentication_failure" ? AUTHENTICATION_FAILED : error.message;
      return { error: { ...error, message, payment_intent: intent } };
    }
    return { paymentIntent: intent };
  }

  window.Stripe = function Stripe(key) {
    if (typeof key !== "string" || !key.startsWith("pk_")) {
      throw new Error("Stripe.js stand-in: Stripe() takes a publishable key (pk_...)");
    }
    const intentOf = (secret) => String(secret || "").split("_secret_")[0];
    const secretOf = (clientSecret) => ({ key, client_secret: clientSecret });
    return {
      elements() {
        return {
          create(type) {
            if (type !== "card") throw new Error(`Stripe.js stand-in: only the "card" element is offered, not "${type}"`);
            return createCardElement();
          },
        };
      },
      async confirmCardPayment(clientSecret, data = {}, options = {}) {
        const id = intentOf(clientSecret);
        let method = data.payment_method;
        if (method && typeof method === "object") {
          const read = method.card && method.card._read ? method.card._read()
            : { error: { type: "integration_error", message: "payment_method.card must be a card element." } };
          if (read.error) return { error: read.error };
          const made = await call("POST", "/v1/payment_methods", { key, type: "card", card: read.card,
            billing_details: method.billing_details });
          if (made.error) return { error: made.error };
          method = made.body.id;
        }
        const params = { ...secretOf(clientSecret), payment_method: method, return_url: data.return_url };
        const confirmed = await call("POST", `/v1/payment_intents/${id}/confirm`, params);
        if (confirmed.error) return { error: confirmed.error };
        let intent = confirmed.body;
        if (intent.status === "requires_action" && options.handleActions !== false) {
          const passed = await challenge();
          const answered = await call("POST", `/v1/payment_intents/${id}/_authenticate`, secretOf(clientSecret),
            { success: passed });
          if (answered.error) return { error: answered.error };
          intent = answered.body;
        }
        return outcome(intent);
      },
      async retrievePaymentIntent(clientSecret) {
        const found = await call("GET", `/v1/payment_intents/${intentOf(clientSecret)}`, null, secretOf(clientSecret));
        return found.error ? { error: found.error } : { paymentIntent: found.body };
      },
    };
  };
}());
