"""Views of running queries: the terminal (status line, live table) and the notebook."""
