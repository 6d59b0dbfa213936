"""
The web dashboard at C{/dashboard}: server-rendered pages over the admin
state (C{pages.py}), the signed session cookie and CSRF tokens
(C{session.py}), the SVG charts (C{charts.py}), and the files it serves
(C{templates/}, C{static/}): no CDN, no build step.
"""
