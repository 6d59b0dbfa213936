"""
The SheLLM benchmark: a fast fake upstream and instant fake CLIs on
loopback, measured directly and then through a real ``twistd -n shellm``.
Run ``python -m bench --help``.
"""
