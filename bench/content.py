"""The one email both systems send: the seeds' welcome email, per recipient.

Modelled on seed 004's ``send_welcome_email`` (an f-string HTML page with a greeting, what the
user can do now and their account details), padded with a footer to about 2.5 KB of HTML, so
that with its text part the message is near the 5 KB that DESIGN.md's build costs refer to.
"""

from __future__ import annotations

SENDER = "Postroom Bench <noreply@example.com>"
SUBJECT = "Welcome to the Example API!"

_TOPICS = (
    "tokens",
    "profiles",
    "webhooks",
    "billing",
    "exports",
    "limits",
    "support",
    "security",
    "teams",
    "invoices",
    "privacy",
    "status",
)
_FOOTER_ITEMS = "".join(
    f"<li><a href='https://example.com/help/{topic}'>{topic.title()}</a>: read how {topic} "
    f"works, with examples you can copy.</li>"
    for topic in _TOPICS
)


def recipient(kind: str, number: int) -> str:
    """A unique address per message, so the sink's dumps tell the messages apart."""
    return f"{kind}{number}@example.com"


def welcome_html(address: str) -> str:
    """The HTML body for ``address``."""
    username = address.partition("@")[0]
    return f"""<html>
<body>
    <h2>Welcome to the Example API!</h2>
    <p>Hello <strong>{username}</strong>!</p>

    <h3>What you can do now:</h3>
    <ul>
        <li>Access protected endpoints using your token</li>
        <li>View your profile at <code>/api/profile/</code></li>
        <li>Explore the API documentation</li>
    </ul>

    <h3>Account Details:</h3>
    <ul>
        <li><strong>Username:</strong> {username}</li>
        <li><strong>Email:</strong> {address}</li>
        <li><strong>Plan:</strong> Free &amp; friendly</li>
    </ul>

    <h3>Where to go next</h3>
    <ul>{_FOOTER_ITEMS}</ul>
    <p style="color:#666;font-size:12px">You receive this email because an account was
    created with this address. If that was not you, reply and we will remove it. Example Ltd,
    1 Example Street, Example Town. This is an automated message; please do not reply.</p>
</body>
</html>"""


_FOOTER_LINES = "\n".join(
    f"- {topic.title()} (https://example.com/help/{topic}): read how {topic} works, with "
    "examples you can copy."
    for topic in _TOPICS
)


def welcome_text(address: str) -> str:
    """The same email as plain text, as an application rendering a .txt template beside its
    .html one would give it."""
    username = address.partition("@")[0]
    return f"""Welcome to the Example API!

Hello {username}!

What you can do now:

- Access protected endpoints using your token
- View your profile at /api/profile/
- Explore the API documentation

Account Details:

- Username: {username}
- Email: {address}
- Plan: Free & friendly

Where to go next

{_FOOTER_LINES}

You receive this email because an account was created with this address. If that was not
you, reply and we will remove it. Example Ltd, 1 Example Street, Example Town. This is an
automated message; please do not reply."""
