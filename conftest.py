# Loaded whatever paths pytest is given (tests/ alone too): the e2e options and --part, and the
# garbage collection after each test that makes a leak fail the test that leaked it.
pytest_plugins = ["e2e.pytest_parts", "tests.pytest_leaks"]
