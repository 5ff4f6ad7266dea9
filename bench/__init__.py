"""Benchmarks that print figures and compare against a baseline measured in the same run.

Each module runs from the repository root as ``.venv/bin/python -m bench.<name>`` (``make bench``
runs them all); being a package, they import the project and the test image factories
(``tests.bot.photos.images``) without editing ``sys.path``.
"""
