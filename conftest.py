# Loaded whatever paths pytest is given (tests/ alone too): the e2e options and --part.
pytest_plugins = ["e2e.pytest_parts"]
