"""python -m gateway.token --sub C123 [--scope shop:admin] [--ttl 3600]

Prints a token for local use (AUTH=jwt with AUTH_HS256_SECRET): signed with
that secret, for the customer --sub, carrying AUTH_ISSUER and AUTH_AUDIENCE
when they are set, so the gateway with the same settings takes it. With an
identity provider (AUTH_JWKS_URL), tokens come from the provider instead.
"""

import argparse
import sys
import time

import jwt

from gateway.config import AuthConfig, refuse_placeholder
from plumbing.config import ConfigError, exits_on_config_error
from plumbing.identity import ADMIN_SCOPE
from plumbing.validation import ID_PATTERN

DEFAULT_TTL_S = 3600


def mint(auth: AuthConfig, subject: str, scopes: list[str], ttl_s: int, now: float | None = None) -> str:
    """A token the gateway configured with `auth` verifies as `subject`."""
    issued = int(time.time() if now is None else now)
    claims = {"sub": subject, auth.subject_claim: subject, "iat": issued, "exp": issued + ttl_s}
    if scopes:
        claims["scope"] = " ".join(scopes)
    if auth.issuer:
        claims["iss"] = auth.issuer
    if auth.audience:
        claims["aud"] = auth.audience
    return jwt.encode(claims, auth.hs256_secret, algorithm="HS256")


@exits_on_config_error("gateway.token")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.token", description="Print a local token signed with AUTH_HS256_SECRET."
    )
    parser.add_argument("--sub", required=True, help="the customer id the token names")
    parser.add_argument(
        "--scope", action="append", default=[], help=f"a scope to grant, e.g. {ADMIN_SCOPE} (repeatable)"
    )
    parser.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, help="seconds until it expires (default 3600)")
    args = parser.parse_args(argv)
    if not ID_PATTERN.fullmatch(args.sub):
        parser.error("--sub must be a customer id (^[A-Za-z0-9_-]{1,64}$)")
    if args.ttl < 1:
        parser.error("--ttl must be at least 1 second")
    auth = AuthConfig.from_env()
    if not auth.hs256_secret:
        raise ConfigError("AUTH_HS256_SECRET is not set: the token is signed with the gateway's secret")
    refuse_placeholder("AUTH_HS256_SECRET", auth.hs256_secret)
    print(mint(auth, args.sub, args.scope, args.ttl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
