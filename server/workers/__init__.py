"""``skewless serve --workers N``: N server processes on shared ports, supervised by a parent, one view."""
