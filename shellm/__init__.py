"""
SheLLM: one HTTP API in front of LLM command-line subscriptions and API providers.
"""

__version__ = "0.1.0"
