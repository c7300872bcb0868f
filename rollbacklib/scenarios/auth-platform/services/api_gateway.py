"""The automation platform's api-gateway, as the drill runs it (not part of rollbacklib).

    python api_gateway.py --port 8080 --database-url-env ROLLBACK_DRILL_DATABASE_URL

* ``GET /health``: ``{"status": "ok", "database": "connected"}`` (503 when the database is not);
* ``POST /auth/login`` ``{"email", "password"}``: checked with bcrypt against ``users.passwordHash``;
  answers ``{"access_token", "token_type": "Bearer", "expires_in"}``. After the bad migration the
  column is gone, and login answers 500 (the incident);
* ``GET /auth/verify`` and ``GET /protected/endpoint``: a bearer token (HS256 JWT);
* ``GET /metrics``: Prometheus text (requests by route, method and status; a latency histogram).

The signing key is read from the env var named by ``--token-secret-env`` (a random one per
process when it is not set: tokens then do not outlive a restart, as with a rotated key).
``set_password`` gives a user a bcrypt hash of a password: the drill's test user.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import sys
import time
from pathlib import Path

import bcrypt

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import HttpError, Service  # noqa: E402

TOKEN_SECONDS = 3600
BCRYPT_ROUNDS = 10  # the cost the seed's hashes carry ($2b$10$)
service = Service("api-gateway", options=(
    ("--token-secret-env", "the NAME of the environment variable holding the token signing key"),))
_key = {"value": b""}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def issue_token(claims: dict, key: bytes) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
    body = _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


def read_token(token: str, key: bytes) -> dict:
    try:
        head, body, signature = token.split(".")
        expected = hmac.new(key, f"{head}.{body}".encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(signature)):
            raise ValueError("bad signature")
        claims = json.loads(_unb64(body))
    except ValueError:
        raise HttpError(401, "invalid token") from None
    if claims.get("exp", 0) < time.time():
        raise HttpError(401, "token expired")
    return claims


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()


def password_matches(password: str, stored: str | None) -> bool:
    if not stored:
        return False  # an SSO user: no password
    try:
        return bcrypt.checkpw(password.encode(), stored.encode())
    except ValueError:  # not a bcrypt hash
        return False


def set_password(conn, email: str, password: str) -> int:
    """Give the user with ``email`` a bcrypt hash of ``password`` (the drill's test user); return rows changed."""
    cur = conn.execute('UPDATE users SET "passwordHash" = %s WHERE email = %s', (hash_password(password), email))
    return cur.rowcount


@service.route("GET", "/health")
def health(handler):
    return service.database_health()


@service.route("POST", "/auth/login")
def login(handler):
    body = handler.json_body()
    email, password = body.get("email"), body.get("password")
    if not isinstance(email, str) or not isinstance(password, str):
        raise HttpError(400, "email and password are required")
    with service.connect() as conn:  # after the bad migration: column "passwordHash" does not exist -> 500
        row = conn.execute('SELECT id, email, "passwordHash" FROM users WHERE email = %s', (email,)).fetchone()
    if row is None or not password_matches(password, row[2]):
        raise HttpError(401, "invalid email or password")
    now = int(time.time())
    token = issue_token({"sub": row[0], "email": row[1], "iat": now, "exp": now + TOKEN_SECONDS}, _key["value"])
    return 200, {"access_token": token, "token_type": "Bearer", "expires_in": TOKEN_SECONDS}


@service.route("GET", "/auth/verify")
def verify(handler):
    claims = read_token(handler.bearer(), _key["value"])
    return 200, {"valid": True, "sub": claims["sub"], "email": claims["email"], "exp": claims["exp"]}


@service.route("GET", "/protected/endpoint")
def protected(handler):
    claims = read_token(handler.bearer(), _key["value"])
    with service.connect() as conn:
        row = conn.execute('SELECT id, email, name, "clientId" FROM users WHERE id = %s', (claims["sub"],)).fetchone()
    if row is None:
        raise HttpError(401, "the token's user no longer exists")
    return 200, {"user": {"id": row[0], "email": row[1], "name": row[2], "clientId": row[3]}}


def load_key(args) -> None:
    secret = os.environ.get(args.token_secret_env or "", "")
    _key["value"] = secret.encode() if secret else secrets.token_bytes(32)


service.starting.append(load_key)


if __name__ == "__main__":
    service.serve()
