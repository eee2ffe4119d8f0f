"""The Stripe stand-in: Cartwheel's own process in front of localstripe, answering where localstripe cannot.

``python -m cartwheel.paymentserver --port P --upstream http://127.0.0.1:Q [--state FILE] [--rate-limit N]
[--min-session-seconds S]``
(started by :func:`cartwheel.localstripe.start_localstripe` and by ``cartwheel up``). It forwards
every request (method, path, query, body, ``Authorization``, ``Idempotency-Key``) to localstripe
over HTTP — localstripe is GPL and never imported here — and changes only this:

- **Test cards** (:mod:`.testcards`): every ``pm_card_*`` id of Stripe's testing page becomes a real
  method in localstripe; a confirmation with a card that declines (``pm_card_chargeDeclined``,
  insufficient funds, expired card, ...) is answered here, with 402 ``card_error`` carrying the
  intent, the intent's ``last_payment_error`` and a signed ``payment_intent.payment_failed``; a
  second confirmation with another card works (:mod:`.intents`). 3-D Secure cards go to
  localstripe (``requires_action``; ``POST /v1/payment_intents/{id}/_authenticate``); a failed
  authentication is reported as Stripe does.
- **Parameters localstripe refuses** on a PaymentIntent (``automatic_payment_methods``,
  ``receipt_email``, ``description``, ``statement_descriptor_suffix``; ``return_url``) are taken,
  kept and shown on the intent.
- **Browser calls** with a publishable key: ``POST /v1/payment_methods``, ``GET`` and
  ``POST .../confirm`` of an intent with its ``client_secret`` (any other secret: 404).
- **Hosted checkout** (:mod:`.checkoutroutes`; localstripe has no Checkout Sessions):
  ``POST /v1/checkout/sessions`` (``mode=payment``, ``line_items`` with ``price_data``; Idempotency-Key
  honoured), ``GET .../{id}``, ``POST .../{id}/expire``, ``GET .../{id}/line_items``; the session's
  ``url`` is this process's page ``/c/pay/{id}`` (:mod:`.hostedpage`), a plain form that pays with a
  typed test card through the intent logic above (one intent per session), then 303 to ``success_url``.
  ``checkout.session.completed`` and ``checkout.session.expired`` (asked, or at ``expires_at``, checked
  every 0.5 s) are signed and sent here. ``expires_at`` must be 30 minutes to 24 hours ahead, as at
  Stripe; ``--min-session-seconds`` lowers the 30 minutes for tests.
- **Webhooks** (:mod:`.webhooks`): ``POST /_config/webhooks/<id>`` is kept here and passed on;
  the stand-in signs and sends its own events, localstripe sends its own.
- **Rate limit** (``--rate-limit N``, off by default): above N API requests a second with a secret
  key, 429 ``rate_limit`` with ``Retry-After``; ``GET /_config/stats`` counts requests and 429s
  (``DELETE /_config/stats`` sets the counters to zero).
- **State** (:mod:`.state`): in memory, or in ``--state FILE`` (JSON), read back at start;
  ``DELETE /_config/data`` clears it and localstripe's.
"""
