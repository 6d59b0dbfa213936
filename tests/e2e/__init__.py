"""
End-to-end tests against the real vendor CLIs.
"""
