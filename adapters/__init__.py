"""DFKD training loops with the guard's hook call sites (installed as ``dfkd_guard.adapters``).

Adapters import the core (:mod:`dfkd_guard`); the core never imports them.
"""
