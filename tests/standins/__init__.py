"""Test-only stand-ins for HTTP services that cannot run on this machine (PostgREST, Supabase Storage, …).

Each one serves a documented HTTP surface on 127.0.0.1 as faithfully as the tests need, and its docstring says
what it stands in for and what it simplifies. They are never used outside the test suite.
"""
