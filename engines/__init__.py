"""Model families, their registry and the contract they follow (importable without torch)."""

from engines._registry import ModelRegistryError, get_family, list_families, register_family, register_lazy

__all__ = ["ModelRegistryError", "get_family", "list_families", "register_family", "register_lazy"]
