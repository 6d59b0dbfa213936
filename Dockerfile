# SheLLM in a container, for trying it and developing on it.  Production runs
# natively under systemd (bin/setup-vps), where the CLIs' logins live in the
# service user's home.
#
#   podman build --format docker -t localhost/shellm .     # SheLLM alone
#   podman build --format docker --build-arg CLIS=1 -t localhost/shellm .
#                                                          # with the pinned CLIs
#   docker compose up / podman-compose up                  # see compose.yaml
#
# (--format docker keeps the HEALTHCHECK, which the OCI format has no field for.)
#
# BASE is any Debian 13 image.  Inside the container SheLLM listens on
# 0.0.0.0, so it refuses to start without client keys (SHELLM_CLIENTS)
# unless SHELLM_ALLOW_OPEN=1 is set on purpose (compose.yaml does, for a port
# bound to 127.0.0.1).
ARG BASE=docker.io/library/debian:trixie-slim
FROM ${BASE}

# CLIS=1 installs the CLIs with npm at the versions the e2e tests pin
# (PINS in tests/e2e/conftest.py), with Debian 13's Node.js 20 (npm warns that
# this claude-code asks for 22; the e2e tests run it on 20).  The image grows
# from about 175 MB to 1.6 GB, most of it the CLIs' own packages.
ARG CLIS=0
ARG CLAUDE_CODE=@anthropic-ai/claude-code@2.1.332
ARG GEMINI_CLI=@google/gemini-cli@0.61.0
ARG CODEX=@openai/codex@0.169.0

# tini is PID 1: it forwards SIGTERM to twistd (which drains) and reaps
# whatever a CLI leaves behind.
RUN set -eu; \
    packages="python3 python3-venv tini ca-certificates passwd"; \
    if [ "$CLIS" = 1 ]; then packages="$packages nodejs npm"; fi; \
    apt-get update; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    if [ "$CLIS" = 1 ]; then \
        npm install -g --prefix /usr/local --no-fund --no-audit "$CLAUDE_CODE" "$GEMINI_CLI" "$CODEX"; \
        npm cache clean --force; \
        DEBIAN_FRONTEND=noninteractive apt-get purge -y --auto-remove npm; \
    fi; \
    apt-get clean; \
    rm -rf /var/lib/apt/lists/* /root/.npm

# The CLIs keep their logins in these folders (compose.yaml makes each a
# named volume); ~/.shellm holds the usage database.
RUN useradd --create-home --uid 1000 --shell /bin/bash shellm && \
    install -d -m 0700 -o shellm -g shellm \
        /home/shellm/.claude /home/shellm/.gemini /home/shellm/.codex \
        /home/shellm/.shellm

# Twisted's plugin cache is written at build time: the service cannot write the venv.
COPY . /tmp/src
RUN python3 -m venv /opt/shellm && \
    /opt/shellm/bin/pip install --no-cache-dir --no-compile /tmp/src && \
    rm -rf /tmp/src && \
    /opt/shellm/bin/python -c "from twisted.plugin import IPlugin, getPlugins; list(getPlugins(IPlugin))"

USER shellm
WORKDIR /home/shellm
# CLAUDE_CONFIG_DIR: Claude's settings file would otherwise sit in the home
# folder itself, outside its volume; once for a login (compose exec shellm
# claude), once for the daemon's runs (an SHELLM_CLAUDE_ENV of your own keeps it).
ENV PATH=/opt/shellm/bin:/usr/local/bin:/usr/bin:/bin \
    HOME=/home/shellm \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    SHELLM_LISTEN=tcp:6100:interface=0.0.0.0 \
    CLAUDE_CONFIG_DIR=/home/shellm/.claude \
    SHELLM_CLAUDE_ENV='{"CLAUDE_CONFIG_DIR": "/home/shellm/.claude"}'
EXPOSE 6100
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:6100/health', timeout=4)"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["twistd", "--nodaemon", "--pidfile=", "shellm"]
