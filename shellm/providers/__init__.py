"""
The providers: the CLIs and HTTP APIs that answer completions.
"""
