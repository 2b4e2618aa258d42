"""Repository-wide pytest setup. The attnspec plugin itself (options, profiles, the
conformance matrix) is registered by the installed package's ``pytest11`` entry point."""
