# Loaded whatever paths pytest is given (tests/ alone too): the e2e options and --part, and the
# garbage collection after each test that makes a leak fail the test that leaked it, and
# pytest-xdist's `xdist_group` made to work under pytest 9.
pytest_plugins = ["e2e.pytest_parts", "tests.pytest_leaks", "tests.pytest_xdist_groups"]
