"""The composition root: the WSGI app mounting both sides, and the `distribmail` command."""
