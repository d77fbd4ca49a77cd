"""Plugin host: the one entry-point loader, the plugin manager, the one hook dispatcher,
capabilities (what plugins provide, require and conflict with) and the phases they declare.

May import: the plugin-facing API (``toolbox.errors``, ``toolbox.options``, ``toolbox.hookspecs``,
``toolbox.context``). Never names a plugin.
"""
