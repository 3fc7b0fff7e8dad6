"""Build streambatch's optional C module (the loader's byte loops with the GIL released).

Everything else is in pyproject.toml.  The module is optional: where it cannot be compiled (no C
compiler or Python headers), the install goes on and streambatch uses its numpy equivalents
(streambatch/_kernels.py), slower but the same results.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("streambatch._native", ["streambatch/_native.c"], optional=True)])
