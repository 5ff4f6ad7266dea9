"""The composition root: the `dreambot` command, the only package that imports bot and trainer."""
