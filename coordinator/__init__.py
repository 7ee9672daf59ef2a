"""The llamafs coordinator: many nodes served as one tree, and the CLI."""
