"""Who calls the gateway, and may they (API.md, "Identity and access").

AUTH=jwt: `Authorization: Bearer <JWT>` (RFC 6750), verified with PyJWT
against the identity provider's JWKS (PyJWKClient: keys cached, an unknown
kid re-fetches them at most once per 30 s, never a fetch per request) or a
shared HS256 secret. The algorithm is fixed by the key, never read from the
token. The verified caller goes on to the services as metadata, which
enforce ownership themselves (plumbing.identity).

AUTH=off: no identity; the admin routes take ADMIN_TOKEN.

Each route's demand is decided once, from its proto options: `public`
routes take anyone, `admin` routes the admin credential, and every other
route, with AUTH=jwt, a customer's token.
"""

import enum
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable

import grpc
import jwt

from gateway.config import AuthConfig, GatewayConfig
from gateway.errors import ApiError, gateway_error
from gateway.transcoding import Binding
from plumbing.identity import ADMIN_SCOPE, Caller
from plumbing.validation import ID_PATTERN

log = logging.getLogger("gateway.auth")

# Clock skew allowed on exp and nbf.
LEEWAY_S = 60
# An unknown kid re-fetches the JWKS at most this often (a key rotation is
# picked up; a flood of made-up kids costs one fetch per interval).
JWKS_REFETCH_S = 30
# Fetched keys are trusted this long, then fetched again (a revoked key goes).
JWKS_LIFESPAN_S = 600
JWKS_TIMEOUT_S = 5
# The one algorithm each kind of provider key verifies.
ALGORITHM_BY_KEY_TYPE = {"RSA": "RS256", "EC": "ES256"}
# Tokens verified lately are remembered: a client sends one token with many
# requests, and PyJWT's decode costs 0.1-0.3 ms of CPU each time
# (docs/performance.md). An entry lasts until the token expires or this
# long, whichever is first; only tokens that verified are kept.
VERIFIED_MAX_AGE_S = 60
VERIFIED_CACHE_SIZE = 4096
# Only the shop's own scopes travel on to the services.
_SHOP_SCOPE = re.compile(r"shop:[A-Za-z0-9:._-]{1,64}")
_REALM = 'Bearer realm="shop"'


class Demand(enum.Enum):
    """What a route asks of its caller."""

    NOTHING = "nothing"
    CUSTOMER = "customer"
    ADMIN = "admin"


class InvalidToken(Exception):
    """A token that does not verify; the message is safe to show (it never
    quotes the token) and has no double quotes (it goes into a header)."""


class KeysUnavailable(Exception):
    """The identity provider's keys cannot be fetched now."""


# What a client is told about a token PyJWT refused (subclasses first:
# InvalidSignatureError is a DecodeError).
_TOKEN_PROBLEMS = (
    (jwt.ExpiredSignatureError, "the token has expired"),
    (jwt.ImmatureSignatureError, "the token is not valid yet"),
    (jwt.InvalidAudienceError, "the token is not meant for this audience"),
    (jwt.InvalidIssuerError, "the token is from another issuer"),
    (jwt.InvalidAlgorithmError, "the token is not signed with the algorithm of the key"),
    (jwt.InvalidSignatureError, "the token's signature does not verify"),
    (jwt.DecodeError, "the token is not a well-formed JWT"),
)


def _described(error: jwt.InvalidTokenError) -> str:
    if isinstance(error, jwt.MissingRequiredClaimError):
        return f"the token has no {error.claim} claim"
    return next((problem for kind, problem in _TOKEN_PROBLEMS if isinstance(error, kind)), "the token is not valid")


class ProviderKeys(jwt.PyJWKClient):
    """The identity provider's JWKS, as PyJWKClient fetches and caches it,
    except that while the provider is unreachable the keys it gave last
    stay in use (for another lifespan, then it is asked again): an outage
    of the provider must not sign every customer out."""

    _last_good: jwt.PyJWKSet | None = None

    def get_jwk_set(self, refresh: bool = False) -> jwt.PyJWKSet:
        try:
            self._last_good = super().get_jwk_set(refresh)
        except jwt.PyJWKClientConnectionError as error:
            if self._last_good is None:
                raise
            log.warning("identity provider unreachable: its last keys stay in use", extra={"error": str(error)})
            self.jwk_set_cache.put(self._last_good)
        return self._last_good


class TokenVerifier:
    """Verifies bearer JWTs: signature with a cached key, exp required, nbf,
    and iss and aud when configured, 60 s leeway; then the customer id from
    the subject claim and the scopes from `scope` or `scp`."""

    def __init__(self, auth: AuthConfig, clock: Callable[[], float] = time.time):
        self._clock = clock
        # token -> (its caller, until when that answer holds)
        self._verified: dict[str, tuple[Caller, float]] = {}
        self._remembering = threading.Lock()
        self._subject_claim = auth.subject_claim
        self._issuer = auth.issuer or None
        self._audience = auth.audience or None
        self._options = {"require": ["exp"], "verify_aud": bool(auth.audience)}
        self._secret = auth.hs256_secret.encode()
        self._jwks = (
            ProviderKeys(
                auth.jwks_url,
                cache_jwk_set=True,
                lifespan=JWKS_LIFESPAN_S,
                timeout=JWKS_TIMEOUT_S,
                cooldown_duration=JWKS_REFETCH_S,
            )
            if auth.jwks_url
            else None
        )

    def verify(self, token: str) -> Caller:
        now = self._clock()
        remembered = self._verified.get(token)
        if remembered is not None and now < remembered[1]:
            return remembered[0]
        caller, expires = self.verify_signed(token)
        self._remember(token, caller, min(expires + LEEWAY_S, now + VERIFIED_MAX_AGE_S))
        return caller

    def _remember(self, token: str, caller: Caller, until: float) -> None:
        with self._remembering:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                # The oldest half goes (dicts keep insertion order).
                for stale in list(self._verified)[: VERIFIED_CACHE_SIZE // 2]:
                    del self._verified[stale]
            self._verified[token] = (caller, until)

    def verify_signed(self, token: str) -> tuple[Caller, float]:
        """The caller a token names, and when it expires, checked in full
        (nothing remembered: what a token seen for the first time costs)."""
        key, algorithm = self._key_for(token)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=LEEWAY_S,
                options=self._options,
            )
        except jwt.InvalidTokenError as error:
            raise InvalidToken(_described(error)) from None
        subject = claims.get(self._subject_claim)
        if not isinstance(subject, str) or not ID_PATTERN.fullmatch(subject):
            raise InvalidToken(
                f"the token's {self._subject_claim} claim is not a valid customer id (^[A-Za-z0-9_-]{{1,64}}$)"
            )
        return Caller(subject, _shop_scopes(claims)), float(claims["exp"])

    def _key_for(self, token: str):
        """The key to verify `token` with, and its algorithm."""
        if self._jwks is None:
            return self._secret, "HS256"
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.DecodeError:
            raise InvalidToken("the token is not a well-formed JWT") from None
        if not isinstance(kid, str):
            raise InvalidToken("the token names no key (kid)")
        try:
            key = self._jwks.get_signing_key(kid)
        except jwt.PyJWKClientConnectionError:
            raise KeysUnavailable() from None
        except jwt.PyJWKClientError:
            raise InvalidToken("the token's key (kid) is not one of the identity provider's") from None
        except jwt.PyJWKSetError:
            # The provider answered something with no key we can use.
            raise KeysUnavailable() from None
        algorithm = ALGORITHM_BY_KEY_TYPE.get(key.key_type)
        if algorithm is None or key.algorithm_name != algorithm:
            raise InvalidToken("the token's key is not an RS256 or ES256 key")
        return key.key, algorithm


def _shop_scopes(claims: dict) -> frozenset[str]:
    """Scopes from `scope` (space-separated) or `scp` (a list, or a string)."""
    granted = claims.get("scope", claims.get("scp"))
    if isinstance(granted, str):
        granted = granted.split()
    if not isinstance(granted, list):
        return frozenset()
    return frozenset(s for s in granted if isinstance(s, str) and _SHOP_SCOPE.fullmatch(s))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class Gatekeeper:
    """Admits each request to its route, in the mode the gateway runs, and
    answers who the caller is."""

    def __init__(self, config: GatewayConfig):
        self.jwt = config.auth.jwt
        self._admin_token = config.admin_token.encode()
        self._verifier = TokenVerifier(config.auth) if self.jwt else None

    def demand(self, binding: Binding) -> Demand:
        """What `binding` asks of its caller in this mode (decided once per route)."""
        if binding.options.admin:
            return Demand.ADMIN
        if self.jwt and not binding.options.public:
            return Demand.CUSTOMER
        return Demand.NOTHING

    def identify(self, demand: Demand, authorization: str | None) -> Caller | None:
        """The verified caller to pass on (None: no identity), or an
        ApiError: 401 without valid credentials (403 with AUTH=off and no
        ADMIN_TOKEN to check one against)."""
        if not self.jwt:
            self._check_admin_token(authorization)
            return None
        token = bearer_token(authorization)
        if token is None:
            raise _unauthenticated(f"this route needs Authorization: Bearer <token>{_for_admins(demand)}", None)
        try:
            caller = self._verifier.verify(token)
        except InvalidToken as error:
            raise _unauthenticated(str(error), str(error)) from None
        except KeysUnavailable:
            raise gateway_error(
                grpc.StatusCode.UNAVAILABLE,
                "tokens cannot be verified now: the identity provider's keys are unreachable; try again later",
                headers={"Retry-After": str(JWKS_REFETCH_S)},
            ) from None
        return caller

    def authorize(self, demand: Demand, caller: Caller | None) -> None:
        """403 for a verified caller without the right to the route."""
        if demand is Demand.ADMIN and caller is not None and not caller.admin:
            raise gateway_error(
                grpc.StatusCode.PERMISSION_DENIED,
                f"this route needs a token with the {ADMIN_SCOPE} scope",
                headers={"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", scope="{ADMIN_SCOPE}"'},
            )

    def _check_admin_token(self, authorization: str | None) -> None:
        """AUTH=off, an admin route: ADMIN_TOKEN, compared in constant time."""
        if not self._admin_token:
            raise gateway_error(
                grpc.StatusCode.PERMISSION_DENIED,
                "admin routes are disabled: the gateway has no ADMIN_TOKEN",
            )
        token = bearer_token(authorization)
        if token is None:
            raise _unauthenticated("this route needs Authorization: Bearer <admin token>", None)
        if not hmac.compare_digest(token.encode(), self._admin_token):
            raise _unauthenticated("the admin token is not valid", "the admin token is not valid")


def _for_admins(demand: Demand) -> str:
    return f" with the {ADMIN_SCOPE} scope" if demand is Demand.ADMIN else ""


def _unauthenticated(message: str, token_problem: str | None) -> ApiError:
    """401 with the RFC 6750 challenge; error="invalid_token" when a token
    was sent but is bad or expired."""
    challenge = _REALM
    if token_problem is not None:
        challenge += f', error="invalid_token", error_description="{token_problem}"'
    return gateway_error(grpc.StatusCode.UNAUTHENTICATED, message, headers={"WWW-Authenticate": challenge})
