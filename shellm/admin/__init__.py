"""
The C{shellm} command: start, stop and inspect the daemon, and check that
the CLIs behind it are installed and logged in.

This is an ordinary synchronous program, not the daemon.  It starts
C{twistd shellm}, reads the PID file that C{twistd} writes in daemon mode,
and talks to the running daemon over HTTP (C{GET /health}) on the port the
configuration names.  Only C{check} runs the reactor, briefly, to reuse the
providers' own health checks.

Files live under C{~/.shellm/} (C{$SHELLM_HOME} overrides it): the PID file
C{shellm.pid} and the daemon-mode log C{logs/shellm.log}.
"""
