"""
The HTTP face: the Klein routes, the site and request classes, SSE framing,
the OpenAPI document, and the dialects that parse requests and write answers.
"""
