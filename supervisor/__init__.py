"""The supervisor daemon (issue 3) and the command line."""
