"""
Fake vendor model servers, on Twisted, for the end-to-end tests.
"""
