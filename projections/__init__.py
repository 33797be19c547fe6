"""The datasets of a profile, one module each.

Each module defines ``PROJECTION = Projection(...)``: the events it reads, the section
Struct it owns, its retention caps, its default refresh, and a pure fold. Adding a
dataset is one new module here plus one line under ``[datasets]`` in the config.
"""
