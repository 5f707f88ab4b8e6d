"""The kill-and-cut run of issue 21: worker processes on the real driver, killed with
SIGKILL mid-call, behind a proxy that cuts connections; then an independent checker.

- `worker.py`: one worker process (or a `flush_pending()` process), logging each call;
- `checker.py`: reads the final database and the logs, verifies the invariants exactly;
- `run.py`: seeds 200 users, runs the proxy, starts and kills the processes, checks.
"""
