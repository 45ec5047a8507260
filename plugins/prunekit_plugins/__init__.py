"""prunekit's built-in plugins, packaged and registered exactly like a third-party plugin."""
