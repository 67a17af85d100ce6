"""A signing hook for the tests (`source.sign.hook: stac_sign_hook:sign`): appends the token in
the STAC_HOOK_SIG environment variable to an href, as a signed-URL service would."""

import os


def sign(href: str) -> str:
    return f"{href}{'&' if '?' in href else '?'}sig={os.environ['STAC_HOOK_SIG']}"
