"""Model families (AST, …) and the backbones they share; each family module exposes one ``*_FAMILY`` object."""
