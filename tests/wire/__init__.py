"""Test support for running the suite on a MongoDB wire-protocol server.

`backend` picks the database (mock, mongoeco over the wire, or a real server) and makes
fresh databases on it; `launcher` starts and stops the mongoeco server (Python 3.13+, run
as `server.py` in a child process); `differences` lists where mongoeco is known to differ
from a real server; `compat` patches mongoeco for Node drivers.
"""
