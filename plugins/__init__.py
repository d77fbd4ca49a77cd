"""Built-in toolbox plugins, installed as the import package ``toolbox_plugins``.

Each module holds one plugin class registered under the ``toolbox.plugins`` entry-point group
in the project's pyproject.toml, exactly as a third-party package registers its own.
"""
