"""The triggers, one module each.

Each module defines ``TRIGGER = Trigger(...)``: the events that wake it, the channel and
purpose it speaks for, whether it is transactional, and a pure decision
``(event, profile, now, settings) -> Fire | Wait | None`` (see
``src/profilestore/trigger.py``). Adding a trigger is one new module here plus one line
under ``[triggers]`` in the config.
"""
