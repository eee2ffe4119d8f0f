"""The hosted checkout page's HTML: the order and a card form, the 3-D Secure challenge, a closed session (pure).

Plain forms, no script: every value is escaped, and the page's security policy loads nothing.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape

from cartwheel.money import from_stripe, minor_units
from cartwheel.paymentserver.sessions import CheckoutSession

STYLE = """
body { font: 16px/1.5 system-ui, sans-serif; margin: 0; background: #f6f8fa; color: #1a1f36; }
main { max-width: 28rem; margin: 2rem auto; padding: 1.5rem; background: #fff; border-radius: 8px;
       box-shadow: 0 1px 4px rgba(0, 0, 0, .12); }
.test { margin: 0 0 1rem; padding: .25rem .5rem; background: #fff4d6; border-radius: 4px; font-size: .875rem; }
table { width: 100%; border-collapse: collapse; margin-bottom: 1rem; }
caption { text-align: left; font-weight: 600; }
th, td { padding: .25rem 0; text-align: left; } td:last-child, th:last-child { text-align: right; }
tfoot th, tfoot td { border-top: 1px solid #d8dee4; font-weight: 600; }
label { display: block; margin-top: .75rem; font-weight: 600; }
input { box-sizing: border-box; width: 100%; padding: .5rem; font: inherit; border: 1px solid #8c959f;
        border-radius: 4px; }
button { margin-top: 1rem; padding: .6rem 1.2rem; font: inherit; font-weight: 600; border: 0; border-radius: 4px;
         background: #0a5cd5; color: #fff; cursor: pointer; }
button.secondary { background: #57606a; }
.error { padding: .5rem; background: #ffebe9; color: #82071e; border-radius: 4px; }
"""
TEST_CARDS = ("Test mode: try 4242 4242 4242 4242 (paid), 4000 0000 0000 0002 (declined) or 4000 0000 0000 3220 "
              "(3-D Secure), with any future expiry and any CVC.")


def amount(value: int, currency: str) -> str:
    """Stripe's ``2400, "eur"`` as people read it: ``EUR 24.00``."""
    code = currency.upper()
    digits = minor_units(code)
    return f"{code} {Decimal(from_stripe(value, code)).scaleb(-digits):,.{digits}f}"


def pay_page(session: CheckoutSession, error: str | None = None) -> str:
    form = f"""<form method="post" action="/c/pay/{escape(session.id)}">
{_alert(error)}<label for="card-number">Card number</label>
<input id="card-number" name="card_number" inputmode="numeric" autocomplete="cc-number" required>
<label for="expiry">Expiry (MM/YY)</label>
<input id="expiry" name="expiry" autocomplete="cc-exp" placeholder="MM/YY" required>
<label for="cvc">CVC</label>
<input id="cvc" name="cvc" inputmode="numeric" autocomplete="cc-csc" required>
<button type="submit">Pay</button>
</form>"""
    return _page(f"Pay {amount(session.amount_total, session.currency)}", _summary(session) + form
                 + f'<p><a href="{escape(session.cancel_url)}">Back to the shop</a></p>')


def challenge_page(session: CheckoutSession, error: str | None = None) -> str:
    total = amount(session.amount_total, session.currency)
    body = f"""{_alert(error)}<p>Your bank asks you to confirm the payment of {total} (a 3-D Secure test).</p>
<form method="post" action="/c/pay/{escape(session.id)}/authenticate">
<button type="submit" name="success" value="true">Complete authentication</button>
<button type="submit" name="success" value="false" class="secondary">Fail authentication</button>
</form>"""
    return _page("Authenticate your payment", body)


def closed_page(session: CheckoutSession) -> str:
    total = amount(session.amount_total, session.currency)
    if session.status == "complete":
        back = session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id)
        title, said = "Payment complete", f"This checkout session is complete: {total} was paid."
    else:
        back, title = session.cancel_url, "Checkout session expired"
        said = "This checkout session has expired and takes no payment. Nothing was charged."
    return _page(title, f'<p>{said}</p>\n<p><a href="{escape(back)}">Back to the shop</a></p>')


def missing_page() -> str:
    return _page("No such checkout session", "<p>This payment page does not exist.</p>")


def _summary(session: CheckoutSession) -> str:
    rows = "".join(f"<tr><td>{escape(line.name)}</td><td>{line.quantity}</td>"
                   f"<td>{amount(line.amount, session.currency)}</td></tr>\n" for line in session.lines)
    email = session.customer_email or session.receipt_email
    return f"""<table>
<caption>Your order</caption>
<thead><tr><th scope="col">Item</th><th scope="col">Quantity</th><th scope="col">Amount</th></tr></thead>
<tbody>
{rows}</tbody>
<tfoot><tr><th scope="row" colspan="2">Total</th><td>{amount(session.amount_total, session.currency)}</td></tr></tfoot>
</table>
""" + (f"<p>Email: {escape(email)}</p>\n" if email else "")


def _alert(message: str | None) -> str:
    return f'<p role="alert" class="error">{escape(message)}</p>\n' if message else ""


def _page(title: str, body: str) -> str:
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title>
<style>{STYLE}</style>
</head>
<body>
<main>
<p class="test">{TEST_CARDS}</p>
<h1>{escape(title)}</h1>
{body}
</main>
</body>
</html>
"""
