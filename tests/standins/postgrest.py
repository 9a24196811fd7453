"""A stand-in for Supabase's Data API (Kong gateway + PostgREST) — only ``POST /rest/v1/rpc/<fn>``.

PostgREST cannot run on this machine, so the Supabase store's tests drive the real supabase-py client
against this small aiohttp app, which calls the real SQL functions in a real PostgreSQL database.

What it reproduces (from the PostgREST docs: references/api/functions, references/errors, and Supabase's
API gateway behaviour):

* **Gateway keys.** ``apikey`` must be present and equal to the configured key, else 401 with Kong's body
  ``{"message": "No API key found in request" | "Invalid API key", "hint": …}`` (no ``code``).
* **JWT → role.** ``Authorization: Bearer <jwt>`` must carry the configured key (a different token gets 401
  ``PGRST301``); the ``role`` claim of its payload becomes the database role for the call
  (``SET LOCAL ROLE``), so grants apply as on Supabase: the service_role may execute the queue functions,
  ``anon`` may not (42501 → 401). No ``Authorization`` header means the anon role.
* **Schema.** ``Content-Profile`` picks the schema (default: the first exposed one); a schema that is not
  exposed gives 406 ``PGRST106``.
* **Named arguments.** The JSON object body's keys are the function's parameter names. The function is
  chosen like PostgREST does: same name in the schema, every key a parameter, every parameter without a
  default given; otherwise 404 ``PGRST202`` with PostgREST's message/details/hint. Values are converted by
  PostgreSQL exactly as PostgREST does it, through ``json_to_record(body)`` with the parameter types, so a
  JSON string becomes a uuid / timestamptz and a JSON array a ``text[]`` (a bad value raises 22P02 → 400).
* **Response shapes.** ``returns setof <table>`` → JSON array; ``returns <table>`` (one composite) → JSON
  object; a scalar (``jsonb``, ``int``…) → the JSON value; ``returns void`` → 204 No Content.
* **Errors.** A PostgreSQL error becomes ``{"code", "message", "details", "hint"}`` (``RAISE … USING
  ERRCODE/MESSAGE/DETAIL/HINT``) with PostgREST's SQLSTATE → HTTP status table (our CW00x codes fall under
  "other" → 400; 42883 → 404; 08*/53* → 503; …). A database that cannot be reached gives 503 ``PGRST001``.
  Each call runs in its own transaction, rolled back on error.

What it simplifies: no schema cache (the catalogue is read on every call, so the "reload the schema cache"
failure mode cannot happen here); the JWT signature is not verified (the token must simply equal the
configured key); GET/HEAD rpc, ``Prefer`` handling (recorded, not acted on), filters on function results,
``Content-Range``, tables/views endpoints, overloaded-function disambiguation (PGRST203) and functions with
OUT parameters or ``setof <scalar>`` results are not implemented.

Tests read :attr:`PostgrestStandin.requests` to assert the request shape, and :meth:`fail_next` makes the
next request fail the way a proxy in front of PostgREST can (e.g. a 502 HTML page).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web

ANON_ROLE = "anon"

# PostgREST's SQLSTATE → HTTP status table (docs: references/errors.rst, "HTTP Status Codes").
_EXACT_STATUS = {
    "23503": 409,
    "23505": 409,
    "25006": 405,
    "53400": 500,
    "P0001": 400,
    "42883": 404,
    "42P01": 404,
    "42P17": 500,
}
_PREFIX_STATUS = {
    "08": 503,
    "09": 500,
    "0L": 403,
    "0P": 403,
    "25": 500,
    "28": 403,
    "2D": 500,
    "38": 500,
    "39": 500,
    "3B": 500,
    "40": 500,
    "53": 503,
    "54": 500,
    "55": 500,
    "57": 500,
    "58": 500,
    "F0": 500,
    "HV": 500,
    "P0": 500,
    "XX": 500,
}

_CATALOG_SQL = """
select p.proname, p.proretset, p.prorettype = 'void'::regtype as returns_void,
       t.typtype in ('c', 'p') and p.prorettype <> 'void'::regtype as returns_composite,
       p.pronargs, p.pronargdefaults,
       coalesce(p.proargnames[1:p.pronargs], '{}') as arg_names,
       array(select format_type(a.oid, null) from unnest(p.proargtypes::oid[]) with ordinality a(oid, i)
             order by a.i) as arg_types,
       p.proargmodes is not null as has_modes
from pg_proc p
join pg_namespace n on n.oid = p.pronamespace
join pg_type t on t.oid = p.prorettype
where n.nspname = $1 and p.proname = $2 and p.prokind = 'f'
"""


def http_status_for(sqlstate: str, *, authenticated: bool) -> int:
    """The HTTP status PostgREST answers with for a PostgreSQL error code."""
    if sqlstate.startswith("PT") and sqlstate[2:].isdigit():
        return int(sqlstate[2:])  # RAISE … USING ERRCODE = 'PT402' sets the status directly
    if sqlstate == "42501":
        return 403 if authenticated else 401
    if sqlstate in _EXACT_STATUS:
        return _EXACT_STATUS[sqlstate]
    return _PREFIX_STATUS.get(sqlstate[:2], 400)


def mint_key(role: str = "service_role", ref: str = "standin") -> str:
    """A string shaped like a Supabase API key (an HS256 JWT with a ``role`` claim; fake signature)."""

    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return ".".join(
        [
            b64({"alg": "HS256", "typ": "JWT"}),
            b64({"iss": "supabase", "ref": ref, "role": role}),
            "c2lnbmF0dXJlLW5vdC12ZXJpZmllZA",
        ]
    )


def _role_of(token: str) -> str:
    """The ``role`` claim of a JWT's payload; PostgREST's anon role when the token has none."""
    parts = token.split(".")
    if len(parts) != 3:
        return ANON_ROLE
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except ValueError:
        return ANON_ROLE
    role = payload.get("role") if isinstance(payload, dict) else None
    return role if isinstance(role, str) and role else ANON_ROLE


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _error(
    status: int,
    code: str | None,
    message: str,
    details: Any = None,
    hint: str | None = None,
) -> web.Response:
    body: dict[str, Any] = {"code": code, "details": details, "hint": hint, "message": message}
    return web.json_response(body, status=status)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the stand-in received it. ``headers`` keys are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    raw_body: bytes = field(repr=False, default=b"")


@dataclass
class _Function:
    name: str
    returns_set: bool
    returns_void: bool
    returns_composite: bool
    params: list[tuple[str, str]]  # (name, type) of the IN parameters, in order
    n_defaults: int

    @property
    def required(self) -> set[str]:
        return {n for n, _ in self.params[: len(self.params) - self.n_defaults]}


class PostgrestStandin:
    """Serve ``POST /rest/v1/rpc/{fn}`` on 127.0.0.1 (random port) against the database at ``dsn``."""

    def __init__(self, dsn: str, key: str, *, schemas: tuple[str, ...] = ("public",), pool_max: int = 8) -> None:
        self.dsn = dsn
        self.key = key
        self.schemas = schemas
        self.requests: list[RecordedRequest] = []
        self._pool_max = pool_max
        self._pool: asyncpg.Pool | None = None
        self._runner: web.AppRunner | None = None
        self._failures: list[tuple[int, str, str]] = []
        self.base_url = ""

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> str:
        """Start serving; returns the base URL to use as SUPABASE_URL (supabase-py appends /rest/v1)."""
        # min_size=0: no connection until a request needs one, so a dead database gives 503s, not a crash
        self._pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=self._pool_max)
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/rest/v1/rpc/{fn}", self._rpc)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def fail_next(self, status: int, body: str, content_type: str = "text/html") -> None:
        """Answer the next request with this response instead (a proxy error in front of PostgREST)."""
        self._failures.append((status, body, content_type))

    def calls(self, fn: str) -> list[RecordedRequest]:
        """The recorded requests to ``/rest/v1/rpc/<fn>``."""
        return [r for r in self.requests if r.path == f"/rest/v1/rpc/{fn}"]

    # --- the endpoint ---------------------------------------------------------------------------------------

    async def _rpc(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = None
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append(RecordedRequest(request.method, request.path, headers, parsed, raw))
        if self._failures:
            status, body, ctype = self._failures.pop(0)
            return web.Response(status=status, text=body, content_type=ctype)

        # the gateway: apikey
        apikey = request.headers.get("apikey")
        if not apikey:
            return web.json_response(
                {
                    "message": "No API key found in request",
                    "hint": "No `apikey` request header or url param was found.",
                },
                status=401,
            )
        if apikey != self.key:
            return web.json_response(
                {
                    "message": "Invalid API key",
                    "hint": "Double check your Supabase `anon` or `service_role` API key.",
                },
                status=401,
            )
        # PostgREST: JWT → role
        auth = request.headers.get("Authorization")
        if auth is None:
            role = ANON_ROLE
        elif auth != f"Bearer {self.key}":
            return _error(401, "PGRST301", "JWSError JWSInvalidSignature")
        else:
            role = _role_of(self.key)
        authenticated = role != ANON_ROLE

        if request.method != "POST":
            return _error(405, "PGRST101", "Only GET or POST verbs are allowed (the stand-in serves POST only)")
        schema = request.headers.get("Content-Profile") or self.schemas[0]
        if schema not in self.schemas:
            return _error(
                406,
                "PGRST106",
                f"Invalid schema: {schema}",
                hint=f"Only the following schemas are exposed: {', '.join(self.schemas)}",
            )
        if request.content_type != "application/json":
            return _error(415, "PGRST107", f"Content-Type not acceptable: {request.content_type}")
        if not isinstance(parsed, dict):
            return _error(400, "PGRST102", "Empty or invalid json")
        fn_name = request.match_info["fn"]

        assert self._pool is not None
        try:
            async with self._pool.acquire() as conn:
                fn = await self._resolve(conn, schema, fn_name, parsed)
                if isinstance(fn, web.Response):
                    return fn
                sql, args = _call_sql(schema, fn, parsed)
                async with conn.transaction():
                    await conn.execute(f"set local role {_ident(role)}")
                    result = await conn.fetchval(sql, *args)
        except asyncpg.PostgresError as exc:
            code = exc.sqlstate or "XX000"
            return _error(
                http_status_for(code, authenticated=authenticated),
                code,
                getattr(exc, "message", None) or str(exc),
                getattr(exc, "detail", None),
                getattr(exc, "hint", None),
            )
        except (OSError, asyncpg.InterfaceError, TimeoutError) as exc:
            return _error(503, "PGRST001", "Database client error. Retrying the connection.", str(exc))
        if fn.returns_void:
            return web.Response(status=204)
        return web.Response(
            text=result if result is not None else "null", content_type="application/json", charset="utf-8"
        )

    async def _resolve(
        self, conn: asyncpg.Connection, schema: str, name: str, body: dict[str, Any]
    ) -> _Function | web.Response:
        keys = set(body)
        for row in await conn.fetch(_CATALOG_SQL, schema, name):
            if row["has_modes"]:
                continue  # OUT/INOUT/VARIADIC parameters: not supported here
            fn = _Function(
                name,
                row["proretset"],
                row["returns_void"],
                row["returns_composite"],
                list(zip(row["arg_names"], row["arg_types"], strict=True)),
                row["pronargdefaults"],
            )
            names = {n for n, _ in fn.params}
            if keys <= names and fn.required <= keys:
                return fn
        listed = ", ".join(sorted(keys))
        with_params = f"with parameter{'s' if len(keys) > 1 else ''} {listed}" if keys else "without parameters"
        return _error(
            404,
            "PGRST202",
            f"Could not find the function {schema}.{name}({listed}) in the schema cache",
            f"Searched for the function {schema}.{name} {with_params} or with a single unnamed json/jsonb "
            "parameter, but no matches were found in the schema cache.",
        )


def _call_sql(schema: str, fn: _Function, body: dict[str, Any]) -> tuple[str, list[Any]]:
    """The statement PostgREST would build: arguments typed by ``json_to_record`` and passed by name."""
    given = [(n, t) for n, t in fn.params if n in body]
    ref = f"{_ident(schema)}.{_ident(fn.name)}"
    call = f"{ref}({', '.join(f'{_ident(n)} => pgrst_args.{_ident(n)}' for n, _ in given)})"
    if given:
        source = f"json_to_record($1::json) as pgrst_args({', '.join(f'{_ident(n)} {t}' for n, t in given)})"
        args: list[Any] = [json.dumps(body)]
    else:
        source = "(select) as pgrst_args"
        args = []
    if fn.returns_void:
        return f"select {call} from {source}", args
    if fn.returns_set:
        return (
            f"select coalesce(json_agg(pgrst_call), '[]')::text from {source} cross join lateral {call} as pgrst_call"
        ), args
    if fn.returns_composite:
        return (
            f"select row_to_json(pgrst_call)::text from {source} cross join lateral {call} as pgrst_call",
            args,
        )
    return f"select to_json({call})::text from {source}", args
