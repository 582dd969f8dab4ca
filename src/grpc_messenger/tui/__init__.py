"""The terminal app (`messenger tui`, also served as a web page by `messenger web`).

A thin shell over the client library: `session.py` is the only module that
talks to it; screens and widgets only show what it returns. Network calls run
in Textual workers, so the screen never waits on a replica.
"""
